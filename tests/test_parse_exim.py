"""Exim line shapes, one by one, as Exim 4.9x writes them (spec chapter "Log files")."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parsers import Context, Event, Kind, parse
from parsers import exim as ex
from parsers.envelope import split

CTX = Context(reference=datetime(2026, 3, 2, tzinfo=UTC))
#: Message ids up to 4.96 (6-6-2) and from 4.97 on (6-11-4).
Q = "1vZ5XY-000ABC-Q1"
Q97 = "1vZ5XY-00000000ABC-Q1w0"
P = "1vZ5XX-000ABA-00"

CASES: list[tuple[str, Kind, str | None, dict]] = [
    # (payload, kind, message id, fields that must be there)
    # -- <= arrival
    (
        f"{Q} <= sender@mx1.example.test H=(client.example.test) [127.0.0.1]:45596 P=esmtp S=515 M8S=0 RT=0s "
        'id=s09.expired@client.example.test T="s09 expired" from <sender@mx1.example.test> for never@expire.test',
        Kind.ENQUEUE,
        Q,
        {
            "sender": "sender@mx1.example.test",
            "client_host": None,
            "client_ip": "127.0.0.1",
            "client_port": 45596,
            "helo": "client.example.test",
            "protocol": "esmtp",
            "size": 515,
            "receive_time": 0.0,
            "message_id": "<s09.expired@client.example.test>",
            "subject": "s09 expired",
            "original_sender": "sender@mx1.example.test",
            "recipients": ["never@expire.test"],
            "nrcpt": 1,
        },
    ),
    (
        f"{Q97} <= a@b.example H=mail.b.example (helo.b.example) [192.0.2.1]:4711 I=[192.0.2.9]:25 P=esmtpsa "
        "X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no A=dovecot_plain:joe@b.example L. K S=1234 id=abc@b.example "
        'T="a \\"quoted\\" subject" for x@y.example z@y.example',
        Kind.ENQUEUE,
        Q97,
        {
            "client_host": "mail.b.example",
            "helo": "helo.b.example",
            "server_ip": "192.0.2.9",
            "server_port": 25,
            "tls": "TLS1.3:TLS_AES_256_GCM_SHA384:256",
            "auth": "dovecot_plain",
            "sasl_username": "joe@b.example",
            "pipelining": True,
            "chunking": True,
            "subject": 'a "quoted" subject',
            "recipients": ["x@y.example", "z@y.example"],
            "nrcpt": 2,
        },
    ),
    (f"{Q} <= root@mx1.example.test U=root P=local S=620", Kind.ENQUEUE, Q, {"user": "root", "protocol": "local"}),
    (
        f"{Q} <= <> R={P} U=Debian-exim P=local S=2128 id*=E{Q}@mx1.example.test "
        'T="Mail delivery failed: returning message to sender" from <> for sender@mx1.example.test',
        Kind.ENQUEUE,
        Q,
        {
            "sender": "",
            "bounce_of": P,
            "notification": "non-delivery",
            "message_id": f"<E{Q}@mx1.example.test>",
            "message_id_created": True,
            "original_sender": "",
        },
    ),
    (
        f'{Q} <= <> R={P} U=Debian-exim P=local S=2414 T="Warning: message {P} delayed 1 minutes"',
        Kind.ENQUEUE,
        Q,
        {"bounce_of": P, "notification": "delay"},
    ),
    (
        f'{Q} <= <> R={P} U=Debian-exim P=local S=1806 T="Delivery Status Notification"',
        Kind.ENQUEUE,
        Q,
        {"bounce_of": P, "notification": "delivery status"},
    ),
    (f"{Q} <= <> R={P} U=Debian-exim P=local S=1806", Kind.ENQUEUE, Q, {"bounce_of": P, "notification": None}),
    (f"{Q} (= a@b.example H=[192.0.2.1] P=esmtp S=12", Kind.ENQUEUE, Q, {"fakereject": True, "client_ip": "192.0.2.1"}),
    # -- => -> >> *> delivery
    (
        f"{Q} => bob <bob@mx1.example.test> F=<sender@mx1.example.test> P=<sender@mx1.example.test> "
        "R=local_user T=local_delivery S=724 QT=0s DT=0s",
        Kind.DELIVERY,
        Q,
        {
            "recipient": "bob",
            "orig_recipient": "bob@mx1.example.test",
            "status": "sent",
            "router": "local_user",
            "transport": "local_delivery",
            "sender": "sender@mx1.example.test",
            "return_path": "sender@mx1.example.test",
            "size": 724,
            "delay": 0.0,
            "deliver_time": 0.0,
        },
    ),
    (
        f"{Q} => carol <team@mx1.example.test> R=local_user T=local_delivery",
        Kind.DELIVERY,
        Q,
        {"recipient": "carol", "orig_recipient": "team@mx1.example.test"},
    ),
    (
        f"{Q} => ok@relay.test F=<s@x> P=<s@x> R=sinks T=remote_smtp S=548 H=127.0.0.1 [127.0.0.1]:2610 "
        'C="250 2.0.0 Ok: queued as SINK000001" QT=14s DT=0s',
        Kind.DELIVERY,
        Q,
        {
            "recipient": "ok@relay.test",
            "orig_recipient": None,
            "relay": "127.0.0.1[127.0.0.1]:2610",
            "relay_host": "127.0.0.1",
            "relay_ip": "127.0.0.1",
            "relay_port": 2610,
            "reply": "250 2.0.0 Ok: queued as SINK000001",
            "dsn": "2.0.0",
            "queued_as": "SINK000001",
            "delay": 14.0,
        },
    ),
    (
        f"{Q} => carol@mx2.example.test R=sinks T=remote_smtp S=551 H=127.0.0.1 [127.0.0.1]:2511 K "
        f'C="250- 551 byte chunk, total 551\\\\n250 OK id={Q97}" QT=0s DT=0s',
        Kind.DELIVERY,
        Q,
        {"chunking": True, "queued_as": Q97, "reply": f"250- 551 byte chunk, total 551\\n250 OK id={Q97}"},
    ),
    (
        f"{Q} -> far@far.test R=sinks T=remote_smtp H=mx.far.test [192.0.2.4]:25* X=TLS1.2:ECDHE:256 CV=yes "
        'DN="C=US,CN=mx" C="250 OK" QT=1.578s DT=0.304s',
        Kind.DELIVERY,
        Q,
        {
            "flag": "->",
            "connection_reused": True,
            "tls": "TLS1.2:ECDHE:256",
            "tls_peer": "C=US,CN=mx",
            "delay": 1.578,
            "deliver_time": 0.304,
        },
    ),
    (
        f"{Q} => samvid++sent@pochta.ru (samvid++Sent@pochta.ru, samvid@bk.ru) <samvid@bk.ru> R=virtuser_lmtp "
        'T=remote_lmtp H=be5.ml.itmm.ru [185.79.118.113]:2125 C="LMTP Successful delivery:250 okay"',
        Kind.DELIVERY,
        Q,
        {"orig_recipient": "samvid@bk.ru", "parents": ["samvid++Sent@pochta.ru", "samvid@bk.ru"]},
    ),
    (
        f"{Q} => |/usr/bin/autorespond x@a.example /home/x/.autorespond (x@a.example) <x@a.example> "
        "R=virtual_aliases T=address_pipe",
        Kind.DELIVERY,
        Q,
        {"recipient": "|/usr/bin/autorespond x@a.example /home/x/.autorespond", "parents": ["x@a.example"]},
    ),
    (
        f"{Q} => save mail/github <chris@example.org> R=userforward T=address_file",
        Kind.DELIVERY,
        Q,
        {"recipient": "mail/github", "orig_recipient": "chris@example.org"},
    ),
    (
        f"{Q} => >chris@example.org <chris@example.org> R=uf T=address_reply",
        Kind.DELIVERY,
        Q,
        {"recipient": ">chris@example.org"},
    ),
    (
        f"{Q} => :blackhole: <hole@nowhere.example> R=blackhole_router",
        Kind.DELIVERY,
        Q,
        {"recipient": ":blackhole:", "orig_recipient": "hole@nowhere.example", "transport": None},
    ),
    (f'{Q} >> x@y.example R=dnslookup T=remote_smtp H=mx [192.0.2.3] C="250 OK"', Kind.DELIVERY, Q, {"flag": ">>"}),
    (f"{Q} *> x@y.example R=dnslookup T=remote_smtp", Kind.DELIVERY, Q, {"status": "deliverable"}),
    (
        f"{Q} => x@y.example R=dnslookup T=remote_smtp H=mx [192.0.2.3] ST=shadow_t (failed to open)",
        Kind.DELIVERY,
        Q,
        {"shadow": "shadow_t (failed to open)"},
    ),
    # -- == deferral
    (
        f"{Q} == wait@stuck.test R=sinks T=remote_smtp defer (-44) H=127.0.0.1 [127.0.0.1]:2612 DT=0s: SMTP "
        "error from remote mail server after RCPT TO:<wait@stuck.test>: 451 4.4.1 stuck.test: service temporarily "
        "unavailable",
        Kind.DEFERRAL,
        Q,
        {
            "recipient": "wait@stuck.test",
            "status": "deferred",
            "errno": -44,
            "code": 451,
            "dsn": "4.4.1",
            "relay_ip": "127.0.0.1",
            "relay_port": 2612,
            "transport": "remote_smtp",
            "attempted": True,
            "reply": "SMTP error from remote mail server after RCPT TO:<wait@stuck.test>: 451 4.4.1 stuck.test: "
            "service temporarily unavailable",
        },
    ),
    (
        f"{Q} == full@busy.test routing defer (-52) DT=0s: retry time not reached",
        Kind.DEFERRAL,
        Q,
        {"attempted": False, "stage": "routing", "reply": "retry time not reached", "dsn": None},
    ),
    (
        f"{Q} == a@b.example R=dnslookup T=remote_smtp defer (-53): retry time not reached for any host",
        Kind.DEFERRAL,
        Q,
        {"attempted": False, "errno": -53},
    ),
    (
        f"{Q} == marvin@endrest.example R=dnslookup T=smtp defer (111): Connection refused",
        Kind.DEFERRAL,
        Q,
        {"errno": 111, "reply": "Connection refused"},
    ),
    (
        f"{Q} == a@b.example R=dnslookup T=remote_smtp defer (111): Connection refused H=mx.b.example [192.0.2.9]: "
        "SMTP error from remote mail server after initial connection: 421 busy",
        Kind.DEFERRAL,
        Q,
        {
            "relay_host": "mx.b.example",
            "code": 421,
            "reply": "Connection refused: SMTP error from remote mail server after initial connection: 421 busy",
        },
    ),
    (
        f"{Q} == a@b.example <c@d.example> R=local_user T=local_delivery defer (-22): mailbox is full",
        Kind.DEFERRAL,
        Q,
        {"orig_recipient": "c@d.example", "errno": -22},
    ),
    # -- ** failure, error ignored
    (
        f"{Q} ** gone@relay.test F=<s@x> P=<s@x> R=sinks T=remote_smtp H=127.0.0.1 [127.0.0.1]:2610: SMTP error from "
        "remote mail server after RCPT TO:<gone@relay.test>: 550 5.1.1 <gone@relay.test>: Recipient address "
        "rejected: User unknown DT=0s",
        Kind.DELIVERY,
        Q,
        {
            "status": "bounced",
            "code": 550,
            "dsn": "5.1.1",
            "deliver_time": 0.0,
            "relay_port": 2610,
            "reply": "SMTP error from remote mail server after RCPT TO:<gone@relay.test>: 550 5.1.1 "
            "<gone@relay.test>: Recipient address rejected: User unknown",
        },
    ),
    (
        f"{Q} ** never@expire.test: retry timeout exceeded",
        Kind.DELIVERY,
        Q,
        {"status": "expired", "recipient": "never@expire.test", "reply": "retry timeout exceeded"},
    ),
    (
        f"{Q} ** jim@trek99.example <jim@trek99.example>: unknown mail domain",
        Kind.DELIVERY,
        Q,
        {"status": "bounced", "orig_recipient": "jim@trek99.example", "reply": "unknown mail domain"},
    ),
    (
        f"{Q} ** ace400@pb.example R=dnslookup T=remote_smtp: SMTP error from remote mailer after pipelined "
        "RCPT TO:<ace400@pb.example>: host pbmail3.py.example [192.168.63.111]: 553 5.3.0 <ace400@pb.example>... "
        "Addressee unknown",
        Kind.DELIVERY,
        Q,
        {"relay_host": "pbmail3.py.example", "relay_ip": "192.168.63.111", "dsn": "5.3.0"},
    ),
    (
        f"{Q} ** x@y.example R=nonlocal: Mailing to remote domains not supported",
        Kind.DELIVERY,
        Q,
        {"router": "nonlocal"},
    ),
    (
        f"{Q} sender@example.org <parent@example.org>: error ignored",
        Kind.DELIVERY,
        Q,
        {"status": "failed", "recipient": "sender@example.org", "orig_recipient": "parent@example.org"},
    ),
    # -- the end of a message, and the queue's other notes about it
    (f"{Q} Completed", Kind.REMOVED, Q, {}),
    (f"{Q97} Completed QT=3m15s", Kind.REMOVED, Q97, {"delay": 195.0}),
    (f"{Q} Message is frozen", Kind.ADMIN, Q, {"action": "frozen"}),
    (f"{Q} Frozen (delivery error message)", Kind.ADMIN, Q, {"action": "frozen"}),
    (f"{Q} frozen by root", Kind.ADMIN, Q, {"action": "frozen", "by": "root"}),
    (f"{Q} unfrozen by root", Kind.ADMIN, Q, {"action": "thawed", "by": "root"}),
    (f"{Q} Unfrozen by errmsg timer", Kind.ADMIN, Q, {"action": "thawed"}),
    (f"{Q} removed by root", Kind.ADMIN, Q, {"action": "removed"}),
    (f"{Q} cancelled by root", Kind.ADMIN, Q, {"action": "cancelled"}),
    (f"{Q} address <x@y.example> marked delivered by root", Kind.ADMIN, Q, {"recipient": "x@y.example"}),
    (f"{Q} recipient <x@y.example> added by root", Kind.ADMIN, Q, {"action": "recipient added"}),
    (
        f"{Q} Spool file for {Q} is locked (another process is handling this message)",
        Kind.ADMIN,
        Q,
        {"action": "skipped"},
    ),
    (f"{Q} Spool file is locked (another process is handling this message)", Kind.ADMIN, Q, {"action": "skipped"}),
    (f"{Q} no immediate delivery: load average 2.34", Kind.ADMIN, Q, {"action": "queued"}),
    (f"{Q} => discarded (system filter)", Kind.CHECK, Q, {"action": "discard"}),
    (f"{Q} => blackhole (DATA ACL discarded recipients): spam", Kind.CHECK, Q, {"action": "discard"}),
    (f"{Q} Delivery deferred by system filter", Kind.CHECK, Q, {"action": "defer"}),
    (f"{Q} DKIM: d=example.com s=sel c=relaxed/relaxed a=rsa-sha256 [verification succeeded]", Kind.CHECK, Q, {}),
    (
        f"{Q} H=mx.example [192.0.2.4]: SMTP error from remote mail server after initial connection: 421 busy",
        Kind.DEFERRAL,
        Q,
        {"recipient": None, "relay_host": "mx.example", "relay_ip": "192.0.2.4"},
    ),
    (f"{Q} H=mx.example [192.0.2.4] Connection refused", Kind.DEFERRAL, Q, {"reply": "Connection refused"}),
    (
        f"{Q} Error while reading message with no usable sender address (R={P}): at least one malformed recipient",
        Kind.SERVICE,
        Q,
        {"bounce_of": P},
    ),
    (f"{Q} Process failed (1) when writing error message to root@x (frozen)", Kind.SERVICE, Q, {}),
    (f"{Q} <x@y.example>: pipe transport output: procmail: cannot create", Kind.SERVICE, Q, {}),
    # -- SMTP sessions
    (
        "SMTP connection from [127.0.0.1]:45588 (TCP/IP connection count = 1)",
        Kind.CONNECT,
        None,
        {"client_ip": "127.0.0.1", "client_port": 45588, "connection_count": 1},
    ),
    (
        "SMTP connection from [127.0.0.1]:39646 I=[127.0.0.1]:2511 (TCP/IP connection count = 1)",
        Kind.CONNECT,
        None,
        {"server_ip": "127.0.0.1", "server_port": 2511},
    ),
    (
        "SMTP connection from (client.example.test) [127.0.0.1]:45596 closed by QUIT",
        Kind.DISCONNECT,
        None,
        {"client_ip": "127.0.0.1", "helo": "client.example.test", "reason": "closed by QUIT"},
    ),
    ("SMTP connection from [127.0.0.1]:45588 lost D=0s", Kind.DISCONNECT, None, {"duration": 0.0}),
    (
        "SMTP connection from [127.0.0.1]:39646 I=[127.0.0.1]:2511 lost D=0.000s",
        Kind.DISCONNECT,
        None,
        {"client_port": 39646},
    ),
    ("SMTP connection from (h) [192.0.2.1]:5 lost while reading message data", Kind.DISCONNECT, None, {}),
    ("SMTP connection from (h) [192.0.2.1]:5 closed by DROP in ACL", Kind.DISCONNECT, None, {}),
    ("unexpected disconnection while reading SMTP command from (h) [192.0.2.1]:5 D=1s", Kind.DISCONNECT, None, {}),
    ("SMTP command timeout on connection from (h) [192.0.2.1]:5", Kind.DISCONNECT, None, {}),
    (
        f"{Q} SMTP data timeout (message abandoned) on connection from (h) [60.51.10.243]:52302 F=<a@b.example>",
        Kind.DISCONNECT,
        Q,
        {"client_ip": "60.51.10.243"},
    ),
    (
        'SMTP call from (h) [192.0.2.1]:5 dropped: too many nonmail commands (last was "RSET")',
        Kind.DISCONNECT,
        None,
        {},
    ),
    (
        "H=(client.example.test) [127.0.0.1]:45676 F=<sender@mx1.example.test> rejected RCPT "
        "<ghost@mx1.example.test>: Unrouteable address",
        Kind.REJECT,
        None,
        {
            "stage": "RCPT",
            "temporary": False,
            "code": None,
            "sender": "sender@mx1.example.test",
            "recipient": "ghost@mx1.example.test",
            "client_ip": "127.0.0.1",
            "helo": "client.example.test",
            "reply": "Unrouteable address",
        },
    ),
    (
        "H=localhost (x.example) [127.0.0.1] F=<me@localhost> temporarily rejected RCPT <me@localhost>: DNS lookup "
        'of "MAIN_RELAY_NETS" deferred',
        Kind.REJECT,
        None,
        {"temporary": True, "client_host": "localhost", "recipient": "me@localhost"},
    ),
    (
        f"{Q} H=(client.example.test) [127.0.0.1]:54578 F=<sender@mx1.example.test> rejected after DATA: 5.7.1 "
        "Message content rejected by local policy",
        Kind.REJECT,
        Q,
        {"stage": "END-OF-MESSAGE", "dsn": "5.7.1", "sender": "sender@mx1.example.test"},
    ),
    ("H=(h) [192.0.2.1]:25 F=<> rejected MAIL <>: no bounces", Kind.REJECT, None, {"stage": "MAIL", "sender": ""}),
    ("H=(h) [192.0.2.1] rejected EHLO or HELO h: bad helo", Kind.REJECT, None, {"stage": "HELO", "helo": "h"}),
    ('H=[192.0.2.1] rejected connection in "connect" ACL: blocked', Kind.REJECT, None, {"stage": "CONNECT"}),
    ("rejected EHLO from [192.0.2.1]: syntactically invalid argument(s): _bad_", Kind.REJECT, None, {"stage": "EHLO"}),
    ("Connection from [192.0.2.1] refused: too many connections", Kind.REJECT, None, {"stage": "CONNECT"}),
    ("refused connection from [192.0.2.1] (host_reject_connection)", Kind.REJECT, None, {"stage": "CONNECT"}),
    (
        "SMTP protocol synchronization error (input sent without waiting for greeting): rejected connection from "
        'H=[192.0.2.1]:50000 input="EHLO x"',
        Kind.REJECT,
        None,
        {"stage": "CONNECT", "client_port": 50000},
    ),
    (
        "dovecot_plain authenticator failed for (User) [192.0.2.1]:56789: 535 Incorrect authentication data "
        "(set_id=info@example.com)",
        Kind.REJECT,
        None,
        {"stage": "AUTH", "auth": "dovecot_plain", "helo": "User"},
    ),
    ("F=<a@b.example> rejected by non-SMTP ACL: not allowed", Kind.REJECT, None, {"stage": "non-SMTP"}),
    (
        "H=(h) [192.0.2.1] F=<a@b.example> RCPT <x@y.example>: discarded by RCPT ACL: spam trap",
        Kind.CHECK,
        None,
        {"action": "discard", "recipient": "x@y.example", "sender": "a@b.example"},
    ),
    ("H=(h) [192.0.2.1] Warning: message has 5.1 spam points", Kind.CHECK, None, {"action": "warn"}),
    (
        "H=(client.example.test) [127.0.0.1]:45676 incomplete transaction (QUIT) from <sender@mx1.example.test>",
        Kind.SERVICE,
        None,
        {"sender": "sender@mx1.example.test", "client_port": 45676},
    ),
    (
        "no MAIL in SMTP connection from [127.0.0.1]:39646 I=[127.0.0.1]:2511 D=0.000s C=EHLO,QUIT",
        Kind.SERVICE,
        None,
        {"commands": "EHLO,QUIT", "duration": 0.0},
    ),
    ("H=(h) [192.0.2.1]:5 sender verify fail for <a@b.example>: Unrouteable address", Kind.SERVICE, None, {}),
    # -- what Exim says about itself
    (
        "exim 4.96 daemon started: pid=6812, -q15s, listening for SMTP on [127.0.0.1]:2510",
        Kind.SERVICE,
        None,
        {"text": "exim 4.96 daemon started: pid=6812, -q15s, listening for SMTP on [127.0.0.1]:2510"},
    ),
    ("Start queue run: pid=6813", Kind.SERVICE, None, {}),
    ("End queue run: pid=6813", Kind.SERVICE, None, {}),
    ("End 'second' queue run: pid=6813", Kind.SERVICE, None, {}),
    ("pid 1079: SIGHUP received: re-exec daemon", Kind.SERVICE, None, {}),
    ("cwd=/var/spool/exim 3 args: /usr/sbin/exim -Mc 1avJcc-0003Py-15", Kind.SERVICE, None, {}),
    ("no host name found for IP address 192.0.2.1", Kind.SERVICE, None, {}),
    ("Warning: No server certificate defined; will use a selfsigned one.", Kind.SERVICE, None, {}),
    (
        "TLS error on connection from (h) [192.0.2.1]:5 (SSL_accept): error:0A000418:SSL routines",
        Kind.SERVICE,
        None,
        {},
    ),
]


def line(payload: str) -> str:
    return f"2026-03-01 12:00:00 {payload}\n"


def check(ev: Event, kind: Kind, qid: str | None, fields: dict) -> None:
    assert ev.kind is kind, ev
    assert ev.mta == "exim"
    assert ev.queue_id == qid
    for key, value in fields.items():
        assert ev.fields.get(key) == value, (key, ev.fields)


IDS = [c[0][:60] for c in CASES]


@pytest.mark.parametrize(("payload", "kind", "qid", "fields"), CASES, ids=IDS)
def test_shape(payload: str, kind: Kind, qid: str | None, fields: dict) -> None:
    ev = parse(line(payload), CTX)
    check(ev, kind, qid, fields)
    assert ev.program is None and ev.host is None
    assert ev.ts == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("payload", "kind", "qid", "fields"), CASES, ids=IDS)
def test_shape_through_syslog(payload: str, kind: Kind, qid: str | None, fields: dict) -> None:
    """Exim's own date inside syslog's; +pid, +millisec and a zone on the inner one."""
    ev = parse(f"Mar  1 12:00:01 mx1 exim[4711]: 2026-03-01 12:00:00.250 +0100 [4711] {payload}\n", CTX)
    check(ev, kind, qid, fields)
    assert (ev.program, ev.host, ev.pid) == ("exim", "mx1", 4711)
    assert ev.ts == datetime(2026, 3, 1, 11, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize(("payload", "kind", "qid", "fields"), CASES, ids=IDS)
def test_fast_path_agrees_with_grammar(payload: str, kind: Kind, qid: str | None, fields: dict) -> None:
    quick = ex.fast(payload)
    if quick is not None:
        assert quick == ex.parse_grammar(payload)


#: The shapes that make up nearly every line of a busy main log.
COMMON = [
    f"{Q} <= a@b.example H=mx.b.example [192.0.2.1]:4711 P=esmtps X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no S=1234 "
    "id=abc@b.example",
    f"{Q} <= <> R={P} U=Debian-exim P=local S=2128",
    f"{Q} => bob <bob@mx1.example.test> R=local_user T=local_delivery",
    f'{Q} => x@y.example R=dnslookup T=remote_smtp H=mx.y.example [192.0.2.3] C="250 2.0.0 Ok: queued as 4F9D195432"',
    f"{Q} -> z@y.example R=dnslookup T=remote_smtp H=mx.y.example [192.0.2.3]*",
    f"{Q} == x@y.example R=dnslookup T=remote_smtp defer (-44) H=mx.y.example [192.0.2.3]: SMTP error from remote "
    "mail server after RCPT TO:<x@y.example>: 451 4.7.1 greylisted",
    f"{Q} == x@y.example R=dnslookup T=remote_smtp defer (-53): retry time not reached for any host",
    f"{Q} ** x@y.example R=dnslookup T=remote_smtp H=mx.y.example [192.0.2.3]: SMTP error from remote mail server "
    "after RCPT TO:<x@y.example>: 550 5.1.1 unknown",
    f"{Q} Completed",
    "SMTP connection from [192.0.2.1]:4711 (TCP/IP connection count = 7)",
    "SMTP connection from mx.b.example (helo) [192.0.2.1]:4711 closed by QUIT",
    "SMTP connection from (helo) [192.0.2.1]:4711 lost D=2s",
    "H=(helo) [192.0.2.1]:4711 F=<a@b.example> rejected RCPT <x@y.example>: Unknown user",
    f"{Q} H=(helo) [192.0.2.1]:4711 F=<a@b.example> rejected after DATA: spam",
    "Start queue run: pid=4711",
    "End queue run: pid=4711",
    f"{Q} Message is frozen",
    "no host name found for IP address 192.0.2.1",
    "TLS error on connection from (helo) [192.0.2.1]:4711 (SSL_accept): error:0A000418:SSL routines::unknown ca",
    "dovecot_login authenticator failed for (User) [192.0.2.1]:4711: 535 Incorrect authentication data",
    "unexpected disconnection while reading SMTP command from (helo) [192.0.2.1]:4711 D=1s",
    "SMTP command timeout on connection from (helo) [192.0.2.1]:4711",
]


@pytest.mark.parametrize("payload", COMMON, ids=[c[:60] for c in COMMON])
def test_fast_path_covers_the_common_shapes(payload: str) -> None:
    """A fast path that silently fell back would still be correct but slow."""
    quick = ex.fast(payload)
    assert quick is not None
    assert quick == ex.parse_grammar(payload)


def test_filter_lines_are_not_deliveries_on_the_fast_path() -> None:
    for payload in (f"{Q} => discarded (system filter)", f"{Q} => blackhole (DATA ACL discarded recipients): x"):
        assert ex.fast(payload) is None
        assert parse(line(payload), CTX).kind is Kind.CHECK


def test_message_ids_old_and_new() -> None:
    for qid in (Q, Q97, "1xXUZh-0003cJ-0y", "1wuZUi-0000000BrCR-0u0H"):
        assert parse(line(f"{qid} Completed"), CTX).queue_id == qid
        assert parse(line(f"{qid} ** x@y.example: Unknown user"), CTX).queue_id == qid
    for bad in ("1vZ5XY-000ABC-Q Completed", "1vZ5XY-0000000ABC-Q1w0 Completed", "1vZ5XY_000ABC-Q1 Completed"):
        assert parse(line(bad), CTX).kind is Kind.UNKNOWN


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("14s", 14.0),
        ("3m15s", 195.0),
        ("1h2m3s", 3723.0),
        ("1d2h", 93600.0),
        ("1w", 604800.0),
        ("0.103s", 0.103),
        ("2m5.250s", 125.25),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert ex.duration(text) == pytest.approx(seconds)
    assert ex.duration(f"{text}x") is None


def test_reject_log_entry_through_syslog() -> None:
    """A multi-line reject-log entry reaches syslog as numbered parts; only
    the first has Exim's date; the rest continue the rejection."""
    parts = [
        f"[1\\5] 2026-03-01 12:00:00 {Q} H=(c.example) [192.0.2.1]:5 F=<s@c.example> rejected after DATA: spam",
        "[2\\5] Envelope-from: <s@c.example>",
        "[3\\5] Envelope-to: <alice@mx1.example.test>",
        "[4\\5] P Received: from [192.0.2.1] (port=5 helo=c.example)",
        "[5/5] #011by mx1.example.test with esmtp (Exim 4.96)",
    ]
    events = [parse(f"Mar  1 12:00:00 mx1 exim[7]: {p}", CTX) for p in parts]
    assert [e.kind for e in events] == [Kind.REJECT] * 5
    first, sender, rcpt, header, folded = events
    assert (first.queue_id, first.fields["parts"], first.fields["stage"]) == (Q, 5, "END-OF-MESSAGE")
    assert "continuation" not in first.fields
    assert all(e.fields["continuation"] for e in events[1:])
    assert sender.fields["sender"] == "s@c.example"
    assert rcpt.fields["recipient"] == "alice@mx1.example.test"
    assert (header.fields["header"], folded.fields["header"]) == ("Received", None)


