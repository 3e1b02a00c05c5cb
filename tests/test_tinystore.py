"""TinyStore beyond the Store contract: its files (TinyDB databases), the
index (what it reads, and what it does not), segments, readers beside a
writer, retention, damage and salvage, the upgrade of an older store, and
kill -9 in mid-flush."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from tinydb import TinyDB

import ingest.store.tiny.store as tinystore
from ingest.records import Attempt, Link, Recipient, TrackingRecord
from ingest.store import StoreError, StoreLocked, location_path
from ingest.store.tiny import TinyStore, files
from parsers import Kind
from server import cli

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def rec(
    qid: str, at: datetime = T0, *, mid: str | None = None, removed: datetime | None = None, **kw
) -> TrackingRecord:
    return TrackingRecord(
        rid=TrackingRecord.make_rid("mx1", qid, at),
        host="mx1",
        queue_id=qid,
        mta="postfix",
        arrival=at,
        message_id=mid,
        sender="jane@example.com",
        removed=removed,
        last_seen=removed or at,
        recipients=[Recipient(final="bob@example.org")],
        **kw,
    )


def full_record() -> TrackingRecord:
    """Every field of a record, recipient and attempt set to something."""
    r = rec(
        "4F9D195432",
        at=T0 + timedelta(microseconds=250),
        mid="<a@b>",
        envid="E1",
        size=900,
        client="c.example[192.0.2.1]",
        certifier="ab" * 20,
        mtrk_timeout=86400,
        removed=T0 + timedelta(seconds=5),
    )
    r.mta = "exim"
    r.parents.append(Link("mx1", "1A2B3C4D5E", "bounce-of"))
    r.children.append(Link("mx1", "5E4D3C2B1A", "bounce"))
    r.recipients = [
        Recipient(
            final="bob@example.org",
            original="team@example.org",
            action="relayed",
            status="2.0.0",
            diagnostic="250 ok \u00e9",
            remote_mta="mx.example.org",
            last_attempt=T0,
            will_retry_until=T0 + timedelta(days=5),
            next_hop="SINK1",
            transport="smtp",
            attempts=[Attempt(T0, "deferred", "4.3.0", "mx.example.org", "451 later"), Attempt(T0, "sent", "2.0.0")],
        ),
        Recipient(final="carol@example.org"),
    ]
    return r


def segments(store_dir: Path) -> list[Path]:
    return sorted(p for p in (store_dir / "records").iterdir() if p.name.endswith(".json"))


def tinydb_docs(path: Path) -> list[dict]:
    """A file as plain TinyDB reads it: the files are TinyDB databases."""
    db = TinyDB(path, access_mode="r")
    try:
        return db.table("records").all()
    finally:
        db.close()


def hour_of(n: int) -> datetime:
    return T0 + timedelta(seconds=n)


def many(count: int, start: datetime = T0, step: float = 1.0) -> list[TrackingRecord]:
    return [rec(f"Q{n:09d}", start + timedelta(seconds=n * step), mid=f"<m{n}@x>") for n in range(count)]


# -- the files ----------------------------------------------------------------------


def test_every_field_survives_reopen(tmp_path: Path) -> None:
    r = full_record()
    store = TinyStore(tmp_path)
    store.put([r])
    store.set_meta("tail:/var/log/mail.log", {"inode": 12, "offset": 3456})
    store.close()

    again = TinyStore(tmp_path, readonly=True)
    got = again.get(r.rid)
    assert got is not None and got.to_dict() == r.to_dict()
    assert got.arrival == r.arrival and got.arrival.tzinfo is not None
    assert again.get_meta("tail:/var/log/mail.log") == {"inode": 12, "offset": 3456}
    assert [x.rid for x in again.by_message_id("a@b")] == [r.rid]
    assert [x.rid for x in again.by_envid("E1")] == [r.rid]
    assert [x.rid for x in again.by_next_hop("SINK1")] == [r.rid]
    assert again.latest("mx1", "4F9D195432").rid == r.rid
    again.close()


@pytest.mark.parametrize(
    "data",
    [
        {"records": {"1": {"sender": "j\u00f6rg@b\u00fccher.example", "size": 5, "removed": None, "to": ["a", 1]}}},
        {"records": {"1": {"size": 10**30}}},  # beyond 64 bits: a hostile log's size=
        {"tail:/var/log/ma\udcffil.log": {"offset": 1}},  # an undecodable byte of a file name
        {"kind": Kind.DELIVERY},  # a str subclass
    ],
)
def test_files_say_what_the_standard_library_says(data: dict) -> None:
    """Whichever encoder writes a file (orjson, or the standard library for
    what orjson refuses or would encode its own way), it reads back, by
    ``files.loads``, as the standard library reads its own encoding."""
    written = files.json_bytes(data)
    assert json.loads(written) == json.loads(json.dumps(data))
    assert files.loads(written) == json.loads(json.dumps(data))
    assert written.decode("utf-8")  # every file is UTF-8, whoever wrote it


def test_what_the_standard_library_refuses_is_refused() -> None:
    for data in ({"at": T0}, {"record": rec("AAAAA11111", T0)}):
        with pytest.raises(TypeError):
            files.json_bytes(data)


def test_a_huge_size_survives_reopen(tmp_path: Path) -> None:
    r = rec("AAAAA11111", T0)
    r.size = 10**30
    store = TinyStore(tmp_path)
    store.put([r])
    store.close()
    got = TinyStore(tmp_path, readonly=True).get(r.rid)
    assert got is not None and got.size == 10**30 and isinstance(got.size, int)


def test_every_segment_is_a_tinydb_database(tmp_path: Path) -> None:
    """TinyDB itself opens each file and finds, and queries, every record."""
    made = [full_record(), *many(2500, T0 + timedelta(minutes=1), step=0.5)]
    store = TinyStore(tmp_path)
    store.put(made)
    store.close()
    found = {}
    for path in segments(tmp_path):
        db = TinyDB(path, access_mode="r")
        docs = db.table("records").all()
        assert db.table("records").search(lambda d: d["queue_id"] == "4F9D195432") in ([], [docs[0]])
        db.close()
        assert 0 < len(docs) <= tinystore.SEGMENT_RECORDS
        for d in docs:
            found[d["rid"]] = TrackingRecord.from_dict(d)
    assert found == {r.rid: r for r in made}


def test_segments_are_named_by_the_utc_hour(tmp_path: Path) -> None:
    plus2 = timezone(timedelta(hours=2))
    a = rec("AAAAA11111", T0)
    b = rec("BBBBB22222", T0 + timedelta(minutes=59, seconds=59))
    c = rec("CCCCC33333", T0 + timedelta(hours=1))
    d = rec("DDDDD44444", datetime(2026, 3, 2, 1, 30, tzinfo=plus2))  # 23:30 UTC the day before
    store = TinyStore(tmp_path)
    store.put([c, a, d, b])
    store.close()
    hours = {p.name.split(".")[0]: [x["rid"] for x in tinydb_docs(p)] for p in segments(tmp_path)}
    assert hours == {"2026-03-01T12": [a.rid, b.rid], "2026-03-01T13": [c.rid], "2026-03-01T23": [d.rid]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.sqlite", "lock", "records"]


# -- reading only what is needed ---------------------------------------------------


def spoil(path: Path) -> None:
    """Garbage where a segment was: a read of it would count records it
    could not read."""
    path.write_bytes(b"\x00garbage" * 1000)


def test_a_lookup_reads_only_the_segment_of_its_record(tmp_path: Path) -> None:
    made = many(4000, step=3)  # four hours, several segments each
    store = TinyStore(tmp_path)
    store.put(made)
    store.close()
    wanted = made[1234]
    reader = TinyStore(tmp_path, readonly=True)
    holder = {p for p in segments(tmp_path) if wanted.rid in {d["rid"] for d in tinydb_docs(p)}}
    for path in set(segments(tmp_path)) - holder:
        spoil(path)
    assert [r.rid for r in reader.by_message_id("m1234@x")] == [wanted.rid]
    assert [r.rid for r in reader.by_queue_id(wanted.queue_id)] == [wanted.rid]
    assert reader.get(wanted.rid) == wanted
    assert reader.by_message_id("<nothing@x>") == [] and reader.by_queue_id("NOTHERE123") == []
    assert reader.unreadable == 0  # no other file was read
    assert set(reader._fds) == {int(next(iter(holder)).name.split(".")[1])}


def test_search_streams_newest_first_through_the_hours_it_needs(tmp_path: Path) -> None:
    made = many(4000, step=3)
    for r in made[::7]:
        r.recipients[0].final = "carol@example.org"
    store = TinyStore(tmp_path)
    store.put(made)
    store.close()
    reader = TinyStore(tmp_path, readonly=True)
    since, until = T0 + timedelta(hours=1, minutes=10), T0 + timedelta(hours=1, minutes=50)
    for path in segments(tmp_path):
        if not path.name.startswith("2026-03-01T13"):
            spoil(path)  # only hour 13 is inside the window
    got = [r.rid for r in reader.search(recipient="Carol@example.org", since=since, until=until)]
    want = [
        r.rid
        for r in sorted(made, key=lambda r: r.arrival, reverse=True)
        if r in made[::7] and since <= r.arrival <= until
    ]
    assert got == want and len(got) > 50
    assert [r.rid for r in reader.search(since=since, until=until, limit=5)] == [
        r.rid for r in sorted(made, key=lambda r: r.arrival, reverse=True) if since <= r.arrival <= until
    ][:5]
    assert reader.unreadable == 0
    first = next(iter(reader.search(sender="jane@example.com", since=since, until=until, oldest_first=True)))
    assert (
        first.arrival >= since
        and first.rid == min((r for r in made if r.arrival >= since), key=lambda r: r.arrival).rid
    )


def test_puts_are_read_at_once_and_reach_readers_on_flush(tmp_path: Path) -> None:
    writer = TinyStore(tmp_path)
    reader = TinyStore(tmp_path, readonly=True, refresh_interval=0)
    r = rec("AAAAA11111", mid="<a@x>")
    writer.put([r])
    assert [x.rid for x in writer.by_message_id("a@x")] == [r.rid]
    assert reader.by_message_id("a@x") == []
    writer.flush()
    assert [x.rid for x in reader.by_message_id("a@x")] == [r.rid]
    r.recipients[0].action = "delivered"
    writer.put([r])
    writer.flush()
    assert reader.get(r.rid).recipients[0].action == "delivered"  # its cache of that segment dropped
    writer.close()


def test_what_a_put_takes_is_what_the_record_said_then(tmp_path: Path) -> None:
    store = TinyStore(tmp_path)
    r = rec("AAAAA11111", mid="<a@x>")
    store.put([r])
    r.sender = "changed@x"  # after the put: not what was put
    store.flush()
    assert store.get(r.rid).sender == "jane@example.com"
    store.close()


def test_a_copy_without_a_handle_replaces_the_record(tmp_path: Path) -> None:
    """A record put again from its dict (no handle) is found by its rid in
    the index, never written twice; also after the store was reopened."""
    store = TinyStore(tmp_path)
    r = rec("AAAAA11111", mid="<a@x>")
    store.put([r])
    store.close()
    store = TinyStore(tmp_path)
    copy = TrackingRecord.from_dict({**r.to_dict(), "sender": "new@x"})
    assert copy.handle is None
    store.put([copy])
    store.close()
    reader = TinyStore(tmp_path, readonly=True)
    assert [x.sender for x in reader.by_queue_id("AAAAA11111")] == ["new@x"]
    assert len(reader) == 1


def test_a_record_whose_arrival_moves_changes_hour_once(tmp_path: Path) -> None:
    store = TinyStore(tmp_path)
    r = rec("AAAAA11111", T0 + timedelta(seconds=10), mid="<a@x>")
    store.put([r])
    store.flush()
    r.arrival = T0 - timedelta(seconds=10)  # an earlier line: the hour before
    store.put([r])
    store.close()
    where = {p.name.split(".")[0]: [d["rid"] for d in tinydb_docs(p)] for p in segments(tmp_path)}
    assert where == {"2026-03-01T11": [r.rid]}
    reader = TinyStore(tmp_path, readonly=True)
    assert [x.arrival for x in reader.by_message_id("a@x")] == [r.arrival]


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    first = TinyStore(tmp_path)
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
        TinyStore(tmp_path)
    reader = TinyStore(tmp_path, readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        reader.put([rec("AAAAA11111")])
    first.close()
    TinyStore(tmp_path).close()


# -- retention ---------------------------------------------------------------------


def test_expire_drops_whole_segments_and_their_hours_keys(tmp_path: Path) -> None:
    old = [
        rec(f"O{n:09d}", T0 + timedelta(seconds=n), mid=f"<o{n}@x>", removed=T0 + timedelta(minutes=5))
        for n in range(1500)
    ]
    queued = rec("QUEUED0001", T0 + timedelta(hours=2))
    store = TinyStore(tmp_path)
    store.put([*old, queued])
    store.flush()
    before = segments(tmp_path)
    assert store.expire(T0 + timedelta(days=11)) == 1500
    assert [p.name.split(".")[0] for p in segments(tmp_path)] == ["2026-03-01T14"]
    assert len(before) == 3
    keys = (
        sqlite3.connect(tmp_path / "index.sqlite")
        .execute("SELECT count(*) FROM keys WHERE part < ?", (int((T0 + timedelta(hours=1)).timestamp()) // 3600,))
        .fetchone()[0]
    )
    assert keys == 0  # the hour's keys went with it
    assert store.by_message_id("o3@x") == [] and store.get(queued.rid) == queued
    store.close()


# -- damage ------------------------------------------------------------------------


def test_a_damaged_record_costs_that_record_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One record with a bad arrival: the other 444 of its hour are still
    found, a search through the hour says it could not read one and exits
    3, and the writer that rewrites the segment sets the bad one aside and
    names the logs that restore it."""
    made = many(445, step=2)
    store = TinyStore(tmp_path)
    store.put(made)
    store.set_meta("sources", {"/var/log/mail.log": ["2026-03-01T11:00:00+00:00", "2026-03-01T13:00:00+00:00"]})
    store.close()
    (path,) = segments(tmp_path)
    text = path.read_text()
    bad = made[100]
    spoiled = text.replace(
        f'"rid":"{bad.rid}","host":"mx1","queue_id":"{bad.queue_id}","mta":"postfix","arrival":"2026',
        f'"rid":"{bad.rid}","host":"mx1","queue_id":"{bad.queue_id}","mta":"postfix","arrival":"XXXX',
    )
    assert spoiled != text
    path.write_text(spoiled)

    reader = TinyStore(tmp_path, readonly=True)
    assert [r.rid for r in reader.by_message_id("m200@x")] == [made[200].rid]
    assert reader.unreadable == 0
    assert reader.by_message_id("m100@x") == [] and reader.unreadable == 1
    assert len(list(reader.search())) == 444
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "search", "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == cli.PARTIAL and "1 record(s) in the store could not be read" in out.stderr
    assert "Traceback" not in out.stderr

    writer = TinyStore(tmp_path)
    made[5].sender = "changed@x"
    writer.put([made[5]])
    writer.close()
    (aside,) = [p for p in (tmp_path / "records").iterdir() if ".damaged-" in p.name]
    assert bad.rid.encode() in aside.read_bytes()
    assert "mtqpd replay --store" in caplog.text and "/var/log/mail.log" in caplog.text
    reader = TinyStore(tmp_path, readonly=True)
    assert len(list(reader.search())) == 444 and reader.unreadable == 0
    assert reader.by_queue_id(made[5].queue_id)[0].sender == "changed@x"


