"""Tail latency: from a line's append to its delivery by ``ingest.tail.follow``.

The retrofit promise is "a new log line is answerable within a second";
this measures the tailing share of it. 500 lines are appended one at a
time, with random gaps of 0-20 ms, while ``follow`` runs with its default
fallback interval; the median, p99 and maximum of append-to-``on_lines``
are printed, not asserted (they depend on the machine).

    .venv/bin/pytest tests/bench/test_tail_latency.py -s
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import trio

from ingest.tail import Line, follow

APPENDS = 500


def test_tail_latency(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.touch()
    rng = random.Random(1)
    sent: list[float] = []
    delivered: dict[int, float] = {}
    arrived = trio.Event()

    async def on_lines(_path: str, lines: list[Line]) -> None:
        now = time.perf_counter()
        for line, _ in lines:
            delivered[int(line[:6])] = now
        arrived.set()

    async def main() -> None:
        nonlocal arrived
        async with trio.open_nursery() as nursery:
            await nursery.start(follow, [str(path)], {}, on_lines)
            with open(path, "ab", buffering=0) as log:
                for n in range(APPENDS):
                    await trio.sleep(rng.uniform(0, 0.02))
                    arrived = trio.Event()
                    sent.append(time.perf_counter())
                    log.write(f"{n:06d} Mar  1 12:00:00 mx1 postfix/qmgr[7]: 4F{n:X}: removed\n".encode())
                    with trio.fail_after(30):  # a hang guard only
                        while n not in delivered:
                            await arrived.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
    ms = sorted((delivered[n] - sent[n]) * 1000 for n in range(APPENDS))
    p99 = statistics.quantiles(ms, n=100)[98]
    print(f"\ntail latency over {APPENDS} appends (append -> on_lines)")
    print(f"  median {statistics.median(ms):7.2f} ms")
    print(f"  p99    {p99:7.2f} ms")
    print(f"  max    {ms[-1]:7.2f} ms")
