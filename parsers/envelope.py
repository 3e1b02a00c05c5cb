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
    #: of a second.
    _memo: dict[str, datetime | None] = field(default_factory=dict, compare=False, repr=False)
    #: ``Mar  1 12:00`` -> that minute in UTC: a new second of the log then
    #: costs an addition, not a year inference and a zone conversion. (A
    #: zone's offset changes on a minute, never within one.)
    _minutes: dict[str, datetime | None] = field(default_factory=dict, compare=False, repr=False)
    #: BSD stamps that ``BSD`` matched on a line, each with the space after
    #: it, and their time: a line whose first 16 characters are one of them
    #: has a valid stamp, and ``split`` may read the rest without the regex.
    _matched: dict[str, datetime] = field(default_factory=dict, compare=False, repr=False)

    def bsd(self, stamp: str) -> datetime | None:
        """``Mar  1 12:00:00`` -> aware UTC, or None when it is not a date."""
        memo = self._memo
        hit = memo.get(stamp, memo)
        if hit is not memo:
            return hit  # type: ignore[return-value]
        if len(memo) > 100_000:
            memo.clear()
            self._minutes.clear()
        minute = self._minutes.get(stamp[:12], memo)
        if minute is memo:
            minute = self._minutes[stamp[:12]] = self._minute(stamp)
        second = stamp[13:15]
        if minute is None or not second.isdigit() or int(second) > 59:
            value = None
        else:
            value = minute + timedelta(seconds=int(second))  # type: ignore[operator]
        memo[stamp] = value
        return value

    def _minute(self, stamp: str) -> datetime | None:
        try:
            month = MONTHS[stamp[:3]]
            day, hh, mm = int(stamp[4:6]), int(stamp[7:9]), int(stamp[10:12])
            year = infer_year(month, day, self.reference.astimezone(self.tz), self.grace)
            return datetime(year, month, day, hh, mm, tzinfo=self.tz).astimezone(UTC)
        except (KeyError, ValueError):
            return None

    def rfc3339(self, stamp: str) -> datetime | None:
        """An RFC 3339 stamp -> aware UTC; the fraction aside, a stamp repeats
        for every line of a second, so the parsed second is kept."""
        if stamp[19:20] != ".":
            return rfc3339(stamp)
        zone_at = stamp.find("+", 20)
        if zone_at < 0:
            zone_at = stamp.find("-", 20)
            if zone_at < 0:
                zone_at = stamp.find("Z", 20)
        key = stamp[:19] + stamp[zone_at:]
        memo = self._memo
        whole = memo.get(key, memo)
        if whole is memo:
            if len(memo) > 100_000:
                memo.clear()
            whole = memo[key] = rfc3339(key)
        if whole is None:
            return None
        digits = stamp[20:zone_at]
        if not digits.isdigit():
            return None
        return whole.replace(microsecond=int((digits + "000000")[:6]))  # type: ignore[union-attr]

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


#: What ``split`` reads off a line: (time, host, program, pid, payload).
#: A plain tuple: one is made for every line, and a tuple costs a third of
#: a dataclass instance to build.
Envelope = tuple[datetime | None, str | None, str | None, int | None, str]


# Host and program are printable US-ASCII, as RFC 5424 has HOSTNAME and
# APP-NAME (PRINTUSASCII, %d33-126); a program name has no ":", "[" or "]"
# but may hold slashes (postfix/submission/smtpd) and dashes
# (postfix-out/qmgr, sm-msp-queue); the pid is optional. Digits are [0-9],
# not \d, which would take any script's digits. (ASCII ranges are also
# what the regex engine tests fastest: a fifth off the envelope's cost.)
_TAIL = r" (?P<host>[!-~]+) (?P<prog>[!-9;-Z\\^-~]+)(?:\[(?P<pid>[0-9]+)\])?: ?(?P<payload>.*)"
BSD = re.compile(r"(?P<stamp>[A-Z][a-z]{2} [ 0-3][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2})" + _TAIL, re.S)
RFC3339 = re.compile(
    r"(?P<stamp>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:?[0-9]{2}))"
    + _TAIL,
    re.S,
)
EXIM = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?)(?: (?P<tz>[+-][0-9]{4}))?"
    r"(?: \[(?P<pid>[0-9]+)\])? (?P<payload>.*)",
    re.S,
)


