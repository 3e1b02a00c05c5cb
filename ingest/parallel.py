"""Replay spread over the machine's cores: big plain logs into a fresh store.

Correlation is sequential in principle: a line may belong to a message that
arrived anywhere earlier in the log. In practice nearly all of a message's
lines lie within seconds of each other. So the log is cut into chunks of
whole lines, and worker processes correlate each chunk from an empty state
as if it were the whole log. That is exact for every message whose lines
all lie in one chunk. The others are found by the parent, which takes the
chunks in log order and is the one correlator that sees everything: the
sequential replay's correlator, over the store, with its memory bound and
its Bloom filter of dropped keys (``ingest.correlator``).

For each chunk, in order:

1. the worker correlates it (while it waits for the parent, it goes on
   with its next chunk) and names the (host, queue id) keys its lines
   touched, and the keys one line touched together (a bounce and its
   parent);
2. the parent names the keys that are *carried*: those its correlator holds
   or may have dropped (the chunk's lines continue a message the parent
   knows), and every key a line ties to one of them, transitively;
3. the worker drops its records of carried keys and sends their lines; it
   writes the segments of the records no later line can change (they left
   the queue an hour before the chunk's end, or are stale) and sends their
   index rows; the records still in flight at the chunk's end it hands
   over, whole;
4. the parent files the written segments, takes the records in flight into
   its correlator, and applies the carried lines to it.

Every key is then where the sequential replay would have it: in the
parent's memory, or written and in its Bloom filter, or new. A test holds
the spread store equal to the sequential one, record by record. Memory
follows the chunk size (``chunk_bytes``, from the memory budget), not the
length of the logs: a worker holds at most two chunks' records, the
parent what is in flight.

Only for a fresh store (a chunk cannot see records already stored) and
plain files (a compressed file cannot be cut); otherwise replay is
sequential. Processes are forked: the parsers' grammars and the settings
are inherited, not rebuilt or sent.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import operator
import os
import time
import traceback
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from zoneinfo import ZoneInfo

from parsers import Context, parse

from .correlator import Correlator, Settings
from .memory import Budget
from .records import TrackingRecord, iso
from .replay import Summary, note_sources, order_logs
from .sources import OPENERS, Segment, blocks_between, cut, reference_time
from .store.tiny import TinyStore
from .store.tiny.store import SEGMENT_RECORDS, write_new_segments

#: Below this many bytes of log, forking and the rounds cost more than they save.
SPREAD_FROM = 16 * 1024 * 1024
#: A worker's records take about this many times the bytes of their lines.
_RECORD_BYTES_PER_LOG_BYTE = 4
#: Chunks are at least this big: each costs a round with the parent.
MIN_CHUNK = 4 << 20
#: A record that left the queue longer ago than this before its chunk's
#: end is written by the worker; a later line that changes it (rare: a
#: bounce linked late) has it read back by the parent. Sooner ones, and
#: those still queued, are handed to the parent whole.
HAND_OVER_AFTER = timedelta(minutes=1)

Key = tuple[str, str]


def spreadable(paths: list[str], jobs: int) -> bool:
    """Whether ``paths`` are worth and fit for a spread replay on ``jobs`` cores."""
    if jobs < 2 or any(p == "-" or p.endswith(tuple(OPENERS)) for p in paths):
        return False
    try:
        return sum(os.path.getsize(p) for p in paths) >= SPREAD_FROM
    except OSError:
        return False  # the sequential replay reports the file that is missing


def chunk_bytes(budget: Budget, jobs: int) -> int:
    """The size of a chunk: a worker holds two chunks' records at a time,
    in its share of the budget."""
    share = budget.split(jobs + 1).total  # the parent has a share too
    return max(share // (2 * _RECORD_BYTES_PER_LOG_BYTE), MIN_CHUNK)


def _blocks(run: list[Segment]) -> Iterator[tuple[str, list[str]]]:
    """(path, lines) for every block of a run, in order."""
    for path, start, end in run:
        for block in blocks_between(path, start, end):
            yield path, block


# -- one chunk, in a worker ----------------------------------------------------------


class _Collected:
    """The store a chunk's correlator flushes into, once, at the end.

    Nothing is put before that, so there is nothing to find: the correlator
    asks only ``by_queue_id``, for keys it has not seen in this chunk, and
    those belong to no record of it.
    """

    unreadable = 0

    def __init__(self) -> None:
        self.records: list[TrackingRecord] = []

    def put(self, records: Iterable[TrackingRecord]) -> None:
        self.records.extend(records)

    def by_queue_id(self, queue_id: str, since: datetime | None = None) -> list[TrackingRecord]:
        return []

    def span(self) -> None:
        return None

    def flush(self) -> None:
        pass


@dataclass(slots=True)
class _Correlation:
    """What correlating a chunk from nothing left.

    Which lines touched which keys is kept as two flat sequences, not as
    a list of line numbers per key: ``hits``, every key touched, in order,
    and ``marks``, for each line, how many hits there were up to and
    including it. Appending to those is all a line costs; the per-key
    views (``keys``, ``ties``, ``lines_touching``) are made once, at the
    end, for the few keys that need them. (Filling a dict of lists per
    line cost as much as correlating the line.)
    """

    run: list[Segment]
    correlator: Correlator
    collected: _Collected
    kinds: Counter = field(default_factory=Counter)
    hits: list[Key] = field(default_factory=list)
    marks: array[int] = field(default_factory=lambda: array("q"))  # 8 bytes a line, not 36
    #: Per file: the times of its first and last lines.
    times: dict[str, list[datetime]] = field(default_factory=dict)

    @property
    def lines(self) -> int:
        return len(self.marks)

    def keys(self) -> set[Key]:
        return set(self.hits)

    def ties(self) -> list[tuple[Key, ...]]:
        """Keys that one line touched together (a bounce and its parent)."""
        hits, out, before = self.hits, [], 0
        for mark in self.marks:
            if mark - before > 1:
                out.append(tuple(hits[before:mark]))
            before = mark
        return out

    def lines_touching(self, keys: set[Key]) -> list[int]:
        """The numbers (from 1) of the lines that touched any of ``keys``, in order."""
        marks = self.marks
        # Hit j belongs to the line after the last one whose mark is <= j.
        return sorted({bisect_right(marks, j) + 1 for j, key in enumerate(self.hits) if key in keys})


def _correlate(
    run: list[Segment], settings: Settings, tz: str | None, mta: str, contexts: dict[str, Context]
) -> Iterator[_Correlation | None]:
    """Correlate the lines of ``run`` from nothing, noting which lines
    touched which keys; yields None after each block (so that the caller
    may do other work meanwhile), and the correlation at the end."""
    collected = _Collected()
    done = _Correlation(run, Correlator(collected, settings, memory=1 << 40), collected)  # type: ignore[arg-type]
    hits = done.hits
    done.correlator.on_touch = hits.append
    apply, marks = done.correlator.apply, done.marks
    zone = ZoneInfo(tz) if tz else None
    for path, block in _blocks(run):
        ctx = contexts.get(path)
        if ctx is None:
            ref = reference_time(path)
            ctx = contexts[path] = Context(tz=zone, reference=ref) if zone else Context(reference=ref)
        events = [parse(text, ctx, mta) for text in block]
        done.kinds.update(map(_KIND, events))
        marks.extend([apply(ev) or len(hits) for ev in events])  # apply returns None
        stamps = [ev.ts for ev in events if ev.ts is not None]
        if stamps:
            seen = done.times.setdefault(path, [stamps[0], stamps[-1]])
            seen[1] = stamps[-1]
        yield None
    done.correlator.flush(durable=False)  # settles every record into ``collected``
    yield done


_KIND = operator.attrgetter("kind")


@dataclass(slots=True)
class _Correlated:
    """Step 1's answer."""

    lines: int
    kinds: Counter
    keys: set[Key]
    ties: list[tuple[Key, ...]]
    records: int
    hours: int
    now: datetime | None
    times: dict[str, list[str]]


