"""Postfix log payloads.

The grammar follows what Postfix 3.x writes, daemon by daemon (see
postfix.org's DEBUG_README and the daemons' man pages): ``smtpd`` and
``postscreen`` for the SMTP dialogue, ``cleanup`` for the Message-ID and
header/body checks, ``qmgr`` for the envelope, the delivery agents (smtp,
lmtp, local, virtual, pipe, error, discard, retry) for one line per
recipient and attempt, ``bounce`` for the notifications it creates, and
``postsuper`` for the administrator's hand.

``GRAMMAR`` is the reference. ``fast`` reads the handful of shapes that make
up nearly every line of a busy log with one regular expression each; a
differential test holds it to the grammar on the whole sample corpus.
"""

from __future__ import annotations

import re
from typing import Any

import pyparsing as pp

from .events import Kind
from .grammar import (
    ANGLE_ADDR,
    DECIMAL,
    DSN_CODE,
    HOST_ADDR,
    NUMBER,
    REST,
    Reading,
    addr_fields,
    host_fields,
    queued_as,
    read,
)

S = pp.Suppress

# Short ids are upper-case hex (their length depends on the machine); long
# ids (enable_long_queue_ids) use a base-52 alphabet without vowels. One
# class holds both (hex's A and E included, the other vowels not), so that
# "NOQUEUE", "warning" or "statistics" never pass for a queue id.
_QID_RE = r"[0-9A-HJ-NP-TV-Zb-df-hj-np-tv-z]{5,}"
QUEUE_ID = pp.Regex(f"{_QID_RE}(?=:)").set_name("queue id")

# -- delivery agents: one line per recipient and attempt ---------------------

STATUS = pp.one_of("deferred sent bounced expired undeliverable deliverable softbounce")
RELAY = pp.Regex(r"[^,\s]+").set_name("relay")

delivery = (
    S("to=")
    + ANGLE_ADDR("recipient")
    + pp.Opt(S(", orig_to=") + ANGLE_ADDR("orig_recipient"))
    + S(", relay=")
    + RELAY("relay")
    + pp.Opt(S(", conn_use=") + NUMBER("conn_use"))
    + S(", delay=")
    + DECIMAL("delay")
    + S(", delays=")
    + pp.Regex(r"[\d.]+/[\d.]+/[\d.]+/[\d.]+")("delays")
    + pp.Opt(S(", dsn=") + DSN_CODE("dsn"))
    + S(", status=")
    + STATUS("status")
    + pp.Opt(S("(") + pp.Regex(r".*(?=\)$)", re.S)("reply") + S(")"))
)


def delivery_reading(
    recipient: str,
    orig: str | None,
    relay: str,
    conn_use: int | None,
    delay: float,
    delays: str,
    dsn: str | None,
    status: str,
    reply: str | None,
    relay_parts: tuple[str, str, str | None] | None = None,
) -> Reading:
    """One shape for the grammar and the fast path, so that they can only
    differ in what they match, never in what they make of it.

    ``relay_parts`` is (host, ip, port) when the caller's match already
    split a ``host[ip]:port`` relay; otherwise the relay is split here.
    """
    fields: dict[str, Any] = {
        "recipient": recipient,
        "orig_recipient": orig,
        "relay": relay,
        "delay": delay,
        "delays": delays,
        "dsn": dsn,
        "status": status,
        "reply": reply,
    }
    if relay_parts is None and "[" in relay:
        m = _RELAY_HOST(relay)
        if m is not None:
            relay_parts = m.groups()
    if relay_parts is not None:
        fields.update(host_fields("relay", *relay_parts))
    if conn_use is not None:
        fields["conn_use"] = conn_use
    if status == "sent" and reply and " as " in reply:
        # The next hop's id ("queued as"), or local's re-submission of an
        # alias or .forward to a new queue id ("forwarded as").
        qa = queued_as(reply)
        if qa:
            fields["queued_as"] = qa
        fw = _FORWARDED(reply)
        if fw:
            fields["forwarded_as"] = fw.group(1)
    return Reading(_DEFERRAL if status == "deferred" else _DELIVERY, None, fields)


_DELIVERY, _DEFERRAL = Kind.DELIVERY, Kind.DEFERRAL  # enum attribute lookups are not free per line
_RELAY_HOST = re.compile(r"([^\s\[\]]*)\[([^\]\s]*)\](?::(\d+))?$").match
_FORWARDED = re.compile(r"forwarded as ([0-9A-Za-z]+)").search

