"""Exim 4 log payloads: the main log, the reject log, and both through syslog.

The grammar follows the Exim specification, chapter "Log files": a line
about a message starts with the message id; the lines that carry an
envelope's story then have a two-character flag (section "Log line flags"):
``<=`` arrival, ``(=`` fake reject, ``=>`` delivery, ``->`` another address
of the same delivery, ``>>`` cutthrough delivery, ``*>`` delivery suppressed
by ``-N``, ``**`` failure, ``==`` deferral. What follows the flag is an
address section (``final (parent, ...) <original>``) and ``KEY=value``
fields whose meaning depends on the flag (section "Summary of Fields in Log
Lines": ``R=`` is the bounce's parent on ``<=`` and the router on ``=>``).
The rest are SMTP-session lines (connections, ACL rejections), the
administrator's and the queue runner's notes, and the daemon's own.

Decisions the rest of mtqpd relies on:

- ``<= <> R=<parent>`` is the ENQUEUE of a notification: ``bounce_of`` names
  the parent. Exim logs no other line when it creates a bounce, a delay
  warning or a success DSN; ``notification`` says which, when the default
  ``T=`` subject tells (``+subject``), else None.
- ``**`` is a DELIVERY with status ``bounced`` (``expired`` for "retry
  timeout exceeded"); ``addr <parent>: error ignored`` (a failure of a
  notification, or of a recipient whose bounce is not wanted) is a DELIVERY
  with status ``failed``: no notification follows.
- ``==`` is a DEFERRAL. "retry time not reached" and the other defers that
  did not try anything are DEFERRALs too, with ``attempted`` False, so that
  they never count as a delivery attempt.
- ``H=host [ip]: ...`` notes about one host of an attempt are DEFERRALs with
  no recipient, as Postfix's "host ... said" notes.
- The header dump after a reject-log entry (``Envelope-from:``,
  ``Envelope-to:``, ``P Received: ...`` and folded lines) continues the
  rejection above it: REJECT with ``continuation`` True, ``recipient`` on
  ``Envelope-to:``. Through syslog these are the ``[n\\m]`` parts of one
  entry; in the reject log file they have no date, so ``continuation`` reads
  them for the dispatcher.
- Exim logs no SMTP code for its own ACL rejections: a REJECT has
  ``temporary`` instead of ``code``, and ``dsn`` when the text starts with one.

``GRAMMAR`` is the reference. ``fast`` reads the shapes that make up nearly
every line of a busy log with one regular expression each and builds its
reading through the same helpers; a differential test holds it to the
grammar on the whole sample corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import pyparsing as pp

from .events import Kind
from .grammar import ANGLE_ADDR, REST, read
from .reading import Reading, host_fields, queued_as, with_queue_id

S = pp.Suppress

# -- message ids and durations -------------------------------------------------

#: Base 62 (base 36 where file names are case-blind): seconds, pid, fraction.
#: Up to 4.96 ``6-6-2`` (1vZ5XY-000ABC-Q1); from 4.97, with 64-bit pids,
#: ``6-11-4`` (1vZ5XY-00000000ABC-Q1w0).
_ID_RE = r"[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{11}-[0-9A-Za-z]{4}|[0-9A-Za-z]{6}-[0-9A-Za-z]{2})"
MESSAGE_ID = pp.Regex(_ID_RE + r"(?= )").set_name("message id")
_EXIM_ID = re.compile(r"\bid=(" + _ID_RE + r")\b")

#: readconf_printtime() ``1w2d3h4m5s``; with ``+millisec`` short times are
#: ``0.123s`` (and a long ``RT=``/``QT=`` may end in ``12.345s``).
_TIME_RE = r"(?=\d)(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+(?:\.\d+)?s)?(?![\w.])"
_TIME = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?")
_UNITS = (604800, 86400, 3600, 60, 1)


@lru_cache(maxsize=4096)
def duration(text: str) -> float | None:
    """``3m15s`` -> 195.0, ``0.103s`` -> 0.103; None when it is not an Exim time."""
    m = _TIME.fullmatch(text)
    if m is None or not text:
        return None
    return float(sum(float(v) * unit for v, unit in zip(m.groups(), _UNITS, strict=True) if v))


# -- fields --------------------------------------------------------------------

#: ``T="..."`` and ``C="..."``: Exim backslash-quotes ``"`` and ``\\`` inside.
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ANGLE = r'<(?:"[^"]*"|[^<>"])*>'
#: A bare value runs to the next space, or to a ``: `` that starts the text.
_BARE = r'(?:[^\s:"]|:(?!\s|$))+'
#: ``H=name (helo) [ip]:port``: the name only when verified, the HELO only when
#: it differs; ``*`` marks a delivery down a connection already in use.
_HOST = r"(?:[^\s()\[\]]+ )?(?:\([^)]*\) )?\[[^\]\s]+\](?::\d+)?\*?"
_HOST_PARTS = re.compile(
    r"(?:H=)?(?:(?P<name>[^\s()\[\]]+) )?(?:\((?P<helo>[^)]*)\) )?\[(?P<ip>[^\]\s]+)\](?::(?P<port>\d+))?(?P<cont>\*)?"
)
#: Flags without a value: K (CHUNKING), L (PIPELINING, with - . * variants),
#: PRDR, DS (DNSSEC), TFO (TCP Fast Open).
_TAG_RE = (
    rf"(?:H=(?:{_HOST}|{_BARE})|ST={_BARE}(?: \([^)]*\))?"
    rf"|[A-Za-z][A-Za-z0-9]*\*?=(?:{_QUOTED}|{_ANGLE}|{_BARE})|K|L[-.*]?|PRDR|DS|TFO\*?)(?=\s|:\s|:?$)"
)


class Tag(NamedTuple):
    """One ``KEY=value`` field (value None for a bare flag such as ``K``)."""

    key: str
    value: str | None


def _tag(text: str) -> Tag:
    # No key holds "=", so the first one ends it (values may hold more: DN="C=US").
    key, eq, value = text.partition("=")
    return Tag(key, value if eq else None)


TAG = pp.Regex(_TAG_RE).set_parse_action(lambda t: _tag(t[0])).set_name("KEY=value")
TAGS = pp.Group(pp.ZeroOrMore(TAG))


def _unquote(value: str) -> str:
    if value[:1] == '"' and value[-1:] == '"' and len(value) > 1:
        return re.sub(r'\\([\\"])', r"\1", value[1:-1])
    if value[:1] == "<" and value[-1:] == ">":
        return value[1:-1]
    return value


@dataclass(slots=True, frozen=True)
class Host:
    """A client or a remote host as Exim writes it."""

    name: str | None
    helo: str | None
    ip: str | None
    port: int | None
    continued: bool = False


@lru_cache(maxsize=4096)
def _host(text: str) -> Host:
    m = _HOST_PARTS.fullmatch(text)
    if m is None:  # a local transport's host list name, no address
        return Host(text or None, None, None, None)
    return Host(m["name"], m["helo"], m["ip"], int(m["port"]) if m["port"] else None, bool(m["cont"]))


def _client_fields(host: Host) -> dict[str, Any]:
    out = host_fields("client", host.name, host.ip, host.port)
    if host.helo is not None:
        out["helo"] = host.helo
    return out


#: The client of an SMTP session, as in ``SMTP connection from (helo) [ip]:port``
#: (some lines write it with its ``H=``).
_CLIENT_RE = r"(?:H=)?(?:[^\s()\[\]]+ )?(?:\([^)]*\) )?\[[^\]\s]+\](?::\d+)?"
CLIENT = pp.Regex(_CLIENT_RE).set_parse_action(lambda t: _host(t[0])).set_name("client")

# -- the address section of a flagged line ---------------------------------------

#: ``final (parent, ...) <original>``. The final address is a local part
#: alone for local deliveries (``log_as_local``), ``|command args`` for a
#: pipe, a path for a file (``save`` before a relative one), ``>addr`` for an
#: autoreply, ``:blackhole:``. The parents are shown for pipes and files, and
#: all of them with ``+all_parents``; ``<original>`` only when it differs.
_FINAL = r'(?:save )?(?:\|.*?|[^\s"<(](?:"[^"]*"|[^\s"])*?)'
_ADDRESS = rf'(?P<final>{_FINAL})(?: \((?P<parents>[^()]*)\))?(?: <(?P<orig>(?:"[^"]*"|[^<>"])*)>)?'
_NEXT_TAG = r" [A-Za-z][A-Za-z0-9]*\*?="
_DEFER_WORD = r" (?:routing |transporting )?defer \("
_ADDRESS_OUT = _ADDRESS + rf"(?=$|{_NEXT_TAG})"
_ADDRESS_DEFER = _ADDRESS + rf"(?={_NEXT_TAG}|{_DEFER_WORD})"
_ADDRESS_FAIL = _ADDRESS + rf"(?=$|: |{_NEXT_TAG})"
_ADDRESS_PARTS = re.compile(_ADDRESS, re.S)


@dataclass(slots=True, frozen=True)
class Address:
    """Where one recipient went (``final``) and what it was (``orig``, when it differs)."""

    final: str
    parents: tuple[str, ...]
    orig: str | None


def _address(m: re.Match[str]) -> Address:
    """The address section from a match of ``_ADDRESS`` (grammar or fast path)."""
    final = m["final"]
    if final.startswith("save "):
        final = final[5:]
    parents = tuple(p.strip() for p in m["parents"].split(",")) if m["parents"] else ()
    return Address(final, parents, m["orig"])


def _address_token(text: str) -> Address:
    m = _ADDRESS_PARTS.fullmatch(text)
    assert m is not None  # one of the _ADDRESS_* tokens matched the same text
    return _address(m)


ADDRESS_OUT = pp.Regex(_ADDRESS_OUT).set_parse_action(lambda t: _address_token(t[0])).set_name("address")
ADDRESS_DEFER = pp.Regex(_ADDRESS_DEFER).set_parse_action(lambda t: _address_token(t[0])).set_name("address")
ADDRESS_FAIL = pp.Regex(_ADDRESS_FAIL).set_parse_action(lambda t: _address_token(t[0])).set_name("address")

# -- shared helpers of the readings ----------------------------------------------

#: ``451 4.4.1 ...`` after ``: `` (or after the ``\\n`` that joins the lines of
#: a multi-line reply in ``C="..."``).
_SMTP_STATUS = re.compile(r"(?:^|: |\\n)(?P<code>[245]\d\d)(?:[ -](?P<dsn>[245]\.\d{1,3}\.\d{1,3}))?(?=[ -]|$)")
_LEADING_DSN = re.compile(r"(?P<dsn>[245]\.\d{1,3}\.\d{1,3})\b")
_REMOTE_HOST = re.compile(r"\bhost (?P<name>\S+) \[(?P<ip>[^\]\s]+)\]")
_TRAILING_DT = re.compile(r" DT=(" + _TIME_RE + r")$")
#: Defers that did not try the address (deliver.c's retry and queue checks).
_NOT_TRIED = (
    "retry time not reached",
    "domain is held",
    "domain is in queue_domains",
    "remote deliveries suppressed",
    "reusing SMTP connection skips previous routing defer",
)


def _smtp_status(text: str | None) -> tuple[int | None, str | None]:
    """The last SMTP code and enhanced status in a remote reply, if any."""
    code = dsn = None
    for m in _SMTP_STATUS.finditer(text or ""):
        code, dsn = int(m["code"]), m["dsn"]
    return code, dsn


def _relay(fields: dict[str, Any], host: Host) -> None:
    fields.update(host_fields("relay", host.name, host.ip, host.port))
    if host.ip is not None:
        fields["relay"] = f"{host.name or ''}[{host.ip}]" + (f":{host.port}" if host.port else "")
    else:
        fields["relay"] = host.name
    if host.continued:
        fields["connection_reused"] = True


def _exim_queued_as(reply: str | None) -> str | None:
    """The next hop's id: Postfix's "queued as X", Exim's "250 OK id=X"."""
    found = queued_as(reply)
    if found or not reply:
        return found
    m = _EXIM_ID.search(reply)
    return m.group(1) if m else None


