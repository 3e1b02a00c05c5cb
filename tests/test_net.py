"""The trio MTQP shell over real sockets: TCP on loopback, real TLS with
certificates made here (trustme), a store replayed from the Postfix sample.

Each test runs the server and its clients in one trio run; the clients are
deliberately raw (bytes on a socket) so that they can misbehave. No test may
leave an ERROR in the server's log: client input is never a server error.
"""

from __future__ import annotations

import base64
import email
import ipaddress
import logging
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trustme

from ingest.correlator import Settings
from ingest.replay import replay
from ingest.store.tiny import TinyStore
from server import serve
from server.auth import encode_secret, keyed_secret
from server.net import IDLE_SLACK, Identity, Limits, Server

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SITE_KEY = bytes(range(32))
REPORTING_MTA = "mx1.example.test"
#: The sample message that went through a content filter: two records, two parts.
ENVID = "s10.content-filter@client.example.test"
SECRET = encode_secret(keyed_secret(SITE_KEY, ENVID))
GREETING = b"+OK/MTQP MTQP server ready\r\n"
NOINFO = b"-ERR/noinfo No tracking information\r\n"
HOSTS_ONE = ("mtqp.one.test",)
HOSTS_TWO = ("mtqp.two.test", "*.virtual.two.test")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStore]:
    """The Postfix sample replayed into a store on disk, opened read-only
    as ``mtqpd serve`` opens it."""
    path = tmp_path_factory.mktemp("store")
    writer = TinyStore(path)
    replay([str(SAMPLES / "postfix" / "postfix.bsd.log")], writer, settings=Settings(default_host="mx1"))
    writer.close()
    reader = TinyStore(path, readonly=True)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def identities(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> list[Identity]:
    """Two certificates for two virtual hosts, loaded from PEM files the way
    ``mtqpd serve --tls-cert --tls-key`` loads them."""
    out = []
    for i, names in enumerate((HOSTS_ONE, HOSTS_TWO)):
        cert = ca.issue_cert(*names)
        d = tmp_path_factory.mktemp(f"cert{i}")
        cert.cert_chain_pems[0].write_to_path(d / "cert.pem")
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(d / "cert.pem", append=True)
        cert.private_key_pem.write_to_path(d / "key.pem")
        out.append(serve.load_identity(str(d / "cert.pem"), str(d / "key.pem")))
    return out


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, logger="server")
    yield
    errors = [r for r in caplog.records if r.name.startswith("server") and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def make_server(store: TinyStore, **kwargs: object) -> Server:
    kwargs.setdefault("site_key", SITE_KEY)
    kwargs.setdefault("reporting_mta", REPORTING_MTA)
    return Server(store, **kwargs)  # type: ignore[arg-type]


def serving(server: Server, client: Callable[[int], Awaitable[None]], *, within: float = 30) -> None:
    """Run ``client(port)`` against ``server`` on a loopback port, then shut
    the server down by cancellation, as SIGTERM does."""

    async def main() -> None:
        listeners = await server.listen([("127.0.0.1", 0)])
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            with trio.fail_after(within):
                await client(port)
            nursery.cancel_scope.cancel()

    trio.run(main)


class Client:
    """A raw MTQP client: bytes out, lines and responses in."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, port: int, *, greet: bool = True) -> Client:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        if greet:
            assert await client.response() == (GREETING, None)
        return client

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes:
        """One line with its CRLF; b"" at the end of the stream."""
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                rest, self.buffer = bytes(self.buffer), bytearray()
                return rest
            self.buffer += data
        end = self.buffer.index(b"\n") + 1
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    async def response(self) -> tuple[bytes, bytes | None]:
        """A status line and, after ``+OK+``, the body: dot-stuffing undone,
        the final "." removed."""
        status = await self.line()
        if not status.startswith(b"+OK+"):
            return status, None
        body = bytearray()
        while (line := await self.line()) != b".\r\n":
            assert line, "the stream ended inside a multi-line response"
            body += line[1:] if line.startswith(b".") else line
        return status, bytes(body)

    async def eof(self) -> bool:
        """Whether the server closes without saying more."""
        try:
            return await self.line() == b""
        except trio.BrokenResourceError:  # a reset is a close too
            return True

    async def starttls(self, context: ssl.SSLContext, hostname: str) -> None:
        assert not self.buffer, "bytes after +OK to STARTTLS belong to TLS"
        tls = trio.SSLStream(self.stream, context, server_hostname=hostname)
        await tls.do_handshake()
        self.stream = tls

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def track(envid: str = ENVID, secret: str = SECRET) -> bytes:
    return f"TRACK <{envid}> {secret}\r\n".encode()


def check_tracking(status: bytes, body: bytes | None) -> None:
    """The answer for ENVID: a multipart/related of two tracking-status
    parts, the hop through the content filter, then the delivery."""
    assert status == b"+OK+ Tracking information follows\r\n"
    assert body is not None
    message = email.message_from_bytes(body)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "message/tracking-status"
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["message/tracking-status"] * 2
    actions = []
    for part in parts:
        (fields,) = part.get_payload()
        assert fields["Original-Envelope-Id"] == ENVID
        assert fields["Reporting-MTA"] == f"dns; {REPORTING_MTA}"
        recipient = email.message_from_string(fields.get_payload())
        assert recipient["Final-Recipient"] == "rfc822; frank@mx1.example.test"
        actions.append(recipient["Action"])
    assert actions == ["transferred", "delivered"]


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# -- greeting, TRACK, COMMENT, QUIT ----------------------------------------------------------


def test_greeting_without_tls_lists_no_option(store: TinyStore) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port, greet=False)
        assert await c.response() == (GREETING, None)
        await c.send(b"STARTTLS mtqp.one.test\r\n")
        assert (await c.line()).startswith(b"-BAD/unsupported")

    serving(make_server(store), client)


@pytest.mark.parametrize(("required", "option"), [(False, b"STARTTLS"), (True, b"STARTTLS required")])
def test_greeting_lists_starttls_when_a_certificate_is_installed(
    store: TinyStore, identities: list[Identity], required: bool, option: bytes
) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port, greet=False)
        assert await c.response() == (b"+OK+/MTQP MTQP server ready\r\n", option + b"\r\n")

    serving(make_server(store, identities=identities, tls_required=required), client)


def test_track_with_the_keyed_secret_answers_the_tracking_status(store: TinyStore) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port)
        await c.send(track())
        check_tracking(*await c.response())
        # No angle brackets, xtext, padded base64: all the same envelope and secret.
        padded = base64.b64encode(keyed_secret(SITE_KEY, ENVID)).decode()
        await c.send(f"TRACK {ENVID.replace('s10.', 's10+2E')} {padded}\r\n".encode())
        check_tracking(*await c.response())
        await c.send(b"COMMENT thanks\r\nQUIT\r\n")
        assert await c.line() == b"+OK\r\n"
        assert await c.line() == b"+OK Goodbye\r\n"
        assert await c.eof()

    serving(make_server(store), client)


def test_wrong_secret_and_unknown_envelope_get_the_same_answer(store: TinyStore) -> None:
    wrong = encode_secret(keyed_secret(b"another site's key", ENVID))
    unknown = "nobody-knows-this@client.example.test"

    async def client(port: int) -> None:
        c = await Client.connect(port)
        answers = []
        for command in (track(ENVID, wrong), track(unknown, SECRET), track(unknown, wrong)):
            await c.send(command)
            answers.append(await c.response())
        assert answers == [(NOINFO, None)] * 3

    serving(make_server(store), client)


def test_trusted_network_tracks_without_the_secret(store: TinyStore) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port)
        await c.send(track(ENVID, encode_secret(b"not the secret")))
        check_tracking(*await c.response())

    serving(make_server(store, trusted=[ipaddress.ip_network("127.0.0.0/8")]), client)


def test_pipelined_commands_are_answered_in_order(store: TinyStore) -> None:
    commands = [
        track(),
        b"COMMENT one\r\n",
        track(ENVID, encode_secret(b"wrong")),
        b"NOOP\r\n",
        track(),
        b"COMMENT\r\n",
        b"TRACK missing-secret@example.test\r\n",
        track("unknown@example.test"),
        b"comment lower case\r\n",
        track(),
        b"COMMENT last\r\n",
        b"QUIT\r\n",
    ]

    async def client(port: int) -> None:
        c = await Client.connect(port)
        await c.send(b"".join(commands))
        answers = [await c.response() for _ in commands]
        assert await c.eof()
        for i in (0, 4, 9):
            check_tracking(*answers[i])
        assert [answers[i][0] for i in (1, 5, 8, 10)] == [b"+OK\r\n"] * 4
        assert answers[2] == answers[7] == (NOINFO, None)
        assert answers[3][0] == b"-BAD Unknown command\r\n"
        assert answers[6][0] == b"-BAD Syntax: TRACK unique-envid mtrk-secret\r\n"
        assert answers[11][0] == b"+OK Goodbye\r\n"

    serving(make_server(store), client)


def test_a_command_split_across_many_segments(store: TinyStore) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port)
        stream = c.stream
        assert isinstance(stream, trio.SocketStream)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in track():
            await c.send(bytes([byte]))
            await trio.sleep(0.001)
        check_tracking(*await c.response())

    serving(make_server(store), client)


def test_an_overlong_line_is_one_bad_answer_and_the_session_goes_on(store: TinyStore) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port)
        await c.send(b"TRACK " + b"x" * 100_000 + b"@example.test " + SECRET.encode() + b"\r\n")
        assert await c.line() == b"-BAD Line too long (limit 998 octets)\r\n"
        await c.send(track())
        check_tracking(*await c.response())

    serving(make_server(store), client)


def test_paused_service(store: TinyStore) -> None:
    server = make_server(store)

    async def client(port: int) -> None:
        open_before = await Client.connect(port)
        server.paused = True
        c = await Client.connect(port, greet=False)
        assert await c.line() == b"-TEMP/MTQP/admin Service paused by the administrator\r\n"
        assert await c.eof()
        await open_before.send(track())
        assert await open_before.line() == b"-TEMP/admin Service paused by the administrator\r\n"
        server.paused = False
        await open_before.send(track())
        check_tracking(*await open_before.response())

    serving(server, client)


# -- STARTTLS ------------------------------------------------------------------------------------


def test_starttls_presents_the_certificate_of_the_fqdn_and_resets_the_session(
    store: TinyStore, identities: list[Identity], ca: trustme.CA
) -> None:
    async def session(port: int, fqdn: str, names: tuple[str, ...]) -> None:
        c = await Client.connect(port, greet=False)
        assert (await c.response())[1] == b"STARTTLS\r\n"
        await c.send(f"STARTTLS {fqdn}\r\n".encode())
        assert await c.line() == b"+OK Begin TLS negotiation\r\n"
        # The client checks the certificate against the name it asked for.
        await c.starttls(client_context(ca), fqdn)
        assert isinstance(c.stream, trio.SSLStream)
        cert = c.stream.getpeercert()
        assert tuple(v for k, v in cert["subjectAltName"] if k == "DNS") == names
        assert c.stream.version() in ("TLSv1.2", "TLSv1.3")
        # Section 6.2: a new greeting, and this time without STARTTLS.
        assert await c.response() == (GREETING, None)
        await c.send(f"STARTTLS {fqdn}\r\n".encode())
        assert await c.line() == b"-BAD/tls-in-progress TLS is already active\r\n"
        await c.send(track())
        check_tracking(*await c.response())
        await c.send(b"QUIT\r\n")
        assert await c.line() == b"+OK Goodbye\r\n"
        assert await c.eof()

    async def client(port: int) -> None:
        await session(port, "mtqp.one.test", HOSTS_ONE)
        await session(port, "MTQP.two.test", HOSTS_TWO)
        await session(port, "helpdesk.virtual.two.test", HOSTS_TWO)

    serving(make_server(store, identities=identities), client)


def test_starttls_for_a_name_without_certificate_is_bad_fqdn(store: TinyStore, identities: list[Identity]) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port, greet=False)
        await c.response()
        for fqdn in (b"mtqp.three.test", b"a.b.virtual.two.test", b"virtual.two.test"):
            await c.send(b"STARTTLS " + fqdn + b"\r\n")
            assert await c.line() == b"-BAD/bad-fqdn No certificate for that name\r\n"
        await c.send(b"COMMENT still here\r\n")
        assert await c.line() == b"+OK\r\n"

    serving(make_server(store, identities=identities), client)


def test_tls_required_refuses_track_in_the_clear(store: TinyStore, identities: list[Identity], ca: trustme.CA) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port, greet=False)
        assert (await c.response())[1] == b"STARTTLS required\r\n"
        await c.send(track())
        assert await c.response() == (b"-ERR/tls-required STARTTLS first\r\n", None)
        await c.send(b"STARTTLS mtqp.one.test\r\n")
        assert await c.line() == b"+OK Begin TLS negotiation\r\n"
        await c.starttls(client_context(ca), "mtqp.one.test")
        assert await c.response() == (GREETING, None)
        await c.send(track())
        check_tracking(*await c.response())

    serving(make_server(store, identities=identities, tls_required=True), client)


def test_tls_below_1_2_is_refused(
    store: TinyStore, identities: list[Identity], caplog: pytest.LogCaptureFixture
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")

    async def client(port: int) -> None:
        c = await Client.connect(port, greet=False)
        await c.response()
        await c.send(b"STARTTLS mtqp.one.test\r\n")
        assert await c.line() == b"+OK Begin TLS negotiation\r\n"
        with pytest.raises(trio.BrokenResourceError):
            await c.starttls(old, "mtqp.one.test")
        assert "TLS handshake failed: [SSL: UNSUPPORTED_PROTOCOL]" in caplog.text
        # The server is none the worse for it.
        await (await Client.connect(port, greet=False)).response()

    serving(make_server(store, identities=identities), client)


def test_a_client_that_never_handshakes_is_closed(store: TinyStore, identities: list[Identity]) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port, greet=False)
        await c.response()
        await c.send(b"STARTTLS mtqp.one.test\r\n")
        assert await c.line() == b"+OK Begin TLS negotiation\r\n"
        with trio.fail_after(5):
            assert await c.eof()

    serving(make_server(store, identities=identities, limits=Limits(handshake_timeout=0.5)), client)


# -- limits and hostile clients ----------------------------------------------------------------------


def test_a_client_trickling_a_byte_a_second_is_timed_out_while_others_are_served(store: TinyStore) -> None:
    timeout = 2.0

    async def trickle(port: int, closed: list[float]) -> None:
        c = await Client.connect(port)
        start = trio.current_time()
        try:
            for byte in track():
                await c.send(bytes([byte]))
                await trio.sleep(1)
        except trio.BrokenResourceError:
            pass
        assert await c.eof()
        closed.append(trio.current_time() - start)

    async def client(port: int) -> None:
        closed: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle, port, closed)
            for _ in range(3):
                await trio.sleep(0.5)
                c = await Client.connect(port)
                await c.send(track())
                check_tracking(*await c.response())
                await c.aclose()
        (after,) = closed
        assert timeout <= after < timeout + 2  # the line was nowhere near complete

    serving(make_server(store, limits=Limits(timeout=timeout)), client)


def test_commands_reset_the_inactivity_timer(store: TinyStore) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port)
        for _ in range(4):
            await trio.sleep(0.5)
            await c.send(b"COMMENT still here\r\n")
            assert await c.line() == b"+OK\r\n"
        assert await c.eof()  # then nothing for a second

    serving(make_server(store, limits=Limits(timeout=1.0)), client)


def test_the_inactivity_timer_runs_the_whole_timeout_from_the_last_command(store: TinyStore) -> None:
    """The deadline is moved lazily (net.IDLE_SLACK): never to less than the
    timeout after a command, and not much more."""
    timeout = 1.0

    async def client(port: int) -> None:
        c = await Client.connect(port)
        for _ in range(3):
            await c.send(b"COMMENT\r\n")
            assert await c.line() == b"+OK\r\n"
            await trio.sleep(0.9 * timeout)
        await c.send(b"COMMENT\r\n")
        assert await c.line() == b"+OK\r\n"
        last = trio.current_time()
        assert await c.eof()
        assert timeout <= trio.current_time() - last < timeout * (1 + IDLE_SLACK) + 0.5

    serving(make_server(store, limits=Limits(timeout=timeout)), client)


def test_many_clients_at_once_each_get_their_own_answers_in_order(store: TinyStore) -> None:
    """Answers are written a scheduler pass late, many connections' together
    (net._Session._send_batched): none may go to the wrong client, out of
    order, or be lost."""

    async def one(port: int, n: int) -> None:
        c = await Client.connect(port)
        for i in range(10):
            await c.send(track() + f"COMMENT {n} {i}\r\n".encode() + track(secret="AAAA" * 11))
            check_tracking(*await c.response())
            assert await c.line() == b"+OK\r\n"
            assert await c.response() == (NOINFO, None)
        await c.send(b"QUIT\r\n")
        assert await c.line() == b"+OK Goodbye\r\n"
        assert await c.eof()

    async def client(port: int) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(one, port, n)

    serving(make_server(store), client)


def test_a_slow_reader_gets_every_answer_of_a_long_pipeline_whole(store: TinyStore) -> None:
    """Answers far beyond the socket buffers go out in partial writes, each
    resumed where the last one stopped."""

    async def client(port: int) -> None:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        c = Client(trio.SocketStream(sock))
        assert await c.response() == (GREETING, None)
        await c.send(track() * 150 + b"QUIT\r\n")
        for _ in range(150):
            await trio.sleep(0.001)
            check_tracking(*await c.response())
        assert await c.line() == b"+OK Goodbye\r\n"
        assert await c.eof()

    serving(make_server(store), client)


def test_a_client_that_does_not_read_its_answers_is_timed_out(store: TinyStore) -> None:
    async def client(port: int) -> None:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        # Each answer is about 1.3 kB: the server blocks writing long before
        # it has answered them all, and never reads the rest.
        with trio.move_on_after(8), pytest.raises(trio.BrokenResourceError):
            while True:
                await stream.send_all(track() * 100)
        assert server.active == 0
        await stream.aclose()

    server = make_server(store, limits=Limits(timeout=1.0))
    serving(server, client)


def test_connection_cap_greets_the_excess_with_temp_unavailable(store: TinyStore) -> None:
    server = make_server(store, limits=Limits(max_connections=2))

    async def client(port: int) -> None:
        first = await Client.connect(port)
        second = await Client.connect(port)
        excess = await Client.connect(port, greet=False)
        assert await excess.line() == b"-TEMP/MTQP/unavailable Too many connections\r\n"
        assert await excess.eof()
        await first.send(b"QUIT\r\n")
        assert await first.line() == b"+OK Goodbye\r\n"
        assert await first.eof()
        while server.active > 1:
            await trio.sleep(0.01)
        again = await Client.connect(port)
        await again.send(track())
        check_tracking(*await again.response())
        await second.aclose()

    serving(server, client)


def test_command_cap(store: TinyStore) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port)
        await c.send(b"COMMENT\r\n" * 3 + track() + b"COMMENT never answered\r\n")
        assert [await c.line() for _ in range(3)] == [b"+OK\r\n"] * 3
        assert await c.line() == b"-TEMP Too many commands on one connection, reconnect\r\n"
        assert await c.eof()

    serving(make_server(store, limits=Limits(max_commands=3)), client)


def test_bad_command_cap(store: TinyStore) -> None:
    async def client(port: int) -> None:
        c = await Client.connect(port)
        await c.send(b"COMMENT\r\n" + b"HELO\r\n" * 5)
        assert await c.line() == b"+OK\r\n"
        assert [await c.line() for _ in range(3)] == [b"-BAD Unknown command\r\n"] * 3
        assert await c.eof()

    serving(make_server(store, limits=Limits(max_bad_commands=3)), client)


def test_hostile_garbage_is_answered_or_closed_never_a_crash(store: TinyStore) -> None:
    rng = random.Random(3887)
    pieces = [
        b"\x00" * 3000,
        b"\r\r\r\n",
        b"TRACK <\xff\xfe@x.y> AAAA\r\n",
        b"STARTTLS " + b"a." * 600 + b"b\r\n",
        b"TRACK a@b.c !!!!\r\n",
        b"\n" * 50,
        bytes(rng.randrange(256) for _ in range(20_000)),
    ]

    async def attacker(port: int, data: bytes) -> None:
        c = await Client.connect(port)
        try:
            for i in range(0, len(data), 1500):
                await c.send(data[i : i + 1500])
            while await c.line():
                pass
        except trio.BrokenResourceError:
            pass  # closed by the bad-command cap while still sending

    async def client(port: int) -> None:
        async with trio.open_nursery() as nursery:
            for piece in pieces:
                nursery.start_soon(attacker, port, piece)
            nursery.start_soon(attacker, port, b"".join(pieces))
        c = await Client.connect(port)
        await c.send(track())
        check_tracking(*await c.response())

    # A torn last line waits for its end until the inactivity timer ends it.
    serving(make_server(store, limits=Limits(timeout=1.0)), client)


def test_a_thousand_idle_connections_while_a_client_is_served(store: TinyStore) -> None:
    idle = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * idle + 200  # both ends of every connection live in this process
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    server = make_server(store, limits=Limits(max_connections=idle + 10))

    async def client(port: int) -> None:
        held = []
        for _ in range(idle):
            held.append(await trio.open_tcp_stream("127.0.0.1", port))
        while server.active < idle:
            await trio.sleep(0.01)
        c = await Client.connect(port)
        await c.send(track())
        check_tracking(*await c.response())
        assert server.active == idle + 1
        for stream in held:
            await stream.aclose()

    try:
        serving(server, client, within=60)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- mtqpd serve -----------------------------------------------------------------------------------------


def mtqpd_serve(store_path: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    """``mtqpd serve`` on a free loopback port, and that port, read from
    the line it logs once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--store", str(store_path), "--listen", "127.0.0.1:0", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on 127.0.0.1:" in line:
            return proc, int(line.rsplit(":", 1)[1])
    proc.wait(10)
    raise AssertionError(f"mtqpd serve did not start (exit {proc.returncode})")


def test_mtqpd_serve_answers_and_shuts_down_cleanly_on_sigterm(store: TinyStore, tmp_path: Path) -> None:
    key_file = tmp_path / "site.key"
    key_file.write_bytes(SITE_KEY)
    proc, port = mtqpd_serve(store.path, "--site-key-file", str(key_file), "--reporting-mta", REPORTING_MTA)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            f = held.makefile("rb")
            assert f.readline() == GREETING
            held.sendall(track())
            assert f.readline() == b"+OK+ Tracking information follows\r\n"
            while f.readline() != b".\r\n":
                pass
            # SIGTERM while a connection is open: it is closed, the server exits 0.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert f.read() == b""
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "SIGTERM: shutting down" in err
    assert "Traceback" not in err


def test_mtqpd_serve_makes_the_site_key_and_pauses_on_sigusr1(store: TinyStore, tmp_path: Path) -> None:
    key_file = tmp_path / "new.key"
    proc, port = mtqpd_serve(store.path, "--site-key-file", str(key_file))
    try:
        assert len(key_file.read_bytes()) == serve.SITE_KEY_BYTES
        assert key_file.stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGUSR1)
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                if s.makefile("rb").readline().startswith(b"-TEMP/MTQP/admin"):
                    break
        else:
            raise AssertionError("SIGUSR1 did not pause the service")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--tls-required"], 1, "--tls-required needs a certificate"),
        (["--tls-cert", "a.pem"], 2, "one --tls-key for each --tls-cert"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], 1, "cannot use the certificate"),
        (["--timeout", "60"], 2, "at least 600 seconds"),
        (["--listen", "::1:1038"], 2, "an IPv6 address goes in brackets"),
        (["--listen", "192.0.2.1:1038"], 1, "cannot listen"),
    ],
)
def test_mtqpd_serve_configuration_errors(store: TinyStore, args: list[str], status: int, message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--store", str(store.path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == status and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


# -- the wiring's pieces --------------------------------------------------------------------------------


def test_site_key_is_made_once_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "site.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(serve.load_site_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["site.key"]  # no temporary file left behind
    path.write_bytes(b"short")
    with pytest.raises(serve.ConfigError, match="at least 16"):
        serve.load_site_key(path)


def test_certificate_names_are_the_subject_alt_names(ca: trustme.CA) -> None:
    cert = ca.issue_cert("Mixed.Case.test", "*.wild.test", "192.0.2.7")
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    assert serve.certificate_names(der) == ("mixed.case.test", "*.wild.test")
    with pytest.raises(ValueError, match="not a certificate"):
        serve.certificate_names(der[:100])


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:1038", ("127.0.0.1", 1038)),
        ("[::1]:10380", ("::1", 10380)),
        ("*:1038", (None, 1038)),
        ("1038", (None, 1038)),
        ("mtqp.example.test:0", ("mtqp.example.test", 0)),
    ],
)
def test_parse_listen(text: str, address: tuple[str | None, int]) -> None:
    assert serve.parse_listen(text) == address


@pytest.mark.parametrize("text", ["::1:1038", "host:port", "host:70000", ""])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        serve.parse_listen(text)
