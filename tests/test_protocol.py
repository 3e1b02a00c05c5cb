"""RFC 3887 (MTQP) byte by byte: what the sans-I/O core reads and writes.

The server's bytes are not checked against the core's own renderer: a
client's reading of them, with a separate grammar of the server side of RFC
3887 section 12, decides whether they are right.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import pyparsing as pp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import protocol
from server.protocol import (
    _LINE_SPLIT,
    MAX_LINE,
    BadCommand,
    Command,
    Comment,
    Connection,
    ConnectionClosed,
    Event,
    LineTooLong,
    LocalProtocolError,
    NeedData,
    Quit,
    StartTLS,
    State,
    Status,
    Track,
    _fast_command,
    _grammar_command,
    _wire,
    body_block,
    body_lines,
    data_block,
    parse_line,
)

# -- a client's reading of the server's bytes (section 12, server side) -----

STATUS_LINE = (
    (
        pp.Regex(r"\+OK\+|\+OK|-TEMP|-ERR|-BAD")("status")
        + pp.Group(pp.ZeroOrMore(pp.Suppress("/") + pp.Regex(r"[A-Za-z0-9_-]+")))("info")
        + pp.Opt(pp.Regex(r"[ \t][\t\x20-\x7e]*")("text"))
        + pp.StringEnd()
    )
    .leave_whitespace()
    .parse_with_tabs()
)


@dataclass
class Reply:
    status: str
    info: list[str]
    text: str
    data: list[bytes] | None  # a multi-line response's lines, unstuffed


def read_replies(stream: bytes) -> list[Reply]:
    """Split what the server sent into responses as section 2.3 tells a
    client to, asserting every framing rule on the way."""
    lines = stream.split(b"\r\n")
    assert lines.pop() == b"", "the last response line ends with CRLF"
    replies = []
    it = iter(lines)
    for line in it:
        assert len(line) <= MAX_LINE
        t = STATUS_LINE.parse_string(line.decode("ascii"), parse_all=True)
        data: list[bytes] | None = None
        if t["status"] == "+OK+":
            data = []
            for d in it:
                assert len(d) <= MAX_LINE and b"\n" not in d
                if d == b".":
                    break
                data.append(d[1:] if d.startswith(b".") else d)
            else:
                raise AssertionError("multi-line response without its final dot")
        replies.append(Reply(t["status"], list(t["info"]), t.get("text", "")[1:], data))
    return replies


# -- a minimal shell ----------------------------------------------------------

TRACKING = "Content-Type: multipart/related; boundary=x; type=tracking-status\n\n--x--\n"


def answer(conn: Connection, event: Event) -> bytes:
    """What a shell that knows nothing sends for each event."""
    match event:
        case BadCommand():
            return event.response
        case Track():
            return conn.send_ok("Tracking information follows", body=TRACKING)
        case StartTLS():
            return conn.send_ok("Begin TLS negotiation")
        case Comment() | Quit():
            return conn.send_ok()
    raise AssertionError(event)


def drain(conn: Connection) -> tuple[list[Event], bytes]:
    """Every event the buffered input holds, each answered, as the shell's
    loop does; stops where the shell would stop reading."""
    events: list[Event] = []
    out = b""
    while conn.state not in (State.GREETING, State.TLS_HANDSHAKE):
        event = conn.next_event()
        if isinstance(event, NeedData):
            break
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
        out += answer(conn, event)
    return events, out


def exchange(conn: Connection, data: bytes) -> tuple[list[Event], bytes]:
    conn.receive_data(data)
    return drain(conn)


def greeted(*options: str) -> Connection:
    conn = Connection()
    conn.send_greeting(options)
    return conn


SECRET = b"abcdefgh\n"  # what the RFC's example secret YWJjZGVmZ2gK decodes to (see rfc/README.md)


# -- RFC 3887 sections 3.1 and 4.1: examples #1 to #12, verbatim ("#N" heads each) --
# Errata (rfc/README.md) such as "Status:2.4.0" are inside the bodies: framing carries them as they are.

EXAMPLES = """\
#1
S: +OK/MTQP MTQP server ready
#2
S: -TEMP/MTQP/admin Service down for admin, call back later
#3
S: -ERR/MTQP/unavailable Service down
#4
S: +OK+/MTQP MTQP server ready
S: .
#5
S: +OK+/MTQP MTQP server ready
S: starttls
S: vnd.com.example.option2 with parameters private to example.com
S: vnd.com.example.option3 with a very long
S:  list of parameters
S: .
#6
C: TRACK <12345-20010101@example.com> YWJjZGVmZ2gK
S: +OK+ Tracking information follows
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: delivered
S: Status: 2.5.0
S:
S: --%%%%--
S: .
#7
C: TRACK <12345-20010101@example.com> YWJjZGVmZ2gK
S: +OK+ Tracking information follows
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: transferred
S: Remote-MTA: dns; example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S: Status:2.4.0
S:
S: --%%%%--
S: .
#8
C: TRACK <12345-20010101@example.com> YWJjZGVmZ2gK
S: +OK+ Tracking information follows
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S: ..Dot-Stuffed-Header: as an example
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon, 1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: delayed
S: Status: 4.4.1 (No answer from host)
S: Remote-MTA: dns; example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S: Will-Retry-Until: Thu, 4 Jan 2001 15:15:15 -0500
S:
S: --%%%%--
S: .
#9
C: TRACK <12345-20010101@example.com> YWJjZGVmZ2gK
S: +OK+ Tracking information follows
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: relayed
S: Status: 2.1.9
S: Remote-MTA: dns; example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: Original-Recipient: rfc822; user2@example1.com
S: Final-Recipient: rfc822; user2@example1.com
S: Action: failed
S: Status 5.2.2 (Mailbox full)
S: Remote-MTA: dns; example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: --%%%%--
S: .
#10
C: TRACK <12345-20010101@example.com> YWJjZGVmZ2gK
S: +OK+ Tracking information follows
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: relayed
S: Status: 2.1.9
S: Remote-MTA: dns; smtp.example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; smtp.example3.com
S: Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user2@example1.com
S: Final-Recipient: rfc822; user4@example3.com
S: Action: delivered
S: Status: 2.5.0
S:
S: --%%%%--
S: .
#11
C: TRACK <12345-20010101@example.com> YWJjZGVmZ2gK
S: +OK+ Tracking information follows
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: relayed
S: Status: 2.1.9
S: Remote-MTA: dns; smtp.example3.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: Original-Recipient: rfc822; user2@example1.com
S: Final-Recipient: rfc822; user4@example3.com
S: Action: delivered
S: Status:2.5.0
S:
S: --%%%%--
S: .
#12
C: TRACK <12345-20010101@example.com> YWJjZGVmZ2gK
S: +OK+ Tracking information follows
S: Content-Type: multipart/related; boundary=%%%%; type=tracking-status
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user1@example1.com
S: Final-Recipient: rfc822; user1@example1.com
S: Action: relayed
S: Status: 2.1.9
S: Remote-MTA: dns; example2.com
S: Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
S:
S: --%%%%
S: Content-Type: message/tracking-status
S:
S: Original-Envelope-Id: 12345-20010101@example.com
S: Reporting-MTA: dns; example2.com
S: Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500
S:
S: Original-Recipient: rfc822; user2@example1.com
S: Final-Recipient: rfc822; user4@example1.com
S: Action: delivered
S: Status: 2.5.0
S:
S: --%%%%--
S: .
"""


def examples() -> dict[int, tuple[bytes, bytes]]:
    """Example number -> (what the client sends, what the server sends)."""
    parts = re.split(r"^#(\d+)\n", EXAMPLES, flags=re.M)
    out = {}
    for number, block in zip(parts[1::2], parts[2::2], strict=True):
        sent = {"C": b"", "S": b""}
        for line in block.splitlines():
            sent[line[0]] += line[3:].encode("ascii") + b"\r\n"  # "S: text", "S:" for an empty line
        out[int(number)] = (sent["C"], sent["S"])
    return out


EX = examples()


@pytest.mark.parametrize(
    "number, greet",
    [
        (1, lambda c: c.send_greeting()),
        (2, lambda c: c.send_refusal(Status.TEMP, "admin", "Service down for admin, call back later")),
        (3, lambda c: c.send_refusal(Status.ERR, "unavailable", "Service down")),
        (
            5,
            lambda c: c.send_greeting(
                [
                    "starttls",
                    "vnd.com.example.option2 with parameters private to example.com",
                    "vnd.com.example.option3 with a very long\n list of parameters",
                ]
            ),
        ),
    ],
)
def test_rfc_greeting_examples(number, greet) -> None:
    assert greet(Connection()) == EX[number][1]


def test_rfc_example_4_is_the_alternative_this_core_does_not_send() -> None:
    """#4 and #1 say the same; with no options the core sends #1's line."""
    (four,), (one,) = read_replies(EX[4][1]), read_replies(EX[1][1])
    assert (four.info, four.text, four.data) == (one.info, one.text, [])
    assert Connection().send_greeting(()) == EX[1][1]