def test_a_damaged_index_is_rebuilt_by_the_writer_and_refused_by_readers(tmp_path: Path) -> None:
    made = many(1200)
    store = TinyStore(tmp_path)
    store.put(made)
    store.close()
    (tmp_path / "index.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="mtqpd reindex --store"):
        TinyStore(tmp_path, readonly=True)
    TinyStore(tmp_path).close()  # the writer moves it aside and rebuilds
    reader = TinyStore(tmp_path, readonly=True)
    assert {r.rid for r in reader.search()} == {r.rid for r in made}
    assert [r.rid for r in reader.by_message_id("m77@x")] == [made[77].rid]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("index.sqlite.damaged-")]


def test_an_index_that_is_behind_its_files_is_caught_up(tmp_path: Path) -> None:
    """Segment files the index does not know (a flush killed before its
    commit) are filed by the next writer; files the index names that are
    gone are dropped from it, loudly."""
    store = TinyStore(tmp_path)
    store.put(many(10))
    store.close()
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("DELETE FROM recs")
    db.execute("DELETE FROM segs")
    db.execute("DELETE FROM keys")
    db.commit()
    db.close()
    TinyStore(tmp_path).close()
    assert len(TinyStore(tmp_path, readonly=True)) == 10


def test_reindex_rebuilds_what_was_there(tmp_path: Path) -> None:
    made = many(1500, step=5)
    store = TinyStore(tmp_path)
    store.put(made)
    store.close()
    assert cli.main(["reindex", "--store", str(tmp_path)]) == 0
    reader = TinyStore(tmp_path, readonly=True)
    assert [r.rid for r in reader.search(oldest_first=True)] == [r.rid for r in made]


