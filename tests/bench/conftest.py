"""Shared fixtures of the benchmarks: the generated logs they run over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "samples" / "generated"


def generated_log(lines: int, seed: int = 1) -> Path:
    """The generator's log of ``lines`` lines, made once and kept (it is
    deterministic by seed, so a kept file is the same file)."""
    path = GENERATED / f"postfix-{lines}-s{seed}.log"
    if not path.exists():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "samples" / "generate.py"),
                "--lines",
                str(lines),
                "--seed",
                str(seed),
                "-o",
                str(path),
            ],
            check=True,
        )
    return path


@pytest.fixture(scope="session", autouse=True)
def byte_compiled() -> None:
    """Measure mtqpd as installed: installing a wheel byte-compiles its
    modules, while an editable install under PYTHONDONTWRITEBYTECODE (as
    on the CI machine) would compile every module's source on every start,
    60 ms of each measured command. The .pyc files go to __pycache__,
    which git ignores."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "parsers", "ingest", "server"], cwd=ROOT, check=True)


@pytest.fixture(scope="session")
def log_1m() -> Path:
    return generated_log(1_000_000)


@pytest.fixture(scope="session")
def log_100k() -> Path:
    return generated_log(100_000)
