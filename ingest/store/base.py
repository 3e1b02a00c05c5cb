"""The store of tracking records: the interface, and the semantics every store shares.

Ingest writes through ``Store`` and the server reads through it; nothing
else touches the records. ``MemoryStore`` (``ingest.store.memory``) is the
interface's reference semantics: the contract tests hold every store to it.

Lookups by Message-ID take the bare form (no angle brackets): a log, a
user and an MTQP client each write it their own way. Every list a lookup
returns is in the store's order, (arrival, rid); ``search`` streams, newest
first unless asked otherwise, and stops at its limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol

from ..records import TrackingRecord

#: Retention when the record names no MTRK timeout (DESIGN.md: default 10
#: days, never less than one day, never while the message is still queued).
DEFAULT_RETENTION = timedelta(days=10)
MIN_RETENTION = timedelta(days=1)


class StoreError(Exception):
    """A store that cannot do what was asked (read-only, closed, damaged, of another format)."""


class StoreLocked(StoreError):
    """Another process holds the store's writer lock."""


class Store(Protocol):
    #: Records a reader met but could not read (damaged files) since the
    #: store was opened: an answer given meanwhile may be incomplete.
    unreadable: int

    def get(self, rid: str) -> TrackingRecord | None:
        """The record with this rid."""

    def put(self, records: Iterable[TrackingRecord]) -> None:
        """Insert or replace records by rid. What a record says is taken at
        the put: the caller may go on changing its objects. A store may
        buffer writes until ``flush``, but its reads already see them."""

    def latest(self, host: str, queue_id: str) -> TrackingRecord | None:
        """The newest record (by arrival) with this queue id on this host."""

    def by_queue_id(self, queue_id: str, since: datetime | None = None) -> list[TrackingRecord]:
        """Every record with this queue id, on any host (arrived at or after
        ``since``, when given)."""

    def by_message_id(self, message_id: str) -> list[TrackingRecord]:
        """Every record of this Message-ID (with or without brackets)."""

    def by_envid(self, envid: str) -> list[TrackingRecord]:
        """Every record with this ENVID."""

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
        oldest_first: bool = False,
    ) -> Iterator[TrackingRecord]:
        """Records that match every given criterion (``matches``), newest
        first (``oldest_first``: the other way), at most ``limit``."""

    def span(self) -> tuple[datetime, datetime] | None:
        """The earliest and latest hour of arrival the store may hold
        records of (None when it holds none): what a correlator must ask
        the store about, and what it need not."""

    def expire(self, now: datetime) -> int:
        """Drop records past retention; return how many."""

    def get_meta(self, key: str) -> Any:
        """A small JSON value kept beside the records (tail checkpoints)."""

    def set_meta(self, key: str, value: Any) -> None:
        """Kept like a record: durable once ``flush`` returns, and never
        on disk before the records put before it."""

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
    """The search criteria of ``Store.search`` for one record.

    ``sender`` and ``recipient`` compare whole addresses without regard to
    case; ``recipient`` matches a final or an original recipient;
    ``since``/``until`` bound the arrival; ``action`` matches any
    recipient's stored action.
    """
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


def store_order(record: TrackingRecord) -> tuple[datetime, str]:
    """The order of lookups' answers: (arrival, rid)."""
    return (record.arrival, record.rid)
