"""Envelopes: BSD and RFC 3339 syslog, Exim's mainlog, and their timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parsers import envelope
from parsers.envelope import Context, infer_year

REF = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Env(NamedTuple):
    ts: datetime | None
    host: str | None
    program: str | None
    pid: int | None
    payload: str


def split(line: str, c: Context) -> Env | None:
    """``envelope.split`` with its tuple's parts named, for reading the tests."""
    env = envelope.split(line, c)
    return None if env is None else Env(*env)


def ctx(**kw) -> Context:
    return Context(reference=kw.pop("reference", REF), **kw)


def test_bsd_syslog() -> None:
    env = split("Mar  1 12:00:00 mx1 postfix/smtpd[1234]: connect from a[192.0.2.1]", ctx())
    assert env is not None
    assert env.ts == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert (env.host, env.program, env.pid) == ("mx1", "postfix/smtpd", 1234)
    assert env.payload == "connect from a[192.0.2.1]"


def test_bsd_syslog_in_a_local_zone_comes_out_utc() -> None:
    env = split("Mar  1 12:00:00 mx1 sm-mta[9]: x", ctx(tz=ZoneInfo("Europe/Berlin")))
    assert env is not None and env.ts == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)


def test_program_names_with_slashes_dashes_and_no_pid() -> None:
    for prog in ("postfix/submission/smtpd", "postfix-out/qmgr", "postfix/sender-cleanup/cleanup", "sm-msp-queue"):
        env = split(f"Mar  1 12:00:00 mx1 {prog}[7]: hello", ctx())
        assert env is not None and env.program == prog
    env = split("Mar  1 12:00:00 mx1 postfix/postfix-script: starting", ctx())
    assert env is not None and env.pid is None and env.payload == "starting"


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-29T02:10:00.123456+00:00", datetime(2026, 11, 29, 2, 10, 0, 123456, tzinfo=UTC)),
        ("2026-11-29T03:10:00.5+01:00", datetime(2026, 11, 29, 2, 10, 0, 500000, tzinfo=UTC)),
        ("2026-11-29T02:10:00Z", datetime(2026, 11, 29, 2, 10, 0, tzinfo=UTC)),
        ("2026-11-28T21:10:00.123456789-05:00", datetime(2026, 11, 29, 2, 10, 0, 123456, tzinfo=UTC)),
    ],
)
def test_rfc3339_with_fractions_and_offsets(stamp: str, expected: datetime) -> None:
    env = split(f"{stamp} mx1 postfix/qmgr[5]: 4AB12: removed", ctx())
    assert env is not None and env.ts == expected and env.ts.tzinfo is UTC


def test_exim_mainlog_with_and_without_zone_and_pid() -> None:
    env = split("2026-03-01 12:00:00 1vZ5XY-000ABC-Q1 <= a@b H=x [1.2.3.4] P=esmtp S=1", ctx())
    assert env is not None
    assert env.ts == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert env.host is None and env.program is None and env.payload.startswith("1vZ5XY-000ABC-Q1 <=")
    env = split("2026-03-01 12:00:00.250 +0100 [4242] 1vZ5XY-000ABC-Q1 Completed", ctx())
    assert env is not None
    assert env.ts == datetime(2026, 3, 1, 11, 0, 0, 250000, tzinfo=UTC)
    assert env.pid == 4242 and env.payload == "1vZ5XY-000ABC-Q1 Completed"


def test_exim_through_syslog_uses_exims_own_date() -> None:
    line = "Mar  1 12:00:05 mx1 exim[77]: 2026-03-01 12:00:00 1vZ5XY-000ABC-Q1 Completed"
    env = split(line, ctx(reference=datetime(2027, 6, 1, tzinfo=UTC)))
    assert env is not None
    assert env.ts == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # Exim's year, not the inferred one
    assert env.program == "exim" and env.pid == 77 and env.payload == "1vZ5XY-000ABC-Q1 Completed"


def test_year_inference_across_new_year() -> None:
    jan = datetime(2027, 1, 1, 0, 5, tzinfo=UTC)
    assert infer_year(12, 31, jan) == 2026
    assert infer_year(1, 1, jan) == 2027
    c = ctx(reference=jan)
    dec = split("Dec 31 23:59:59 mx1 postfix/qmgr[1]: 1A2B3C: removed", c)
    new = split("Jan  1 00:00:01 mx1 postfix/qmgr[1]: 1A2B3C: removed", c)
    assert dec is not None and new is not None
    assert new.ts - dec.ts == timedelta(seconds=2)