#: Fields of the delivery lines (``=>``, ``**``, ``==``): what each key means there.
_OUT_KEYS = {
    "F": "sender",
    "P": "return_path",
    "R": "router",
    "T": "transport",
    "Q": "queue",
    "X": "tls",
    "CV": "tls_verified",
    "DN": "tls_peer",
    "A": "auth",
    "ST": "shadow",
    "I": "interface",
    "PRX": "proxy",
    "SRS": "srs_sender",
}
_OUT_FLAGS = {"K": "chunking", "PRDR": "prdr", "DS": "dnssec"}


def _out_fields(addr: Address, tags: list[Tag]) -> dict[str, Any]:
    """What ``=>``, ``**`` and ``==`` lines share: the address and the fields."""
    fields: dict[str, Any] = {"recipient": addr.final, "orig_recipient": addr.orig}
    if addr.parents:
        fields["parents"] = list(addr.parents)
    for tag in tags:
        key, value = tag.key, tag.value
        if value is None:
            fields["pipelining" if key.startswith("L") else _OUT_FLAGS.get(key, key.lower())] = True
        elif key == "H":
            _relay(fields, _host(value))
        elif key == "S" and value.isdigit():
            fields["size"] = int(value)
        elif key == "C":
            fields["reply"] = _unquote(value)
        elif key == "QT":
            fields["delay"] = duration(value)
        elif key == "DT":
            fields["deliver_time"] = duration(value)
        else:
            fields[_OUT_KEYS.get(key, key)] = _unquote(value)
    return fields