@pytest.mark.parametrize("number", range(6, 13))
def test_rfc_track_examples(number: int) -> None:
    client, server = EX[number]
    conn = greeted()
    conn.receive_data(client)
    assert conn.next_event() == Track("12345-20010101@example.com", SECRET)
    (reply,) = read_replies(server)
    assert reply.status == "+OK+" and reply.data is not None
    body = b"".join(line + b"\n" for line in reply.data)  # bare LFs on purpose: the core makes them CRLF
    assert conn.send_ok(reply.text, body=body) == server
    assert conn.next_event() == NeedData()


def test_rfc_example_8_dot_stuffing() -> None:
    _, server = EX[8]
    assert b"\r\n..Dot-Stuffed-Header: as an example\r\n" in server
    (reply,) = read_replies(server)
    assert reply.data is not None and b".Dot-Stuffed-Header: as an example" in reply.data


def test_rfc_example_14_pipelined_tracks() -> None:
    """Section 8.1, with ids that have the "@" RFC 3885 requires (the
    RFC's "<tracking-id>" is a placeholder)."""
    conn = greeted()
    events, out = exchange(
        conn, b"TRACK <tracking-id@example.com> YWJjZGVmZ2gK\r\nTRACK <id-2@example.com> QUJDREVGR0gK\r\n"
    )
    assert events == [Track("tracking-id@example.com", SECRET), Track("id-2@example.com", b"ABCDEFGH\n")]
    assert [r.status for r in read_replies(out)] == ["+OK+", "+OK+"]


# -- the command grammar ------------------------------------------------------


def command(line: str) -> Track | Comment | StartTLS | Quit | BadCommand:
    return parse_line(line.encode("ascii") + b"\r\n")


@pytest.mark.parametrize(
    "line, event",
    [
        ("TRACK <12345-20010101@example.com> YWJjZGVmZ2gK", Track("12345-20010101@example.com", SECRET)),
        ("TRACK 12345-20010101@example.com YWJjZGVmZ2gK", Track("12345-20010101@example.com", SECRET)),
        ("track\t<a@b.example>  YWJj", Track("a@b.example", b"abc")),
        ("TrAcK a@b YWJj \t", Track("a@b", b"abc")),
        ("TRACK a+2Bb+3Dc@host+2Eexample YWJj", Track("a+b=c@host.example", b"abc")),
        ("TRACK a+20b@c YWJj", Track("a b@c", b"abc")),
        ("TRACK +3Ca@b+3E YWJj", Track("<a@b>", b"abc")),
        ("TRACK <<a@b>> YWJj", Track("<a@b>", b"abc")),
        ("TRACK <a@b YWJj", Track("<a@b", b"abc")),
        ("TRACK a@b@c YWJj", Track("a@b@c", b"abc")),
        ("TRACK @ YWJj", Track("@", b"abc")),
        ("TRACK a@b YWJjZA", Track("a@b", b"abcd")),
        ("TRACK a@b YWJjZA==", Track("a@b", b"abcd")),
        ("TRACK a@b YWI=", Track("a@b", b"ab")),
        ("TRACK a@b +/+/", Track("a@b", b"\xfb\xff\xbf")),
        ("COMMENT", Comment("")),
        ("COMMENT ", Comment("")),
        ("comment hello, world!", Comment("hello, world!")),
        ("Comment\t\tx  y ", Comment("x  y ")),
        ("COMMENT a\tb", Comment("a\tb")),
        ("STARTTLS mtqp.example.com", StartTLS("mtqp.example.com")),
        ("starttls A-1.Example.COM \t", StartTLS("A-1.Example.COM")),
        ("STARTTLS 1.2", StartTLS("1.2")),
        ("QUIT", Quit()),
        ("quit", Quit()),
        ("Quit  ", Quit()),
    ],
)
def test_commands_by_the_abnf(line: str, event: object) -> None:
    assert command(line) == event


