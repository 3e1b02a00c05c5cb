"""What a record says once read against the store: the per-recipient RFC 3886
view that people and MTQP clients see.

Two things are decided here, at read time, because they depend on other
records:

- a relayed recipient whose next hop ("queued as", "forwarded as") is a
  record this store holds was ``transferred`` to it (DESIGN.md: the server
  chains to the next record);
- several recipients that share one original address are an expansion: one
  ``expanded`` recipient, whose members are kept for operators but never
  shown to an MTQP client (RFC 3886 section 4.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .records import Recipient, TrackingRecord, iso
from .store import Store

#: A next hop's record arrives after the hop was logged, give or take clock
#: skew between hosts.
HOP_SKEW = timedelta(minutes=5)


@dataclass(slots=True)
class RecipientView:
    original: str
    final: str
    action: str
    status: str
    diagnostic: str | None
    remote_mta: str | None
    last_attempt: Any
    will_retry_until: Any
    attempts: int
    #: The record it was transferred to, for ``transferred``.
    next_record: TrackingRecord | None = None
    #: The expansion's members, for ``expanded`` (operators only).
    members: list[RecipientView] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {
            "original": self.original,
            "final": self.final,
            "action": self.action,
            "status": self.status,
            "diagnostic": self.diagnostic,
            "remote_mta": self.remote_mta,
            "last_attempt": iso(self.last_attempt),
            "will_retry_until": iso(self.will_retry_until),
            "attempts": self.attempts,
        }
        if self.next_record is not None:
            out["transferred_to"] = {"host": self.next_record.host, "queue_id": self.next_record.queue_id}
        if self.members:
            out["members"] = [m.to_json() for m in self.members]
        return out


def next_hop_record(record: TrackingRecord, r: Recipient, store: Store) -> TrackingRecord | None:
    """The record that took ``r`` over from ``record``, if this store holds it:
    the first record under the next hop's queue id that arrived after the hop
    (on any host: a content filter re-queues on this one, a second MTA whose
    log is merged in on its own)."""
    if not r.next_hop:
        return None
    candidates = store.by_queue_id(r.next_hop)
    if not candidates:  # the next hop is another host's, whose log is not here
        return None
    since = (r.last_attempt or record.arrival) - HOP_SKEW
    for candidate in candidates:
        if candidate.rid != record.rid and candidate.arrival >= since:
            return candidate
    return None


def _one(record: TrackingRecord, r: Recipient, store: Store) -> RecipientView:
    nxt = next_hop_record(record, r, store) if r.action == "relayed" else None
    # In the field order: every TRACK answer makes views, and keywords
    # would double what making one costs.
    return RecipientView(
        r.original or r.final,
        r.final,
        "transferred" if nxt is not None else r.action,
        r.status,
        r.diagnostic,
        r.remote_mta,
        r.last_attempt,
        r.will_retry_until,
        len(r.attempts),
        nxt,
    )


def recipients(record: TrackingRecord, store: Store) -> list[RecipientView]:
    """One view per original recipient, in the record's order."""
    if len(record.recipients) == 1:  # most messages: no grouping to do
        return [_one(record, record.recipients[0], store)]
    groups: dict[str, list[Recipient]] = {}
    for r in record.recipients:
        groups.setdefault(r.original or r.final, []).append(r)
    out = []
    for original, members in groups.items():
        if len(members) == 1:
            out.append(_one(record, members[0], store))
            continue
        views = [_one(record, m, store) for m in members]
        out.append(
            RecipientView(
                original=original,
                final=original,
                action="expanded",
                status="2.0.0",
                diagnostic=None,
                remote_mta=None,
                last_attempt=max((v.last_attempt for v in views if v.last_attempt), default=None),
                will_retry_until=None,
                attempts=0,
                members=views,
            )
        )
    return out


def related(record: TrackingRecord, store: Store) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(parents, children) as ``{host, queue_id, kind}``: notifications both
    ways, and transfers both ways (re-queued from / queued as)."""
    parents = [p.to_dict() for p in record.parents]
    children = [c.to_dict() for c in record.children]
    for r in record.recipients:
        nxt = next_hop_record(record, r, store) if r.action == "relayed" else None
        if nxt is not None:
            link = {"host": nxt.host, "queue_id": nxt.queue_id, "kind": "queued-as"}
            if link not in children:
                children.append(link)
    for prev in store.by_next_hop(record.queue_id):
        for r in prev.recipients:
            nxt = next_hop_record(prev, r, store) if r.action == "relayed" and r.next_hop == record.queue_id else None
            link = {"host": prev.host, "queue_id": prev.queue_id, "kind": "requeued-from"}
            if nxt is not None and nxt.rid == record.rid and link not in parents:
                parents.append(link)
    return parents, children


def origins(found: list[TrackingRecord], store: Store) -> list[TrackingRecord]:
    """The records among ``found`` (one message's, say) that no other record
    of ``found`` handed the message to: where its tracking starts."""
    reached = set()
    for record in found:
        for r in record.recipients:
            nxt = next_hop_record(record, r, store) if r.action == "relayed" else None
            if nxt is not None:
                reached.add(nxt.rid)
    return [r for r in found if r.rid not in reached]


def record_json(record: TrackingRecord, store: Store) -> dict[str, Any]:
    """The ``mtqpd show --json`` / ``search --json`` object (DESIGN.md)."""
    parents, children = related(record, store)
    return {
        "host": record.host,
        "queue_id": record.queue_id,
        "mta": record.mta,
        "message_id": record.message_id,
        "envid": record.envid,
        "sender": record.sender,
        "size": record.size,
        "client": record.client,
        "arrival": iso(record.arrival),
        "removed": iso(record.removed),
        "parent": parents,
        "children": children,
        "recipients": [v.to_json() for v in recipients(record, store)],
    }