# -- <= arrival ----------------------------------------------------------------

_ARRIVAL_KEYS = {
    "U": "user",
    "P": "protocol",
    "R": "bounce_of",
    "T": "subject",
    "X": "tls",
    "CV": "tls_verified",
    "DN": "tls_peer",
    "SNI": "sni",
    "Q": "queue",
    "PRX": "proxy",
    "DKIM": "dkim",
    "Ci": "connection_id",
    "M8S": "m8s",
}
_IN_FLAGS = {"K": "chunking", "PRDR": "prdr", "DS": "dnssec", "TFO": "tcp_fast_open", "TFO*": "tcp_fast_open"}
#: Exim's default subjects of the notifications it writes itself.
_NOTIFICATIONS = (
    (re.compile(r"Mail delivery failed\b"), "non-delivery"),
    (re.compile(r"Warning: message \S+ delayed\b"), "delay"),
    (re.compile(r"Delivery Status Notification$"), "delivery status"),
)


def arrival_reading(flag: str, sender: str, tags: list[Tag], original_sender: str | None, rcpts: str | None) -> Reading:
    """``<=`` (and ``(=``, a fake reject): one line for the whole envelope."""
    fields: dict[str, Any] = {"sender": "" if sender == "<>" else sender}
    if flag == "(=":
        fields["fakereject"] = True
    for tag in tags:
        key, value = tag.key, tag.value
        if value is None:
            fields["pipelining" if key.startswith("L") else _IN_FLAGS.get(key, key.lower())] = True
        elif key == "H":
            fields.update(_client_fields(_host(value)))
        elif key == "I":
            interface = _host(value)
            fields.update(host_fields("server", None, interface.ip, interface.port))
        elif key == "S" and value.isdigit():
            fields["size"] = int(value)
        elif key in ("id", "id*"):
            fields["message_id"] = f"<{value}>"
            if key == "id*":
                fields["message_id_created"] = True
        elif key == "A":
            auth, _, user = value.partition(":")
            fields["auth"] = auth
            if user:
                fields["sasl_username"] = user
        elif key == "RT":
            fields["receive_time"] = duration(value)
        else:
            fields[_ARRIVAL_KEYS.get(key, key)] = _unquote(value)
    if original_sender is not None:
        fields["original_sender"] = original_sender
    if rcpts is not None:
        fields["recipients"] = rcpts.split()
        fields["nrcpt"] = len(fields["recipients"])
    if fields["sender"] == "" and fields.get("bounce_of"):
        subject = fields.get("subject") or ""
        fields["notification"] = next((n for rx, n in _NOTIFICATIONS if rx.match(subject)), None)
    return (Kind.ENQUEUE, None, fields)


_SENDER_RE = r'<>|(?:"[^"]*"|[^\s"<>])+'
arrival = (
    pp.one_of("<= (=")("flag")
    + pp.Regex(_SENDER_RE)("sender")
    + TAGS("tags")
    + pp.Opt(S(pp.Keyword("from")) + ANGLE_ADDR("from"))
    + pp.Opt(S(pp.Keyword("for")) + REST("for"))
).set_parse_action(lambda t: arrival_reading(t["flag"], t["sender"], list(t["tags"]), t.get("from"), t.get("for")))

# -- => -> >> *> delivery --------------------------------------------------------


def delivery_reading(flag: str, addr: Address, tags: list[Tag]) -> Reading:
    """``=>`` and ``->`` (sent), ``>>`` (cutthrough, logged before the
    arrival line), ``*>`` (``-N``: would have been sent)."""
    fields = _out_fields(addr, tags)
    fields["status"] = "deliverable" if flag == "*>" else "sent"
    fields["flag"] = flag
    reply = fields.get("reply")
    fields["dsn"] = _smtp_status(reply)[1]
    qa = _exim_queued_as(reply)
    if qa:
        fields["queued_as"] = qa
    return (Kind.DELIVERY, None, fields)


delivery = (pp.one_of("=> -> >> *>")("flag") + ADDRESS_OUT("addr") + TAGS("tags")).set_parse_action(
    lambda t: delivery_reading(t["flag"], t["addr"], list(t["tags"]))
)

# -- == deferral -----------------------------------------------------------------

#: ``defer (errno)``, then the system error's text when errno > 0.
_DEFER_RE = r"defer \((?:[1-9]\d*\)(?:: [^:]*?(?= H=| DT=|: |$))?|-?\d+\))"
_DEFER_PARTS = re.compile(r"defer \((?P<errno>-?\d+)\)(?:: (?P<err>.*))?", re.S)


def deferral_reading(
    addr: Address, tags: list[Tag], stage: str | None, defer: str, after: list[Tag], message: str | None
) -> Reading:
    """``==``: a temporary failure of one address; it stays queued."""
    m = _DEFER_PARTS.fullmatch(defer)
    assert m is not None  # _DEFER_RE matched the same text
    fields = _out_fields(addr, tags + after)
    err = m["err"]
    message = message.strip() if message is not None else None
    reply = f"{err}: {message}" if err and message else err or message
    fields["status"] = "deferred"
    fields["errno"] = int(m["errno"])
    fields["reply"] = reply
    fields["attempted"] = not (message or "").startswith(_NOT_TRIED)
    if stage:
        fields["stage"] = stage
    code, fields["dsn"] = _smtp_status(reply)
    if code is not None:
        fields["code"] = code
    return (Kind.DEFERRAL, None, fields)


