"""Sendmail log payloads.

The grammar follows what Sendmail 8.12 to 8.18 writes through syslog under
the names ``sendmail``, ``sm-mta``, ``sm-msp-queue`` and other ``sm-``
labels (``-L``). Nearly every line about a message starts with its queue id;
lines about a session or about the daemon start with ``NOQUEUE:`` or with
nothing. The shapes, rule by rule, are those of the Sendmail sources that
write them:

- ``logsender`` (envelope.c): ``from=<a>, size=, class=, nrcpts=, msgid=,
  bodytype=, proto=, daemon=, relay=``, one per envelope. Its ``relay=`` is
  the *client* (``host [ip]``, ``user@localhost`` for a local submission);
- ``logdelivery`` (deliver.c): ``to=<a>,<b>, ctladdr=, delay=, xdelay=,
  mailer=, pri=, relay=, dsn=, reply=, stat=``, one per delivery attempt *and
  per group of recipients delivered together* (see ``delivery_reading``);
  a list too long for one line is cut into several lines marked ``[more]``,
  each with the full tail;
- ``returntosender`` (savemail.c): ``PARENT: CHILD: DSN|sender notify|
  postmaster notify|return to sender: text``, the link to a notification;
- ``dropenvelope`` (envelope.c): ``done; delay=, ntries=``;
- ``sendall`` (deliver.c): ``PARENT: CHILD: clone: owner=x``, recipients of
  an owner- list moved to an envelope of their own;
- ``rscheck`` (parseaddr.c): ``ruleset=check_rcpt, arg1=, arg2=, relay=,
  reject=|discard|quarantine=``; the SMTP server's usrerr lines
  (``<addr>... User unknown``), milter actions and session notes.

The log's own words stay in MTA-specific keys (``stat``, ``mailer`` as well
as ``transport``, ``pri``, ``ctladdr``, ``xdelay``, ``ruleset``); the shared
facts use the names of ``events.FIELDS``.

``GRAMMAR`` is the reference. ``fast`` reads the shapes that make up nearly
every line of a real log with one regular expression each, through the same
helpers; a differential test holds it to the grammar on the sample corpus.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import pyparsing as pp

from .events import Kind
from .grammar import DSN_CODE, NUMBER, REST, read
from .reading import Reading, queued_as, with_queue_id

S = pp.Suppress

# -- queue ids ----------------------------------------------------------------

#: 8.12 and later (queue.c ``assign_queueid``): six base-60 characters for the
#: UTC time (year mod 60, month, day, hour, minute, second), one (8.12.0) or
#: two sequence characters, then the pid zero-padded to five (8.12.0) or six
#: digits -- more digits when the pid is larger (Linux pids reach 4194304).
#: 8.10/8.11 ids (seven characters, five-digit pid) fit the same pattern.
_QID_RE = r"[0-9A-Za-x]{7,8}[0-9]{5,}"
QUEUE_ID = pp.Regex(f"(?:{_QID_RE})(?=: )").set_name("queue id")
CHILD_ID = pp.Regex(f"(?:{_QID_RE})(?=: )").set_name("child queue id")

# -- values ---------------------------------------------------------------------

#: ``pintvl``: ``HH:MM:SS``, or ``D+HH:MM:SS`` past a day.
_INTERVAL_RE = r"(?:\d+\+)?\d+:\d\d:\d\d"
_INTERVAL = re.compile(r"(?:(\d+)\+)?(\d+):(\d\d):(\d\d)")


#: Token patterns shared by the grammar's tokens and the fast path's
#: expressions. In the fast path each sits in an atomic group, so that it
#: matches as the grammar's token does: once, never backtracked into.
_SENDER = r".*?(?=, size=\d)"
_DIGITS = r"\d+"
_CLASS = r"-?\d+"
_MSGID = r".*?(?=, (?:bodytype|proto|daemon|relay)=|$)"
_WORD = r"[^,]*"
_TO = r".*?(?=(?: \[more\])?, (?:ctladdr|delay)=)"
_CTLADDR = r".*?(?=(?: \(\d+/\d+\))?, delay=)"
_MAILER = r"[^,\s]+"
_DSN = DSN_CODE.pattern
_REPLY = r".*?(?=, stat=)"
_REST = r".*"


def token(pattern: str) -> pp.Regex:
    """A grammar token from one of the shared patterns, compiled as the fast
    path compiles it (``re.S``), so that both read the same text."""
    return pp.Regex(pattern, re.S)


@lru_cache(maxsize=4096)
def seconds(interval: str) -> float:
    """``1+02:03:04`` -> 93784.0, the float seconds every MTA's delay uses."""
    m = _INTERVAL.fullmatch(interval)
    assert m is not None  # the token's own regex matched the same text
    days, hh, mm, ss = m.groups()
    return float((int(days or 0) * 24 + int(hh)) * 3600 + int(mm) * 60 + int(ss))


def bare(addr: str) -> str:
    """``<a@b>`` -> ``a@b``; a local name logged without brackets stays as is."""
    addr = addr.strip()
    if addr[:1] == "<" and addr[-1:] == ">":
        return addr[1:-1]
    return addr


_LIST_ITEM = re.compile(r'(?:<(?:"[^"]*"|[^<>"])*>|"[^"]*"|[^,<"])+')


def addresses(text: str) -> list[str]:
    """A comma-separated address list (``to=``, alias members), bare.

    Commas inside ``<...>`` or a quoted string (a program or a quoted local
    part) do not separate.
    """
    if "," not in text:
        return [bare(text)] if text.strip() else []
    return [bare(m.group(0)) for m in _LIST_ITEM.finditer(text) if m.group(0).strip()]


