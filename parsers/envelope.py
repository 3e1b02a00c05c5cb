"""The envelope of a log line: when, which host, which program, which pid.

Three envelopes occur in the wild:

- BSD syslog, ``Mar  1 12:00:00 host prog[pid]: payload``: no year and no
  zone, so both come from the ``Context``: the zone is a setting, the year is
  inferred from a reference time (see ``infer_year``);
- RFC 3339 syslog, ``2026-03-01T12:00:00.123456+01:00 host prog[pid]: ...``,
  rsyslog's default on current distributions;
- Exim's own mainlog, ``2026-03-01 12:00:00[.mmm] [+0100] [[pid]] payload``,
  which has no host and no program (both are the log's, not the line's).

An Exim line that went through syslog carries both dates; the inner one is
Exim's own and wins, since it has a year.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

MONTHS = {
    m: i for i, m in enumerate(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1)
}


@dataclass(frozen=True, slots=True)
class Context:
    """What a line cannot say about itself.

    ``tz`` is the zone of timestamps written without one (BSD syslog, Exim
    without ``+timezone``). ``reference`` is a time no line of the log is
    much later than: the log file's modification time, or now when tailing.
    """

    tz: tzinfo = UTC
    reference: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: How far past ``reference`` a BSD timestamp may lie and still be taken
    #: as this year: clocks drift and lines arrive out of order.
    grace: timedelta = timedelta(days=2)
    #: A memo of BSD stamp -> UTC datetime; the stamp repeats for every line
    #: of a second, and the year inference is not free.
    _memo: dict[str, datetime | None] = field(default_factory=dict, compare=False, repr=False)

    def bsd(self, stamp: str) -> datetime | None:
        """``Mar  1 12:00:00`` -> aware UTC, or None when it is not a date."""
        memo = self._memo
        hit = memo.get(stamp, memo)
        if hit is not memo:
            return hit  # type: ignore[return-value]
        if len(memo) > 100_000:
            memo.clear()
        try:
            month = MONTHS[stamp[:3]]
            day = int(stamp[4:6])
            hh, mm, ss = int(stamp[7:9]), int(stamp[10:12]), int(stamp[13:15])
            year = infer_year(month, day, self.reference.astimezone(self.tz), self.grace)
            value = datetime(year, month, day, hh, mm, ss, tzinfo=self.tz).astimezone(UTC)
        except (KeyError, ValueError):
            value = None
        memo[stamp] = value
        return value

    def local(self, naive: datetime) -> datetime:
        """A naive local time (Exim without ``+timezone``) -> aware UTC."""
        return naive.replace(tzinfo=self.tz).astimezone(UTC)


def infer_year(month: int, day: int, reference: datetime, grace: timedelta = timedelta(days=2)) -> int:
    """The year of a month/day seen in a log written up to ``reference``.

    The latest year that does not put the date more than ``grace`` after the
    reference. A December line read in January is last year's; a line a few
    hours "in the future" (clock skew, out-of-order lines) stays this year.
    29 February goes back to the last leap year.
    """
    year = reference.year + 1
    limit = reference.replace(tzinfo=None) + grace
    while True:
        try:
            if datetime(year, month, day) <= limit:
                return year
        except ValueError:  # 29 February outside a leap year
            pass
        year -= 1
        if year < reference.year - 8:
            raise ValueError(f"no year fits {month}/{day}")


@dataclass(slots=True)
class Envelope:
    ts: datetime | None
    host: str | None
    program: str | None
    pid: int | None
    payload: str


# Program names may hold slashes (postfix/submission/smtpd) and dashes
# (postfix-out/qmgr, sm-msp-queue); the pid is optional.
_TAIL = r" (?P<host>\S+) (?P<prog>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<payload>.*)"
BSD = re.compile(r"(?P<stamp>[A-Z][a-z]{2} [ 0-3]\d \d\d:\d\d:\d\d)" + _TAIL, re.S)
RFC3339 = re.compile(r"(?P<stamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d))" + _TAIL, re.S)
EXIM = re.compile(
    r"(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?)(?: (?P<tz>[+-]\d{4}))?(?: \[(?P<pid>\d+)\])? "
    r"(?P<payload>.*)",
    re.S,
)


def rfc3339(stamp: str) -> datetime | None:
    if stamp.endswith("Z"):
        stamp = stamp[:-1] + "+00:00"
    if "." in stamp:
        # fromisoformat takes 3 or 6 fraction digits; rsyslog may write 1 to 9.
        head, rest = stamp.split(".", 1)
        digits = len(rest) - 6 if rest[-6] in "+-" else len(rest) - 5
        frac, zone = rest[:digits], rest[digits:]
        stamp = f"{head}.{(frac + '000000')[:6]}{zone}"
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC)
    except ValueError:
        return None


def exim_time(date: str, tz: str | None, ctx: Context) -> datetime | None:
    try:
        naive = datetime.fromisoformat(date)
    except ValueError:
        return None
    if tz is None:
        return ctx.local(naive)
    sign = -1 if tz[0] == "-" else 1
    offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5])) * sign
    return (naive - offset).replace(tzinfo=UTC)


def split(line: str, ctx: Context) -> Envelope | None:
    """Read the envelope of ``line``; None when it has none we know.

    For an Exim line inside syslog, the payload and time are Exim's own.
    """
    m = BSD.match(line)
    if m is not None:
        ts = ctx.bsd(m["stamp"])
    else:
        m = RFC3339.match(line)
        if m is None:
            m = EXIM.match(line)
            if m is None:
                return None
            pid = m["pid"]
            return Envelope(exim_time(m["date"], m["tz"], ctx), None, None, int(pid) if pid else None, m["payload"])
        ts = rfc3339(m["stamp"])
    if ts is None:
        return None
    pid = m["pid"]
    env = Envelope(ts, m["host"], m["prog"], int(pid) if pid else None, m["payload"])
    if env.program.startswith("exim"):
        inner = EXIM.match(env.payload)
        if inner is not None:
            env.ts = exim_time(inner["date"], inner["tz"], ctx) or env.ts
            env.payload = inner["payload"]
    return env
