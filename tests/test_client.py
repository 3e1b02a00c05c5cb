"""The MTQP client (server/client.py): URIs and their %-encoding, the
sans-I/O response reader, the multipart/related reader, SRV ordering, and
whole sessions over loopback against the real server (``server.net``) and,
for what that server never sends (referrals, broken servers), against small
servers built on the protocol core. The last test is END-TO-END: real
subprocesses, ``mtqpd serve`` with a trustme certificate, ``mtqpd secret``
and ``mtqpd track`` over STARTTLS, checked against samples/postfix."""

from __future__ import annotations

import io
import json
import random
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st

from ingest.correlator import Settings
from ingest.replay import replay
from ingest.store import MemoryStore
from server import client, net
from server.client import (
    ClientError,
    Response,
    ResponseReader,
    ServerProtocolError,
    Target,
    TLSPolicy,
    TrackURI,
    format_uri,
    order_srv,
    parse_tracking_body,
    parse_uri,
    referrals,
    xtext_encode,
)
from server.protocol import Connection, NeedData, Quit, StartTLS, Status, Track
from server.render import tracking_response
from server.serve import Identity

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
KEY = bytes(range(32))
MTA = "mx1.example.test"


# -- URIs ---------------------------------------------------------------------


def test_uri_forms_of_section_9() -> None:
    assert parse_uri("mtqp://mx1.example.test/track/a@b.example/c2VjcmV0") == TrackURI(
        "mx1.example.test", None, "a@b.example", "c2VjcmV0"
    )
    assert parse_uri("MTQP://mx1.example.test:11038/TRACK/a@b/c2Vj") == TrackURI(
        "mx1.example.test", 11038, "a@b", "c2Vj"
    )
    assert parse_uri("mtqp://[2001:db8::1]:1038/track/a@b/x") == TrackURI("2001:db8::1", 1038, "a@b", "x")
    assert parse_uri("mtqp://192.0.2.1:/track/a@b/x").port is None  # an empty port is the default one
    # Section 9.4: "/", "?" and "%" are %-encoded; the envid and secret are case-sensitive.
    uri = parse_uri("mtqp://h.example/track/A%2fB%3F%25+2B@h.example/ab%2FCD%2B")
    assert uri.envid == "A/B?%+2B@h.example" and uri.secret == "ab/CD+"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("http://h/track/a@b/x", "not an MTQP URI"),
        ("mtqp://h/trace/a@b/x", "not an MTQP URI"),
        ("mtqp://h/track/a@b", "not an MTQP URI"),
        ("mtqp://h/track/a@b/x/y", "not an MTQP URI"),
        ("mtqp://h/track/a@b/x?y", "not an MTQP URI"),
        ("mtqp://h:99999/track/a@b/x", "out of range"),
        ("mtqp://user@h/track/a@b/x", "not a host"),
        ("mtqp://[::g]/track/a@b/x", "not an IPv6 address"),
        ("mtqp://h/track/a%2@b/x", "two hex digits"),
        ("mtqp://h/track/a%C3%A9@b/x", "US-ASCII"),
    ],
)
def test_uri_errors(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_uri(text)


def test_format_uri_encodes_what_section_9_4_and_rfc_3986_require() -> None:
    uri = format_uri("mx1.example.test", None, "<a+b c/d?e%f>@x.example", "ab/c+d")
    assert uri == "mtqp://mx1.example.test/track/%3Ca+2Bb+20c%2Fd%3Fe%25f%3E@x.example/ab%2Fc+d"
    assert format_uri("::1", 1038, "a@b", "x") == "mtqp://[::1]:1038/track/a@b/x"
    # The envid in a URI is the wire form: xtext, which TRACK sends as it is.
    assert parse_uri(uri).envid == "<a+2Bb+20c/d?e%f>@x.example"


@given(
    envid=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    secret=st.binary(min_size=1, max_size=64),
    port=st.none() | st.integers(1, 65535),
)
def test_uri_round_trip(envid: str, secret: bytes, port: int | None) -> None:
    encoded = client.auth.encode_secret(secret)
    uri = parse_uri(format_uri("mtqp.example.test", port, envid, encoded))
    assert uri.port == port and uri.secret == encoded
    assert client.auth.xtext_decode(uri.envid) == envid
    assert str(uri) == format_uri("mtqp.example.test", port, envid, encoded)


def test_xtext_and_track_line() -> None:
    assert xtext_encode("a+b=c d\u00e9@x") == "a+2Bb+3Dc+20d+C3+A9@x"
    assert client.track_line("a@b.example", "YWJj") == b"TRACK a@b.example YWJj\r\n"
    with pytest.raises(ValueError, match="unique-envid"):
        client.track_line("mtqpd-s01", "YWJj")  # RFC 3885: local-envid "@" fqhn
    with pytest.raises(ValueError, match="base64"):
        client.track_line("a@b", "not base64!")


# -- the response reader ------------------------------------------------------


def read_all(data: bytes, chunk: int | None = None) -> list[Response]:
    reader = ResponseReader()
    out = []
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    for piece in pieces:
        reader.receive_data(piece)
        while (r := reader.next_response()) is not None:
            out.append(r)
    return out


EXAMPLE_5 = (
    b"+OK+/MTQP MTQP server ready\r\n"
    b"starttls\r\n"
    b"vnd.com.example.option2 with parameters private to example.com\r\n"
    b"vnd.com.example.option3 with a very long\r\n"
    b" list of parameters\r\n"
    b".\r\n"
)
EXAMPLE_8_HEAD = b"+OK+ Tracking information follows\r\nContent-Type: multipart/related; boundary=%%%%\r\n"


def test_greetings_of_section_3_1() -> None:
    (single,) = read_all(b"+OK/MTQP MTQP server ready\r\n")
    assert single == Response(Status.OK, ("mtqp",), "MTQP server ready") and single.ok
    (temp,) = read_all(b"-TEMP/MTQP/admin Service down for admin, call back later\r\n")
    assert temp.status is Status.TEMP and temp.has("ADMIN") and not temp.ok
    (empty,) = read_all(b"+OK+/MTQP MTQP server ready\r\n.\r\n")
    assert empty.lines == ()
    for chunk in (None, 1, 7):
        (opts,) = read_all(EXAMPLE_5, chunk)
        options = client.parse_options(opts.lines or ())
        assert options == [
            "starttls",
            "vnd.com.example.option2 with parameters private to example.com",
            "vnd.com.example.option3 with a very long list of parameters",
        ]
        assert client.starttls_option(options) == "offered"
    assert client.starttls_option(["STARTTLS  Required"]) == "required"
    assert client.starttls_option(["vnd.x.starttls"]) is None


def test_dot_stuffing_is_undone_and_responses_split_in_order() -> None:
    data = (
        EXAMPLE_8_HEAD + b"..Dot-Stuffed-Header: as an example\r\n\r\n...\r\n.x\r\n.\r\n"
        b"-ERR/noinfo\r\n"
        b"+OK\r\n"
        b"-BAD/tls-in-progress TLS is already active\r\n"
    )
    for chunk in (None, 1, 3):
        body, noinfo, ok, bad = read_all(data, chunk)
        assert body.lines == (
            b"Content-Type: multipart/related; boundary=%%%%",
            b".Dot-Stuffed-Header: as an example",
            b"",
            b"..",
            b"x",
        )
        assert body.body.endswith(b"..\r\nx\r\n")
        assert noinfo == Response(Status.ERR, ("noinfo",), "")
        assert ok == Response(Status.OK)
        assert str(bad) == "-BAD/tls-in-progress TLS is already active"


def test_reader_is_liberal_about_bare_lf_and_strict_about_the_rest() -> None:
    (r,) = read_all(b"+OK+ fine\n.\n")
    assert r.lines == ()
    for bad in (b"OK ready\r\n", b"+OKready\r\n", b"+OK/ x\r\n", b"+OK/a b/c\x01\r\n", b"\r\n"):
        with pytest.raises(ServerProtocolError):
            read_all(bad)
    with pytest.raises(ServerProtocolError, match="longer than 998"):
        read_all(b"+OK " + b"x" * 1000)  # no LF yet, already too long
    with pytest.raises(ServerProtocolError, match="longer than 998"):
        read_all(b"+OK+\r\n" + b"y" * 999 + b"\r\n.\r\n")
    reader = ResponseReader(max_body=100)
    reader.receive_data(b"+OK+\r\n" + b"z" * 60 + b"\r\n" + b"z" * 60 + b"\r\n")
    with pytest.raises(ServerProtocolError, match="longer than 100"):
        reader.next_response()


def test_reader_at_the_end_of_the_stream() -> None:
    reader = ResponseReader()
    reader.receive_data(b"+OK+ body\r\nline\r\n")
    assert reader.next_response() is None
    reader.receive_data(b"")
    with pytest.raises(ServerProtocolError, match="middle of a response"):
        reader.next_response()
    reader = ResponseReader()
    reader.receive_data(b"+OK bye\r\n")
    reader.receive_data(b"")
    assert reader.next_response() == Response(Status.OK, (), "bye")
    with pytest.raises(EOFError):
        reader.next_response()


# -- message/tracking-status ----------------------------------------------------

EXAMPLE_10 = b"""Content-Type: multipart/related; boundary=%%%%; type=tracking-status

--%%%%
Content-Type: message/tracking-status

Original-Envelope-Id: 12345-20010101@example.com
Reporting-MTA: dns; example2.com
Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500

Original-Recipient: rfc822; user1@example1.com
Final-Recipient: rfc822; user1@example1.com
Action: relayed
Status: 2.1.9
Remote-MTA: dns; smtp.example3.com
Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500

--%%%%
Content-Type: message/tracking-status

Original-Envelope-Id: 12345-20010101@example.com
Reporting-MTA: dns; smtp.example3.com
Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500

Original-Recipient: rfc822; user2@example1.com
Final-Recipient: rfc822; user4@example3.com
Action: delivered
Status: 2.5.0

--%%%%--
""".replace(b"\n", b"\r\n")


def body_of(example: bytes, **changes: bytes) -> bytes:
    for old, new in changes.items():
        example = example.replace(old.encode(), new)
    return example


def test_rfc_3887_example_10_firewall() -> None:
    first, second = parse_tracking_body(EXAMPLE_10)
    assert (first.envid, first.reporting_mta, first.arrival_date) == (
        "12345-20010101@example.com",
        "example2.com",
        "Mon, 1 Jan 2001 15:15:15 -0500",
    )
    (r,) = first.recipients
    assert (r.original, r.final, r.action, r.status, r.remote_mta) == (
        "user1@example1.com",
        "user1@example1.com",
        "relayed",
        "2.1.9",
        "smtp.example3.com",
    )
    assert r.last_attempt == "Mon, 1 Jan 2001 19:15:03 -0500" and r.will_retry_until is None
    (r2,) = second.recipients
    assert (r2.original, r2.final, r2.action, r2.remote_mta) == (
        "user2@example1.com",
        "user4@example3.com",
        "delivered",
        None,
    )
    assert referrals([first, second]) == []  # relayed: no further tracking


EXAMPLE_7 = b"""Content-Type: multipart/related; boundary=%%%%; type=tracking-status

--%%%%
Content-Type: message/tracking-status

Original-Envelope-Id: 12345-20010101@example.com
Reporting-MTA: dns; example2.com
Arrival-Date: Mon,  1 Jan 2001 15:15:15 -0500

Original-Recipient: rfc822; user1@example1.com
Final-Recipient: rfc822; user1@example1.com
Action: transferred
Remote-MTA: dns; example3.com
Last-Attempt-Date: Mon, 1 Jan 2001 19:15:03 -0500
Status:2.4.0

--%%%%--
""".replace(b"\n", b"\r\n")


def test_transferred_without_chaining_is_a_referral() -> None:
    """RFC 3887 example #7 as printed (its ``Status:2.4.0`` too): transferred
    to example3.com, which the answer does not cover, so the tracking agent
    asks example3.com (RFC 3886 section 3.3.3)."""
    parts = parse_tracking_body(EXAMPLE_7)
    (r,) = parts[0].recipients
    assert (r.action, r.status, r.remote_mta, r.remote_mta_type) == ("transferred", "2.4.0", "example3.com", "dns")
    assert referrals(parts) == ["example3.com"]
    commented = parse_tracking_body(EXAMPLE_7.replace(b"Status:2.4.0", b"Status: 4.4.1 (No answer from host)"))
    assert (commented[0].recipients[0].status, commented[0].recipients[0].comment) == ("4.4.1", "(No answer from host)")
    # Already chained in the same answer (example #10 with a transfer): nothing to ask.
    chained = parse_tracking_body(EXAMPLE_10.replace(b"Action: relayed", b"Action: transferred"))
    assert referrals(chained) == []
    # An address literal names a server too; another MTA-name type does not.
    literal = parse_tracking_body(EXAMPLE_7.replace(b"dns; example3.com", b"dns; [IPv6:2001:db8::1]"))
    assert referrals(literal) == ["2001:db8::1"]
    assert referrals(parse_tracking_body(EXAMPLE_7.replace(b"dns; example3.com", b"x400; c=us"))) == []
    with pytest.raises(ServerProtocolError, match="without a message/tracking-status part"):
        parse_tracking_body(EXAMPLE_7.split(b"--%%%%\r\n")[0] + b"--%%%%--\r\n")


def test_tracking_response_of_the_renderer_reads_back(postfix: MemoryStore) -> None:
    """Every field render.py writes comes back: folding, parts, groups."""
    records = client.auth.lookup(postfix, "s05.mixed-outcomes@client.example.test")
    body = tracking_response(records, postfix, reporting_mta=MTA).encode()
    (part,) = parse_tracking_body(body)
    assert part.reporting_mta == MTA and part.envid == "s05.mixed-outcomes@client.example.test"
    got = {r.original: (r.action, r.status[0] if r.status else None) for r in part.recipients}
    assert got == {
        "dave@mx1.example.test": ("delivered", "2"),
        "s05-later@relay.test": ("delayed", "4"),
        "s05-reject@relay.test": ("failed", "5"),
    }
    delayed = next(r for r in part.recipients if r.action == "delayed")
    assert delayed.will_retry_until and delayed.last_attempt and delayed.remote_mta == "[127.0.0.1]"
    with pytest.raises(ServerProtocolError, match="multipart/related"):
        parse_tracking_body(b"Content-Type: text/plain\r\n\r\nhello\r\n")


def test_utf8_addresses_are_unescaped() -> None:
    body = EXAMPLE_10.replace(b"rfc822; user4@example3.com", b"utf-8; j\\x{F6}rg@example3.com")
    assert parse_tracking_body(body)[1].recipients[0].final == "j\u00f6rg@example3.com"


# -- finding the server -----------------------------------------------------------


def test_srv_order_follows_rfc_2782() -> None:
    records = [
        (20, 0, 1038, "c.example."),
        (10, 60, 1038, "a.example."),
        (10, 40, 1039, "b.example."),
        (30, 0, 7, "d."),
    ]
    seen = set()
    for seed in range(40):
        order = order_srv(records, random.Random(seed))
        assert [t.host for t in order][2:] == ["c.example", "d"]  # priority first
        seen.add(order[0].host)
    assert seen == {"a.example", "b.example"}  # weighted, both drawn
    assert order_srv([(0, 0, 0, ".")]) == []  # "decidedly not available"


def test_resolve_without_dns() -> None:
    async def main() -> None:
        assert await client.resolve("mx1.example.test", 7) == [Target("mx1.example.test", 7)]
        assert await client.resolve("192.0.2.1", None) == [Target("192.0.2.1", 1038)]
        assert await client.resolve("::1", None) == [Target("::1", 1038)]
        assert await client.resolve("localhost", None) == [Target("localhost", 1038)]

    trio.run(main)


def test_resolve_uses_srv_then_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    answers: dict[str, list[client.SrvRecord] | None] = {
        "_mtqp._tcp.a.example.": [(0, 0, 11038, "track.a.example.")],
        "_mtqp._tcp.b.example.": None,
        "_mtqp._tcp.c.example.": [(0, 0, 0, ".")],
    }

    async def fake(name: str) -> list[client.SrvRecord] | None:
        asked.append(name)
        return answers[name]

    monkeypatch.setattr(client, "srv_lookup", fake)

    async def main() -> None:
        assert await client.resolve("a.example", None) == [Target("track.a.example", 11038)]
        assert await client.resolve("b.example.", None) == [Target("b.example.", 1038)]
        with pytest.raises(ClientError, match="no MTQP service"):
            await client.resolve("c.example", None)

    trio.run(main)
    assert asked == list(answers)


def test_srv_lookup_over_dns_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """dnspython on trio against a DNS server on loopback: an SRV answer,
    a name without one (NXDOMAIN), and a server that does not answer."""
    import dns.asyncresolver
    import dns.message
    import dns.rcode
    import dns.rrset

    async def dns_server(sock: trio.socket.SocketType) -> None:
        while True:
            data, peer = await sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            name = query.question[0].name.to_text()
            if name == "_mtqp._tcp.a.example.":
                reply.answer.append(
                    dns.rrset.from_text(name, 60, "IN", "SRV", "10 0 11038 track.a.example.", "5 0 1038 b.example.")
                )
            else:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            await sock.sendto(reply.to_wire(), peer)

    async def main() -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = sock.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dns_server, sock)
            records = await client.srv_lookup("_mtqp._tcp.a.example.", resolver)
            assert sorted(records or []) == [(5, 0, 1038, "b.example."), (10, 0, 11038, "track.a.example.")]
            assert order_srv(records or []) == [Target("b.example", 1038), Target("track.a.example", 11038)]
            assert await client.srv_lookup("_mtqp._tcp.none.example.", resolver) is None
            nursery.cancel_scope.cancel()
        silent = dns.asyncresolver.Resolver(configure=False)
        silent.nameservers = ["127.0.0.1"]
        silent.port = sock.getsockname()[1]  # closed now: no answer
        sock.close()
        monkeypatch.setattr(client, "SRV_TIMEOUT", 0.5)
        with trio.fail_after(5):
            assert await client.srv_lookup("_mtqp._tcp.a.example.", silent) is None

    trio.run(main)