#: ``host [ip]``, ``host. [ip]``, ``[ip]``, ``[ip] [ip]``, ``user@host``,
#: ``host [IPv6:2001:db8::1]``, ``host [ip] (may be forged)``.
_RELAY = re.compile(
    r"(?:(?P<user>[^\s@\[\]]+)@)?(?P<host>\[[^\]\s]*\]|[^\s\[\]]*?)\.?"
    r"(?: ?\[(?P<ip>[^\]\s]*)\])?(?P<forged> \(may be forged\))?$"
)


@lru_cache(maxsize=4096)
def _relay_parts(relay: str) -> tuple[str | None, str | None, str | None, bool]:
    """host, ip, user, forged: a relay repeats on every line of its session."""
    m = _RELAY.match(relay)
    if m is None:
        return None, None, None, False
    host, ip = m["host"] or None, m["ip"]
    if host is not None and host[:1] == "[":
        ip = ip or host[1:-1]
        host = None
    if ip and ip[:5].lower() == "ipv6:":
        ip = ip[5:]
    return host, ip or None, m["user"], m["forged"] is not None


def relay_fields(prefix: str, relay: str | None) -> dict[str, Any]:
    """``{prefix}_host`` and ``{prefix}_ip`` from a ``relay=`` value.

    An address literal in the host position (``[127.0.0.1] [127.0.0.1]``, a
    mailertable's ``[host]``) names no host: it becomes the ip when the line
    gives none. ``IPv6:`` is dropped, as the other MTAs log none.
    """
    host, ip, user, forged = _relay_parts(relay or "")
    out: dict[str, Any] = {f"{prefix}_host": host, f"{prefix}_ip": ip}
    if user:
        out[f"{prefix}_user"] = user
    if forged:
        out["forged"] = True
    return out


_SMTP_REPLY = re.compile(r"(?P<code>[245]\d\d)(?:[ -](?P<dsn>[245]\.\d{1,3}\.\d{1,3}))?(?: (?P<text>.*))?$", re.S)


def reply_fields(reply: str) -> dict[str, Any]:
    """``550 5.1.1 <x>... User unknown`` -> code, dsn, and the text after them."""
    m = _SMTP_REPLY.match(reply)
    if m is None:
        return {"code": None, "dsn": None, "reply": reply}
    return {"code": int(m["code"]), "dsn": m["dsn"], "reply": (m["text"] or "").strip()}


# -- logsender: one line per envelope ----------------------------------------------


def enqueue_reading(
    sender: str,
    size: str,
    klass: str,
    pri: str | None,
    nrcpt: str,
    message_id: str | None,
    bodytype: str | None,
    protocol: str | None,
    daemon: str | None,
    relay: str | None,
) -> Reading:
    """One shape for the grammar and the fast path.

    ``nrcpts=0`` is still this line: Sendmail logs the envelope when the
    SMTP transaction ends even if every recipient was refused.
    """
    fields: dict[str, Any] = {
        "sender": bare(sender),
        "size": int(size),
        "nrcpt": int(nrcpt),
        "message_id": message_id,
        "protocol": protocol,
        "class": int(klass),
    }
    if pri is not None:
        fields["pri"] = int(pri)
    if bodytype is not None:
        fields["bodytype"] = bodytype
    if daemon is not None:
        fields["daemon"] = daemon
    if relay is not None:
        fields.update(relay_fields("client", relay))
    return (Kind.ENQUEUE, None, fields)


enqueue = (
    S("from=")
    + token(_SENDER)("sender")
    + S(", size=")
    + token(_DIGITS)("size")
    + S(", class=")
    + token(_CLASS)("class")
    + pp.Opt(S(", pri=") + token(_DIGITS)("pri"))
    + S(", nrcpts=")
    + token(_DIGITS)("nrcpt")
    + pp.Opt(S(", msgid=") + token(_MSGID)("message_id"))
    + pp.Opt(S(", bodytype=") + token(_WORD)("bodytype"))
    + pp.Opt(S(", proto=") + token(_WORD)("protocol"))
    + pp.Opt(S(", daemon=") + token(_WORD)("daemon"))
    + pp.Opt(S(", relay=") + token(_REST)("relay"))
).set_parse_action(
    lambda t: enqueue_reading(
        t["sender"],
        t["size"],
        t["class"],
        t.get("pri"),
        t["nrcpt"],
        t.get("message_id"),
        t.get("bodytype"),
        t.get("protocol"),
        t.get("daemon"),
        t.get("relay"),
    )
)

# -- logdelivery: one line per attempt and group of recipients -------------------

#: ``stat=`` texts (sysexits.c ``SysExMsg``, deliver.c): ``Sent``, ``Sent (reply)``,
#: ``Deferred``, ``Deferred: why``, ``queued``, ``quarantined``; anything
#: else is a permanent failure (``User unknown``, ``Host unknown``,
#: ``Service unavailable``, ``Data format error``, ...), except the queue
#: lifetime running out (``Cannot send message for 5 days``).
_STAT_DETAIL = re.compile(r"(?:Sent \((?P<sent>.*)\)|Deferred: (?P<deferred>.*))$", re.S)
_NO_DETAIL = frozenset(("Sent", "Deferred", "queued", "quarantined"))
#: The id a Sendmail server gives in its 250 reply (srvrsmtp.c), an Exim
#: server's ``id=``; Postfix's ``queued as`` is ``grammar.queued_as``.
_ACCEPTED_AS = re.compile(
    r"^(?:[245]\.\d{1,3}\.\d{1,3} )?(?P<id>[0-9A-Za-z]{8,}) Message accepted for delivery|\bid=(?P<exim>[0-9A-Za-z-]+)"
)


def _status(stat: str) -> tuple[Kind, str]:
    if stat.startswith("Sent"):
        return Kind.DELIVERY, "sent"
    if stat.startswith("Deferred") or stat in ("queued", "quarantined"):
        return Kind.DEFERRAL, "deferred"
    if stat.startswith("Cannot send message for"):
        return Kind.DELIVERY, "expired"
    return Kind.DELIVERY, "bounced"


