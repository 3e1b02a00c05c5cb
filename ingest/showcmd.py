"""``mtqpd show`` and ``mtqpd search``: where did this mail go?

``show`` takes what a helpdesk is handed (a queue id, a Message-ID with or
without brackets, an ENVID) and prints every record it names together with
the records linked to it (the content filter's second queue id, the next
instance, the bounce), the way exigrep prints a message's whole story.
``search`` is the message-tracking-log search of other mail systems: by
sender, recipient, time range and outcome.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TextIO

from .records import TrackingRecord
from .store import Store
from .view import RecipientView, next_hop_record, recipients, record_json

#: How far show follows links from the records it was asked about.
MAX_LINKED = 50


def find(store: Store, ident: str) -> list[TrackingRecord]:
    """The records ``ident`` names: queue id, Message-ID, or ENVID."""
    found = store.by_queue_id(ident) or store.by_message_id(ident) or store.by_envid(ident)
    return found


def with_linked(store: Store, found: Iterable[TrackingRecord]) -> list[TrackingRecord]:
    """``found`` and every record linked to it, transitively: notifications,
    transfers both ways. In arrival order."""
    seen: dict[str, TrackingRecord] = {}
    todo = list(found)
    while todo and len(seen) < MAX_LINKED:
        rec = todo.pop()
        if rec.rid in seen:
            continue
        seen[rec.rid] = rec
        for link in rec.parents + rec.children:
            other = store.latest(link.host, link.queue_id)
            if other is not None:
                todo.append(other)
        for r in rec.recipients:
            nxt = next_hop_record(rec, r, store) if r.action == "relayed" else None
            if nxt is not None:
                todo.append(nxt)
        todo += [prev for prev in store.by_next_hop(rec.queue_id) if prev.rid not in seen]
    return sorted(seen.values(), key=lambda r: (r.arrival, r.rid))


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def _recipient_lines(v: RecipientView, indent: str) -> list[str]:
    name = v.final if v.original == v.final else f"{v.final} (for {v.original})"
    if v.action == "expanded":
        out = [f"{indent}{v.original}: expanded to {len(v.members)}"]
        for m in v.members:
            out += _recipient_lines(m, indent + "    ")
        return out
    where = f" via {v.remote_mta}" if v.remote_mta else ""
    line = f"{indent}{name}: {v.action} {v.status}{where}, {v.attempts} attempt(s), last {_when(v.last_attempt)}"
    if v.next_record is not None:
        line += f", now {v.next_record.host} {v.next_record.queue_id}"
    if v.will_retry_until is not None and v.action == "delayed":
        line += f", retried until {_when(v.will_retry_until)}"
    out = [line]
    if v.diagnostic:
        out.append(f"{indent}    {v.diagnostic}")
    return out


def render(record: TrackingRecord, store: Store) -> str:
    """A record as a person reads it."""
    head = f"{record.host} {record.queue_id} ({record.mta})  arrived {_when(record.arrival)}"
    lines = [head]
    lines.append(
        f"  from <{record.sender if record.sender is not None else '?'}>"
        + (f"  size {record.size}" if record.size is not None else "")
        + (f"  client {record.client}" if record.client else "")
    )
    ids = [f"message-id {record.message_id}"] if record.message_id else []
    if record.envid:
        ids.append(f"envid {record.envid}")
    if ids:
        lines.append("  " + "  ".join(ids))
    for link in record.parents:
        lines.append(f"  {link.kind.replace('-', ' ')} {link.host} {link.queue_id}")
    for v in recipients(record, store):
        lines += _recipient_lines(v, "  ")
    for link in record.children:
        lines.append(f"  {link.kind}: {link.host} {link.queue_id}")
    lines.append(f"  left the queue {_when(record.removed)}" if record.removed else "  still queued")
    return "\n".join(lines)


def show(store: Store, ident: str, *, as_json: bool, out: TextIO) -> int:
    """Print the records ``ident`` names and their linked records; 1 when none."""
    found = find(store, ident)
    if not found:
        return 1
    for i, rec in enumerate(with_linked(store, found)):
        if as_json:
            out.write(json.dumps(record_json(rec, store)) + "\n")
        else:
            out.write(("\n" if i else "") + render(rec, store) + "\n")
    return 0


def search(store: Store, *, as_json: bool, out: TextIO, **criteria: object) -> int:
    """Print the records that match as they are found (newest first
    unless ``oldest_first``); 1 when none."""
    printed = 0
    for rec in store.search(**criteria):  # type: ignore[arg-type]
        if as_json:
            out.write(json.dumps(record_json(rec, store)) + "\n")
        else:
            out.write(("\n" if printed else "") + render(rec, store) + "\n")
        printed += 1
    return 0 if printed else 1
