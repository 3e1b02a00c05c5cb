"""Postfix line shapes, one by one, as Postfix 3.x writes them."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parsers import Context, Kind, parse
from parsers import postfix as pf
from parsers.envelope import split

CTX = Context(reference=datetime(2026, 3, 2, tzinfo=UTC))
Q = "4F9D195432"

CASES: list[tuple[str, str, Kind, str | None, dict]] = [
    # (program, payload, kind, queue id, fields that must be there)
    (
        "postfix/smtpd",
        "connect from mail.example.com[192.0.2.10]",
        Kind.CONNECT,
        None,
        {"client_host": "mail.example.com", "client_ip": "192.0.2.10"},
    ),
    (
        "postfix/smtpd",
        "connect from unknown[2001:db8::1]:41234",
        Kind.CONNECT,
        None,
        {"client_host": "unknown", "client_ip": "2001:db8::1", "client_port": 41234},
    ),
    (
        "postfix/smtpd",
        "disconnect from a.example[192.0.2.1] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
        Kind.DISCONNECT,
        None,
        {"client_ip": "192.0.2.1", "commands": "ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"},
    ),
    ("postfix/smtpd", f"{Q}: client=a.example[192.0.2.1]", Kind.CLIENT, Q, {"client_host": "a.example"}),
    (
        "postfix/smtpd",
        f"{Q}: client=a.example[192.0.2.1], sasl_method=PLAIN, sasl_username=joe",
        Kind.CLIENT,
        Q,
        {"sasl_method": "PLAIN", "sasl_username": "joe"},
    ),
    (
        "postfix/smtpd",
        f"{Q}: client=localhost[127.0.0.1], orig_queue_id=1A2B3C4D5E, orig_client=x[192.0.2.9]",
        Kind.CLIENT,
        Q,
        {"orig_queue_id": "1A2B3C4D5E", "orig_client": "x[192.0.2.9]"},
    ),
    (
        "postfix/cleanup",
        f"{Q}: message-id=<abc@example.com>",
        Kind.MESSAGE_ID,
        Q,
        {"message_id": "<abc@example.com>", "resent": False},
    ),
    ("postfix/cleanup", f"{Q}: message-id=", Kind.MESSAGE_ID, Q, {"message_id": ""}),
    ("postfix/cleanup", f"{Q}: message-id=<>", Kind.MESSAGE_ID, Q, {"message_id": "<>"}),
    ("postfix/cleanup", f"{Q}: message-id=no brackets@all", Kind.MESSAGE_ID, Q, {"message_id": "no brackets@all"}),
    ("postfix/cleanup", f"{Q}: resent-message-id=<r@x>", Kind.MESSAGE_ID, Q, {"message_id": "<r@x>", "resent": True}),
    (
        "postfix/qmgr",
        f"{Q}: from=<jane@example.com>, size=1234, nrcpt=2 (queue active)",
        Kind.ENQUEUE,
        Q,
        {"sender": "jane@example.com", "size": 1234, "nrcpt": 2},
    ),
    ("postfix/qmgr", f"{Q}: from=<>, size=2324, nrcpt=1 (queue active)", Kind.ENQUEUE, Q, {"sender": ""}),
    ("postfix/qmgr", f"{Q}: removed", Kind.REMOVED, Q, {}),
    (
        "postfix/qmgr",
        f"{Q}: from=<jane@example.com>, status=expired, returned to sender",
        Kind.EXPIRED,
        Q,
        {"sender": "jane@example.com"},
    ),
    ("postfix/pickup", f"{Q}: uid=0 from=<root>", Kind.PICKUP, Q, {"uid": 0, "sender": "root"}),
    (
        "postfix/local",
        f"{Q}: to=<alice@mx1.example.test>, relay=local, delay=0.03, delays=0.01/0.01/0/0.01, "
        "dsn=2.0.0, status=sent (delivered to mailbox)",
        Kind.DELIVERY,
        Q,
        {
            "recipient": "alice@mx1.example.test",
            "orig_recipient": None,
            "relay": "local",
            "delay": 0.03,
            "dsn": "2.0.0",
            "status": "sent",
            "reply": "delivered to mailbox",
        },
    ),
    (
        "postfix/local",
        f"{Q}: to=<bob@mx1.example.test>, orig_to=<team@mx1.example.test>, relay=local, delay=12, "
        'delays=0/0/0/12, dsn=2.0.0, status=sent (delivered to command: procmail -a "$EXTENSION")',
        Kind.DELIVERY,
        Q,
        {"orig_recipient": "team@mx1.example.test", "delay": 12.0},
    ),
    (
        "postfix/local",
        f"{Q}: to=<ext@other.test>, orig_to=<fwd@mx1.example.test>, relay=local, delay=0.1, "
        "delays=0.1/0/0/0, dsn=2.0.0, status=sent (forwarded as 3A1B2C3D4E)",
        Kind.DELIVERY,
        Q,
        {"forwarded_as": "3A1B2C3D4E"},
    ),
    (
        "postfix/smtp",
        f"{Q}: to=<ok@relay.test>, relay=relay.test[127.0.0.1]:2600, delay=0.1, "
        "delays=0.02/0.01/0.04/0.03, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as SINK000001)",
        Kind.DELIVERY,
        Q,
        {"relay_host": "relay.test", "relay_ip": "127.0.0.1", "relay_port": 2600, "queued_as": "SINK000001"},
    ),
    (
        "postfix/smtp",
        f"{Q}: to=<x@gmail.example>, relay=gmail-smtp-in.l.google.example[192.0.2.27]:25, conn_use=2, "
        "delay=1.4, delays=0.03/0.01/0.81/0.54, dsn=2.0.0, status=sent (250 2.0.0 OK  1700000000 a1-20020a (gsmtp))",
        Kind.DELIVERY,
        Q,
        {"conn_use": 2, "reply": "250 2.0.0 OK  1700000000 a1-20020a (gsmtp)"},
    ),
    (
        "postfix/smtp",
        f"{Q}: to=<slow@relay.test>, relay=relay.test[127.0.0.1]:2601, delay=0.05, "
        "delays=0.01/0/0.03/0.01, dsn=4.3.0, status=deferred (host relay.test[127.0.0.1] said: 451 4.3.0 try later "
        "(in reply to RCPT TO command))",
        Kind.DEFERRAL,
        Q,
        {
            "status": "deferred",
            "dsn": "4.3.0",
            "reply": "host relay.test[127.0.0.1] said: 451 4.3.0 try later (in reply to RCPT TO command)",
        },
    ),
    (
        "postfix/smtp",
        f"{Q}: to=<bad@relay.test>, relay=relay.test[127.0.0.1]:2602, delay=0.05, "
        "delays=0.01/0/0.03/0.01, dsn=5.1.1, status=bounced (host relay.test[127.0.0.1] said: 550 5.1.1 "
        "<bad@relay.test>: no such user (in reply to RCPT TO command))",
        Kind.DELIVERY,
        Q,
        {"status": "bounced", "dsn": "5.1.1"},
    ),
    (
        "postfix/smtp",
        f"{Q}: to=<a@b.example>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, "
        "status=deferred (connect to b.example[192.0.2.5]:25: Connection timed out)",
        Kind.DEFERRAL,
        Q,
        {"relay": "none"},
    ),
    (
        "postfix/lmtp",
        f"{Q}: to=<u@example.com>, relay=mail.example.com[private/dovecot-lmtp], delay=0.2, "
        "delays=0.1/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <u@example.com> bN3aK2x Saved)",
        Kind.DELIVERY,
        Q,
        {"relay_ip": "private/dovecot-lmtp", "transport": "lmtp"},
    ),
    (
        "postfix/error",
        f"{Q}: to=<x@example.com>, relay=none, delay=0.1, delays=0.1/0/0/0, dsn=5.0.0, "
        "status=bounced (Host or domain name not found)",
        Kind.DELIVERY,
        Q,
        {"status": "bounced"},
    ),
    (
        "postfix/discard",
        f"{Q}: to=<x@example.com>, relay=none, delay=0.1, delays=0.1/0/0/0, dsn=2.0.0, status=sent (discarded)",
        Kind.DELIVERY,
        Q,
        {"reply": "discarded"},
    ),
    (
        "postfix/verify",
        f"{Q}: to=<x@example.com>, relay=none, delay=0.1, delays=0.1/0/0/0, dsn=2.0.0, status=deliverable (verified)",
        Kind.DELIVERY,
        Q,
        {"status": "deliverable"},
    ),
    (
        "postfix/bounce",
        f"{Q}: sender non-delivery notification: 5B6C7D8E9F",
        Kind.BOUNCE,
        Q,
        {"child": "5B6C7D8E9F", "notification": "non-delivery"},
    ),
    ("postfix/bounce", f"{Q}: sender delay notification: 5B6C7D8E9F", Kind.BOUNCE, Q, {"notification": "delay"}),
    (
        "postfix/bounce",
        f"{Q}: sender delivery status notification: 5B6C7D8E9F",
        Kind.BOUNCE,
        Q,
        {"notification": "delivery status"},
    ),
    ("postfix/bounce", f"{Q}: postmaster non-delivery notification: 5B6C7D8E9F", Kind.BOUNCE, Q, {"to": "postmaster"}),
    (
        "postfix/smtpd",
        "NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 550 5.1.1 <nosuch@mx1.example.test>: "
        "Recipient address rejected: User unknown in local recipient table; from=<s@example.com> "
        "to=<nosuch@mx1.example.test> proto=ESMTP helo=<client.example>",
        Kind.REJECT,
        None,
        {
            "stage": "RCPT",
            "code": 550,
            "dsn": "5.1.1",
            "sender": "s@example.com",
            "recipient": "nosuch@mx1.example.test",
            "protocol": "ESMTP",
            "helo": "client.example",
            "client_ip": "192.0.2.7",
        },
    ),
    (
        "postfix/smtpd",
        f"{Q}: reject: RCPT from localhost[127.0.0.1]: 550 5.1.1 <n@mx1.example.test>: Recipient "
        "address rejected: User unknown in local recipient table; from=<s@mx1.example.test> to=<n@mx1.example.test> "
        "proto=ESMTP helo=<client.example.test>",
        Kind.REJECT,
        Q,
        {"recipient": "n@mx1.example.test"},
    ),
    (
        "postfix/smtpd",
        "NOQUEUE: reject: CONNECT from unknown[192.0.2.8]: 554 5.7.1 <unknown[192.0.2.8]>: Client "
        "host rejected: Access denied; proto=SMTP",
        Kind.REJECT,
        None,
        {"stage": "CONNECT", "protocol": "SMTP"},
    ),
    (
        "postfix/smtpd",
        "NOQUEUE: reject: RCPT from x[192.0.2.9]: 554 5.7.1 Service unavailable; Client host "
        "[192.0.2.9] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.9; "
        "from=<a@b.example> to=<c@d.example> proto=ESMTP helo=<x>",
        Kind.REJECT,
        None,
        {
            "recipient": "c@d.example",
            "reply": "Service unavailable; Client host [192.0.2.9] blocked using zen.spamhaus.org; "
            "https://www.spamhaus.org/query/ip/192.0.2.9",
        },
    ),
    (
        "postfix/smtpd",
        "NOQUEUE: filter: RCPT from localhost[127.0.0.1]: <f@mx1.example.test>: Recipient address "
        "triggers FILTER smtp:[127.0.0.1]:10025; from=<s@x> to=<f@mx1.example.test> proto=ESMTP helo=<c>",
        Kind.CHECK,
        None,
        {"action": "filter", "recipient": "f@mx1.example.test"},
    ),
    (
        "postfix/cleanup",
        f"{Q}: milter-reject: END-OF-MESSAGE from x[192.0.2.3]: 5.7.1 Spam message rejected; "
        "from=<a@b> to=<c@d> proto=ESMTP helo=<x>",
        Kind.REJECT,
        Q,
        {"action": "milter-reject", "dsn": "5.7.1"},
    ),
    (
        "postfix/cleanup",
        f"{Q}: hold: header Subject: win money from x[192.0.2.3]; from=<a@b> to=<c@d> "
        "proto=ESMTP helo=<x>: held for review",
        Kind.CHECK,
        Q,
        {"action": "hold", "what": "header", "text": "Subject: win money", "detail": "held for review"},
    ),
    (
        "postfix/cleanup",
        f"{Q}: warning: header Subject: hello from local; from=<root> to=<bob>",
        Kind.CHECK,
        Q,
        {"action": "warning", "sender": "root"},
    ),
    (
        "postfix/cleanup",
        f"{Q}: discard: body spam spam from x[192.0.2.3]; from=<a@b> to=<c@d> proto=SMTP helo=<x>",
        Kind.CHECK,
        Q,
        {"action": "discard", "what": "body"},
    ),
    (
        "postfix/cleanup",
        f"{Q}: reject: header X-Bad: 1 from x[192.0.2.3]; from=<a@b> to=<c@d> proto=ESMTP helo=<x>: 5.7.1 go away",
        Kind.REJECT,
        Q,
        {"action": "reject", "detail": "5.7.1 go away"},
    ),
    ("postfix/postsuper", f"{Q}: placed on hold", Kind.ADMIN, Q, {"action": "placed on hold"}),
    ("postfix/postsuper", f"{Q}: released from hold", Kind.ADMIN, Q, {"action": "released from hold"}),
    ("postfix/postsuper", f"{Q}: requeued", Kind.ADMIN, Q, {"action": "requeued"}),
    ("postfix/postsuper", f"{Q}: removed", Kind.REMOVED, Q, {}),
    ("postfix/postsuper", "Deleted: 3 messages", Kind.SERVICE, None, {}),
    (
        "postfix/smtp",
        f"{Q}: host mx.example[192.0.2.4] said: 421 4.7.0 Try again later (in reply to end of DATA command)",
        Kind.DEFERRAL,
        Q,
        {"recipient": None},
    ),
    (
        "postfix/smtp",
        f"{Q}: lost connection with mx.example[192.0.2.4] while receiving the initial server greeting",
        Kind.DEFERRAL,
        Q,
        {"recipient": None},
    ),
    ("postfix/smtp", "connect to mx.example[192.0.2.4]:25: Connection refused", Kind.SERVICE, None, {}),
    (
        "postfix/postscreen",
        "CONNECT from [192.0.2.1]:41234 to [192.0.2.2]:25",
        Kind.CONNECT,
        None,
        {"client_ip": "192.0.2.1", "client_port": 41234, "server_port": 25},
    ),
    ("postfix/postscreen", "PASS NEW [192.0.2.1]:41234", Kind.SERVICE, None, {}),
    ("postfix/postscreen", "DNSBL rank 3 for [192.0.2.1]:41234", Kind.SERVICE, None, {}),
    (
        "postfix/postscreen",
        "NOQUEUE: reject: RCPT from [192.0.2.1]:41234: 550 5.7.1 Service unavailable; client "
        "[192.0.2.1] blocked using zen.spamhaus.org; from=<a@b.example>, to=<c@d.example>, proto=ESMTP, helo=<x>",
        Kind.REJECT,
        None,
        {"sender": "a@b.example", "recipient": "c@d.example", "helo": "x"},
    ),
    ("postfix/postscreen", "DISCONNECT [192.0.2.1]:41234", Kind.DISCONNECT, None, {"client_ip": "192.0.2.1"}),
    ("postfix/master", "daemon started -- version 3.7.11, configuration /etc/postfix", Kind.SERVICE, None, {}),
    ("postfix/master", "terminating on signal 15", Kind.SERVICE, None, {}),
    ("postfix/postfix-script", "the Postfix mail system is running: PID: 5964", Kind.SERVICE, None, {}),
    (
        "postfix/anvil",
        "statistics: max connection rate 1/60s for (smtp:127.0.0.1) at Nov 29 02:12:01",
        Kind.SERVICE,
        None,
        {},
    ),
    ("postfix/smtpd", "warning: hostname x.example does not resolve to address 192.0.2.1", Kind.SERVICE, None, {}),
    ("postfix/smtpd", "lost connection after DATA (0 bytes) from unknown[192.0.2.1]", Kind.SERVICE, None, {}),
    ("postfix/smtpd", "timeout after END-OF-MESSAGE from unknown[192.0.2.1]", Kind.SERVICE, None, {}),
    (
        "postfix/smtp",
        "Untrusted TLS connection established to mx.example[192.0.2.4]:25: TLSv1.3 with cipher "
        "TLS_AES_256_GCM_SHA384 (256/256 bits)",
        Kind.SERVICE,
        None,
        {},
    ),
]


def line(program: str, payload: str) -> str:
    return f"Mar  1 12:00:00 mx1 {program}[4711]: {payload}\n"


@pytest.mark.parametrize(("program", "payload", "kind", "qid", "fields"), CASES, ids=[c[1][:60] for c in CASES])
def test_shape(program: str, payload: str, kind: Kind, qid: str | None, fields: dict) -> None:
    ev = parse(line(program, payload), CTX)
    assert ev.kind is kind, ev
    assert ev.mta == "postfix" and ev.program == program and ev.pid == 4711 and ev.host == "mx1"
    assert ev.queue_id == qid
    for key, value in fields.items():
        assert ev.fields.get(key) == value, (key, ev.fields)


@pytest.mark.parametrize(("program", "payload", "kind", "qid", "fields"), CASES, ids=[c[1][:60] for c in CASES])
def test_fast_path_agrees_with_grammar(program: str, payload: str, kind: Kind, qid: str | None, fields: dict) -> None:
    quick = pf.fast(payload)
    if quick is not None:
        assert quick == pf.parse_grammar(payload)


def test_fast_path_covers_the_common_shapes() -> None:
    """A fast path that silently fell back would still be correct but slow."""
    for _program, payload, *_ in CASES[:4] + CASES[6:7] + CASES[11:14] + CASES[16:17] + CASES[19:20]:
        assert pf.fast(payload) is not None, payload


def test_long_and_short_queue_ids_side_by_side() -> None:
    short = parse(line("postfix/qmgr", "2D40C160007: removed"), CTX)
    long_ = parse(line("postfix/qmgr", "4Lf9S71Vszz9sWZ: removed"), CTX)
    assert (short.kind, short.queue_id) == (Kind.REMOVED, "2D40C160007")
    assert (long_.kind, long_.queue_id) == (Kind.REMOVED, "4Lf9S71Vszz9sWZ")
    bounce = parse(line("postfix/bounce", "4Lf9S71Vszz9sWZ: sender non-delivery notification: 4Lf9S72Bcdz9sWb"), CTX)
    assert bounce.fields["child"] == "4Lf9S72Bcdz9sWb"


def test_multi_instance_program_names() -> None:
    ev = parse(line("postfix-out/qmgr", f"{Q}: removed"), CTX)
    assert (ev.mta, ev.kind) == ("postfix", Kind.REMOVED)
    ev = parse(line("postfix/submission/smtpd", "connect from a[192.0.2.1]"), CTX)
    assert (ev.mta, ev.kind) == ("postfix", Kind.CONNECT)


def test_unreadable_postfix_lines_are_unknown_not_errors() -> None:
    for payload in (f"{Q}: something postfix never wrote", f"{Q}: to=<a@b>, relay=", "", "NOQUEUE: nonsense"):
        ev = parse(line("postfix/smtp", payload), CTX)
        assert ev.kind is Kind.UNKNOWN and ev.mta == "postfix"


SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "postfix"
SAMPLE_LOGS = [e["file"] for e in json.loads((SAMPLES / "expected.json").read_text())["logs"]]


@pytest.mark.parametrize("name", SAMPLE_LOGS)
def test_every_sample_line_is_understood(name: str) -> None:
    text = (SAMPLES / name).read_text()
    unknown = [ln for ln in text.splitlines() if parse(ln, CTX).kind is Kind.UNKNOWN]
    assert text.strip()
    assert unknown == []


@pytest.mark.parametrize("name", SAMPLE_LOGS)
def test_fast_path_agrees_with_grammar_on_the_samples(name: str) -> None:
    """The differential test that licenses the fast path: on every real line
    it answers, it answers what the grammar answers."""
    answered = 0
    for ln in (SAMPLES / name).read_text().splitlines():
        env = split(ln, CTX)
        assert env is not None, ln
        *_, payload = env
        quick = pf.fast(payload)
        if quick is not None:
            answered += 1
            assert quick == pf.parse_grammar(payload), ln
    assert answered > 0


def test_a_log_the_fast_path_covers_never_builds_the_grammar() -> None:
    """pyparsing and the grammar cost a tenth of a second to import and
    build: only a line the fast path declines may pay it."""
    code = (
        "import sys\n"
        "from parsers import parse\n"
        "for line in sys.stdin: parse(line)\n"
        "assert 'pyparsing' not in sys.modules and 'parsers.postfix_grammar' not in sys.modules\n"
        "parse('Mar  1 12:00:00 mx1 postfix/postsuper[1]: 4AB12: placed on hold')\n"
        "assert 'parsers.postfix_grammar' in sys.modules\n"
    )
    common = "\n".join(
        [
            "Mar  1 12:00:00 mx1 postfix/smtpd[1]: connect from a.example[192.0.2.1]",
            "Mar  1 12:00:00 mx1 postfix/smtpd[1]: 4AB12: client=a.example[192.0.2.1]",
            "Mar  1 12:00:00 mx1 postfix/cleanup[2]: 4AB12: message-id=<1@a.example>",
            "Mar  1 12:00:00 mx1 postfix/qmgr[3]: 4AB12: from=<a@a.example>, size=10, nrcpt=1 (queue active)",
            "Mar  1 12:00:01 mx1 postfix/smtp[4]: 4AB12: to=<b@b.example>, relay=b.example[192.0.2.2]:25, "
            "delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9F8E7)",
            "Mar  1 12:00:01 mx1 postfix/qmgr[3]: 4AB12: removed",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], input=common, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