def delivery_reading(
    to: str,
    more: bool,
    ctladdr: str | None,
    uid: str | None,
    gid: str | None,
    delay: str,
    xdelay: str | None,
    mailer: str | None,
    pri: str | None,
    relay: str | None,
    dsn: str | None,
    reply: str | None,
    stat: str,
) -> Reading:
    """One shape for the grammar and the fast path.

    Sendmail writes one line for all the recipients it handed to one mailer
    in one go (``to=bob,carol,dave``: an alias expanded to local users, or
    several recipients at one MX). The line is one event: ``recipients``
    lists them all (bare, in the log's order), ``recipient`` is the first,
    and the outcome (status, dsn, reply, relay, delay) is every one's.
    ``more`` marks a list cut over several lines; each line stands alone.

    ``reply`` is the server's reply when Sendmail logs it (``reply=``, 8.15+
    for SMTP), else the text of ``stat=`` after ``Sent (`` / ``Deferred: ``,
    else ``stat`` itself when it says more than the status.
    """
    recipients = addresses(to)
    kind, status = _status(stat)
    if reply is None:
        m = _STAT_DETAIL.match(stat)
        if m is not None:
            reply = m["sent"] if m["sent"] is not None else m["deferred"]
        elif stat not in _NO_DETAIL:
            reply = stat
    fields: dict[str, Any] = {
        "recipient": recipients[0] if recipients else None,
        "recipients": recipients,
        "status": status,
        "dsn": dsn,
        "reply": reply,
        "delay": seconds(delay),
        "transport": mailer,
        "mailer": mailer,
        "stat": stat,
    }
    if relay is not None:
        fields["relay"] = relay
        fields.update(relay_fields("relay", relay))
    if xdelay is not None:
        fields["xdelay"] = seconds(xdelay)
    if pri is not None:
        fields["pri"] = int(pri)
    if ctladdr is not None:
        fields["ctladdr"] = bare(ctladdr)
        if uid is not None:
            fields["ctladdr_uid"], fields["ctladdr_gid"] = int(uid), int(gid or 0)
    if more:
        fields["more"] = True
    if status == "sent" and reply:
        qa = queued_as(reply)
        if qa is None:
            m = _ACCEPTED_AS.search(reply)
            if m is not None:
                qa = m["id"] or m["exim"]
        if qa:
            fields["queued_as"] = qa
    return (kind, None, fields)


delivery = (
    S("to=")
    + token(_TO)("to")
    + pp.Opt(pp.Literal(" [more]"))("more")
    + pp.Opt(
        S(", ctladdr=")
        + token(_CTLADDR)("ctladdr")
        + pp.Opt(S(" (") + token(_DIGITS)("uid") + S("/") + token(_DIGITS)("gid") + S(")"))
    )
    + S(", delay=")
    + token(_INTERVAL_RE)("delay")
    + pp.Opt(S(", xdelay=") + token(_INTERVAL_RE)("xdelay"))
    + pp.Opt(S(", mailer=") + token(_MAILER)("mailer"))
    + pp.Opt(S(", pri=") + token(_DIGITS)("pri"))
    + pp.Opt(S(", relay=") + token(_WORD)("relay"))
    + pp.Opt(S(", dsn=") + token(_DSN)("dsn"))
    + pp.Opt(S(", reply=") + token(_REPLY)("reply"))
    + S(", stat=")
    + token(_REST)("stat")
).set_parse_action(
    lambda t: delivery_reading(
        t["to"],
        bool(t.get("more")),
        t.get("ctladdr"),
        t.get("uid"),
        t.get("gid"),
        t["delay"],
        t.get("xdelay"),
        t.get("mailer"),
        t.get("pri"),
        t.get("relay"),
        t.get("dsn"),
        t.get("reply"),
        t["stat"],
    )
)

# -- returntosender / dropenvelope / sendall -------------------------------------

_NOTIFY_LABEL = r"DSN|return to sender|sender notify|postmaster notify"


def bounce_reading(child: str, label: str, text: str) -> Reading:
    """``PARENT: CHILD: label: text``; the parent is the line's queue id.

    savemail.c picks the label: ``return to sender`` when the message in
    trouble is itself a notification (the new one goes to the postmaster),
    ``sender notify`` for a delay warning, ``postmaster notify`` for the
    postmaster's copy, ``DSN`` otherwise. The text says which kind:
    ``Warning: ...`` (delay), ``Return receipt`` (a success DSN), else the
    failure -- whatever the label: the final ``Cannot send message for 5
    days`` of a message that already had a delay warning is logged as a
    ``sender notify``.
    """
    if text.startswith(("Warning:", "Postmaster warning:")):
        notification = "delay"
    elif text == "Return receipt":
        notification = "delivery status"
    else:
        notification = "non-delivery"
    fields: dict[str, Any] = {"child": child, "notification": notification, "label": label, "text": text}
    if text.startswith("Cannot send message for"):
        # The queue lifetime ran out: at LogLevel <= 10 this is the only line
        # that says so (no per-recipient line follows).
        fields["expired"] = True
    if label in ("DSN", "sender notify"):
        fields["to"] = "sender"
    elif label in ("postmaster notify", "return to sender"):
        fields["to"] = "postmaster"
    return (Kind.BOUNCE, None, fields)


notification = (
    CHILD_ID("child") + S(": ") + token(_NOTIFY_LABEL)("label") + S(": ") + token(_REST)("text")
).set_parse_action(lambda t: bounce_reading(t["child"], t["label"], t["text"]))


def done_reading(delay: str, ntries: str) -> Reading:
    return (Kind.REMOVED, None, {"delay": seconds(delay), "ntries": int(ntries)})