delivery.set_parse_action(
    lambda t: delivery_reading(
        t["recipient"],
        t.get("orig_recipient"),
        t["relay"],
        t.get("conn_use"),
        t["delay"],
        t["delays"],
        t.get("dsn"),
        t["status"],
        t.get("reply"),
    )
)

# -- qmgr ---------------------------------------------------------------------

enqueue = (
    S("from=")
    + ANGLE_ADDR("sender")
    + S(", size=")
    + NUMBER("size")
    + S(", nrcpt=")
    + NUMBER("nrcpt")
    + S("(queue active)")
).set_parse_action(
    lambda t: Reading(Kind.ENQUEUE, None, {"sender": t["sender"], "size": t["size"], "nrcpt": t["nrcpt"]})
)
expired = (S("from=") + ANGLE_ADDR("sender") + S(", status=expired, returned to sender")).set_parse_action(
    lambda t: Reading(Kind.EXPIRED, None, {"sender": t["sender"]})
)
removed = (pp.Keyword("removed") + pp.StringEnd()).set_parse_action(lambda t: Reading(Kind.REMOVED, None, {}))

# -- smtpd / cleanup / pickup -------------------------------------------------


def _client_extra(extra: str | None) -> dict[str, Any]:
    """``sasl_method=PLAIN, sasl_username=joe, orig_queue_id=..., orig_client=...``"""
    out: dict[str, Any] = {}
    for item in (extra or "").split(","):
        key, _, value = item.strip().partition("=")
        if key:
            out[key] = value
    return out


client = (S("client=") + HOST_ADDR("client") + pp.Opt(S(",") + REST("extra"))).set_parse_action(
    lambda t: Reading(Kind.CLIENT, None, {**addr_fields("client", t["client"]), **_client_extra(t.get("extra"))})
)
message_id = (pp.Regex(r"(resent-)?message-id=")("header") + pp.Regex(r".*", re.S)("value")).set_parse_action(
    lambda t: Reading(Kind.MESSAGE_ID, None, {"message_id": t["value"], "resent": t["header"] == "resent-message-id="})
)
pickup = (S("uid=") + NUMBER("uid") + S("from=") + ANGLE_ADDR("sender")).set_parse_action(
    lambda t: Reading(Kind.PICKUP, None, {"uid": t["uid"], "sender": t["sender"]})
)

#: ``from=<a> to=<b> proto=ESMTP helo=<h>`` closing a reject or a check;
#: postscreen separates the four with commas.
envelope_tail = (
    S(";")
    + pp.Opt(S("from=") + ANGLE_ADDR("sender") + pp.Opt(S(",")))
    + pp.Opt(S("to=") + ANGLE_ADDR("recipient") + pp.Opt(S(",")))
    + pp.Opt(S("proto=") + pp.Regex(r"[A-Z]+")("protocol") + pp.Opt(S(",")))
    + pp.Opt(S("helo=") + ANGLE_ADDR("helo"))
)
#: Free text up to the envelope tail; the text itself may hold ";".
TEXT_TO_TAIL = pp.Regex(r".*(?=; (?:from=<|to=<|proto=|helo=<))|[^:]*(?=: )|.*", re.S)

SMTP_STAGE = pp.Regex(r"CONNECT|EHLO|HELO|MAIL|RCPT|DATA|END-OF-MESSAGE|BDAT|VRFY|ETRN|AUTH|STARTTLS|UNKNOWN")

#: smtpd's access decisions: ``reject: RCPT from host[ip]: 550 5.1.1 <x>: text; from=<> to=<> proto= helo=<>``
smtpd_action = (
    pp.Regex(r"reject_warning|reject|milter-reject|milter-hold|milter-discard|hold|discard|redirect|filter|warn")(
        "action"
    )
    + S(":")
    + SMTP_STAGE("stage")
    + S("from")
    + HOST_ADDR("client")
    + S(":")
    + pp.Opt(pp.Regex(r"[245]\d\d(?= )")("code"))
    + pp.Opt(DSN_CODE("dsn"))
    + TEXT_TO_TAIL("reply")
    + pp.Opt(envelope_tail)
    + pp.Opt(S(":") + REST("detail"))
)

