"""Hostile input: whatever bytes arrive, parse() returns an event, quickly.

Years of logs from machines nobody remembers configuring hold binary junk,
torn lines, other programs and damaged copies of real lines. None of it may
raise, and none of it may hang the replay: a line that takes seconds means a
regular expression gone quadratic or worse, which an alarm turns into a
failure here (a hang detector, not a speed test).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parsers import MAX_LINE, Context, Event, Kind, parse

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CTX = Context(reference=datetime(2026, 12, 1, tzinfo=UTC))
HANG = 5  # seconds; no line takes a millisecond of that when all is well


def sample_lines() -> list[str]:
    out = []
    for mta in ("postfix", "exim", "sendmail"):
        for entry in json.loads((SAMPLES / mta / "expected.json").read_text())["logs"]:
            out += (SAMPLES / mta / entry["file"]).read_text(errors="replace").splitlines()
    return out


REAL = sample_lines()


@contextmanager
def no_hang() -> Iterator[None]:
    def alarm(*_: object) -> None:
        raise TimeoutError(f"parse() ran over {HANG}s on one line")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check(line: str, mta: str = "auto") -> Event:
    with no_hang():
        ev = parse(line, CTX, mta)
    assert isinstance(ev.kind, Kind)
    assert ev.ts is None or ev.ts.tzinfo is not None
    json.dumps(ev.to_json())  # every event can be printed by mtqpd parse --json
    # What a counting caller is handed instead of the Event (mtqpd parse --stats).
    made = parse(line, CTX, mta, lambda *read: read)
    assert made == (ev.ts, ev.host, ev.mta, ev.program, ev.pid, ev.queue_id, ev.kind, ev.fields, ev.line)
    return ev


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data.decode("utf-8", "replace"))


@settings(max_examples=1500, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    for mta in ("auto", "postfix", "exim", "sendmail"):
        check(text, mta)


@st.composite
def mutated_real_line(draw: st.DrawFn) -> str:
    """A real sample line, damaged: cut, spliced, with bytes changed or added."""
    line = draw(st.sampled_from(REAL))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("cut", "delete", "insert", "replace", "duplicate", "splice")))
        i = draw(st.integers(0, len(line)))
        j = draw(st.integers(i, min(len(line), i + 40)))
        if op == "cut":
            line = line[:i]
        elif op == "delete":
            line = line[:i] + line[j:]
        elif op == "insert":
            line = line[:i] + draw(st.text(max_size=20)) + line[i:]
        elif op == "replace":
            line = line[:i] + draw(st.sampled_from('<>[]()=,;: "\\\t\x00é')) + line[i + 1 :]
        elif op == "duplicate":
            line = line[:j] + line[i:j] * draw(st.integers(2, 50)) + line[j:]
        else:
            line = line[:i] + draw(st.sampled_from(REAL))[i:]
    return line


@settings(max_examples=4000, deadline=None)
@given(mutated_real_line())
def test_mutations_of_real_lines(line: str) -> None:
    check(line)


def test_pathological_repetition_does_not_hang() -> None:
    """The shapes that make backtracking regexes explode: long runs of the
    separators the grammars look ahead for."""
    heads = [line[: line.index(": ", 30) + 2] for line in REAL[:50] if ": " in line[30:]]
    fillers = [
        "<" * 5000,
        "a, " * 3000,
        "; from=<" * 2000,
        "=" * 8000,
        "[" * 5000,
        " (" * 3000,
        "\\" * 5000,
        "x=y, " * 2000,
        "<a@b>, " * 1500,
        '"' * 5000,
    ]
    for head in heads[:10]:
        for filler in fillers:
            check(head + filler)
            check(head + "to=" + filler)


def test_overlong_line_is_unknown_not_parsed() -> None:
    line = REAL[0] + " x" * MAX_LINE
    ev = check(line)
    assert ev.kind is Kind.UNKNOWN and ev.fields == {"reason": "overlong"}
