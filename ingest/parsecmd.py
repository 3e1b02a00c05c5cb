"""``mtqpd parse``: what does mtqpd make of my log, line by line?

Operators use it to ask "what in my log did you not understand?": events as
text or JSON, or counts per MTA and kind with the first unknown lines.

Counting a large plain file is spread over the machine's cores: parsing is a
pure function of the line, so byte ranges of the file can be parsed in
separate processes and their counts added. (Process parallelism for CPU
work is the standard library's; trio is for I/O concurrency.)
"""

from __future__ import annotations

import json
import operator
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from parsers import Context, Event, Kind, parse

from .bulk import gc_paused
from .sources import OPENERS, blocks_between, byte_ranges, line_blocks, reference_time

#: How many unknown lines --stats shows.
SHOW_UNKNOWN = 10
#: A plain file at least this large is counted in parallel.
PARALLEL_FROM = 16 * 1024 * 1024


_MTA_AND_KIND = operator.attrgetter("mta", "kind")


def _mta_and_kind(
    ts: Any, host: Any, mta: str | None, program: Any, pid: Any, queue_id: Any, kind: Kind, fields: Any, line: Any
) -> tuple[str | None, Kind]:
    """What ``--stats`` keeps of a line: ``parse``'s ``make`` when counting."""
    return (mta, kind)


@dataclass(slots=True)
class Stats:
    lines: int = 0
    by_kind: Counter = field(default_factory=Counter)
    #: (path, line number, line) of the first unknown lines.
    unknown: list[tuple[str, int, str]] = field(default_factory=list)

    def add(self, keys: list[tuple[str | None, Kind]], block: list[str], path: str) -> None:
        """Count a block of lines, the next ones of ``path``: ``keys`` has
        the (MTA, kind) of each line of ``block``."""
        first = self.lines + 1
        self.lines += len(keys)
        before = self.unknown_lines
        self.by_kind.update(keys)  # counted in C, not one line at a time
        if self.unknown_lines > before and len(self.unknown) < SHOW_UNKNOWN:
            for lineno, ((_, kind), text) in enumerate(zip(keys, block, strict=True), first):
                if kind is Kind.UNKNOWN and len(self.unknown) < SHOW_UNKNOWN:
                    self.unknown.append((path, lineno, text.rstrip("\r\n")))

    @property
    def unknown_lines(self) -> int:
        return sum(n for (_, kind), n in self.by_kind.items() if kind is Kind.UNKNOWN)

    def merge(self, later: Stats, *, same_file: bool = False) -> None:
        """Add the counts of what was read after this. With ``same_file``,
        ``later`` is the next byte range of the same file, whose line
        numbers were counted from the start of its range."""
        offset = self.lines if same_file else 0
        self.lines += later.lines
        self.by_kind.update(later.by_kind)
        for path, lineno, text in later.unknown[: SHOW_UNKNOWN - len(self.unknown)]:
            self.unknown.append((path, lineno + offset, text))

    def write(self, out: TextIO) -> None:
        out.write(f"lines: {self.lines}\nunknown: {self.unknown_lines}\n")
        for mta in sorted({m or "-" for m, _ in self.by_kind}):
            kinds = {str(k): n for (m, k), n in self.by_kind.items() if (m or "-") == mta}
            out.write(f"{mta}: {sum(kinds.values())}\n")
            for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])):
                out.write(f"  {kind:<12} {n}\n")
        if self.unknown:
            out.write(f"first {len(self.unknown)} unknown lines:\n")
            for path, lineno, text in self.unknown:
                out.write(f"  {path}:{lineno}: {text[:300]}\n")


def render(ev: Event) -> str:
    """One readable line: when, where, which id, what, and the fields."""
    ts = ev.ts.strftime("%Y-%m-%dT%H:%M:%SZ") if ev.ts else "-"
    head = f"{ts} {ev.host or '-'} {ev.program or ev.mta or '-'} {ev.queue_id or '-'} {ev.kind}"
    if ev.kind is Kind.UNKNOWN:
        return f"{head} {ev.line}"
    body = " ".join(f"{k}={v}" for k, v in ev.fields.items() if v is not None)
    return f"{head} {body}".rstrip()


def _context(tz: str | None, ref: datetime) -> Context:
    return Context(tz=ZoneInfo(tz), reference=ref) if tz else Context(reference=ref)


def _count_range(path: str, start: int, end: int, ref: datetime, tz: str | None, mta: str) -> Stats:
    """A worker's share: the stats of the lines that start in [start, end)."""
    ctx = _context(tz, ref)
    stats = Stats()
    with gc_paused():
        for block in blocks_between(path, start, end):
            stats.add([parse(text, ctx, mta, _mta_and_kind) for text in block], block, path)
    return stats


def _count_parallel(path: str, ref: datetime, tz: str | None, mta: str, jobs: int) -> Stats:
    ranges = byte_ranges(path, jobs)
    with ProcessPoolExecutor(max_workers=len(ranges)) as pool:
        parts = [pool.submit(_count_range, path, a, b, ref, tz, mta) for a, b in ranges]
        total = Stats()
        for part in parts:
            total.merge(part.result(), same_file=True)
    return total


def _splittable(path: str) -> bool:
    return path != "-" and not path.endswith(tuple(OPENERS)) and os.path.getsize(path) >= PARALLEL_FROM


def run(
    paths: list[str], *, mta: str, as_json: bool, stats: bool, tz: str | None, out: TextIO, jobs: int | None = None
) -> int:
    """Parse every file; print events and/or statistics. 1 if a file could not be read."""
    jobs = jobs or os.cpu_count() or 1
    totals = Stats()
    status = 0
    show_events = as_json or not stats
    for path in paths:
        part = Stats()  # what was read of this file counts, even if it ends badly
        try:
            ref = reference_time(path)
            if not show_events and jobs > 1 and _splittable(path):
                part = _count_parallel(path, ref, tz, mta, jobs)
                continue
            ctx = _context(tz, ref)
            with gc_paused():
                for block in line_blocks(path):
                    if not show_events:
                        part.add([parse(text, ctx, mta, _mta_and_kind) for text in block], block, path)
                        continue
                    events = [parse(text, ctx, mta) for text in block]
                    part.add(list(map(_MTA_AND_KIND, events)), block, path)
                    out.writelines(f"{json.dumps(ev.to_json()) if as_json else render(ev)}\n" for ev in events)
        except BrokenPipeError:
            raise
        except OSError as exc:
            print(f"mtqpd parse: {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
        except EOFError as exc:  # a truncated .gz/.bz2/.xz
            print(f"mtqpd parse: {path}: truncated ({exc})", file=sys.stderr)
            status = 1
        finally:
            totals.merge(part)
    if stats:
        totals.write(sys.stderr if as_json else out)
    return status
