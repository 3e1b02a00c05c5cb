"""TinyStore: the embedded store, TinyDB files partitioned by arrival hour.

Layout of a store directory::

    <path>/records/2026-03-01T13.json   one TinyDB file per UTC hour of arrival
    <path>/meta.json                    TinyDB file of get_meta/set_meta values
    <path>/lock                         flock'ed by the one writer, holds its pid

Why an hour and not a day: TinyDB writes a file whole, so every flush of a
partition costs serialising all of it. On the generated 1,000,000-line
Postfix log (131,737 records, all arriving within one day, ~1 kB of JSON
each) a day partition is a 130 MB file that takes 4.6 s to rewrite: a
tailer that flushes every few seconds while the day is busy would do
little else. Its busiest hour (7,381 records, 7.2 MB) takes 0.2 s: the
cost of a flush follows the traffic of an hour, not the size of the store,
and hours whose mail has left the queue are not rewritten again until
retention empties them. The day stays the prefix of the name, so a day is
still ``records/2026-03-01T*.json``.

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

One writer at a time holds ``lock``; readers (``readonly=True``: ``mtqpd
show``, a server beside a running ingest) take no lock and reload, at most
once per ``refresh_interval`` seconds, the partitions whose file changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Collection, Hashable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import Storage

from .bulk import gc_paused
from .records import Attempt, Recipient, TrackingRecord, bare_message_id
from .store import DEFAULT_RETENTION, expired, matches

log = logging.getLogger(__name__)

#: Partition of a record: the UTC hour of its arrival, as named on disk.
PARTITION_FORMAT = "%Y-%m-%dT%H"
_PARTITION_FILE = re.compile(r"\d{4}-\d\d-\d\dT\d\d\.json")
#: TinyDB table names inside a partition file and inside meta.json.
RECORDS_TABLE = "records"
META_TABLE = "meta"
#: How often a read-only store looks for files another process rewrote.
REFRESH_INTERVAL = 1.0

#: String fields whose values recur across records (hosts, senders,
#: addresses, actions, status codes). JSON decoding makes a new string for
#: every occurrence; a loaded store shares one per value instead, which
#: takes a third off a reader's memory on the benchmark log for 10% more
#: open time. (Sharing the times too saved 8% more memory for 25% more time.)
_SHARED_FIELDS: dict[type, tuple[str, ...]] = {
    TrackingRecord: ("host", "mta", "sender", "client"),
    Recipient: ("final", "original", "action", "status", "remote_mta", "transport"),
    Attempt: ("outcome", "dsn", "remote_mta", "reply"),
}

#: What reading a damaged file can raise: bad JSON or encoding (ValueError),
#: a document of the wrong shape (KeyError, TypeError, AttributeError), I/O.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError)


class StoreError(Exception):
    """A store that cannot do what was asked (read-only, closed)."""


class StoreLocked(StoreError):
    """Another process holds the store's writer lock."""


def partition_of(when: datetime) -> str:
    """The partition a record arriving at ``when`` lives in."""
    return when.astimezone(UTC).strftime(PARTITION_FORMAT)


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
        # json.dumps, not json.dump: only the one-shot form uses the C encoder.
        text = json.dumps(data, separators=(",", ":"))
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        # Mode 0o666 so that the umask decides, as for TinyDB's own open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)


def _read_table(path: Path, table: str) -> list[dict[str, Any]]:
    """Every document of one table of a TinyDB file."""
    db = TinyDB(path, storage=AtomicJSONStorage)
    try:
        return db.table(table).all()
    finally:
        db.close()


def _write_table(path: Path, table: str, docs: Iterable[dict[str, Any]]) -> None:
    """Make ``docs`` the whole content of the file, in one atomic write.

    TinyDB would write the file once per operation (drop, then insert):
    a crash between the two would leave an empty partition. The caching
    middleware holds both operations and writes their result once, on close.
    """
    db = TinyDB(path, storage=CachingMiddleware(AtomicJSONStorage))
    db.drop_tables()  # writes {} to the cache without reading the old file
    db.table(table).insert_multiple(docs)
    db.close()


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten (the rename gives a new inode),
    cheap to compare; None when there is no such file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _share_values(r: TrackingRecord, pool: dict[str, str]) -> None:
    """Make ``r`` use the pool's copy of each recurring value (``_SHARED_FIELDS``)."""
    share = pool.setdefault
    for obj in (r, *r.recipients):
        for name in _SHARED_FIELDS[type(obj)]:
            value = getattr(obj, name)
            if value is not None:
                setattr(obj, name, share(value, value))
    for x in r.recipients:
        for a in x.attempts:
            for name in _SHARED_FIELDS[Attempt]:
                value = getattr(a, name)
                if value is not None:
                    setattr(a, name, share(value, value))


