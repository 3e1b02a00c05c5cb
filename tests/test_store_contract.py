"""What every Store must do: the interface's contract, run against each store.

A store joins STORES below by adding its factory; the same assertions then
hold it to the semantics of ingest.store.Store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest.records import Attempt, Link, Recipient, TrackingRecord
from ingest.store import MemoryStore, Store
from ingest.store.tiny import TinyStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

STORES: dict[str, Callable[[Path], Store]] = {"memory": lambda _path: MemoryStore(), "tiny": TinyStore}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = STORES[request.param](tmp_path / "store")
    yield s
    s.close()


def record(
    qid: str,
    *,
    host: str = "mx1",
    at: datetime = T0,
    mid: str | None = None,
    sender: str = "jane@example.com",
    rcpts: tuple[str, ...] = ("bob@example.org",),
    removed: datetime | None = None,
    **kw,
) -> TrackingRecord:
    return TrackingRecord(
        rid=TrackingRecord.make_rid(host, qid, at),
        host=host,
        queue_id=qid,
        mta="postfix",
        arrival=at,
        message_id=mid,
        sender=sender,
        removed=removed,
        last_seen=removed or at,
        recipients=[Recipient(final=r) for r in rcpts],
        **kw,
    )


def test_put_get_round_trip_keeps_every_field(store: Store) -> None:
    r = record(
        "4F9D195432",
        mid="<a@b>",
        size=900,
        client="c.example[192.0.2.1]",
        envid="E1",
        certifier="ab" * 20,
        mtrk_timeout=86400,
        removed=T0 + timedelta(seconds=5),
    )
    r.recipients[0] = Recipient(
        final="bob@example.org",
        original="team@example.org",
        action="relayed",
        status="2.0.0",
        diagnostic="250 ok",
        remote_mta="mx.example.org",
        last_attempt=T0,
        will_retry_until=T0 + timedelta(days=5),
        next_hop="SINK1",
        transport="smtp",
        attempts=[Attempt(T0, "deferred", "4.3.0", "mx.example.org", "451 later"), Attempt(T0, "sent", "2.0.0")],
    )
    r.parents.append(Link("mx1", "1A2B3C4D5E", "bounce-of"))
    r.children.append(Link("mx1", "5E4D3C2B1A", "bounce"))
    store.put([r])
    store.flush()
    got = store.get(r.rid)
    assert got is not None and got.to_dict() == r.to_dict()


def test_put_replaces_by_rid_and_reindexes(store: Store) -> None:
    r = record("AAAAA11111", mid="<old@x>")
    store.put([r])
    r2 = TrackingRecord.from_dict({**r.to_dict(), "message_id": "<new@x>"})
    store.put([r2])
    assert [x.rid for x in store.by_message_id("new@x")] == [r.rid]
    assert store.by_message_id("old@x") == []


def test_a_record_changed_after_put_is_reindexed_by_the_next_put(store: Store) -> None:
    """The correlator keeps working on the records it put; the store must
    index what a record says at each put, not what it said at the first."""
    r = record("AAAAA11111")
    store.put([r])
    r.message_id = "<late@x>"
    r.recipients[0].next_hop = "HOP1234567"
    store.put([r])
    assert [x.rid for x in store.by_message_id("late@x")] == [r.rid]
    assert [x.rid for x in store.by_next_hop("HOP1234567")] == [r.rid]
    r.message_id = "<later@x>"
    store.put([r])
    assert store.by_message_id("late@x") == []
    assert [x.rid for x in store.by_message_id("later@x")] == [r.rid]


def test_lookups(store: Store) -> None:
    a = record("AAAAA11111", mid="<m1@x>", envid="ENV-1")
    b = record("BBBBB22222", host="mx2", at=T0 + timedelta(minutes=1), mid="m1@x")
    c = record("AAAAA11111", at=T0 + timedelta(days=1), mid="<m2@x>")  # the id reused later
    hop = record("CCCCC33333", mid="<m3@x>")
    hop.recipients[0].next_hop = "BBBBB22222"
    store.put([c, b, a, hop])
    assert [x.rid for x in store.by_message_id("<m1@x>")] == [a.rid, b.rid]
    assert [x.rid for x in store.by_message_id("m1@x")] == [a.rid, b.rid]
    assert [x.rid for x in store.by_queue_id("AAAAA11111")] == [a.rid, c.rid]
    assert store.latest("mx1", "AAAAA11111").rid == c.rid
    assert store.latest("mx2", "AAAAA11111") is None
    assert [x.rid for x in store.by_envid("ENV-1")] == [a.rid]
    assert [x.rid for x in store.by_next_hop("BBBBB22222")] == [hop.rid]
    assert store.get("nope") is None and store.by_message_id("<nope@x>") == []


def test_search(store: Store) -> None:
    a = record("AAAAA11111", sender="Jane@Example.com", rcpts=("bob@example.org", "carol@example.org"))
    b = record("BBBBB22222", at=T0 + timedelta(hours=2), sender="joe@example.com")
    b.recipients[0].original = "team@example.org"
    b.recipients[0].action = "failed"
    store.put([a, b])
    assert [x.rid for x in store.search(sender="jane@example.com")] == [a.rid]
    assert [x.rid for x in store.search(recipient="CAROL@example.org")] == [a.rid]
    assert [x.rid for x in store.search(recipient="team@example.org")] == [b.rid]
    assert [x.rid for x in store.search(since=T0 + timedelta(hours=1))] == [b.rid]
    assert [x.rid for x in store.search(until=T0 + timedelta(hours=1))] == [a.rid]
    assert [x.rid for x in store.search(action="failed")] == [b.rid]
    assert [x.rid for x in store.search()] == [b.rid, a.rid]  # newest first
    assert [x.rid for x in store.search(oldest_first=True)] == [a.rid, b.rid]
    assert [x.rid for x in store.search(limit=1)] == [b.rid]
    assert [x.rid for x in store.search(limit=1, oldest_first=True)] == [a.rid]
    assert list(store.search(sender="jane@example.com", action="failed")) == []


def test_expire_follows_retention_and_never_drops_queued_mail(store: Store) -> None:
    now = T0 + timedelta(days=30)
    old_done = record("AAAAA11111", removed=T0)  # default 10 days: gone
    old_queued = record("BBBBB22222")  # still queued: kept however old
    recent = record("CCCCC33333", removed=now - timedelta(days=5))  # within 10 days
    short = record("DDDDD44444", removed=now - timedelta(hours=30), mtrk_timeout=3600)  # floor of one day: gone
    short_recent = record("EEEEE55555", removed=now - timedelta(hours=20), mtrk_timeout=3600)  # kept a day
    long_ = record("FFFFF66666", removed=T0, mtrk_timeout=40 * 86400)  # its own longer timeout
    store.put([old_done, old_queued, recent, short, short_recent, long_])
    assert store.expire(now) == 2
    kept = {r.queue_id for r in store.search()}
    assert kept == {"BBBBB22222", "CCCCC33333", "EEEEE55555", "FFFFF66666"}
    assert store.by_queue_id("AAAAA11111") == []


def test_meta(store: Store) -> None:
    assert store.get_meta("tail:/var/log/mail.log") is None
    store.set_meta("tail:/var/log/mail.log", {"inode": 12, "offset": 3456})
    store.flush()
    assert store.get_meta("tail:/var/log/mail.log") == {"inode": 12, "offset": 3456}