# -- formats and locations -----------------------------------------------------------


def test_a_store_of_the_older_format_is_upgraded_by_a_writer(tmp_path: Path) -> None:
    """Format 1: one TinyDB file per hour (ids 1, 2, ...) and meta.json."""
    records = tmp_path / "records"
    records.mkdir()
    made = [full_record(), rec("AAAAA11111", T0 + timedelta(minutes=1)), rec("BBBBB22222", T0 + timedelta(hours=1))]
    for hour, group in (("2026-03-01T12", made[:2]), ("2026-03-01T13", made[2:])):
        db = TinyDB(records / f"{hour}.json")
        db.table("records").insert_multiple(r.to_dict() for r in group)
        db.close()
    meta = TinyDB(tmp_path / "meta.json")
    meta.table("meta").insert({"key": "tail:/var/log/mail.log", "value": {"offset": 7}})
    meta.close()

    with pytest.raises(StoreError, match=f"'mtqpd reindex --store {tmp_path}' upgrades it"):
        TinyStore(tmp_path, readonly=True)
    TinyStore(tmp_path).close()
    assert not (tmp_path / "meta.json").exists()
    assert all(p.name.count(".") == 2 for p in segments(tmp_path))
    reader = TinyStore(tmp_path, readonly=True)
    assert [r.rid for r in reader.search(oldest_first=True)] == [r.rid for r in made]
    assert reader.get(made[0].rid) == made[0]
    assert reader.get_meta("tail:/var/log/mail.log") == {"offset": 7}


