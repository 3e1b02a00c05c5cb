"""Live tailing of MTA log files across rotation and restarts, losing and repeating nothing.

``mtqpd run`` follows ``/var/log/mail.log`` (or Exim's ``mainlog``) for months
while logrotate renames, copies, truncates and compresses it underneath, and
while mtqpd itself is restarted or killed. The reliability rules ask that no
line is lost and none applied twice, so every delivered line carries a
``Checkpoint``: the position just after it, stated so that it can be found
again whatever happened to the file since.

A position cannot be a path and an offset: the path names a different file
after each rotation. Nor a device and inode alone: copytruncate keeps the
inode and throws the content away, compression gives the content a new
inode, and a deleted file's inode is reused. So a checkpoint names the
content, by a fingerprint of the file's first bytes (up to 4 KiB, every log
line begins with a timestamp), and keeps device and inode only to prefer the
same file among equal beginnings.

The decisions "which file comes next" and "where does a line end" are pure
functions of what the directory and the buffer hold (``rotated_names``,
``successor``, ``split_lines``), tested directly; ``Follower`` does the I/O
for one path; ``follow`` runs followers for several paths in trio, woken by
watchdog's file events with a periodic poll as the safety net.

Those decisions are only as good as the view of the directory they are
taken on, and logrotate changes it while we look. A rotation renames the
copies one after the other and a compressor removes the plain file once its
archive is written, so a listing can miss a file that was renamed or
compressed between reading the names and looking at them: the file we are
in, or one after it, seems gone, and the next file chosen skips a whole
rotation's worth of lines. So a decision is taken only on two listings in a
row that agree, and one that the directory contradicts meanwhile is put off
to the next poll. And a file to be read from its beginning has that
beginning read before the directory is listed: copytruncate makes its copy
before it empties the file, so either the listing shows the copy (which is
then read first), or the bytes read are the old content, and the emptying
is noticed as a truncation like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import lzma
import os
import re
import stat
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any

import trio
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from ingest.sources import OPENERS

log = logging.getLogger(__name__)

#: How much of a file's beginning identifies it. Enough to hold several
#: timestamped lines, small enough to read on every poll.
FINGERPRINT_BYTES = 4096
#: A longer run without a newline is cut and passed on: a binary file or a
#: runaway writer must not make the follower buffer without bound.
MAX_LINE = 1 << 20
#: Bytes read by one ``poll``: a large backlog (first start, a long outage)
#: arrives in batches the consumer can flush, not in one list.
READ_BUDGET = 4 << 20
_CHUNK = 64 << 10
#: File switches in one ``poll``; the rest waits for the next one.
_MAX_STEPS = 32
#: What a damaged archive raises while it is decompressed.
_ARCHIVE_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)
#: Further listings of the directory to get two in a row that agree: a rotation is over in milliseconds,
#: and a poll that gives up is repeated once it is.
_SCAN_TRIES = 5


class _Unsettled(Exception):
    """The directory changed while a decision was being taken on it: take none now, look again at the next
    poll. Waiting costs a poll; deciding on a torn view can skip a file."""


def fingerprint(head: bytes) -> str:
    """The name of a file's content by its beginning: survives rename, copy and compression."""
    return hashlib.sha256(head).hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A position in the stream of lines written to ``path``, across rotations.

    ``offset`` is where the next unread line begins, in the file whose first
    ``fingerprint_size`` bytes hash to ``fingerprint`` (in the decompressed
    stream if it has been compressed since). ``device`` and ``inode`` are
    those of the file it was read from, a tie-breaker only.
    """

    path: str
    device: int
    inode: int
    offset: int
    fingerprint: str
    fingerprint_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "device": self.device,
            "inode": self.inode,
            "offset": self.offset,
            "fingerprint": self.fingerprint,
            "fingerprint_size": self.fingerprint_size,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Checkpoint:
        """Refuses what it cannot trust: a wrong checkpoint would skip or repeat lines silently."""
        try:
            path, fp = d["path"], d["fingerprint"]
            numbers = [d[k] for k in ("device", "inode", "offset", "fingerprint_size")]
        except KeyError as exc:
            raise ValueError(f"checkpoint without {exc.args[0]!r}") from None
        if not isinstance(path, str) or not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{64}", fp):
            raise ValueError(f"malformed checkpoint: {dict(d)!r}")
        if any(type(n) is not int or n < 0 for n in numbers) or numbers[3] > numbers[2]:
            raise ValueError(f"malformed checkpoint: {dict(d)!r}")
        device, inode, offset, size = numbers
        return cls(path, device, inode, offset, fp, size)


Line = tuple[str, Checkpoint]


def split_lines(buf: bytes | bytearray, *, final: bool, max_line: int = MAX_LINE) -> list[bytes]:
    """The lines at the start of ``buf``, each with its newline.

    An unterminated rest waits for its newline, unless ``final`` (the file is
    finished, nothing will complete it) or it has reached ``max_line`` bytes,
    when it is cut off as a line of its own. The caller drops as many bytes
    as the lines hold.
    """
    lines: list[bytes] = []
    start, size = 0, len(buf)
    while start < size:
        newline = buf.find(b"\n", start, start + max_line)
        if newline >= 0:
            end = newline + 1
        elif size - start >= max_line:
            end = start + max_line
        elif final:
            end = size
        else:
            break
        lines.append(bytes(buf[start:end]))
        start = end
    return lines


def decode(raw: bytes) -> str:
    """A line as text; undecodable bytes are replaced, not refused (see ``ingest.sources``)."""
    return raw.decode("utf-8", "replace").rstrip("\r\n")


_NUMBERED = re.compile(r"\.(\d+)")  # logrotate's default mail.log.1, Exim's exicyclog mainlog.01
_DATED = re.compile(r"-(\d[\d._-]*)")  # logrotate's dateext: mail.log-20260301


def rotation_key(base: str, name: str) -> tuple[int, str, int] | None:
    """Where ``name`` sorts among the rotated copies of the log ``base``, oldest first; None if it is none.

    Numbered copies are older the higher the number, dated ones the earlier
    the date; a directory holding both (the operator switched to dateext)
    is taken to hold the dated ones first.
    """
    if not name.startswith(base):
        return None
    rest = name[len(base) :]
    for suffix in OPENERS:
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
            break
    if m := _NUMBERED.fullmatch(rest):
        return (1, "", -int(m[1]))
    if m := _DATED.fullmatch(rest):
        return (0, m[1], 0)
    return None


def is_compressed(name: str) -> bool:
    return name.endswith(tuple(OPENERS))


def rotated_names(base: str, names: Iterable[str]) -> list[str]:
    """The rotated copies of the log ``base`` among ``names``, oldest first.

    Of a plain copy and its compressed twin only the plain one counts: both
    exist while the compressor runs, and the archive is incomplete until the
    plain file is gone.
    """
    chosen: dict[tuple[int, str, int], str] = {}
    for name in names:
        key = rotation_key(base, name)
        if key is not None and (key not in chosen or not is_compressed(name)):
            chosen[key] = name
    return [chosen[key] for key in sorted(chosen)]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file that may hold part of the stream: a rotated copy, or (``live``) the file at the path."""

    name: str
    device: int
    inode: int
    size: int
    live: bool = False

    @property
    def ident(self) -> tuple[int, int]:
        return (self.device, self.inode)

    @property
    def compressed(self) -> bool:
        return not self.live and is_compressed(self.name)


