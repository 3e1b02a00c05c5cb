"""`mtqpd parse`, run as an operator runs it: a subprocess on real files."""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

from ingest import parsecmd
from ingest.sources import blocks_between, byte_ranges

LINES = [
    "Mar  1 12:00:00 mx1 postfix/smtpd[10]: connect from a.example[192.0.2.1]",
    "Mar  1 12:00:01 mx1 postfix/smtpd[10]: 4F9D195432: client=a.example[192.0.2.1]",
    "Mar  1 12:00:01 mx1 postfix/cleanup[11]: 4F9D195432: message-id=<m1@a.example>",
    "Mar  1 12:00:01 mx1 postfix/qmgr[12]: 4F9D195432: from=<j@a.example>, size=900, nrcpt=1 (queue active)",
    "Mar  1 12:00:02 mx1 dovecot[13]: imap-login: Login: user=<bob>",
    "Mar  1 12:00:02 mx1 postfix/qmgr[12]: 4F9D195432: this is not a Postfix line",
    "\x00\x01 binary garbage \xff",
]


def mtqpd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "mail.log"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_json_one_object_per_line(log: Path) -> None:
    out = mtqpd("parse", "--json", str(log))
    assert out.returncode == 0, out.stderr
    events = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(events) == len(LINES)
    assert [e["kind"] for e in events] == [
        "connect",
        "client",
        "message-id",
        "enqueue",
        "foreign",
        "unknown",
        "unknown",
    ]
    for e in events:
        assert {"ts", "host", "mta", "program", "queue_id", "kind"} <= set(e)
    assert events[2]["message_id"] == "<m1@a.example>" and events[2]["queue_id"] == "4F9D195432"
    assert events[3]["size"] == 900 and events[3]["sender"] == "j@a.example"
    assert events[5]["line"].endswith("this is not a Postfix line")


def test_stats_count_kinds_and_show_unknown_lines(log: Path) -> None:
    out = mtqpd("parse", "--stats", str(log))
    assert out.returncode == 0, out.stderr
    assert "lines: 7\nunknown: 2\n" in out.stdout
    assert "  enqueue      1" in out.stdout
    assert f"{log}:6: Mar  1 12:00:02 mx1 postfix/qmgr[12]: 4F9D195432: this is not" in out.stdout
    assert f"{log}:7:" in out.stdout


@pytest.mark.parametrize(("suffix", "opener"), [(".gz", gzip.open), (".bz2", bz2.open), (".xz", lzma.open)])
def test_compressed_files_read_transparently(tmp_path: Path, suffix: str, opener) -> None:
    path = tmp_path / f"mail.log.1{suffix}"
    with opener(path, "wt") as f:
        f.write("\n".join(LINES) + "\n")
    out = mtqpd("parse", "--stats", str(path))
    assert out.returncode == 0, out.stderr
    assert "lines: 7\nunknown: 2\n" in out.stdout


def test_stdin(log: Path) -> None:
    out = mtqpd("parse", "--json", "-", stdin=log.read_text())
    assert out.returncode == 0
    assert len(out.stdout.splitlines()) == len(LINES)


def test_missing_file_is_reported_and_the_rest_still_read(log: Path, tmp_path: Path) -> None:
    out = mtqpd("parse", "--stats", str(tmp_path / "nope.log"), str(log))
    assert out.returncode == 1
    assert "nope.log: No such file or directory" in out.stderr
    assert "lines: 7" in out.stdout


def test_truncated_gzip_keeps_what_was_read(tmp_path: Path) -> None:
    whole = gzip.compress(("\n".join(LINES * 200) + "\n").encode())
    path = tmp_path / "cut.log.gz"
    path.write_bytes(whole[: len(whole) // 2])
    out = mtqpd("parse", "--stats", str(path))
    assert out.returncode == 1
    assert "truncated" in out.stderr or "cut.log.gz" in out.stderr
    assert "lines: " in out.stdout and "lines: 0\n" not in out.stdout


def test_time_zone_setting(log: Path) -> None:
    out = mtqpd("parse", "--json", "--tz", "Europe/Berlin", str(log))
    assert json.loads(out.stdout.splitlines()[0])["ts"].startswith("20")
    assert json.loads(out.stdout.splitlines()[0])["ts"][11:19] == "11:00:00"
    bad = mtqpd("parse", "--tz", "Nowhere/Land", str(log))
    assert bad.returncode == 2 and "unknown time zone" in bad.stderr


def test_parallel_count_equals_sequential_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte ranges parsed in separate processes must add up to the same
    counts, with unknown lines numbered from the start of the file."""
    path = tmp_path / "big.log"
    body = LINES * 40  # unknown lines spread over every range
    path.write_text("\n".join(body) + "\n")
    monkeypatch.setattr(parsecmd, "PARALLEL_FROM", 0)
    seq, par = io.StringIO(), io.StringIO()
    assert parsecmd.run([str(path)], mta="auto", as_json=False, stats=True, tz=None, out=seq, jobs=1) == 0
    assert parsecmd.run([str(path)], mta="auto", as_json=False, stats=True, tz=None, out=par, jobs=3) == 0
    assert par.getvalue() == seq.getvalue()
    assert f"lines: {len(body)}\n" in par.getvalue()
    assert f"{path}:6:" in par.getvalue() and f"{path}:13:" in par.getvalue()


def test_byte_ranges_cut_on_line_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i} {'x' * (i % 17)}\n" for i in range(1000)))
    for parts in (1, 2, 3, 7, 5000):
        ranges = byte_ranges(str(path), parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
        assert all(a < b for a, b in ranges) and all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))
        got = [ln for a, b in ranges for block in blocks_between(str(path), a, b) for ln in block]
        assert got == path.read_text().splitlines()
