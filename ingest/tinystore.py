"""TinyStore: the embedded store, TinyDB files partitioned by arrival hour.

Layout of a store directory::

    <path>/records/2026-03-01T13.json   one TinyDB file per UTC hour of arrival
    <path>/meta.json                    TinyDB file of get_meta/set_meta values
    <path>/lock                         flock'ed by the one writer, holds its pid

Why an hour and not a day: TinyDB writes a file whole, so every flush of a
partition costs serialising all of it. On the generated 1,000,000-line
Postfix log (131,737 records, all arriving within one day, ~0.9 kB of
JSON each) a day partition is a 110-130 MB file that takes 3 s to rewrite:
a tailer that flushes every few seconds while the day is busy would do
little else. Its busiest hour (7,381 records, 6 MB) takes 0.15 s: the
cost of a flush follows the traffic of an hour, not the size of the store,
and hours whose mail has left the queue are not rewritten again until
retention empties them. The day stays the prefix of the name, so a day is
still ``records/2026-03-01T*.json``.

What the store costs on that log (2 cores, tests/bench/test_store_lookup.py
on a busy machine): ``put`` of all the records 1.1 s; their first ``flush``
1.1 s, shared out among forked writers when a flush is that large (see
``_write_partitions``); opening the store 3.1 to 3.7 s and 273 MB. Records
are written as ``TrackingRecord.to_dict``'s compact dicts, in one encoding
per file (``_write_table``, ``json_bytes``).

The in-memory working set *is* the records: every record is loaded as a
``TrackingRecord`` when the store opens and indexed by rid, (host, queue
id), queue id, bare Message-ID, ENVID and next hop, so no read ever scans a
file or the whole set (``search`` excepted, which filters but still skips
the hours outside its time range). The files are only the persistence:
``put`` changes memory and marks partitions dirty, ``flush`` rewrites the
dirty ones, then ``meta.json``, in that order, so a tail checkpoint on disk
never runs ahead of the records it accounts for.

Crash safety: every file is written through ``AtomicJSONStorage`` (temp
file, fsync, rename, fsync of the directory), so a kill at any instant
leaves each file either as the previous flush or the new one wrote it. A
record that moves to another partition (its arrival moved earlier when an
out-of-order line came in) is written to its new partition while its old
partition still holds it, and only then removed from the old one: a crash
in between leaves two copies, never none, and the next open keeps the newer
(later ``last_seen``, else earlier arrival) and rewrites the other file.

One writer at a time holds ``lock`` (and the writers a flush forks hold it
with it, until they exit); readers (``readonly=True``: ``mtqpd show``, a
server beside a running ingest) take no lock and reload, at most once per
``refresh_interval`` seconds, the partitions whose file changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import operator
import os
import re
import secrets
import threading
import time
import traceback
from collections.abc import Hashable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson
from tinydb import TinyDB
from tinydb.storages import Storage

from .bulk import gc_paused, keep_out_of_gc
from .records import Share, TrackingRecord, When, bare_message_id, sharing
from .store import DEFAULT_RETENTION, StoreError, StoreLocked, expired, matches

log = logging.getLogger(__name__)

#: Partition of a record: the UTC hour of its arrival, as named on disk.
PARTITION_FORMAT = "%Y-%m-%dT%H"
_PARTITION_FILE = re.compile(r"\d{4}-\d\d-\d\dT\d\d\.json")
#: TinyDB table names inside a partition file and inside meta.json.
RECORDS_TABLE = "records"
META_TABLE = "meta"
#: How often a read-only store looks for files another process rewrote.
REFRESH_INTERVAL = 1.0
#: Records a flush must write per forked writer process (see ``_share_out``).
FORK_MIN_RECORDS = 20_000
#: A store opened with this many records takes them out of the cyclic
#: garbage collector's sight (``bulk.keep_out_of_gc``).
FREEZE_MIN_RECORDS = 10_000

#: What reading a damaged file can raise: bad JSON or encoding (ValueError),
#: a document of the wrong shape (KeyError, TypeError, AttributeError), I/O.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError)


def partition_of(when: datetime) -> str:
    """The partition a record arriving at ``when`` lives in.

    That is ``PARTITION_FORMAT`` of the UTC time, spelled out by hand: for a
    third of strftime's cost, paid once per record at every put and load.
    """
    utc = when if when.tzinfo is UTC else when.astimezone(UTC)
    return "%04d-%02d-%02dT%02d" % (utc.year, utc.month, utc.day, utc.hour)  # noqa: UP031 (twice as fast as an f-string)


def _fsync_dir(path: Path) -> None:
    """Make renames and unlinks in ``path`` survive a power cut, not just a
    process crash: they are changes to the directory, not to the files."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicJSONStorage(Storage):
    """A TinyDB storage that replaces its file whole on every write.

    TinyDB's own ``JSONStorage`` rewrites its file in place (seek, write,
    truncate): a crash in the middle leaves half a JSON document that no
    later open can read. Here a write goes to a temporary file in the same
    directory, is fsynced, and is renamed over the old file, and the
    directory is fsynced: whoever reads the file, and whenever the writer
    dies, sees the previous content or the new one, never a mix.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        """The whole database; None (TinyDB's "empty") when there is no file."""
        try:
            with self.path.open(encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        text = json_bytes(data)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        # Mode 0o666 so that the umask decides, as for TinyDB's own open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)


#: What orjson must leave to the standard library (see ``json_bytes``).
_ORJSON_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def json_bytes(data: Any) -> bytes:
    """``data`` as compact JSON in UTF-8, what every file of the store holds.

    orjson writes it five times as fast as the standard library's encoder
    (whose work was a quarter of a spread replay's CPU, tests/bench). The
    files still say what ``json.dumps`` says, since orjson is made to
    refuse what it would write otherwise, and what it refuses goes to the
    standard library: str and int subclasses (an enum member), an integer
    beyond 64 bits (a hostile log's ``size=``), a lone surrogate (an
    undecodable byte of a file name in a tail checkpoint); and dataclasses
    and times, which ``json.dumps`` refuses in turn, as before. Files are
    read back by the standard library, which, unlike orjson, reads a big
    integer as an integer.
    """
    try:
        return orjson.dumps(data, option=_ORJSON_STRICT)
    except TypeError:
        # Without the check for cycles, a tenth of the encoding: records'
        # dicts and tail checkpoints have none.
        return json.dumps(data, separators=(",", ":"), check_circular=False).encode("ascii")


def _read_table(path: Path, table: str) -> list[dict[str, Any]]:
    """Every document of one table of a TinyDB file."""
    db = TinyDB(path, storage=AtomicJSONStorage)
    try:
        return db.table(table).all()
    finally:
        db.close()


def _write_table(path: Path, table: str, docs: Iterable[dict[str, Any]]) -> None:
    """Make ``docs`` the whole content of the file, in one atomic write.

    The file is what TinyDB would write for a table of these documents
    inserted in order into an empty database (ids "1", "2", ...), and is
    read back through TinyDB; but it is made here in one ``json_bytes``:
    TinyDB's ``insert_multiple`` would first check and file every document
    in its table, which costs a seventh again of serialising them. One
    write, too: TinyDB would write once per operation (drop, insert), and a
    crash between the two would leave an empty partition.
    """
    AtomicJSONStorage(path).write({table: {str(n): doc for n, doc in enumerate(docs, 1)}})


def write_partition(
    store: Path, part: str, records: list[TrackingRecord], made: Mapping[str, dict[str, Any]] = MappingProxyType({})
) -> None:
    """Make ``records`` the whole content of partition ``part`` of the store
    at ``store``, in the store's order, atomically. For a flush, and for a
    replay spread over processes, which writes a fresh store's partitions
    from each process without a ``TinyStore`` of its own, and makes their
    documents (``to_dict``) ahead of time while it waits: ``made`` holds
    documents already made, by rid."""
    records.sort(key=_order)
    _write_table(_partition_path(store, part), RECORDS_TABLE, (made.get(r.rid) or r.to_dict() for r in records))


def _partition_path(store: Path, part: str) -> Path:
    return store / "records" / f"{part}.json"


def _share_out(jobs: list[tuple[str, set[str]]], sizes: list[int]) -> list[list[tuple[str, set[str]]]]:
    """``jobs`` in groups of about equal size (largest first to the least
    loaded), one group per writer process; a single group unless there is
    enough to write for forking to pay.

    A forked writer costs ~0.1 s (the fork, and the copy-on-write of the
    pages it touches): with ``FORK_MIN_RECORDS`` each it saves several times
    that.
    """
    writers = min(len(jobs), _writers(), sum(sizes) // FORK_MIN_RECORDS)
    if writers < 2:
        return [jobs]
    groups: list[list[tuple[str, set[str]]]] = [[] for _ in range(writers)]
    load = [0] * writers
    for size, job in sorted(zip(sizes, jobs, strict=True), key=lambda sj: -sj[0]):
        least = load.index(min(load))
        groups[least].append(job)
        load[least] += size
    return groups


def _writers() -> int:
    """How many processes may write a flush: one per core this process may
    run on; but only this one while it runs other threads, since a fork
    copies just the calling thread, and a lock another thread held stays
    held in the child."""
    if threading.active_count() > 1:
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _wait_for(children: dict[int, list[str]]) -> list[str]:
    """Wait for every forked writer; the partitions of those that failed."""
    failed = []
    for pid, parts in children.items():
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            failed += parts
    return sorted(failed)


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten (the rename gives a new inode),
    cheap to compare; None when there is no such file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


#: The order of records in a file and in answers: (arrival, rid). An
#: attrgetter, not a function: it keys every record of a flush.
_order = operator.attrgetter("arrival", "rid")


def _supersedes(a: TrackingRecord, b: TrackingRecord) -> bool:
    """Of two copies of one rid (left by a crash in the middle of moving a
    record to another partition), whether ``a`` is the newer one: the later
    ``last_seen``; on a tie the earlier arrival, since a record only moves
    when an earlier line of it shows up."""
    seen_a, seen_b = a.last_seen or a.arrival, b.last_seen or b.arrival
    if seen_a != seen_b:
        return seen_a > seen_b
    return a.arrival < b.arrival


class _Keys(NamedTuple):
    """Where a record was filed when it was put: kept so that it can be
    unfiled even if the caller has since changed the record object itself."""

    part: str
    host_qid: tuple[str, str]
    qid: str
    mid: str | None
    envid: str | None
    hops: tuple[str, ...]


def _keys_of(r: TrackingRecord) -> _Keys:
    # Positional: NamedTuple's keyword form costs a Python-level call, once
    # per record at every put and load.
    hops = tuple({x.next_hop for x in r.recipients if x.next_hop}) if r.recipients else ()
    return _Keys(
        partition_of(r.arrival),
        (r.host, r.queue_id),
        r.queue_id,
        bare_message_id(r.message_id) if r.message_id else None,
        r.envid or None,
        hops,
    )


class _Index:
    """Key -> rids, for one kind of lookup.

    Nearly every key (a Message-ID, a queue id) names a single record, so a
    lone rid is kept bare and only a shared key gets a set: a set per key
    would cost ~200 bytes for each record in each index.
    """

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: dict[Hashable, str | set[str]] = {}

    def add(self, key: Hashable, rid: str) -> None:
        have = self._map.setdefault(key, rid)  # one lookup for the usual new key
        if have is rid:
            return
        if isinstance(have, str):
            if have != rid:
                self._map[key] = {have, rid}
        else:
            have.add(rid)

    def discard(self, key: Hashable, rid: str) -> None:
        have = self._map.get(key)
        if have == rid:
            del self._map[key]
        elif isinstance(have, set):
            have.discard(rid)
            if not have:
                del self._map[key]

    def find(self, key: Hashable, records: dict[str, TrackingRecord]) -> list[TrackingRecord]:
        """The records under ``key``, in the store's order. Every TRACK
        makes several of these lookups, most of them for one record or none."""
        have = self._map.get(key)
        if have is None:
            return []
        if have.__class__ is str:
            return [records[have]]
        return sorted((records[rid] for rid in have), key=_order)


class TinyStore:
    """The ``Store`` on TinyDB files, with its working set in memory.

    ``readonly`` opens without the writer lock, for processes that only
    read (``mtqpd show``, a server beside the ingest): writes raise
    ``StoreError``, and reads pick up what the writer flushed.
    """

    def __init__(
        self,
        path: Path | str,
        retention: timedelta = DEFAULT_RETENTION,
        *,
        readonly: bool = False,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self.readonly = readonly
        self.refresh_interval = refresh_interval
        self._records_dir = self.path / "records"
        self._meta_path = self.path / "meta.json"

        self._records: dict[str, TrackingRecord] = {}
        self._keys: dict[str, _Keys] = {}
        self._parts: dict[str, set[str]] = {}
        self._host_qid, self._qid, self._mid, self._envid, self._hop = (_Index() for _ in range(5))
        self._meta: dict[str, Any] = {}

        #: Partitions whose file no longer matches memory.
        self._dirty: set[str] = set()
        #: Partition -> rids its file may still hold that now live in another
        #: partition: they stay in the old file until the new one is written.
        self._moved_out: dict[str, set[str]] = {}
        self._meta_dirty = False

        #: File signatures as last loaded, by partition, and of meta.json.
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._meta_seen: tuple[int, int, int] | None = None
        #: A reader's partition -> the rids its file held when last read.
        self._files: dict[str, set[str]] = {}
        self._next_refresh = 0.0
        self._lock_fd: int | None = None

        if not readonly:
            if not self._records_dir.is_dir():
                self._records_dir.mkdir(parents=True)
                _fsync_dir(self.path)
            self._lock_fd = self._lock()
            self._remove_temp_files()
        self._sync_from_disk(opening=True)
        self._next_refresh = time.monotonic() + refresh_interval

    # -- opening, locking, loading ---------------------------------------------------------

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

    def _remove_temp_files(self) -> None:
        """Temp files of a writer that died mid-write: never renamed into
        place, so nothing refers to them. Only the lock holder may do this."""
        for folder in (self.path, self._records_dir):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def _sync_from_disk(self, opening: bool = False) -> None:
        """Load what changed on disk since last looked: at open, every file;
        for a reader, the partitions the writer rewrote, added or removed."""
        on_disk = self._partition_files()
        changed = sorted(p for p in on_disk.keys() | self._seen.keys() if on_disk.get(p) != self._seen.get(p))
        with gc_paused():
            # A reader forgets what the changed files held, then reads them
            # again. A rid one of them no longer holds may still be in a file
            # that did not change (the other copy of a record being moved):
            # it is read from there.
            held: set[str] = set()
            for part in changed:
                held |= self._files.pop(part, set())
            # (Comprehensions, not set operations with the keys view: those
            # would copy all the store's rids, every second, in a reader.)
            for rid in [rid for rid in held if rid in self._keys]:
                self._unfile(rid)
            pool = sharing()
            for part in changed:
                if part in on_disk:
                    found = self._load_partition(part, pool)
                    if self.readonly:
                        self._files[part] = found
                    self._seen[part] = on_disk[part]
                else:
                    del self._seen[part]
            missing = {rid for rid in held if rid not in self._keys}
            for part, rids in self._files.items():
                if part not in changed and (lost := rids & missing):
                    self._load_partition(part, pool, only=lost)
            meta_sig = _signature(self._meta_path)
            if meta_sig != self._meta_seen:
                self._load_meta()
                self._meta_seen = meta_sig
            if opening and len(self._records) >= FREEZE_MIN_RECORDS:
                keep_out_of_gc()  # while paused: the pause's end would walk them all

    def _partition_files(self) -> dict[str, tuple[int, int, int]]:
        """Partition -> signature of its file, for every partition file."""
        found = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._records_dir):
                if _PARTITION_FILE.fullmatch(entry.name):
                    sig = _signature(Path(entry.path))
                    if sig is not None:  # unless removed meanwhile
                        found[entry.name.removesuffix(".json")] = sig
        return found

    def _load_partition(self, part: str, pool: tuple[Share, When], only: set[str] | None = None) -> set[str]:
        """Read a partition file (or just the records ``only`` names), and
        say which rids it holds. ``pool``, from ``records.sharing``, is one
        for all the files read together: their records share its values."""
        path = _partition_path(self.path, part)
        share, when = pool
        try:
            loaded = [TrackingRecord.from_dict(d, share, when) for d in _read_table(path, RECORDS_TABLE)]
            for r in loaded:
                if not isinstance(r.arrival, datetime) or r.arrival.tzinfo is None:
                    raise ValueError(f"record {r.rid}: arrival is not an aware time")
        except _UNREADABLE as exc:
            self._set_aside(path, exc)
            return set()
        for r in loaded:
            if only is None or r.rid in only:
                self._adopt(r, part)
        return {r.rid for r in loaded}

    def _adopt(self, r: TrackingRecord, file_part: str) -> None:
        """File a record read from ``file_part``'s file, and note what the
        next flush must repair: a second copy of a rid, a record in the
        file of another partition than its arrival's."""
        current = self._keys.get(r.rid)
        if current is not None and not self.readonly:
            self._dirty.update((file_part, current.part))
        if current is not None and not _supersedes(r, self._records[r.rid]):
            return
        self._file(r)
        part = self._keys[r.rid].part
        if part != file_part and not self.readonly:
            self._dirty.update((file_part, part))
            self._moved_out.setdefault(file_part, set()).add(r.rid)

    def _load_meta(self) -> None:
        try:
            self._meta = {d["key"]: d["value"] for d in _read_table(self._meta_path, META_TABLE)}
        except _UNREADABLE as exc:
            self._meta = {}
            self._set_aside(self._meta_path, exc)

    def _set_aside(self, path: Path, exc: Exception) -> None:
        """A damaged file must not stop the store, nor be overwritten: the
        writer renames it aside for the operator; a reader only skips it."""
        if self.readonly:
            log.warning("store %s: skipping unreadable %s (%s)", self.path, path, exc)
            return
        aside = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
        try:
            os.replace(path, aside)
        except OSError as err:
            log.warning("store %s: skipping unreadable %s (%s); could not move it aside: %s", self.path, path, exc, err)
            return
        log.warning("store %s: unreadable %s (%s) moved aside to %s; its records are lost", self.path, path, exc, aside)

    # -- the in-memory indexes ----------------------------------------------------------

    def _file(self, r: TrackingRecord, keys: _Keys | None = None) -> None:
        """Put a record in memory and in every index (replacing its rid);
        ``keys`` when the caller has them already."""
        old = self._keys.get(r.rid)
        if keys is None:
            keys = _keys_of(r)
        if old == keys:
            # Filed under these very keys already (a record put again, as a
            # replay does at every batch it changed in): only the object changes.
            self._records[r.rid] = r
            return
        if old is not None:
            self._unfile(r.rid)
        self._records[r.rid] = r
        self._keys[r.rid] = keys
        self._parts.setdefault(keys.part, set()).add(r.rid)
        self._host_qid.add(keys.host_qid, r.rid)
        self._qid.add(keys.qid, r.rid)
        if keys.mid is not None:
            self._mid.add(keys.mid, r.rid)
        if keys.envid is not None:
            self._envid.add(keys.envid, r.rid)
        for hop in keys.hops:
            self._hop.add(hop, r.rid)

    def _unfile(self, rid: str) -> str:
        """Take a record out of memory and the indexes; its partition."""
        keys = self._keys.pop(rid)
        del self._records[rid]
        members = self._parts[keys.part]
        members.discard(rid)
        if not members:
            del self._parts[keys.part]
        self._host_qid.discard(keys.host_qid, rid)
        self._qid.discard(keys.qid, rid)
        if keys.mid is not None:
            self._mid.discard(keys.mid, rid)
        if keys.envid is not None:
            self._envid.discard(keys.envid, rid)
        for hop in keys.hops:
            self._hop.discard(hop, rid)
        return keys.part

    def _refresh(self) -> None:
        """A reader's cheap look for the writer's flushes, at most once per
        ``refresh_interval``: the store may be read very often."""
        if not self.readonly:
            return
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + self.refresh_interval
            self._sync_from_disk()

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")
        if self._lock_fd is None:
            raise StoreError(f"store {self.path} is closed")

    # -- the Store interface ------------------------------------------------------------

    def get(self, rid: str) -> TrackingRecord | None:
        self._refresh()
        return self._records.get(rid)

    def put(self, records: Iterable[TrackingRecord]) -> None:
        self._writable()
        dirty = self._dirty
        for r in records:
            old = self._keys.get(r.rid)
            keys = _keys_of(r)
            self._file(r, keys)
            dirty.add(keys.part)
            if old is not None and old.part != keys.part:
                dirty.add(old.part)
                self._moved_out.setdefault(old.part, set()).add(r.rid)

    def latest(self, host: str, queue_id: str) -> TrackingRecord | None:
        self._refresh()
        found = self._host_qid.find((host, queue_id), self._records)
        return found[-1] if found else None

    def by_queue_id(self, queue_id: str) -> list[TrackingRecord]:
        self._refresh()
        return self._qid.find(queue_id, self._records)

    def by_message_id(self, message_id: str) -> list[TrackingRecord]:
        self._refresh()
        return self._mid.find(bare_message_id(message_id), self._records)

    def by_envid(self, envid: str) -> list[TrackingRecord]:
        self._refresh()
        return self._envid.find(envid, self._records)

    def by_next_hop(self, queue_id: str) -> list[TrackingRecord]:
        self._refresh()
        return self._hop.find(queue_id, self._records)

    def search(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[TrackingRecord]:
        """Partitions are visited in time order, so a ``limit`` stops early
        and a time range skips whole hours."""
        self._refresh()
        first = partition_of(since) if since is not None else None
        last = partition_of(until) if until is not None else None
        criteria = {"sender": sender, "recipient": recipient, "since": since, "until": until, "action": action}
        found: list[TrackingRecord] = []
        for part in sorted(self._parts):
            if (first is not None and part < first) or (last is not None and part > last):
                continue
            hits = (r for r in (self._records[rid] for rid in self._parts[part]) if matches(r, **criteria))
            found += sorted(hits, key=_order)
            if limit is not None and len(found) >= limit:
                break
        return found[:limit] if limit is not None else found

    def expire(self, now: datetime) -> int:
        self._writable()
        gone = [rid for rid, r in self._records.items() if expired(r, now, self.retention)]
        for rid in gone:
            self._dirty.add(self._unfile(rid))
        return len(gone)

    def get_meta(self, key: str) -> Any:
        self._refresh()
        return self._meta.get(key)

    def set_meta(self, key: str, value: Any) -> None:
        self._writable()
        self._meta[key] = value
        self._meta_dirty = True

    def flush(self) -> None:
        """Write the dirty partitions, then meta.

        Two passes when records moved: first every dirty partition with the
        records that moved out of it still in it, then those partitions
        again without them. Between the passes a moved record is in both
        files; at no instant is it in neither.
        """
        if self.readonly:
            return
        self._writable()
        with gc_paused():
            self._write_dirty()
        if self._meta_dirty:
            _write_table(self._meta_path, META_TABLE, ({"key": k, "value": v} for k, v in self._meta.items()))
            self._meta_dirty = False

    def _write_dirty(self) -> None:
        self._write_partitions([(part, self._moved_out.get(part, set())) for part in sorted(self._dirty)])
        self._write_partitions([(part, set()) for part in sorted(self._moved_out)])
        self._dirty.clear()
        self._moved_out.clear()

    def _write_partitions(self, jobs: list[tuple[str, set[str]]]) -> None:
        """Write each (partition, rids it keeps too) and return once all are
        on disk: what is written next (the second pass, meta.json) must
        never be on disk before them.

        A large flush is shared out among forked writers, one per core;
        they write disjoint files exactly as this process would (each
        atomically), and their exit status says whether they did.
        """
        groups = _share_out(jobs, [len(self._parts.get(part, ())) + len(also) for part, also in jobs])
        if len(groups) == 1:
            for part, also in jobs:
                self._write_partition(part, also)
            return
        children: dict[int, list[str]] = {}
        try:
            for group in groups[1:]:
                children[self._fork_writer(group)] = [part for part, _ in group]
            for part, also in groups[0]:
                self._write_partition(part, also)
        finally:
            failed = _wait_for(children)
        if failed:
            raise OSError(f"store {self.path}: could not write partitions {', '.join(failed)} (see the error above)")

    def _fork_writer(self, group: list[tuple[str, set[str]]]) -> int:
        """A child process that writes ``group`` and exits: 0 when all of it
        is on disk. It inherits the writer lock, so no other writer can
        open the store until it is done, even if this process dies first."""
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:
            for part, also in group:
                self._write_partition(part, also)
            status = 0
        except BaseException:
            # Straight to the descriptor: the stream's buffer may hold the
            # parent's pending output, which must not come out twice.
            os.write(2, traceback.format_exc().encode("utf-8", "replace"))
        finally:
            os._exit(status)  # never back into the caller's code, nor its atexit

    def _write_partition(self, part: str, also: set[str]) -> None:
        """Rewrite one partition's file with its records (and ``also``, the
        rids still to be kept there); remove the file when nothing is left."""
        rids = self._parts.get(part, set()) | {rid for rid in also if rid in self._records}
        path = _partition_path(self.path, part)
        if rids:
            write_partition(self.path, part, [self._records[rid] for rid in rids])
        elif path.exists():
            path.unlink()
            _fsync_dir(self._records_dir)

    def close(self) -> None:
        """Flush and release the writer lock; a reader just stops."""
        if self._lock_fd is None:
            return
        try:
            self.flush()
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __len__(self) -> int:
        self._refresh()
        return len(self._records)