def _order(r: TrackingRecord) -> tuple[datetime, str]:
    return (r.arrival, r.rid)


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
    return _Keys(
        part=partition_of(r.arrival),
        host_qid=(r.host, r.queue_id),
        qid=r.queue_id,
        mid=bare_message_id(r.message_id) if r.message_id else None,
        envid=r.envid or None,
        hops=tuple({x.next_hop for x in r.recipients if x.next_hop}),
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
        have = self._map.get(key)
        if have is None:
            self._map[key] = rid
        elif isinstance(have, str):
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

    def get(self, key: Hashable) -> Collection[str]:
        have = self._map.get(key, ())
        return (have,) if isinstance(have, str) else have


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
        self._sync_from_disk()
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

    def _sync_from_disk(self) -> None:
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
            for rid in held & self._keys.keys():
                self._unfile(rid)
            pool: dict[str, str] = {}
            for part in changed:
                if part in on_disk:
                    found = self._load_partition(part, pool)
                    if self.readonly:
                        self._files[part] = found
                    self._seen[part] = on_disk[part]
                else:
                    del self._seen[part]
            missing = held - self._keys.keys()
            for part, rids in self._files.items():
                if part not in changed and (lost := rids & missing):
                    self._load_partition(part, pool, only=lost)
            meta_sig = _signature(self._meta_path)
            if meta_sig != self._meta_seen:
                self._load_meta()
                self._meta_seen = meta_sig

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

    def _partition_path(self, part: str) -> Path:
        return self._records_dir / f"{part}.json"

    def _load_partition(self, part: str, pool: dict[str, str], only: set[str] | None = None) -> set[str]:
        """Read a partition file (or just the records ``only`` names), and
        say which rids it holds."""
        path = self._partition_path(part)
        try:
            loaded = [TrackingRecord.from_dict(d) for d in _read_table(path, RECORDS_TABLE)]
            for r in loaded:
                if not isinstance(r.arrival, datetime) or r.arrival.tzinfo is None:
                    raise ValueError(f"record {r.rid}: arrival is not an aware time")
        except _UNREADABLE as exc:
            self._set_aside(path, exc)
            return set()
        for r in loaded:
            if only is None or r.rid in only:
                _share_values(r, pool)
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

    def _file(self, r: TrackingRecord) -> None:
        """Put a record in memory and in every index (replacing its rid)."""
        if r.rid in self._keys:
            self._unfile(r.rid)
        keys = _keys_of(r)
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

    def _found(self, rids: Collection[str]) -> list[TrackingRecord]:
        return sorted((self._records[rid] for rid in rids), key=_order)

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
        for r in records:
            old = self._keys.get(r.rid)
            self._file(r)
            part = self._keys[r.rid].part
            self._dirty.add(part)
            if old is not None and old.part != part:
                self._dirty.add(old.part)
                self._moved_out.setdefault(old.part, set()).add(r.rid)

    def latest(self, host: str, queue_id: str) -> TrackingRecord | None:
        self._refresh()
        found = self._found(self._host_qid.get((host, queue_id)))
        return found[-1] if found else None

    def by_queue_id(self, queue_id: str) -> list[TrackingRecord]:
        self._refresh()
        return self._found(self._qid.get(queue_id))

    def by_message_id(self, message_id: str) -> list[TrackingRecord]:
        self._refresh()
        return self._found(self._mid.get(bare_message_id(message_id)))

    def by_envid(self, envid: str) -> list[TrackingRecord]:
        self._refresh()
        return self._found(self._envid.get(envid))

    def by_next_hop(self, queue_id: str) -> list[TrackingRecord]:
        self._refresh()
        return self._found(self._hop.get(queue_id))

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
        for part in sorted(self._dirty):
            self._write_partition(part, self._moved_out.get(part, set()))
        for part in sorted(self._moved_out):
            self._write_partition(part, set())
        self._dirty.clear()
        self._moved_out.clear()

    def _write_partition(self, part: str, also: set[str]) -> None:
        """Rewrite one partition's file with its records (and ``also``, the
        rids still to be kept there); remove the file when nothing is left."""
        rids = self._parts.get(part, set()) | {rid for rid in also if rid in self._records}
        path = self._partition_path(part)
        if rids:
            _write_table(path, RECORDS_TABLE, (r.to_dict() for r in self._found(rids)))
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
