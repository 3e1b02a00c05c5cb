"""Log line parsers: one module per MTA plus the syslog envelope.

``parse(line, ctx)`` turns one line into one ``Event``. It is a pure
function: no I/O, no state between calls (the context's memo of timestamps
only saves work), so the same line gives the same event whichever source,
order or process it came from. It never raises on input: a line it cannot
read is an ``unknown`` event.
"""

from __future__ import annotations

from collections.abc import Callable

from . import exim, postfix, sendmail
from .envelope import Context, split
from .events import Event, Kind
from .grammar import Reading

__all__ = ["MAX_LINE", "MTAS", "Context", "Event", "Kind", "mta_of", "parse"]

#: Each MTA's payload reader: (payload, program name or None) -> Reading,
#: or None when the payload is not understood.
READERS: dict[str, Callable[[str, str | None], Reading | None]] = {
    "postfix": postfix.parse,
    "sendmail": sendmail.parse,
    "exim": exim.parse,
}
MTAS = ("postfix", "exim", "sendmail")

#: Longer lines are not parsed but counted as unknown: no MTA writes one
#: (syslog daemons cut messages at 8 KiB by default), and reading one would
#: only give a hostile line a bigger lever on the grammars.
MAX_LINE = 32 * 1024

_DEFAULT = Context()
_MTA_OF: dict[str, str | None] = {}


def mta_of(program: str) -> str | None:
    """Which MTA a syslog program name belongs to, or None for another program.

    ``postfix/smtpd``, ``postfix/submission/smtpd`` and multi-instance names
    such as ``postfix-out/qmgr``; ``exim``, ``exim4``; ``sendmail``,
    ``sm-mta``, ``sm-msp-queue`` and other ``sm-`` labels.
    """
    hit = _MTA_OF.get(program, "")
    if hit != "":
        return hit
    head = program.split("/", 1)[0].lower()
    if head.startswith("postfix"):
        mta: str | None = "postfix"
    elif head.startswith("exim"):
        mta = "exim"
    elif head in ("sendmail", "sm-mta", "sm-msp-queue") or head.startswith("sm-"):
        mta = "sendmail"
    else:
        mta = None
    if len(_MTA_OF) < 10_000:
        _MTA_OF[program] = mta
    return mta


def parse(line: str, ctx: Context | None = None, mta: str = "auto") -> Event:
    """One log line -> one Event.

    ``mta`` forces the reader for lines whose program name does not say
    (a ``syslog_name`` nobody would guess); "auto" trusts the name.
    """
    line = line.rstrip("\r\n")
    if len(line) > MAX_LINE:
        return Event(None, None, None, None, None, None, Kind.UNKNOWN, {"reason": "overlong"}, line)
    env = split(line, ctx or _DEFAULT)
    if env is None:
        # Exim's reject log dumps the refused message's envelope and header
        # on undated lines after the entry they belong to.
        more = exim.continuation(line) if mta in ("auto", "exim") else None
        if more is None:
            return Event(None, None, None, None, None, None, Kind.UNKNOWN, {}, line)
        return Event(None, None, "exim", None, None, None, more.kind, more.fields, line)
    if env.program is None:  # Exim's own mainlog
        which: str | None = "exim"
    else:
        which = mta_of(env.program)
        if which is None and mta != "auto":
            which = mta
    if which is None:
        return Event(env.ts, env.host, None, env.program, env.pid, None, Kind.FOREIGN, {"text": env.payload}, line)
    reader = READERS.get(which)
    reading = reader(env.payload, env.program) if reader is not None else None
    if reading is None:
        return Event(env.ts, env.host, which, env.program, env.pid, None, Kind.UNKNOWN, {}, line)
    return Event(env.ts, env.host, which, env.program, env.pid, reading.queue_id, reading.kind, reading.fields, line)
