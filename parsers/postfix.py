"""Postfix log payloads.

The grammar follows what Postfix 3.x writes, daemon by daemon (see
postfix.org's DEBUG_README and the daemons' man pages): ``smtpd`` and
``postscreen`` for the SMTP dialogue, ``cleanup`` for the Message-ID and
header/body checks, ``qmgr`` for the envelope, the delivery agents (smtp,
lmtp, local, virtual, pipe, error, discard, retry) for one line per
recipient and attempt, ``bounce`` for the notifications it creates, and
``postsuper`` for the administrator's hand.

The grammar (``postfix_grammar.GRAMMAR``) is the reference. ``fast`` reads
the handful of shapes that make up nearly every line of a busy log with one
regular expression each; a differential test holds it to the grammar on the
whole sample corpus. The grammar is built on the first line the fast path
declines: a log it covers never imports pyparsing.
"""

from __future__ import annotations

import re
from typing import Any

from .events import Kind
from .reading import Reading, host_fields, queued_as

# Short ids are upper-case hex (their length depends on the machine); long
# ids (enable_long_queue_ids) use a base-52 alphabet without vowels. One
# class holds both (hex's A and E included, the other vowels not), so that
# "NOQUEUE", "warning" or "statistics" never pass for a queue id.
QID_RE = r"[0-9A-HJ-NP-TV-Zb-df-hj-np-tv-z]{5,}"


# -- what both paths make of a line ----------------------------------------------


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
    if relay_parts is None and "[" in relay:
        m = _RELAY_HOST(relay)
        if m is not None:
            relay_parts = m.groups()
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
    if relay_parts is not None:  # host_fields' keys, set here: this runs for a fifth of a busy log's lines
        host, ip, port = relay_parts
        fields["relay_host"] = host or None
        fields["relay_ip"] = ip or None
        if port:
            fields["relay_port"] = int(port)
    if conn_use is not None:
        fields["conn_use"] = conn_use
    if status == "sent" and reply and " as " in reply:
        # The next hop's id ("queued as"), or local's re-submission of an
        # alias or .forward to a new queue id ("forwarded as").
        qa = queued_as(reply)
        if qa:
            fields["queued_as"] = qa
        if "forwarded as " in reply:
            fw = _FORWARDED(reply)
            if fw:
                fields["forwarded_as"] = fw.group(1)
    return (_DEFERRAL if status == "deferred" else _DELIVERY, None, fields)


_DELIVERY, _DEFERRAL = Kind.DELIVERY, Kind.DEFERRAL  # enum attribute lookups are not free per line
_RELAY_HOST = re.compile(r"([^\s\[\]]*)\[([^\]\s]*)\](?::(\d+))?$").match
_FORWARDED = re.compile(r"forwarded as ([0-9A-Za-z]+)").search


def parse_grammar(payload: str) -> Reading | None:
    """The reference reading of a Postfix payload; None when not understood."""
    from . import postfix_grammar  # built on first use (see the module docstring)

    return postfix_grammar.parse(payload)


# -- the fast path --------------------------------------------------------------
#
# After "QUEUEID: " the first four characters say which shape it can be, so
# each line meets one regular expression, not a list of them. Addresses are
# matched as <[^>]*>: a quoted local part holding ">" fails here and goes to
# the grammar, which reads it.

_IS_QID = re.compile(QID_RE).fullmatch
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
    r"(sender|postmaster) (non-delivery|delay|delivery status) notification: (" + QID_RE + ")$"
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
            return (_DISCONNECT, None, fields)
        return None if commands else (_CONNECT, None, fields)
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
        kind, _, fields = delivery_reading(
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
        return (kind, qid, fields)
    if head == "from":
        m = _FAST_ENQUEUE(rest)
        if m is None:
            return None
        sender, size, nrcpt = m.groups()
        return (_ENQUEUE, qid, {"sender": sender, "size": int(size), "nrcpt": int(nrcpt)})
    if head == "mess":
        if rest.startswith("message-id="):
            return (_MESSAGE_ID, qid, {"message_id": rest[11:], "resent": False})
        return None
    if head == "remo":
        return (_REMOVED, qid, {}) if rest == "removed" else None
    if head == "clie":
        m = _FAST_CLIENT(rest)
        return (_CLIENT, qid, host_fields("client", *m.groups())) if m is not None else None
    if head == "send" or head == "post":
        m = _FAST_NOTIFICATION(rest)
        if m is None:
            return None
        to, notification, child = m.groups()
        return (_BOUNCE, qid, {"child": child, "notification": notification, "to": to})
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
    return (_REJECT, qid, fields)


def parse(payload: str, program: str | None = None) -> Reading | None:
    """A Postfix payload read by the fast path, else by the grammar.

    A delivery's ``transport`` is the delivery agent that wrote it (smtp,
    lmtp, local, virtual, pipe...): the last part of the program name.
    """
    reading = fast(payload) or parse_grammar(payload)
    if reading is not None and program and reading[0] in _ATTEMPTS and reading[2].get("recipient"):
        reading[2]["transport"] = _TRANSPORTS.get(program) or _transport(program)
    return reading


_ATTEMPTS = (_DELIVERY, _DEFERRAL)
#: program name -> its delivery agent: a log names a handful of programs.
_TRANSPORTS: dict[str, str] = {}


def _transport(program: str) -> str:
    transport = program.rpartition("/")[2]
    if len(_TRANSPORTS) < 10_000:
        _TRANSPORTS[program] = transport
    return transport
