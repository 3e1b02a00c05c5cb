"""Replay spread over the machine's cores: big plain logs into a fresh store.

Correlation is sequential in principle: a line may belong to a message that
arrived anywhere earlier in the log. In practice nearly all of a message's
lines lie within seconds of each other. So the log is cut into byte ranges,
one per process, and each range is correlated from an empty state as if it
were the whole log. That is exact for every message whose lines all lie in
one range. The others, messages that *span* a cut (in flight at the cut, or
deferred across it), are found afterwards: a (host, queue id) that more
than one range touched, with every (host, queue id) a line ties to one of
them (a bounce and its parent), transitively. Their ranges drop them, and
the parent process correlates them again from their lines alone, in log
order. The store comes out as the sequential replay makes it; a test holds
the two equal.

Records are written where they lie: each process writes the partitions
(arrival hours) that only it has records of, adding the re-correlated
records of those hours that the parent hands it; the parent writes the
hours that several ranges share (around each cut).

Three rounds of messages between the parent and each range's process:

1. the range is correlated: its line count, kinds, the keys it touched and
   the keys its lines tie together come back;
2. the parent names the spanning keys: their line numbers come back, and
   the hours of the records that remain;
3. the parent names the hours each range writes and the hours it hands
   back, and correlates the spanning messages again while the ranges make
   the documents of their hours; then it hands each range the records to
   add to its hours, the records of the hours handed back come back, and
   the parent writes those hours while the ranges write theirs.

Only for a fresh store (a range cannot see records already stored) and
plain files (a compressed file cannot be cut); otherwise replay is
sequential. Processes are forked: the parsers' grammars and the settings
are inherited, not rebuilt or sent.
"""

from __future__ import annotations

import gc
import multiprocessing
import operator
import os
import time
import traceback
from array import array
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from parsers import Context, parse

from .correlator import Correlator, Settings
from .records import TrackingRecord
from .replay import Summary, order_logs
from .sources import OPENERS, Segment, blocks_between, cut, reference_time
from .tinystore import TinyStore, partition_of, write_partition

#: Below this many bytes of log, forking and the rounds cost more than they save.
SPREAD_FROM = 16 * 1024 * 1024

Key = tuple[str, str]


def spreadable(paths: list[str], jobs: int) -> bool:
    """Whether ``paths`` are worth and fit for a spread replay on ``jobs`` cores."""
    if jobs < 2 or any(p == "-" or p.endswith(tuple(OPENERS)) for p in paths):
        return False
    try:
        return sum(os.path.getsize(p) for p in paths) >= SPREAD_FROM
    except OSError:
        return False  # the sequential replay reports the file that is missing


def _blocks(run: list[Segment]) -> Iterator[tuple[str, list[str]]]:
    """(path, lines) for every block of a run, in order."""
    for path, start, end in run:
        for block in blocks_between(path, start, end):
            yield path, block


# -- one range, in its own process ------------------------------------------------


@dataclass(slots=True)
class _Correlated:
    """Round 1's answer."""

    lines: int
    kinds: Counter
    keys: set[Key]
    #: Keys that one line touched together (a bounce and its parent).
    ties: list[tuple[Key, ...]]


class _Collected:
    """The store a range's correlator flushes into, once, at the end.

    Nothing is put before that, so there is nothing to find: the correlator
    asks only ``by_queue_id``, for keys it has not seen in this range, and
    those belong to no record of it.
    """

    def __init__(self) -> None:
        self.records: list[TrackingRecord] = []

    def put(self, records: Iterable[TrackingRecord]) -> None:
        self.records.extend(records)

    def by_queue_id(self, queue_id: str) -> list[TrackingRecord]:
        return []

    def flush(self) -> None:
        pass