@dataclass(frozen=True, slots=True)
class Move:
    """Read ``target`` next, from ``offset``: 0 for a new file, the current offset for the same content."""

    target: Candidate
    offset: int


def successor(chain: Sequence[Candidate], index: int | None, offset: int) -> Move | None:
    """What to read once the current file, found at ``chain[index]`` (None: not found), is read to its end.

    ``chain`` is the rotated copies oldest first, then the live file. The
    next file is the one rotated after ours; if ours is gone (deleted, or
    renamed to a name no rotation uses), the live file. A live file that is
    still empty means the writer has not reopened yet (rsyslog before its
    HUP writes on into the renamed file): wait, reading ours on. If the live
    file is ours by content under another inode (rewritten in place by a
    copy and rename), go on in it from our offset.
    """
    live = chain[-1] if chain and chain[-1].live else None
    if index is not None and index < len(chain) - 1:
        target, start = chain[index + 1], 0
    elif index is not None and offset > 0:
        return Move(chain[index], offset) if chain[index].live else None
    elif live is not None:
        target, start = live, 0
    else:
        return None
    if target.live and target.size == 0:
        return None
    return Move(target, start)


class _Source:
    """One open file of the stream.

    A plain file is read by its descriptor at absolute offsets, so that it
    can be read to its end after it was renamed or unlinked; a rotated
    archive is a forward-only decompressed stream.
    """

    __slots__ = ("_failed", "_fh", "_pos", "_stream", "candidate")

    def __init__(self, candidate: Candidate, fh: IO[bytes], stream: io.BufferedIOBase | None) -> None:
        self.candidate = candidate
        self._fh = fh
        self._stream = stream
        self._pos = 0
        self._failed = False

    @classmethod
    def open(cls, candidate: Candidate) -> _Source | None:
        """None if the name no longer holds that file: it was renamed again since the directory was read.
        Any other error is raised: a file that cannot be read is not one that has moved."""
        try:
            fh = open(candidate.name, "rb", buffering=0)  # noqa: SIM115 (kept open: closed by close())
        except FileNotFoundError:
            return None
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) != candidate.ident:
            fh.close()
            return None
        stream = None
        if candidate.compressed:
            opener = next(f for suffix, f in OPENERS.items() if candidate.name.endswith(suffix))
            stream = opener(fh, "rb")
        return cls(candidate, fh, stream)

    @property
    def ident(self) -> tuple[int, int]:
        return self.candidate.ident

    @property
    def compressed(self) -> bool:
        return self._stream is not None

    def size(self) -> int:
        return os.fstat(self._fh.fileno()).st_size

    def read(self, pos: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``pos``. A damaged archive ends where it breaks, with a warning, since
        retrying cannot mend it and the files after it must still be read."""
        if self._stream is None:
            return os.pread(self._fh.fileno(), size, pos)
        if self._failed:
            return b""
        try:
            if pos != self._pos:
                self._stream.seek(pos)  # forward: decompresses and discards
            data = self._stream.read1(size)  # not read(): a failing read() drops all it had decompressed
        except _ARCHIVE_ERRORS as exc:
            log.warning("%s: unreadable after byte %d (%s); the rest of it is lost", self.candidate.name, pos, exc)
            self._failed = True
            return b""
        self._pos = pos + len(data)
        return data

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._fh.close()


def _head_of(candidate: Candidate, size: int) -> bytes | None:
    """The first ``size`` bytes (fewer if the file is shorter): an archive yields them in pieces."""
    source = _Source.open(candidate)
    if source is None:
        return None
    head = bytearray()
    try:
        while len(head) < size and (data := source.read(len(head), size - len(head))):
            head += data
    finally:
        source.close()
    return bytes(head)


def _beginning(path: str) -> tuple[tuple[int, int], bytes] | None:
    """The device and inode of the regular file at ``path`` and its first bytes; None if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put at the path must not block the follower
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return (st.st_dev, st.st_ino), os.pread(fd, FINGERPRINT_BYTES, 0)
    finally:
        os.close(fd)


class _Read(Enum):
    EOF = "eof"
    BUDGET = "budget"
    TRUNCATED = "truncated"


class Follower:
    """Follows the log at ``path``: ``poll`` returns every complete line written since the last call.

    Starts at ``checkpoint`` (the one delivered with the last line applied),
    or at the beginning of the file without one. Rotations it follows:

    * rename and create (logrotate's default; rsyslog reopens on HUP): the
      renamed file is read by its descriptor to its end, then the new file
      from 0, once the writer has put something in it;
    * copytruncate: the file shrinks, or its beginning changes, under us:
      the lines we had not read yet are in the copy, found by fingerprint
      among the rotated names and read from our offset before the
      truncated file is read from 0;
    * compression, and any number of rotations while mtqpd was down: a
      restart finds the checkpoint's content among the rotated names
      (decompressed if need be) and reads every file after it in order;
    * the file missing (waits for it), deleted, or replaced by another
      (read from 0, never skipped).

    Lines are decoded with undecodable bytes replaced; a run of more than
    ``max_line`` bytes without a newline is passed on in pieces.
    """

    def __init__(
        self,
        path: str,
        checkpoint: Checkpoint | None = None,
        *,
        max_line: int = MAX_LINE,
        budget: int = READ_BUDGET,
    ) -> None:
        if checkpoint is not None and checkpoint.path != path:
            raise ValueError(f"checkpoint of {checkpoint.path!r} given to the follower of {path!r}")
        self.path = path
        self._abspath = os.path.abspath(path)
        self._resume = checkpoint
        self._max_line = max_line
        self._budget = budget
        self._source: _Source | None = None
        self._offset = 0  # where the next undelivered line begins
        self._pending = bytearray()  # read after _offset, not yet a complete line
        self._head = bytearray()  # the file's first min(FINGERPRINT_BYTES, _offset) bytes
        self._fp = fingerprint(b"")

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def poll(self) -> list[Line]:
        """The complete lines written since the last call, each with the checkpoint just after it.

        An I/O error ends the call early and is retried at the next: the lines
        returned are exactly those the follower's position has passed.
        """
        out: list[Line] = []
        try:
            self._advance(out)
        except _Unsettled:
            pass  # a rotation is under way: the change that unsettled the view rings the doorbell
        except OSError as exc:
            log.warning("%s: %s; retrying at the next poll", self.path, exc)
        return out

    def _advance(self, out: list[Line]) -> None:
        if self._source is None and not self._start():
            return
        budget = self._budget
        for _ in range(_MAX_STEPS):
            if self._truncated():
                self._recover()
                continue
            status, budget = self._read(out, budget, final=False)
            if status is _Read.TRUNCATED:
                continue
            if status is _Read.BUDGET or self._at_path():
                return
            step = self._next()
            if step is None:
                return
            move, beginning = step
            if move.offset == 0:  # ours is finished: a last unterminated line will never be completed
                status, budget = self._read(out, budget, final=True)
                if status is not _Read.EOF:
                    continue
                head = b""
            else:
                head = bytes(self._head)
            if not self._switch(move.target, move.offset, head, beginning):
                return

    def _start(self) -> bool:
        """Open where the checkpoint points, or the live file from 0; False while there is nothing to open."""
        chain = self._scan()
        live = chain[-1] if chain and chain[-1].live else None
        cp = self._resume
        if cp is not None and cp.offset > 0:
            found = self._find(chain, (cp.device, cp.inode), cp.fingerprint, cp.fingerprint_size, cp.offset)
            if found is not None:
                index, head = found
                return self._switch(chain[index], cp.offset, head)
            if live is not None:
                log.warning(
                    "%s: no file begins like the checkpoint's (offset %d); reading it from its beginning",
                    self.path,
                    cp.offset,
                )
        return live is not None and self._switch(live, 0, b"")

    def _scan(self) -> list[Candidate]:
        """The rotated copies of the path, oldest first, then the live file if there is one, as two
        listings in a row agree they are; _Unsettled if none do (see the module's docstring)."""
        before = self._list()
        for _ in range(_SCAN_TRIES):
            after = self._list()
            if [(c.name, c.ident) for c in after] == [(c.name, c.ident) for c in before]:
                return after  # the later: its sizes are the newer
            before = after
        raise _Unsettled

    def _list(self) -> list[Candidate]:
        directory, base = os.path.split(self._abspath)
        try:
            names = os.listdir(directory)
        except OSError:
            names = []
        chain: list[Candidate] = []
        for name in [*rotated_names(base, names), base]:
            full = os.path.join(directory, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                chain.append(Candidate(full, st.st_dev, st.st_ino, st.st_size, live=name == base))
        return chain

    def _find(
        self, chain: Sequence[Candidate], ident: tuple[int, int], fp: str, fp_size: int, min_size: int
    ) -> tuple[int, bytes] | None:
        """The file of ``chain`` that begins with the fingerprinted bytes (and those bytes).

        The same device and inode first (a copy being made has the same
        beginning as the file it copies), then the newest first. A file
        renamed or removed since ``chain`` was listed may be the one looked
        for: _Unsettled, since "none" would send the follower past it.
        """
        order = sorted(range(len(chain)), key=lambda i: (chain[i].ident != ident, -i))
        for i in order:
            candidate = chain[i]
            if not candidate.compressed and candidate.size < min_size:
                continue
            try:
                head = _head_of(candidate, fp_size)
            except PermissionError:
                continue  # not one we could have read from
            if head is None:
                raise _Unsettled
            if len(head) == fp_size and fingerprint(head) == fp:
                return i, head
        return None

    def _known(self) -> bytes:
        """The bytes the open file must still begin with: the fingerprinted head, or while no line has
        been delivered from it, what was read of its first line."""
        return bytes(self._head) if self._head else bytes(self._pending[:FINGERPRINT_BYTES])

    def _truncated(self) -> bool:
        """The open file shrank below what was read of it, or begins otherwise now: copytruncate."""
        source = self._source
        assert source is not None
        if source.compressed:
            return False
        known = self._known()
        return source.size() < self._offset + len(self._pending) or source.read(0, len(known)) != known

    def _at_path(self) -> bool:
        assert self._source is not None
        try:
            st = os.stat(self._abspath)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._source.ident

    def _read(self, out: list[Line], budget: int, *, final: bool) -> tuple[_Read, int]:
        """Read on to the end of the open file (or of the budget), delivering complete lines.

        What was read is checked against the file's beginning before it is
        delivered: bytes read just after a truncation belong to the new
        content, and the old content's rest must come from the copy first.
        """
        source = self._source
        assert source is not None
        while budget > 0:
            data = source.read(self._offset + len(self._pending), min(_CHUNK, budget))
            if self._truncated():
                return _Read.TRUNCATED, budget
            if not data:  # the beginning _switch was given, just checked by _truncated, may hold whole lines
                self._deliver(out, final=final)
                return _Read.EOF, budget
            budget -= len(data)
            self._pending += data
            self._deliver(out, final=False)
        return _Read.BUDGET, 0

    def _deliver(self, out: list[Line], *, final: bool) -> None:
        source = self._source
        assert source is not None
        lines = split_lines(self._pending, final=final, max_line=self._max_line)
        for raw in lines:
            if len(self._head) == self._offset < FINGERPRINT_BYTES:
                self._head += raw[: FINGERPRINT_BYTES - self._offset]
                self._fp = fingerprint(self._head)
            self._offset += len(raw)
            cp = Checkpoint(self.path, *source.ident, self._offset, self._fp, len(self._head))
            out.append((decode(raw), cp))
        del self._pending[: sum(map(len, lines))]

    def _recover(self) -> None:
        """After a truncation: go on in the copy that holds what we had not read, else from 0 with a warning.

        A copy that ends before our offset holds nothing unread, and is not
        looked for: lines written after the copy was made and before the
        truncation (copytruncate's own window) survive only if we read them.
        """
        source = self._source
        assert source is not None
        known = self._known()
        beginning = source.read(0, FINGERPRINT_BYTES)  # before the directory: it may be read from 0 (see _next)
        chain = self._scan()
        found = self._find(chain, source.ident, fingerprint(known), len(known), self._offset)
        if found is not None:  # if the copy is renamed again meanwhile, the next step looks again
            self._switch(chain[found[0]], self._offset, bytes(self._head))
            return
        log.warning(
            "%s: truncated, and no rotated copy holds more than was read: lines written after byte %d before "
            "the truncation, if any, are lost; reading it from 0",
            self.path,
            self._offset,
        )
        self._offset = 0
        self._pending[:] = beginning
        self._head.clear()
        self._fp = fingerprint(b"")

    def _next(self) -> tuple[Move, bytes] | None:
        """Where to go once the open file is read to its end, and for the live file read from 0, its
        beginning as read before the directory was listed (see the module's docstring).

        Without those bytes, a copytruncate between the listing and the first read would leave nothing to
        notice it by: the emptied file would be read from 0 and the lines in its copy skipped.
        """
        source = self._source
        assert source is not None
        live = _beginning(self._abspath)
        chain = self._scan()
        found = self._find(chain, source.ident, self._fp, len(self._head), self._offset)
        move = successor(chain, None if found is None else found[0], self._offset)
        if move is None or not move.target.live or move.offset > 0:
            return None if move is None else (move, b"")
        if live is None or live[0] != move.target.ident or not live[1]:
            return None  # replaced, or written to, since it was read: the next poll reads it again
        return move, live[1]

    def _switch(self, target: Candidate, offset: int, head: bytes, beginning: bytes = b"") -> bool:
        """Go on in ``target`` at ``offset``; ``beginning``, if given, is the start of it as already read
        (and still to be delivered), the bytes a truncation before the first read is noticed by."""
        source = _Source.open(target)
        if source is None:
            return False
        self.close()
        self._source = source
        self._offset = offset
        self._pending[:] = beginning
        self._head[:] = head
        self._fp = fingerprint(head)
        return True


LinesHandler = Callable[[str, list[Line]], Awaitable[object]]


class _Doorbell:
    """A wake-up that cannot be missed: rung between a poll and the wait, it still ends the wait."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def arm(self) -> trio.Event:
        self._event = trio.Event()
        return self._event

    def ring(self) -> None:
        self._event.set()


def _ring(bells: Iterable[_Doorbell]) -> None:
    for bell in bells:
        bell.ring()


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's thread; hands events to the trio loop without ever waiting for it, so that
    stopping the observer from trio cannot deadlock."""

    def __init__(self, token: trio.lowlevel.TrioToken, bells: Mapping[str, list[tuple[str, _Doorbell]]]) -> None:
        self._token = token
        self._bells = bells  # directory -> (log name, its follower's doorbell)

    def on_any_event(self, event: FileSystemEvent) -> None:
        ring: set[_Doorbell] = set()
        for p in (event.src_path, event.dest_path):
            directory, name = os.path.split(os.fsdecode(p))
            for base, bell in self._bells.get(directory, ()):
                if name.startswith(base):  # the log or one of its rotated copies
                    ring.add(bell)
        if ring:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(_ring, ring)


@contextlib.asynccontextmanager
async def _watching(bells: Mapping[str, _Doorbell]) -> AsyncIterator[None]:
    """watchdog rings a path's doorbell when the file or one of its rotated copies changes; the observer is
    stopped and joined on exit, whatever ends the block."""
    by_directory: dict[str, list[tuple[str, _Doorbell]]] = {}
    for path, bell in bells.items():
        directory, base = os.path.split(os.path.abspath(path))
        by_directory.setdefault(directory, []).append((base, bell))
    handler = _Handler(trio.lowlevel.current_trio_token(), by_directory)
    observer = Observer()
    kinds: list[type[FileSystemEvent]] = [
        FileCreatedEvent,
        FileModifiedEvent,
        FileMovedEvent,
        FileDeletedEvent,
        FileClosedEvent,
    ]  # not opened/closed-without-write: our own reads must not wake us
    for directory in by_directory:
        if os.path.isdir(directory):
            observer.schedule(handler, directory, event_filter=kinds)
        else:
            log.warning("%s: no such directory; polled, not watched", directory)
    try:
        observer.start()
    except OSError as exc:  # e.g. out of inotify watches: polling still delivers, later
        log.warning("file events unavailable (%s); polling only", exc)
    try:
        yield
    finally:
        if observer.is_alive():
            observer.stop()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(observer.join)


async def _pump(follower: Follower, bell: _Doorbell, on_lines: LinesHandler, interval: float) -> None:
    while True:
        rung = bell.arm()  # before the poll: an event during it must not be lost
        lines = await trio.to_thread.run_sync(follower.poll)  # file I/O off the loop the server shares
        if lines:
            await on_lines(follower.path, lines)
            continue
        with trio.move_on_after(interval):
            await rung.wait()


async def follow(
    paths: Sequence[str],
    checkpoints: Mapping[str, Checkpoint],
    on_lines: LinesHandler,
    *,
    interval: float = 0.5,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow each of ``paths`` from its checkpoint (or its beginning) until cancelled.

    ``await on_lines(path, lines)`` gets each batch of ``(line, checkpoint)``,
    in order per path; the next batch of that path is read only after it
    returns, so a slow consumer slows reading rather than filling memory. A
    consumer that persists the last checkpoint of a batch once the batch is
    durably applied restarts with nothing lost and only lines after that
    checkpoint repeated. Woken by file events, and every ``interval``
    seconds in case one was missed. ``task_status.started()`` is called once
    the events are being watched.
    """
    if len(set(paths)) != len(paths):
        raise ValueError(f"a path given twice: {list(paths)!r}")
    bells = {path: _Doorbell() for path in paths}
    with contextlib.ExitStack() as stack:
        followers = [stack.enter_context(Follower(path, checkpoints.get(path))) for path in paths]
        async with _watching(bells):
            task_status.started()
            async with trio.open_nursery() as nursery:
                for follower in followers:
                    nursery.start_soon(_pump, follower, bells[follower.path], on_lines, interval)
