"""The console command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version


def mtqpd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=60)


def test_version_is_the_distributions() -> None:
    out = mtqpd("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"mtqpd {version('mtqpd')}"


def test_help_names_the_program() -> None:
    out = mtqpd("--help")
    assert out.returncode == 0
    assert out.stdout.startswith("usage: mtqpd")


def test_no_command_is_a_usage_error() -> None:
    out = mtqpd()
    assert out.returncode == 2
    assert "usage: mtqpd" in out.stderr
