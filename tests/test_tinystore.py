"""TinyStore beyond the Store contract: its files, partitions, batching,
locking, readers, retention, damaged files, and kill -9 in mid-flush."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from tinydb import TinyDB

import ingest.tinystore as tinystore
from ingest.records import Attempt, Link, Recipient, TrackingRecord
from ingest.tinystore import StoreError, StoreLocked, TinyStore
from parsers import Kind

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


def files(store_dir: Path) -> list[str]:
    return sorted(p.name for p in (store_dir / "records").iterdir())


def docs_in(path: Path, table: str = "records") -> list[dict]:
    """A file as plain TinyDB reads it: the files are TinyDB databases."""
    db = TinyDB(path, access_mode="r")
    try:
        return db.table(table).all()
    finally:
        db.close()


def rids_in(path: Path) -> list[str]:
    return [d["rid"] for d in docs_in(path)]


def test_every_field_survives_reopen(tmp_path: Path) -> None:
    r = full_record()
    store = TinyStore(tmp_path)
    store.put([r])
    store.set_meta("tail:/var/log/mail.log", {"inode": 12, "offset": 3456})
    store.close()

    again = TinyStore(tmp_path)
    got = again.get(r.rid)
    assert got is not None and got.to_dict() == r.to_dict()
    assert got.arrival == r.arrival and got.arrival.tzinfo is not None
    assert again.get_meta("tail:/var/log/mail.log") == {"inode": 12, "offset": 3456}
    # The indexes are rebuilt from the files.
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
    what orjson refuses or would encode its own way), it reads back as the
    standard library's own encoding of the same data."""
    written = tinystore.json_bytes(data)
    assert json.loads(written) == json.loads(json.dumps(data))
    assert written.decode("utf-8")  # every file is UTF-8, whoever wrote it


def test_what_the_standard_library_refuses_is_refused() -> None:
    """A time or a record in a document is a bug upstream (``to_dict``
    writes times as text): orjson would write it, the store refuses it."""
    for data in ({"at": T0}, {"record": rec("AAAAA11111", T0)}):
        with pytest.raises(TypeError):
            tinystore.json_bytes(data)


def test_a_huge_size_survives_reopen(tmp_path: Path) -> None:
    r = rec("AAAAA11111", T0)
    r.size = 10**30
    store = TinyStore(tmp_path)
    store.put([r])
    store.close()
    again = TinyStore(tmp_path)
    got = again.get(r.rid)
    assert got is not None and got.size == 10**30 and isinstance(got.size, int)
    again.close()


def test_a_partition_is_the_file_tinydb_itself_writes(tmp_path: Path) -> None:
    made = [full_record(), rec("AAAAA11111", T0 + timedelta(minutes=1)), rec("BBBBB22222", T0 + timedelta(minutes=2))]
    store = TinyStore(tmp_path / "store")
    store.put(made)
    store.set_meta("k", {"offset": 1})
    store.close()
    partition = tmp_path / "store" / "records" / "2026-03-01T12.json"

    db = TinyDB(partition)  # plain TinyDB, its own storage
    docs = db.table("records").all()
    db.close()
    assert [d.doc_id for d in docs] == [1, 2, 3]
    assert [TrackingRecord.from_dict(d) for d in docs] == made

    by_tinydb = TinyDB(tmp_path / "by-tinydb.json")
    by_tinydb.table("records").insert_multiple(r.to_dict() for r in made)
    by_tinydb.close()
    assert json.loads(partition.read_text()) == json.loads((tmp_path / "by-tinydb.json").read_text())
    assert docs_in(tmp_path / "store" / "meta.json", "meta") == [{"key": "k", "value": {"offset": 1}}]


def test_a_store_written_in_the_full_form_opens(tmp_path: Path) -> None:
    """Older stores spelled out every field (None, empty lists, defaults)."""
    records = tmp_path / "records"
    records.mkdir()
    made = [full_record(), rec("AAAAA11111", T0 + timedelta(minutes=1))]
    spelled_out = [full_form(r.to_dict()) for r in made]
    assert "envid" in spelled_out[1] and spelled_out[1]["recipients"][0]["action"] == "delayed"
    db = TinyDB(records / "2026-03-01T12.json")
    db.table("records").insert_multiple(spelled_out)
    db.close()

    store = TinyStore(tmp_path)
    assert [store.get(r.rid) for r in made] == made
    assert [r.rid for r in store.by_message_id("a@b")] == [made[0].rid]
    store.put([rec("BBBBB22222", T0 + timedelta(minutes=2))])
    store.close()
    assert "envid" not in docs_in(records / "2026-03-01T12.json")[1]  # rewritten compact
    assert TinyStore(tmp_path, readonly=True).get(made[1].rid) == made[1]


