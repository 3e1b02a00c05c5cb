"""Lookups by Message-ID in a TinyStore holding a 1,000,000-line log's records.

One TrackingRecord per message of the generated log's ground truth (~130k),
each with its recipients, queue id and arrival as the log's cleanup line
gives them, is put into a fresh TinyStore and flushed. A separate process
then opens the store read-only, as ``mtqpd show`` or a server would, and
times 10,000 lookups of existing Message-IDs and 1,000 of missing ones; the
same lookups run against a MemoryStore in this process as the reference.
Prints times, sizes and peak RSS; asserts only that the answers are right.

    .venv/bin/pytest tests/bench/test_store_lookup.py -s
"""

from __future__ import annotations

import json
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest.records import Attempt, Link, Recipient, TrackingRecord
from ingest.store import MemoryStore
from ingest.store.tiny import TinyStore, partition_of

EXISTING = 10_000
MISSING = 1_000
CLEANUP = re.compile(r"(\w{3} +\d+ \d\d:\d\d:\d\d) (\S+) postfix/cleanup\[\d+\]: (\w+): message-id=(\S+)")
YEAR = 2026  # the generator's logs start on 1 March 2026 (BSD syslog has no year)
STATUS = {"2": ("2.0.0", "sent"), "4": ("4.4.1", "deferred"), "5": ("5.1.1", "bounced")}


def arrivals(log: Path) -> dict[str, tuple[datetime, str, str]]:
    """Message-ID -> (time, host, queue id) of its cleanup line: the ground
    truth names no queue ids or times, the log does."""
    found = {}
    with log.open(encoding="utf-8") as f:
        for line in f:
            if "message-id=" in line and (m := CLEANUP.match(line)):
                at = datetime.strptime(f"{YEAR} {m[1]}", "%Y %b %d %H:%M:%S").replace(tzinfo=UTC)
                found[m[4]] = (at, m[2], m[3])
    return found


def build_records(log: Path) -> list[TrackingRecord]:
    """One record per message of ``<log>.expected.json``, shaped as the
    correlator would leave it: recipients with an attempt each, removed
    unless a recipient is still delayed, bounce links by Message-ID."""
    truth = json.loads(Path(f"{log}.expected.json").read_text(encoding="utf-8"))
    seen = arrivals(log)
    records = []
    for msg in truth["messages"]:
        at, host, qid = seen[msg["message_id"]]
        done = at + timedelta(seconds=5)
        recipients = []
        for rc in msg["recipients"]:
            status, outcome = STATUS[rc["status"]]
            remote = "mx." + rc["final"].rpartition("@")[2]
            recipients.append(
                Recipient(
                    final=rc["final"],
                    original=rc["original"],
                    action=rc["action"],
                    status=status,
                    remote_mta=remote,
                    last_attempt=done,
                    transport="smtp",
                    attempts=[Attempt(done, outcome, status, remote, f"{status[0]}50 {status}")],
                )
            )
        queued = any(rc["status"] == "4" for rc in msg["recipients"])
        record = TrackingRecord(
            rid=TrackingRecord.make_rid(host, qid, at),
            host=host,
            queue_id=qid,
            mta="postfix",
            arrival=at,
            message_id=msg["message_id"],
            envid=msg["envid"],
            sender=msg["sender"],
            size=len(msg["message_id"]) * 100,
            client="client1.example.net[192.0.2.1]",
            removed=None if queued else done,
            last_seen=done,
            recipients=recipients,
        )
        if msg["bounce_of"] and msg["bounce_of"] in seen:
            parent = seen[msg["bounce_of"]]
            record.parents.append(Link(parent[1], parent[2], "bounce-of"))
        records.append(record)
    return records


def time_lookups(store: MemoryStore | TinyStore, ids: list[str]) -> tuple[list[float], int]:
    """Microseconds of each ``by_message_id``, and how many found a record."""
    took, hits = [], 0
    for mid in ids:
        start = time.perf_counter_ns()
        found = store.by_message_id(mid)
        took.append((time.perf_counter_ns() - start) / 1000)
        hits += bool(found)
    return took, hits