@dataclass(slots=True)
class _Handed:
    """Step 3's answer."""

    #: (path, lines) of the carried keys, in log order.
    lines: list[tuple[str, list[str]]]
    #: Records still in flight at the chunk's end.
    live: list[TrackingRecord]
    #: What ``write_new_segments`` wrote.
    written: list
    rows: array
    closed: int


def _worker(
    conn: Connection,
    chunks: list[list[Segment]],
    settings: Settings,
    tz: str | None,
    mta: str,
    store: str,
    retention: timedelta,
) -> None:
    """A worker's chunks, through the steps of the module's docstring.

    The process leaves with ``os._exit`` once all is written and told: it
    has nothing to clean up, and freeing a million objects one by one would
    cost a third of a second. Its collector stays off from start to end:
    nothing here makes reference cycles.
    """
    gc.disable()
    contexts: dict[str, Context] = {}
    try:
        waiting: _Correlation | None = None
        for run in chunks:
            done = None
            for step in _correlate(run, settings, tz, mta, contexts):
                if step is not None:
                    done = step
                elif waiting is not None and conn.poll():
                    _hand(conn, waiting, store, retention)
                    waiting = None
            assert done is not None
            if waiting is not None:
                _hand(conn, waiting, store, retention)
            records = done.collected.records
            hours = len({r.arrival.replace(minute=0, second=0, microsecond=0) for r in records})
            now = done.correlator._now
            times = {path: [iso(a), iso(b)] for path, (a, b) in done.times.items()}
            conn.send(_Correlated(done.lines, done.kinds, done.keys(), done.ties(), len(records), hours, now, times))
            waiting = done
        if waiting is not None:
            _hand(conn, waiting, store, retention)
        conn.send(None)
    except BaseException:  # the parent reports it; a child must not print a second traceback
        conn.send(_Failed(traceback.format_exc()))
        conn.close()
        os._exit(1)
    conn.close()
    os._exit(0)


