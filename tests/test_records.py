"""Records as dicts: the compact form, the full form older stores wrote,
shared values when many are read, and times in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from ingest.records import Attempt, Link, Recipient, TrackingRecord, iso, sharing

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def every_field() -> TrackingRecord:
    """Every field set, and to a value no other field has: a field read
    into another's place would show."""
    return TrackingRecord(
        rid="mx1/4F9D195432/2026-03-01T12:00:00+00:00",
        host="mx1",
        queue_id="4F9D195432",
        mta="postfix",
        arrival=T0,
        message_id="<a@b>",
        envid="E1",
        sender="jane@example.com",
        size=900,
        client="c.example[192.0.2.1]",
        certifier="ab" * 20,
        mtrk_timeout=86400,
        removed=T0 + timedelta(seconds=5),
        last_seen=T0 + timedelta(seconds=6),
        parents=[Link("mx0", "1A2B3C4D5E", "bounce-of")],
        children=[Link("mx2", "5E4D3C2B1A", "bounce")],
        recipients=[
            Recipient(
                final="bob@example.org",
                original="team@example.org",
                action="relayed",
                status="2.0.0",
                diagnostic="250 ok \u00e9",
                remote_mta="mx.example.org",
                last_attempt=T0 + timedelta(seconds=1),
                will_retry_until=T0 + timedelta(days=5),
                next_hop="SINK1",
                transport="smtp",
                attempts=[Attempt(T0 + timedelta(seconds=2), "sent", "2.0.1", "mx2.example.org", "250 queued")],
            )
        ],
    )


def bare() -> TrackingRecord:
    """Only what a record must have, and a recipient with its defaults."""
    return TrackingRecord(
        rid="mx1/AAAAA11111/2026-03-01T12:00:00+00:00",
        host="mx1",
        queue_id="AAAAA11111",
        mta="exim",
        arrival=T0,
        recipients=[Recipient(final="bob@example.org", attempts=[Attempt(T0, "deferred")])],
    )


def fields(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]


def test_every_field_round_trips() -> None:
    r = every_field()
    again = TrackingRecord.from_dict(r.to_dict())
    assert again == r
    assert fields(again.recipients[0]) == fields(r.recipients[0])
    assert again.arrival.tzinfo is UTC


def test_none_empty_and_defaults_are_left_out() -> None:
    assert bare().to_dict() == {
        "rid": "mx1/AAAAA11111/2026-03-01T12:00:00+00:00",
        "host": "mx1",
        "queue_id": "AAAAA11111",
        "mta": "exim",
        "arrival": "2026-03-01T12:00:00+00:00",
        "recipients": [
            {"final": "bob@example.org", "attempts": [{"at": "2026-03-01T12:00:00+00:00", "outcome": "deferred"}]}
        ],
    }
    assert TrackingRecord.from_dict(bare().to_dict()) == bare()


def test_the_full_form_of_older_stores_reads_the_same() -> None:
    """Stores written before the compact form spelled out every field."""
    full = {
        "rid": "mx1/AAAAA11111/2026-03-01T12:00:00+00:00",
        "host": "mx1",
        "queue_id": "AAAAA11111",
        "mta": "exim",
        "arrival": "2026-03-01T12:00:00+00:00",
        "message_id": None,
        "envid": None,
        "sender": None,
        "size": None,
        "client": None,
        "certifier": None,
        "mtrk_timeout": None,
        "removed": None,
        "last_seen": None,
        "parents": [],
        "children": [],
        "recipients": [
            {
                "final": "bob@example.org",
                "original": None,
                "action": "delayed",
                "status": "4.0.0",
                "diagnostic": None,
                "remote_mta": None,
                "last_attempt": None,
                "will_retry_until": None,
                "next_hop": None,
                "transport": None,
                "attempts": [
                    {
                        "at": "2026-03-01T12:00:00+00:00",
                        "outcome": "deferred",
                        "dsn": None,
                        "remote_mta": None,
                        "reply": None,
                    }
                ],
            }
        ],
    }
    assert TrackingRecord.from_dict(full) == bare()
    share, when = sharing()
    assert TrackingRecord.from_dict(full, share, when) == bare()


def test_records_read_together_share_their_values() -> None:
    share, when = sharing()
    a, b = every_field().to_dict(), every_field().to_dict()
    b["rid"] = b["rid"].replace("4F9D", "5F9D")
    x, y = (TrackingRecord.from_dict(d, share, when) for d in (a, b))
    assert x == TrackingRecord.from_dict(a)
    assert x.sender is y.sender and x.recipients[0].final is y.recipients[0].final
    assert x.recipients[0].attempts[0].reply is y.recipients[0].attempts[0].reply
    assert x.arrival is y.arrival and x.removed is y.removed


def test_times_are_written_in_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 3, 1, 14, 0, tzinfo=plus2)) == "2026-03-01T12:00:00+00:00"
    assert iso(T0 + timedelta(microseconds=250)) == "2026-03-01T12:00:00.000250+00:00"
    assert iso(None) is None
    # Whichever zone a time is in, and whichever of its forms was written first.
    later = datetime(2026, 3, 1, 17, 30, tzinfo=UTC)
    assert iso(later) == iso(later.astimezone(plus2)) == "2026-03-01T17:30:00+00:00"
    sooner = datetime(2026, 3, 1, 19, 45, tzinfo=plus2)
    assert iso(sooner) == iso(sooner.astimezone(UTC)) == "2026-03-01T17:45:00+00:00"
    r = bare()
    r.arrival = datetime(2026, 3, 1, 14, 0, tzinfo=plus2)
    assert TrackingRecord.from_dict(r.to_dict()).arrival.tzinfo is UTC