def test_year_inference_tolerates_lines_slightly_in_the_future() -> None:
    ref = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    assert infer_year(3, 2, ref) == 2026  # a day ahead: clock skew, still this year
    assert infer_year(3, 20, ref) == 2025  # far ahead: last year's line


def test_leap_day_goes_back_to_a_leap_year() -> None:
    assert infer_year(2, 29, datetime(2027, 3, 5, tzinfo=UTC)) == 2024


def test_not_an_envelope() -> None:
    for line in ("", "garbage", "Foo 99 12:00:00 host prog: x", "2026-13-45T99:99:99Z host p: x"):
        assert split(line, ctx()) is None


def test_impossible_bsd_dates_are_not_envelopes() -> None:
    assert split("Feb 30 12:00:00 mx1 postfix/qmgr[1]: x", ctx()) is None


def test_fixed_offset_zone_setting() -> None:
    env = split("Mar  1 12:00:00 mx1 p[1]: x", ctx(tz=timezone(timedelta(hours=-5))))
    assert env is not None and env.ts == datetime(2026, 3, 1, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
def test_bsd_time_is_the_zone_time_through_daylight_saving_changes(zone: str) -> None:
    """Each second of the days the clocks change (Lord Howe's move by half
    an hour) reads as the zone's own conversion of it, however the stamps
    before it were cached."""
    tz = ZoneInfo(zone)
    c = Context(tz=tz, reference=datetime(2026, 12, 31, tzinfo=UTC))
    for month, day in ((3, 8), (3, 29), (4, 5), (10, 4), (10, 25), (11, 1)):
        for minute in range(0, 24 * 60, 7):
            for second in (0, 31, 59):
                hh, mm = divmod(minute, 60)
                stamp = f"{datetime(2026, month, day):%b} {day:2d} {hh:02d}:{mm:02d}:{second:02d}"
                want = datetime(2026, month, day, hh, mm, second, tzinfo=tz).astimezone(UTC)
                assert c.bsd(stamp) == want, stamp
    assert c.bsd("Mar  1 12:00:60") is None  # no leap seconds in syslog stamps


def _read_twice(lines: list[str]) -> None:
    """Every line reads the same once its stamp, host and head have been
    seen (``split``'s shortcut) as the regexes alone read it (a context
    that has seen nothing)."""
    seen = ctx()
    for line in lines:
        envelope.split(line, seen)
    for line in lines:
        assert envelope.split(line, seen) == envelope.split(line, ctx()), repr(line)


def test_the_shortcut_reads_every_sample_line_as_the_regexes_do() -> None:
    samples = Path(__file__).resolve().parent.parent / "samples"
    lines = [
        line
        for mta in ("postfix", "exim", "sendmail")
        for path in sorted((samples / mta).iterdir())
        if path.name not in ("expected.json", "README.md")
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
    ]
    assert len(lines) > 500
    _read_twice(lines)


_PIECES = st.sampled_from(["Mar  1 12:00:00", "Mar 10 12:00:00", "Feb 30 12:00:00", "Mar  1 12:00:0"])
_SEPARATORS = st.sampled_from([" ", "  ", "\t", ":", ""])
_HOSTS = st.sampled_from(["mx1", "mx1.example.org", "", "m\tx", "mx1:", "m\u00e9", "[::1]"])
_HEADS = st.sampled_from(
    ["postfix/smtpd[12]:", "postfix/qmgr:", "exim[5]:", "exim4:", "sm-mta[7]:", "p[x]:", "p[1:", "p]1[:", "p:q[1]:"]
)


@given(st.lists(st.tuples(_PIECES, _SEPARATORS, _HOSTS, _SEPARATORS, _HEADS, _SEPARATORS, st.text()), max_size=12))
def test_the_shortcut_reads_lookalike_lines_as_the_regexes_do(parts: list[tuple[str, ...]]) -> None:
    """Stamps, hosts and heads that the regexes take or refuse, run
    together with every kind of separator: whatever the shortcut has
    learned from some of them, it reads the others as the regexes do."""
    _read_twice(["".join(p) for p in parts])
