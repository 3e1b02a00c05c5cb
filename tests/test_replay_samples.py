"""The main correctness test: replaying the real sample logs yields exactly
the per-recipient outcomes and links of their ground truth.

samples/<mta>/expected.json was written from the scenarios, the sinks and
the mailboxes, never from the logs (samples/README.md), so this compares
mtqpd against what really happened.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.correlator import Settings
from ingest.records import TrackingRecord, bare_message_id
from ingest.replay import replay
from ingest.store import MemoryStore
from ingest.view import RecipientView, origins, recipients

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def expected(mta: str) -> dict:
    return json.loads((SAMPLES / mta / "expected.json").read_text())


def replayed(mta: str, form: str) -> MemoryStore:
    """The sample of ``mta`` in one log form, replayed into a fresh store.
    Exim's mainlogs name no host: each file's host is the capture's."""
    store = MemoryStore()
    for entry in expected(mta)["logs"]:
        if entry["form"] == form:
            settings = Settings(default_host=entry.get("host", "mx1"))
            summary = replay([str(SAMPLES / mta / entry["file"])], store, settings=settings)
            assert summary.lines > 0 and not summary.errors
    return store


CASES = [
    ("postfix", "syslog-bsd"),
    ("postfix", "syslog-rfc3339"),
    ("exim", "exim-mainlog"),
    ("sendmail", "syslog-bsd"),
    ("sendmail", "syslog-rfc3339"),
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{f}" for m, f in CASES])
def case(request: pytest.FixtureRequest) -> tuple[dict, MemoryStore]:
    mta, form = request.param
    return expected(mta), replayed(mta, form)


def origin(store: MemoryStore, message_id: str) -> TrackingRecord:
    """The first record of a message: later hops carry the same Message-ID."""
    found = origins(store.by_message_id(message_id), store)
    assert len(found) == 1, f"{message_id}: {[r.rid for r in found]}"
    return found[0]


def view_for(record: TrackingRecord, store: MemoryStore, address: str) -> RecipientView:
    for v in recipients(record, store):
        if address.lower() in (v.original.lower(), v.final.lower()):
            return v
    raise AssertionError(f"{record.rid} has no recipient {address}: {[v.original for v in recipients(record, store)]}")


def path_of(record: TrackingRecord, store: MemoryStore, address: str) -> tuple[list[str], RecipientView]:
    """The action in each record along the recipient's way, and the last view."""
    v = view_for(record, store, address)
    path = [v.action]
    while v.action == "transferred":
        assert v.next_record is not None
        v = view_for(v.next_record, store, v.final)
        path.append(v.action)
    return path, v


def notification(store: MemoryStore, parent: TrackingRecord, entry: dict) -> TrackingRecord:
    """The record of a notification the MTA made about ``parent``, found by
    the link the log gave (its Message-ID may not be logged: Sendmail)."""
    children = [store.latest(c.host, c.queue_id) for c in parent.children if c.kind == "bounce"]
    children = [c for c in children if c is not None]
    wanted = bare_message_id(entry["message_id"])
    for child in children:
        if child.message_id and bare_message_id(child.message_id) == wanted:
            return child
        # Sendmail's own notifications: Message-ID <YYYYMMDDhhmm.QUEUEID@host>.
        if not child.message_id and f".{child.queue_id}@" in wanted:
            return child
    raise AssertionError(f"{parent.rid}: no notification {entry['message_id']} among {[c.rid for c in children]}")


def test_every_recipient_ends_as_the_ground_truth_says(case: tuple[dict, MemoryStore]) -> None:
    doc, store = case
    failures = []
    by_id = {m["message_id"]: m for m in doc["messages"]}
    for m in doc["messages"]:
        if m["bounce_of"] is None:
            record = origin(store, m["message_id"])
        else:
            record = notification(store, origin(store, m["bounce_of"]), m)
        for r in m["recipients"]:
            try:
                path, last = path_of(record, store, r["original"])
            except AssertionError as exc:
                failures.append(f"s{m['scenario']} {m['name']}: {exc}")
                continue
            got = (path, last.status[:1])
            want = (r["path"], r["status"])
            if got != want:
                failures.append(f"s{m['scenario']} {m['name']} {r['original']}: got {got}, want {want}")
        if m["bounce"] is not None:
            try:
                notification(store, record, by_id[m["bounce"]])
            except AssertionError as exc:
                failures.append(f"s{m['scenario']} {m['name']}: {exc}")
    assert not failures, "\n".join(failures)


def test_sender_envid_and_message_id_recorded(case: tuple[dict, MemoryStore]) -> None:
    doc, store = case
    for m in doc["messages"]:
        if m["bounce_of"] is None:
            record = origin(store, m["message_id"])
            assert record.sender == m["sender"], m["name"]
