"""What a payload reader makes of one payload, and the helpers every
reader shares, grammar or fast path. No pyparsing here: a log whose every
line takes a fast path never imports it (``parsers.grammar`` does).
"""

from __future__ import annotations

import re
from typing import Any

from .events import Kind

#: What a payload reader makes of one payload: (kind, queue id or None,
#: fields). A plain tuple, not a class: one is made for nearly every line,
#: and a tuple costs a third of a dataclass instance to build.
Reading = tuple[Kind, str | None, dict[str, Any]]


def with_queue_id(reading: Reading, queue_id: str | None) -> Reading:
    """``reading`` about ``queue_id``: the readers of what follows a queue id
    do not see it."""
    return (reading[0], queue_id, reading[2])


# The SMTP server id that a 2xx reply names ("queued as 4F...", "id=1abc-...",
# "Ok: queued as SINK000001", "<...> Message accepted for delivery").
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z][0-9A-Za-z.-]*[0-9A-Za-z])")


_HOST_KEYS: dict[str, tuple[str, str, str]] = {}


def host_fields(prefix: str, host: str | None, ip: str | None, port: int | str | None = None) -> dict[str, Any]:
    """``{prefix}_host``, ``{prefix}_ip``, and ``{prefix}_port`` when logged."""
    keys = _HOST_KEYS.get(prefix)
    if keys is None:  # a handful of prefixes; formatting them per line costs more than the rest
        keys = _HOST_KEYS[prefix] = (f"{prefix}_host", f"{prefix}_ip", f"{prefix}_port")
    if port:
        return {keys[0]: host or None, keys[1]: ip or None, keys[2]: int(port)}
    return {keys[0]: host or None, keys[1]: ip or None}


def queued_as(reply: str | None) -> str | None:
    if not reply or "queued as " not in reply:
        return None
    m = _QUEUED_AS.search(reply)
    return m.group(1) if m else None
