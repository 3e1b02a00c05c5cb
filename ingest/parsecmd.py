"""``mtqpd parse``: what does mtqpd make of my log, line by line?

Operators use it to ask "what in my log did you not understand?": events as
text or JSON, or counts per MTA and kind with the first unknown lines.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO
from zoneinfo import ZoneInfo

from parsers import Context, Event, Kind, parse

from .sources import lines, reference_time

#: How many unknown lines --stats shows.
SHOW_UNKNOWN = 10


@dataclass(slots=True)
class Stats:
    lines: int = 0
    by_kind: Counter = field(default_factory=Counter)
    unknown: list[tuple[str, int, str]] = field(default_factory=list)

    def add(self, ev: Event, path: str, lineno: int) -> None:
        self.lines += 1
        self.by_kind[(ev.mta or "-", str(ev.kind))] += 1
        if ev.kind is Kind.UNKNOWN and len(self.unknown) < SHOW_UNKNOWN:
            self.unknown.append((path, lineno, ev.line))

    def write(self, out: TextIO) -> None:
        unknown = sum(n for (_, kind), n in self.by_kind.items() if kind == Kind.UNKNOWN)
        out.write(f"lines: {self.lines}\nunknown: {unknown}\n")
        for mta in sorted({m for m, _ in self.by_kind}):
            kinds = {k: n for (m, k), n in self.by_kind.items() if m == mta}
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


def run(paths: list[str], *, mta: str, as_json: bool, stats: bool, tz: str | None, out: TextIO) -> int:
    """Parse every file; print events and/or statistics. 1 if a file could not be read."""
    zone = ZoneInfo(tz) if tz else None
    totals = Stats()
    status = 0
    show_events = as_json or not stats
    for path in paths:
        try:
            ref = reference_time(path)
            ctx = Context(tz=zone, reference=ref) if zone else Context(reference=ref)
            for lineno, text in enumerate(lines(path), 1):
                ev = parse(text, ctx, mta)
                totals.add(ev, path, lineno)
                if show_events:
                    out.write((json.dumps(ev.to_json()) if as_json else render(ev)) + "\n")
        except BrokenPipeError:
            raise
        except OSError as exc:
            print(f"mtqpd parse: {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
        except EOFError as exc:  # a truncated .gz/.bz2/.xz: what was read counts
            print(f"mtqpd parse: {path}: truncated ({exc})", file=sys.stderr)
            status = 1
    if stats:
        totals.write(sys.stderr if as_json else out)
    return status