@pytest.mark.parametrize(
    "line, code, reason",
    [
        ("", None, "Unknown command"),
        ("NOOP", None, "Unknown command"),
        ("TRACKX a@b YWJj", None, "Unknown command"),
        ("COMMENTS x", None, "Unknown command"),
        (" QUIT", None, "Unknown command"),
        ("TRACK<a@b> YWJj", None, "Unknown command"),
        ("TRACK", None, "Syntax: TRACK"),
        ("TRACK a@b", None, "Syntax: TRACK"),
        ("TRACK a@b YWJj extra", None, "Syntax: TRACK"),
        ("TRACK ab YWJj", None, "Syntax: TRACK"),
        ("TRACK <ab> YWJj", None, "Syntax: TRACK"),
        ("TRACK a+40b YWJj", None, "Syntax: TRACK"),
        ("TRACK a+2bb@c YWJj", None, "Syntax: TRACK"),
        ("TRACK a+2@c YWJj", None, "Syntax: TRACK"),
        ("TRACK a=b@c YWJj", None, "Syntax: TRACK"),
        ("TRACK a+0Ab@c YWJj", None, "Syntax: TRACK"),
        ("TRACK a+80@c YWJj", None, "Syntax: TRACK"),
        ("TRACK a@b Y", None, "Syntax: TRACK"),
        ("TRACK a@b YWJjZ", None, "Syntax: TRACK"),
        ("TRACK a@b YWJjZA=", None, "Syntax: TRACK"),
        ("TRACK a@b YW=J", None, "Syntax: TRACK"),
        ("TRACK a@b YWJj!", None, "Syntax: TRACK"),
        ("TRACK a@b YWJj====", None, "Syntax: TRACK"),
        ("STARTTLS", "bad-fqdn", "Syntax: STARTTLS"),
        ("STARTTLS localhost", "bad-fqdn", "Syntax: STARTTLS"),
        ("STARTTLS example.com.", "bad-fqdn", "Syntax: STARTTLS"),
        ("STARTTLS -a.example", "bad-fqdn", "Syntax: STARTTLS"),
        ("STARTTLS a-.example", "bad-fqdn", "Syntax: STARTTLS"),
        ("STARTTLS a..example", "bad-fqdn", "Syntax: STARTTLS"),
        ("STARTTLS a_b.example", "bad-fqdn", "Syntax: STARTTLS"),
        ("STARTTLS [192.0.2.1]", "bad-fqdn", "Syntax: STARTTLS"),
        ("STARTTLS a.example b.example", "bad-fqdn", "Syntax: STARTTLS"),
        ("QUIT now", None, "QUIT takes no parameters"),
    ],
)
def test_malformed_commands_are_bad(line: str, code: str | None, reason: str) -> None:
    event = command(line)
    assert isinstance(event, BadCommand)
    assert (event.status, event.code) == (Status.BAD, code)
    assert event.reason.startswith(reason)
    (reply,) = read_replies(event.response)
    assert (reply.status, reply.info) == ("-BAD", [code] if code else [])


def test_envid_and_secret_are_case_sensitive() -> None:
    assert command("TRACK A@B YWJJ") == Track("A@B", b"abI")
    assert command("TRACK a@b ywjj") == Track("a@b", b"\xcb\x08\xe3")


# -- lines ---------------------------------------------------------------------


def test_line_ending_in_bare_lf_is_bad_and_the_session_goes_on() -> None:
    conn = greeted()
    events, _ = exchange(conn, b"QUIT\nCOMMENT x\r\n")
    assert events == [BadCommand(Status.BAD, None, "Command lines end with CRLF"), Comment("x")]


def test_cr_without_lf_ends_nothing() -> None:
    conn = greeted()
    assert exchange(conn, b"QUIT\r") == ([], b"")
    assert conn.buffered == 5
    events, _ = exchange(conn, b"COMMENT a\rQUIT\r\n")
    assert events == [BadCommand(Status.BAD, None, "Commands are printable US-ASCII")]
    events, _ = exchange(conn, b"QUIT\r\r\n")
    assert events == [BadCommand(Status.BAD, None, "Commands are printable US-ASCII")]
    events, _ = exchange(conn, b"QUIT\r")
    assert events == []
    assert exchange(conn, b"\n")[0] == [Quit(), ConnectionClosed()]


@pytest.mark.parametrize(
    "garbage",
    [
        b"COMMENT caf\xc3\xa9\r\n",
        b"\x00\r\n",
        b"QUIT\x00\r\n",
        b"\xff\xfe\xfd\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n",
        b"TRACK <a@b> YWJj\x7f\r\n",
    ],
)
def test_non_ascii_and_binary_are_bad(garbage: bytes) -> None:
    conn = greeted()
    events, out = exchange(conn, garbage + b"QUIT\r\n")
    assert isinstance(events[0], BadCommand) and events[0].status is Status.BAD
    assert events[1:] == [Quit(), ConnectionClosed()]
    assert [r.status for r in read_replies(out)] == ["-BAD", "+OK"]


def test_a_998_octet_line_is_a_command() -> None:
    line = "COMMENT " + "x" * (MAX_LINE - 8)
    conn = greeted()
    assert exchange(conn, line.encode() + b"\r\n")[0] == [Comment("x" * (MAX_LINE - 8))]


def test_a_999_octet_line_is_bad_and_the_next_command_runs() -> None:
    conn = greeted()
    events, out = exchange(conn, b"COMMENT " + b"x" * (MAX_LINE - 7) + b"\r\nCOMMENT next\r\n")
    assert events[1:] == [Comment("next")]
    assert isinstance(events[0], BadCommand) and events[0].reason.startswith("Line too long")
    assert [r.status for r in read_replies(out)] == ["-BAD", "+OK"]
    assert (conn.counters.commands, conn.counters.bad) == (2, 1)


def test_an_overlong_line_is_never_buffered() -> None:
    conn = greeted()
    conn.receive_data(b"COMMENT ")
    for _ in range(50):
        conn.receive_data(b"x" * 1000)
        assert conn.buffered <= MAX_LINE + 1
        assert conn.next_event() == NeedData()
    events, _ = exchange(conn, b"x\r\nQUIT\r\n")
    assert len(events) == 3 and isinstance(events[0], BadCommand)
    assert events[1:] == [Quit(), ConnectionClosed()]


def test_998_octets_and_a_cr_wait_for_their_lf() -> None:
    conn = greeted()
    assert exchange(conn, b"COMMENT " + b"y" * (MAX_LINE - 8) + b"\r") == ([], b"")
    assert conn.buffered == MAX_LINE + 1
    assert exchange(conn, b"\n")[0] == [Comment("y" * (MAX_LINE - 8))]
    assert conn.buffered == 0


def test_overlong_line_ending_in_bare_lf() -> None:
    conn = greeted()
    conn.receive_data(b"z" * 5000 + b"\n")
    assert conn.buffered == 0  # dropped as it arrived, even a whole line in one read
    events, _ = drain(conn)
    assert [e.reason for e in events if isinstance(e, BadCommand)] == [f"Line too long (limit {MAX_LINE} octets)"]


def test_the_end_of_a_skipped_line_in_a_read_of_its_own() -> None:
    """A read that holds just the rest of a line being skipped (overlong, or
    torn after STARTTLS) ends the skipping, and is no command itself."""
    too_long = BadCommand(Status.BAD, None, f"Line too long (limit {MAX_LINE} octets)")
    conn = greeted()
    conn.receive_data(b"COMMENT " + b"x" * MAX_LINE)
    assert exchange(conn, b"TRACK <a@b> YWJj\r\n")[0] == [too_long]
    assert exchange(conn, b"TRACK <a@b> YWJj\r\n")[0] == [Track("a@b", b"abc")]
    conn = greeted("STARTTLS")
    exchange(conn, b"STARTTLS mtqp.example.com\r\nTRACK <a@")
    assert exchange(conn, b"b> YWJj\r\n")[0] == []
    assert exchange(conn, b"TRACK <a@b> YWJj\r\n")[0] == [Track("a@b", b"abc")]
    assert conn.counters.discarded == len(b"TRACK <a@b> YWJj\r\n")


