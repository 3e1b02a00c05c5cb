"""Tailing: the pure decisions, then real files rotated the way logrotate does it, then trio and watchdog
running a follower while a writer appends and rotates, then a follower process killed with SIGKILL.

Lines are numbered, so that "every line exactly once, in order" is a comparison with ``range``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path

import pytest
import trio
from watchdog.utils import BaseThread

from ingest import tail
from ingest.sources import OPENERS
from ingest.tail import (
    FINGERPRINT_BYTES,
    MAX_LINE,
    Candidate,
    Checkpoint,
    Follower,
    Line,
    Move,
    follow,
    rotated_names,
    split_lines,
    successor,
)

ROOT = Path(__file__).resolve().parent.parent
HANG = 60  # seconds: a guard against hanging, never a performance bar


# -- the pure core ---------------------------------------------------------------------------------------


def test_split_lines_keeps_an_unterminated_rest_for_later() -> None:
    assert split_lines(b"a\nbc\r\nde", final=False) == [b"a\n", b"bc\r\n"]
    assert split_lines(b"de", final=False) == []
    assert split_lines(b"a\nde", final=True) == [b"a\n", b"de"]
    assert split_lines(b"", final=True) == []


def test_split_lines_cuts_an_overlong_run() -> None:
    assert split_lines(b"x" * 10 + b"yy", final=False, max_line=4) == [b"xxxx", b"xxxx", b"xxyy"]
    assert split_lines(b"xxx\nyyyyyy", final=False, max_line=4) == [b"xxx\n", b"yyyy"]
    assert split_lines(b"xxxx\n", final=False, max_line=4) == [b"xxxx", b"\n"]


def test_rotated_names_oldest_first() -> None:
    names = ["mail.log", "mail.log.1", "mail.log.2.gz", "mail.log.10.xz", "mail.log.3.bz2", "mail.err", "mail.log.old"]
    assert rotated_names("mail.log", names) == ["mail.log.10.xz", "mail.log.3.bz2", "mail.log.2.gz", "mail.log.1"]
    dated = ["mail.log-20260302", "mail.log-20260301.gz", "mail.log-20260228.xz", "mail.log"]
    assert rotated_names("mail.log", dated) == ["mail.log-20260228.xz", "mail.log-20260301.gz", "mail.log-20260302"]
    exim = ["mainlog", "mainlog.01", "mainlog.02.gz", "paniclog", "paniclog.01"]
    assert rotated_names("mainlog", exim) == ["mainlog.02.gz", "mainlog.01"]


def test_rotated_names_prefers_the_plain_twin_while_compression_runs() -> None:
    assert rotated_names("mail.log", ["mail.log.1", "mail.log.1.gz", "mail.log.2.gz"]) == [
        "mail.log.2.gz",
        "mail.log.1",
    ]


def cand(name: str, inode: int, size: int = 10, live: bool = False) -> Candidate:
    return Candidate(name, 1, inode, size, live)


OLD, MID, LIVE = cand("mail.log.2.gz", 2), cand("mail.log.1", 3), cand("mail.log", 4, live=True)


def test_successor_is_the_next_rotation() -> None:
    assert successor([OLD, MID, LIVE], 0, 500) == Move(MID, 0)
    assert successor([OLD, MID, LIVE], 1, 500) == Move(LIVE, 0)


def test_successor_waits_for_the_writer_to_reopen() -> None:
    empty = cand("mail.log", 4, size=0, live=True)
    assert successor([OLD, MID, empty], 1, 500) is None
    assert successor([OLD, MID], 1, 500) is None  # renamed, not yet created
    assert successor([OLD, MID, empty], 0, 500) == Move(MID, 0)  # a rotated file is complete, empty or not


def test_successor_of_a_vanished_file_is_the_live_one() -> None:
    assert successor([OLD, MID, LIVE], None, 500) == Move(LIVE, 0)
    assert successor([OLD, MID], None, 500) is None


def test_successor_same_content_at_the_path_goes_on_at_the_offset() -> None:
    assert successor([OLD, MID, LIVE], 2, 500) == Move(LIVE, 500)


def test_checkpoint_round_trips_through_json() -> None:
    cp = Checkpoint("/var/log/mail.log", 2049, 131, 4711, "ab" * 32, 4096)
    assert Checkpoint.from_dict(json.loads(json.dumps(cp.to_dict()))) == cp


@pytest.mark.parametrize(
    "change",
    [{"offset": -1}, {"offset": True}, {"fingerprint": "xyz"}, {"fingerprint_size": 5000}, {"inode": "7"}],
)
def test_checkpoint_refuses_what_it_cannot_trust(change: dict[str, object]) -> None:
    d = Checkpoint("/var/log/mail.log", 2049, 131, 4711, "ab" * 32, 4096).to_dict() | change
    with pytest.raises(ValueError):
        Checkpoint.from_dict(d)
    with pytest.raises(ValueError):
        Checkpoint.from_dict({"path": "x"})


# -- real files, rotated the way logrotate does it -------------------------------------------------------


class Log:
    """An MTA's log writer: appends with O_APPEND as syslogd and Exim do, reopens the path on HUP."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 (the writer's long-lived descriptor)

    def emit(self, count: int = 1) -> None:
        for _ in range(count):
            n = self.n
            self.write(
                f"{n:06d} Mar  1 12:00:00 mx1 postfix/smtp[{n}]: 4F{n:X}: to=<u{n}@example.org> {'.' * (n % 41)}\n"
            )
            self.n += 1

    def write(self, text: str | bytes) -> None:
        self._fh.write(text.encode() if isinstance(text, str) else text)

    def hup(self) -> None:
        self._fh.close()
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115

    def close(self) -> None:
        self._fh.close()