def test_issue_picks_a_trackable_id_and_checks_the_secret() -> None:
    from datetime import UTC, datetime

    from ingest.records import Recipient, TrackingRecord

    at = datetime(2026, 3, 1, 12, tzinfo=UTC)

    def record(qid: str, **kw: object) -> TrackingRecord:
        rid = TrackingRecord.make_rid("mx1", qid, at)
        return TrackingRecord(rid, "mx1", qid, "postfix", at, recipients=[Recipient("r@example.org")], **kw)  # type: ignore[arg-type]

    store = MemoryStore()
    store.put(
        [
            record("A1", envid="env-a1", message_id="<m.a1@example.com>"),  # an ENVID without "@"
            record("B2", envid="env+b2@example.com", message_id="<m.b2@example.com>"),
            record("C3", message_id="<m.c3@example.com>", certifier="00" * 20),
        ]
    )
    a = client.issue(store, "env-a1", KEY, "mx1.example.test")
    assert (a.envid, a.keyed_on) == ("m.a1@example.com", "env-a1")  # tracked by Message-ID, keyed on the ENVID
    assert a.secret == client.auth.encode_secret(client.auth.keyed_secret(KEY, "env-a1"))
    assert a.uri == f"mtqp://mx1.example.test/track/m.a1@example.com/{a.secret.replace('/', '%2F')}"
    b = client.issue(store, "<m.b2@example.com>", KEY, "::1", 11038)
    assert (b.envid, b.keyed_on) == ("env+b2@example.com", "env+b2@example.com")
    assert b.uri.startswith("mtqp://[::1]:11038/track/env+2Bb2@example.com/")
    assert parse_uri(b.uri).secret == b.secret
    with pytest.raises(LookupError, match="its own MTRK certifier"):
        client.issue(store, "m.c3@example.com", KEY, "h")
    with pytest.raises(LookupError, match="nothing known of x@y"):
        client.issue(store, "x@y", KEY, "h")
    out = io.StringIO()
    assert client.secret_command(store, "env-a1", KEY, "h.example", None, out=out) == 0
    assert out.getvalue().splitlines()[:2] == ["envid:  m.a1@example.com", "keyed:  env-a1"]