# -- pipelining ------------------------------------------------------------------


def test_a_dozen_pipelined_commands_in_one_read() -> None:
    lines = [
        b"TRACK <1@example.com> YWJj",
        b"COMMENT one",
        b"TRACK 2@example.com YWJjZA==",
        b"NOOP",
        b"comment two",
        b"TRACK <3@example.com> YWJjZGVmZ2gK",
        b"TRACK 4@example.com",
        b"COMMENT three",
        b"TRACK <5+2B@example.com> YWI=",
        b"QUIT now",
        b"COMMENT four",
        b"QUIT",
    ]
    conn = greeted()
    events, out = exchange(conn, b"".join(line + b"\r\n" for line in lines))
    assert [type(e).__name__ for e in events] == [
        "Track",
        "Comment",
        "Track",
        "BadCommand",
        "Comment",
        "Track",
        "BadCommand",
        "Comment",
        "Track",
        "BadCommand",
        "Comment",
        "Quit",
        "ConnectionClosed",
    ]
    assert [e.envid for e in events if isinstance(e, Track)] == [
        "1@example.com",
        "2@example.com",
        "3@example.com",
        "5+@example.com",
    ]
    replies = read_replies(out)
    assert " ".join(r.status for r in replies) == "+OK+ +OK +OK+ -BAD +OK +OK+ -BAD +OK +OK+ -BAD +OK +OK"
    assert (conn.counters.commands, conn.counters.bad) == (12, 3)


def test_a_command_in_one_byte_chunks() -> None:
    line = b"TRACK <12345-20010101@example.com> YWJjZGVmZ2gK\r\n"
    conn = greeted()
    for byte in line[:-1]:
        conn.receive_data(bytes([byte]))
        assert conn.next_event() == NeedData()
    conn.receive_data(line[-1:])
    assert conn.next_event() == Track("12345-20010101@example.com", SECRET)


def test_every_command_is_answered_before_the_next() -> None:
    conn = greeted()
    conn.receive_data(b"COMMENT a\r\nCOMMENT b\r\n")
    assert conn.next_event() == Comment("a")
    assert conn.awaiting == Comment("a")
    with pytest.raises(LocalProtocolError, match="answer"):
        conn.next_event()
    conn.send_ok()
    with pytest.raises(LocalProtocolError, match="no command"):
        conn.send_ok()
    assert conn.next_event() == Comment("b")


def test_a_bad_command_needs_no_send() -> None:
    conn = greeted()
    conn.receive_data(b"NOOP\r\nQUIT\r\n")
    assert isinstance(conn.next_event(), BadCommand)
    assert conn.awaiting is None
    with pytest.raises(LocalProtocolError):
        conn.send_error(Status.BAD)
    assert conn.next_event() == Quit()


# -- STARTTLS ----------------------------------------------------------------------


def test_starttls_resets_the_session() -> None:
    conn = greeted("STARTTLS")
    exchange(conn, b"COMMENT before\r\n")
    events, out = exchange(conn, b"STARTTLS mtqp.example.com\r\n")
    assert events == [StartTLS("mtqp.example.com")]
    assert out == b"+OK Begin TLS negotiation\r\n"
    assert conn.state is State.TLS_HANDSHAKE and not conn.tls_active
    with pytest.raises(LocalProtocolError, match="TLS"):
        conn.receive_data(b"\x16\x03\x01")
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.tls_established()
    assert conn.state is State.GREETING and conn.tls_active
    conn.receive_data(b"COMMENT after\r\n")  # may come before the new greeting is written
    with pytest.raises(LocalProtocolError, match="greeting"):
        conn.next_event()
    with pytest.raises(LocalProtocolError, match="STARTTLS"):
        conn.send_greeting(["starttls required"])
    assert conn.send_greeting(["vnd.org.example.tracking"]) == (
        b"+OK+/MTQP MTQP server ready\r\nvnd.org.example.tracking\r\n.\r\n"
    )
    events, out = exchange(conn, b"STARTTLS mtqp.example.com\r\n")
    assert events[0] == Comment("after")
    assert events[1] == BadCommand(Status.BAD, "tls-in-progress", "TLS is already active")
    assert out.endswith(b"-BAD/tls-in-progress TLS is already active\r\n")
    assert conn.counters.commands == 4  # the caps count the whole connection


def test_starttls_not_offered_is_unsupported() -> None:
    conn = greeted("vnd.org.example.x")
    (event,), out = exchange(conn, b"STARTTLS mtqp.example.com\r\n")
    assert event == BadCommand(Status.BAD, "unsupported", "STARTTLS is not offered")
    assert out == b"-BAD/unsupported STARTTLS is not offered\r\n"


@pytest.mark.parametrize("option", ["STARTTLS", "starttls", "STARTTLS required", "StartTLS \tREQUIRED"])
def test_starttls_option(option: str) -> None:
    conn = Connection()
    assert conn.send_greeting([option]) == b"+OK+/MTQP MTQP server ready\r\n" + option.encode() + b"\r\n.\r\n"


@pytest.mark.parametrize(
    "option", ["STARTTLS please", "STARTTLS required now", "STARTTLS required ", "STARTTLS\n required"]
)
def test_starttls_option_syntax_is_enforced(option: str) -> None:
    with pytest.raises(LocalProtocolError):
        Connection().send_greeting([option])


def test_bytes_after_starttls_in_the_same_read_are_discarded() -> None:
    conn = greeted("STARTTLS")
    rest = b"TRACK <a@example.com> YWJj\r\nQUIT\r\n"
    events, out = exchange(conn, b"STARTTLS mtqp.example.com\r\n" + rest)
    assert events == [
        BadCommand(Status.BAD, None, f"STARTTLS must end a pipelined group; {len(rest)} octets after it discarded")
    ]
    assert read_replies(out)[0].status == "-BAD"
    assert conn.state is State.COMMANDS and not conn.tls_active
    assert conn.counters.discarded == len(rest)
    assert exchange(conn, b"COMMENT later\r\n")[0] == [Comment("later")]


def test_a_torn_line_after_starttls_is_discarded_to_its_end() -> None:
    conn = greeted("STARTTLS")
    events, _ = exchange(conn, b"STARTTLS mtqp.example.com\r\nTRACK <a@")
    assert isinstance(events[0], BadCommand)
    events, _ = exchange(conn, b"example.com> YWJj\r\nQUIT\r\n")
    assert events == [Quit(), ConnectionClosed()]
    assert conn.counters.discarded == len(b"TRACK <a@example.com> YWJj\r\n")


def test_refused_starttls_still_ends_the_group() -> None:
    conn = greeted()
    events, _ = exchange(conn, b"STARTTLS mtqp.example.com\r\nQUIT\r\n")
    assert [e.code for e in events if isinstance(e, BadCommand)] == ["unsupported"]
    assert conn.state is State.COMMANDS and conn.counters.discarded == 6


