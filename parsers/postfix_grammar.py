"""The Postfix payload grammar, in pyparsing: the reference that
``postfix.fast`` is held to, and what reads the lines it declines.

It follows what Postfix 3.x writes, daemon by daemon (see ``parsers.postfix``);
a delivery line reads into the same ``delivery_reading`` as the fast path's.
"""

from __future__ import annotations

import re
from typing import Any

import pyparsing as pp

from .events import Kind
from .grammar import ANGLE_ADDR, DECIMAL, DSN_CODE, HOST_ADDR, NUMBER, REST, addr_fields, read
from .postfix import QID_RE, delivery_reading
from .reading import Reading

S = pp.Suppress

QUEUE_ID = pp.Regex(f"{QID_RE}(?=:)").set_name("queue id")

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
).set_parse_action(lambda t: (Kind.ENQUEUE, None, {"sender": t["sender"], "size": t["size"], "nrcpt": t["nrcpt"]}))
expired = (S("from=") + ANGLE_ADDR("sender") + S(", status=expired, returned to sender")).set_parse_action(
    lambda t: (Kind.EXPIRED, None, {"sender": t["sender"]})
)
removed = (pp.Keyword("removed") + pp.StringEnd()).set_parse_action(lambda t: (Kind.REMOVED, None, {}))

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
    lambda t: (Kind.CLIENT, None, {**addr_fields("client", t["client"]), **_client_extra(t.get("extra"))})
)
message_id = (pp.Regex(r"(resent-)?message-id=")("header") + pp.Regex(r".*", re.S)("value")).set_parse_action(
    lambda t: (Kind.MESSAGE_ID, None, {"message_id": t["value"], "resent": t["header"] == "resent-message-id="})
)
pickup = (S("uid=") + NUMBER("uid") + S("from=") + ANGLE_ADDR("sender")).set_parse_action(
    lambda t: (Kind.PICKUP, None, {"uid": t["uid"], "sender": t["sender"]})
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
    return (Kind.REJECT if action in ("reject", "milter-reject") else Kind.CHECK, None, fields)


def _check(t: pp.ParseResults) -> Reading:
    action = t["action"]
    fields: dict[str, Any] = {"action": action, "what": t["what"], "text": t["text"].strip()}
    if "client" in t:
        fields.update(addr_fields("client", t["client"]))
    fields.update((k, t[k]) for k in _ENVELOPE_KEYS if k in t)
    return (Kind.REJECT if action == "reject" else Kind.CHECK, None, fields)


smtpd_action.set_parse_action(_reject)
check_action.set_parse_action(_check)

connect = (S("connect from") + HOST_ADDR("client") + pp.StringEnd()).set_parse_action(
    lambda t: (Kind.CONNECT, None, addr_fields("client", t["client"]))
)
disconnect = (S("disconnect from") + HOST_ADDR("client") + REST("commands")).set_parse_action(
    lambda t: (Kind.DISCONNECT, None, {**addr_fields("client", t["client"]), "commands": t["commands"].strip()})
)

# -- bounce / postsuper / smtp notes -------------------------------------------

notification = (
    pp.Regex(r"sender|postmaster")("to")
    + pp.Regex(r"non-delivery|delay|delivery status")("notification")
    + S("notification:")
    + pp.Regex(f"{QID_RE}$")("child")
).set_parse_action(
    lambda t: (Kind.BOUNCE, None, {"child": t["child"], "notification": t["notification"], "to": t["to"]})
)
#: postsuper on one message; its "removed" is the REMOVED rule above.
admin = (pp.Regex(r"placed on hold|released from hold|requeued")("action") + pp.StringEnd()).set_parse_action(
    lambda t: (Kind.ADMIN, None, {"action": t["action"]})
)
#: The smtp client's notes about one host of an attempt; the per-recipient
#: line follows. No recipient: the whole attempt to that host failed.
attempt_note = pp.Regex(
    r"(?:host \S+ (?:said|refused to talk to me)|lost connection with|conversation with|"
    r"enabling PIX workarounds|connect to|Server certificate not verified|TLS is required)\b.*",
    re.S,
).set_parse_action(lambda t: (Kind.DEFERRAL, None, {"recipient": None, "reply": t[0]}))

# -- postscreen ---------------------------------------------------------------

ps_connect = (S("CONNECT from") + HOST_ADDR("client") + S("to") + HOST_ADDR("server")).set_parse_action(
    lambda t: (Kind.CONNECT, None, {**addr_fields("client", t["client"]), **addr_fields("server", t["server"])})
)
ps_disconnect = (S("DISCONNECT") + HOST_ADDR("client")).set_parse_action(
    lambda t: (Kind.DISCONNECT, None, addr_fields("client", t["client"]))
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
).set_parse_action(lambda t: (Kind.SERVICE, None, {"text": t[0]}))

#: What may follow ``QUEUEID: ``.
after_queue_id = (
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

GRAMMAR = (QUEUE_ID("queue_id") + S(":") + after_queue_id("reading")) | without_queue_id("reading")


def parse(payload: str) -> Reading | None:
    """The reading of a Postfix payload; None when not understood."""
    return read(GRAMMAR, payload)