def rfc3339(stamp: str) -> datetime | None:
    """An RFC 3339 timestamp with any fraction (rsyslog writes 1 to 9
    digits) and offset -> aware UTC, or None."""
    zone_at = 19
    if stamp[19:20] == ".":
        zone_at = 20
        while stamp[zone_at : zone_at + 1].isdigit():
            zone_at += 1
    zone = stamp[zone_at:]
    if zone == "Z":
        zone = "+00:00"
    try:
        whole = datetime.fromisoformat(stamp[:19] + zone).astimezone(UTC)
    except ValueError:
        return None
    if zone_at == 19:
        return whole
    return whole.replace(microsecond=int((stamp[20:zone_at] + "000000")[:6]))


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
    # The shortcut: a line whose stamp, host and ``prog[pid]:`` head (each
    # running to a space) were all matched by ``BSD`` before is read as
    # ``BSD`` would read it, by one split, for two thirds of the regex's
    # cost. Anything else, and every Exim head, goes to the regexes.
    ts = ctx._matched.get(line[:16])
    if ts is not None:
        parts = line[16:].split(" ", 2)
        if len(parts) == 3:
            host, head, payload = parts
            known = _HEADS.get(head)
            if known is not None and host in _HOSTS:
                program, pid = known
                return (ts, host, program, pid, payload)
    m = BSD.match(line)
    if m is not None:
        stamp, host, program, pid, payload = m.groups()
        ts = ctx._memo.get(stamp) or ctx.bsd(stamp)  # the memo first: most lines share a second
        if ts is not None:
            _learn(ctx, stamp, host, program, pid, ts)
    else:
        m = RFC3339.match(line)
        if m is None:
            m = EXIM.match(line)
            if m is None:
                return None
            date, tz, pid, payload = m.groups()
            return (exim_time(date, tz, ctx), None, None, int(pid) if pid else None, payload)
        stamp, host, program, pid, payload = m.groups()
        ts = ctx.rfc3339(stamp)
    if ts is None:
        return None
    if program[0] == "e" and program.startswith("exim"):  # the first test is a third of the second's cost
        inner = EXIM.match(payload)
        if inner is not None:
            ts = exim_time(inner["date"], inner["tz"], ctx) or ts
            payload = inner["payload"]
    return (ts, host, program, _PIDS.get(pid) or _pid(pid), payload)


#: Heads (``prog[pid]:``) and hosts that ``BSD`` has matched, with what it
#: read from them: a log names a few hosts and a few thousand processes.
_HEADS: dict[str, tuple[str, int | None]] = {}
_HOSTS: set[str] = set()


def _learn(ctx: Context, stamp: str, host: str, program: str, pid: str | None, ts: datetime) -> None:
    """Remember what ``BSD`` matched, for ``split``'s shortcut: the stamp
    with the space after it, the host, and the head with its colon; not an
    Exim program's head, whose payload holds a second date to read."""
    matched = ctx._matched
    if len(matched) >= 100_000:
        matched.clear()
    matched[stamp + " "] = ts
    if host not in _HOSTS and len(_HOSTS) < 10_000:
        _HOSTS.add(host)
    if program[0] == "e" and program.startswith("exim"):
        return
    head = f"{program}[{pid}]:" if pid is not None else program + ":"  # the text BSD matched
    if head not in _HEADS:
        if len(_HEADS) >= 65_536:
            _HEADS.clear()
        _HEADS[head] = (program, _PIDS.get(pid) or _pid(pid))


#: pid text -> int: a log's lines come from a few hundred live processes,
#: and a dict lookup costs a quarter of what int() of the text does.
_PIDS: dict[str | None, int | None] = {}


def _pid(text: str | None) -> int | None:
    if text is None:
        return None
    if len(_PIDS) >= 65_536:
        _PIDS.clear()
    value = _PIDS[text] = int(text)
    return value