#: cleanup's header_checks/body_checks:
#: ``hold: header Subject: x from host[ip]; from=<> to=<> proto=ESMTP helo=<h>: optional text``
check_action = (
    pp.Regex(r"reject|warning|info|hold|discard|redirect|replace|filter|prepend|bcc|strip|dunno")("action")
    + S(":")
    + pp.Regex(r"header|body|mime-header|nested-header")("what")
    + pp.Regex(r".*?(?= from [^\s\[\]]*\[[^\]]*\](?::\d+)?;)|.*(?=; from=<)|.*", re.S)("text")
    + pp.Opt(S("from") + HOST_ADDR("client"))
    + pp.Opt(envelope_tail)
    + pp.Opt(S(":") + REST("detail"))
)

_ENVELOPE_KEYS = ("sender", "recipient", "protocol", "helo", "detail")


def _reject(t: pp.ParseResults) -> Reading:
    action = t["action"]
    fields: dict[str, Any] = {"action": action, "stage": t["stage"], **addr_fields("client", t["client"])}
    fields["code"] = int(t["code"]) if "code" in t else None
    fields["dsn"] = t.get("dsn")
    fields["reply"] = t["reply"].strip()
    fields.update((k, t[k]) for k in _ENVELOPE_KEYS if k in t)
    return Reading(Kind.REJECT if action in ("reject", "milter-reject") else Kind.CHECK, None, fields)


def _check(t: pp.ParseResults) -> Reading:
    action = t["action"]
    fields: dict[str, Any] = {"action": action, "what": t["what"], "text": t["text"].strip()}
    if "client" in t:
        fields.update(addr_fields("client", t["client"]))
    fields.update((k, t[k]) for k in _ENVELOPE_KEYS if k in t)
    return Reading(Kind.REJECT if action == "reject" else Kind.CHECK, None, fields)


smtpd_action.set_parse_action(_reject)
check_action.set_parse_action(_check)

connect = (S("connect from") + HOST_ADDR("client") + pp.StringEnd()).set_parse_action(
    lambda t: Reading(Kind.CONNECT, None, addr_fields("client", t["client"]))
)
disconnect = (S("disconnect from") + HOST_ADDR("client") + REST("commands")).set_parse_action(
    lambda t: Reading(Kind.DISCONNECT, None, {**addr_fields("client", t["client"]), "commands": t["commands"].strip()})
)

# -- bounce / postsuper / smtp notes -------------------------------------------

notification = (
    pp.Regex(r"sender|postmaster")("to")
    + pp.Regex(r"non-delivery|delay|delivery status")("notification")
    + S("notification:")
    + pp.Regex(f"{_QID_RE}$")("child")
).set_parse_action(
    lambda t: Reading(Kind.BOUNCE, None, {"child": t["child"], "notification": t["notification"], "to": t["to"]})
)
#: postsuper on one message; its "removed" is the REMOVED rule above.
admin = (pp.Regex(r"placed on hold|released from hold|requeued")("action") + pp.StringEnd()).set_parse_action(
    lambda t: Reading(Kind.ADMIN, None, {"action": t["action"]})
)
#: The smtp client's notes about one host of an attempt; the per-recipient
#: line follows. No recipient: the whole attempt to that host failed.
attempt_note = pp.Regex(
    r"(?:host \S+ (?:said|refused to talk to me)|lost connection with|conversation with|"
    r"enabling PIX workarounds|connect to|Server certificate not verified|TLS is required)\b.*",
    re.S,
).set_parse_action(lambda t: Reading(Kind.DEFERRAL, None, {"recipient": None, "reply": t[0]}))

# -- postscreen ---------------------------------------------------------------

ps_connect = (S("CONNECT from") + HOST_ADDR("client") + S("to") + HOST_ADDR("server")).set_parse_action(
    lambda t: Reading(Kind.CONNECT, None, {**addr_fields("client", t["client"]), **addr_fields("server", t["server"])})
)
ps_disconnect = (S("DISCONNECT") + HOST_ADDR("client")).set_parse_action(
    lambda t: Reading(Kind.DISCONNECT, None, addr_fields("client", t["client"]))
)

# -- what Postfix says about itself ----------------------------------------------

