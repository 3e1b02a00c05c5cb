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
)

S = pp.Suppress

# Short ids are upper-case hex (their length depends on the machine); long
# ids (enable_long_queue_ids) use a base-52 alphabet without vowels.
_QID_RE = r"[0-9A-F]{5,}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}"
QUEUE_ID = pp.Regex(f"(?:{_QID_RE})(?=:)").set_name("queue id")

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
) -> Reading:
    """One shape for the grammar and the fast path, so that they can only
    differ in what they match, never in what they make of it."""
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
    m = _RELAY_HOST.match(relay)
    if m is not None:
        fields.update(host_fields("relay", m["host"], m["ip"], m["port"]))
    if conn_use is not None:
        fields["conn_use"] = conn_use
    if status == "sent" and reply:
        # The next hop's id ("queued as"), or local's re-submission of an
        # alias or .forward to a new queue id ("forwarded as").
        qa = queued_as(reply)
        if qa:
            fields["queued_as"] = qa
        fw = _FORWARDED.search(reply)
        if fw:
            fields["forwarded_as"] = fw.group(1)
    return Reading(Kind.DEFERRAL if status == "deferred" else Kind.DELIVERY, None, fields)


_RELAY_HOST = re.compile(r"(?P<host>[^\s\[\]]*)\[(?P<ip>[^\]\s]*)\](?::(?P<port>\d+))?$")
_FORWARDED = re.compile(r"forwarded as ([0-9A-Za-z]+)")

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
    + pp.Regex(f"(?:{_QID_RE})$")("child")
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
    r"|(?:starting|stopping|refreshing) the Postfix mail system"
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
    try:
        t = GRAMMAR.parse_string(payload, parse_all=True)
    except pp.ParseException:
        return None
    reading: Reading = t["reading"] if isinstance(t["reading"], Reading) else t["reading"][0]
    reading.queue_id = t.get("queue_id")
    return reading


# -- the fast path --------------------------------------------------------------

_QID = f"(?P<qid>{_QID_RE})"
_ADDR = r'<(?P<{}>(?:"[^"]*"|[^<>"])*)>'
_FAST_DELIVERY = re.compile(
    _QID + r": to=" + _ADDR.format("rcpt") + r"(?:, orig_to=" + _ADDR.format("orig") + r")?"
    r", relay=(?P<relay>[^,\s]+)(?:, conn_use=(?P<conn>\d+))?, delay=(?P<delay>\d+(?:\.\d+)?)"
    r", delays=(?P<delays>[\d.]+/[\d.]+/[\d.]+/[\d.]+)(?:, dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3}))?"
    r", status=(?P<status>deferred|sent|bounced|expired|undeliverable|deliverable|softbounce)"
    r"(?: \((?P<reply>.*)\))?$",
    re.S,
)
_FAST_ENQUEUE = re.compile(
    _QID + r": from=" + _ADDR.format("sender") + r", size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+) \(queue active\)$"
)
_FAST_MESSAGE_ID = re.compile(_QID + r": message-id=(?P<mid>.*)$", re.S)
_FAST_REMOVED = re.compile(_QID + r": removed$")
_FAST_CLIENT = re.compile(_QID + r": client=(?P<host>[^\s\[\]]*)\[(?P<ip>[^\]\s]*)\](?::(?P<port>\d+))?$")
_FAST_CONNECT = re.compile(
    r"(?P<dis>dis)?connect from (?P<host>[^\s\[\]]*)\[(?P<ip>[^\]\s]*)\](?::(?P<port>\d+))?"
    r"(?P<commands>(?: .*)?)$",
    re.S,
)


def fast(payload: str) -> Reading | None:
    """The common shapes, without pyparsing; None to fall back to the grammar."""
    c = payload[:1]
    if c == "c" or c == "d":
        m = _FAST_CONNECT.match(payload)
        if m is None:
            return None
        fields = host_fields("client", m["host"], m["ip"], m["port"])
        if m["dis"]:
            fields["commands"] = m["commands"].strip()
            return Reading(Kind.DISCONNECT, None, fields)
        return None if m["commands"] else Reading(Kind.CONNECT, None, fields)
    m = _FAST_DELIVERY.match(payload)
    if m is not None:
        conn = m["conn"]
        reading = delivery_reading(
            m["rcpt"],
            m["orig"],
            m["relay"],
            int(conn) if conn else None,
            float(m["delay"]),
            m["delays"],
            m["dsn"],
            m["status"],
            m["reply"],
        )
        reading.queue_id = m["qid"]
        return reading
    m = _FAST_ENQUEUE.match(payload)
    if m is not None:
        return Reading(
            Kind.ENQUEUE, m["qid"], {"sender": m["sender"], "size": int(m["size"]), "nrcpt": int(m["nrcpt"])}
        )
    m = _FAST_MESSAGE_ID.match(payload)
    if m is not None:
        return Reading(Kind.MESSAGE_ID, m["qid"], {"message_id": m["mid"], "resent": False})
    m = _FAST_REMOVED.match(payload)
    if m is not None:
        return Reading(Kind.REMOVED, m["qid"], {})
    m = _FAST_CLIENT.match(payload)
    if m is not None:
        return Reading(Kind.CLIENT, m["qid"], host_fields("client", m["host"], m["ip"], m["port"]))
    return None


def parse(payload: str, program: str | None = None) -> Reading | None:
    """A Postfix payload read by the fast path, else by the grammar.

    A delivery's ``transport`` is the delivery agent that wrote it (smtp,
    lmtp, local, virtual, pipe...): the last part of the program name.
    """
    reading = fast(payload) or parse_grammar(payload)
    if reading is not None and program and reading.kind in _ATTEMPTS and reading.fields.get("recipient"):
        reading.fields["transport"] = program.rpartition("/")[2]
    return reading


_ATTEMPTS = (Kind.DELIVERY, Kind.DEFERRAL)