def test_bytes_before_the_starttls_answer_are_discarded() -> None:
    conn = greeted("STARTTLS")
    conn.receive_data(b"STARTTLS mtqp.example.com\r\n")
    assert conn.next_event() == StartTLS("mtqp.example.com")
    conn.receive_data(b"TRACK <a@example.com> YWJj\r\nCOMM")  # a reader running ahead of the answer
    conn.send_ok()
    assert conn.counters.discarded == 32
    conn.tls_established()
    conn.send_greeting()
    assert exchange(conn, b"ENT x\r\n")[0] == [BadCommand(Status.BAD, None, "Unknown command")]


def test_the_shell_may_refuse_starttls() -> None:
    conn = greeted("STARTTLS")
    conn.receive_data(b"STARTTLS other.example\r\n")
    assert conn.next_event() == StartTLS("other.example")
    assert conn.send_error(Status.BAD, "bad-fqdn", "No certificate for other.example") == (
        b"-BAD/bad-fqdn No certificate for other.example\r\n"
    )
    assert conn.state is State.COMMANDS and not conn.tls_active
    with pytest.raises(LocalProtocolError):
        conn.tls_established()


def test_insecure_tls_refuses_all_but_quit() -> None:
    conn = greeted("STARTTLS")
    exchange(conn, b"STARTTLS mtqp.example.com\r\n")
    conn.tls_established(secure=False)
    conn.send_greeting()
    events, out = exchange(conn, b"TRACK a@b YWJj\r\nCOMMENT x\r\nSTARTTLS mtqp.example.com\r\n")
    assert [(e.status, e.code) for e in events if isinstance(e, BadCommand)] == [(Status.ERR, "insecure")] * 3
    assert [(r.status, r.info) for r in read_replies(out)] == [("-ERR", ["insecure"])] * 3
    events, _ = exchange(conn, b"NOOP\r\nQUIT\r\n")
    assert [type(e) for e in events] == [BadCommand, Quit, ConnectionClosed]
    assert events[0].status is Status.BAD  # malformed is still -BAD


# -- the end of a session -------------------------------------------------------------


def test_quit_closes_and_later_bytes_are_discarded() -> None:
    conn = greeted()
    events, out = exchange(conn, b"QUIT\r\nCOMMENT too late\r\n")
    assert events == [Quit(), ConnectionClosed()] and out == b"+OK\r\n"
    assert conn.state is State.CLOSING
    conn.receive_data(b"TRACK a@b YWJj\r\n")
    assert conn.next_event() == ConnectionClosed()
    assert conn.counters.discarded == len(b"COMMENT too late\r\nTRACK a@b YWJj\r\n")


def test_end_of_stream_after_pipelined_commands() -> None:
    conn = greeted()
    conn.receive_data(b"COMMENT a\r\nQUIT")
    conn.receive_data(b"")
    assert drain(conn)[0] == [Comment("a"), ConnectionClosed()]  # the torn QUIT never runs
    assert conn.state is State.CLOSED and conn.counters.discarded == 4
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError, match="end of the stream"):
        conn.receive_data(b"x")


def test_input_before_the_greeting_waits_for_it() -> None:
    conn = Connection()
    conn.receive_data(b"COMMENT early\r\n")
    with pytest.raises(LocalProtocolError, match="greeting"):
        conn.next_event()
    conn.send_greeting()
    assert conn.next_event() == Comment("early")
    conn.send_ok()
    with pytest.raises(LocalProtocolError, match="greeting"):
        conn.send_greeting()


def test_a_refused_greeting_ends_the_session() -> None:
    conn = Connection()
    conn.receive_data(b"TRACK a@b YWJj\r\n")
    assert conn.send_refusal(Status.TEMP, "admin") == b"-TEMP/MTQP/admin\r\n"
    assert conn.state is State.CLOSING
    assert conn.next_event() == ConnectionClosed()
    for status in (Status.OK, Status.BAD):
        with pytest.raises(LocalProtocolError):
            Connection().send_refusal(status, "admin")


def test_quit_and_comment_are_answered_with_success() -> None:
    conn = greeted()
    conn.receive_data(b"COMMENT\r\nQUIT\r\nTRACK a@b YWJj\r\n")
    for _ in range(2):
        event = conn.next_event()
        with pytest.raises(LocalProtocolError, match="successful"):
            conn.send_error(Status.ERR, "admin")
        assert conn.awaiting == event
        conn.send_ok(body="" if isinstance(event, Comment) else None)  # +OK+ is a success too


