"""``MemoryStore``: every record in dictionaries.

It is the ``Store`` interface's reference semantics (the contract tests run
against every store and this one) and what a one-off run without a store
directory uses. Records are copied at ``put``, as a store on disk takes
what a record says at that moment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from ..records import TrackingRecord, bare_message_id
from .base import DEFAULT_RETENTION, expired, matches, store_order


class MemoryStore:
    """Every record in dictionaries, indexed as the interface asks."""

    def __init__(self, retention: timedelta = DEFAULT_RETENTION) -> None:
        self.retention = retention
        self.unreadable = 0
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
        for name, keys in self._indexed.pop(rid, {}).items():
            for key in keys:
                self._index[name][key].discard(rid)

    def _find(self, name: str, key: str) -> list[TrackingRecord]:
        found = [self._records[rid] for rid in self._index[name].get(key, ())]
        return sorted(found, key=store_order)

    def get(self, rid: str) -> TrackingRecord | None:
        return self._records.get(rid)

    def put(self, records: Iterable[TrackingRecord]) -> None:
        for r in records:
            r = TrackingRecord.from_dict(r.to_dict())
            self._unindex(r.rid)
            self._records[r.rid] = r
            keys = self._indexed[r.rid] = self._keys(r)
            for name, values in keys.items():
                for key in values:
                    self._index[name][key].add(r.rid)

    def latest(self, host: str, queue_id: str) -> TrackingRecord | None:
        found = self._find("host_qid", f"{host}\0{queue_id}")
        return found[-1] if found else None

    def by_queue_id(self, queue_id: str, since: datetime | None = None) -> list[TrackingRecord]:
        found = self._find("qid", queue_id)
        return found if since is None else [r for r in found if r.arrival >= since]

    def by_message_id(self, message_id: str) -> list[TrackingRecord]:
        return self._find("mid", bare_message_id(message_id))

    def by_envid(self, envid: str) -> list[TrackingRecord]:
        return self._find("envid", envid)

    def by_next_hop(self, queue_id: str) -> list[TrackingRecord]:
        return self._find("hop", queue_id)

    def search(
        self, *, limit: int | None = None, oldest_first: bool = False, **criteria: Any
    ) -> Iterator[TrackingRecord]:
        found = sorted((r for r in self._records.values() if matches(r, **criteria)), key=store_order)
        if not oldest_first:
            found.reverse()
        return iter(found[:limit] if limit is not None else found)

    def span(self) -> tuple[datetime, datetime] | None:
        if not self._records:
            return None
        arrivals = [r.arrival for r in self._records.values()]
        return min(arrivals), max(arrivals)

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