done = (S("done; delay=") + token(_INTERVAL_RE)("delay") + S(", ntries=") + token(_DIGITS)("ntries")).set_parse_action(
    lambda t: done_reading(t["delay"], t["ntries"])
)

#: ``CHILD: clone: owner=owner-list`` (8.12+), ``clone CHILD, owner=x`` before.
#: The recipients behind an ``owner-`` alias continue under CHILD, with the
#: owner as sender.
clone = (
    (CHILD_ID("child") + S(": clone: owner=") + REST("owner"))
    | (S("clone") + pp.Regex(_QID_RE)("child") + S(", owner=") + REST("owner"))
).set_parse_action(
    lambda t: (Kind.REQUEUE, None, {"queued_as": t["child"], "action": "clone", "owner": bare(t["owner"])})
)
#: queue.c ``split_by_recipient``: the envelope was split into new ids
#: (MaxRecipientsPerMessage, queue groups).
split = (
    S("split:")
    + pp.Opt(S("maxrcpts=") + NUMBER("maxrcpts") + S(",") + S("rcpts=") + NUMBER("rcpts") + S(","))
    + S("count=")
    + NUMBER("count")
    + S(",")
    + pp.Regex(r"ids?=")
    + pp.Regex(r".+")("ids")
).set_parse_action(
    lambda t: (
        Kind.REQUEUE,
        None,
        {
            "queued_as": re.split(r"[\s,]+", t["ids"].strip())[0],
            "children": re.split(r"[\s,]+", t["ids"].strip()),
            "action": "split",
        },
    )
)

# -- alias.c ---------------------------------------------------------------------

#: ``alias team@x => bob,carol,dave`` (LogLevel > 10); the list is cut at
#: 203 characters with ``...``.
expansion = (S("alias") + pp.Regex(r"\S+?(?= => )")("alias") + S("=>") + REST("members")).set_parse_action(
    lambda t: (
        Kind.EXPANSION,
        None,
        {"recipient": bare(t["alias"]), "members": addresses(t["members"].removesuffix("..."))}
        | ({"truncated": True} if t["members"].endswith("...") else {}),
    )
)

# -- the SMTP server: rulesets, errors, session notes ------------------------------

#: Which SMTP stage each standard ruleset guards (cf/README "check_*").
_RULESET_STAGE = {
    "check_relay": "CONNECT",
    "srv_features": "CONNECT",
    "check_helo": "HELO",
    "check_mail": "MAIL",
    "trust_auth": "MAIL",
    "check_rcpt": "RCPT",
    "check_data": "DATA",
    "check_eoh": "DATA",
    "check_eom": "END-OF-MESSAGE",
    "check_vrfy": "VRFY",
    "check_expn": "EXPN",
    "check_etrn": "ETRN",
    "tls_client": "STARTTLS",
    "tls_server": "STARTTLS",
    "tls_rcpt": "RCPT",
}


def ruleset_reading(
    ruleset: str, arg1: str, arg2: str | None, relay: str | None, action: str, value: str | None
) -> Reading:
    """``ruleset=R, arg1=A[, arg2=B][, relay=H], reject=TEXT|discard|quarantine=WHY``.

    A reject is a REJECT, except ``trust_auth``'s: it only refuses to trust
    the MAIL command's ``AUTH=`` parameter, and the message goes on; that
    one, ``discard`` and ``quarantine`` are CHECKs.
    """
    fields: dict[str, Any] = {"ruleset": ruleset, "action": action, "stage": _RULESET_STAGE.get(ruleset), "arg1": arg1}
    if arg2 is not None:
        fields["arg2"] = arg2
    if ruleset in ("check_mail", "trust_auth"):
        fields["sender"] = bare(arg1)
    elif ruleset in ("check_rcpt", "tls_rcpt"):
        fields["recipient"] = bare(arg1)
    if relay is not None:
        fields.update(relay_fields("client", relay))
    if action == "reject" and value is not None:
        fields.update(reply_fields(value))
    elif value is not None:
        fields["text"] = value
    kind = Kind.REJECT if action == "reject" and ruleset != "trust_auth" else Kind.CHECK
    return (kind, None, fields)


_RULESET = r"[^,\s]+"
_ARG1 = r".*?(?=, (?:arg2|relay|reject|quarantine)=|, discard$)"
_ARG2 = r".*?(?=, (?:relay|reject|quarantine)=|, discard$)"
_RULESET_RELAY = r".*?(?=, (?:reject|quarantine)=|, discard$)"

ruleset = (
    S("ruleset=")
    + token(_RULESET)("ruleset")
    + S(", arg1=")
    + token(_ARG1)("arg1")
    + pp.Opt(S(", arg2=") + token(_ARG2)("arg2"))
    + pp.Opt(S(", relay=") + token(_RULESET_RELAY)("relay"))
    + S(", ")
    + (
        (pp.Literal("reject")("action") + S("=") + token(_REST)("value"))
        | (pp.Literal("quarantine")("action") + S("=") + token(_REST)("value"))
        | (pp.Literal("discard")("action") + pp.StringEnd())
    )
).set_parse_action(
    lambda t: ruleset_reading(t["ruleset"], t["arg1"], t.get("arg2"), t.get("relay"), t["action"], t.get("value"))
)


def address_error_reading(addr: str, text: str) -> Reading:
    """``<ghost@x>... User unknown``: the SMTP server's usrerr, logged with
    the transaction's queue id. The address is the recipient unless the text
    speaks of the sender (``Domain of sender address ... does not exist``).
    """
    fields: dict[str, Any] = {"stage": None, "code": None, "dsn": None, "reply": text}
    if "sender" in text.lower():
        fields["sender"] = bare(addr)
    else:
        fields["recipient"] = bare(addr)
    return (Kind.REJECT, None, fields)


_ERROR_ADDR = r'<(?:"[^"]*"|[^<>"])*>|"[^"]*"|[^\s<>"]+?'