def test_a_store_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    TinyStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="format 99"):
        TinyStore(tmp_path, readonly=True)
    with pytest.raises(StoreError, match="newer mtqpd"):
        TinyStore(tmp_path)


@pytest.mark.parametrize("location", ["postgresql://mtqpd@db/mtqpd", "postgres://x", "mysql://x/y", "s3://bucket"])
def test_a_location_with_a_scheme_is_never_a_folder(
    tmp_path: Path, location: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(StoreError, match=r"scheme|PostgreSQL"):
        location_path(location)
    os.chdir(tmp_path)
    assert cli.main(["replay", "--store", location, str(ROOT / "samples/postfix/postfix.bsd.log")]) == 1
    err = capsys.readouterr().err
    assert location in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no folder called "postgresql:"


def test_file_uris_and_paths_name_a_folder() -> None:
    assert location_path("/var/lib/mtqpd") == Path("/var/lib/mtqpd")
    assert location_path("file:///var/lib/mtqpd") == Path("/var/lib/mtqpd")
    assert location_path("file://localhost/srv/s") == Path("/srv/s")
    assert location_path("store") == Path("store")


# -- crashes -----------------------------------------------------------------------

HOURS = (12, 13)
PER_HOUR = 1200
MOVER = "MOVER00001"


def generation(gen: int) -> list[TrackingRecord]:
    """Everything the crash child puts before its flush number ``gen``:
    every record stamped with ``gen`` (in ``size``); the mover's arrival
    moves between the two hours every other generation."""
    out = []
    for hour in HOURS:
        for n in range(0, PER_HOUR, 1 if gen == 1 else 1 + gen % 3):  # after the first, some change
            r = rec(f"Q{hour}{n:06d}", T0.replace(hour=hour, minute=n % 60, second=n // 60), mid=f"<{hour}.{n}@x>")
            r.size = gen
            r.recipients[0].diagnostic = "x" * 200
            out.append(r)
    first = T0.replace(hour=13, minute=0, second=30)
    mover = rec(MOVER, first)
    mover.arrival = first.replace(hour=12 if gen % 2 else 13)
    mover.last_seen = first + timedelta(seconds=gen)
    mover.size = gen
    return [*out, mover]


CRASH_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from test_tinystore import generation
from ingest.store.tiny import TinyStore
store = TinyStore(sys.argv[1])
gen = store.get_meta("generation") or 0
print("open", flush=True)
while True:
    gen += 1
    store.put(generation(gen))
    store.set_meta("generation", gen)
    store.flush()
"""


def check(store: TinyStore) -> int:
    """Every record once, each at least at the checkpoint's generation and
    at most one ahead of it (the flush the kill interrupted)."""
    gen = store.get_meta("generation") or 0
    found = list(store.search())
    rids = [r.rid for r in found]
    assert len(rids) == len(set(rids)), "a record twice"
    if gen:
        assert len(found) == len(HOURS) * PER_HOUR + 1
        assert max(r.size for r in found) <= gen + 1
        put_last = {r.rid for r in generation(gen)}
        assert all(r.size >= gen for r in found if r.rid in put_last)  # nothing older than the checkpoint says
        (mover,) = [r for r in found if r.queue_id == MOVER]
        assert mover.size in (gen, gen + 1)
    return gen


def test_kill_9_at_random_moments_leaves_records_and_index_whole(tmp_path: Path) -> None:
    rng = random.Random(3887)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    highest = 0
    for _ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(tmp_path), str(ROOT / "tests")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout.readline() == "open\n"
        time.sleep(rng.uniform(0, 0.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        reader = TinyStore(tmp_path, readonly=True)
        check(reader)
        reader.close()
        writer = TinyStore(tmp_path)  # rolls forward what the kill interrupted
        highest = max(highest, check(writer))
        writer.close()
        assert check(TinyStore(tmp_path, readonly=True)) == highest
    assert highest > 10  # the kills landed among flushes, not only before the first
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".damaged-" in p.name]
    # The index says what a rebuild from the files says.
    store = TinyStore(tmp_path)
    before = sorted(r.to_dict()["rid"] for r in store.search())
    store.rebuild()
    assert sorted(r.rid for r in store.search()) == before
    store.close()
