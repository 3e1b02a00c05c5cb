"""Grammar pieces shared by the MTA payload grammars.

Every payload grammar is pyparsing, so that it reads next to the MTA's
documentation; these are the tokens that recur across MTAs. Each grammar's
top-level parse action returns one ``Reading``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyparsing as pp

from .events import Kind


@dataclass(slots=True)
class Reading:
    """What a payload grammar makes of one payload."""

    kind: Kind
    queue_id: str | None = None
    fields: dict[str, Any] | None = None


#: ``<user@domain>``, ``<>``, or a quoted local part holding ``>``.
ANGLE_ADDR = pp.Regex(r'<((?:"[^"]*"|[^<>"])*)>').set_parse_action(lambda t: t[0][1:-1]).set_name("<address>")
_HOST_ADDR = re.compile(r"(?P<host>[^\s\[\]]*)\[(?P<ip>[^\]\s]*)\](?::(?P<port>\d+))?")


@dataclass(slots=True, frozen=True)
class HostAddr:
    host: str | None
    ip: str | None
    port: int | None = None


def _host_addr(text: str) -> HostAddr:
    m = _HOST_ADDR.match(text)
    assert m is not None  # the token's own regex matched the same text
    return HostAddr(m["host"] or None, m["ip"] or None, int(m["port"]) if m["port"] else None)


#: ``host[1.2.3.4]``, ``host[IPv6:2001:db8::1]``, ``unknown[1.2.3.4]:port``.
HOST_ADDR = pp.Regex(_HOST_ADDR.pattern).set_parse_action(lambda t: _host_addr(t[0])).set_name("host[ip]")
NUMBER = pp.Regex(r"\d+").set_parse_action(lambda t: int(t[0]))
DECIMAL = pp.Regex(r"\d+(?:\.\d+)?").set_parse_action(lambda t: float(t[0]))
DSN_CODE = pp.Regex(r"[245]\.\d{1,3}\.\d{1,3}").set_name("dsn")
REST = pp.Regex(r".*", re.S).set_name("rest")

# The SMTP server id that a 2xx reply names ("queued as 4F...", "id=1abc-...",
# "Ok: queued as SINK000001", "<...> Message accepted for delivery").
QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z][0-9A-Za-z.-]*[0-9A-Za-z])")


_HOST_KEYS: dict[str, tuple[str, str, str]] = {}


def host_fields(prefix: str, host: str | None, ip: str | None, port: int | str | None = None) -> dict[str, Any]:
    """``{prefix}_host``, ``{prefix}_ip``, and ``{prefix}_port`` when logged."""
    keys = _HOST_KEYS.get(prefix)
    if keys is None:  # a handful of prefixes; formatting them per line costs more than the rest
        keys = _HOST_KEYS[prefix] = (f"{prefix}_host", f"{prefix}_ip", f"{prefix}_port")
    if port:
        return {keys[0]: host or None, keys[1]: ip or None, keys[2]: int(port)}
    return {keys[0]: host or None, keys[1]: ip or None}


def addr_fields(prefix: str, addr: HostAddr) -> dict[str, Any]:
    return host_fields(prefix, addr.host, addr.ip, addr.port)


def queued_as(reply: str | None) -> str | None:
    if not reply or "queued as " not in reply:
        return None
    m = QUEUED_AS.search(reply)
    return m.group(1) if m else None


def read(grammar: pp.ParserElement, payload: str) -> Reading | None:
    """Run a payload grammar whose top level names its result ``reading``
    (a Reading) and, when the line has one, its ``queue_id``."""
    try:
        t = grammar.parse_string(payload, parse_all=True)
    except pp.ParseException:
        return None
    reading: Reading = t["reading"] if isinstance(t["reading"], Reading) else t["reading"][0]
    reading.queue_id = t.get("queue_id")
    return reading