# -- sessions over loopback ---------------------------------------------------------


@pytest.fixture(scope="module")
def postfix() -> MemoryStore:
    store = MemoryStore()
    replay([str(SAMPLES / "postfix" / "postfix.bsd.log")], store, settings=Settings(default_host="mx1"))
    return store


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def identity(ca: trustme.CA, name: str = MTA) -> Identity:
    context = net.tls_context()
    ca.issue_cert(name).configure_cert(context)
    return Identity((name,), context)


def trusting(ca: trustme.CA | None, *, require: bool = False) -> TLSPolicy:
    context = client.tls_context()
    if ca is not None:
        ca.configure_trust(context)
    return TLSPolicy(context, require=require)


async def serving(nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]] | net.Server) -> int:
    """Serve on a loopback port; returns the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    if isinstance(handler, net.Server):
        await nursery.start(handler.serve, listeners)
    else:
        await nursery.start(trio.serve_listeners, handler, listeners)
    return listeners[0].socket.getsockname()[1]


def run_with(
    server: net.Server | Callable[[trio.SocketStream], Awaitable[None]],
    test: Callable[[int], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await serving(nursery, server)
            with trio.fail_after(30):
                await test(port)
            nursery.cancel_scope.cancel()

    trio.run(main)


def secret_for(store: MemoryStore, ident: str) -> client.Issued:
    return client.issue(store, ident, KEY, "127.0.0.1")


def test_track_over_plain_tcp_and_noinfo(postfix: MemoryStore) -> None:
    server = net.Server(postfix, site_key=KEY, reporting_mta=MTA)
    issued = secret_for(postfix, "<s10.content-filter@client.example.test>")

    async def test(port: int) -> None:
        trace = await client.track("127.0.0.1", port, xtext_encode(issued.envid), issued.secret)
        assert trace.found and not trace.failures and not trace.skipped
        (answer,) = trace.answers
        assert answer.tls is None and answer.target == Target("127.0.0.1", port)
        assert [[r.action for r in p.recipients] for p in answer.parts] == [["transferred"], ["delivered"]]
        text = client.format_trace(trace)
        assert "frank@mx1.example.test: transferred, 2.0.0" in text and "(no TLS)" in text
        wrong = await client.track("127.0.0.1", port, xtext_encode(issued.envid), "AAAAAAAA")
        assert not wrong.found and wrong.answers[0].response.has("noinfo")
        assert "no tracking information: -ERR/noinfo" in client.format_trace(wrong)

    run_with(server, test)


def test_starttls_verifies_the_certificate(postfix: MemoryStore, ca: trustme.CA) -> None:
    server = net.Server(postfix, site_key=KEY, reporting_mta=MTA, identities=[identity(ca)])
    issued = secret_for(postfix, "s01.local-delivery@client.example.test")
    envid = xtext_encode(issued.envid)

    async def test(port: int) -> None:
        trace = await client.track(
            "127.0.0.1", port, envid, issued.secret, tls=trusting(ca, require=True), tls_name=MTA
        )
        assert trace.found and trace.answers[0].tls is not None
        assert trace.answers[0].tls.endswith(f"certificate verified for {MTA}")
        # Offered but not required, and not asked for: plain TCP.
        plain = await client.track("127.0.0.1", port, envid, issued.secret, tls=trusting(ca), tls_name=MTA)
        assert plain.found and plain.answers[0].tls is None
        with pytest.raises(ClientError, match="certificate verify failed"):
            await client.track("127.0.0.1", port, envid, issued.secret, tls=trusting(None, require=True), tls_name=MTA)
        with pytest.raises(ClientError, match="bad-fqdn"):
            await client.track(
                "127.0.0.1", port, envid, issued.secret, tls=trusting(ca, require=True), tls_name="other.example.test"
            )
        with pytest.raises(ClientError, match="--tls-name"):
            await client.track("127.0.0.1", port, envid, issued.secret, tls=trusting(ca, require=True))

    run_with(server, test)


def test_tls_when_the_server_requires_it(postfix: MemoryStore, ca: trustme.CA) -> None:
    server = net.Server(postfix, site_key=KEY, reporting_mta=MTA, identities=[identity(ca)], tls_required=True)
    issued = secret_for(postfix, "s01.local-delivery@client.example.test")

    async def test(port: int) -> None:
        trace = await client.track(
            "127.0.0.1", port, xtext_encode(issued.envid), issued.secret, tls=trusting(ca), tls_name=MTA
        )
        assert trace.found and trace.answers[0].tls is not None
        no_tls = await client.track("127.0.0.1", port, xtext_encode(issued.envid), issued.secret)
        assert no_tls.answers[0].response.has("tls-required")

    run_with(server, test)


def test_starttls_required_by_the_client_but_not_offered(postfix: MemoryStore, ca: trustme.CA) -> None:
    server = net.Server(postfix, site_key=KEY, reporting_mta=MTA)

    async def test(port: int) -> None:
        with pytest.raises(ClientError, match="does not offer STARTTLS"):
            await client.track("127.0.0.1", port, "a@b", "AAAA", tls=trusting(ca, require=True), tls_name=MTA)

    run_with(server, test)


# Small servers on the protocol core, for answers the real server never gives.


def scripted(
    bodies: dict[str, str], *, options: tuple[str, ...] = (), after_starttls: bytes = b"", stall: bool = False
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A server that answers TRACK for the envids in ``bodies`` with that
    body, any other with -ERR/noinfo; ``stall`` never answers TRACK."""

    async def handle(stream: trio.SocketStream) -> None:
        conn = Connection()
        await stream.send_all(conn.send_greeting(options))
        while True:
            event = conn.next_event()
            if isinstance(event, NeedData):
                data = await stream.receive_some(4096)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, Track):
                if stall:
                    await trio.sleep_forever()
                body = bodies.get(event.envid)
                out = conn.send_ok("here", body=body) if body else conn.send_error(Status.ERR, "noinfo")
            elif isinstance(event, StartTLS):
                # No TLS here: say yes (and perhaps more), then wait for the client to give up.
                await stream.send_all(conn.send_ok("go") + after_starttls)
                while await stream.receive_some(4096):
                    pass
                return
            elif isinstance(event, Quit):
                await stream.send_all(conn.send_ok())
                return
            else:
                out = getattr(event, "response", b"") or conn.send_ok()
            await stream.send_all(out)

    return handle