deferral = (
    S("==")
    + ADDRESS_DEFER("addr")
    + TAGS("tags")
    + pp.Opt(pp.one_of("routing transporting"))("stage")
    + pp.Regex(_DEFER_RE)("defer")
    + TAGS("after")
    + pp.Opt(S(":") + REST("message"))
).set_parse_action(
    lambda t: deferral_reading(
        t["addr"], list(t["tags"]), t.get("stage"), t["defer"], list(t["after"]), t.get("message")
    )
)

# -- ** failure, error ignored ------------------------------------------------------


def failure_reading(addr: Address, tags: list[Tag], message: str | None) -> Reading:
    """``**``: the address failed for good; a bounce follows unless ignored.

    4.96 writes ``DT=`` after the text of a failure; it is not part of it.
    """
    fields = _out_fields(addr, tags)
    text = message.strip() if message is not None else None
    if text:
        m = _TRAILING_DT.search(text)
        if m is not None:
            fields["deliver_time"] = duration(m.group(1))
            text = text[: m.start()]
    fields["status"] = "expired" if text and "retry timeout exceeded" in text else "bounced"
    fields["reply"] = text
    code, fields["dsn"] = _smtp_status(text)
    if code is not None:
        fields["code"] = code
    if "relay_ip" not in fields and text:
        m = _REMOTE_HOST.search(text)  # before 4.8x the host was in the text
        if m is not None:
            _relay(fields, Host(m["name"], None, m["ip"], None))
    return (Kind.DELIVERY, None, fields)


failure = (S("**") + ADDRESS_FAIL("addr") + TAGS("tags") + pp.Opt(S(":") + REST("message"))).set_parse_action(
    lambda t: failure_reading(t["addr"], list(t["tags"]), t.get("message"))
)

#: ``addr <parent>: error ignored``: no notification about this failure.
error_ignored = (ADDRESS_FAIL("addr") + S(":") + pp.Regex(r"error ignored.*", re.S)("text")).set_parse_action(
    lambda t: (Kind.DELIVERY, None, {**_out_fields(t["addr"], []), "status": "failed", "reply": t["text"], "dsn": None})
)

# -- Completed, and the queue's other notes about one message ------------------------

completed = pp.Regex(r"Completed(?: QT=(?P<qt>" + _TIME_RE + r"))?").set_parse_action(
    lambda t: (Kind.REMOVED, None, {"delay": duration(t["qt"])} if t.get("qt") else {})
)


def _admin(action: str, text: str, **extra: Any) -> Reading:
    return (Kind.ADMIN, None, {"action": action, "text": text, **{k: v for k, v in extra.items() if v}})


#: The administrator's ``exim -M...``, the queue runner's skips and thaws.
_ADMIN = re.compile(
    r"(?P<frozen>Message is frozen|Frozen(?: .*)?|frozen by (?P<fby>.+))"
    r"|(?P<thawed>[Uu]nfrozen by (?P<tby>.+))"
    r"|(?P<locked>(?i:spool file (?:for \S+ )?is locked)(?: .*)?)"
    r"|(?P<removed>removed by (?P<rby>.+)|Message removed because older than .+)"
    r"|(?P<cancelled>cancelled by (?P<cby>.+))"
    r"|(?P<marked>address <(?P<mrcpt>[^>]*)> marked delivered by (?P<mby>.+))"
    r"|(?P<added>recipient <(?P<arcpt>[^>]*)> added by (?P<aby>.+))"
    r"|(?P<changed>sender address changed to <(?P<snew>[^>]*)> by (?P<sby>.+))",
    re.S,
)


def _admin_reading(m: re.Match[str]) -> Reading:
    text = m.group()
    if m["frozen"]:
        return _admin("frozen", text, by=m["fby"])
    if m["thawed"]:
        return _admin("thawed", text, by=m["tby"])
    if m["locked"]:
        return _admin("skipped", text)
    if m["removed"]:
        return _admin("removed", text, by=m["rby"])
    if m["cancelled"]:
        return _admin("cancelled", text, by=m["cby"])
    if m["marked"]:
        return _admin("marked delivered", text, recipient=m["mrcpt"], by=m["mby"])
    if m["added"]:
        return _admin("recipient added", text, recipient=m["arcpt"], by=m["aby"])
    return _admin("sender changed", text, sender=m["snew"], by=m["sby"])


admin = pp.Regex(_ADMIN).set_parse_action(lambda t: _admin_reading(_ADMIN.fullmatch(t[0])))

#: The message stays queued: load, connection count, ``queue_only``.
no_immediate = (S(TAGS) + pp.Regex(r"no immediate delivery: .*", re.S)("text")).set_parse_action(
    lambda t: _admin("queued", t["text"])
)

#: The system filter and the DATA ACL acting on the whole message.
filter_check = pp.Regex(
    r"(?P<discard>=> discarded \(system filter\)|=> blackhole \(.*discarded recipients\).*)"
    r"|(?P<ignore>original recipients ignored \(system filter\))"
    r"|(?P<defer>Delivery deferred by system filter)"
    r"|(?P<dkim>DKIM: .*)",
    re.S,
).set_parse_action(
    lambda t: (
        Kind.CHECK,
        None,
        {"action": next(a for a in ("discard", "ignore", "defer", "dkim") if t.get(a)), "text": t[0]},
    )
)

#: One host of a delivery attempt (the smtp transport's write_logs()), or
#: the older texts without ``H=``; the per-address ``==`` or ``**`` follows.
attempt_note = pp.Regex(
    r"(?P<host>H=[^\s()\[\]]+ \[[^\]\s]+\](?::\d+)?):? (?P<text>.*)"
    r"|(?P<plain>(?:SMTP error from remote mail(?:er| server)|TLS error on connection to|TLS session:"
    r"|Remote host \S+ \[[^\]]*\] closed connection|Failed to connect to) .*)",
    re.S,
)