def test_a_successful_track_is_multi_line() -> None:
    conn = greeted()
    conn.receive_data(b"TRACK a@b YWJj\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError, match="multi-line"):
        conn.send_ok("found")
    assert conn.send_error(Status.ERR, "noinfo", "No such message") == b"-ERR/noinfo No such message\r\n"


# -- responses ---------------------------------------------------------------------------


def answering() -> Connection:
    conn = greeted()
    conn.receive_data(b"TRACK a@b YWJj\r\n")
    conn.next_event()
    return conn


@pytest.mark.parametrize(
    "status, code, text, wire",
    [
        (Status.ERR, "noinfo", "No such message", b"-ERR/noinfo No such message\r\n"),
        (Status.TEMP, "unavailable", "", b"-TEMP/unavailable\r\n"),
        (Status.TEMP, "admin", "Down for maintenance", b"-TEMP/admin Down for maintenance\r\n"),
        (Status.ERR, "tls-required", "Use STARTTLS", b"-ERR/tls-required Use STARTTLS\r\n"),
        (Status.ERR, "insecure", "\tTab led", b"-ERR/insecure \tTab led\r\n"),
        (Status.BAD, None, "What?", b"-BAD What?\r\n"),
        (Status.ERR, "vnd_example-1", "", b"-ERR/vnd_example-1\r\n"),
    ],
)
def test_negative_responses(status: Status, code: str | None, text: str, wire: bytes) -> None:
    out = answering().send_error(status, code, text)
    assert out == wire
    (reply,) = read_replies(out)
    assert (reply.status, reply.info, reply.text) == (status.value, [code] if code else [], text)


def test_positive_single_line_responses() -> None:
    conn = greeted()
    conn.receive_data(b"COMMENT\r\nQUIT\r\n")
    conn.next_event()
    assert conn.send_ok() == b"+OK\r\n"
    conn.next_event()
    assert conn.send_ok("Bye") == b"+OK Bye\r\n"


@pytest.mark.parametrize("code", ["no info", "a/b", "caf\u00e9", "x\r\n"])
def test_reason_codes_are_namechars(code: str) -> None:
    conn = answering()
    with pytest.raises(LocalProtocolError, match="NAMECHAR"):
        conn.send_error(Status.ERR, code)
    assert conn.awaiting is not None  # nothing was sent; answer again


@pytest.mark.parametrize("text", ["two\r\nlines", "bare\nLF", "caf\u00e9", "nul\x00"])
def test_response_texts_are_one_printable_line(text: str) -> None:
    with pytest.raises(LocalProtocolError, match="printable"):
        answering().send_error(Status.ERR, "noinfo", text)


def test_positive_status_cannot_be_sent_as_an_error() -> None:
    with pytest.raises(LocalProtocolError):
        answering().send_error(Status.OK)


def test_multi_line_body_framing() -> None:
    body = "first\n.dot\n..two dots\n.\n\r\nlast\r\nno newline at end"
    out = answering().send_ok("Here", body=body)
    assert out == (b"+OK+ Here\r\nfirst\r\n..dot\r\n...two dots\r\n..\r\n\r\nlast\r\nno newline at end\r\n.\r\n")
    (reply,) = read_replies(out)
    assert reply.data == [b"first", b".dot", b"..two dots", b".", b"", b"last", b"no newline at end"]


@pytest.mark.parametrize(
    "body, wire",
    [
        ("", b"+OK+\r\n.\r\n"),
        (b"", b"+OK+\r\n.\r\n"),
        ("\n", b"+OK+\r\n\r\n.\r\n"),
        ("a\n", b"+OK+\r\na\r\n.\r\n"),
        ("a\r\n", b"+OK+\r\na\r\n.\r\n"),
        ("a\rb\n", b"+OK+\r\na\rb\r\n.\r\n"),
        ("a\rb\r\n", b"+OK+\r\na\rb\r\n.\r\n"),
        ("a\r\r\n.b\r\n\r\n.\r\n", b"+OK+\r\na\r\r\n..b\r\n\r\n..\r\n.\r\n"),
        (".\r\n", b"+OK+\r\n..\r\n.\r\n"),
        ("\u00e9t\u00e9\n", "+OK+\r\n\u00e9t\u00e9\r\n.\r\n".encode()),
    ],
)
def test_body_edges(body: str | bytes, wire: bytes) -> None:
    assert answering().send_ok(body=body) == wire


def test_no_line_over_998_octets_can_be_sent() -> None:
    conn = answering()
    assert conn.send_ok(body="h" * MAX_LINE).endswith(b"h" * MAX_LINE + b"\r\n.\r\n")
    for body in (
        "h" * (MAX_LINE + 1),
        "." + "h" * (MAX_LINE - 1),
        "ok\n" + "\u00e9" * 500,
        "ok\r\n." + "\r" * 997 + "\r\n",
    ):
        conn = answering()
        with pytest.raises(LineTooLong):
            conn.send_ok(body=body)
        assert conn.awaiting is not None  # fold and try again
        conn.send_ok(body="h\n" * 3)
    with pytest.raises(LineTooLong):
        answering().send_error(Status.ERR, "noinfo", "t" * MAX_LINE)
    with pytest.raises(LineTooLong):
        Connection().send_greeting(["vnd.org.example.x " + "p" * MAX_LINE])
    with pytest.raises(LineTooLong):
        Connection().send_greeting([], "t" * (MAX_LINE - 8))
    assert Connection().send_greeting([], "t" * (MAX_LINE - 9)).startswith(b"+OK/MTQP ttt")


@pytest.mark.parametrize(
    "option",
    ["", " leading space", "vnd.org.example.x a\nnot a continuation", "vnd.org.example.caf\u00e9", "vnd.x\x00"],
)
def test_option_specifications(option: str) -> None:
    with pytest.raises(LocalProtocolError, match="option"):
        Connection().send_greeting([option])


def test_option_continuation_lines() -> None:
    out = Connection().send_greeting(["vnd.org.example.x one\n\ttwo\r\n three"], "Hi")
    assert out == b"+OK+/MTQP Hi\r\nvnd.org.example.x one\r\n\ttwo\r\n three\r\n.\r\n"


def test_the_secret_is_not_in_the_repr() -> None:
    assert "abc" not in repr(Track("a@b", b"abc")) and "YWJj" not in repr(Track("a@b", b"abc"))


# -- hostile input ---------------------------------------------------------------------------

PIECES = st.sampled_from(
    [
        b"TRACK <a@example.com> YWJjZGVmZ2gK\r\n",
        b"TRACK ",
        b"a+2B@b ",
        b"COMMENT hi\r\n",
        b"QUIT\r\n",
        b"STARTTLS mtqp.example.com\r\n",
        b"\r",
        b"\n",
        b"\r\n",
        b"x" * 600,
        b".",
        b"\x00\xff\x16\x03",
        b"\t",
    ]
)
# b"" would be the end of the stream, which the test sends last.
CHUNKS = st.lists(
    st.one_of(st.binary(min_size=1, max_size=80), st.lists(PIECES, min_size=1, max_size=6).map(b"".join)), max_size=25
)


@settings(max_examples=300, deadline=None)
@given(CHUNKS, st.booleans())
def test_any_bytes_give_events_and_never_a_long_buffer(chunks: list[bytes], offer_tls: bool) -> None:
    """Whatever a client sends, the core neither raises nor holds more than
    one line's worth of octets once the shell has taken every event; every
    byte it sends frames by the ABNF, one response per command line."""
    conn = Connection()
    out = conn.send_greeting(["STARTTLS"] if offer_tls else [])
    greetings, commands = 1, 0
    for chunk in [*chunks, b""]:
        if conn.state is State.TLS_HANDSHAKE:
            conn.tls_established()
            out += conn.send_greeting()
            greetings += 1
        conn.receive_data(chunk)
        events, sent = drain(conn)
        out += sent
        commands += sum(not isinstance(e, ConnectionClosed) for e in events)
        assert conn.buffered <= MAX_LINE + 1
    assert conn.state in (State.CLOSED, State.CLOSING, State.TLS_HANDSHAKE)
    assert len(read_replies(out)) == greetings + commands == greetings + conn.counters.commands


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), PIECES), max_size=20), st.data())
def test_how_the_input_is_cut_does_not_matter(pieces: list[bytes], data: st.DataObject) -> None:
    """One read or many, the same events (STARTTLS aside: what follows it
    in the same read is the one thing that depends on the reads)."""
    stream = b"".join(pieces).replace(b"STARTTLS", b"STARTTLX")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reads = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert read_all(greeted(), reads) == read_all(greeted(), [stream])


def read_all(conn: Connection, reads: list[bytes]) -> list[Event]:
    """The events up to the end of the session, however many reads follow it."""
    events: list[Event] = []
    for chunk in [*(r for r in reads if r), b""]:  # b"" is the end of the stream, sent once
        events += exchange(conn, chunk)[0]
        if ConnectionClosed() in events:
            break
    return events


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=3000), st.text(max_size=1500)))
def test_any_body_frames_and_reads_back(body: str | bytes) -> None:
    data = body.encode() if isinstance(body, str) else body
    lines = re.split(rb"\r?\n", data)
    if lines[-1] == b"":
        lines.pop()
    conn = answering()
    try:
        out = conn.send_ok("x", body=body)
    except LineTooLong:
        assert any(len(line) + line.startswith(b".") > MAX_LINE for line in lines)
        assert conn.awaiting is not None
        return
    (reply,) = read_replies(out)
    assert reply.data == lines