def test_warning_with_suggestion_through_syslog() -> None:
    first = parse("Mar  1 12:00:00 mx1 exim[7]: [1\\2] 2026-03-01 12:00:00 Warning: purging the environment.", CTX)
    second = parse("Mar  1 12:00:00 mx1 exim[7]: [2/2]  Suggested action: use keep_environment.", CTX)
    assert (first.kind, second.kind) == (Kind.SERVICE, Kind.SERVICE)
    assert second.fields == {"text": "Suggested action: use keep_environment.", "continuation": True}


def test_reject_log_file_header_dump() -> None:
    """In the reject log file the dump's lines have no date: the dispatcher
    gives them to exim.continuation."""
    dump = {
        "Envelope-from: <s@c.example>": {"sender": "s@c.example"},
        "Envelope-to: <a@x.example>": {"recipient": "a@x.example"},
        "Recipients: a@x.example, b@x.example": {"recipients": ["a@x.example", "b@x.example"]},
        "P Received: from [192.0.2.1] (port=5 helo=c.example)": {"header": "Received"},
        "\tby mx1.example.test with esmtp (Exim 4.96)": {"header": None},
        "  Subject: cheap SPAM offer": {"header": "Subject"},
        "I Message-ID: <s16@c.example>": {"header": "Message-ID"},
        "* X-Deleted: 1": {"header": "X-Deleted"},
    }
    for text, fields in dump.items():
        reading = ex.continuation(text)
        assert reading is not None, text
        kind, _, found = reading
        assert kind is Kind.REJECT, text
        assert found["continuation"] is True
        for key, value in fields.items():
            assert found[key] == value, (text, key)
    for text in ("", "garbage", "2026-03-01 12:00:00 Completed"):
        assert ex.continuation(text) is None