def _attempt_note(t: pp.ParseResults) -> Reading:
    fields: dict[str, Any] = {"recipient": None}
    if t.get("host"):
        _relay(fields, _host(t["host"]))
        fields["reply"] = t["text"]
    else:
        fields["reply"] = t["plain"]
    return (Kind.DEFERRAL, None, fields)


attempt_note.set_parse_action(_attempt_note)

_PARENT_REF = re.compile(r"\(R=(\S+)\)")

#: The message's own troubles that end no delivery: spool errors, a bounce
#: that could not be written (its would-be id names the parent with R=), a
#: transport's output.
message_service = pp.Regex(
    r"(?:Format error in spool file|Error reading spool file|Spool error:|Error in system filter:"
    r"|Process failed \(\d+\) when writing error message to|<[^>]*>: \S+ transport output:"
    r"|Error while reading message with no usable sender address)(?: .*)?",
    re.S,
).set_parse_action(
    lambda t: (
        Kind.SERVICE,
        None,
        {"text": t[0], **({"bounce_of": m.group(1)} if (m := _PARENT_REF.search(t[0])) else {})},
    )
)

# -- SMTP sessions ---------------------------------------------------------------


def connect_reading(client: Host, tags: list[Tag], count: int | None) -> Reading:
    fields = _client_fields(client)
    for tag in tags:
        if tag.key == "I" and tag.value:
            interface = _host(tag.value)
            fields.update(host_fields("server", None, interface.ip, interface.port))
    if count is not None:
        fields["connection_count"] = count
    return (Kind.CONNECT, None, fields)


#: ``SMTP connection from [ip]:port (TCP/IP connection count = 1)``: the
#: daemon accepting (``+smtp_connection``); ``(via inetd)`` under inetd.
connect = (
    S("SMTP connection from")
    + CLIENT("client")
    + TAGS("tags")
    + (S("(TCP/IP connection count =") + pp.Regex(r"\d+")("count") + S(")") | S("(via inetd)"))
).set_parse_action(lambda t: connect_reading(t["client"], list(t["tags"]), int(t["count"]) if "count" in t else None))

_SESSION_TIME = re.compile(r"\bD=(" + _TIME_RE + r")")


def disconnect_reading(client: Host, reason: str, detail: str | None) -> Reading:
    fields = _client_fields(client)
    fields["reason"] = reason
    if detail:
        fields["detail"] = detail
    m = _SESSION_TIME.search(f"{reason} {detail or ''}")
    if m is not None:
        fields["duration"] = duration(m.group(1))
    return (Kind.DISCONNECT, None, fields)


#: How smtp_in.c ends a session: QUIT, a drop, a lost connection, a timeout.
disconnect = (
    (
        S("SMTP connection from")
        + CLIENT("client")
        + S(TAGS)
        + pp.Regex(r"(?:closed by QUIT|closed by DROP in ACL|closed after \S.*|(?:TLS )?lost\b.*)$", re.S)("reason")
    )
    | (
        pp.Regex(r"unexpected (?:disconnection|EOF) while reading SMTP command")("reason")
        + S("from")
        + CLIENT("client")
        + REST("detail")
    )
    | (
        pp.Regex(r"SMTP (?:command|data) timeout(?: \(message abandoned\))? on (?:TLS )?connection")("reason")
        + S("from")
        + CLIENT("client")
        + REST("detail")
    )
    | (S("SMTP call from") + CLIENT("client") + S(TAGS) + pp.Regex(r"dropped: .*", re.S)("reason"))
).set_parse_action(lambda t: disconnect_reading(t["client"], t["reason"], (t.get("detail") or "").strip() or None))

_STAGES = {
    "after DATA": "END-OF-MESSAGE",
    "after DATA PRDR": "END-OF-MESSAGE",
    "during MIME ACL checks": "END-OF-MESSAGE",
    "by local_scan()": "END-OF-MESSAGE",
    "by non-SMTP ACL": "non-SMTP",
    "connection": "CONNECT",
    "EHLO or HELO": "HELO",
}


def reject_reading(
    client: Host | None,
    tags: list[Tag],
    temporary: bool,
    what: str,
    arg: str | None,
    reply: str | None,
    **extra: Any,
) -> Reading:
    """One refusal in the SMTP dialogue (or of a local submission)."""
    fields: dict[str, Any] = {"stage": _STAGES.get(what, what), "code": None, "temporary": temporary}
    if client is not None:
        fields.update(_client_fields(client))
    for tag in tags:
        if tag.value is None:
            continue
        if tag.key == "H":
            fields.update(_client_fields(_host(tag.value)))
        elif tag.key == "F":
            fields["sender"] = _unquote(tag.value)
        elif tag.key == "A":
            fields["auth"] = tag.value
        elif tag.key == "U":
            fields["user"] = tag.value
    if arg and arg.startswith("<"):
        address = arg[1 : arg.find(">")] if ">" in arg else arg[1:]
        if what == "RCPT":
            fields["recipient"] = address
        elif what == "MAIL":
            fields.setdefault("sender", address)
    elif arg and what == "EHLO or HELO":
        fields["helo"] = arg
    reply = reply.strip() if reply is not None else None
    fields["reply"] = reply
    m = _LEADING_DSN.match(reply or "")
    fields["dsn"] = m["dsn"] if m else None
    fields.update({k: v for k, v in extra.items() if v is not None})
    return (Kind.REJECT, None, fields)


#: What an ACL refused (smtp_in.c's smtp_handle_acl_fail()): ``RCPT <x>``,
#: ``MAIL <x>``, ``DATA``, ``after DATA``, ``connection in "connect" ACL``,
#: ``EHLO or HELO name``, ...
_WHAT = (
    r"(?P<what>after DATA(?: PRDR)?|during MIME ACL checks|EHLO or HELO|by local_scan\(\)|by non-SMTP ACL"
    r"|[A-Za-z]+(?:-[A-Za-z]+)?)(?: (?P<arg>.*?))?(?=: |$)"
)
acl_reject = (
    pp.Group(pp.OneOrMore(TAG))("tags")
    + pp.Opt(pp.Keyword("temporarily"))("temporarily")
    + S(pp.Keyword("rejected"))
    + pp.Regex(_WHAT, re.S)
    + pp.Opt(S(":") + REST("reply"))
).set_parse_action(
    lambda t: reject_reading(None, list(t["tags"]), bool(t.get("temporarily")), t["what"], t.get("arg"), t.get("reply"))
)