# -- the fast path agrees with the grammar ----------------------------------------------------
#
# parse_line answers the common TRACK, QUIT and COMMENT lines with precompiled
# expressions and asks the pyparsing grammar about everything else. The
# grammar is the definition: on every line, the fast path either declines
# (None) or answers exactly what the grammar answers; and it declines only
# where the grammar does not find one of those three commands, so the
# common lines never reach pyparsing.


def _agree(text: str) -> None:
    fast, grammar = _fast_command(text), _grammar_command(text)
    if isinstance(grammar, Track | Quit | Comment):
        assert fast == grammar, text
        if isinstance(grammar, Track):
            assert (fast.envid, fast.secret) == (grammar.envid, grammar.secret), text
        if isinstance(grammar, Comment):
            assert fast.text == grammar.text, text
    else:
        assert fast is None, (text, fast, grammar)


def _table_lines() -> list[str]:
    lines = []
    for test in (test_commands_by_the_abnf, test_malformed_commands_are_bad):
        (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
        lines += [row[0] for row in mark.args[1]]
    for client, _ in EX.values():
        lines += client.decode("ascii").split("\r\n")
    return lines


def _variants(line: str) -> list[str]:
    """A line under the changes the grammar is sensitive to."""
    out = [line, line.lower(), line.upper(), line.swapcase(), line + " ", line + "\t \t", " " + line]
    out += [line.replace(" ", "\t"), line.replace(" ", "  "), line.replace(" ", "", 1), line.rstrip()]
    out += [line + x for x in ("=", "==", "===", "!", " x", "+", "+4", "+41", "+0A", ">", "<", "@")]
    out += [line[:cut] for cut in range(len(line))]
    return out


EXTRA = [
    "TRACK <> YWJj",
    "TRACK <@> YWJj",
    "TRACK < YWJj",
    "TRACK > YWJj",
    "TRACK <a@b>> YWJj",
    "TRACK a@b+7E YWJj",
    "TRACK a@b+7F YWJj",
    "TRACK a@b+1F YWJj",
    "TRACK a@b+09 YWJj",
    "TRACK a+40b@c YWJj",
    "TRACK a@b =",
    "TRACK a@b ==",
    "TRACK a@b YQ",
    "TRACK a@b YQ=",
    "TRACK a@b YQ==",
    "TRACK a@b YR==",
    "TRACK a@b YWJjZGVmZ2gK=",
    "TRACK a@b YW Jj",
    "TRACK\ta@b\tYWJj\t",
    "TRACK_ a@b YWJj",
    "TRACK$ a@b YWJj",
    "QUIT\t",
    "QUITx",
    "QUIT_",
    "QUIT!",
    "COMMENT!",
    "COMMENT_",
    "COMMENT\t",
    "COMMENT \t ",
    "COMMENT  ~!@#$%^&*()",
    "COMMENTx y",
    "STARTTLS a.example",
    "Trac a@b YWJj",
    "T",
    "Q",
    "C",
]


def test_fast_path_agrees_on_the_tables_and_the_rfc() -> None:
    lines = {v for line in [*_table_lines(), *EXTRA] for v in _variants(line)}
    assert len(lines) > 1000
    answered = 0
    for text in sorted(lines):
        _agree(text)
        answered += _fast_command(text) is not None
    assert answered > 200  # the fast path is exercised, not merely declining


_PRINTABLE_ASCII = "".join(map(chr, range(0x20, 0x7F))) + "\t"
_TOKENS = st.sampled_from(
    [
        *["TRACK", "track", "Track", "QUIT", "quit", "COMMENT", "comment", "STARTTLS", "TRACKX", "QUITS", "COMMENTS"],
        *[" ", "  ", "\t", " \t", "<", ">", "@", "a", "Z", "0", "9", "-", ".", "_", "$", "!", "~", ":"],
        *["+", "+2B", "+3D", "+40", "+0A", "+7F", "+7E", "+20", "+2b", "+4", "=", "==", "/", "+/"],
        *["YWJj", "YWJjZA", "YWJjZGVmZ2gK", "QUJDREVGR0gK", "YQ", "YR", "abc", "example.com", "12345-20010101"],
    ]
)


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.lists(_TOKENS, max_size=12).map("".join),
        st.tuples(
            st.sampled_from(["TRACK ", "track\t", "QUIT", "COMMENT", "COMMENT "]),
            st.text(alphabet=_PRINTABLE_ASCII, max_size=40),
        ).map("".join),
        st.text(alphabet=_PRINTABLE_ASCII, max_size=60),
    )
)
def test_fast_path_agrees_on_generated_lines(text: str) -> None:
    _agree(text)
    assert parse_line(text.encode("ascii") + b"\r\n") == _grammar_command(text)


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(["TRACK", "tRaCk"]),
    st.text(alphabet=" \t", min_size=1, max_size=3),
    st.booleans(),
    st.text(alphabet="".join(c for c in _PRINTABLE_ASCII if c not in " \t+=<>@"), min_size=1, max_size=20),
    st.text(alphabet="".join(c for c in _PRINTABLE_ASCII if c not in " \t+=<>@"), min_size=1, max_size=20),
    st.binary(min_size=1, max_size=40),
    st.sampled_from(["", "=", "==", "==="]),
    st.text(alphabet=" \t", max_size=3),
)
def test_fast_path_agrees_on_generated_tracks(kw, ws, brackets, local, host, secret, pad, tail) -> None:
    """Mostly well-formed TRACK lines, where the fast path must answer."""
    envid = f"{local}@{host}"
    if brackets:
        envid = f"<{envid}>"
    text = f"{kw}{ws}{envid}{ws}{base64.b64encode(secret).decode().rstrip('=')}{pad}{tail}"
    _agree(text)


# -- the TRACK line matched on the raw line agrees with the general way -------------------------
#
# parse_line tries _TRACK_LINE on the raw line before the framing checks, the
# decoding and _fast_command. Turned off, parse_line takes the general way;
# on every line, raw octets and terminator included, both must give the same
# event or the same -BAD.