def test_unreadable_exim_lines_are_unknown_not_errors() -> None:
    for payload in (
        f"{Q} something Exim never wrote",
        f"{Q} SMTP connection outbound 1461741057 {Q} example.com x@y.example",  # a cPanel logwrite
        f"{Q} => ",
        f"{Q} <= ",
        f"{Q} == x@y.example R=r T=t",
        "[7\\9] 2026-03-01",
        "[3/9] 09:43 +0100",
        "",
        "SMTP connection from nowhere",
    ):
        ev = parse(line(payload), CTX)
        assert ev.kind is Kind.UNKNOWN and ev.mta == "exim", payload


# -- the real capture -----------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "exim"
EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
LOGS = [entry["file"] for entry in EXPECTED["logs"]]
SAMPLE_CTX = Context(reference=datetime(2026, 12, 1, tzinfo=UTC))


def read(text: str) -> Event:
    """A line as ``mtqpd`` reads it: the dispatcher hands a reject log's
    undated header-dump lines to ``exim.continuation``."""
    return parse(text, SAMPLE_CTX)


def sample_lines(name: str) -> list[str]:
    return (SAMPLES / name).read_text(encoding="utf-8", errors="replace").splitlines()


@pytest.mark.parametrize("name", LOGS)
def test_every_sample_line_is_understood(name: str) -> None:
    unknown = [text for text in sample_lines(name) if read(text).kind is Kind.UNKNOWN]
    assert not unknown, unknown[:5]


