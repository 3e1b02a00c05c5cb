"""What a payload reader makes of one payload, and the helpers every
reader shares, grammar or fast path. No pyparsing here: a log whose every
line takes a fast path never imports it (``parsers.grammar`` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .events import Kind


@dataclass(slots=True)
class Reading:
    """What a payload grammar makes of one payload."""

    kind: Kind
    queue_id: str | None = None
    fields: dict[str, Any] | None = None


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