def full_form(d: dict) -> dict:
    """A record's dict as stores wrote it before the compact form."""
    record = {
        **dict.fromkeys(("message_id", "envid", "sender", "size", "client", "certifier", "mtrk_timeout")),
        **dict.fromkeys(("removed", "last_seen")),
        "parents": [],
        "children": [],
        **d,
    }
    recipient = {
        **dict.fromkeys(("original", "diagnostic", "remote_mta", "last_attempt", "will_retry_until", "next_hop")),
        "action": "delayed",
        "status": "4.0.0",
        "transport": None,
        "attempts": [],
    }
    attempt = dict.fromkeys(("dsn", "remote_mta", "reply"))
    record["recipients"] = [
        {**recipient, **x, "attempts": [{**attempt, **a} for a in x.get("attempts", ())]}
        for x in d.get("recipients", ())
    ]
    return record


def test_one_tinydb_file_per_utc_hour_of_arrival(tmp_path: Path) -> None:
    plus2 = timezone(timedelta(hours=2))
    a = rec("AAAAA11111", T0)
    b = rec("BBBBB22222", T0 + timedelta(minutes=59, seconds=59))
    c = rec("CCCCC33333", T0 + timedelta(hours=1))
    d = rec("DDDDD44444", datetime(2026, 3, 2, 1, 30, tzinfo=plus2))  # 23:30 UTC the day before
    store = TinyStore(tmp_path)
    store.put([c, a, d, b])
    store.close()
    assert files(tmp_path) == ["2026-03-01T12.json", "2026-03-01T13.json", "2026-03-01T23.json"]
    records = tmp_path / "records"
    assert rids_in(records / "2026-03-01T12.json") == [a.rid, b.rid]
    assert rids_in(records / "2026-03-01T13.json") == [c.rid]
    assert rids_in(records / "2026-03-01T23.json") == [d.rid]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock", "records"]  # no meta set, no meta.json


def test_partition_names_are_the_utc_hour() -> None:
    plus2 = timezone(timedelta(hours=2))
    for when in (T0, T0 + timedelta(minutes=59, microseconds=7), datetime(2026, 3, 2, 1, 30, tzinfo=plus2)):
        assert tinystore.partition_of(when) == when.astimezone(UTC).strftime(tinystore.PARTITION_FORMAT)
    assert tinystore.partition_of(datetime(2026, 3, 2, 1, 30, tzinfo=plus2)) == "2026-03-01T23"


def test_search_walks_the_hours_in_arrival_order(tmp_path: Path) -> None:
    store = TinyStore(tmp_path)
    times = [T0 + timedelta(hours=h, minutes=m) for h in (2, 0, 1) for m in (50, 10)]
    made = [rec(f"Q{n:09d}", at) for n, at in enumerate(times)]
    store.put(made)
    by_arrival = [r.rid for r in sorted(made, key=lambda r: r.arrival)]
    assert [r.rid for r in store.search()] == by_arrival
    assert [r.rid for r in store.search(limit=3)] == by_arrival[:3]
    window = store.search(since=T0 + timedelta(minutes=30), until=T0 + timedelta(hours=2, minutes=10))
    assert [r.rid for r in window] == by_arrival[1:5]
    store.close()


def test_puts_reach_the_disk_only_on_flush(tmp_path: Path) -> None:
    store = TinyStore(tmp_path)
    a = rec("AAAAA11111", mid="<m1@x>")
    store.put([a])
    store.set_meta("k", 1)
    assert store.by_message_id("m1@x") == [a]  # reads see the put at once
    assert files(tmp_path) == [] and not (tmp_path / "meta.json").exists()
    store.flush()
    partition = tmp_path / "records" / "2026-03-01T12.json"
    before = partition.read_bytes()
    assert rids_in(partition) == [a.rid] and (tmp_path / "meta.json").exists()

    b = rec("BBBBB22222", mid="<m2@x>")
    store.put([b])
    a2 = TrackingRecord.from_dict({**a.to_dict(), "sender": "joe@example.com"})
    store.put([a2])
    assert partition.read_bytes() == before
    store.flush()
    assert rids_in(partition) == [a.rid, b.rid]
    store.close()
    assert TinyStore(tmp_path, readonly=True).get(a.rid).sender == "joe@example.com"