_ERROR_TOKEN = f"(?:{_ERROR_ADDR})(?=\\.\\.\\. )"
address_error = (token(_ERROR_TOKEN)("addr") + S("... ") + token(_REST)("text")).set_parse_action(
    lambda t: address_error_reading(t["addr"], t["text"])
)


def connect_reading(relay: str) -> Reading:
    return (Kind.CONNECT, None, relay_fields("client", relay))


connect = (S("connect from ") + token(_REST)("relay")).set_parse_action(lambda t: connect_reading(t["relay"]))

#: daemon.c ``validate_connection``: refused by hosts.allow/deny.
tcpwrappers = (
    S("tcpwrappers (") + pp.Regex(r"[^,]*")("host") + S(",") + pp.Regex(r"[^)]*")("ip") + S(") rejection")
).set_parse_action(
    lambda t: (
        Kind.REJECT,
        None,
        {"stage": "CONNECT", "code": None, "dsn": None, "reply": "tcpwrappers rejection"}
        | relay_fields("client", f"{t['host']} [{t['ip']}]"),
    )
)


def gone_reading(client: str, reason: str, **extra: Any) -> Reading:
    """The client went away or stalled: the transaction, and any envelope
    under this queue id, ends here without a ``from=`` line."""
    return (Kind.DISCONNECT, None, {**relay_fields("client", client), "reason": reason, **extra})


#: srvrsmtp.c: ``lost input channel from host [ip] to MTA after rcpt``.
lost_input = (
    S("lost input channel from")
    + pp.Regex(r".*?(?= to \S+ after )")("client")
    + S("to")
    + pp.Regex(r"\S+")("daemon")
    + S("after")
    + pp.Regex(r"\S+")("after")
).set_parse_action(lambda t: gone_reading(t["client"], "lost input channel", daemon=t["daemon"], after=t["after"]))
#: util.c ``sfgets``. ``during server ...`` / ``message collect``: our client
#: stalled. ``during client ...``: a server we deliver to stalled; the
#: delivery line that follows says so for its recipients.
timeout_input = (
    S("timeout waiting for input from") + pp.Regex(r".*?(?= during )")("peer") + S("during") + REST("during")
).set_parse_action(
    lambda t: (
        (Kind.SERVICE, None, {"text": f"timeout waiting for input from {t['peer']} during {t['during']}"})
        if t["during"].startswith("client")
        else gone_reading(t["peer"], "timeout", during=t["during"])
    )
)


def collect_reading(relay: str, sender: str, info: str, where: str | None, status: str | None) -> Reading:
    """collect.c: the message body could not be read, or was refused.

    ``status=tempfail`` (8.17.2+ bare LF/CR checks, ``Headers too large``...)
    is a REJECT of the DATA; without a status the client went away
    (``unexpected close``, ``read timeout``); ``status=replaced`` is a
    repair (bare CR/LF replaced) and the message goes on.
    """
    fields: dict[str, Any] = relay_fields("client", relay)
    fields["sender"] = bare(sender)
    if where is not None:
        fields["where"] = where
    if status == "tempfail":
        return (Kind.REJECT, None, {**fields, "stage": "DATA", "code": None, "dsn": None, "reply": info})
    if status is not None:
        return (Kind.CHECK, None, {**fields, "action": status, "text": info})
    return (Kind.DISCONNECT, None, {**fields, "reason": info})


collect = S("collect:") + (
    (
        S("relay=")
        + pp.Regex(r".*?(?=, from=)")("relay")
        + S(", from=")
        + pp.Regex(r".*?(?=, info=)")("sender")
        + S(", info=")
        + pp.Regex(r".*?(?=, (?:where|status)=|$)")("info")
        + pp.Opt(S(", where=") + pp.Regex(r"[^,]+")("where"))
        + pp.Opt(S(", status=") + pp.Regex(r"[^,]+")("status"))
    ).set_parse_action(lambda t: collect_reading(t["relay"], t["sender"], t["info"], t.get("where"), t.get("status")))
    # Before 8.15: "premature EOM: why", "I/O error on connection from h, from=<a>"...
    | (S("premature EOM:") + REST("why")).set_parse_action(
        lambda t: (Kind.DISCONNECT, None, {"reason": f"premature EOM: {t['why']}"})
    )
    | (
        pp.Regex(r"I/O error|unexpected close|read timeout")("why")
        + S("on connection from")
        + pp.Regex(r".*?(?=, (?:from|sender)=)")("relay")
        + S(",")
        + pp.Regex(r"(?:from|sender)=")
        + REST("sender")
    ).set_parse_action(lambda t: collect_reading(t["relay"], t["sender"], t["why"], None, None))
)

#: Size and header limits refused in collect.c.
too_big = pp.Regex(
    r"message size \(\d+\) exceeds maximum \(\d+\)|headers too large \(\d+ max\) from .* during message collect"
).set_parse_action(lambda t: (Kind.REJECT, None, {"stage": "DATA", "code": None, "dsn": None, "reply": t[0]}))

#: srvrsmtp.c's refusals of a whole session.
session_reject = (
    pp.Regex(r"rejecting commands from (?P<client>.*) due to pre-greeting traffic after \d+ seconds")
    | pp.Regex(r"rejecting \S+ from (?P<client>.*) due to traffic before response")
).set_parse_action(
    lambda t: (
        Kind.REJECT,
        None,
        {"stage": "CONNECT", "code": None, "dsn": None, "reply": t[0], **relay_fields("client", t["client"])},
    )
)

# -- milter.c / srvrsmtp.c: the milters' word -------------------------------------