@dataclass(slots=True)
class _Correlation:
    """What correlating some lines from nothing left.

    Which lines touched which keys is kept as two flat sequences, not as
    a list of line numbers per key: ``hits``, every key touched, in order,
    and ``marks``, for each line, how many hits there were up to and
    including it. Appending to those is all a line costs; the per-key
    views (``keys``, ``ties``, ``lines_touching``) are made once, at the
    end, for the few keys that need them. (Filling a dict of lists per
    line cost as much as correlating the line.)
    """

    correlator: Correlator
    collected: _Collected
    kinds: Counter = field(default_factory=Counter)
    hits: list[Key] = field(default_factory=list)
    marks: array[int] = field(default_factory=lambda: array("q"))  # 8 bytes a line, not 36

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

    def records(self) -> list[TrackingRecord]:
        """Every record, settled."""
        self.correlator.flush(durable=False)
        return self.collected.records


def _correlate(blocks: Iterable[tuple[str, list[str]]], settings: Settings, tz: str | None, mta: str) -> _Correlation:
    """Correlate the lines of ``blocks`` from nothing, noting which lines
    touched which keys."""
    collected = _Collected()
    done = _Correlation(Correlator(collected, settings), collected)  # type: ignore[arg-type]
    hits = done.hits
    done.correlator.on_touch = hits.append
    apply, marks = done.correlator.apply, done.marks
    zone = ZoneInfo(tz) if tz else None
    contexts: dict[str, Context] = {}
    for path, block in blocks:
        ctx = contexts.get(path)
        if ctx is None:
            ref = reference_time(path)
            ctx = contexts[path] = Context(tz=zone, reference=ref) if zone else Context(reference=ref)
        events = [parse(text, ctx, mta) for text in block]
        done.kinds.update(map(_KIND, events))
        marks.extend([apply(ev) or len(hits) for ev in events])  # apply returns None
    return done


_KIND = operator.attrgetter("kind")


def _range_process(
    conn: Connection, run: list[Segment], settings: Settings, tz: str | None, mta: str, store: str
) -> None:
    """One range, through the three rounds (see the module docstring).

    The process leaves with ``os._exit`` once all is written and told: it
    has nothing to clean up, and freeing a million objects one by one would
    cost a third of a second. Its collector stays off from start to end: a
    collection after ``gc_paused`` would walk every object allocated since
    (0.2 s), to find no garbage.
    """
    gc.disable()
    try:
        done = _correlate(_blocks(run), settings, tz, mta)
        conn.send(_Correlated(done.lines, done.kinds, done.keys(), done.ties()))
        records = done.records()  # settled while the parent finds the spanning keys

        spanning: set[Key] = conn.recv()
        numbers = done.lines_touching(spanning)
        by_hour: defaultdict[str, list[TrackingRecord]] = defaultdict(list)
        for r in records:
            if (r.host, r.queue_id) not in spanning:
                by_hour[partition_of(r.arrival)].append(r)
        conn.send((numbers, {hour: len(rs) for hour, rs in by_hour.items()}))

        own, shared = conn.recv()
        # Writing's costly half, done while the parent correlates the spanning
        # messages, and no longer: documents made ahead are held until written.
        made: dict[str, dict[str, Any]] = {}
        for hour in own:
            if conn.poll():
                break
            made.update((r.rid, r.to_dict()) for r in by_hour[hour])
        extra: dict[str, list[TrackingRecord]] = conn.recv()
        conn.send({hour: by_hour[hour] for hour in shared})  # first: the parent writes them meanwhile
        for hour in own:
            write_partition(Path(store), hour, by_hour[hour] + extra.get(hour, []), made)
        conn.send(None)
    except BaseException:  # the parent reports it; a child must not print a second traceback
        conn.send(_Failed(traceback.format_exc()))
        conn.close()
        os._exit(1)
    conn.close()
    os._exit(0)


@dataclass(slots=True)
class _Failed:
    trace: str


class RangeFailed(Exception):
    """A range's process failed; its traceback is the message."""


# -- the parent ---------------------------------------------------------------------


def replay_spread(paths: list[str], store: Path, *, settings: Settings, tz: str | None, mta: str, jobs: int) -> Summary:
    """Replay ``paths`` into the fresh TinyStore at ``store`` over ``jobs``
    processes. The store is opened (locked) for the duration; ValueError if
    it already holds records."""
    started = time.monotonic()
    holder = TinyStore(store)  # the writer lock, held while the ranges write
    try:
        if len(holder):
            raise ValueError(f"store {store} is not empty: a spread replay needs a fresh one")
        summary = _spread(order_logs(paths), store, settings, tz, mta, jobs)
    finally:
        holder.close()  # nothing was put through it: writes nothing
    summary.seconds = time.monotonic() - started
    return summary