def compress(src: Path, suffix: str) -> None:
    """As logrotate does: the archive is written whole, then the plain file removed."""
    with open(src, "rb") as f, OPENERS[suffix](str(src) + suffix, "wb") as z:
        shutil.copyfileobj(f, z)
    os.unlink(src)


def shift(path: Path, width: int) -> None:
    """logrotate's renaming of path.N[.gz] to path.N+1[.gz], the oldest first."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)((?:\.gz|\.bz2|\.xz)?)")
    found = [(int(m[1]), m[0], m[2]) for name in os.listdir(path.parent) if (m := pattern.fullmatch(name))]
    for n, name, ext in sorted(found, reverse=True):
        os.rename(path.parent / name, path.parent / f"{path.name}.{n + 1:0{width}d}{ext}")


def rotate(
    path: Path,
    log: Log,
    how: str = "create",
    *,
    compress_as: str = "",
    delay: bool = False,
    late: int = 0,
    width: int = 1,
    stamp: str = "",
) -> None:
    """One logrotate run. ``how``: create (rename, create the file, HUP the writer, which meanwhile
    wrote ``late`` more lines to the renamed file), rename (the writer creates the file itself, as
    Exim does) or copytruncate. Numbered names, or dateext's ``stamp``."""
    if stamp:
        rotated = path.with_name(f"{path.name}-{stamp}")
    else:
        shift(path, width)
        rotated = path.with_name(f"{path.name}.{1:0{width}d}")
    if how == "copytruncate":
        shutil.copyfile(path, rotated)
        os.truncate(path, 0)
    else:
        os.rename(path, rotated)
        if how == "create":
            path.touch()
        log.emit(late)
        log.hup()
    if compress_as and delay:
        older = [p for p in path.parent.glob(path.name + "[.-]*") if p != rotated and p.suffix not in OPENERS]
        for p in older:
            compress(p, compress_as)
    elif compress_as:
        compress(rotated, compress_as)


def drain(follower: Follower) -> list[Line]:
    got: list[Line] = []
    while batch := follower.poll():
        got += batch
    return got


def numbers(lines: list[Line]) -> list[int]:
    return [int(line[:6]) for line, _ in lines]


def assert_every_checkpoint_resumes_after_its_line(path: Path, got: list[Line], total: int) -> None:
    """A restart from any delivered checkpoint, whatever became of its file, delivers exactly the rest."""
    for k, (_, cp) in enumerate(got):
        with Follower(str(path), Checkpoint.from_dict(cp.to_dict())) as again:
            assert numbers(drain(again)) == list(range(int(got[k][0][:6]) + 1, total)), f"from line {k}"


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    w = Log(tmp_path / "mail.log")
    yield w
    w.close()