#: ``Milter: data, reject=...``: what the stage names mean in the SMTP dialogue.
_MILTER_STAGE = {
    "connect": "CONNECT",
    "helo": "HELO",
    "from": "MAIL",
    "mail": "MAIL",
    "to": "RCPT",
    "rcpt": "RCPT",
    "cmd=data": "DATA",
    "data": "END-OF-MESSAGE",
    "header": "END-OF-MESSAGE",
    "eoh": "END-OF-MESSAGE",
    "body": "END-OF-MESSAGE",
    "eom": "END-OF-MESSAGE",
    "unknown": "UNKNOWN",
}


def milter_verdict(what: str, arg: str | None, action: str, value: str | None, milter: str | None) -> Reading:
    """A milter's verdict at one stage: reject/tempfail refuse (REJECT),
    discard/quarantine/accept/continue/skip act on the message (CHECK)."""
    fields: dict[str, Any] = {"action": f"milter-{action}", "stage": _MILTER_STAGE.get(what)}
    if milter is not None:
        fields["milter"] = milter
    if arg is not None:
        if what in ("from", "mail"):
            fields["sender"] = bare(arg)
        elif what in ("to", "rcpt"):
            fields["recipient"] = bare(arg)
        elif what == "helo":
            fields["helo"] = arg
    if action in ("reject", "tempfail"):
        fields.update(reply_fields(value) if value else {"code": None, "dsn": None, "reply": None})
        return (Kind.REJECT, None, fields)
    if value is not None:
        fields["text"] = value
    return (Kind.CHECK, None, fields)


_VERDICT = r"(?P<action>reject|tempfail|discard|quarantine|accepted|continue|skip)(?:=(?P<value>.*))?"

#: ``Milter: from=<a>, reject=553 ...``, ``Milter: data, discard``,
#: ``Milter: cmd=data, reject=...``, ``Milter: helo=h, reject=...``.
milter_stage = pp.Regex(
    r"Milter: (?P<what>cmd=data|data|connect|helo|from|to)(?:=(?P<arg>.*?))?, " + _VERDICT + "$", re.S
).set_parse_action(lambda t: milter_verdict(t["what"], t.get("arg"), t["action"], t.get("value"), None))
#: ``milter=name, action=rcpt, reject=550 ...`` (LogLevel > 9), ``milter=name, discard``.
milter_named = pp.Regex(
    r"milter=(?P<milter>[^,]+), (?:action=(?P<what>[^,]+), )?" + _VERDICT + "$", re.S
).set_parse_action(lambda t: milter_verdict(t.get("what") or "", None, t["action"], t.get("value"), t["milter"]))


def milter_change(milter: str | None, change: str) -> Reading:
    """``Milter (name) add: header: X-Spam: yes``, ``... add: rcpt: <x>``,
    ``... delete: rcpt <x>``, ``... chgfrom: <x>``, ``... message: body replaced``."""
    fields: dict[str, Any] = {"action": "milter-change", "text": change}
    if milter is not None:
        fields["milter"] = milter
    m = re.match(r"(?:add: rcpt: |delete: rcpt )(?P<rcpt>[^,]+)", change)
    if m is not None:
        fields["recipient"] = bare(m["rcpt"])
    elif change.startswith("chgfrom: "):
        fields["sender"] = bare(change[9:])
    return (Kind.CHECK, None, fields)


milter_edit = (
    S("Milter")
    + pp.Opt(S("(") + pp.Regex(r"[^)]+")("milter") + S(")"))
    + pp.Regex(r"(?:add|insert \(\d+\)|change(?: \(add\))?|delete(?: \(noop\))?|chgfrom|message): .*", re.S)("change")
).set_parse_action(lambda t: milter_change(t.get("milter"), t["change"]))
milter_accept = pp.Regex(r"Milter accept: message").set_parse_action(
    lambda t: (Kind.CHECK, None, {"action": "milter-accept", "text": t[0]})
)
milter_connect = pp.Regex(
    r"Milter: connect: host=(?P<host>[^,]*), addr=(?P<ip>[^,]*), "
    r"(?P<what>rejecting commands|temp failing commands|shutdown)"
).set_parse_action(
    lambda t: (
        Kind.REJECT,
        None,
        {
            "action": "milter-reject",
            "stage": "CONNECT",
            "code": None,
            "dsn": None,
            "reply": t["what"],
            "client_host": t["host"] or None,
            "client_ip": t["ip"] or None,
        },
    )
)

# -- notes about one message --------------------------------------------------------

#: ``Authentication-Warning: host: user set sender to x using -f`` (a header
#: Sendmail added), ``discarded``, and the last resorts of savemail.c.
message_note = (
    pp.Regex(r"Authentication-Warning: .*", re.S).set_parse_action(
        lambda t: (Kind.CHECK, None, {"action": "authentication-warning", "text": t[0][24:]})
    )
    | (pp.Keyword("discarded") + pp.StringEnd()).set_parse_action(
        lambda t: (Kind.CHECK, None, {"action": "discard", "text": "discarded"})
    )
    | pp.Regex(r"Saved message in .*").set_parse_action(lambda t: (Kind.CHECK, None, {"action": "saved", "text": t[0]}))
    | pp.Regex(r"Losing \S+: .*").set_parse_action(lambda t: (Kind.CHECK, None, {"action": "lost", "text": t[0]}))
    | pp.Regex(r"(?:<[^<>]*>|\S+)\.\.\. aliased to .*").set_parse_action(
        lambda t: (
            Kind.EXPANSION,
            None,
            {
                "recipient": bare(t[0].split("... aliased to ", 1)[0]),
                "members": addresses(t[0].split("... aliased to ", 1)[1]),
            },
        )
    )
)

_DID_NOT_ISSUE = re.compile(
    r"(?P<client>.*) did not issue MAIL/EXPN/VRFY/ETRN during connection to (?P<daemon>.*)$", re.S
)


