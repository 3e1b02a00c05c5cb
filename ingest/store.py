"""The store of tracking records: the interface, and an in-memory store.

Ingest writes through ``Store`` and the server reads through it; nothing
else touches the records. The embedded default is the TinyDB store
(``ingest.tinystore``); a larger deployment may put a database server behind
the same interface. ``MemoryStore`` keeps everything in dictionaries: it is
the interface's reference semantics (the contract tests run against every
store) and what a one-off ``mtqpd`` run without ``--store`` uses.

Lookups by Message-ID take the bare form (no angle brackets): a log, a
user and an MTQP client each write it their own way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from .records import TrackingRecord, bare_message_id

#: Retention when the record names no MTRK timeout (DESIGN.md: default 10
#: days, never less than one day, never while the message is still queued).
DEFAULT_RETENTION = timedelta(days=10)
MIN_RETENTION = timedelta(days=1)


class StoreError(Exception):
    """A store that cannot do what was asked (read-only, closed)."""


class StoreLocked(StoreError):
    """Another process holds the store's writer lock."""


class Store(Protocol):
    def get(self, rid: str) -> TrackingRecord | None:
        """The record with this rid."""

    def put(self, records: Iterable[TrackingRecord]) -> None:
        """Insert or replace records by rid. A store may buffer writes until
        ``flush``, but its reads already see them."""

    def latest(self, host: str, queue_id: str) -> TrackingRecord | None:
        """The newest record (by arrival) with this queue id on this host."""

    def by_queue_id(self, queue_id: str) -> list[TrackingRecord]:
        """Every record with this queue id, on any host, oldest first."""

    def by_message_id(self, message_id: str) -> list[TrackingRecord]:
        """Every record of this Message-ID (with or without brackets), oldest first."""

    def by_envid(self, envid: str) -> list[TrackingRecord]:
        """Every record with this ENVID, oldest first."""

    def by_next_hop(self, queue_id: str) -> list[TrackingRecord]:
        """Every record with a recipient handed on under this queue id."""

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
        """Records that match every given criterion, oldest first.

        ``sender`` and ``recipient`` compare whole addresses without regard
        to case; ``recipient`` matches a final or an original recipient;
        ``since``/``until`` bound the arrival; ``action`` matches any
        recipient's stored action.
        """

    def expire(self, now: datetime) -> int:
        """Drop records past retention; return how many."""

    def get_meta(self, key: str) -> Any:
        """A small JSON value kept beside the records (tail checkpoints)."""

    def set_meta(self, key: str, value: Any) -> None:
        """Kept like a record: durable once ``flush`` returns."""

    def flush(self) -> None:
        """Make every put and set_meta durable."""

    def close(self) -> None:
        """Flush and release the store."""


def retention_of(record: TrackingRecord, default: timedelta = DEFAULT_RETENTION) -> timedelta:
    """How long a record is kept after it left the queue: its MTRK timeout
    (RFC 3885 gives it in seconds) when known, else ``default``; at least
    a day."""
    keep = timedelta(seconds=record.mtrk_timeout) if record.mtrk_timeout else default
    return max(keep, MIN_RETENTION)


def expired(record: TrackingRecord, now: datetime, default: timedelta = DEFAULT_RETENTION) -> bool:
    """Past retention: left the queue, and longer ago than its retention."""
    return record.removed is not None and record.removed + retention_of(record, default) < now


def matches(
    record: TrackingRecord,
    *,
    sender: str | None = None,
    recipient: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
) -> bool:
    """The search criteria of ``Store.search`` for one record."""
    if sender is not None and (record.sender or "").lower() != sender.lower():
        return False
    if since is not None and record.arrival < since:
        return False
    if until is not None and record.arrival > until:
        return False
    if recipient is not None:
        wanted = recipient.lower()
        if not any(wanted in ((r.final or "").lower(), (r.original or "").lower()) for r in record.recipients):
            return False
    return action is None or any(r.action == action for r in record.recipients)


class MemoryStore:
    """Every record in dictionaries, indexed as the interface asks."""

    def __init__(self, retention: timedelta = DEFAULT_RETENTION) -> None:
        self.retention = retention
        self._records: dict[str, TrackingRecord] = {}
        self._meta: dict[str, Any] = {}
        self._indexed: dict[str, dict[str, set[str]]] = {}
        self._index: dict[str, defaultdict[str, set[str]]] = {
            name: defaultdict(set) for name in ("host_qid", "qid", "mid", "envid", "hop")
        }

    def _keys(self, r: TrackingRecord) -> dict[str, set[str]]:
        return {
            "host_qid": {f"{r.host}\0{r.queue_id}"},
            "qid": {r.queue_id},
            "mid": {bare_message_id(r.message_id)} if r.message_id else set(),
            "envid": {r.envid} if r.envid else set(),
            "hop": {x.next_hop for x in r.recipients if x.next_hop},
        }

    def _unindex(self, rid: str) -> None:
        # The keys indexed at put time, not the record's keys now: a caller
        # may have changed the record it put (the correlator does).
        for name, keys in self._indexed.pop(rid, {}).items():
            for key in keys:
                self._index[name][key].discard(rid)

    def _find(self, name: str, key: str) -> list[TrackingRecord]:
        found = [self._records[rid] for rid in self._index[name].get(key, ())]
        return sorted(found, key=lambda r: (r.arrival, r.rid))

    def get(self, rid: str) -> TrackingRecord | None:
        return self._records.get(rid)

    def put(self, records: Iterable[TrackingRecord]) -> None:
        for r in records:
            self._unindex(r.rid)
            self._records[r.rid] = r
            keys = self._indexed[r.rid] = self._keys(r)
            for name, values in keys.items():
                for key in values:
                    self._index[name][key].add(r.rid)

    def latest(self, host: str, queue_id: str) -> TrackingRecord | None:
        found = self._find("host_qid", f"{host}\0{queue_id}")
        return found[-1] if found else None

    def by_queue_id(self, queue_id: str) -> list[TrackingRecord]:
        return self._find("qid", queue_id)

    def by_message_id(self, message_id: str) -> list[TrackingRecord]:
        return self._find("mid", bare_message_id(message_id))

    def by_envid(self, envid: str) -> list[TrackingRecord]:
        return self._find("envid", envid)

    def by_next_hop(self, queue_id: str) -> list[TrackingRecord]:
        return self._find("hop", queue_id)

    def search(self, *, limit: int | None = None, **criteria: Any) -> list[TrackingRecord]:
        found = sorted((r for r in self._records.values() if matches(r, **criteria)), key=lambda r: (r.arrival, r.rid))
        return found[:limit] if limit is not None else found

    def expire(self, now: datetime) -> int:
        gone = [r for r in self._records.values() if expired(r, now, self.retention)]
        for r in gone:
            self._unindex(r.rid)
            del self._records[r.rid]
        return len(gone)

    def get_meta(self, key: str) -> Any:
        return self._meta.get(key)

    def set_meta(self, key: str, value: Any) -> None:
        self._meta[key] = value

    def flush(self) -> None:
        pass  # nothing is kept beyond the process

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._records)
