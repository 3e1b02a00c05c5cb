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

from .reading import Reading, host_fields, with_queue_id

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


def addr_fields(prefix: str, addr: HostAddr) -> dict[str, Any]:
    return host_fields(prefix, addr.host, addr.ip, addr.port)


def read(grammar: pp.ParserElement, payload: str) -> Reading | None:
    """Run a payload grammar whose top level names its result ``reading``
    (a Reading) and, when the line has one, its ``queue_id``."""
    try:
        t = grammar.parse_string(payload, parse_all=True)
    except pp.ParseException:
        return None
    reading: Reading = t["reading"] if isinstance(t["reading"], tuple) else t["reading"][0]
    return with_queue_id(reading, t.get("queue_id"))