def _hand(conn: Connection, done: _Correlation, store: str, retention: timedelta) -> None:
    """Steps 2 and 3 for one chunk: the parent names the carried keys and
    the numbers to give records and segments; what is not carried is
    written or handed over, the carried keys' lines are sent."""
    carried, first_rno, first_seg = conn.recv()
    lines = _lines(done.run, done.lines_touching(carried)) if carried else []
    live_keys = done.correlator.live_keys(HAND_OVER_AFTER)
    live, closed = [], []
    for r in done.collected.records:
        key = (r.host, r.queue_id)
        if key in carried:
            continue
        (live if key in live_keys else closed).append(r)
    written, rows = write_new_segments(Path(store), closed, first_rno, first_seg, retention)
    conn.send(_Handed(lines, live, written, rows, len(closed)))


def _lines(run: list[Segment], numbers: list[int]) -> list[tuple[str, list[str]]]:
    """The lines of ``run`` with these numbers (from 1), read again, by file."""
    chosen, last, n = set(numbers), max(numbers, default=0), 0
    out: list[tuple[str, list[str]]] = []
    for path, block in _blocks(run):
        if n >= last:
            break
        picked = [text for i, text in enumerate(block, n + 1) if i in chosen]
        n += len(block)
        if picked:
            if out and out[-1][0] == path:
                out[-1][1].extend(picked)
            else:
                out.append((path, picked))
    return out


@dataclass(slots=True)
class _Failed:
    trace: str


class RangeFailed(Exception):
    """A worker process failed; its traceback is the message."""


# -- the parent ---------------------------------------------------------------------