def summary(took: list[float]) -> str:
    p99 = statistics.quantiles(took, n=100)[98]
    return f"median {statistics.median(took):6.1f} us   p99 {p99:6.1f} us"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure_reopened(store_dir: Path, ids_file: Path) -> dict[str, object]:
    """Open the store read-only in a fresh process and time the lookups:
    the open time and RSS a reader of this store really pays."""
    start = time.perf_counter()
    store = TinyStore(store_dir, readonly=True)
    opened = time.perf_counter() - start
    ids = json.loads(ids_file.read_text(encoding="utf-8"))
    took, hits = time_lookups(store, ids["existing"] + ids["missing"])
    return {"records": len(store), "open_s": opened, "took": took, "hits": hits, "rss_mb": peak_rss_mb()}


def test_store_lookup(log_1m: Path, tmp_path: Path) -> None:
    # The reader starts now, while this process is small: a child's ru_maxrss
    # starts from its parent's RSS at fork, and this one grows past 1 GB.
    reader = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    records = build_records(log_1m)
    rng = random.Random(1)
    existing = [r.message_id for r in rng.sample(records, EXISTING)]
    missing = [f"<missing.{n}@nowhere.example>" for n in range(MISSING)]
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps({"existing": existing, "missing": missing}), encoding="utf-8")

    store_dir = tmp_path / "store"
    store = TinyStore(store_dir)
    start = time.perf_counter()
    store.put(records)
    put_s = time.perf_counter() - start
    start = time.perf_counter()
    store.flush()
    flush_s = time.perf_counter() - start
    # What a tailer pays: one record of the busiest hour changed, then flushed.
    hour, in_hour = Counter(partition_of(r.arrival) for r in records).most_common(1)[0]
    changed = next(r for r in records if partition_of(r.arrival) == hour)
    changed.last_seen = changed.last_seen + timedelta(seconds=1)
    start = time.perf_counter()
    store.put([changed])
    store.flush()
    tail_flush_s = time.perf_counter() - start
    store.close()
    files = sorted((store_dir / "records").glob("*.json"))
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    build_rss = peak_rss_mb()

    out, _ = reader.communicate(json.dumps([str(store_dir), str(ids_file)]))
    assert reader.returncode == 0
    reopened = json.loads(out)
    assert reopened["records"] == len(records)
    assert reopened["hits"] == EXISTING

    memory = MemoryStore()
    memory.put(records)
    mem_took, mem_hits = time_lookups(memory, existing + missing)
    assert mem_hits == EXISTING

    took = reopened["took"]
    print(f"\nstore lookup on {log_1m.name}: {len(records)} records in {len(files)} partition files")
    print(f"  put (memory only)       {put_s:7.2f} s")
    print(f"  first flush (all)       {flush_s:7.2f} s")
    print(f"  tailer flush (1 record) {tail_flush_s:7.2f} s   (rewrites its hour, {hour}: {in_hour} records)")
    print(f"  open read-only          {reopened['open_s']:7.2f} s")
    largest_mb = max(f.stat().st_size for f in files) / 1e6
    print(f"  size on disk            {size_mb:7.1f} MB   (largest file {largest_mb:.1f} MB)")
    print(f"  peak RSS, reader        {reopened['rss_mb']:7.0f} MB")
    print(f"  peak RSS, writer        {build_rss:7.0f} MB   (this process, with the ground truth and the log scan)")
    print(f"  TinyStore by_message_id {summary(took)}   ({EXISTING} hits + {MISSING} misses)")
    print(f"    hits only             {summary(took[:EXISTING])}")
    print(f"    misses only           {summary(took[EXISTING:])}")
    print(f"  MemoryStore reference   {summary(mem_took)}")


if __name__ == "__main__":
    store_arg, ids_arg = json.loads(sys.stdin.readline())
    print(json.dumps(measure_reopened(Path(store_arg), Path(ids_arg))))