@pytest.mark.parametrize("name", LOGS)
def test_fast_path_agrees_with_grammar_on_samples(name: str) -> None:
    for text in sample_lines(name):
        env = split(text, SAMPLE_CTX)
        if env is None:
            continue
        *_, payload = env
        if payload.startswith("["):
            continue
        quick = ex.fast(payload)
        if quick is not None:
            assert quick == ex.parse_grammar(payload), text


def mutations(text: str) -> set[str]:
    """Truncations and small damage: what a torn or foreign line looks like."""
    out = {text[:i] for i in range(0, len(text), 3)}
    for old, new in ((" ", "  "), ("=", " = "), (":", ""), ("<", ""), ('"', ""), ("]", ""), ("(", "")):
        out.add(text.replace(old, new, 1))
    return out | {text + " ", " " + text}


@pytest.mark.parametrize("name", ["mainlog", "mx2.mainlog"])
def test_damaged_sample_lines_never_raise_and_paths_agree(name: str) -> None:
    for text in sample_lines(name):
        env = split(text, SAMPLE_CTX)
        assert env is not None
        *_, whole = env
        for payload in mutations(whole):
            reading = ex.parse(payload)
            quick = ex.fast(payload)
            if quick is not None:
                assert quick == ex.parse_grammar(payload), payload
                assert reading == quick