def _reject(stage: str, t: pp.ParseResults, temporary: bool = False, **extra: Any) -> Reading:
    return reject_reading(t.get("client"), [], temporary, stage, None, t.get("reply"), **extra)


#: smtp_in.c's and the daemon's own refusals, before or outside the ACLs.
smtp_reject = (
    (
        S("rejected") + pp.one_of("EHLO HELO")("stage") + S("from") + CLIENT("client") + S(":") + REST("reply")
    ).set_parse_action(lambda t: _reject(t["stage"], t))
    | (pp.Regex(r"rejected MAIL (?:from|command)") + CLIENT("client") + S(":") + REST("reply")).set_parse_action(
        lambda t: _reject("MAIL", t)
    )
    | (S("rejected MAIL FROM:") + ANGLE_ADDR("sender") + CLIENT("client") + S(":") + REST("reply")).set_parse_action(
        lambda t: _reject("MAIL", t, sender=t["sender"])
    )
    | (S("Connection from") + CLIENT("client") + S("refused:") + REST("reply")).set_parse_action(
        lambda t: _reject("CONNECT", t, temporary=True)
    )
    | (
        pp.Opt(pp.Keyword("temporarily"))("temporarily")
        + S("refused connection from")
        + CLIENT("client")
        + pp.Opt(S(":"))
        + REST("reply")
    ).set_parse_action(lambda t: _reject("CONNECT", t, temporary=bool(t.get("temporarily"))))
    | (
        S(pp.Regex(r"SMTP protocol synchronization error \([^)]*\): rejected"))
        + pp.Regex(r'connection from|"[^"]*"')("what")
        + CLIENT("client")
        + REST("reply")
    ).set_parse_action(lambda t: _reject("CONNECT" if t["what"] == "connection from" else "UNKNOWN", t))
    | (
        pp.Regex(r"\S+ authenticator failed for")("auth") + CLIENT("client") + S(TAGS) + S(":") + REST("reply")
    ).set_parse_action(lambda t: _reject("AUTH", t, auth=t["auth"].split()[0]))
    | (
        S("unqualified")
        + pp.one_of("sender recipient")("who")
        + S("rejected:")
        + ANGLE_ADDR("address")
        + CLIENT("client")
        + REST("reply")
    ).set_parse_action(lambda t: _reject("MAIL" if t["who"] == "sender" else "RCPT", t, **{t["who"]: t["address"]}))
    | (
        pp.Regex(r"too many recipients: (?:message rejected|excess temporarily rejected)")("reply")
        + S(": sender=")
        + ANGLE_ADDR("sender")
        + CLIENT("client")
    ).set_parse_action(lambda t: _reject("RCPT", t, temporary="temporarily" in t["reply"], sender=t["sender"]))
    | (S("rejected from") + ANGLE_ADDR("sender") + pp.Opt(CLIENT("client")) + S(":") + REST("reply")).set_parse_action(
        lambda t: _reject("DATA", t, sender=t["sender"])
    )
)


def _tag_fields(tags: list[Tag]) -> dict[str, Any]:
    """The client (``H=``) and sender (``F=``) of an SMTP-session line."""
    fields: dict[str, Any] = {}
    for tag in tags:
        if tag.key == "H" and tag.value:
            fields.update(_client_fields(_host(tag.value)))
        elif tag.key == "F" and tag.value:
            fields["sender"] = _unquote(tag.value)
    return fields


#: An ACL ``discard`` of one recipient: it vanishes without a word to the client.
acl_discard = (
    pp.Group(pp.OneOrMore(TAG))("tags")
    + S("RCPT")
    + ANGLE_ADDR("recipient")
    + S(":")
    + pp.Regex(r"discarded by .*", re.S)("text")
).set_parse_action(
    lambda t: (
        Kind.CHECK,
        None,
        {"action": "discard", "text": t["text"], "recipient": t["recipient"], **_tag_fields(list(t["tags"]))},
    )
)

#: An ACL ``warn`` with ``log_message``, or a warn statement skipped.
acl_warn = (pp.Group(pp.OneOrMore(TAG))("tags") + S("Warning:") + REST("text")).set_parse_action(
    lambda t: (Kind.CHECK, None, {"action": "warn", "text": t["text"], **_tag_fields(list(t["tags"]))})
)


def _session_note(text: str, client: Host, **extra: Any) -> Reading:
    fields: dict[str, Any] = {"text": text.strip(), **_client_fields(client)}
    fields.update({k: v for k, v in extra.items() if v is not None})
    return (Kind.SERVICE, None, fields)


_COMMANDS = re.compile(r"\bC=(\S+)")
_FROM_SENDER = re.compile(r"\bfrom <([^<>]*)>")

#: Notes about a session that neither refuse nor end it: a session without
#: MAIL (``+smtp_no_mail``), a transaction given up (RSET, QUIT, a lost
#: connection: ``+smtp_incomplete_transaction``), a sender verification.
session_note = (
    (S("no MAIL in") + pp.Opt("TLS") + S("SMTP connection from") + CLIENT("client") + REST("rest")).set_parse_action(
        lambda s, loc, t: _session_note(
            s[loc:],
            t["client"],
            commands=(m.group(1) if (m := _COMMANDS.search(t["rest"])) else None),
            duration=(duration(m.group(1)) if (m := _SESSION_TIME.search(t["rest"])) else None),
        )
    )
    | (S("H=") + CLIENT("client") + S(TAGS) + pp.Regex(r"incomplete transaction \(.*", re.S)("text")).set_parse_action(
        lambda s, loc, t: _session_note(
            s[loc:], t["client"], sender=(m.group(1) if (m := _FROM_SENDER.search(t["text"])) else None)
        )
    )
    | (
        S("H=")
        + CLIENT("client")
        + S(TAGS)
        + pp.Regex(r"sender verify (?:fail|defer) for <(?P<verified>[^>]*)>.*", re.S)
    ).set_parse_action(lambda s, loc, t: _session_note(s[loc:], t["client"], sender=t["verified"]))
)

# -- what Exim says about itself ----------------------------------------------------