def test_a_record_whose_arrival_moves_changes_partition(tmp_path: Path) -> None:
    store = TinyStore(tmp_path)
    first = rec("AAAAA11111", T0 + timedelta(hours=1, seconds=2))
    other = rec("BBBBB22222", T0 + timedelta(hours=1, seconds=5))
    store.put([first, other])
    store.flush()
    # An out-of-order line shows the message arrived two seconds earlier, in the hour before.
    moved = TrackingRecord.from_dict(
        {**first.to_dict(), "arrival": (T0 + timedelta(minutes=59, seconds=59)).isoformat()}
    )
    store.put([moved])
    store.flush()
    records = tmp_path / "records"
    assert rids_in(records / "2026-03-01T12.json") == [first.rid]
    assert rids_in(records / "2026-03-01T13.json") == [other.rid]

    # Moved again, and the hour it left is empty: its file goes.
    store.put(
        [TrackingRecord.from_dict({**moved.to_dict(), "arrival": (T0 + timedelta(hours=1, seconds=9)).isoformat()})]
    )
    store.put([TrackingRecord.from_dict({**other.to_dict(), "arrival": (T0 + timedelta(minutes=10)).isoformat()})])
    store.close()
    assert files(tmp_path) == ["2026-03-01T12.json", "2026-03-01T13.json"]
    assert rids_in(records / "2026-03-01T12.json") == [other.rid]
    assert rids_in(records / "2026-03-01T13.json") == [first.rid]
    again = TinyStore(tmp_path, readonly=True)
    assert len(again) == 2 and len(again.by_queue_id("AAAAA11111")) == 1


@pytest.mark.parametrize("fork", [False, True], ids=["one-writer", "forked-writers"])
def test_moved_records_are_on_disk_at_every_step_of_a_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: bool
) -> None:
    """Two records swapping hours in one flush: whichever file write a crash
    follows, each is in some partition file, and a reader never misses one.
    With forked writers the check runs in them: one that fails it fails the
    flush."""
    forked = forking(monkeypatch) if fork else []
    store = TinyStore(tmp_path)
    reader = TinyStore(tmp_path, readonly=True, refresh_interval=0)
    x = rec("AAAAA11111", T0 + timedelta(minutes=30))
    y = rec("BBBBB22222", T0 + timedelta(hours=1, minutes=30))
    store.put([x, y])
    store.flush()
    store.put([TrackingRecord.from_dict({**x.to_dict(), "arrival": y.to_dict()["arrival"]})])
    store.put([TrackingRecord.from_dict({**y.to_dict(), "arrival": x.to_dict()["arrival"]})])

    steps = []
    write_table = tinystore._write_table

    def checked(path: Path, table: str, docs: object) -> None:
        write_table(path, table, docs)
        on_disk = {rid for f in (tmp_path / "records").glob("*.json") for rid in rids_in(f)}
        steps.append(path.name)
        assert {x.rid, y.rid} <= on_disk, steps
        assert reader.get(x.rid) is not None and reader.get(y.rid) is not None, steps

    monkeypatch.setattr(tinystore, "_write_table", checked)
    before = len(forked)
    store.flush()
    if fork:
        assert len(forked) - before == 2  # one per pass: the second waits for the first
    else:
        assert len(steps) == 4  # both files with both records, then each with its own
    assert rids_in(tmp_path / "records" / "2026-03-01T12.json") == [y.rid]
    assert rids_in(tmp_path / "records" / "2026-03-01T13.json") == [x.rid]
    store.close()


def test_a_record_in_another_hours_file_is_kept_and_taken_home(tmp_path: Path) -> None:
    """As a crash leaves it after the first pass of a move wrote the old
    hour (still holding the record) but before the new hour was written."""
    records = tmp_path / "records"
    records.mkdir(parents=True)
    stray = rec("AAAAA11111", T0 + timedelta(hours=1, minutes=1))
    stay = rec("BBBBB22222", T0 + timedelta(minutes=1))
    tinystore._write_table(records / "2026-03-01T12.json", "records", [stay.to_dict(), stray.to_dict()])
    tinystore._write_table(
        records / "2026-03-01T13.json", "records", [rec("CCCCC33333", T0 + timedelta(hours=1)).to_dict()]
    )

    reader = TinyStore(tmp_path, readonly=True)
    assert reader.get(stray.rid) is not None and len(reader) == 3
    store = TinyStore(tmp_path)
    assert store.get(stray.rid) is not None and len(store) == 3
    store.close()
    assert rids_in(records / "2026-03-01T12.json") == [stay.rid]
    assert stray.rid in rids_in(records / "2026-03-01T13.json")


