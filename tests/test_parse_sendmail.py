"""Sendmail line shapes, one by one, as Sendmail 8.12-8.18 writes them.

Most payloads are copied from the real capture (``samples/sendmail/``,
Sendmail 8.17.1.9 at LogLevel 10); the others are shapes the capture does
not provoke, written as the Sendmail sources format them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parsers import Context, Kind, parse
from parsers import sendmail as sm
from parsers.envelope import split

CTX = Context(reference=datetime(2026, 12, 1, tzinfo=UTC))
Q = "6AT2KmeV011597"
C = "6AT2KmeV011599"
TAIL = "ctladdr=<sender@mx1.example.test> (1007/1007), delay=00:00:00, xdelay=00:00:00"
FROM = "from=<sender@mx1.example.test>, size=340, class=0, nrcpts=1"

CASES: list[tuple[str, str, Kind, str | None, dict]] = [
    # (program, payload, kind, queue id, fields that must be there)
    # -- the SMTP session ------------------------------------------------------------
    (
        "sm-mta",
        "NOQUEUE: connect from localhost [127.0.0.1]",
        Kind.CONNECT,
        None,
        {"client_host": "localhost", "client_ip": "127.0.0.1"},
    ),
    (
        "sendmail",
        "NOQUEUE: connect from root@localhost",
        Kind.CONNECT,
        None,
        {"client_host": "localhost", "client_ip": None, "client_user": "root"},
    ),
    (
        "sm-mta",
        "NOQUEUE: connect from [192.0.2.7]",
        Kind.CONNECT,
        None,
        {"client_host": None, "client_ip": "192.0.2.7"},
    ),
    (
        "sm-mta",
        "NOQUEUE: connect from mail.example [IPv6:2001:db8::25] (may be forged)",
        Kind.CONNECT,
        None,
        {"client_host": "mail.example", "client_ip": "2001:db8::25", "forged": True},
    ),
    (
        "sm-mta",
        f"{Q}: localhost [127.0.0.1] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA-v4",
        Kind.SERVICE,
        Q,
        {"client_host": "localhost", "client_ip": "127.0.0.1", "daemon": "MTA-v4"},
    ),
    (
        "sm-mta",
        f"{Q}: lost input channel from client.example [192.0.2.5] to MTA after rcpt",
        Kind.DISCONNECT,
        Q,
        {"client_host": "client.example", "client_ip": "192.0.2.5", "after": "rcpt", "daemon": "MTA"},
    ),
    (
        "sm-mta",
        "NOQUEUE: timeout waiting for input from client.example [192.0.2.5] during server cmd read",
        Kind.DISCONNECT,
        None,
        {"client_ip": "192.0.2.5", "during": "server cmd read"},
    ),
    (
        "sm-mta",
        f"{Q}: timeout waiting for input from mx.example.com. during client DATA status",
        Kind.SERVICE,
        Q,
        {},
    ),
    (
        "sm-mta",
        "NOQUEUE: tcpwrappers (client.example, 192.0.2.5) rejection",
        Kind.REJECT,
        None,
        {"stage": "CONNECT", "client_host": "client.example", "client_ip": "192.0.2.5"},
    ),
    (
        "sm-mta",
        "rejecting commands from client.example [192.0.2.5] due to pre-greeting traffic after 5 seconds",
        Kind.REJECT,
        None,
        {"stage": "CONNECT", "client_ip": "192.0.2.5"},
    ),
    (
        "sm-mta",
        "STARTTLS=server, relay=client.example [192.0.2.5], version=TLSv1.3, verify=NO, "
        "cipher=TLS_AES_256_GCM_SHA384, bits=256/256",
        Kind.SERVICE,
        None,
        {},
    ),
    (
        "sm-mta",
        "STARTTLS=client, relay=mx.example.com., version=TLSv1.3, verify=OK, cipher=TLS_AES_256_GCM_SHA384, "
        "bits=256/256",
        Kind.SERVICE,
        None,
        {},
    ),
    ("sm-mta", "AUTH=client, relay=[127.0.0.1], mech=, bits=0", Kind.SERVICE, None, {}),
    (
        "sm-mta",
        "AUTH=server, relay=client.example [192.0.2.5], authid=joe, mech=PLAIN, bits=0",
        Kind.SERVICE,
        None,
        {},
    ),
    # -- logsender: the envelope -----------------------------------------------------
    (
        "sm-mta",
        f"{Q}: from=<sender@mx1.example.test>, size=340, class=0, nrcpts=1, "
        "msgid=<s04.relay-rejected-bounce@client.example.test>, proto=ESMTP, daemon=MTA-v4, "
        "relay=localhost [127.0.0.1]",
        Kind.ENQUEUE,
        Q,
        {
            "sender": "sender@mx1.example.test",
            "size": 340,
            "nrcpt": 1,
            "message_id": "<s04.relay-rejected-bounce@client.example.test>",
            "protocol": "ESMTP",
            "daemon": "MTA-v4",
            "client_host": "localhost",
            "client_ip": "127.0.0.1",
        },
    ),
    (
        "sendmail",
        "6AT2Km0Q011614: from=sender@mx1.example.test, size=326, class=0, nrcpts=1, "
        "msgid=<s13.msp-submission@client.example.test>, relay=root@localhost",
        Kind.ENQUEUE,
        "6AT2Km0Q011614",
        {"sender": "sender@mx1.example.test", "protocol": None, "client_host": "localhost", "client_user": "root"},
    ),
    (
        "sm-mta",
        f"{Q}: from=<sender@mx1.example.test>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA-v4, "
        "relay=localhost [127.0.0.1]",
        Kind.ENQUEUE,
        Q,
        {"nrcpt": 0, "size": 0, "message_id": None},
    ),
    (
        "sm-mta",
        f"{Q}: from=<>, size=2489, class=0, nrcpts=1, msgid=<a, b@x.example>, bodytype=8BITMIME, proto=ESMTPS, "
        "daemon=MTA, relay=mx.example [192.0.2.25] (may be forged)",
        Kind.ENQUEUE,
        Q,
        {
            "sender": "",
            "message_id": "<a, b@x.example>",
            "bodytype": "8BITMIME",
            "protocol": "ESMTPS",
            "client_host": "mx.example",
            "forged": True,
        },
    ),
    (
        "sendmail",
        "f2RDl6s26531: from=<a@b.example>, size=1234, class=-60, pri=61234, nrcpts=1, msgid=<x@b.example>, "
        "proto=SMTP, relay=b.example [192.0.2.1]",
        Kind.ENQUEUE,
        "f2RDl6s26531",
        {"class": -60, "pri": 61234, "protocol": "SMTP"},
    ),
    # -- logdelivery: one line per attempt and group of recipients -------------------------
    (
        "sm-mta",
        f"{Q}: to=<alice@mx1.example.test>, {TAIL}, mailer=local, pri=30522, dsn=2.0.0, stat=Sent",
        Kind.DELIVERY,
        Q,
        {
            "recipient": "alice@mx1.example.test",
            "recipients": ["alice@mx1.example.test"],
            "status": "sent",
            "dsn": "2.0.0",
            "reply": None,
            "transport": "local",
            "delay": 0.0,
            "ctladdr": "sender@mx1.example.test",
            "ctladdr_uid": 1007,
            "stat": "Sent",
        },
    ),
    (
        "sm-mta",
        f"{Q}: to=bob,carol,dave, {TAIL}, mailer=local, pri=90523, dsn=2.0.0, stat=Sent",
        Kind.DELIVERY,
        Q,
        {"recipient": "bob", "recipients": ["bob", "carol", "dave"]},
    ),
    (
        "sm-mta",
        f"{Q}: to=<ok@relay.test>, {TAIL}, mailer=esmtp, pri=30315, relay=[127.0.0.1] [127.0.0.1], dsn=2.0.0, "
        "stat=Sent (2.0.0 Ok: queued as SINK000001)",
        Kind.DELIVERY,
        Q,
        {
            "relay": "[127.0.0.1] [127.0.0.1]",
            "relay_host": None,
            "relay_ip": "127.0.0.1",
            "reply": "2.0.0 Ok: queued as SINK000001",
            "queued_as": "SINK000001",
        },
    ),
    (
        "sm-mta",
        f"{Q}: to=<frank@mx2.example.test>, {TAIL}, mailer=relay, pri=30329, relay=[127.0.0.1] [127.0.0.1], "
        "dsn=2.0.0, stat=Sent (6AT2KmUK011611 Message accepted for delivery)",
        Kind.DELIVERY,
        Q,
        {"transport": "relay", "queued_as": "6AT2KmUK011611"},
    ),
    (
        "sm-mta",
        f"{Q}: to=<x@exim.example>, delay=00:00:01, xdelay=00:00:01, mailer=esmtp, pri=120000, "
        "relay=mx.exim.example. [192.0.2.30], dsn=2.0.0, stat=Sent (OK id=1rAbCd-0001Xy-AB)",
        Kind.DELIVERY,
        Q,
        {"relay_host": "mx.exim.example", "relay_ip": "192.0.2.30", "queued_as": "1rAbCd-0001Xy-AB", "xdelay": 1.0},
    ),
    (
        "sm-mta",
        f"{Q}: to=<retry@relay.test>, {TAIL}, mailer=esmtp, pri=30360, relay=[127.0.0.1] [127.0.0.1], dsn=4.3.0, "
        "reply=451 4.3.0 Temporary failure, try again later, "
        "stat=Deferred: 451 4.3.0 Temporary failure, try again later",
        Kind.DEFERRAL,
        Q,
        {"status": "deferred", "dsn": "4.3.0", "reply": "451 4.3.0 Temporary failure, try again later"},
    ),
    (
        "sm-mta",
        f"{Q}: to=<retry@relay.test>, {TAIL}, mailer=esmtp, pri=120360, relay=[127.0.0.1] [127.0.0.1], dsn=4.4.1, "
        "stat=Deferred: Connection refused by [127.0.0.1]",
        Kind.DEFERRAL,
        Q,
        {"dsn": "4.4.1", "reply": "Connection refused by [127.0.0.1]"},
    ),
    (
        "sm-mta",
        f"{Q}: to=<alice@mx1.example.test>, {TAIL}, mailer=local, pri=30522, dsn=4.0.0, stat=Deferred: local "
        "mailer (/usr/libexec/sendmail/mail.local) exited with EX_TEMPFAIL",
        Kind.DEFERRAL,
        Q,
        {"transport": "local", "reply": "local mailer (/usr/libexec/sendmail/mail.local) exited with EX_TEMPFAIL"},
    ),
    (
        "sm-mta",
        f"{Q}: to=<reject@relay.test>, {TAIL}, mailer=esmtp, pri=30340, relay=[127.0.0.1] [127.0.0.1], dsn=5.1.1, "
        "reply=550 5.1.1 <reject@relay.test>: Recipient address rejected: User unknown in relay recipient table, "
        "stat=User unknown",
        Kind.DELIVERY,
        Q,
        {
            "status": "bounced",
            "dsn": "5.1.1",
            "stat": "User unknown",
            "reply": "550 5.1.1 <reject@relay.test>: Recipient address rejected: User unknown in relay recipient table",
        },
    ),
    (
        "sendmail",
        "6AT2Km0Q011614: to=alice@mx1.example.test, delay=00:00:00, mailer=relay, pri=30326, stat=queued",
        Kind.DEFERRAL,
        "6AT2Km0Q011614",
        {"recipient": "alice@mx1.example.test", "status": "deferred", "reply": None, "stat": "queued"},
    ),
    (
        "sm-msp-queue",
        "6AT2Km0Q011614: to=alice@mx1.example.test, ctladdr=sender@mx1.example.test (1007/1007), delay=00:00:00, "
        "xdelay=00:00:00, mailer=relay, pri=120326, relay=[127.0.0.1] [127.0.0.1], dsn=2.0.0, "
        "stat=Sent (6AT2KmSU011624 Message accepted for delivery)",
        Kind.DELIVERY,
        "6AT2Km0Q011614",
        {"ctladdr": "sender@mx1.example.test", "queued_as": "6AT2KmSU011624"},
    ),
    (
        "sm-mta",
        f"{Q}: to=<x@nowhere.example>, delay=2+03:04:05, xdelay=00:00:00, mailer=esmtp, pri=8120000, "
        "relay=nowhere.example, dsn=5.1.2, stat=Host unknown (Name server: nowhere.example: host not found)",
        Kind.DELIVERY,
        Q,
        {
            "delay": 183845.0,
            "status": "bounced",
            "relay_host": "nowhere.example",
            "relay_ip": None,
            "reply": "Host unknown (Name server: nowhere.example: host not found)",
        },
    ),
    (
        "sm-mta",
        f"{Q}: to=<x@slow.example>, delay=5+00:00:03, mailer=esmtp, pri=9120000, dsn=4.4.7, "
        "stat=Cannot send message for 5 days",
        Kind.DELIVERY,
        Q,
        {"status": "expired", "dsn": "4.4.7"},
    ),
    (
        "sm-mta",
        f'{Q}: to="|/usr/bin/procmail -f-, -a x",<b@x.example>, [more], ctladdr=joe (1000/1000), delay=00:00:02, '
        "xdelay=00:00:02, mailer=prog, pri=30000, dsn=2.0.0, stat=Sent",
        Kind.DELIVERY,
        Q,
        {"recipients": ['"|/usr/bin/procmail -f-, -a x"', "b@x.example"], "more": True, "ctladdr": "joe"},
    ),
    # -- returntosender, dropenvelope, sendall ---------------------------------------------
    (
        "sm-mta",
        f"{Q}: {C}: DSN: User unknown",
        Kind.BOUNCE,
        Q,
        {"child": C, "notification": "non-delivery", "to": "sender", "text": "User unknown"},
    ),
    (
        "sm-mta",
        f"{Q}: {C}: DSN: Return receipt",
        Kind.BOUNCE,
        Q,
        {"child": C, "notification": "delivery status"},
    ),
    (
        "sm-mta",
        f"{Q}: {C}: sender notify: Warning: could not send message for past 1 minute",
        Kind.BOUNCE,
        Q,
        {"child": C, "notification": "delay", "to": "sender"},
    ),
    (
        "sm-mta",
        f"{Q}: {C}: sender notify: Cannot send message for 5 minutes",
        Kind.BOUNCE,
        Q,
        {"child": C, "notification": "non-delivery", "expired": True, "to": "sender"},
    ),
    (
        "sm-mta",
        f"{Q}: {C}: postmaster notify: User unknown",
        Kind.BOUNCE,
        Q,
        {"notification": "non-delivery", "to": "postmaster"},
    ),
    (
        "sm-mta",
        f"{Q}: {C}: return to sender: Cannot send message for 5 days",
        Kind.BOUNCE,
        Q,
        {"notification": "non-delivery", "label": "return to sender"},
    ),
    (
        "sm-mta",
        f"{Q}: {C}: sender notify: Postmaster warning: could not send message for past 4 hours",
        Kind.BOUNCE,
        Q,
        {"notification": "delay"},
    ),
    ("sm-mta", f"{Q}: done; delay=00:00:15, ntries=2", Kind.REMOVED, Q, {"delay": 15.0, "ntries": 2}),
    (
        "sm-mta",
        f"{Q}: {C}: clone: owner=owner-list@x.example",
        Kind.REQUEUE,
        Q,
        {"queued_as": C, "action": "clone", "owner": "owner-list@x.example"},
    ),
    ("sendmail", f"{Q}: clone {C}, owner=owner-list", Kind.REQUEUE, Q, {"queued_as": C, "owner": "owner-list"}),
    (
        "sm-mta",
        f"{Q}: split: count=2, ids={C} 6AT2KmeV011600",
        Kind.REQUEUE,
        Q,
        {"queued_as": C, "children": [C, "6AT2KmeV011600"], "action": "split"},
    ),
    (
        "sm-mta",
        f"{Q}: alias <team@mx1.example.test> => bob, carol, dave",
        Kind.EXPANSION,
        Q,
        {"recipient": "team@mx1.example.test", "members": ["bob", "carol", "dave"]},
    ),
    (
        "sm-mta",
        f"{Q}: alias team@mx1.example.test => bob,carol,dave",
        Kind.EXPANSION,
        Q,
        {"recipient": "team@mx1.example.test", "members": ["bob", "carol", "dave"]},
    ),
    (
        "sm-mta",
        f'{Q}: alias <info@x.example> => erin,"|/usr/bin/vacation erin",:include:/etc/mail/lists/info',
        Kind.EXPANSION,
        Q,
        {
            "recipient": "info@x.example",
            "members": ["erin", '"|/usr/bin/vacation erin"', ":include:/etc/mail/lists/info"],
        },
    ),
    # -- rulesets and the SMTP server's errors ----------------------------------------------
    (
        "sm-mta",
        f"{Q}: <ghost@mx1.example.test>... User unknown",
        Kind.REJECT,
        Q,
        {"recipient": "ghost@mx1.example.test", "reply": "User unknown"},
    ),
    (
        "sm-mta",
        f"{Q}: <a@no-such.example>... Domain of sender address a@no-such.example does not exist",
        Kind.REJECT,
        Q,
        {"sender": "a@no-such.example"},
    ),
    (
        "sm-mta",
        f"{Q}: ruleset=check_rcpt, arg1=<x@elsewhere.example>, relay=client.example [192.0.2.5], "
        "reject=550 5.7.1 <x@elsewhere.example>... Relaying denied",
        Kind.REJECT,
        Q,
        {
            "stage": "RCPT",
            "recipient": "x@elsewhere.example",
            "code": 550,
            "dsn": "5.7.1",
            "reply": "<x@elsewhere.example>... Relaying denied",
            "client_ip": "192.0.2.5",
        },
    ),
    (
        "sm-mta",
        "NOQUEUE: ruleset=check_relay, arg1=bad.example, arg2=192.0.2.66, relay=bad.example [192.0.2.66], "
        "reject=554 5.7.1 Rejected 192.0.2.66 found in dnsbl.example",
        Kind.REJECT,
        None,
        {"stage": "CONNECT", "arg2": "192.0.2.66", "code": 554, "client_host": "bad.example"},
    ),
    (
        "sm-mta",
        f"{Q}: ruleset=check_mail, arg1=<a@no-such.example>, relay=client.example [192.0.2.5], "
        "reject=553 5.1.8 <a@no-such.example>... Domain of sender address a@no-such.example does not exist",
        Kind.REJECT,
        Q,
        {"stage": "MAIL", "sender": "a@no-such.example", "dsn": "5.1.8"},
    ),
    (
        "sm-mta",
        f"{Q}: ruleset=check_rcpt, arg1=<spamtrap@x.example>, relay=client.example [192.0.2.5], discard",
        Kind.CHECK,
        Q,
        {"action": "discard", "recipient": "spamtrap@x.example"},
    ),
    (
        "sm-mta",
        "ruleset=trust_auth, arg1=sender@mx1.example.test, relay=localhost [127.0.0.1], "
        "reject=550 5.7.1 <sender@mx1.example.test>... not authenticated",
        Kind.CHECK,
        None,
        {"ruleset": "trust_auth", "action": "reject", "sender": "sender@mx1.example.test", "code": 550},
    ),
    (
        "sm-mta",
        f"{Q}: collect: relay=localhost, from=<sender@mx1.example.test>, info=Bare linefeed (LF) not allowed, "
        "where=header, status=tempfail",
        Kind.REJECT,
        Q,
        {"stage": "DATA", "sender": "sender@mx1.example.test", "reply": "Bare linefeed (LF) not allowed"},
    ),
    (
        "sm-mta",
        f"{Q}: collect: relay=client.example, from=<a@b.example>, info=unexpected close, where=body",
        Kind.DISCONNECT,
        Q,
        {"reason": "unexpected close", "where": "body", "client_host": "client.example"},
    ),
    (
        "sendmail",
        f"{Q}: collect: premature EOM: Connection reset by client.example",
        Kind.DISCONNECT,
        Q,
        {"reason": "premature EOM: Connection reset by client.example"},
    ),
    (
        "sm-mta",
        f"{Q}: message size (20000000) exceeds maximum (10000000)",
        Kind.REJECT,
        Q,
        {"stage": "DATA"},
    ),
    # -- milters -----------------------------------------------------------------------------
    (
        "sm-mta",
        f"{Q}: Milter: data, reject=554 5.7.1 Command rejected",
        Kind.REJECT,
        Q,
        {"action": "milter-reject", "stage": "END-OF-MESSAGE", "code": 554, "dsn": "5.7.1"},
    ),
    (
        "sm-mta",
        f"{Q}: Milter: from=<a@b.example>, reject=553 5.1.7 Sender rejected",
        Kind.REJECT,
        Q,
        {"stage": "MAIL", "sender": "a@b.example"},
    ),
    (
        "sm-mta",
        f"{Q}: Milter: to=<x@mx1.example.test>, reject=550 5.1.1 Unknown user",
        Kind.REJECT,
        Q,
        {"stage": "RCPT", "recipient": "x@mx1.example.test"},
    ),
    ("sm-mta", f"{Q}: Milter: data, discard", Kind.CHECK, Q, {"action": "milter-discard"}),
    (
        "sm-mta",
        f"{Q}: milter=clamav, action=eom, reject=554 5.7.1 Virus found",
        Kind.REJECT,
        Q,
        {"milter": "clamav", "stage": "END-OF-MESSAGE", "code": 554},
    ),
    (
        "sm-mta",
        f"{Q}: milter=spamass, quarantine=spam score 12.5",
        Kind.CHECK,
        Q,
        {"action": "milter-quarantine", "text": "spam score 12.5"},
    ),
    (
        "sm-mta",
        f"{Q}: Milter (opendkim) add: header: DKIM-Signature: v=1; a=rsa-sha256; d=x.example",
        Kind.CHECK,
        Q,
        {"milter": "opendkim", "action": "milter-change"},
    ),
    ("sm-mta", f"{Q}: Milter add: header: X-Spam-Flag: YES", Kind.CHECK, Q, {"action": "milter-change"}),
    (
        "sm-mta",
        f"{Q}: Milter (archiver) add: rcpt: <archive@x.example>",
        Kind.CHECK,
        Q,
        {"recipient": "archive@x.example"},
    ),
    ("sm-mta", f"{Q}: Milter accept: message", Kind.CHECK, Q, {"action": "milter-accept"}),
    (
        "sm-mta",
        "NOQUEUE: Milter: connect: host=bad.example, addr=192.0.2.66, rejecting commands",
        Kind.REJECT,
        None,
        {"stage": "CONNECT", "client_ip": "192.0.2.66"},
    ),
    ("sm-mta", "Milter (clamav): init success to negotiate", Kind.SERVICE, None, {}),
    ("sm-mta", f"{Q}: Milter: no active filter", Kind.SERVICE, Q, {}),
    (
        "sm-mta",
        f"{Q}: Milter (clamav): timeout before data read, where=eom",
        Kind.SERVICE,
        Q,
        {},
    ),
    # -- notes about one message --------------------------------------------------------------
    (
        "sendmail",
        f"{Q}: Authentication-Warning: mx1.example.test: www-data set sender to info@x.example using -f",
        Kind.CHECK,
        Q,
        {
            "action": "authentication-warning",
            "text": "mx1.example.test: www-data set sender to info@x.example using -f",
        },
    ),
    ("sm-mta", f"{Q}: discarded", Kind.CHECK, Q, {"action": "discard"}),
    ("sm-mta", f"{Q}: Saved message in /var/lib/sendmail/dead.letter", Kind.CHECK, Q, {"action": "saved"}),
    ("sm-mta", f"{Q}: <x@y.example>... Connecting to mx.y.example. via esmtp...", Kind.SERVICE, Q, {}),
    # -- what Sendmail says about itself ------------------------------------------------------
    ("sm-mta", "starting daemon (8.17.1.9): SMTP+queueing@00:00:15", Kind.SERVICE, None, {}),
    (
        "sm-mta",
        "started as: /usr/sbin/sendmail-mta -Am -L sm-mta -bd -q10m",
        Kind.SERVICE,
        None,
        {},
    ),
    ("sm-mta", "NOQUEUE: stopping daemon, reason=signal", Kind.SERVICE, None, {}),
    ("sendmail", "alias database /etc/mail/aliases rebuilt by root", Kind.SERVICE, None, {}),
    ("sendmail", "/etc/mail/aliases: 4 aliases, longest 16 bytes, 65 bytes total", Kind.SERVICE, None, {}),
    ("sendmail", "My unqualified host name (vm) unknown; sleeping for retry", Kind.SERVICE, None, {}),
    ("sendmail", "unable to qualify my own domain name (vm) -- using short name", Kind.SERVICE, None, {}),
    ("sendmail", "NOQUEUE: SYSERR(root): /dev/null: line 0: not a plain file", Kind.SERVICE, None, {}),
    (
        "sm-mta",
        f"{Q}: SYSERR(root): collect: Cannot write ./dfX (bfcommit, uid=0, gid=25): No space left on device",
        Kind.SERVICE,
        Q,
        {},
    ),
    ("sm-mta", "grew WorkList for /var/spool/mqueue to 2000", Kind.SERVICE, None, {}),
    ("sm-mta", "error: safesasl(/etc/sasl2/Sendmail.conf) failed: No such file or directory", Kind.SERVICE, None, {}),
    ("sm-mta", "rejecting connections on daemon MTA: load average: 40", Kind.SERVICE, None, {}),
    ("sm-mta", "accepting connections again for daemon MTA", Kind.SERVICE, None, {}),
]


def line(program: str, payload: str) -> str:
    return f"Nov 29 02:20:48 mx1 {program}[11599]: {payload}\n"


@pytest.mark.parametrize(("program", "payload", "kind", "qid", "fields"), CASES, ids=[c[1][:60] for c in CASES])
def test_shape(program: str, payload: str, kind: Kind, qid: str | None, fields: dict) -> None:
    ev = parse(line(program, payload), CTX)
    assert ev.kind is kind, ev
    assert ev.mta == "sendmail" and ev.program == program and ev.pid == 11599 and ev.host == "mx1"
    assert ev.queue_id == qid
    for key, value in fields.items():
        assert ev.fields.get(key) == value, (key, ev.fields)


@pytest.mark.parametrize(("program", "payload", "kind", "qid", "fields"), CASES, ids=[c[1][:60] for c in CASES])
def test_fast_path_agrees_with_grammar(program: str, payload: str, kind: Kind, qid: str | None, fields: dict) -> None:
    quick = sm.fast(payload)
    if quick is not None:
        assert quick == sm.parse_grammar(payload)


_PREFIX = re.compile(r"(?:[0-9A-Za-x]{7,8}[0-9]{5,}|NOQUEUE): ")


def rest(payload: str) -> str:
    """The payload after its queue id or NOQUEUE."""
    m = _PREFIX.match(payload)
    return payload[m.end() :] if m else payload


def test_fast_path_covers_the_common_shapes() -> None:
    """A fast path that silently fell back would still be correct but slow:
    the session opening, the envelope, each delivery, the notification link,
    the end of the envelope, the rulesets' and the server's refusals, and
    every notice."""
    for _program, payload, kind, *_ in CASES:
        common = (
            kind in (Kind.ENQUEUE, Kind.DELIVERY, Kind.DEFERRAL, Kind.BOUNCE, Kind.REMOVED)
            or payload.startswith("NOQUEUE: connect from ")
            or rest(payload).startswith(("ruleset=", "<"))
            or (kind is Kind.SERVICE and sm.service.matches(rest(payload), parse_all=True))
        )
        if common:
            assert sm.fast(payload) is not None, payload


def test_notices_never_shadow_other_shapes() -> None:
    """The fast path tries the notices on whatever its other shapes did not
    take, although the grammar tries many rules before them: that is only
    the same when no line another rule reads is also a notice."""
    for _program, payload, kind, *_ in CASES:
        if kind is not Kind.SERVICE:
            assert not sm.service.matches(rest(payload), parse_all=True), payload


def test_queue_ids_of_every_length() -> None:
    """8.12+ ids are 14 characters; a pid above 999999 makes them longer,
    8.10/8.11 and 8.12.0 ids are 12."""
    for qid in ("6AT2KmeV011597", "6AT2KmeV4194303", "f2RDl6s26531"):
        for payload in (f"{qid}: done; delay=00:00:00, ntries=1", f"{qid}: {C}: DSN: User unknown"):
            ev = parse(line("sm-mta", payload), CTX)
            assert (ev.kind, ev.queue_id) in ((Kind.REMOVED, qid), (Kind.BOUNCE, qid)), ev
    ev = parse(line("sm-mta", f"{Q}: 6AT2KmeV4194303: DSN: User unknown"), CTX)
    assert ev.fields["child"] == "6AT2KmeV4194303"


def test_program_names() -> None:
    for program in ("sendmail", "sm-mta", "sm-msp-queue", "sm-mta-mx2"):
        ev = parse(line(program, f"{Q}: done; delay=00:00:00, ntries=1"), CTX)
        assert (ev.mta, ev.kind, ev.program) == ("sendmail", Kind.REMOVED, program)


def test_unreadable_sendmail_lines_are_unknown_not_errors() -> None:
    for payload in (
        f"{Q}: something sendmail never wrote",
        f"{Q}: to=<a@b>, delay=",
        f"{Q}: from=<a@b>, size=x",
        f"{Q}: done; delay=soon",
        "",
        "NOQUEUE: nonsense",
        f"{Q}[2]: stat=Sent",
    ):
        ev = parse(line("sm-mta", payload), CTX)
        assert ev.kind is Kind.UNKNOWN and ev.mta == "sendmail", ev


SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "sendmail"
_EXPECTED = SAMPLES / "expected.json"
#: Read from expected.json's "logs", so that a log added to the capture is
#: tested without touching this file.
SAMPLE_LOGS = [e["file"] for e in json.loads(_EXPECTED.read_text())["logs"]] if _EXPECTED.exists() else [None]


def sample(name: str | None) -> str:
    if name is None:
        pytest.skip("samples/sendmail/expected.json is not written yet (the capture writes it last)")
    return (SAMPLES / name).read_text()


@pytest.mark.parametrize("name", SAMPLE_LOGS)
def test_every_sample_line_is_understood(name: str | None) -> None:
    text = sample(name)
    unknown = [ln for ln in text.splitlines() if parse(ln, CTX).kind is Kind.UNKNOWN]
    assert text.strip()
    assert unknown == []


@pytest.mark.parametrize("name", SAMPLE_LOGS)
def test_fast_path_agrees_with_grammar_on_the_samples(name: str | None) -> None:
    """The differential test that licenses the fast path: on every real line
    it answers, it answers what the grammar answers."""
    answered = 0
    for ln in sample(name).splitlines():
        env = split(ln, CTX)
        assert env is not None, ln
        *_, payload = env
        quick = sm.fast(payload)
        if quick is not None:
            answered += 1
            assert quick == sm.parse_grammar(payload), ln
    assert answered > 0