def transfer_body(reporting: str, *hops: tuple[str, str]) -> str:
    """One part of ``reporting``: per (recipient, next server) a recipient
    transferred there, or delivered when the next server is empty."""
    groups = []
    for rcpt, nxt in hops:
        lines = [f"Original-Recipient: rfc822; {rcpt}", f"Final-Recipient: rfc822; {rcpt}"]
        if nxt:
            lines += ["Action: transferred", "Status: 2.0.0", f"Remote-MTA: dns; {nxt}"]
        else:
            lines += ["Action: delivered", "Status: 2.0.0"]
        lines.append("Last-Attempt-Date: Sun, 1 Mar 2026 12:00:00 +0000")
        groups.append("\r\n".join(lines))
    part = "\r\n".join(
        [
            "Original-Envelope-Id: t@example.test",
            f"Reporting-MTA: dns; {reporting}",
            "Arrival-Date: Sun, 1 Mar 2026 12:00:00 +0000",
        ]
    )
    content = part + "\r\n\r\n" + "\r\n\r\n".join(groups) + "\r\n"
    return (
        'Content-Type: multipart/related; boundary="b"; type="message/tracking-status"\r\n\r\n'
        f"--b\r\nContent-Type: message/tracking-status\r\n\r\n{content}\r\n--b--\r\n"
    )