def test_two_copies_left_by_a_crash_keep_the_newer(tmp_path: Path) -> None:
    store = TinyStore(tmp_path)
    old = rec("AAAAA11111", T0 + timedelta(hours=1, seconds=2))
    store.put([old])
    store.flush()
    shutil.copy(tmp_path / "records" / "2026-03-01T13.json", tmp_path / "old-13.json")
    moved = TrackingRecord.from_dict(
        {**old.to_dict(), "arrival": (T0 + timedelta(minutes=59)).isoformat(), "sender": "moved@example.com"}
    )
    store.put([moved])
    store.close()
    # As if the crash came after the new partition was written and before the old one lost the record.
    shutil.copy(tmp_path / "old-13.json", tmp_path / "records" / "2026-03-01T13.json")

    again = TinyStore(tmp_path)
    assert [r.sender for r in again.by_queue_id("AAAAA11111")] == ["moved@example.com"]
    again.close()  # the stale copy's file is rewritten without it
    assert files(tmp_path) == ["2026-03-01T12.json"]


HOLDER = """
import sys
from ingest.tinystore import TinyStore
store = TinyStore(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
store.close()
"""


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "open\n"
        message = f"store {tmp_path} is locked by another writer (pid {holder.pid})"
        with pytest.raises(StoreLocked, match=re.escape(message)):
            TinyStore(tmp_path)
        assert len(TinyStore(tmp_path, readonly=True)) == 0  # readers take no lock
    finally:
        holder.communicate("", timeout=30)
    TinyStore(tmp_path).close()  # free again once the holder is gone


def test_reader_sees_what_the_writer_flushed(tmp_path: Path) -> None:
    reader = TinyStore(tmp_path, readonly=True, refresh_interval=0)  # before the writer made anything
    lazy = TinyStore(tmp_path, readonly=True, refresh_interval=3600)
    writer = TinyStore(tmp_path)
    a = rec("AAAAA11111", mid="<m1@x>", removed=T0)
    b = rec("BBBBB22222", T0 + timedelta(days=1), mid="<m2@x>")
    writer.put([a, b])
    writer.set_meta("k", "v1")
    assert reader.by_message_id("m1@x") == [] and reader.get_meta("k") is None  # not flushed yet
    writer.flush()
    assert [r.rid for r in reader.by_message_id("m1@x")] == [a.rid]
    assert reader.get_meta("k") == "v1" and len(reader) == 2
    assert len(lazy) == 0  # looks again only after its interval

    writer.put([TrackingRecord.from_dict({**a.to_dict(), "message_id": "<m3@x>"})])
    writer.expire(T0 + timedelta(days=30))  # a goes, and with it its hour's file
    writer.flush()
    assert reader.by_message_id("m1@x") == [] and reader.get(a.rid) is None
    assert [r.rid for r in reader.search()] == [b.rid]

    with pytest.raises(StoreError, match="read-only"):
        reader.put([a])
    with pytest.raises(StoreError, match="read-only"):
        reader.set_meta("k", "v2")
    reader.close()
    writer.close()


def test_expire_removes_emptied_partition_files(tmp_path: Path) -> None:
    store = TinyStore(tmp_path)
    done = rec("AAAAA11111", T0, removed=T0 + timedelta(minutes=1))
    queued = rec("BBBBB22222", T0 + timedelta(hours=3))
    store.put([done, queued])
    store.flush()
    assert files(tmp_path) == ["2026-03-01T12.json", "2026-03-01T15.json"]
    assert store.expire(T0 + timedelta(days=11)) == 1
    store.flush()
    assert files(tmp_path) == ["2026-03-01T15.json"]
    store.close()
    assert [r.rid for r in TinyStore(tmp_path, readonly=True).search()] == [queued.rid]


