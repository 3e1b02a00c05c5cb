"""Tail latency to the store: from a line's append to its record in the store.

``mtqpd tail``'s pipeline in one process (follow -> parse -> correlate ->
TinyStore), as ``mtqpd run`` will run it: for each of 120 appended lines
(a Postfix cleanup line with a fresh Message-ID, random gaps of 0-20 ms),
the time until ``store.by_message_id`` finds it (what a server in the same
process answers from), and until the checkpoint covering it is on disk
(what survives a crash). Median and p99 are printed, not asserted.

    .venv/bin/pytest tests/bench/test_tail_store_latency.py -s
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import trio

from ingest.correlator import Settings
from ingest.store.tiny import TinyStore
from ingest.tailcmd import Tailer, checkpoint_key, run

APPENDS = 120


def test_tail_to_store_latency(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.touch()
    store = TinyStore(tmp_path / "store")
    tailer = Tailer(store, Settings(default_host="mx1"))
    rng = random.Random(1)
    visible: list[float] = []
    durable: list[float] = []
    meta = tmp_path / "store" / "meta.json"

    def on_disk_offset() -> int:
        try:
            table = json.loads(meta.read_text())["meta"]
        except (OSError, ValueError, KeyError):
            return -1
        for doc in table.values():
            if doc["key"] == checkpoint_key(str(log)):
                return doc["value"]["offset"]
        return -1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(run, [str(log)], tailer)
            with open(log, "ab", buffering=0) as f:
                for n in range(APPENDS):
                    await trio.sleep(rng.uniform(0, 0.02))
                    line = f"Mar  1 12:00:00 mx1 postfix/cleanup[7]: 4F{n:08X}: message-id=<bench{n}@example.com>\n"
                    start = time.perf_counter()
                    f.write(line.encode())
                    end = f.tell()
                    with trio.fail_after(30):  # a hang guard only
                        while not store.by_message_id(f"bench{n}@example.com"):
                            await trio.sleep(0.0005)
                        visible.append(time.perf_counter() - start)
                        while on_disk_offset() < end:
                            await trio.sleep(0.005)
                        durable.append(time.perf_counter() - start)
            nursery.cancel_scope.cancel()

    trio.run(main)
    store.close()
    for name, values in (("in the store", visible), ("durable (checkpoint on disk)", durable)):
        ms = sorted(v * 1000 for v in values)
        p99 = statistics.quantiles(ms, n=100)[98]
        print(f"\nappend -> {name}, {APPENDS} lines: median {statistics.median(ms):7.1f} ms, p99 {p99:7.1f} ms")