#: Daemon and queue-runner life, ``+arguments``, DNS and TLS notes, warnings
#: with no message: known shapes only, each from Exim's own format strings.
_SERVICE = re.compile(
    r"(?:exim \S+ daemon (?:started|terminating)\b"
    r"|pid \d+: SIGHUP received: re-exec daemon|daemon: |socket bind\(\) to port \d+ "
    r"|(?:Start|End)(?: '[^']*')? queue run: |Abandon queue run: "
    r"|cwd=\S* \d+ args: "
    r"|no host name found for IP address |no IP address found for host |host name alias list truncated for "
    r"|DNS list lookup (?:defer|for) |TLS error on connection from |SMTP \S+ error in \""
    r"|\S+ router: skipped error: |DKIM: |Warning: |\s*Suggested action: "
    r"|(?:spool|log) directory space check failed|Failed to create spool file ).*",
    re.S,
)
service = pp.Regex(_SERVICE).set_parse_action(lambda t: (Kind.SERVICE, None, {"text": t[0].strip()}))

#: What may follow ``<message id> ``. Order matters where a shape is a
#: special case of a later one (``=> blackhole`` is not a delivery).
with_id = (
    arrival
    | filter_check
    | delivery
    | deferral
    | failure
    | completed
    | admin
    | no_immediate
    | message_service
    | acl_reject
    | acl_warn
    | smtp_reject
    | disconnect
    | attempt_note
    | error_ignored
)
#: Payloads without a message id.
without_id = connect | disconnect | acl_reject | acl_discard | acl_warn | smtp_reject | session_note | service

GRAMMAR = (MESSAGE_ID("queue_id") + with_id("reading")) | without_id("reading")


def parse_grammar(payload: str) -> Reading | None:
    """The reference reading of an Exim payload; None when not understood."""
    return read(GRAMMAR, payload)


# -- lines that continue the entry above them -------------------------------------------

_ENVELOPE_DUMP = re.compile(r"(?P<name>Envelope-from|Envelope-to|Recipients): ?(?P<value>.*)", re.S)
#: The reject log's copy of the header: a flag (P Received, I Message-ID,
#: F From, T To, C Cc, R Reply-To, S Sender, B Bcc, * deleted, space for the
#: rest), a space, the header line; folded lines start with white space
#: (rsyslog shows a tab as ``#011``).
_HEADER_DUMP = re.compile(r"(?:[A-Z*]| ) (?P<name>[!-9;-~]+):(?: .*)?", re.S)
_FOLDED = re.compile(r"(?:[ \t]|#011)+\S.*", re.S)
_SUGGESTION = re.compile(r"\s*Suggested action: .*", re.S)
_ANGLED = re.compile(r"<([^<>]*)>")


def continuation(text: str) -> Reading | None:
    """A line that belongs to the log entry above it, or None.

    Exim writes some entries over several lines: a rejection with the
    message's header (reject log), a warning with a suggested action. In a
    log file the later lines have no date; through syslog they are the
    ``[n\\m]`` parts after the first. The dispatcher calls this for lines
    that have no envelope of their own.
    """
    if _SUGGESTION.fullmatch(text):
        return (Kind.SERVICE, None, {"text": text.strip(), "continuation": True})
    fields: dict[str, Any] = {"continuation": True, "text": text}
    m = _ENVELOPE_DUMP.fullmatch(text)
    if m is not None:
        fields["header"] = m["name"]
        value = m["value"].strip()
        if m["name"] == "Envelope-from":
            fields["sender"] = _unquote(value)
        else:
            addresses = _ANGLED.findall(value) or [a.strip() for a in value.split(",") if a.strip()]
            fields["recipients"] = addresses
            if len(addresses) == 1:
                fields["recipient"] = addresses[0]
        return (Kind.REJECT, None, fields)
    m = _HEADER_DUMP.fullmatch(text)
    if m is not None:
        fields["header"] = m["name"]
        return (Kind.REJECT, None, fields)
    if _FOLDED.fullmatch(text):
        fields["header"] = None
        return (Kind.REJECT, None, fields)
    return None


#: ``[n\m]`` / ``[n/m]``: part n of m of one entry that Exim split for
#: syslog, at a newline (``\``) or after 870 characters (``/``, and always
#: on the last part). Only the first part carries Exim's own date.
_SYSLOG_PART = re.compile(r"\[(?P<n>\d+)[\\/](?P<m>\d+)\] ")
_EXIM_DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?(?: [+-]\d{4})?(?: \[\d+\])? ")


def _syslog_part(n: int, total: int, text: str) -> Reading | None:
    if n > 1:
        return continuation(text)
    date = _EXIM_DATE.match(text)
    if date is not None:
        text = text[date.end() :]
    reading = fast(text) or parse_grammar(text)
    if reading is not None and total > 1:
        reading[2]["parts"] = total
    return reading


# -- the fast path ---------------------------------------------------------------------
#
# The grammar's own tokens, matched left to right without backtracking as
# pyparsing matches them (atomic groups and possessive repeats where a token
# sits inside a larger expression), so that the two can only differ in what
# they accept: the fast path wants single spaces and gives up on the rest.