def replay_spread(
    paths: list[str],
    store: Path,
    *,
    settings: Settings,
    tz: str | None,
    mta: str,
    jobs: int,
    budget: Budget | None = None,
    chunks: int | None = None,
) -> Summary:
    """Replay ``paths`` into the fresh TinyStore at ``store`` over ``jobs``
    worker processes, in ``chunks`` chunks (default: from the budget's
    ``chunk_bytes``). ValueError if the store already holds records."""
    started = time.monotonic()
    budget = budget or Budget()
    ordered = order_logs(paths)
    if chunks is None:
        total = sum(os.path.getsize(p) for p in ordered)
        chunks = max(jobs, math.ceil(total / chunk_bytes(budget, jobs)))
    runs = cut(ordered, chunks)
    jobs = max(1, min(jobs, len(runs)))
    target = TinyStore(store, memory=budget.split(jobs + 1).store)
    try:
        if target.span() is not None:
            raise ValueError(f"store {store} is not empty: a spread replay needs a fresh one")
        summary = _spread(runs, target, settings, tz, mta, jobs, budget.split(jobs + 1))
        target.flush()
    finally:
        target.close()
    summary.seconds = time.monotonic() - started
    return summary


def _spread(
    runs: list[list[Segment]], store: TinyStore, settings: Settings, tz: str | None, mta: str, jobs: int, share: Budget
) -> Summary:
    fork = multiprocessing.get_context("fork")
    conns, procs = [], []
    for w in range(jobs):
        parent, child = fork.Pipe()
        mine = runs[w::jobs]
        args = (child, mine, settings, tz, mta, str(store.path), store.retention)
        proc = fork.Process(target=_worker, args=args, daemon=True)
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    try:
        return _merge(runs, conns, store, settings, tz, mta, share)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def _answer(conn: Connection):  # type: ignore[no-untyped-def]
    got = conn.recv()
    if isinstance(got, _Failed):
        raise RangeFailed(got.trace)
    return got


def _tell(conn: Connection, message: object) -> None:
    """Send to a worker; if it has failed and gone, report its failure
    (the last thing it sent) rather than the broken pipe."""
    try:
        conn.send(message)
    except OSError:
        _answer(conn)
        raise


def _merge(
    runs: list[list[Segment]],
    conns: list[Connection],
    store: TinyStore,
    settings: Settings,
    tz: str | None,
    mta: str,
    share: Budget,
) -> Summary:
    summary = Summary()
    correlator = Correlator(store, settings, memory=share.correlator)
    zone = ZoneInfo(tz) if tz else None
    contexts: dict[str, Context] = {}
    closed = 0
    for i in range(len(runs)):
        conn = conns[i % len(conns)]
        got: _Correlated = _answer(conn)
        summary.lines += got.lines
        summary.kinds.update(got.kinds)
        for path, (first, last) in got.times.items():
            seen = summary.sources.setdefault(os.path.abspath(path), [first, last])
            seen[0], seen[1] = min(seen[0], first), max(seen[1], last)
        carried = correlator.carried(got.keys, got.ties)
        first_rno, first_seg = store.reserve(got.records, got.records // SEGMENT_RECORDS + got.hours + 1)
        _tell(conn, (carried, first_rno, first_seg))
        handed: _Handed = _answer(conn)
        store.file_segments(handed.written, handed.rows)
        closed += handed.closed
        correlator.take_over(handed.live, got.now, gone=got.keys - carried)
        for path, lines in handed.lines:
            ctx = contexts.get(path)
            if ctx is None:
                ref = reference_time(path)
                ctx = contexts[path] = Context(tz=zone, reference=ref) if zone else Context(reference=ref)
            for text in lines:
                correlator.apply(parse(text, ctx, mta))
        correlator.evict()
    for conn in conns:
        _answer(conn)  # None: the worker is done
    correlator.flush(durable=False)
    note_sources(store, summary.sources)
    summary.records = closed + correlator.written
    return summary