def run_servers(
    servers: dict[str, Callable[[trio.SocketStream], Awaitable[None]]],
    test: Callable[[client.Resolver], Awaitable[None]],
) -> None:
    """Start one loopback server per name; the resolver maps names to them."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ports = {name: await serving(nursery, handler) for name, handler in servers.items()}
            resolved: list[str] = []

            async def resolver(host: str, port: int | None) -> list[Target]:
                resolved.append(host)
                if host not in ports:
                    raise ClientError(f"no address for {host}")
                return [Target("127.0.0.1", ports[host])]

            with trio.fail_after(30):
                await test(resolver)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_referrals_are_followed_once_each_with_limits() -> None:
    body_a = transfer_body("a.example", ("u1@x", "b.example"), ("u2@x", "c.example"), ("u3@x", "b.example"))
    servers = {
        "a.example": scripted({"t@example.test": body_a}),
        "b.example": scripted({"t@example.test": transfer_body("b.example", ("u1@x", "a.example"), ("u3@x", ""))}),
        "c.example": scripted({"t@example.test": transfer_body("c.example", ("u2@x", "d.example"))}),
        # d.example is not reachable: a failure of the referral, not of the run.
    }

    async def test(resolver: client.Resolver) -> None:
        trace = await client.track("a.example", None, "t@example.test", "AAAA", resolver=resolver)
        assert trace.found
        assert [(a.server, a.depth) for a in trace.answers] == [("a.example", 0), ("b.example", 1), ("c.example", 1)]
        assert [(f.server, f.depth) for f in trace.failures] == [("d.example", 2)]
        text = client.format_trace(trace)
        assert "referral: b.example at 127.0.0.1:" in text and "referral: d.example: not answered" in text
        # Depth limit: c.example's referral to d.example is one too deep.
        shallow = await client.track("a.example", None, "t@example.test", "AAAA", resolver=resolver, max_depth=1)
        assert shallow.skipped == [("d.example", "more than 1 referrals deep")] and not shallow.failures
        # Server limit; and no referrals at all.
        few = await client.track("a.example", None, "t@example.test", "AAAA", resolver=resolver, max_servers=2)
        assert [a.server for a in few.answers] == ["a.example", "b.example"]
        assert ("c.example", "more than 2 servers") in few.skipped
        alone = await client.track("a.example", None, "t@example.test", "AAAA", resolver=resolver, follow=False)
        assert len(alone.answers) == 1

    run_servers(servers, test)


def test_a_referral_back_to_the_same_server_under_another_name() -> None:
    body = transfer_body("a.example", ("u1@x", "alias.example"))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await serving(nursery, scripted({"t@example.test": body}))

            async def resolver(host: str, _: int | None) -> list[Target]:
                return [Target("127.0.0.1", port)]

            trace = await client.track("a.example", None, "t@example.test", "AAAA", resolver=resolver)
            assert len(trace.answers) == 1 and trace.skipped[0][0] == "alias.example"
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_overall_time_bound() -> None:
    body = transfer_body("a.example", ("u1@x", "slow.example"))
    servers = {"a.example": scripted({"t@example.test": body}), "slow.example": scripted({}, stall=True)}

    async def test(resolver: client.Resolver) -> None:
        trace = await client.track("a.example", None, "t@example.test", "AAAA", resolver=resolver, timeout=1)
        assert trace.found and trace.timed_out and len(trace.answers) == 1
        with pytest.raises(ClientError, match=r"no answer from slow\.example within 0\.5 seconds"):
            await client.track("slow.example", None, "t@example.test", "AAAA", resolver=resolver, timeout=0.5)

    run_servers(servers, test)


def test_bytes_after_starttls_ok_are_an_attack(ca: trustme.CA) -> None:
    handler = scripted({}, options=("STARTTLS",), after_starttls=b"+OK/MTQP injected\r\n")

    async def test(port: int) -> None:
        with pytest.raises(ServerProtocolError, match="after accepting STARTTLS"):
            await client.track("127.0.0.1", port, "a@b", "AAAA", tls=trusting(ca, require=True), tls_name=MTA)

    run_with(handler, test)


def test_a_server_that_is_not_mtqp() -> None:
    async def http(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    async def refusing(stream: trio.SocketStream) -> None:
        await stream.send_all(Connection().send_refusal(Status.TEMP, "admin", "Service down for admin"))

    async def test_http(port: int) -> None:
        with pytest.raises(ServerProtocolError, match="not an MTQP status line"):
            await client.track("127.0.0.1", port, "a@b", "AAAA")

    async def test_refusal(port: int) -> None:
        with pytest.raises(ClientError, match="refuses service: -TEMP/mtqp/admin"):
            await client.track("127.0.0.1", port, "a@b", "AAAA")

    run_with(http, test_http)
    run_with(refusing, test_refusal)


def test_track_command_arguments() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert client.track_command(["a@b"], out=out, err=err) == 2 and "mtqp://" in err.getvalue()
    assert client.track_command(["x@y"], server="h:1", out=out, err=err) == 2
    assert client.track_command(["nobracket", "AAAA"], server="h:1", out=out, err=err) == 2
    assert "unique-envid" in err.getvalue()
    err = io.StringIO()
    code = client.track_command(["mtqp://127.0.0.1:9/track/a@b/AAAA"], tls_name="localhost", out=out, err=err)
    assert code == 2 and "--tls-name" in err.getvalue()


# -- END-TO-END: subprocesses, as an operator and a sender run them -----------------


def mtqpd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def printed_actions(text: str) -> dict[str, list[str]]:
    """From ``mtqpd track``'s output: original recipient -> the action of
    each part (record) that names it, in order."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"^    (\S+?)(?: -> \S+)?: (\w+), ", text, re.MULTILINE):
        out.setdefault(m[1], []).append(m[2])
    return out