def _general_way(line: bytes) -> Command | BadCommand:
    """parse_line with both fast paths off: framing checks, then the grammar."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(protocol, "_TRACK_LINE", re.compile(rb"(?!)"))
        mp.setattr(protocol, "_fast_command", lambda text: None)
        return parse_line(line)


def _agree_raw(line: bytes) -> bool:
    """Whether the line took the raw fast path (asserting that it agrees)."""
    assert parse_line(line) == _general_way(line), line
    return protocol._TRACK_LINE.fullmatch(line) is not None


ENDINGS = [
    b"\r\n",
    b"\n",
    b"",
    b"\r",
    b"\r\r\n",
    b"\r\n\r\n",
    b"\n\r\n",
    b"\x00\r\n",
    b" \x0b\r\n",
    b"\x0c\r\n",
    b"\xa0\r\n",
]


def test_raw_track_line_agrees_on_the_tables_and_the_rfc() -> None:
    texts = sorted({v for line in [*_table_lines(), *EXTRA] for v in _variants(line)})
    taken = sum(_agree_raw(text.encode("ascii") + b"\r\n") for text in texts)
    for text in [*_table_lines(), *EXTRA]:
        for ending in ENDINGS:
            _agree_raw(text.encode("ascii") + ending)
    assert taken > 100  # the raw fast path is exercised, not merely declining


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
@pytest.mark.parametrize("size", [MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_LINE + 2])
def test_raw_track_line_at_the_length_limit(size: int, ending: bytes) -> None:
    padded_envid = b"TRACK <" + b"e" * (size - 15) + b"@b> YWJj"
    trailing_blanks = b"TRACK a@b YWJj" + b" \t" * ((size - 14) // 2) + b" " * (size % 2)
    for line in (padded_envid, trailing_blanks):
        assert len(line) == size
        assert _agree_raw(line + ending) == (ending == b"\r\n" and size <= MAX_LINE)
        event = parse_line(line + ending)
        assert isinstance(event, Track) if ending == b"\r\n" and size <= MAX_LINE else isinstance(event, BadCommand)
    conn = greeted()
    events, _ = exchange(conn, padded_envid + ending)
    assert events == [parse_line(padded_envid + ending)]


_XCHARS = [bytes([c]) for c in range(0x21, 0x7F) if c not in b"+="]
_PLAIN_XTEXT = st.lists(st.sampled_from([c for c in _XCHARS if c not in b"<>"]), max_size=12).map(b"".join)
_XTEXT = st.lists(st.sampled_from([*_XCHARS, *b"+2B +40 +3C +3E +7E +20".split()]), max_size=12).map(b"".join)


@st.composite
def well_formed_tracks(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A TRACK line the grammar accepts, and whether it is of the form the
    raw fast path must take (no hexchar, no bracket inside the envid)."""
    xtext = draw(st.sampled_from([_PLAIN_XTEXT, _XTEXT]))
    envid = draw(xtext) + b"@" + draw(xtext)
    secret = base64.b64encode(draw(st.binary(min_size=1, max_size=48)))
    if draw(st.booleans()):
        secret = secret.rstrip(b"=")
    ws = st.text(" \t", min_size=1, max_size=3).map(str.encode)
    keyword = draw(st.sampled_from([b"TRACK", b"track", b"tRaCk"]))
    line = keyword + draw(ws) + (b"<" + envid + b">" if draw(st.booleans()) else envid) + draw(ws) + secret
    line += draw(st.text(" \t", max_size=3).map(str.encode)) + b"\r\n"
    return line, not re.search(rb"[+<>]", envid)


@settings(max_examples=1500, deadline=None)
@given(well_formed_tracks())
def test_raw_track_line_takes_the_well_formed_lines(track: tuple[bytes, bool]) -> None:
    line, common = track
    assert isinstance(parse_line(line), Track)
    assert _agree_raw(line) == common


# What the grammar distinguishes near a well-formed line, octet by octet.
_OCTETS = [*(bytes([c]) for c in b" \t\r\n\x00\x0b\x0c\x7f\xe9<>@+=/_-.!~AaZz09"), b"+2B", b"+0A", b"+2b", b"=="]


@pytest.mark.parametrize("line", [b"TRACK <a@b> YWJj\r\n", b"track\ta+2Bb@c YWI= \r\n", b"TrAcK @ YQ\t\r\n"])
def test_raw_track_line_agrees_one_edit_away(line: bytes) -> None:
    """Every line one inserted, replaced or deleted octet away from these."""
    edited = {line[:at] + octets + line[at:] for at in range(len(line) + 1) for octets in _OCTETS}
    edited |= {line[:at] + octets + line[at + 1 :] for at in range(len(line)) for octets in [b"", *_OCTETS]}
    assert sum(map(_agree_raw, sorted(edited))) > 10


@settings(max_examples=3000, deadline=None)
@given(
    well_formed_tracks(),
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 200), st.integers(-6, -1)),  # negative: from the end
            st.sampled_from(["insert", "replace", "delete"]),
            st.sampled_from(_OCTETS),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_raw_track_line_agrees_near_well_formed_lines(
    track: tuple[bytes, bool], edits: list[tuple[int, str, bytes]]
) -> None:
    line = track[0]
    for where, how, octets in edits:
        at = where % (len(line) + 1)
        line = line[:at] + (b"" if how == "delete" else octets) + line[at + (how != "insert") :]
    _agree_raw(line)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(PIECES, st.sampled_from([b"\r", b"\x00", b"\xff", b"=", b"+", b"<", b">"])), max_size=6))
def test_raw_track_line_agrees_on_any_bytes(pieces: list[bytes]) -> None:
    _agree_raw(b"".join(pieces))


# -- the joined framing of a body agrees with the line-by-line one ------------------------------


def _plain_body_lines(data: bytes) -> list[bytes]:
    lines = _LINE_SPLIT.split(data)
    if lines[-1] == b"":
        lines.pop()
    return lines


def _plain_data_block(lines: list[bytes]) -> bytes:
    return b"".join(_wire(b"." + line if line.startswith(b".") else line) for line in lines) + b".\r\n"


_FRAMING = st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b" ", b"\x00", b"\r\r\n", b"\n."])


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.lists(_FRAMING, max_size=30).map(b"".join), st.binary(max_size=200)))
def test_body_lines_cut_as_the_regex_does(data: bytes) -> None:
    assert body_lines(data) == _plain_body_lines(data)


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.lists(_FRAMING, max_size=8).map(b"".join),
            st.sampled_from([b"x" * 996, b"." + b"x" * 996, b"x" * 997, b"." + b"x" * 997, b"x" * 998, b"x" * 999]),
        ),
        max_size=8,
    )
)
def test_data_block_frames_as_line_by_line(lines: list[bytes]) -> None:
    """Lines with an LF inside (no body_lines output has one) included."""
    try:
        expected = _plain_data_block(lines)
    except LineTooLong:
        with pytest.raises(LineTooLong):
            data_block(lines)
        return
    assert data_block(lines) == expected


_CANONICAL_LINE = st.one_of(
    st.lists(st.sampled_from([b".", b"..", b"a", b" ", b"\x00", b"\t"]), max_size=8).map(b"".join),
    st.sampled_from([b"x" * 996, b"." + b"x" * 996, b"x" * 997, b"." + b"x" * 997, b"x" * 998]),
)


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.lists(_CANONICAL_LINE, max_size=8).map(lambda lines: b"".join(line + b"\r\n" for line in lines)),
        st.lists(_FRAMING, max_size=30).map(b"".join),
        st.lists(st.one_of(_FRAMING, _CANONICAL_LINE), max_size=12).map(b"".join),
    )
)
def test_body_block_frames_as_body_lines_then_data_block(data: bytes) -> None:
    """The shortcut for canonical bodies (CRLF lines only, as render.py
    writes them) and the general path agree on every body, or both refuse."""
    try:
        expected = data_block(body_lines(data))
    except LineTooLong:
        with pytest.raises(LineTooLong):
            body_block(data)
        return
    assert body_block(data) == expected
    text = data.decode("ascii")  # every sample is ASCII: a str body, as render.py hands one over
    assert body_block(text) == expected