def _spread(paths: list[str], store: Path, settings: Settings, tz: str | None, mta: str, jobs: int) -> Summary:
    runs = cut(paths, jobs)
    fork = multiprocessing.get_context("fork")
    conns, procs = [], []
    for run in runs:
        parent, child = fork.Pipe()
        proc = fork.Process(target=_range_process, args=(child, run, settings, tz, mta, str(store)), daemon=True)
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    try:
        return _rounds(runs, conns, store, settings, tz, mta)
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
    """Send to a range's process; if it has failed and gone, report its
    failure (the last thing it sent) rather than the broken pipe."""
    try:
        conn.send(message)
    except OSError:
        _answer(conn)
        raise


def _rounds(
    runs: list[list[Segment]], conns: list[Connection], store: Path, settings: Settings, tz: str | None, mta: str
) -> Summary:
    summary = Summary()
    # Round 1: every range correlated on its own.
    correlated: list[_Correlated] = [_answer(c) for c in conns]
    for part in correlated:
        summary.lines += part.lines
        summary.kinds.update(part.kinds)
    spanning = _spanning([part.keys for part in correlated], [tie for part in correlated for tie in part.ties])

    # Round 2: the spanning keys' lines, and the hours of what remains.
    for c, part in zip(conns, correlated, strict=True):
        _tell(c, spanning & part.keys)
    handed = [_answer(c) for c in conns]

    # Round 3: who writes which hour; the spanning messages correlated
    # again meanwhile, and their records handed to the hours' writers.
    holders: defaultdict[str, list[int]] = defaultdict(list)
    for i, (_, hours) in enumerate(handed):
        for hour in hours:
            holders[hour].append(i)
    owners = [{hour for hour, who in holders.items() if who == [i]} for i in range(len(conns))]
    for i, c in enumerate(conns):
        _tell(c, (owners[i], {hour for hour, who in holders.items() if len(who) > 1 and i in who}))
    again = _recorrelate(runs, [numbers for numbers, _ in handed], settings, tz, mta)
    summary.records = len(again) + sum(sum(hours.values()) for _, hours in handed)
    extra: defaultdict[str, list[TrackingRecord]] = defaultdict(list)
    for r in again:
        extra[partition_of(r.arrival)].append(r)
    for own, c in zip(owners, conns, strict=True):
        _tell(c, {hour: extra.pop(hour) for hour in own if hour in extra})
    for c in conns:
        for hour, records in _answer(c).items():
            extra[hour] += records
    for hour, records in extra.items():  # shared hours, and hours only re-correlated records arrived in
        write_partition(store, hour, records)
    for c in conns:
        _answer(c)  # its own hours are written
    return summary


def _spanning(keys: list[set[Key]], ties: list[tuple[Key, ...]]) -> set[Key]:
    """Keys touched by more than one range, and every key tied to one of
    them by a line, transitively."""
    seen: set[Key] = set()
    found: set[Key] = set()
    for part in keys:
        found |= seen & part
        seen |= part
    neighbours: defaultdict[Key, set[Key]] = defaultdict(set)
    for tie in ties:
        for key in tie:
            neighbours[key].update(tie)
    todo = [key for key in found if key in neighbours]
    while todo:
        for other in neighbours[todo.pop()]:
            if other not in found:
                found.add(other)
                todo.append(other)
    return found


def _recorrelate(
    runs: list[list[Segment]], numbers: list[list[int]], settings: Settings, tz: str | None, mta: str
) -> list[TrackingRecord]:
    """Correlate the spanning keys' lines, read again, in log order."""

    def picked() -> Iterator[tuple[str, list[str]]]:
        for run, wanted in zip(runs, numbers, strict=True):
            chosen, last, n = set(wanted), max(wanted, default=0), 0
            for path, block in _blocks(run):
                if n >= last:
                    break
                yield path, [text for i, text in enumerate(block, n + 1) if i in chosen]
                n += len(block)

    return _correlate(picked(), settings, tz, mta).records()