def test_damaged_files_are_set_aside_and_the_rest_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = TinyStore(tmp_path)
    good = rec("AAAAA11111", T0)
    store.put([good, rec("BBBBB22222", T0 + timedelta(hours=1)), rec("CCCCC33333", T0 + timedelta(hours=2))])
    store.put([rec("DDDDD44444", T0 + timedelta(hours=3))])
    store.set_meta("k", 1)
    store.close()
    records = tmp_path / "records"
    truncated = records / "2026-03-01T13.json"
    truncated.write_bytes(truncated.read_bytes()[:100])  # an old crash of a non-atomic writer
    (records / "2026-03-01T14.json").write_bytes(b"\x00\xffgarbage")
    (records / "2026-03-01T15.json").write_text(json.dumps({"records": {"1": {"rid": "x"}}}))  # JSON, not a record
    (tmp_path / "meta.json").write_text("{")

    with caplog.at_level(logging.WARNING, logger="ingest.tinystore"):
        reader = TinyStore(tmp_path, readonly=True)
    assert [r.rid for r in reader.search()] == [good.rid]
    assert len(caplog.records) == 4 and len(files(tmp_path)) == 4  # a reader only skips them
    caplog.clear()

    with caplog.at_level(logging.WARNING, logger="ingest.tinystore"):
        store = TinyStore(tmp_path)
    assert [r.rid for r in store.search()] == [good.rid] and store.get_meta("k") is None
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("2026-03-01T13.json", "2026-03-01T14.json", "2026-03-01T15.json", "meta.json"):
        assert f"{name} (" in warned
    aside = [n for n in files(tmp_path) if ".corrupt-" in n]
    assert len(aside) == 3 and [n for n in files(tmp_path) if ".corrupt-" not in n] == ["2026-03-01T12.json"]
    assert len(list(tmp_path.glob("meta.json.corrupt-*"))) == 1

    # The store goes on: new records of a damaged hour get a fresh file.
    late = rec("EEEEE55555", T0 + timedelta(hours=1, minutes=5))
    store.put([late])
    store.close()
    assert rids_in(truncated) == [late.rid]