#: Notices that concern no message: daemon life, statistics, TLS and
#: connection-level notes, postsuper's totals, postscreen's verdicts,
#: and every warning/fatal/panic (free text by nature).
service = pp.Regex(
    r"(?:warning|fatal|panic|error): .*"
    r"|statistics: .*"
    r"|daemon started -- .*|reload -- .*|terminating on signal \d+"
    r"|(?:starting|stopping|refreshing) the Postfix mail system|waiting for the Postfix mail system to terminate"
    r"|the Postfix mail system is (?:not )?running(?:: PID: \d+)?"
    r"|(?:lost connection|timeout|too many errors|improper command pipelining) after \S+(?: \(.*\))? from .*"
    r"|(?:Anonymous|Untrusted|Trusted|Verified) TLS connection established (?:from|to) .*"
    r"|setting up TLS connection (?:from|to) .*|SSL_(?:accept|connect) error .*|TLS library problem: .*"
    r"|(?:Deleted|Requeued|Placed on hold|Released from hold): \d+ messages?"
    r"|(?:PASS (?:NEW|OLD)|DNSBL rank \d+ for|PREGREET \d+ after|HANGUP after|COMMAND (?:PIPELINING|COUNT LIMIT)"
    r"|NON-SMTP COMMAND|BARE NEWLINE|WHITELISTED|BLACKLISTED|ALLOWLISTED|DENYLISTED|WHITELIST VETO"
    r"|ALLOWLIST VETO|NOQUEUE: lost connection) .*"
    r"|cache \S+ full cleanup: .*|connect to \S+: .*|mapping DSN status .*",
    re.S,
).set_parse_action(lambda t: Reading(Kind.SERVICE, None, {"text": t[0]}))

#: What may follow ``QUEUEID: ``.
with_queue_id = (
    delivery
    | enqueue
    | expired
    | removed
    | client
    | message_id
    | pickup
    | notification
    | smtpd_action
    | check_action
    | admin
    | attempt_note
)
#: Payloads without a queue id.
without_queue_id = (S("NOQUEUE:") + smtpd_action) | connect | disconnect | ps_connect | ps_disconnect | service

GRAMMAR = (QUEUE_ID("queue_id") + S(":") + with_queue_id("reading")) | without_queue_id("reading")


def parse_grammar(payload: str) -> Reading | None:
    """The reference reading of a Postfix payload; None when not understood."""
    return read(GRAMMAR, payload)


# -- the fast path --------------------------------------------------------------
#
# After "QUEUEID: " the first four characters say which shape it can be, so
# each line meets one regular expression, not a list of them. Addresses are
# matched as <[^>]*>: a quoted local part holding ">" fails here and goes to
# the grammar, which reads it.

_IS_QID = re.compile(_QID_RE).fullmatch
#: Strings already found to be queue ids.
_QIDS: set[str] = set()
# Character classes here are ASCII ranges, not \s and \d: the regex engine
# tests ranges several times faster (a quarter off a delivery line), and
# being stricter than the grammar is safe, since a line the fast path
# declines goes to the grammar. Printable US-ASCII is !-~; from it,
_HOST = r"[!-Z\\^-~]"  # a host name: not "[" or "]"
_IP = r"[!-\\^-~]"  # an address in brackets: not "]"
_RELAY_NAME = r"[!-+\--Z\\^-~]"  # a relay's host: not "[", "]" or ","
_RELAY_IP = r"[!-+\--\\^-~]"  # a relay's address: not "]" or ","
_RELAY = r"[!-+\--~]"  # a relay without an address (local, none): not ","
_DSN = r"[245]\.[0-9]{1,3}\.[0-9]{1,3}"

_FAST_DELIVERY = re.compile(
    rf"to=<([^>]*)>(?:, orig_to=<([^>]*)>)?, relay=(({_RELAY_NAME}*)\[({_RELAY_IP}*)\](?::([0-9]+))?|{_RELAY}+)"
    r"(?:, conn_use=([0-9]+))?, delay=([0-9]+(?:\.[0-9]+)?)"
    rf", delays=([0-9.]+/[0-9.]+/[0-9.]+/[0-9.]+)(?:, dsn=({_DSN}))?"
    r", status=(deferred|sent|bounced|expired|undeliverable|deliverable|softbounce)(?: \((.*)\))?$",
    re.S,
).match
_FAST_ENQUEUE = re.compile(r"from=<([^>]*)>, size=([0-9]+), nrcpt=([0-9]+) \(queue active\)$").match
_FAST_CLIENT = re.compile(rf"client=({_HOST}*)\[({_IP}*)\](?::([0-9]+))?$").match
_FAST_NOTIFICATION = re.compile(
    r"(sender|postmaster) (non-delivery|delay|delivery status) notification: (" + _QID_RE + ")$"
).match
_FAST_REJECT = re.compile(
    rf"reject: (RCPT|MAIL|DATA|END-OF-MESSAGE|CONNECT|EHLO|HELO) from ({_HOST}*)\[({_IP}*)\](?::([0-9]+))?: "
    rf"([245][0-9][0-9]) ({_DSN}) (.*); from=<([^>]*)> to=<([^>]*)> proto=([A-Z]+) helo=<([^>]*)>$",
    re.S,
).match
_FAST_CONNECT = re.compile(rf"(dis)?connect from ({_HOST}*)\[({_IP}*)\](?::([0-9]+))?((?: .*)?)$", re.S).match