def mainlog_events() -> list[Event]:
    return [read(text) for text in sample_lines("mainlog")]


def test_samples_link_notifications_to_their_parents() -> None:
    """Every notification of the ground truth is an ENQUEUE whose bounce_of is
    the queue id of the message it reports on, found by Message-ID."""
    arrivals = {ev.fields.get("message_id"): ev for ev in mainlog_events() if ev.kind is Kind.ENQUEUE}
    by_qid = {ev.queue_id: ev for ev in arrivals.values()}
    notes = [m for m in EXPECTED["messages"] if m["bounce_of"]]
    assert notes
    for note in notes:
        child = arrivals[note["message_id"]]
        assert child.fields["sender"] == ""
        assert by_qid[child.fields["bounce_of"]].fields["message_id"] == note["bounce_of"]
        assert child.fields["notification"] in ("non-delivery", "delay", "delivery status")


def test_samples_show_alias_expansion_as_original_recipients() -> None:
    team = [m for m in EXPECTED["messages"] if any(r.get("members") for r in m["recipients"])]
    assert team
    events = mainlog_events()
    for message in team:
        qid = next(ev.queue_id for ev in events if ev.fields.get("message_id") == message["message_id"])
        for r in message["recipients"]:
            finals = {
                ev.fields["recipient"]
                for ev in events
                if ev.queue_id == qid and ev.kind is Kind.DELIVERY and ev.fields["orig_recipient"] == r["original"]
            }
            # A local delivery logs the local part only (log_as_local).
            assert finals == {m["final"].split("@")[0] for m in r["members"]}


def test_samples_rejections_name_their_recipients() -> None:
    """RCPT rejections name the recipient; a DATA rejection's recipients are
    in the reject log's Envelope-to: lines."""
    named = {
        ev.fields.get("recipient")
        for name in ("mainlog", "rejectlog")
        for ev in (read(text) for text in sample_lines(name))
        if ev.kind is Kind.REJECT
    }
    for rejection in EXPECTED["rejections"]:
        assert rejection["recipient"] in named, rejection