def test_a_failed_write_leaves_the_previous_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = TinyStore(tmp_path)
    a = rec("AAAAA11111")
    store.put([a])
    store.flush()
    partition = tmp_path / "records" / "2026-03-01T12.json"
    before = partition.read_bytes()
    store.put([rec("BBBBB22222")])

    def no_rename(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk gone"):
        store.flush()
    assert partition.read_bytes() == before
    assert files(tmp_path) == ["2026-03-01T12.json"]  # and no temp file left behind
    monkeypatch.undo()
    store.close()  # what failed is still dirty, and written now
    assert len(rids_in(partition)) == 2


def forking(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every flush share its partitions out among forked writers, as a
    large one does; the pids of the writers forked."""
    monkeypatch.setattr(tinystore, "FORK_MIN_RECORDS", 1)
    monkeypatch.setattr(tinystore, "_writers", lambda: 3)  # even beside a thread another test left running
    forked: list[int] = []
    fork = os.fork

    def counted() -> int:
        pid = fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counted)
    return forked


def test_a_large_flush_is_written_by_forked_writers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forked = forking(monkeypatch)
    store = TinyStore(tmp_path)
    made = [rec(f"Q{h}{n:08d}", T0 + timedelta(hours=h, minutes=n)) for h in range(5) for n in range(h + 1)]
    mover = rec("MOVER00000", T0 + timedelta(hours=1, minutes=30))
    store.put([*made, mover])
    store.set_meta("k", 1)
    store.flush()
    assert len(forked) == 2  # and this process wrote the third share
    assert files(tmp_path) == [f"2026-03-01T{12 + h}.json" for h in range(5)]
    assert len(rids_in(tmp_path / "records" / "2026-03-01T16.json")) == 5

    moved = TrackingRecord.from_dict({**mover.to_dict(), "arrival": (T0 + timedelta(minutes=30)).isoformat()})
    late = rec("LATE000000", T0 + timedelta(hours=3, minutes=59))
    store.put([moved, late])
    store.close()
    assert len(forked) == 4  # two for the first pass (hours 12, 13, 15), none for the second (13 alone)
    assert moved.rid in rids_in(tmp_path / "records" / "2026-03-01T12.json")
    assert moved.rid not in rids_in(tmp_path / "records" / "2026-03-01T13.json")
    again = TinyStore(tmp_path, readonly=True)
    assert sorted(r.rid for r in again.search()) == sorted(r.rid for r in [*made, moved, late])
    assert again.get(moved.rid) == moved and again.get_meta("k") == 1


def test_a_forked_writer_that_fails_fails_the_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    forking(monkeypatch)
    store = TinyStore(tmp_path)
    store.put([rec(f"Q{h}00000000", T0 + timedelta(hours=h)) for h in range(3)])
    store.set_meta("k", 1)
    parent = os.getpid()
    write_table = tinystore._write_table

    def failing_in_children(path: Path, table: str, docs: object) -> None:
        if os.getpid() != parent:
            raise OSError("disk gone")
        write_table(path, table, docs)

    monkeypatch.setattr(tinystore, "_write_table", failing_in_children)
    with pytest.raises(OSError, match=r"could not write partitions 2026-03-01T1\d"):
        store.flush()
    assert "OSError: disk gone" in capfd.readouterr().err
    assert len(files(tmp_path)) == 1 and not (tmp_path / "meta.json").exists()  # meta waits for every partition

    monkeypatch.setattr(tinystore, "_write_table", write_table)
    store.close()  # what failed is still dirty, and written now
    assert len(files(tmp_path)) == 3 and TinyStore(tmp_path, readonly=True).get_meta("k") == 1


# -- kill -9 in the middle of flushing -------------------------------------------------

HOURS = (12, 13, 14)
PER_HOUR = 400
MOVER = "MOVER00000"


def mover_hour(gen: int) -> int:
    """The hour the mover record lives in at generation ``gen``: it moves
    at every flush, so that kills also land between a move's two passes."""
    return 12 if gen % 2 else 13


def generation(gen: int) -> list[TrackingRecord]:
    """Everything the crash child puts before its flush number ``gen``:
    every record stamped with ``gen`` (in ``size``)."""
    out = []
    for hour in HOURS:
        for n in range(PER_HOUR):
            r = rec(f"Q{hour}{n:06d}", T0.replace(hour=hour, minute=n % 60, second=n // 60), mid=f"<{hour}.{n}@x>")
            r.size = gen
            r.recipients[0].diagnostic = "x" * 200
            out.append(r)
    first = T0.replace(hour=13, minute=0, second=30)
    mover = rec(MOVER, first)
    mover.arrival = first.replace(hour=mover_hour(gen))
    mover.last_seen = first + timedelta(seconds=gen)  # newer copies win
    mover.size = gen
    return [*out, mover]


CRASH_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from test_tinystore import generation
from ingest.tinystore import TinyStore
store = TinyStore(sys.argv[1])
gen = store.get_meta("generation") or 0
print("open", flush=True)
while True:
    gen += 1
    store.put(generation(gen))
    store.set_meta("generation", gen)
    store.flush()
"""


def check_partitions(store_dir: Path) -> None:
    """Each file holds all records of one flush: every rid of its hour, one
    generation throughout, and the mover where that generation put it (or
    where the generation before did, for the first pass of its move)."""
    meta = docs_in(store_dir / "meta.json", "meta") if (store_dir / "meta.json").exists() else []
    meta_gen = meta[0]["value"] if meta else 0
    for hour in HOURS:
        path = store_dir / "records" / f"2026-03-01T{hour}.json"
        if not path.exists():
            assert meta_gen == 0, f"{path.name} missing after generation {meta_gen}"
            continue
        docs = docs_in(path)
        gens = {d["size"] for d in docs}
        assert len(gens) == 1, f"{path.name} mixes generations {gens}"
        gen = gens.pop()
        assert gen >= meta_gen, f"{path.name} is at {gen}, behind the checkpoint {meta_gen}"
        qids = {d["queue_id"] for d in docs}
        expected = {f"Q{hour}{n:06d}" for n in range(PER_HOUR)}
        assert qids - {MOVER} == expected, f"{path.name} at {gen} lacks {len(expected - qids)} records"
        if hour == mover_hour(gen):
            assert MOVER in qids, f"{path.name} at {gen} lost the mover"
        elif MOVER in qids:
            assert hour == mover_hour(gen - 1), f"{path.name} at {gen} holds the mover out of place"


def test_kill_9_at_random_moments_never_leaves_a_partition_broken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(3887)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    highest = 0
    for _ in range(25):
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(tmp_path), str(ROOT / "tests")],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout.readline() == "open\n"
        time.sleep(rng.uniform(0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        check_partitions(tmp_path)

        store = TinyStore(tmp_path, readonly=True)
        gen = store.get_meta("generation") or 0
        if gen:
            assert len(store) == len(HOURS) * PER_HOUR + 1
        highest = max(highest, gen)
    assert highest > 25  # the kills did land among flushes, not only before the first
    assert not caplog.records  # no reader met a damaged file

    store = TinyStore(tmp_path)  # the writer tidies up what the kills left
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".corrupt-" in p.name]
    assert [r.size for r in store.by_queue_id(MOVER)] == [max(r.size for r in store.search())]
    store.close()
