"""The trio network shell of the MTQP server (RFC 3887).

``server.protocol.Connection`` decides every byte of the protocol; this
module owns what it leaves out: sockets, TLS (``trio.SSLStream``), clocks,
limits and cancellation, and the one place where a command meets the store
(``auth.lookup``, ``auth.authorise``, ``render.tracking_response``). Each
connection is one task under ``trio.serve_listeners``'s nursery, with one
cancel scope for its inactivity timer; shutting the server down is
cancelling the nursery it runs in.

What a slow or hostile client can cost, and why each limit is where it is:

* The inactivity timer (RFC 2.5: at least 10 minutes, reset by "the
  receipt of any command") is a deadline that only a complete command line
  moves (lazily, see ``IDLE_SLACK``). Bytes alone do not: a client that
  trickles a byte a second never completes a line and is closed when the
  deadline passes, and so is one that stops reading our answers (the write
  blocks under the same scope).
  The 10-minute floor is the command line's to enforce; tests go below it.
* Concurrent connections are capped. RFC section 3 gives the server a
  negative greeting for this, so an excess connection is accepted, told
  ``-TEMP/MTQP/unavailable`` (come back later) and closed, rather than
  left waiting unanswered in the listen backlog.
* Commands and bad commands per connection are capped (RFC 2.5 allows
  both). The command after the allowance is not run: it is answered
  ``-TEMP`` (``+OK`` if it is QUIT or COMMENT, which must succeed) and the
  connection closes; the bad command that reaches its cap gets its own
  ``-BAD``, then the connection closes.
* The TLS handshake has its own, shorter deadline, and TLS below 1.2 is
  refused (RFC 8996).
* Input is read in bounded chunks and the core never buffers more than one
  line, so memory per connection does not depend on what the client sends;
  answers to a pipelined group are written together, but never more than
  ``SEND_CHUNK`` octets are held before a write.

Plain TCP is read and written on the socket's descriptor (``_PlainIO``)
rather than through ``trio.SocketStream``: a TRACK costs the shell one
wait for input and two system calls, without the stream's per-call
wrappers and the failed read that precedes every wait. Every read still
waits first, so the loop checkpoints (and can be cancelled, and lets
other connections run) once per read whatever the client does. After
STARTTLS the session reads and writes the ``trio.SSLStream`` instead.
Answers wait one scheduler pass before they are written, so that the
answers of many connections go out together (``_send_batched``).

Nothing a client sends raises out of a connection's task: a broken or
reset connection, a failed handshake or a timeout is logged and closed. An
exception from anything else is a bug of this server; it is logged with its
traceback and ends that connection only, never the listener.

A wrong secret and an unknown envelope take the same path here: one
``lookup``, one ``authorise`` (which does equal work for both), one
``-ERR/noinfo``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from ingest.store import Store

from .auth import Address, Network, authorise, lookup
from .protocol import (
    BadCommand,
    Comment,
    Connection,
    ConnectionClosed,
    NeedData,
    Quit,
    StartTLS,
    State,
    Status,
    Track,
)
from .render import tracking_response

log = logging.getLogger(__name__)

#: RFC 3887 section 10.
MTQP_PORT = 1038
#: Every address of this host, IPv4 and IPv6 where available (trio's host=None).
DEFAULT_ADDRESSES: tuple[tuple[str | None, int], ...] = ((None, MTQP_PORT),)
#: Octets asked of one read: a few dozen pipelined commands.
RECEIVE_SIZE = 16384
#: Answers held before a write, when a pipelined group asks for a lot.
SEND_CHUNK = 65536
#: How long an orderly close waits for the client to take the last answer.
LINGER = 2.0
#: The inactivity deadline is moved at most once per this fraction of the
#: timeout: the connection closes between ``timeout`` and ``timeout * (1 +
#: IDLE_SLACK)`` after the last command, never earlier, and a busy
#: connection does not reschedule its deadline on every command.
IDLE_SLACK = 1 / 64


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may cost the server (see the module's docstring)."""

    #: Seconds without a complete command line before the connection closes.
    timeout: float = 600.0
    max_connections: int = 1000
    max_commands: int = 1000
    max_bad_commands: int = 10
    #: Seconds a client has to complete the TLS handshake after ``+OK``.
    handshake_timeout: float = 30.0


