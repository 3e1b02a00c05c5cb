"""`mtqpd tail` as a real process on a real log that is written, rotated,
and whose tailer is killed: the store ends as a clean replay of the same
lines would have it, nothing lost and nothing applied twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
LINES = (SAMPLES / "postfix" / "postfix.bsd.log").read_text().splitlines(keepends=True)
HANG = 60  # seconds: a guard against hanging, not a speed limit


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=HANG)


def start_tail(store: Path, log: Path) -> subprocess.Popen:
    """A tailer that is following ``log`` when this returns: it says so on
    standard error. Lines written before that would be in rotated files a
    fresh tailer does not read."""
    tail = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "tail", "--store", str(store), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tail.stderr is not None
    said = tail.stderr.readline()
    assert f"following {log}" in said, said
    return tail


def records(store: Path) -> str:
    return cli("search", "--store", str(store), "--json").stdout


def wait_for(store: Path, want: str) -> None:
    deadline = time.monotonic() + HANG
    while records(store) != want:
        assert time.monotonic() < deadline, "the tailed store never matched the clean replay"
        time.sleep(0.2)


def append(log: Path, lines: list[str], pause: float = 0.0) -> None:
    for i in range(0, len(lines), 7):
        with log.open("a") as f:
            f.writelines(lines[i : i + 7])
        if pause:
            time.sleep(pause)


@pytest.fixture
def clean(tmp_path: Path) -> str:
    """What `mtqpd replay` makes of the whole log."""
    whole = tmp_path / "whole.log"
    whole.write_text("".join(LINES))
    store = tmp_path / "clean"
    assert cli("replay", "--store", str(store), str(whole)).returncode == 0
    out = records(store)
    assert out.count("\n") > 20
    return out


def test_tail_through_rename_rotation_equals_replay(tmp_path: Path, clean: str) -> None:
    log = tmp_path / "mail.log"
    store = tmp_path / "store"
    log.touch()
    tail = start_tail(store, log)
    try:
        half = len(LINES) // 2
        append(log, LINES[:half], pause=0.01)
        os.rename(log, tmp_path / "mail.log.1")  # logrotate's default: rename, then create
        log.touch()
        append(log, LINES[half:], pause=0.01)
        wait_for(store, clean)
    finally:
        tail.send_signal(signal.SIGTERM)
        _out, err = tail.communicate(timeout=HANG)
    assert tail.returncode == 0, err
    assert records(store) == clean


def test_kill_9_mid_stream_then_restart_equals_replay(tmp_path: Path, clean: str) -> None:
    log = tmp_path / "mail.log"
    store = tmp_path / "store"
    log.touch()
    tail = start_tail(store, log)
    third = len(LINES) // 3
    append(log, LINES[:third])
    time.sleep(1.5)  # let some of it become durable, so the restart resumes mid-log
    append(log, LINES[third : 2 * third])
    tail.kill()  # SIGKILL: no final flush
    tail.wait(timeout=HANG)
    append(log, LINES[2 * third :])
    tail = start_tail(store, log)
    try:
        wait_for(store, clean)
    finally:
        tail.send_signal(signal.SIGTERM)
        tail.communicate(timeout=HANG)
    assert tail.returncode == 0
