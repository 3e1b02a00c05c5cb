"""TinyStore: the embedded store. Records in TinyDB files, found through an index.

Layout of a store directory::

    <path>/records/2026-03-01T13.41.json  segment 41 of the UTC hour 13:00
    <path>/index.sqlite                   where each record is, what finds it
    <path>/lock                           flock'ed by the one writer, holds its pid

**Partitions and segments.** A record lives in the partition of its hour of
arrival, in one of that hour's segments: TinyDB files of at most
``SEGMENT_RECORDS`` records. TinyDB writes a file whole, so the size of a
file is what a change to one of its records costs; a segment keeps that
cost the same whether an hour holds 700 records or 70,000 (a busy server's
hour as one file is 60 MB, and a tailer rewrites its newest file twice a
second). ``records/2026-03-01T*.json`` is still a day.

**Reading.** Nothing is read at open. A lookup asks the index
(``index.py``) for the record numbers filed under its key, then reads each
record's document with one ``pread`` at the offset the index gives, and
checks it (the document's number before it, and the key it was looked up
by in it) before it is believed: an index that is behind or wrong costs a
scan of one segment, never a wrong answer. Records and answers are kept in
bounded caches; memory does not grow with the store.

**Writing.** ``put`` takes what a record says at that moment (its document
and keys) into a buffer that reads already see; ``flush``, or a buffer
grown past its share of memory, writes the changed segments: their files
first (each atomically: temporary file, fsync, rename), then one index
transaction with the records' places, keys, the segments' statistics and
the tail checkpoints of ``set_meta``. A checkpoint is therefore never on
disk before the records it accounts for.

**Crash safety.** Before a flush touches a file it commits the list of the
segments it is about to write (``pending``); a writer that opens a store
with a pending list reads those segments again and files what they hold
(``_roll_forward``), so a kill at any instant leaves a store equal to one
flush or the next. A record that moves to another hour (its arrival moved
earlier) is written into its new segment before it is removed from the old
one: a crash in between leaves two copies, never none, and the roll
forward keeps the newer (later ``last_seen``, else earlier arrival).

**Damage.** A segment is read document by document (``files.scan``): a
damaged record costs that record. Readers count what they could not read
(``unreadable``: the command line says so and exits non-zero); the writer,
when it must rewrite a damaged segment, moves the damaged bytes to a file
beside it and names the logs whose replay brings those records back.

One writer at a time holds ``lock``; readers (``readonly=True``: ``mtqpd
show``, a server beside a running ingest) take no lock, see each index
commit as it lands, and drop what they cached of the segments a commit
changed at most once per ``refresh_interval``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ...records import NEW, TrackingRecord, bare_message_id
from ..base import DEFAULT_RETENTION, MIN_RETENTION, StoreError, StoreLocked, expired, matches, retention_of
from . import files
from .index import (
    ENVID,
    HOUR,
    INDEX_FILE,
    MESSAGE_ID,
    NEXT_HOP,
    QUEUE_ID,
    RECIPIENT,
    SENDER,
    Index,
    IndexError_,
    key_hash,
    part_name,
    part_of,
    part_start,
    seconds,
)


def _warn(message: str, *args: Any) -> None:
    """A warning on the ``ingest`` logger. (logging is imported only when
    there is something to say: a reader that has nothing to say starts
    10 ms sooner.)"""
    import logging

    logging.getLogger(__name__).warning(message, *args)


#: Records a segment holds at most. A rewrite of one costs ~5 ms (1 MB).
SEGMENT_RECORDS = 1000
#: How often a read-only store looks for the writer's commits.
REFRESH_INTERVAL = 1.0
#: The memory a store may use unless told otherwise (``memory=``), shared
#: out below. It does not grow with the number of records held.
DEFAULT_MEMORY = 256 << 20
#: Bytes a decoded record costs in memory, for the caches' budgets.
_RECORD_BYTES = 2500

_SEGMENT_FILE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d)\.(\d+)\.json")
_HOUR_FILE = re.compile(r"\d{4}-\d\d-\d\dT\d\d\.json")  # format 1
#: What reading a damaged document can raise: bad JSON or encoding
#: (ValueError), a document of the wrong shape (KeyError, TypeError,
#: AttributeError).
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)
_HEAD = re.compile(rb'"(\d+)"\s*:\s*$')


def segment_name(part: int, seg: int) -> str:
    return f"{part_name(part)}.{seg}.json"


@dataclass(slots=True)
class _Put:
    """A record as ``put`` took it, until it is written: its document is
    ``length`` bytes at ``start`` of the store's write buffer (one
    bytearray: orjson's bytes keep the 4 KiB they were made in, four times
    a typical document)."""

    start: int
    length: int
    rno: int | None
    part: int
    #: (h, at) of every key it is found by.
    keys: list[tuple[int, int]]
    info: tuple[bool, int | None, int]
    rid: str
    #: The caller's object, told its handle once the record has one, if
    #: the caller still holds it (a replay drops what it has put).
    obj: weakref.ref[TrackingRecord]
    record: TrackingRecord | None = None  # decoded on demand, for reads


def _info(r: TrackingRecord, retention: timedelta) -> tuple[bool, int | None, int]:
    """(queued, left the queue at, retention in seconds): what a segment's
    statistics for retention are made of."""
    keep = int(retention_of(r, retention).total_seconds())
    return (r.removed is None, None if r.removed is None else seconds(r.removed), keep)


def _keys_of(r: TrackingRecord) -> list[tuple[int, int]]:
    """(hash, arrival second) of each key the record is found by. (Not its
    rid: a rid names its queue id, and a row less a record is a sixth
    less of the index's cost to write.)"""
    at = seconds(r.arrival)
    hashes = [key_hash(QUEUE_ID, r.queue_id)]
    if r.message_id:
        hashes.append(key_hash(MESSAGE_ID, bare_message_id(r.message_id)))
    if r.envid:
        hashes.append(key_hash(ENVID, r.envid))
    if r.sender is not None:
        hashes.append(key_hash(SENDER, r.sender.lower()))
    seen = set()
    for x in r.recipients:
        for address in (x.final, x.original):
            if address and (low := address.lower()) not in seen:
                seen.add(low)
                hashes.append(key_hash(RECIPIENT, low))
        if x.next_hop:
            hashes.append(key_hash(NEXT_HOP, x.next_hop))
    return [(h, at) for h in hashes]


def _rid_parts(rid: str) -> tuple[str, tuple[int, ...]]:
    """The queue id in a rid (``host/queue id/first time``), and the hours
    its record is filed in: the hour of its first time, or the hour
    before, when a line older than the first one moved its arrival back
    across the hour. ("", ()) for what is not a rid."""
    try:
        rest, _, when = rid.rpartition("/")
        qid = rest.rpartition("/")[2]
        part = part_of(datetime.fromisoformat(when))
    except ValueError:
        return "", ()
    return qid, (part, part - 1)


def _supersedes(a: TrackingRecord, b: TrackingRecord) -> bool:
    """Of two copies of one record (left by a crash in the middle of moving
    it to another hour), whether ``a`` is the newer: the later
    ``last_seen``; on a tie the earlier arrival, since a record only moves
    when an earlier line of it shows up."""
    seen_a, seen_b = a.last_seen or a.arrival, b.last_seen or b.arrival
    if seen_a != seen_b:
        return seen_a > seen_b
    return a.arrival < b.arrival


def _record_of(doc: dict[str, Any], rno: int) -> TrackingRecord:
    """A record from its document, or one of ``_UNREADABLE``."""
    r = TrackingRecord.from_dict(doc)
    if not isinstance(r.rid, str) or not isinstance(r.arrival, datetime) or r.arrival.tzinfo is None:
        raise ValueError(f"record {rno}: arrival is not an aware time")
    r.handle = rno
    return r


class _LRU(OrderedDict):
    """A dict that forgets its least recently used entries beyond ``size``
    (telling ``evicted`` of each, when given)."""

    def __init__(self, size: int, evicted: Any = None) -> None:
        super().__init__()
        self.size = max(size, 1)
        self.evicted = evicted

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def keep(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            _, old = self.popitem(last=False)
            if self.evicted is not None:
                self.evicted(old)


@dataclass(slots=True)
class _Docs:
    """A segment's documents as the writer holds them to rewrite it."""

    part: int
    #: rno -> (JSON, (queued, done, keep)), in file order.
    docs: dict[int, tuple[bytes, tuple[bool, int | None, int]]]
    size: int = 0


class TinyStore:
    """The ``Store`` on TinyDB segment files and an SQLite index.

    ``readonly`` opens without the writer lock, for processes that only
    read: writes raise ``StoreError``, and reads see what the writer
    commits. ``memory`` bounds what the store keeps in memory (caches, the
    write buffer, SQLite's page cache), whatever its size on disk.
    """

    def __init__(
        self,
        path: Path | str,
        retention: timedelta = DEFAULT_RETENTION,
        *,
        readonly: bool = False,
        refresh_interval: float = REFRESH_INTERVAL,
        memory: int = DEFAULT_MEMORY,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self.readonly = readonly
        self.refresh_interval = refresh_interval
        self.unreadable = 0
        self._records_dir = self.path / "records"
        self._index_path = self.path / INDEX_FILE

        self._cache: _LRU = _LRU(memory // 4 // _RECORD_BYTES)  # rno -> (record, seg)
        self._keycache: _LRU = _LRU(memory // 32 // 256)  # h -> rows of Index.find
        self._fds: _LRU = _LRU(64, evicted=_close_quietly)  # seg -> open descriptor
        self._parts_of: dict[int, int] = {}  # seg -> part (segments are never renumbered)
        self._loaded: _LRU = _LRU(1 << 30)  # seg -> _Docs, bounded by bytes (_loaded_budget)
        self._loaded_budget = memory // 8
        self._pending: dict[str, _Put] = {}
        self._pending_h: dict[int, set[str]] = {}
        self._buffer = bytearray()
        self._pending_budget = memory // 32
        self._meta_pending: dict[str, Any] = {}
        self._next_refresh = 0.0
        self._lock_fd: int | None = None
        self._version = -1
        self._closed = False
        self._next_rno = self._next_seg = 1
        self._gen = 0

        cache_kib = memory // 8 // 1024
        if readonly:
            self._index = self._open_reader(cache_kib)
        else:
            self._records_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = self._lock()
            try:
                self._index = self._open_writer(cache_kib)
            except BaseException:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise
        self._gen = self._index.counter("generation")
        self._next_refresh = time.monotonic() + refresh_interval

    # -- opening -------------------------------------------------------------------

    def _lock(self) -> int:
        """Take the writer lock, or say who has it."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"store {self.path} is locked by another writer (pid {holder}); open it read-only to read it meanwhile"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _older_format(self) -> bool:
        """Files of format 1 (hour files, meta.json) and no index."""
        if (self.path / "meta.json").exists():
            return True
        with contextlib.suppress(FileNotFoundError):
            return any(_HOUR_FILE.fullmatch(name) for name in os.listdir(self._records_dir))
        return False

    def _open_reader(self, cache_kib: int) -> Index:
        if not self._index_path.exists():
            if self._older_format():
                raise StoreError(
                    f"store {self.path} is in the format of an older mtqpd; "
                    f"'mtqpd reindex --store {self.path}' upgrades it in place"
                )
            raise StoreError(f"no store at {self.path} (mtqpd replay --store {self.path} LOG... makes one)")
        try:
            return Index(self._index_path, readonly=True, cache_kib=cache_kib)
        except IndexError_ as exc:
            raise StoreError(
                f"store {self.path}: the index cannot be read ({exc}); "
                f"'mtqpd reindex --store {self.path}' rebuilds it from the records"
            ) from None

    def _open_writer(self, cache_kib: int) -> Index:
        for folder in (self.path, self._records_dir):
            for tmp in folder.glob(".*.tmp"):  # a writer's, killed mid-write: never renamed into place
                tmp.unlink(missing_ok=True)
        fresh = not self._index_path.exists()
        upgrade = fresh and self._older_format()
        try:
            index = Index(self._index_path, readonly=False, cache_kib=cache_kib)
        except IndexError_ as exc:
            if "format" in str(exc) and "knows" in str(exc):
                raise StoreError(f"store {self.path}: {exc}; a newer mtqpd wrote it") from None
            aside = self._index_path.with_name(f"{INDEX_FILE}.damaged-{_stamp()}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self._index_path}{suffix}", f"{aside}{suffix}")
            _warn("store %s: the index could not be read (%s); moved to %s, rebuilding", self.path, exc, aside)
            index = Index(self._index_path, readonly=False, cache_kib=cache_kib)
            fresh = True
        self._index = index
        self._gen = index.counter("generation")
        self._load_counters()
        if upgrade:
            self._upgrade()
        elif fresh:
            self.rebuild()  # segments without an index (one that was damaged, or removed)
        else:
            self._roll_forward()
            self._reconcile()
        return index

    # -- the index's view of the segments: reading documents --------------------------

    def _part_of_seg(self, seg: int) -> int | None:
        part = self._parts_of.get(seg)
        if part is None:
            row = self._index.segment(seg)
            if row is None:
                return None
            part = self._parts_of[seg] = row[0]
        return part

    def _seg_path(self, seg: int, part: int | None = None) -> Path | None:
        part = part if part is not None else self._part_of_seg(seg)
        return None if part is None else self._records_dir / segment_name(part, seg)

    def _fd(self, seg: int) -> int | None:
        fd = self._fds.get_fresh(seg)
        if fd is None:
            path = self._seg_path(seg)
            if path is None:
                return None
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            self._fds.keep(seg, fd)
        return fd

    def _forget_fd(self, seg: int) -> None:
        fd = self._fds.pop(seg, None)
        if fd is not None:
            _close_quietly(fd)

    def _read(self, rno: int, seg: int, off: int, length: int) -> TrackingRecord | None:
        """The record ``rno`` at the place the index gives, checked; or
        found by a scan of its segment when the place is not right."""
        hit = self._cache.get_fresh(rno)
        if hit is not None:
            return hit[0]
        fd = self._fd(seg)
        raw = None
        if fd is not None and off >= 16:
            before = min(off, 24)
            data = os.pread(fd, length + before, off - before)
            m = _HEAD.search(data[:before])
            if m is not None and int(m[1]) == rno and data[before : before + 1] == b"{":
                raw = data[before:]
        if raw is None:
            raw = self._find_in_segment(rno, seg)
            if raw is None:
                return None
        try:
            record = _record_of(files.read_doc(raw), rno)
        except _UNREADABLE:
            self.unreadable += 1
            return None
        self._cache.keep(rno, (record, seg))
        return record

    def _find_in_segment(self, rno: int, seg: int) -> bytes | None:
        """A record's document by a scan of its segment: the index's offset
        was wrong (a writer between its files and its commit, or damage)."""
        path = self._seg_path(seg)
        try:
            data = path.read_bytes() if path is not None else b""
        except FileNotFoundError:
            data = b""
        for number, off, length in files.scan(data).docs:
            if number == rno:
                return data[off : off + length]
        return None

    def _rows(self, h: int, since: datetime | None = None) -> list[tuple[int, int, int, int]]:
        if since is not None:
            return self._index.find(h, seconds(since))
        rows = self._keycache.get_fresh(h)
        if rows is None:
            rows = self._index.find(h)
            self._keycache.keep(h, rows)
        return rows

    def _lookup(self, kind: str, key: str, wanted: Any, since: datetime | None = None) -> list[TrackingRecord]:
        """Every record filed under (kind, key) that ``wanted(record)`` says
        has that key, the write buffer's versions over the index's."""
        self._refresh()
        h = key_hash(kind, key)
        found: dict[str, TrackingRecord] = {}
        pending = self._pending
        for rno, seg, off, length in self._rows(h, since):
            r = self._read(rno, seg, off, length)
            if r is not None and r.rid not in pending and wanted(r):
                found[r.rid] = r
        for rid in self._pending_h.get(h, ()):
            r = self._decoded(pending[rid])
            if wanted(r):
                found[rid] = r
        out = list(found.values())
        if since is not None:
            out = [r for r in out if r.arrival >= since]
        if len(out) > 1:
            out.sort(key=_order)
        return out

    def _decoded(self, put: _Put) -> TrackingRecord:
        if put.record is None:
            put.record = _record_of(files.read_doc(self._buffer[put.start : put.start + put.length]), put.rno or 0)
            put.record.handle = put.rno
        return put.record

    # -- the Store interface: reading ---------------------------------------------------

    def get(self, rid: str) -> TrackingRecord | None:
        self._refresh()
        put = self._pending.get(rid)
        if put is not None:
            return self._decoded(put)
        qid, parts = _rid_parts(rid)
        h = key_hash(QUEUE_ID, qid)
        for part in parts:
            for rno, seg, off, length in self._index.find_in(part, h):
                r = self._read(rno, seg, off, length)
                if r is not None and r.rid == rid:
                    return r
        return None

    def latest(self, host: str, queue_id: str) -> TrackingRecord | None:
        found = [r for r in self.by_queue_id(queue_id) if r.host == host]
        return found[-1] if found else None

    def by_queue_id(self, queue_id: str, since: datetime | None = None) -> list[TrackingRecord]:
        return self._lookup(QUEUE_ID, queue_id, lambda r: r.queue_id == queue_id, since)

    def by_message_id(self, message_id: str) -> list[TrackingRecord]:
        bare = bare_message_id(message_id)
        return self._lookup(
            MESSAGE_ID, bare, lambda r: r.message_id is not None and bare_message_id(r.message_id) == bare
        )

    def by_envid(self, envid: str) -> list[TrackingRecord]:
        return self._lookup(ENVID, envid, lambda r: r.envid == envid)

    def by_next_hop(self, queue_id: str) -> list[TrackingRecord]:
        return self._lookup(NEXT_HOP, queue_id, lambda r: any(x.next_hop == queue_id for x in r.recipients))

    def span(self) -> tuple[datetime, datetime] | None:
        self._refresh()
        parts = self._index.span()
        pending = {p.part for p in self._pending.values()}
        if parts is not None:
            pending.update(parts)
        if not pending:
            return None
        return part_start(min(pending)), part_start(max(pending) + 1)

    def search(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        action: str | None = None,
        limit: int | None = None,
        oldest_first: bool = False,
    ) -> Iterator[TrackingRecord]:
        """Hour by hour, newest first (or oldest): through the index when
        a sender or recipient is given, else through the hour's segments;
        only the hours inside ``since``/``until``; until ``limit``."""
        self._refresh()
        if self._pending and not self.readonly:
            self._write(durable=False)  # so that the index holds what the buffer does
        criteria = {"sender": sender, "recipient": recipient, "since": since, "until": until, "action": action}
        first = seconds(since) if since is not None else None
        last = seconds(until) if until is not None else None
        if recipient is not None:
            key: int | None = key_hash(RECIPIENT, recipient.lower())
        elif sender is not None:
            key = key_hash(SENDER, sender.lower())
        else:
            key = None
        parts = self._index.parts(
            first // HOUR if first is not None else None,
            last // HOUR if last is not None else None,
            newest_first=not oldest_first,
        )
        left = limit
        for part in parts:
            hits = [r for r in self._in_part(part, key, first, last, oldest_first) if matches(r, **criteria)]
            hits.sort(key=_order, reverse=not oldest_first)
            if left is not None:
                hits = hits[:left]
                left -= len(hits)
            yield from hits
            if left == 0:
                return

    def _in_part(
        self, part: int, key: int | None, first: int | None, last: int | None, oldest_first: bool
    ) -> Iterator[TrackingRecord]:
        if key is not None:
            for rno, seg, off, length in self._index.in_part(part, key, first, last, not oldest_first):
                r = self._read(rno, seg, off, length)
                if r is not None:
                    yield r
            return
        for seg, _, _ in self._index.segments_of(part):
            yield from self._segment_records(seg, part)

    def _segment_records(self, seg: int, part: int) -> Iterator[TrackingRecord]:
        """Every readable record of a segment; the others counted."""
        path = self._records_dir / segment_name(part, seg)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        scan = files.scan(data)
        self.unreadable += len(scan.damaged)
        # A copy of a record the index places elsewhere (the old place of a
        # record being moved to another hour) is not the record.
        placed = self._index.locate_many([rno for rno, _, _ in scan.docs])
        for rno, off, length in scan.docs:
            where = placed.get(rno)
            if where is None or where[0] != seg:
                continue
            hit = self._cache.get(rno)
            if hit is not None:
                yield hit[0]
                continue
            try:
                yield _record_of(files.read_doc(data[off : off + length]), rno)
            except _UNREADABLE:
                self.unreadable += 1

    def get_meta(self, key: str) -> Any:
        if key in self._meta_pending:
            return self._meta_pending[key]
        row = self._index.db.execute("SELECT value FROM user_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else files.loads(row[0].encode("utf-8", "surrogatepass"))

    def __len__(self) -> int:
        self._refresh()
        if self._pending and not self.readonly:
            self._write(durable=False)
        return self._index.db.execute("SELECT count(*) FROM recs").fetchone()[0]

    def _refresh(self) -> None:
        """A reader's look for the writer's commits, at most once per
        ``refresh_interval``: what it cached of changed segments goes."""
        if not self.readonly:
            return
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self.refresh_interval
        version = self._index.data_version()
        if version == self._version:
            return
        self._version = version
        gen = self._index.counter("generation")
        if gen == self._gen:
            return
        changed = self._index.changed_since(self._gen)
        self._gen = gen
        self._keycache.clear()
        if changed is None:
            self._cache.clear()
            for seg in list(self._fds):
                self._forget_fd(seg)
            self._parts_of.clear()
            return
        gone = set(changed)
        for rno in [rno for rno, (_, seg) in self._cache.items() if seg in gone]:
            del self._cache[rno]
        for seg in gone:
            self._forget_fd(seg)

    # -- the Store interface: writing ---------------------------------------------------

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")
        if self._lock_fd is None:
            raise StoreError(f"store {self.path} is closed")

    def put(self, records: Iterable[TrackingRecord]) -> None:
        self._writable()
        pending, by_h = self._pending, self._pending_h
        for r in records:
            doc = files.json_bytes(r.to_dict())
            keys = _keys_of(r)
            old = pending.get(r.rid)
            rno = r.handle
            if old is not None and old.rno is not None and (rno is None or rno == NEW):
                rno = old.rno
            if rno == NEW:
                rno = r.handle = self._take_rno()
            if old is not None:
                for h, _ in old.keys:
                    rids = by_h.get(h)
                    if rids is not None:
                        rids.discard(r.rid)
            buffer = self._buffer
            start = len(buffer)
            buffer += doc
            pending[r.rid] = _Put(
                start, len(doc), rno, part_of(r.arrival), keys, _info(r, self.retention), r.rid, weakref.ref(r)
            )
            for h, _ in keys:
                by_h.setdefault(h, set()).add(r.rid)
            if rno is not None:
                self._cache.pop(rno, None)
        self._keycache.clear()
        if len(self._buffer) > self._pending_budget:
            self._write(durable=False)

    def set_meta(self, key: str, value: Any) -> None:
        self._writable()
        self._meta_pending[key] = value

    def flush(self) -> None:
        """Write the buffer's segments and the meta, durably."""
        if self.readonly:
            return
        self._writable()
        self._write(durable=True)

    def close(self) -> None:
        """Flush and release the writer lock; a reader just stops."""
        if self._closed:
            return
        try:
            if not self.readonly and self._lock_fd is not None:
                self.flush()
        finally:
            self._closed = True
            for seg in list(self._fds):
                self._forget_fd(seg)
            self._index.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def expire(self, now: datetime) -> int:
        """Segments whose every record is past retention go whole (file and
        index rows, and an hour's keys with its last segment); a segment
        with only some of them is rewritten without them."""
        self._writable()
        self._write(durable=True)
        cutoff = seconds(now)
        whole: list[int] = []
        partial: list[int] = []
        dropped = 0
        for seg, part, queued, done_last, keep_most in self._index.expiring(
            cutoff - int(MIN_RETENTION.total_seconds())
        ):
            self._parts_of[seg] = part
            if queued == 0 and done_last is not None and done_last + keep_most < cutoff:
                whole.append(seg)
            else:
                partial.append(seg)
        rewrite: dict[int, _Docs] = {}
        for seg in partial:
            docs = self._load(seg)
            keep = {}
            for rno, (raw, info) in docs.docs.items():
                record = _record_of(files.read_doc(raw), rno)
                if expired(record, now, self.retention):
                    dropped += 1
                    self._cache.pop(rno, None)
                else:
                    keep[rno] = (raw, info)
            if len(keep) < len(docs.docs):
                rewrite[seg] = _Docs(docs.part, keep)
        if not whole and not rewrite:
            return 0
        for seg in whole:
            row = self._index.segment(seg)
            dropped += row[1] if row else 0
        with self._index.transaction():
            self._index.mark_pending([*whole, *rewrite])
        for seg in whole:
            path = self._seg_path(seg)
            self._forget_fd(seg)
            self._loaded.pop(seg, None)
            if path is not None:
                path.unlink(missing_ok=True)
        written = self._write_files(rewrite, durable=True)
        files.fsync_dir(self._records_dir)
        with self._index.transaction():
            self._index.drop_segments(whole)
            self._commit_written(written, [])
            self._index.drop_empty_parts()
            self._index.clear_pending()
            self._note_generation([*whole, *rewrite])
        self._cache.clear()
        self._keycache.clear()
        return dropped

    # -- a spread replay's workers write segments of their own (ingest.parallel) ------

    def reserve(self, records: int, segments: int) -> tuple[int, int]:
        """The first of ``records`` record numbers and of ``segments``
        segment numbers that no one else will use, for another process to
        write new segments with (``write_new_segments``)."""
        self._writable()
        first_rno, first_seg = self._next_rno, self._next_seg
        self._next_rno += records
        self._next_seg += segments
        return first_rno, first_seg

    def file_segments(self, written: list[tuple[int, int, tuple, list[tuple[int, int, int]]]], rows: array) -> None:
        """Index what ``write_new_segments`` wrote: one transaction. The
        files are on disk already; a crash before this commit leaves them
        unknown to the index, and the next writer files them (``_reconcile``)."""
        self._writable()
        if not written:
            return
        with self._index.transaction():
            for seg, part, stats, spans in written:
                self._parts_of[seg] = part
                self._index.put_segment(seg, part, stats)
                self._index.put_locations((rno, seg, off, length) for rno, off, length in spans)
            it = iter(rows)
            self._index.put_keys(zip(it, it, it, it, strict=True))
            self._index.set_counter("next_rno", self._next_rno)
            self._index.set_counter("next_seg", self._next_seg)
            self._note_generation([seg for seg, *_ in written])
        self._keycache.clear()

    # -- writing segments -------------------------------------------------------------

    def _write(self, *, durable: bool) -> None:
        """Write what ``put`` and ``set_meta`` took since the last write."""
        if not self._pending and not self._meta_pending:
            return
        puts = list(self._pending.values())
        self._resolve(puts)
        located = self._index.locate_many([p.rno for p in puts if p.rno is not None])
        into: dict[int, list[_Put]] = {}
        moved_out: dict[int, set[int]] = {}
        new_in: dict[int, list[_Put]] = {}
        for p in puts:
            where = located.get(p.rno) if p.rno is not None else None
            seg = where[0] if where is not None else None
            if seg is not None and self._part_of_seg(seg) == p.part:
                into.setdefault(seg, []).append(p)
                continue
            if seg is not None:
                moved_out.setdefault(seg, set()).add(p.rno)  # type: ignore[arg-type]
            new_in.setdefault(p.part, []).append(p)
        for part, ps in new_in.items():
            self._place(part, ps, into)
        for p in puts:
            if p.rno is None:
                p.rno = self._take_rno()
        touched = set(into) | set(moved_out)
        if touched:
            with self._index.transaction():
                self._index.mark_pending(touched)
                self._index.set_counter("next_rno", self._next_rno)
                self._index.set_counter("next_seg", self._next_seg)
        changed: dict[int, _Docs] = {}
        for seg, ps in into.items():
            docs = self._load(seg) if self._part_of_seg(seg) is not None else _Docs(ps[0].part, {})
            merged = dict(docs.docs)
            for p in ps:
                merged[p.rno] = (bytes(self._buffer[p.start : p.start + p.length]), p.info)  # type: ignore[index]
            changed[seg] = _Docs(docs.part, merged)
        written = self._write_files(changed, durable=durable)
        if written and durable:
            files.fsync_dir(self._records_dir)
        with self._index.transaction():
            self._commit_written(written, puts, moved_out)
            if self._meta_pending:
                self._index.set_user_meta(self._meta_pending.items(), _json_text)
            if not moved_out:
                self._index.clear_pending()
            self._note_generation(touched)
        for p in puts:
            obj = p.obj()
            if obj is not None:
                obj.handle = p.rno
        self._pending.clear()
        self._pending_h.clear()
        self._buffer = bytearray()
        self._meta_pending.clear()
        self._keycache.clear()
        if moved_out:
            self._take_home(moved_out, durable)

    def _take_home(self, moved_out: dict[int, set[int]], durable: bool) -> None:
        """The second pass of a move: the old segments without the records
        now written elsewhere."""
        changed = {}
        for seg, rnos in moved_out.items():
            docs = self._load(seg)
            changed[seg] = _Docs(docs.part, {rno: d for rno, d in docs.docs.items() if rno not in rnos})
        empty = [seg for seg, d in changed.items() if not d.docs]
        written = self._write_files({s: d for s, d in changed.items() if d.docs}, durable=durable)
        for seg in empty:
            path = self._seg_path(seg)
            self._forget_fd(seg)
            self._loaded.pop(seg, None)
            if path is not None:
                path.unlink(missing_ok=True)
        if durable:
            files.fsync_dir(self._records_dir)
        with self._index.transaction():
            self._index.drop_segments(empty)
            self._commit_written(written, [])
            self._index.drop_empty_parts()
            self._index.clear_pending()
            self._note_generation(moved_out)

    def _resolve(self, puts: list[_Put]) -> None:
        """The numbers of records put without a handle that the store holds
        already (a copy made from a record's dict, say), by their rid key;
        in batches, a few hundred seeks a statement."""
        by_part: dict[int, dict[int, list[_Put]]] = {}
        for p in puts:
            if p.rno is None:
                qid, parts = _rid_parts(p.rid)
                h = key_hash(QUEUE_ID, qid)
                for part in parts:
                    by_part.setdefault(part, {}).setdefault(h, []).append(p)
        if not by_part:
            return
        held = set(self._index.parts(min(by_part), max(by_part)))
        for part, wanted in by_part.items():
            if part not in held:
                continue  # nothing is filed in that hour
            for h, rno in self._index.rnos_in(part, list(wanted)):
                for p in wanted[h]:
                    if p.rno is None and self._holds(rno, p.rid):
                        p.rno = rno

    def _holds(self, rno: int, rid: str) -> bool:
        where = self._index.locate(rno)
        r = self._read(rno, *where) if where is not None else None
        return r is not None and r.rid == rid

    def _take_rno(self) -> int:
        rno = self._next_rno
        self._next_rno += 1
        return rno

    def _load_counters(self) -> None:
        """The next record and segment numbers: the counters, or past the
        highest in use (a flush killed before it counted what it wrote)."""
        db = self._index.db
        top_rno = db.execute("SELECT max(rno) FROM recs").fetchone()[0] or 0
        top_seg = db.execute("SELECT max(seg) FROM segs").fetchone()[0] or 0
        self._next_rno = max(self._index.counter("next_rno", 1), top_rno + 1)
        self._next_seg = max(self._index.counter("next_seg", 1), top_seg + 1)

    def _place(self, part: int, ps: list[_Put], into: dict[int, list[_Put]]) -> None:
        """New records of an hour: into its newest segment while it has
        room, then into new ones of ``SEGMENT_RECORDS`` each."""
        newest = self._index.open_segment(part)
        if newest is not None:
            seg, count = newest
            self._parts_of[seg] = part
            room = SEGMENT_RECORDS - count
            if room > 0:
                into.setdefault(seg, []).extend(ps[:room])
                ps = ps[room:]
        for i in range(0, len(ps), SEGMENT_RECORDS):
            seg = self._next_seg
            self._next_seg = seg + 1
            self._parts_of[seg] = part
            into[seg] = ps[i : i + SEGMENT_RECORDS]

    def _load(self, seg: int) -> _Docs:
        """A segment's documents, to rewrite it: from memory, else its file.
        What cannot be read in the file is set aside beside it."""
        docs = self._loaded.get_fresh(seg)
        if docs is not None:
            return docs
        part = self._part_of_seg(seg)
        assert part is not None
        path = self._records_dir / segment_name(part, seg)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        docs, damaged = self._parse(data, part)
        if damaged:
            self._set_aside(path, part, damaged)
        return docs

    def _parse(self, data: bytes, part: int) -> tuple[_Docs, list[bytes]]:
        """A segment file's records as (JSON, info), and the bytes of what
        could not be read."""
        scan = files.scan(data)
        out: dict[int, tuple[bytes, tuple[bool, int | None, int]]] = {}
        damaged = [data[off : off + length] for off, length in scan.damaged]
        for rno, off, length in scan.docs:
            raw = data[off : off + length]
            try:
                record = _record_of(files.read_doc(raw), rno)
            except _UNREADABLE:
                damaged.append(raw)
                continue
            out[rno] = (raw, _info(record, self.retention))
        return _Docs(part, out), damaged

    def _set_aside(self, path: Path, part: int, damaged: list[bytes]) -> None:
        aside = path.with_name(f"{path.name}.damaged-{_stamp()}")
        files.write_atomic(aside, b"\n".join(damaged) + b"\n")
        sources = self.get_meta("sources") or {}
        hour = part_start(part)
        logs = sorted(
            p for p, (a, b) in sources.items() if a <= (hour + timedelta(hours=1)).isoformat() and b >= hour.isoformat()
        )
        hint = (
            f"mtqpd replay --store {self.path} {' '.join(logs)}"
            if logs
            else f"replay the logs of {part_name(part)}:00 UTC with mtqpd replay --store {self.path}"
        )
        _warn(
            "store %s: %d damaged record(s) in %s could not be read; their bytes are in %s; to restore them: %s",
            self.path,
            len(damaged),
            path.name,
            aside.name,
            hint,
        )

    def _write_files(
        self, changed: dict[int, _Docs], *, durable: bool
    ) -> dict[int, tuple[_Docs, list[tuple[int, int, int]]]]:
        """Write each segment's file; its documents' spans."""
        out = {}
        for seg, docs in changed.items():
            data, spans = files.segment_bytes((rno, raw) for rno, (raw, _) in docs.docs.items())
            path = self._records_dir / segment_name(docs.part, seg)
            files.write_atomic(path, data, durable=durable)
            self._forget_fd(seg)
            docs.size = len(data)
            self._keep_loaded(seg, docs)
            out[seg] = (docs, spans)
        return out

    def _keep_loaded(self, seg: int, docs: _Docs) -> None:
        self._loaded.keep(seg, docs)
        total = sum(d.size for d in self._loaded.values())
        while total > self._loaded_budget and len(self._loaded) > 1:
            _, old = self._loaded.popitem(last=False)
            total -= old.size

    def _commit_written(
        self,
        written: dict[int, tuple[_Docs, list[tuple[int, int, int]]]],
        puts: list[_Put],
        leaving: dict[int, set[int]] | None = None,
    ) -> None:
        """The index rows of written segments (inside a transaction); not
        those of ``leaving``, the copies a record moved to another hour
        left in its old segment until the second pass removes them."""
        index = self._index
        for seg, (docs, spans) in written.items():
            gone = leaving.get(seg, ()) if leaving else ()
            index.put_locations((rno, seg, off, length) for rno, off, length in spans if rno not in gone)
            index.put_segment(seg, docs.part, _stats(docs))
        index.put_keys([(p.part, h, at, p.rno) for p in puts for h, at in p.keys])

    def _note_generation(self, segs: Iterable[int]) -> None:
        self._gen += 1
        self._index.set_counter("generation", self._gen)
        self._index.note_changes(self._gen, segs)

    # -- repair ------------------------------------------------------------------------

    def _roll_forward(self) -> None:
        """File what the segments of an interrupted flush hold (see the
        module's docstring)."""
        pending = self._index.pending()
        if not pending:
            return
        names = self._segment_files()
        self._adopt(
            {seg: names[seg] for seg in pending if seg in names}, missing=[s for s in pending if s not in names]
        )

    def _segment_files(self) -> dict[int, tuple[int, Path]]:
        out = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._records_dir):
                m = _SEGMENT_FILE.fullmatch(entry.name)
                if m:
                    part = part_of(datetime.fromisoformat(m[1] + ":00+00:00"))
                    out[int(m[2])] = (part, Path(entry.path))
        return out

    def _reconcile(self) -> None:
        """A writer's look at the directory beside the index: segment files
        it does not know are filed; known ones that are gone are dropped,
        loudly."""
        names = self._segment_files()
        known = dict(self._index.all_segments())
        extra = {seg: v for seg, v in names.items() if seg not in known}
        gone = [seg for seg in known if seg not in names]
        if gone:
            _warn(
                "store %s: %d segment file(s) the index names are gone (%s); their records are lost",
                self.path,
                len(gone),
                ", ".join(segment_name(known[s], s) for s in gone[:5]),
            )
        if extra or gone:
            self._adopt(extra, missing=gone)

    def _adopt(self, segs: dict[int, tuple[int, Path]], missing: list[int]) -> None:
        """File the records of these segment files; where a record is also
        in another segment, keep the newer copy and remove the other."""
        located: dict[int, TrackingRecord] = {}
        parsed: dict[int, _Docs] = {}
        for seg, (part, path) in sorted(segs.items()):
            self._parts_of[seg] = part
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            docs, damaged = self._parse(data, part)
            if damaged:
                self._set_aside(path, part, damaged)
            parsed[seg] = docs
        # Records in two places: the copy elsewhere, if any, from the index.
        rnos = [rno for docs in parsed.values() for rno in docs.docs]
        elsewhere = {rno: where for rno, where in self._index.locate_many(rnos).items() if where[0] not in parsed}
        keep_here: dict[int, _Docs] = {}
        drop_there: dict[int, set[int]] = {}
        for seg, docs in parsed.items():
            kept = {}
            for rno, (raw, info) in docs.docs.items():
                record = _record_of(files.read_doc(raw), rno)
                if rno in located:  # in two of these segments
                    other_seg, other = located[rno]  # type: ignore[misc]
                    if not _supersedes(record, other):
                        continue
                    keep_here[other_seg].docs.pop(rno, None)
                if rno in elsewhere:
                    seg2, off, length = elsewhere[rno]
                    other = self._read(rno, seg2, off, length)
                    if other is not None and not _supersedes(record, other):
                        continue
                    drop_there.setdefault(seg2, set()).add(rno)
                located[rno] = (seg, record)  # type: ignore[assignment]
                kept[rno] = (raw, info)
            keep_here[seg] = _Docs(docs.part, kept)
        with self._index.transaction():
            self._index.mark_pending([*keep_here, *drop_there])
        rewrite = {seg: d for seg, d in keep_here.items() if len(d.docs) != len(parsed[seg].docs)}
        written = self._write_files(rewrite, durable=True)
        for seg, docs in keep_here.items():
            if seg not in written:
                data = (self._records_dir / segment_name(docs.part, seg)).read_bytes()
                spans = [(n, o, ln) for n, o, ln in files.scan(data).docs if n in docs.docs]
                written[seg] = (docs, spans)
        empty = [seg for seg, (d, _) in written.items() if not d.docs]
        with self._index.transaction():
            self._index.drop_segments([*missing, *empty])
            self._commit_written({s: w for s, w in written.items() if w[0].docs}, [])
            self._index.put_keys(
                (part_of(record.arrival), h, at, rno)
                for rno, (seg, record) in located.items()  # type: ignore[misc]
                if seg not in empty
                for h, at in _keys_of(record)
            )
            if not drop_there:
                self._index.clear_pending()
            self._index.drop_empty_parts()
            self._note_generation([*segs, *missing])
        top = max(located, default=0)
        if top >= self._next_rno:
            self._next_rno = top + 1
        if segs and max(segs) >= self._next_seg:
            self._next_seg = max(segs) + 1
        with self._index.transaction():
            self._index.set_counter("next_rno", self._next_rno)
            self._index.set_counter("next_seg", self._next_seg)
        if drop_there:
            self._take_home(drop_there, durable=True)

    def rebuild(self) -> int:
        """The index made again from the segment files alone (``mtqpd
        reindex``); how many records it files."""
        self._writable()
        self._write(durable=True)
        with self._index.transaction():
            self._index.wipe()
        self._cache.clear()
        self._keycache.clear()
        self._loaded.clear()
        self._parts_of.clear()
        found = self._segment_files()
        if found:
            self._adopt(found, missing=[])
        return self._index.db.execute("SELECT count(*) FROM recs").fetchone()[0]

    def _upgrade(self) -> None:
        """A store of format 1 (one TinyDB file per hour, meta.json) made
        into segments and an index, in place; each old file is removed once
        its records are written again."""
        _warn("store %s: upgrading from the format of an older mtqpd (once)", self.path)
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            try:
                table = files.read_doc(meta_path.read_bytes()).get("meta", {})
                for doc in table.values():
                    self._meta_pending[doc["key"]] = doc["value"]
            except (*_UNREADABLE, OSError) as exc:
                _warn("store %s: meta.json could not be read (%s): tail checkpoints start over", self.path, exc)
        old = sorted(p for p in self._records_dir.iterdir() if _HOUR_FILE.fullmatch(p.name))
        for path in old:
            data = path.read_bytes()
            scan = files.scan(data)
            records = []
            damaged = [data[off : off + n] for off, n in scan.damaged]
            for number, off, length in scan.docs:
                raw = data[off : off + length]
                try:
                    records.append(_record_of(files.read_doc(raw), number))
                except _UNREADABLE:
                    damaged.append(raw)
            if damaged:
                self._set_aside(path, part_of(datetime.fromisoformat(path.stem + ":00+00:00")), damaged)
            for r in records:
                r.handle = None
            self.put(records)
            self._write(durable=True)
            path.unlink()
        self._write(durable=True)
        meta_path.unlink(missing_ok=True)
        files.fsync_dir(self.path)


def write_new_segments(
    store: Path, records: list[TrackingRecord], first_rno: int, first_seg: int, retention: timedelta
) -> tuple[list[tuple[int, int, tuple, list[tuple[int, int, int]]]], array]:
    """Write ``records`` (none of them held by the store yet) as new
    segments of the store at ``store``, numbered from ``first_rno`` and
    ``first_seg`` (``TinyStore.reserve``): for a process that holds no
    ``TinyStore``. Returns, for ``TinyStore.file_segments``, each segment's
    (number, hour, statistics, spans) and the key rows, flat."""
    by_part: dict[int, list[TrackingRecord]] = {}
    for r in records:
        by_part.setdefault(part_of(r.arrival), []).append(r)
    written = []
    rows = array("q")
    rno, seg = first_rno, first_seg
    records_dir = store / "records"
    for part in sorted(by_part):
        group = sorted(by_part[part], key=_order)
        for i in range(0, len(group), SEGMENT_RECORDS):
            docs: dict[int, tuple[bytes, tuple[bool, int | None, int]]] = {}
            for r in group[i : i + SEGMENT_RECORDS]:
                docs[rno] = (files.json_bytes(r.to_dict()), _info(r, retention))
                for h, at in _keys_of(r):
                    rows.extend((part, h, at, rno))
                rno += 1
            data, spans = files.segment_bytes((n, raw) for n, (raw, _) in docs.items())
            files.write_atomic(records_dir / segment_name(part, seg), data)
            written.append((seg, part, _stats(_Docs(part, docs)), spans))
            seg += 1
    if written:
        files.fsync_dir(records_dir)
    return written, rows


def _stats(docs: _Docs) -> tuple[int, int, int | None, int | None, int | None, int | None, int]:
    """(records, queued, done_first, done_last, keep_least, keep_most,
    damaged) of a segment, from its documents' infos."""
    queued = 0
    done: list[int] = []
    keeps: list[int] = []
    for _, (is_queued, at, keep) in docs.docs.values():
        if is_queued:
            queued += 1
        elif at is not None:
            done.append(at)
            keeps.append(keep)
    if not done:
        return (len(docs.docs), queued, None, None, None, None, 0)
    return (len(docs.docs), queued, min(done), max(done), min(keeps), max(keeps), 0)


def _order(r: TrackingRecord) -> tuple[datetime, str]:
    return (r.arrival, r.rid)


def _stamp() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"


def _json_text(value: Any) -> str:
    return files.json_bytes(value).decode("utf-8")


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