def service_reading(text: str) -> Reading:
    """A notice; ``host [ip] did not issue MAIL/...`` also names the client
    (a scanner, a probe, a client that gave up before MAIL)."""
    fields: dict[str, Any] = {"text": text}
    m = _DID_NOT_ISSUE.match(text)
    if m is not None:
        fields.update(relay_fields("client", m["client"]))
        fields["daemon"] = m["daemon"]
    return (Kind.SERVICE, None, fields)


# -- what Sendmail says about itself -------------------------------------------------

#: Notices that concern no message (daemon life, queue runs, alias
#: databases, TLS and AUTH per session, resource limits, milter health,
#: SYSERR), an explicit list: a shape not here stays unknown. Some carry the
#: session's queue id (``did not issue MAIL``: the id named no message).
#: Each alternative starts with its own words, so that no line another rule
#: reads is also a notice: the fast path tries this pattern on whatever its
#: other shapes did not take (the sample test and the differential test hold
#: it to that). The most frequent notices come first.
_CLIENT_RE = r"(?:\S+@)?(?:\S+ )?\[[^\]\s]*\](?: \(may be forged\))?|\S+"
_SERVICE_RE = (
    r"(?:STARTTLS(?:=\w+)?[,:] .*"
    r"|AUTH(?:=(?:server|client), |: | (?:failure|warning|error|encode64 error|decode64 error)\b).*"
    r"|(?:" + _CLIENT_RE + r") did not issue MAIL/EXPN/VRFY/ETRN during connection to \S+"
    r"|(?:" + _CLIENT_RE + r") didn't use HELO protocol"
    r"|starting daemon \(.*\): .*|started as: .*|stopping daemon, reason=.*|restarting \S+ due to .*"
    r"|accepting connections(?: again for daemon .*)?"
    r"|(?:rejecting|deferring|delaying) connections on daemon .*|have been rejecting connections on daemon .*"
    r"|rejecting new messages: min free: \d+"
    r"|daemon invoked without full pathname; kill -1 won't work"
    r"|runqueue(?:[: ].*)?|grew WorkList for .*|WorkList for .* maxed out at \d+|FAILED to grow WorkList for .*"
    r"|Skipping queue run -- too many children|ERROR: persistent queue runner=.*"
    r"|alias database (?:unavailable|\S+ (?:\S*rebuilt by .*|out of date))"
    r"|Warning: alias database .* out of date|WARNING: cannot open alias database .*"
    r"|/\S*: \d+ aliases, longest \d+ bytes, \d+ bytes total"
    r"|My unqualified host name \(.*\) unknown; sleeping for retry"
    r"|unable to qualify my own domain name \(.*\) -- using short name"
    r"|SYSERR(?:\([^)]*\))?: .*"
    r"|(?:Warning|WARNING): .*|error: .*"
    r"|tls_\w+_features=.*"
    r"|(?:" + _CLIENT_RE + r"): (?:possible SMTP attack|probable open proxy|SMTP violation, input too long"
    r"|Possible SMTP RCPT flood).*"
    r"|unauthorized PIPELINING, sleeping.*|(?:" + _CLIENT_RE + r"): ETRN \S+|Null connection from .*"
    r"|SMTP outgoing connect on .*|gethostbyaddr\(.*\) failed: .*"
    r"|(?:<[^<>]*>|[^\s<>]+)\.\.\. Connecting to .*"
    r"|forward:? /\S*: .*"
    r"|Milter(?: \([^)]*\))?: (?!connect: host=|.*, (?:reject|tempfail|discard|quarantine|accepted|continue|skip)"
    r"(?:=|$)).*"
    r"|milter_\w+\(.*)\Z"
)
service = token(_SERVICE_RE).set_parse_action(lambda t: service_reading(t[0]))


#: The shapes the fast path also reads match exactly where the previous
#: token ended (no whitespace skipped), as the fast path's expressions do.
for _rule in (enqueue, delivery, notification, done, connect, service, ruleset, address_error):
    _rule.leave_whitespace()

#: Payloads, with or without a queue id (the id is the envelope's, or the
#: session's when the line is about the session).
READINGS = (
    delivery
    | enqueue
    | done
    | notification
    | clone
    | split
    | expansion
    | ruleset
    | connect
    | tcpwrappers
    | lost_input
    | timeout_input
    | collect
    | too_big
    | session_reject
    | milter_stage
    | milter_named
    | milter_connect
    | milter_accept
    | milter_edit
    | message_note
    | service
    | address_error
)

PREFIX = ((QUEUE_ID("queue_id") + S(": ")) | S("NOQUEUE: ")).leave_whitespace()
GRAMMAR = pp.Opt(PREFIX) + READINGS("reading")


def parse_grammar(payload: str) -> Reading | None:
    """The reference reading of a Sendmail payload; None when not understood."""
    return read(GRAMMAR, payload)


# -- the fast path --------------------------------------------------------------


def _named(name: str, pattern: str) -> str:
    """A grammar token in the fast path: matched once, as pyparsing does."""
    return f"(?>(?P<{name}>{pattern}))"


def _opt(pattern: str) -> str:
    """``pp.Opt``: taken whenever it matches, never given back."""
    return f"(?>(?:{pattern})?)"