_CONNECT, _DISCONNECT, _CLIENT, _ENQUEUE = Kind.CONNECT, Kind.DISCONNECT, Kind.CLIENT, Kind.ENQUEUE
_MESSAGE_ID, _REMOVED, _BOUNCE, _REJECT = Kind.MESSAGE_ID, Kind.REMOVED, Kind.BOUNCE, Kind.REJECT


def fast(payload: str) -> Reading | None:
    """The common shapes, without pyparsing; None to fall back to the grammar."""
    colon = payload.find(": ")
    if colon < 0:
        m = _FAST_CONNECT(payload)
        if m is None:
            return None
        dis, host, ip, port, commands = m.groups()
        fields = host_fields("client", host, ip, port)
        if dis:
            fields["commands"] = commands.strip()
            return Reading(_DISCONNECT, None, fields)
        return None if commands else Reading(_CONNECT, None, fields)
    qid = payload[:colon]
    rest = payload[colon + 2 :]
    if qid == "NOQUEUE":
        return _reject_reading(None, rest)
    if qid not in _QIDS:  # each id recurs on every line of its message
        if _IS_QID(qid) is None:
            return None
        if len(_QIDS) >= 65_536:
            _QIDS.clear()
        _QIDS.add(qid)
    head = rest[:4]
    if head == "to=<":
        m = _FAST_DELIVERY(rest)
        if m is None:
            return None
        rcpt, orig, relay, host, ip, port, conn, delay, delays, dsn, status, reply = m.groups()
        reading = delivery_reading(
            rcpt,
            orig,
            relay,
            int(conn) if conn else None,
            float(delay),
            delays,
            dsn,
            status,
            reply,
            (host, ip, port) if ip is not None else None,
        )
        reading.queue_id = qid
        return reading
    if head == "from":
        m = _FAST_ENQUEUE(rest)
        if m is None:
            return None
        sender, size, nrcpt = m.groups()
        return Reading(_ENQUEUE, qid, {"sender": sender, "size": int(size), "nrcpt": int(nrcpt)})
    if head == "mess":
        if rest.startswith("message-id="):
            return Reading(_MESSAGE_ID, qid, {"message_id": rest[11:], "resent": False})
        return None
    if head == "remo":
        return Reading(_REMOVED, qid, {}) if rest == "removed" else None
    if head == "clie":
        m = _FAST_CLIENT(rest)
        return Reading(_CLIENT, qid, host_fields("client", *m.groups())) if m is not None else None
    if head == "send" or head == "post":
        m = _FAST_NOTIFICATION(rest)
        if m is None:
            return None
        to, notification, child = m.groups()
        return Reading(_BOUNCE, qid, {"child": child, "notification": notification, "to": to})
    if head == "reje":
        return _reject_reading(qid, rest)
    return None


def _reject_reading(qid: str | None, rest: str) -> Reading | None:
    m = _FAST_REJECT(rest)
    if m is None:
        return None
    stage, host, ip, port, code, dsn, reply, sender, recipient, protocol, helo = m.groups()
    fields: dict[str, Any] = {"action": "reject", "stage": stage, **host_fields("client", host, ip, port)}
    fields.update(
        code=int(code), dsn=dsn, reply=reply.strip(), sender=sender, recipient=recipient, protocol=protocol, helo=helo
    )
    return Reading(_REJECT, qid, fields)


def parse(payload: str, program: str | None = None) -> Reading | None:
    """A Postfix payload read by the fast path, else by the grammar.

    A delivery's ``transport`` is the delivery agent that wrote it (smtp,
    lmtp, local, virtual, pipe...): the last part of the program name.
    """
    reading = fast(payload) or parse_grammar(payload)
    if reading is not None and program and reading.kind in _ATTEMPTS and reading.fields.get("recipient"):
        reading.fields["transport"] = program.rpartition("/")[2]
    return reading


_ATTEMPTS = (_DELIVERY, _DEFERRAL)
