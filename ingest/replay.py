"""Batch replay: old logs, rotated and compressed, into the store.

``order_logs`` puts a rotated set in the order it was written, whatever
order the shell gave it (``mail.log.3.gz mail.log.2.gz mail.log.1
mail.log``, or dated ``mail.log-20260301.gz``). ``replay`` reads each file
through the parsers and the correlator and writes the records in batches.
Running it twice gives the same store: applying an event is idempotent.
It streams: every ``BATCH`` lines, the records no later line can change are
written and dropped (``Correlator.evict``), so that memory follows the
traffic in flight, not the length of the logs.
"""

from __future__ import annotations

import operator
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from parsers import Context, Kind, parse

from .bulk import gc_paused
from .correlator import DEFAULT_MEMORY, Correlator, Settings
from .records import iso
from .sources import line_blocks, reference_time
from .store import Store

#: Lines between two rounds of writing what is done (``Correlator.evict``).
BATCH = 20_000

_KIND = operator.attrgetter("kind")
_ROTATED = re.compile(r"^(?P<base>.+?)(?:\.(?P<num>\d+)|-(?P<date>\d{8}(?:\d{2})?))?(?P<ext>\.(?:gz|bz2|xz))?$")


def rotation_key(path: str) -> tuple[str, int, int, str]:
    """Sort key of a log file within its rotated set: by base name; then
    numbered rotations, highest (oldest) first; then dated ones, oldest
    first; the live file last."""
    name = Path(path).name
    m = _ROTATED.match(name)
    assert m is not None  # the pattern matches any name
    parent = str(Path(path).parent)
    if m["num"] is not None:
        return (f"{parent}/{m['base']}", 0, -int(m["num"]), "")
    if m["date"] is not None:
        return (f"{parent}/{m['base']}", 1, 0, m["date"])
    return (f"{parent}/{m['base']}", 2, 0, "")


def order_logs(paths: Iterable[str]) -> list[str]:
    """The files in the order they were written (``-``, standard input, last)."""
    files = [p for p in paths if p != "-"]
    rest = [p for p in paths if p == "-"]
    return sorted(files, key=rotation_key) + rest


@dataclass(slots=True)
class Summary:
    lines: int = 0
    kinds: Counter = field(default_factory=Counter)
    records: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    #: Each file read: the times of its first and last lines (RFC 3339).
    sources: dict[str, list[str]] = field(default_factory=dict)

    def write(self, out: TextIO) -> None:
        rate = self.lines / self.seconds if self.seconds else 0.0
        out.write(f"lines: {self.lines}\nunknown: {self.kinds.get(Kind.UNKNOWN, 0)}\n")
        out.write(f"records: {self.records}\nseconds: {self.seconds:.2f} ({rate:,.0f} lines/s)\n")
        out.write("events:\n")
        for kind, n in sorted(self.kinds.items(), key=lambda kv: (-kv[1], str(kv[0]))):
            out.write(f"  {kind!s:<12} {n}\n")
        for err in self.errors:
            out.write(f"error: {err}\n")


class Progress:
    """A one-line progress report on a terminal: files, lines, lines/s."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.start = self.last = time.monotonic()

    def update(self, path: str, n: int) -> None:
        now = time.monotonic()
        if self.out is None or now - self.last < 0.5:
            return
        self.last = now
        rate = n / (now - self.start) if now > self.start else 0.0
        self.out.write(f"\r{Path(path).name}: {n:,} lines, {rate:,.0f} lines/s ")
        self.out.flush()

    def done(self) -> None:
        if self.out is not None:
            self.out.write("\r\x1b[K")
            self.out.flush()


def replay(
    paths: list[str],
    store: Store,
    *,
    settings: Settings | None = None,
    tz: str | None = None,
    mta: str = "auto",
    progress: TextIO | None = None,
    memory: int = DEFAULT_MEMORY,
) -> Summary:
    """Read ``paths`` (in rotation order) into ``store``; flush at the end.
    ``memory`` is what the correlator's records may take."""
    started = time.monotonic()
    correlator = Correlator(store, settings, memory=memory)
    summary = Summary()
    bar = Progress(progress)
    zone = ZoneInfo(tz) if tz else None
    with gc_paused():
        _replay_files(paths, correlator, summary, bar, zone, mta)
    correlator.flush(durable=False)
    note_sources(store, summary.sources)
    store.flush()
    summary.records = correlator.written
    bar.done()
    summary.seconds = time.monotonic() - started
    return summary


def _replay_files(
    paths: list[str], correlator: Correlator, summary: Summary, bar: Progress, zone: ZoneInfo | None, mta: str
) -> None:
    for path in order_logs(paths):
        try:
            ref = reference_time(path)
            ctx = Context(tz=zone, reference=ref) if zone else Context(reference=ref)
            since_evict = 0
            first = last = None
            for block in line_blocks(path):
                events = [parse(text, ctx, mta) for text in block]
                summary.kinds.update(map(_KIND, events))
                for ev in events:
                    correlator.apply(ev)
                first, last = first or _first_time(events), _last_time(events) or last
                summary.lines += len(events)
                since_evict += len(events)
                if since_evict >= BATCH:
                    since_evict = 0
                    correlator.evict()
                    bar.update(path, summary.lines)
            if first is not None and last is not None:
                summary.sources[os.path.abspath(path)] = [iso(first), iso(last)]
        except OSError as exc:
            summary.errors.append(f"{path}: {exc.strerror or exc}")
        except EOFError as exc:  # a truncated compressed file: what was read counts
            summary.errors.append(f"{path}: truncated ({exc})")


def _first_time(events: list) -> datetime | None:  # type: ignore[type-arg]
    return next((ev.ts for ev in events if ev.ts is not None), None)


def _last_time(events: list) -> datetime | None:  # type: ignore[type-arg]
    return next((ev.ts for ev in reversed(events) if ev.ts is not None), None)


def note_sources(store: Store, sources: dict[str, list[str]]) -> None:
    """Keep, beside the records, which log files gave them and the times
    they cover: what to replay again if records are damaged (the store
    names these files when it sets damaged records aside)."""
    if not sources or getattr(store, "readonly", False):
        return
    known = dict(store.get_meta("sources") or {})
    for path, (first, last) in sources.items():
        if path in known:
            first, last = min(first, known[path][0]), max(last, known[path][1])
        known[path] = [first, last]
    store.set_meta("sources", known)


def progress_stream() -> TextIO | None:
    """Standard error when it is a terminal; no progress report otherwise."""
    return sys.stderr if sys.stderr.isatty() else None
