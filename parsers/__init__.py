"""Log line parsers: one module per MTA plus the syslog envelope.

``parse(line, ctx)`` turns one line into one ``Event``. It is a pure
function: no I/O, no state between calls (the context's memo of timestamps
only saves work), so the same line gives the same event whichever source,
order or process it came from. It never raises on input: a line it cannot
read is an ``unknown`` event.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar, overload

from .envelope import Context, split
from .events import Event, Kind
from .reading import Reading

__all__ = ["MAX_LINE", "MTAS", "Context", "Event", "Kind", "mta_of", "parse"]

#: An MTA's payload reader, its module's ``parse``: (payload, program name
#: or None) -> Reading, or None when the payload is not understood.
Reader = Callable[[str, str | None], Reading | None]
MTAS = ("postfix", "exim", "sendmail")


def _module(mta: str) -> ModuleType:
    """The module of ``mta``, imported on the first line of that MTA: a log
    is nearly always one MTA's, and building the others' grammars would be
    a fifth of the time a parse of a big log takes to start."""
    return importlib.import_module(f"{__name__}.{mta}")


#: Longer lines are not parsed but counted as unknown: no MTA writes one
#: (syslog daemons cut messages at 8 KiB by default), and reading one would
#: only give a hostile line a bigger lever on the grammars.
MAX_LINE = 32 * 1024

_DEFAULT = Context()


def mta_of(program: str) -> str | None:
    """Which MTA a syslog program name belongs to, or None for another program.

    ``postfix/smtpd``, ``postfix/submission/smtpd`` and multi-instance names
    such as ``postfix-out/qmgr``; ``exim``, ``exim4``; ``sendmail``,
    ``sm-mta``, ``sm-msp-queue`` and other ``sm-`` labels.
    """
    head = program.split("/", 1)[0].lower()
    if head.startswith("postfix"):
        return "postfix"
    if head.startswith("exim"):
        return "exim"
    if head in ("sendmail", "sm-mta", "sm-msp-queue") or head.startswith("sm-"):
        return "sendmail"
    return None


T = TypeVar("T")


@overload
def parse(line: str, ctx: Context | None = None, mta: str = "auto") -> Event: ...
@overload
def parse(line: str, ctx: Context | None, mta: str, make: Callable[..., T]) -> T: ...


def parse(line: str, ctx: Context | None = None, mta: str = "auto", make: Callable[..., Any] = Event) -> Any:
    """One log line -> one Event.

    ``mta`` forces the reader for lines whose program name does not say
    (a ``syslog_name`` nobody would guess); "auto" trusts the name.

    ``make`` is handed what was read instead of ``Event``, with the same
    arguments: a caller that only counts lines (``mtqpd parse --stats``)
    keeps what it counts, and saves the eighth of a line's cost that
    making an ``Event`` is.
    """
    line = line.rstrip("\r\n")
    if len(line) > MAX_LINE:
        return make(None, None, None, None, None, None, _UNKNOWN, {"reason": "overlong"}, line)
    env = split(line, ctx or _DEFAULT)
    if env is None:
        # Exim's reject log dumps the refused message's envelope and header
        # on undated lines after the entry they belong to.
        more = _module("exim").continuation(line) if mta in ("auto", "exim") else None
        if more is None:
            return make(None, None, None, None, None, None, _UNKNOWN, {}, line)
        return make(None, None, "exim", None, None, None, more[0], more[2], line)
    ts, host, program, pid, payload = env
    which, reader = _READERS_OF.get((program, mta)) or _readers(program, mta)
    if which is None:
        return make(ts, host, None, program, pid, None, _FOREIGN, {"text": payload}, line)
    reading = reader(payload, program) if reader is not None else None
    if reading is None:
        return make(ts, host, which, program, pid, None, _UNKNOWN, {}, line)
    kind, queue_id, fields = reading
    return make(ts, host, which, program, pid, queue_id, kind, fields, line)


_READERS_OF: dict[tuple[str | None, str], tuple[str | None, Reader | None]] = {}


def _readers(program: str | None, mta: str) -> tuple[str | None, Reader | None]:
    """(MTA, its payload reader) for lines of ``program``; (None, None) for
    another program's. Memoised in ``_READERS_OF``: a log names a handful of
    programs, and finding out costs more than a lookup on every line."""
    which = mta_of(program) if program is not None else "exim"  # Exim's own mainlog names no program
    if which is None and mta != "auto":
        which = mta
    hit = (which, _module(which).parse if which in MTAS else None) if which is not None else (None, None)
    if len(_READERS_OF) < 10_000:
        _READERS_OF[program, mta] = hit
    return hit


_UNKNOWN, _FOREIGN = Kind.UNKNOWN, Kind.FOREIGN  # enum attribute lookups are not free per line