_QID = _named("qid", f"(?:{_QID_RE})(?=: )")
_FAST_DELIVERY = re.compile(
    _QID
    + ": to="
    + _named("to", _TO)
    + _opt(_named("more", r" \[more\]"))
    + _opt(
        ", ctladdr="
        + _named("ctladdr", _CTLADDR)
        + _opt(r" \(" + _named("uid", _DIGITS) + "/" + _named("gid", _DIGITS) + r"\)")
    )
    + ", delay="
    + _named("delay", _INTERVAL_RE)
    + _opt(", xdelay=" + _named("xdelay", _INTERVAL_RE))
    + _opt(", mailer=" + _named("mailer", _MAILER))
    + _opt(", pri=" + _named("pri", _DIGITS))
    + _opt(", relay=" + _named("relay", _WORD))
    + _opt(", dsn=" + _named("dsn", _DSN))
    + _opt(", reply=" + _named("reply", _REPLY))
    + ", stat="
    + _named("stat", _REST)
    + "$",
    re.S,
)
_FAST_ENQUEUE = re.compile(
    _QID
    + ": from="
    + _named("sender", _SENDER)
    + ", size="
    + _named("size", _DIGITS)
    + ", class="
    + _named("class", _CLASS)
    + _opt(", pri=" + _named("pri", _DIGITS))
    + ", nrcpts="
    + _named("nrcpt", _DIGITS)
    + _opt(", msgid=" + _named("msgid", _MSGID))
    + _opt(", bodytype=" + _named("bodytype", _WORD))
    + _opt(", proto=" + _named("proto", _WORD))
    + _opt(", daemon=" + _named("daemon", _WORD))
    + _opt(", relay=" + _named("relay", _REST))
    + "$",
    re.S,
)
_FAST_DONE = re.compile(
    _QID + ": done; delay=" + _named("delay", _INTERVAL_RE) + ", ntries=" + _named("ntries", _DIGITS) + "$", re.S
)
_FAST_BOUNCE = re.compile(
    _QID
    + ": "
    + _named("child", f"(?:{_QID_RE})(?=: )")
    + ": "
    + _named("label", _NOTIFY_LABEL)
    + ": "
    + _named("text", _REST)
    + "$",
    re.S,
)
_FAST_CONNECT = re.compile("NOQUEUE: connect from " + _named("relay", _REST) + "$", re.S)
_FAST_SERVICE = re.compile(_SERVICE_RE, re.S)
_FAST_RULESET = re.compile(
    "ruleset="
    + _named("ruleset", _RULESET)
    + ", arg1="
    + _named("arg1", _ARG1)
    + _opt(", arg2=" + _named("arg2", _ARG2))
    + _opt(", relay=" + _named("relay", _RULESET_RELAY))
    + ", (?>(?P<action>reject|quarantine)="
    + _named("value", _REST)
    + r"|discard\Z)\Z",
    re.S,
)
_FAST_ADDRESS_ERROR = re.compile(_named("addr", _ERROR_TOKEN) + r"\.\.\. " + _named("text", _REST) + r"\Z", re.S)
_FAST_PREFIX = re.compile(_QID + ": |NOQUEUE: ")
#: The per-session TLS and AUTH notes, the same alternatives as ``service``.
_FAST_SESSION = re.compile(r"(?:STARTTLS(?:=\w+)?[,:] |AUTH=(?:server|client), ).*", re.S)


def fast(payload: str) -> Reading | None:
    """The common shapes, without pyparsing; None to fall back to the grammar."""
    c = payload[:1]
    if c == "N" and payload.startswith("NOQUEUE: connect from "):
        m = _FAST_CONNECT.match(payload)
        return connect_reading(m["relay"]) if m is not None else None
    if (c == "S" or c == "A") and _FAST_SESSION.match(payload):
        return service_reading(payload)
    at = payload.find(": ") + 2
    if payload.startswith("to=", at):
        m = _FAST_DELIVERY.match(payload)
        if m is None:
            return None
        reading = delivery_reading(
            m["to"],
            m["more"] is not None,
            m["ctladdr"],
            m["uid"],
            m["gid"],
            m["delay"],
            m["xdelay"],
            m["mailer"],
            m["pri"],
            m["relay"],
            m["dsn"],
            m["reply"],
            m["stat"],
        )
    elif payload.startswith("from=", at):
        m = _FAST_ENQUEUE.match(payload)
        if m is None:
            return None
        reading = enqueue_reading(
            m["sender"],
            m["size"],
            m["class"],
            m["pri"],
            m["nrcpt"],
            m["msgid"],
            m["bodytype"],
            m["proto"],
            m["daemon"],
            m["relay"],
        )
    elif payload.startswith("done;", at):
        m = _FAST_DONE.match(payload)
        if m is None:
            return None
        reading = done_reading(m["delay"], m["ntries"])
    else:
        m = _FAST_BOUNCE.match(payload)
        if m is None:
            return _fast_rest(payload)
        reading = bounce_reading(m["child"], m["label"], m["text"])
    reading = with_queue_id(reading, m["qid"])
    return reading


def _fast_rest(payload: str) -> Reading | None:
    """After the queue id: a ruleset's verdict, a notice, an address's error.

    Only shapes that no grammar rule before them could also read: the
    ruleset lines start with their own word, ``service`` is the grammar's
    rule before ``address_error``, and an ``x... aliased to`` is left to
    the grammar.
    """
    p = _FAST_PREFIX.match(payload)
    at = p.end() if p is not None else 0
    if payload.startswith("ruleset=", at):
        m = _FAST_RULESET.match(payload, at)
        if m is None:
            return None
        reading = ruleset_reading(m["ruleset"], m["arg1"], m["arg2"], m["relay"], m["action"] or "discard", m["value"])
    else:
        m = _FAST_SERVICE.match(payload, at)
        if m is not None:
            reading = service_reading(m.group(0))
        elif payload.startswith("<", at):
            m = _FAST_ADDRESS_ERROR.match(payload, at)
            if m is None or m["text"].startswith("aliased to "):
                return None
            reading = address_error_reading(m["addr"], m["text"])
        else:
            return None
    reading = with_queue_id(reading, p["qid"] if p is not None else None)
    return reading


def parse(payload: str, program: str | None = None) -> Reading | None:
    """A Sendmail payload read by the fast path, else by the grammar.

    The program name says nothing the payload does not (the mailer is in
    the line), so ``program`` is unused.
    """
    return fast(payload) or parse_grammar(payload)