#: ``=>`` lines that are the system filter or the DATA ACL, not a delivery.
_FILTER_OUT = ("discarded (system filter)", "blackhole (")
_FAST_HEAD = re.compile(rf"(?P<qid>{_ID_RE}) (?P<flag><=|\(=|=>|->|>>|\*>|==|\*\*) ")
_ADDRESS_OUT_AT = re.compile(_ADDRESS_OUT, re.S)
_ADDRESS_DEFER_AT = re.compile(_ADDRESS_DEFER, re.S)
_ADDRESS_FAIL_AT = re.compile(_ADDRESS_FAIL, re.S)
_SENDER_AT = re.compile(_SENDER_RE)
_TAG_AT = re.compile(" (" + _TAG_RE + ")")
_IN_TAIL = re.compile(r'(?: from <(?P<from>(?:"[^"]*"|[^<>"])*)>)?(?: for (?P<for>.*))?\s*', re.S)
_DEFER_AT = re.compile(rf"(?: (?P<stage>routing|transporting))? (?P<defer>{_DEFER_RE})")
_TEXT_TAIL = re.compile(r"(?:: (?P<msg>.*))?\s*", re.S)
_FAST_COMPLETED = re.compile(rf"(?P<qid>{_ID_RE}) Completed(?: QT=(?P<qt>{_TIME_RE}))?\s*")
# An atomic group around a greedy repeat, which is what a possessive repeat
# is: Python 3.11.2 (Debian 12's) fails "(?: (?>TAG))*+" when it repeats no
# times, and the fast path then silently gave every session line to the grammar.
_FAST_TAGS = rf"(?>(?: (?>{_TAG_RE}))*)"
_FAST_SESSION = re.compile(
    rf"SMTP connection from (?P<client>(?>{_CLIENT_RE}))(?P<tags>{_FAST_TAGS})"
    r" (?:\(TCP/IP connection count = (?P<count>\d+)\)\s*|(?P<reason>closed by QUIT|lost\b.*))",
    re.S,
)
_ID_AT = re.compile(rf"(?P<qid>{_ID_RE}) ")
_FAST_SESSION_END = re.compile(
    r"(?P<reason>unexpected (?:disconnection|EOF) while reading SMTP command"
    r"|SMTP (?:command|data) timeout(?: \(message abandoned\))? on (?:TLS )?connection)"
    rf" from (?P<client>(?>{_CLIENT_RE}))(?P<detail>.*)",
    re.S,
)
_FAST_AUTH = re.compile(
    rf"(?P<auth>\S+) authenticator failed for (?P<client>(?>{_CLIENT_RE})){_FAST_TAGS}:\s*(?P<reply>.*)", re.S
)
_FAST_REJECT = re.compile(
    rf"(?:(?P<qid>{_ID_RE}) )?(?P<tags>(?>{_TAG_RE}){_FAST_TAGS}) (?P<temp>temporarily )?rejected {_WHAT}"
    r"(?:: (?P<reply>.*))?",
    re.S,
)


def _scan_tags(payload: str, pos: int) -> tuple[list[Tag], int]:
    """``KEY=value`` fields from ``pos`` on, as many as there are (ZeroOrMore)."""
    tags: list[Tag] = []
    match = _TAG_AT.match
    while (m := match(payload, pos)) is not None:
        tags.append(_tag(m.group(1)))
        pos = m.end()
    return tags, pos


def _fast_flagged(flag: str, payload: str, pos: int) -> Reading | None:
    """What follows ``<id> <flag> ``."""
    if flag == "<=" or flag == "(=":
        sender = _SENDER_AT.match(payload, pos)
        if sender is None:
            return None
        tags, pos = _scan_tags(payload, sender.end())
        tail = _IN_TAIL.fullmatch(payload, pos)
        if tail is None:
            return None
        return arrival_reading(flag, sender.group(), tags, tail["from"], tail["for"])
    if flag == "==":
        addr = _ADDRESS_DEFER_AT.match(payload, pos)
        if addr is None:
            return None
        tags, pos = _scan_tags(payload, addr.end())
        defer = _DEFER_AT.match(payload, pos)
        if defer is None:
            return None
        after, pos = _scan_tags(payload, defer.end())
        tail = _TEXT_TAIL.fullmatch(payload, pos)
        if tail is None:
            return None
        return deferral_reading(_address(addr), tags, defer["stage"], defer["defer"], after, tail["msg"])
    if flag == "**":
        addr = _ADDRESS_FAIL_AT.match(payload, pos)
        if addr is None:
            return None
        tags, pos = _scan_tags(payload, addr.end())
        tail = _TEXT_TAIL.fullmatch(payload, pos)
        if tail is None:
            return None
        return failure_reading(_address(addr), tags, tail["msg"])
    if payload.startswith(_FILTER_OUT, pos):
        return None
    addr = _ADDRESS_OUT_AT.match(payload, pos)
    if addr is None:
        return None
    tags, pos = _scan_tags(payload, addr.end())
    if payload[pos:] and not payload[pos:].isspace():
        return None
    return delivery_reading(flag, _address(addr), tags)


def fast(payload: str) -> Reading | None:
    """The common shapes, without pyparsing; None to fall back to the grammar."""
    head = _FAST_HEAD.match(payload)
    if head is not None:
        reading = _fast_flagged(head["flag"], payload, head.end())
        if reading is not None:
            reading = with_queue_id(reading, head["qid"])
        return reading
    qid = _ID_AT.match(payload)
    if qid is not None:
        m = _ADMIN.fullmatch(payload, qid.end())
        if m is not None:
            reading = _admin_reading(m)
            reading = with_queue_id(reading, qid["qid"])
            return reading
    m = _SERVICE.fullmatch(payload)
    if m is not None:
        return (Kind.SERVICE, None, {"text": payload.strip()})
    c = payload[:1]
    if c == "S":
        m = _FAST_SESSION.fullmatch(payload)
        if m is not None:
            client = _host(m["client"])
            if m["reason"]:
                return disconnect_reading(client, m["reason"], None)
            return connect_reading(client, _scan_tags(m["tags"], 0)[0], int(m["count"]))
    if c == "u" or c == "S":
        m = _FAST_SESSION_END.fullmatch(payload)
        if m is not None:
            return disconnect_reading(_host(m["client"]), m["reason"], m["detail"].strip() or None)
    m = _FAST_AUTH.fullmatch(payload)
    if m is not None:
        return reject_reading(_host(m["client"]), [], False, "AUTH", None, m["reply"], auth=m["auth"])
    if c == "H" or payload[17:19] == "H=" or payload[24:26] == "H=":
        m = _FAST_REJECT.fullmatch(payload)
        if m is not None:
            tags = _scan_tags(" " + m["tags"], 0)[0]
            reading = reject_reading(None, tags, bool(m["temp"]), m["what"], m["arg"], m["reply"])
            reading = with_queue_id(reading, m["qid"])
            return reading
    m = _FAST_COMPLETED.fullmatch(payload)
    if m is not None:
        return (Kind.REMOVED, m["qid"], {"delay": duration(m["qt"])} if m["qt"] else {})
    return None


def parse(payload: str, program: str | None = None) -> Reading | None:
    """An Exim payload (main log, reject log, or through syslog) read by the
    fast path, else by the grammar; None when not understood.

    ``program`` is not needed: Exim's lines name their own transport (``T=``).
    """
    if payload[:1] == "[":
        m = _SYSLOG_PART.match(payload)
        if m is not None:
            return _syslog_part(int(m["n"]), int(m["m"]), payload[m.end() :])
    return fast(payload) or parse_grammar(payload)