def test_end_to_end_serve_secret_track_over_starttls(tmp_path: Path, ca: trustme.CA) -> None:
    """END-TO-END. Replay the Postfix sample into a store, run ``mtqpd
    serve`` with a trustme certificate, and for a set of messages get the
    URI from ``mtqpd secret`` and track it with ``mtqpd track --starttls
    --ca``: the actions printed per recipient are the ``path`` of
    samples/postfix/expected.json."""
    store = tmp_path / "store"
    assert mtqpd("replay", "--store", str(store), str(SAMPLES / "postfix" / "postfix.bsd.log")).returncode == 0
    cert = ca.issue_cert(MTA)
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    serve = subprocess.Popen(
        [
            *(sys.executable, "-m", "server.cli", "serve", "--store", str(store), "--listen", "127.0.0.1:0"),
            *("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")),
            *("--reporting-mta", MTA),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert serve.stderr is not None
        port = None
        for line in serve.stderr:
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = m[1]
                break
        assert port, "mtqpd serve did not start"
        expected = json.loads((SAMPLES / "postfix" / "expected.json").read_text())["messages"]
        chosen = [m for m in expected if m["scenario"] in (1, 4, 5, 6, 10, 11) and "/" not in m["name"]]
        assert len(chosen) == 7  # scenario 6 has two messages
        for message in chosen:
            secret = mtqpd("secret", "--store", str(store), "--server", f"127.0.0.1:{port}", message["message_id"])
            assert secret.returncode == 0, secret.stderr
            uri = re.search(r"^uri:\s+(\S+)$", secret.stdout, re.MULTILINE)
            assert uri, secret.stdout
            track = mtqpd("track", uri[1], "--starttls", "--ca", str(tmp_path / "ca.pem"), "--tls-name", MTA)
            assert track.returncode == 0, track.stderr
            assert f"certificate verified for {MTA}" in track.stdout
            want = {r["original"]: r["path"] for r in message["recipients"]}
            assert printed_actions(track.stdout) == want, (message["name"], track.stdout)
        raw = mtqpd("track", uri[1], "--raw")  # the last message's, without TLS
        assert raw.returncode == 0 and raw.stdout.startswith("Content-Type: multipart/related;")
        assert raw.stdout.count("Content-Type: message/tracking-status") == 2
        # A wrong secret: the server's -ERR/noinfo, exit status 1.
        wrong = mtqpd("track", "--server", f"127.0.0.1:{port}", "--starttls", "--ca", str(tmp_path / "ca.pem"))
        assert wrong.returncode == 2  # ENVID and SECRET missing
        wrong = mtqpd(
            "track", "--server", f"127.0.0.1:{port}", "s01.local-delivery@client.example.test", "AAAA", "--no-referrals"
        )
        assert wrong.returncode == 1 and "-ERR/noinfo" in wrong.stdout
        unknown = mtqpd("secret", "--store", str(store), "<nobody@nowhere.test>")
        assert unknown.returncode == 1 and "nothing known of <nobody@nowhere.test>" in unknown.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
