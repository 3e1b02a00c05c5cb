"""Replay of the generated 1,000,000-line Postfix log into a fresh TinyDB store.

Prints lines/s, peak RSS, store size on disk, the wall-time ratio against
``pflogsumm`` on the same file in the same run (target: at most 1.0x), and
the growth from 100k to 1M lines (target: no worse than linear). Each time
is the best of three runs, taken in turn with the others'.

    .venv/bin/pytest tests/bench/test_replay_throughput.py -s
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

TARGET = 1.0
RUNS = 3


def run_replay(log: Path, store: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one `mtqpd replay` into a fresh store."""
    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "replay", "--store", str(store), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, _, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    assert "unknown: 0" in out, out + (proc.stderr.read() if proc.stderr else "")
    return seconds, usage.ru_maxrss


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_replay_throughput(tmp_path: Path, log_100k: Path, log_1m: Path) -> None:
    pflogsumm = shutil.which("pflogsumm")
    if pflogsumm is None:
        pytest.skip("pflogsumm is not installed (apt-get install pflogsumm)")
    small, big = log_100k, log_1m
    n_small = sum(1 for _ in small.open("rb"))
    n_big = sum(1 for _ in big.open("rb"))

    # The best of three runs each, pflogsumm's and mtqpd's taken in turn:
    # a slow spell of a shared machine then falls on both rather than on one.
    references, bigs, smalls = [], [], []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([pflogsumm, str(big)], check=True, stdout=subprocess.DEVNULL)
        references.append(time.perf_counter() - start)
        bigs.append(run_replay(big, tmp_path / "big"))
        smalls.append(run_replay(small, tmp_path / "small")[0])
    reference, (t_big, rss), t_small = min(references), min(bigs), min(smalls)
    ratio = t_big / reference
    growth = (t_big / n_big) / (t_small / n_small)
    print(f"\nreplay of {big.name} ({n_big} lines) into a fresh TinyDB store")
    print(f"  mtqpd replay      {t_big:7.2f} s  {n_big / t_big:10,.0f} lines/s  peak RSS {rss / 1024:,.0f} MiB")
    print(f"  store on disk     {size_of(tmp_path / 'big') / 2**20:,.1f} MiB")
    print(f"  pflogsumm         {reference:7.2f} s")
    print(
        f"  ratio             {ratio:.2f}x pflogsumm (target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'})"
    )
    print(f"  100k lines        {t_small:7.2f} s; per-line time 1M/100k = {growth:.2f} (<= 1.0 is linear or better)")