DEFAULT_LIMITS = Limits()


def tls_context() -> ssl.SSLContext:
    """A server context under this server's TLS policy, without a
    certificate: TLS 1.2 or newer (RFC 8996), no renegotiation (a client
    could otherwise make the server redo the costly half of a handshake at
    will), the ssl module's default ciphers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


@dataclass(frozen=True, slots=True)
class Identity:
    """One certificate the server can present after STARTTLS: its context
    (from ``tls_context``, certificate loaded) and the DNS names of its
    subjectAltName, lower case, which decide the FQDNs it serves."""

    names: tuple[str, ...]
    context: ssl.SSLContext

    def exactly(self, fqdn: str) -> bool:
        return fqdn.lower() in self.names

    def by_wildcard(self, fqdn: str) -> bool:
        """RFC 6125 section 6.4.3: ``*`` as the whole left-most label stands
        for exactly one label."""
        _, dot, parent = fqdn.lower().partition(".")
        return bool(dot) and f"*.{parent}" in self.names


def identity_for(identities: Sequence[Identity], fqdn: str) -> Identity | None:
    """The certificate for the host the client asked for (RFC 3887 section
    6: virtual hosting): one naming it exactly first, else one whose
    wildcard covers it; None means ``-BAD/bad-fqdn``."""
    for match in (Identity.exactly, Identity.by_wildcard):
        for identity in identities:
            if match(identity, fqdn):
                return identity
    return None


class Server:
    """One MTQP service: the store it answers from, what it may reveal, its
    certificates and its limits.

    ``paused`` is the administrative switch: while it is set, new
    connections are greeted ``-TEMP/MTQP/admin`` and TRACK on open ones is
    answered ``-TEMP/admin`` (RFC 3887 sections 3 and 4).
    """

    def __init__(
        self,
        store: Store,
        *,
        site_key: bytes,
        reporting_mta: str,
        identities: Sequence[Identity] = (),
        tls_required: bool = False,
        hide_internal: bool = False,
        trusted: Iterable[Network] = (),
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if tls_required and not identities:
            raise ValueError("TLS cannot be required without a certificate")
        self.store = store
        self.site_key = site_key
        self.reporting_mta = reporting_mta
        self.identities = tuple(identities)
        self.tls_required = tls_required
        self.hide_internal = hide_internal
        self.trusted = tuple(trusted)
        self.limits = limits
        self.paused = False
        #: Connections being served (refused ones are not counted).
        self.active = 0

    @property
    def options(self) -> list[str]:
        """The greeting's options before TLS (section 3: STARTTLS is listed
        when a certificate is installed, with "required" when it is)."""
        if not self.identities:
            return []
        return ["STARTTLS required" if self.tls_required else "STARTTLS"]

    async def listen(
        self, addresses: Iterable[tuple[str | None, int]] = DEFAULT_ADDRESSES
    ) -> list[trio.SocketListener]:
        """Bind every address before serving any, so that a configuration
        with one bad address fails at start, whole, with the plain OSError."""
        listeners: list[trio.SocketListener] = []
        try:
            for host, port in addresses:
                listeners += await trio.open_tcp_listeners(port, host=host)
        except BaseException:
            for listener in listeners:
                await listener.aclose()
            raise
        return listeners

    async def serve(
        self, listeners: list[trio.SocketListener], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; every connection task is cancelled with it."""
        await trio.serve_listeners(self.handle, listeners, task_status=task_status)

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection, from accept to close; never raises but Cancelled."""
        session = _Session(self, stream)
        try:
            if self.active >= self.limits.max_connections:
                log.info("%s: refused, %d connections already", session.peer, self.active)
                await session.send(session.conn.send_refusal(Status.TEMP, "unavailable", "Too many connections"))
                await session.hang_up()
                return
            self.active += 1
            try:
                orderly = await session.run()
            finally:
                self.active -= 1
            if orderly:
                await session.hang_up()
        except trio.BrokenResourceError as exc:
            what = "TLS handshake failed" if session.conn.state is State.TLS_HANDSHAKE else "connection lost"
            log.info("%s: %s: %s", session.peer, what, exc.__cause__ or exc)
        except trio.TooSlowError:
            log.info("%s: no TLS handshake within %g s", session.peer, self.limits.handshake_timeout)
        except Exception:
            log.exception("%s: session ended by a server error", session.peer)
        finally:
            await trio.aclose_forcefully(session.stream)


def _peer(stream: trio.SocketStream) -> Address | None:
    """The client's address, for trusted networks and for logs; None if
    the client is gone already."""
    try:
        return ipaddress.ip_address(stream.socket.getpeername()[0])
    except OSError:
        return None


class _PlainIO:
    """Reads and writes of a plain TCP connection, on its descriptor.

    ``os.read``/``os.write`` are recv/send without flags on a socket; trio
    put it in non-blocking mode, and Python ignores SIGPIPE, so a closed
    peer is an ``OSError`` here, reported as trio's ``BrokenResourceError``
    like ``SocketStream`` reports it. A read always waits for readiness
    first: it is the session loop's checkpoint."""

    __slots__ = ("fd",)

    def __init__(self, stream: trio.SocketStream) -> None:
        self.fd = stream.socket.fileno()

    async def receive(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                return os.read(self.fd, RECEIVE_SIZE)
            except BlockingIOError:
                continue  # a spurious wakeup
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc

    async def send(self, data: bytes | bytearray) -> None:
        """All of ``data``; waits (under the session's deadline) only when
        the client's window is full. The rest after a partial write is a
        copy, not a memoryview: a view would keep the caller's bytearray
        from being cleared for reuse."""
        pos = 0
        while pos < len(data):
            try:
                pos += os.write(self.fd, data[pos:] if pos else data)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc


class _StreamIO:
    """Reads and writes through a trio stream (TLS)."""

    __slots__ = ("stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def receive(self) -> bytes:
        return await self.stream.receive_some(RECEIVE_SIZE)

    async def send(self, data: bytes | bytearray) -> None:
        await self.stream.send_all(data)


class _Session:
    """The state of one connection: its stream (plain, then TLS), its
    protocol core and its inactivity deadline."""

    def __init__(self, server: Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = stream
        # os.read/os.write on a socket descriptor are a POSIX thing.
        self.io: _PlainIO | _StreamIO = _PlainIO(stream) if os.name == "posix" else _StreamIO(stream)
        self.conn = Connection()
        self.peer = _peer(stream)
        self.idle = trio.CancelScope()

    async def send(self, data: bytes | bytearray) -> None:
        if data:
            await self.io.send(data)

    def _touch(self) -> None:
        """A command arrived: the connection may now stay idle for the
        whole timeout again (see ``IDLE_SLACK``)."""
        timeout = self.server.limits.timeout
        due = trio.current_time() + timeout
        if due > self.idle.deadline:
            self.idle.deadline = due + timeout * IDLE_SLACK

    async def run(self) -> bool:
        """The conversation, under the inactivity deadline. True when it
        ended in order (QUIT, the client's close, a limit), so that the
        last answer deserves a lingering close; False after a timeout."""
        limits = self.server.limits
        with trio.move_on_after(limits.timeout) as self.idle:
            return await self._converse()
        log.info("%s: no command for %g s, closing", self.peer, limits.timeout)
        return False

    async def _converse(self) -> bool:
        if self.server.paused:
            await self.send(self.conn.send_refusal(Status.TEMP, "admin", "Service paused by the administrator"))
            return True
        await self.send(self.conn.send_greeting(self.server.options))
        while True:
            self.conn.receive_data(await self.io.receive())
            if not await self._answer_buffered():
                return True

    async def _answer_buffered(self) -> bool:
        """Answer every complete command line received, in order (section
        8), writing the answers to a pipelined group together. False when
        the session is over."""
        limits = self.server.limits
        counters = self.conn.counters
        out = bytearray()
        while True:
            event = self.conn.next_event()
            if isinstance(event, NeedData):
                break
            if isinstance(event, ConnectionClosed):
                await self.send(out)
                return False
            self._touch()
            if counters.commands > limits.max_commands:
                out += self._over_allowance(event)
                log.info("%s: %d commands, closing", self.peer, limits.max_commands)
                await self.send(out)
                return False
            if isinstance(event, StartTLS):
                identity = identity_for(self.server.identities, event.fqdn)
                if identity is None:
                    out += self.conn.send_error(Status.BAD, "bad-fqdn", "No certificate for that name")
                    continue
                await self.send(out + self.conn.send_ok("Begin TLS negotiation"))
                out.clear()
                await self._start_tls(identity, event.fqdn)
                continue
            out += self._answer(event)
            if counters.bad >= limits.max_bad_commands:
                log.info("%s: %d bad commands, closing", self.peer, counters.bad)
                await self.send(out)
                return False
            if len(out) >= SEND_CHUNK:
                await self.send(out)
                out.clear()
        if out:
            await self._send_batched(out)
        return True

    async def _send_batched(self, data: bytes | bytearray) -> None:
        """Write an answer one scheduler pass later: every connection
        whose command arrived in the same pass answers first, then all
        write, back to back. Clients woken by those writes find several
        answers at once, and their next commands arrive together, so both
        ends do their per-wakeup work (epoll, scheduling) once per batch
        instead of once per command (tests/bench: about a quarter less CPU
        per TRACK in the server, a third less in the load generator). It
        costs one pass of latency; the answer is already computed, so the
        pass is shielded from cancellation."""
        await trio.lowlevel.cancel_shielded_checkpoint()
        await self.send(data)

    def _answer(self, event: Track | Comment | Quit | BadCommand) -> bytes:
        if isinstance(event, BadCommand):
            return event.response
        if isinstance(event, Track):
            return self._track(event)
        if isinstance(event, Quit):
            return self.conn.send_ok("Goodbye")
        return self.conn.send_ok()

    def _over_allowance(self, event: Track | Comment | Quit | StartTLS | BadCommand) -> bytes:
        """The answer to a command beyond the connection's allowance."""
        if isinstance(event, BadCommand):
            return event.response
        if isinstance(event, Comment | Quit):
            return self.conn.send_ok()
        return self.conn.send_error(Status.TEMP, None, "Too many commands on one connection, reconnect")

    def _track(self, event: Track) -> bytes:
        server = self.server
        if server.paused:
            return self.conn.send_error(Status.TEMP, "admin", "Service paused by the administrator")
        if server.tls_required and not self.conn.tls_active:
            return self.conn.send_error(Status.ERR, "tls-required", "STARTTLS first")
        records = lookup(server.store, event.envid)
        granted = authorise(
            records,
            event.secret,
            site_key=server.site_key,
            client_ip=self.peer,
            trusted=server.trusted,
        )
        if not granted:
            return self.conn.send_error(Status.ERR, "noinfo", "No tracking information")
        body = tracking_response(
            granted, server.store, reporting_mta=server.reporting_mta, hide_internal=server.hide_internal
        )
        return self.conn.send_ok("Tracking information follows", body=body)

    async def _start_tls(self, identity: Identity, fqdn: str) -> None:
        """After ``+OK`` to STARTTLS: the handshake on the raw stream, then
        the session starts over with a new greeting (section 6.2)."""
        tls = trio.SSLStream(self.stream, identity.context, server_side=True)
        self.stream = tls
        self.io = _StreamIO(tls)
        with trio.fail_after(self.server.limits.handshake_timeout):
            await tls.do_handshake()
        self.conn.tls_established()
        log.debug("%s: %s for %s", self.peer, tls.version(), fqdn)
        await self.send(self.conn.send_greeting())

    async def hang_up(self) -> None:
        """Close after the last answer without losing it: a socket closed
        with unread input is reset, and a reset can destroy answers the
        client has not read yet. So: TLS sends close_notify (which TLS
        clients wait for); plain TCP half-closes and reads to the client's
        end. Both within ``LINGER``."""
        with trio.move_on_after(LINGER), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            if isinstance(self.stream, trio.SSLStream):
                await self.stream.aclose()
                return
            await self.stream.send_eof()
            while await self.stream.receive_some(RECEIVE_SIZE):
                pass