def test_partial_line_waits_for_its_newline(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.write("000000 first\n000001 sec")
        assert [line for line, _ in f.poll()] == ["000000 first"]
        assert f.poll() == []
        log.write("ond\n")
        ((line, cp),) = f.poll()
        assert line == "000001 second"
        assert cp.offset == log.path.stat().st_size
        assert cp.path == str(log.path)
        assert (cp.device, cp.inode) == (log.path.stat().st_dev, log.path.stat().st_ino)


def test_undecodable_bytes_replaced_overlong_lines_cut(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.write(b"caf\xe9 \xff\xfe\r\n")
        assert [line for line, _ in f.poll()] == ["caf\ufffd \ufffd\ufffd"]
        log.write(b"x" * (2 * MAX_LINE + 10))
        pieces = drain(f)
        assert [len(line) for line, _ in pieces] == [MAX_LINE, MAX_LINE]
        log.write(b"yz\n")
        assert [line for line, _ in f.poll()] == ["x" * 10 + "yz"]


def test_missing_at_start_then_appears(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    with Follower(str(path)) as f:
        assert f.poll() == []
        w = Log(path)
        w.emit(3)
        assert numbers(f.poll()) == [0, 1, 2]
        w.close()


def test_rename_rotation_reads_the_old_file_to_its_end(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.emit(3)
        assert numbers(f.poll()) == [0, 1, 2]
        log.emit(2)
        os.rename(log.path, str(log.path) + ".1")
        log.path.touch()
        log.emit(2)  # syslogd has not had its HUP yet: still the renamed file
        assert numbers(f.poll()) == [3, 4, 5, 6]
        log.emit(1)
        assert numbers(f.poll()) == [7]  # the new file is still empty: the old one is still written
        log.hup()
        log.emit(2)
        got = f.poll()
        assert numbers(got) == [8, 9]
        assert got[-1][1].inode == log.path.stat().st_ino


def test_unterminated_end_of_a_finished_file_is_a_line(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.write("000000 whole\n000001 cut sho")
        assert numbers(f.poll()) == [0]
        rotate(log.path, log, "create")
        log.write("000002 next\n")
        assert [line for line, _ in f.poll()] == ["000001 cut sho", "000002 next"]


def test_rotated_twice_between_polls(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.emit(3)
        assert numbers(f.poll()) == [0, 1, 2]
        log.emit(2)
        rotate(log.path, log, "create", late=1)
        log.emit(3)
        rotate(log.path, log, "rename", compress_as=".gz")
        log.emit(2)
        assert numbers(drain(f)) == list(range(3, 11))


@pytest.mark.parametrize("compress_as", ["", ".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("stamp", ["", "20260301"])
def test_copytruncate_takes_the_unread_lines_from_the_copy(log: Log, compress_as: str, stamp: str) -> None:
    with Follower(str(log.path)) as f:
        log.emit(4)
        assert numbers(f.poll()) == [0, 1, 2, 3]
        log.emit(3)  # written before the copy, not yet read: only the copy has them afterwards
        rotate(log.path, log, "copytruncate", compress_as=compress_as, stamp=stamp)
        log.emit(20)  # the truncated file grows past the old offset before the next poll
        got = drain(f)
        assert numbers(got) == list(range(4, 27))
        assert_every_checkpoint_resumes_after_its_line(log.path, got, log.n)


def test_copytruncate_without_a_copy_is_reported(log: Log, caplog: pytest.LogCaptureFixture) -> None:
    with Follower(str(log.path)) as f:
        log.emit(4)
        assert numbers(f.poll()) == [0, 1, 2, 3]
        log.emit(2)
        os.truncate(log.path, 0)
        log.emit(2)
        with caplog.at_level(logging.WARNING, logger="ingest.tail"):
            assert numbers(f.poll()) == [6, 7]
        assert "truncated" in caplog.text


def test_copytruncate_twice_between_polls(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.emit(4)
        assert numbers(f.poll()) == [0, 1, 2, 3]
        log.emit(2)
        rotate(log.path, log, "copytruncate", compress_as=".gz", delay=True)
        log.emit(3)
        rotate(log.path, log, "copytruncate", compress_as=".gz", delay=True)
        log.emit(2)
        assert numbers(drain(f)) == list(range(4, 11))


@pytest.mark.parametrize("delay", [False, True])
@pytest.mark.parametrize("compress_as", [".gz", ".bz2", ".xz"])
def test_restart_finds_the_checkpoint_in_the_compressed_file(log: Log, compress_as: str, delay: bool) -> None:
    with Follower(str(log.path)) as f:
        log.emit(300)  # past FINGERPRINT_BYTES: the fingerprint is of the first 4 KiB
        cp = f.poll()[149][1]
    assert cp.fingerprint_size == FINGERPRINT_BYTES
    rotate(log.path, log, "create", compress_as=compress_as, delay=delay)
    log.emit(5)
    if delay:  # the next run compresses it
        rotate(log.path, log, "create", compress_as=compress_as, delay=True)
        log.emit(5)
    with Follower(str(log.path), cp) as f:
        assert numbers(drain(f)) == list(range(150, log.n))


def test_copytruncate_between_the_choice_of_the_new_file_and_its_first_read(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower chooses the new live file, to be read from 0; before it reads a byte of it, copytruncate
    copies and empties it. What it held (3..5) is in the copy only, and must be read from there."""
    with Follower(str(log.path)) as f:
        log.emit(3)
        assert numbers(f.poll()) == [0, 1, 2]
        rotate(log.path, log, "create", compress_as=".gz")
        log.emit(3)
        choose = tail.successor

        def then_copytruncate(chain: Sequence[Candidate], index: int | None, offset: int) -> Move | None:
            move = choose(chain, index, offset)
            if move is not None and move.target.live and log.n == 6:
                rotate(log.path, log, "copytruncate")
                log.emit(2)
            return move

        monkeypatch.setattr(tail, "successor", then_copytruncate)
        assert numbers(drain(f)) == list(range(3, 8))


def test_a_file_compressed_while_the_directory_is_listed_is_not_skipped_over(
    log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower has read mail.log.2 (as mail.log) to its end; mail.log.1 is a copytruncate copy. The
    compressor removes mail.log.2, its archive complete, just after the follower listed both: looked at,
    mail.log.2 is gone, mail.log.2.gz was not chosen over its twin. Neither is ours gone, nor is the next
    file after it the live one: mail.log.1 (3..5) comes next."""
    with Follower(str(log.path)) as f:
        log.emit(3)
        assert numbers(f.poll()) == [0, 1, 2]
        rotate(log.path, log, "create")
        log.emit(3)
        rotate(log.path, log, "copytruncate")
        log.emit(2)
        plain = log.path.with_name("mail.log.2")
        with open(plain, "rb") as src, OPENERS[".gz"](f"{plain}.gz", "wb") as z:
            shutil.copyfileobj(src, z)
        listdir = os.listdir

        def listed_then_compressed(directory: str) -> list[str]:
            names = listdir(directory)
            plain.unlink(missing_ok=True)
            return names

        monkeypatch.setattr(os, "listdir", listed_then_compressed)
        assert numbers(drain(f)) == list(range(3, 8))


def test_restart_after_several_rotations_while_down(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.emit(5)
        cp = f.poll()[2][1]
    log.emit(2)
    rotate(log.path, log, "create", compress_as=".gz", delay=True, late=2)
    log.emit(3)
    rotate(log.path, log, "copytruncate", compress_as=".gz", delay=True)
    log.emit(3)
    rotate(log.path, log, "create", compress_as=".gz", delay=True)
    log.emit(1)
    rotate(log.path, log, "rename", compress_as=".xz")
    log.emit(4)
    with Follower(str(log.path), cp) as f:
        assert numbers(drain(f)) == list(range(3, log.n))


def test_restart_after_dated_rotations_while_down(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.emit(5)
        cp = f.poll()[1][1]
    for day in range(1, 5):
        log.emit(day)
        rotate(log.path, log, "create", compress_as=".gz", delay=True, stamp=f"2026030{day}")
    log.emit(2)
    with Follower(str(log.path), cp) as f:
        assert numbers(drain(f)) == list(range(2, log.n))


def test_every_checkpoint_of_a_rotating_log_resumes_after_its_line(log: Log) -> None:
    got: list[Line] = []
    with Follower(str(log.path)) as f:
        log.emit(5)
        got += f.poll()
        rotate(log.path, log, "create", late=2)
        log.emit(3)
        got += f.poll()
        log.emit(2)
        rotate(log.path, log, "copytruncate")
        log.emit(4)
        got += f.poll()
        rotate(log.path, log, "create", compress_as=".gz")
        log.emit(3)
        got += f.poll()
        log.emit(2)
        rotate(log.path, log, "rename", compress_as=".xz", delay=True)
        log.emit(3)
        got += drain(f)
    assert numbers(got) == list(range(log.n))
    assert_every_checkpoint_resumes_after_its_line(log.path, got, log.n)


def test_restart_while_copytruncate_copies_stays_with_the_live_file(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.emit(6)
        cp = f.poll()[2][1]
    shutil.copyfile(log.path, log.path.with_name("mail.log.1"))  # same beginning, another inode
    log.emit(2)  # not truncated yet: the live file is still the one to read
    with Follower(str(log.path), cp) as f:
        assert numbers(drain(f)) == [3, 4, 5, 6, 7]
        os.truncate(log.path, 0)  # 6 and 7 are not in the copy, but were read
        log.emit(1)
        assert numbers(f.poll()) == [8]


def test_restart_reads_only_after_the_checkpoint(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.emit(10)
        cp = f.poll()[6][1]
        log.emit(2)
    with Follower(str(log.path), cp) as f:
        assert numbers(drain(f)) == [7, 8, 9, 10, 11]
    with pytest.raises(ValueError):
        Follower("/elsewhere/mail.log", cp)


def test_deleted_then_created_again(log: Log) -> None:
    with Follower(str(log.path)) as f:
        log.emit(3)
        assert numbers(f.poll()) == [0, 1, 2]
        os.unlink(log.path)
        log.emit(1)  # to the unlinked file, still open
        assert numbers(f.poll()) == [3]
        assert f.poll() == []
        log.hup()
        log.emit(2)
        assert numbers(f.poll()) == [4, 5]


def test_replaced_by_another_file_is_read_from_its_beginning(log: Log, tmp_path: Path) -> None:
    with Follower(str(log.path)) as f:
        log.emit(3)
        assert numbers(f.poll()) == [0, 1, 2]
        assert f.poll() == []
        other = tmp_path / "other"
        other.write_text("900000 a\n900001 b\n")
        os.replace(other, log.path)
        assert [line[:6] for line, _ in f.poll()] == ["900000", "900001"]


def test_restart_when_the_checkpoint_file_is_gone(log: Log, caplog: pytest.LogCaptureFixture) -> None:
    with Follower(str(log.path)) as f:
        log.emit(3)
        cp = f.poll()[1][1]
    os.unlink(log.path)
    log.hup()
    log.emit(2)
    with caplog.at_level(logging.WARNING, logger="ingest.tail"), Follower(str(log.path), cp) as f:
        assert numbers(drain(f)) == [3, 4]  # another file: all of it, none skipped
    assert "no file begins like the checkpoint" in caplog.text


def test_damaged_archive_ends_where_it_breaks(log: Log, caplog: pytest.LogCaptureFixture) -> None:
    with Follower(str(log.path)) as f:
        log.emit(400)
        cp = f.poll()[0][1]
    rotate(log.path, log, "create", compress_as=".gz")
    log.emit(3)
    archive = log.path.with_name("mail.log.1.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="ingest.tail"), Follower(str(log.path), cp) as f:
        got = [line[:6] for line, _ in drain(f)]
    assert got[0] == "000001"
    assert got[-3:] == ["000400", "000401", "000402"]
    assert "unreadable" in caplog.text


def test_a_large_backlog_comes_in_batches(log: Log) -> None:
    log.emit(5000)
    with Follower(str(log.path), budget=64 << 10) as f:
        batches = []
        while batch := f.poll():
            batches.append(batch)
    assert len(batches) > 3
    assert [n for batch in batches for n in numbers(batch)] == list(range(5000))


# -- trio and watchdog, with a writer appending and rotating meanwhile ------------------------------------


Plan = list[tuple[int, Callable[[], None]]]


class Writer(threading.Thread):
    """Appends ``total`` numbered lines with small random gaps, rotating at the planned line numbers
    (rotation is done in the writing thread, as logrotate's copytruncate needs a quiet writer)."""

    def __init__(self, log: Log, total: int, plan: Plan, seed: int, pause: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.log, self.total, self.pause = log, total, pause
        self.plan = sorted(plan, key=lambda p: p[0])
        self.rng = random.Random(seed)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.log.n < self.total:
                while self.plan and self.plan[0][0] <= self.log.n:
                    self.plan.pop(0)[1]()
                self.log.emit()
                if self.rng.random() < self.pause:
                    time.sleep(self.rng.random() * 0.003)
        except BaseException as exc:
            self.error = exc
            raise

    def finish(self) -> None:
        self.join(HANG)
        assert not self.is_alive(), "writer hung"
        assert self.error is None


def mail_log_plan(log: Log, every: int, count: int) -> Plan:
    kinds: list[Callable[[], None]] = [
        lambda: rotate(log.path, log, "create", late=3),
        lambda: rotate(log.path, log, "copytruncate"),
        lambda: rotate(log.path, log, "create", compress_as=".gz"),
        lambda: rotate(log.path, log, "copytruncate", compress_as=".xz", delay=True),
        lambda: rotate(log.path, log, "rename", compress_as=".gz", delay=True),
    ]
    return [(every * (i + 1), kinds[i % len(kinds)]) for i in range(count)]


async def wait_for(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(HANG):
        while not predicate():
            await trio.sleep(0.01)


async def started(received: Iterable[list[Line]], logs: Iterable[Log]) -> None:
    """Line 0 written and delivered: the follower has the file open before the writer first rotates it (a
    follower without a checkpoint starts at the beginning of the live file, not of its rotated copies)."""
    for log in logs:
        log.emit()
    await wait_for(lambda: all(received))


def test_follow_two_logs_exactly_once_in_order_through_rotations(tmp_path: Path) -> None:
    total = 1500
    mail, exim = Log(tmp_path / "mail.log"), Log(tmp_path / "mainlog")
    writers = [
        Writer(mail, total, mail_log_plan(mail, 140, 10), seed=1),
        Writer(exim, total, [(n, lambda: rotate(exim.path, exim, "rename", width=2)) for n in (300, 700, 701)], 2),
    ]
    got: dict[str, list[Line]] = {str(mail.path): [], str(exim.path): []}

    async def on_lines(path: str, lines: list[Line]) -> None:
        got[path] += lines

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(follow, list(got), {}, on_lines)
            await started(got.values(), [mail, exim])
            for w in writers:
                w.start()
            await wait_for(lambda: all(len(v) >= total for v in got.values()))
            await trio.sleep(0.6)  # room for a line delivered twice to show up
            nursery.cancel_scope.cancel()

    trio.run(main)
    for w in writers:
        w.finish()
        w.log.close()
    for lines in got.values():
        assert numbers(lines) == list(range(total))
    assert list(tmp_path.glob("mail.log.*.gz")) and list(tmp_path.glob("mail.log.*.xz"))


def test_follow_restarted_from_a_persisted_checkpoint_loses_nothing(tmp_path: Path) -> None:
    total = 1500
    log = Log(tmp_path / "mail.log")
    writer = Writer(log, total, mail_log_plan(log, 110, 12), seed=3)
    path = str(log.path)
    runs: list[list[Line]] = []
    persisted: list[Checkpoint] = []

    async def run(checkpoints: dict[str, Checkpoint], until: Callable[[], bool]) -> None:
        runs.append([])
        batches = 0

        async def on_lines(_path: str, lines: list[Line]) -> None:
            nonlocal batches
            runs[-1].extend(lines)
            batches += 1
            if batches % 3 == 0:  # the store flushes now and then; only then is the checkpoint kept
                persisted.append(lines[-1][1])

        async with trio.open_nursery() as nursery:
            await nursery.start(follow, [path], checkpoints, on_lines)
            await wait_for(until)
            nursery.cancel_scope.cancel()

    async def first_run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, {}, lambda: len(runs[0]) >= total // 3 and len(persisted) > 0)
            await wait_for(lambda: bool(runs))
            await started(runs, [log])
            writer.start()

    def finished() -> bool:
        return bool(runs[1]) and runs[1][-1][0][:6] == f"{total - 1:06d}"

    trio.run(first_run)
    first = runs[0]
    kept = persisted[-1]
    upto = next(k for k, (_, cp) in enumerate(first) if cp is kept)
    trio.run(run, {path: Checkpoint.from_dict(kept.to_dict())}, finished)
    writer.finish()
    log.close()
    assert numbers(first) == list(range(len(first)))
    assert numbers(runs[1]) == list(range(upto + 1, total))  # nothing before the checkpoint again, nothing lost


def test_follow_is_woken_by_file_events(tmp_path: Path) -> None:
    log = Log(tmp_path / "mail.log")
    got: list[Line] = []

    async def on_lines(_path: str, lines: list[Line]) -> None:
        got.extend(lines)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            # no fallback poll within the test's life: only watchdog's events can deliver
            await nursery.start(partial(follow, [str(log.path)], {}, on_lines, interval=3600))
            for expect in range(1, 6):
                log.emit()
                await wait_for(lambda: len(got) == expect)  # noqa: B023 (used before the next iteration)
            rotate(log.path, log, "create")
            log.emit()
            await wait_for(lambda: len(got) == 6)
            nursery.cancel_scope.cancel()

    trio.run(main)
    log.close()
    assert numbers(got) == list(range(6))


def test_follow_stops_the_observer_on_exit(tmp_path: Path) -> None:
    def watchdog_threads() -> int:
        return sum(isinstance(t, BaseThread) and t.is_alive() for t in threading.enumerate())

    before = watchdog_threads()

    async def failing(_path: str, _lines: list[Line]) -> None:
        raise RuntimeError("store down")

    (tmp_path / "mail.log").write_text("000000 x\n")
    with pytest.raises(ExceptionGroup) as info:
        trio.run(follow, [str(tmp_path / "mail.log")], {}, failing)
    assert info.group_contains(RuntimeError, match="store down")
    assert watchdog_threads() == before
    with pytest.raises(ValueError, match="twice"):
        trio.run(follow, ["a", "a"], {}, failing)


# -- a follower process killed with SIGKILL --------------------------------------------------------------

FOLLOWER = """
import json, os, sys
import trio
from ingest.tail import Checkpoint, follow

path, out_path, state_path = sys.argv[1:]
try:
    with open(state_path) as f:
        checkpoints = {path: Checkpoint.from_dict(json.load(f)["checkpoint"])}
except FileNotFoundError:
    checkpoints = {}

async def on_lines(_path, lines):
    with open(out_path, "a") as out:
        out.write("".join(line + "\\n" for line, _ in lines))
        out.flush()
        os.fsync(out.fileno())
    with open(state_path + ".tmp", "w") as f:
        json.dump({"checkpoint": lines[-1][1].to_dict(), "line": lines[-1][0]}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(state_path + ".tmp", state_path)

trio.run(follow, [path], checkpoints, on_lines)
"""


def complete_lines(path: Path) -> list[int]:
    """The numbers of the lines a killed process wrote whole."""
    if not path.exists():
        return []
    return [int(line[:6]) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def wait_until(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], stderr: Path) -> None:
    deadline = time.monotonic() + HANG
    while not predicate():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait(HANG)
            pytest.fail(f"follower process exited or hung: {stderr.read_text()}")
        time.sleep(0.01)


def test_kill_9_and_restart_from_the_saved_checkpoint(tmp_path: Path) -> None:
    total = 3000
    log = Log(tmp_path / "mail.log")
    writer = Writer(log, total, mail_log_plan(log, 230, 12), seed=4, pause=0.6)
    script, state = tmp_path / "follower.py", tmp_path / "state.json"
    script.write_text(FOLLOWER)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    outs = [tmp_path / f"out{k}.txt" for k in range(3)]
    saved_at_kill: list[int] = []
    log.emit()  # line 0 is in the file the first run opens: the writer starts once it is delivered
    for k, out in enumerate(outs):
        stderr = tmp_path / f"err{k}.txt"
        cmd = [sys.executable, str(script), str(log.path), str(out), str(state)]
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=err)
        if k == 0:
            wait_until(lambda: bool(complete_lines(outs[0])), proc, stderr)
            writer.start()
        if k < len(outs) - 1:
            wait_until(lambda: len(complete_lines(out)) >= 400 and state.exists(), proc, stderr)  # noqa: B023
            proc.send_signal(signal.SIGKILL)
            proc.wait(HANG)
            saved_at_kill.append(int(json.loads(state.read_text())["line"][:6]))
        else:
            wait_until(lambda: complete_lines(out)[-1:] == [total - 1], proc, stderr)  # noqa: B023
            proc.kill()
            proc.wait(HANG)
    writer.finish()
    log.close()
    runs = [complete_lines(out) for out in outs]
    for k, nums in enumerate(runs):
        start = saved_at_kill[k - 1] + 1 if k else 0
        assert nums == list(range(start, start + len(nums))), f"run {k}: lost, repeated or out of order"
    assert runs[-1][-1] == total - 1
    covered = set().union(*map(set, runs))
    assert covered == set(range(total))
