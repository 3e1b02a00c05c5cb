"""The MTQP client (RFC 3887): ``mtqpd track`` and ``mtqpd secret``.

Three layers, each testable without the one below it:

* Pure pieces: ``mtqp://`` URIs (section 9, with the %-encoding of section
  9.4 over RFC 3461 xtext), a sans-I/O ``ResponseReader`` (status lines,
  response-info codes, dot-terminated multi-line bodies with the dot-stuffing
  undone, section 2.3), and ``parse_tracking_body``, which reads a TRACK
  answer's multipart/related of message/tracking-status parts (RFC 3886) with
  the ``email`` package.
* ``Session``: one connection on trio: greeting, STARTTLS with certificate
  verification, TRACK, QUIT.
* ``track``: finds the server (SRV ``_mtqp._tcp.<host>``, RFC 8553, then the
  host itself on port 1038, section 2), queries it, and follows
  ``transferred`` recipients to the MTQP servers they were handed to (RFC
  3886 section 3.3.3: "the tracking agent SHOULD attempt further downstream
  tracking requests unless that information is already given in a chaining
  response"), with the same envelope id and secret, within one overall bound
  (two minutes by default, section 2.5), a limit on depth and on servers, and
  never the same server twice.

Decisions where RFC 3887 leaves room:

* Commands are checked with the server core's own grammar
  (``protocol.parse_line``) before they are sent, so the client never puts a
  line on the wire that the RFC's ABNF rejects.
* Responses: a line may end with CRLF or a bare LF (be liberal); a line over
  998 octets, a status line outside the ABNF, a greeting without ``/MTQP``,
  or bytes sent after ``+OK`` to STARTTLS (before the handshake: nothing the
  server says there can be trusted) end the session with
  ``ServerProtocolError``. A body is capped (``MAX_BODY``) so that a hostile
  server cannot fill memory.
* TLS: ``--starttls`` makes TLS a requirement (a greeting that does not
  offer it is an error: that is how a man in the middle strips it, section
  11). Without it, TLS is still used when the server says ``STARTTLS
  required`` or answers TRACK with ``/tls-required``. The certificate is
  verified against the name the client believes it speaks to (the URI's
  host, the ``--server`` host, or ``--tls-name``), which is also the
  STARTTLS parameter (section 6): with SRV that is the domain asked about,
  not the SRV target (RFC 6125's source domain: a forged SRV answer cannot
  redirect to a host that merely holds a certificate of its own). TLS 1.2 is
  the minimum (RFC 8996).
* ENVIDs: on the command line an envelope id is given as the MTA logged it
  and is xtext-encoded for the wire (RFC 3461); in a URI it is the wire form
  (xtext), %-encoded.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import ipaddress
import logging
import random
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.utils import parsedate_to_datetime
from functools import partial
from typing import IO, Any

import pyparsing as pp
import trio

from ingest.records import bare_message_id
from ingest.store import Store

from . import auth
from .protocol import DOMAIN, MAX_LINE, STARTTLS_OPTION, TEXT, UNIQUE_ENVID, WSP, Status, Track, parse_line

log = logging.getLogger(__name__)

#: RFC 3887 section 10.
DEFAULT_PORT = 1038
#: Section 2.5: a client's wait for a response MUST be at least 2 minutes; a
#: chaining server MUST answer within 2 minutes. The whole run, referrals
#: included, is bounded by this.
OVERALL_TIMEOUT = 120.0
#: Connecting to one address, so that a dead host leaves time for the next.
CONNECT_TIMEOUT = 20.0
#: The SRV lookup, before falling back to the host itself.
SRV_TIMEOUT = 5.0
#: Referrals: how many hops away from the first server, and how many
#: servers in all (the first included).
MAX_DEPTH = 5
MAX_SERVERS = 10
#: Octets of one multi-line response, terminators included.
MAX_BODY = 4 * 1024 * 1024


class ClientError(Exception):
    """No answer could be had: resolution, connection, TLS, or a server
    that refused service."""


class ServerProtocolError(ClientError):
    """The server sent something RFC 3887 does not allow."""


class _AlreadyAsked(ClientError):
    """A referral that leads back to a server already asked."""


# -- mtqp:// URIs (section 9) ------------------------------------------------

#: RFC 3986 pchar without "%": what a path segment may hold unencoded. Section
#: 9.4 requires only "/", "?" and "%" to be encoded; anything else that is not
#: a pchar is encoded too, so that the URI is a valid URI (no "<", ">", "#").
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_URI = re.compile(
    r"mtqp://(?P<authority>[^/?#]*)/track/(?P<envid>[^/?#]+)/(?P<secret>[^/?#]+)",
    re.IGNORECASE,
)
_AUTHORITY = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[A-Za-z0-9._-]+))(?::(?P<port>\d*))?")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_XCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"+", "="}


def xtext_encode(text: str) -> str:
    """RFC 3461 section 4: "+", "=", controls, space and non-ASCII (as
    UTF-8) become ``+HH``."""
    return "".join(c if c in _XCHAR else "".join(f"+{b:02X}" for b in c.encode("utf-8")) for c in text)


def _host_port(authority: str, what: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``; an empty port is
    the default one (RFC 3986 section 3.2.3)."""
    m = _AUTHORITY.fullmatch(authority)
    if not m:
        raise ValueError(f"{what}: not a host or host:port: {authority!r}")
    host = m["v6"] or m["host"]
    if m["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{what}: not an IPv6 address: [{host}]") from None
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{what}: port {port} is out of range")
    return host, port


def parse_server(text: str) -> tuple[str, int | None]:
    """``--server HOST[:PORT]`` (IPv6 in brackets)."""
    return _host_port(text.strip(), "server")


def _unescape(segment: str, what: str) -> str:
    if _BAD_ESCAPE.search(segment):
        raise ValueError(f"{what}: a '%' must be followed by two hex digits (section 9.4)")
    raw = urllib.parse.unquote_to_bytes(segment)
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{what}: not US-ASCII once %-decoded") from None


@dataclass(frozen=True, slots=True)
class TrackURI:
    """An ``mtqp://`` URI: the server, and the TRACK arguments in their wire
    forms (``envid`` as xtext, ``secret`` as base64)."""

    host: str
    port: int | None
    envid: str
    secret: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port is None else f"{host}:{self.port}"
        envid = urllib.parse.quote(self.envid, safe=_SEGMENT_SAFE)
        secret = urllib.parse.quote(self.secret, safe=_SEGMENT_SAFE)
        return f"mtqp://{authority}/track/{envid}/{secret}"


def parse_uri(text: str) -> TrackURI:
    """``mtqp://<mserver>[:<port>]/track/<unique-envid>/<mtrk-secret>``.

    The scheme and "/track/" are case-insensitive, the envid and secret are
    not; both are %-decoded. ``ValueError`` says what is wrong.
    """
    m = _URI.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not an MTQP URI (mtqp://HOST[:PORT]/track/ENVID/SECRET): {text!r}")
    host, port = _host_port(m["authority"], "URI authority")
    envid = _unescape(m["envid"], "URI envid")
    secret = _unescape(m["secret"], "URI secret")
    return TrackURI(host, port, envid, secret)


def format_uri(host: str, port: int | None, envid: str, secret: str) -> str:
    """The URI for an envelope id as the MTA logged it and a base64 secret."""
    return str(TrackURI(host, port, xtext_encode(envid), secret))


def track_line(envid: str, secret: str) -> bytes:
    """The TRACK command line, checked against the server core's grammar.
    ``envid`` is the wire form (xtext), ``secret`` base64."""
    line = f"TRACK {envid} {secret}\r\n".encode("ascii", "replace")
    if not isinstance(parse_line(line), Track):
        try:
            UNIQUE_ENVID.parse_string(envid, parse_all=True)
        except pp.ParseException:
            raise ValueError(f"not a unique-envid (local-envid@fqhn, RFC 3885): {envid!r}") from None
        raise ValueError(f"not a base64 secret: {secret!r}")
    return line


# -- responses (section 2.3 and the server side of section 12) ---------------

S = pp.Suppress
#: ``+OK+`` before ``+OK``: one_of prefers the longest match anyway.
STATUS = pp.one_of([s.value for s in Status]).set_name("status")
REASON = pp.Word(pp.alphanums + "-_").set_name("NAMECHAR")
#: ``status response-info opt-text``; response-info codes are compared
#: case-insensitively (section 2.3), so they are kept lower-cased.
RESPONSE_LINE = (
    (
        STATUS("status")
        + pp.Group(pp.ZeroOrMore(S("/") + REASON))("info")
        + pp.Opt(S(WSP) + pp.Opt(TEXT("text")))
        + pp.StringEnd()
    )
    .leave_whitespace()
    .parse_with_tabs()
)


@dataclass(frozen=True, slots=True)
class Response:
    """One response: its status, reason codes (lower case), text, and for
    ``+OK+`` its lines, dot-stuffing undone, terminators removed."""

    status: Status
    info: tuple[str, ...] = ()
    text: str = ""
    lines: tuple[bytes, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.OK_DATA)

    def has(self, code: str) -> bool:
        return code.lower() in self.info

    @property
    def body(self) -> bytes:
        """The multi-line part as CRLF-terminated lines."""
        return b"".join(line + b"\r\n" for line in self.lines or ())

    def __str__(self) -> str:
        head = self.status.value + "".join("/" + code for code in self.info)
        return f"{head} {self.text}" if self.text else head


def parse_status_line(line: bytes) -> Response:
    """A status line (terminator removed) as a ``Response`` without lines."""
    text = line.decode("ascii", "backslashreplace")
    try:
        toks = RESPONSE_LINE.parse_string(text, parse_all=True)
    except pp.ParseException:
        raise ServerProtocolError(f"not an MTQP status line: {text[:100]!r}") from None
    return Response(Status(toks["status"]), tuple(c.lower() for c in toks["info"]), toks.get("text", ""))


class ResponseReader:
    """The client's side of the byte stream, without I/O: feed it what was
    read (``b""`` at the end of the stream) and take whole responses.

    Only the line being received and the body being collected are held, and
    both are bounded.
    """

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self._eof = False
        self._head: Response | None = None  # a +OK+ whose body is being read
        self._lines: list[bytes] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        """Octets received that are not part of a response handed out."""
        return len(self._buf) + self._size

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("receive_data() after the end of the stream")
        if not data:
            self._eof = True
        self._buf += data

    def _line(self) -> bytes | None:
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > MAX_LINE + 1:
                raise ServerProtocolError(f"a response line longer than {MAX_LINE} octets")
            if self._eof and (self._buf or self._head is not None):
                raise ServerProtocolError("the server closed the connection in the middle of a response")
            return None
        line = bytes(self._buf[:nl]).removesuffix(b"\r")
        del self._buf[: nl + 1]
        if len(line) > MAX_LINE:
            raise ServerProtocolError(f"a response line longer than {MAX_LINE} octets")
        return line

    def next_response(self) -> Response | None:
        """The next whole response, or None when more bytes are needed.
        Raises ``ServerProtocolError``, and ``EOFError`` at a clean end of
        the stream (between responses)."""
        while True:
            line = self._line()
            if line is None:
                if self._eof:
                    raise EOFError("the server closed the connection")
                return None
            if self._head is None:
                head = parse_status_line(line)
                if head.status is not Status.OK_DATA:
                    return head
                self._head, self._lines, self._size = head, [], 0
                continue
            if line == b".":
                done = Response(self._head.status, self._head.info, self._head.text, tuple(self._lines))
                self._head, self._lines, self._size = None, [], 0
                return done
            self._size += len(line) + 2
            if self._size > self.max_body:
                raise ServerProtocolError(f"a response longer than {self.max_body} octets")
            self._lines.append(line[1:] if line.startswith(b".") else line)


def parse_options(lines: Iterable[bytes]) -> list[str]:
    """A greeting's option specifications (section 3), continuation lines
    (starting with white space) joined to the line they continue."""
    options: list[str] = []
    for raw in lines:
        line = raw.decode("ascii", "backslashreplace")
        if line[:1] in (" ", "\t") and options:
            options[-1] += " " + line.strip()
        elif line.strip():
            options.append(line.strip())
    return options


def starttls_option(options: Sequence[str]) -> str | None:
    """None when STARTTLS is not offered, "offered" or "required"."""
    for option in options:
        try:
            toks = STARTTLS_OPTION.parse_string(option, parse_all=True)
        except pp.ParseException:
            continue
        return "required" if len(toks) > 1 else "offered"
    return None


# -- message/tracking-status (RFC 3886) --------------------------------------

_STATUS_CODE = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})\s*(.*)", re.DOTALL)
_U_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_BLANK_LINE = re.compile(r"\r?\n[ \t]*\r?\n")


def _typed(value: str | None) -> str | None:
    """``type; value`` (Original-Recipient, Final-Recipient, Reporting-MTA,
    Remote-MTA) as the value alone; RFC 6533 ``\\x{HEX}`` escapes of a utf-8
    address undone."""
    if value is None:
        return None
    kind, sep, rest = value.partition(";")
    text = rest.strip() if sep else value.strip()
    if sep and kind.strip().lower() in ("utf-8", "unknown"):
        text = _U_ESCAPE.sub(lambda m: chr(int(m[1], 16)), text)
    return text


def _mta_type(value: str | None) -> str | None:
    if value is None or ";" not in value:
        return None
    return value.split(";", 1)[0].strip().lower()


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return " ".join(str(value).split()) if value is not None else None


@dataclass(slots=True)
class RecipientStatus:
    """One per-recipient group (RFC 3886 section 3.3), values without their
    ``type;`` prefix; ``fields`` keeps every field as sent."""

    original: str | None
    final: str | None
    action: str | None
    status: str | None
    comment: str
    remote_mta: str | None
    remote_mta_type: str | None
    last_attempt: str | None
    will_retry_until: str | None
    fields: list[tuple[str, str]]


@dataclass(slots=True)
class TrackingStatus:
    """One message/tracking-status part: one MTA's view of the message."""

    envid: str | None
    reporting_mta: str | None
    arrival_date: str | None
    recipients: list[RecipientStatus]
    fields: list[tuple[str, str]]


def _recipient(group: Message) -> RecipientStatus:
    status_field = _header(group, "Status")
    m = _STATUS_CODE.fullmatch(status_field or "")
    remote = _header(group, "Remote-MTA")
    return RecipientStatus(
        original=_typed(_header(group, "Original-Recipient")),
        final=_typed(_header(group, "Final-Recipient")),
        action=(_header(group, "Action") or "").lower() or None,
        status=m[1] if m else status_field,
        comment=m[2].strip() if m else "",
        remote_mta=_typed(remote),
        remote_mta_type=_mta_type(remote),
        last_attempt=_header(group, "Last-Attempt-Date"),
        will_retry_until=_header(group, "Will-Retry-Until"),
        fields=[(k, " ".join(str(v).split())) for k, v in group.items()],
    )


def _tracking_part(part: Message) -> TrackingStatus:
    """The ``email`` package reads a message/* part as a message of its own:
    its headers are the per-message fields, its body holds the per-recipient
    groups, each of which is read as a header block too."""
    payload = part.get_payload()
    if not isinstance(payload, list) or len(payload) != 1:
        raise ServerProtocolError("a message/tracking-status part without content")
    inner: Message = payload[0]
    rest = inner.get_payload()
    groups = [g for g in _BLANK_LINE.split(rest if isinstance(rest, str) else "") if g.strip()]
    parser = email.parser.HeaderParser(policy=email.policy.compat32)
    return TrackingStatus(
        envid=_header(inner, "Original-Envelope-Id"),
        reporting_mta=_typed(_header(inner, "Reporting-MTA")),
        arrival_date=_header(inner, "Arrival-Date"),
        recipients=[_recipient(parser.parsestr(g.strip("\r\n") + "\r\n\r\n")) for g in groups],
        fields=[(k, " ".join(str(v).split())) for k, v in inner.items()],
    )


def parse_tracking_body(body: bytes) -> list[TrackingStatus]:
    """A TRACK answer's body (RFC 3887 section 4: a multipart/related of
    message/tracking-status parts) as one ``TrackingStatus`` per part. Parts
    of other types are skipped; a body that is not multipart/related is a
    ``ServerProtocolError``."""
    msg = email.message_from_bytes(body, policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/related":
        raise ServerProtocolError(f"a TRACK answer is multipart/related, not {msg.get_content_type()}")
    parts = msg.get_payload()
    found = [_tracking_part(p) for p in parts if p.get_content_type() == "message/tracking-status"]
    if not isinstance(parts, list) or not found:
        raise ServerProtocolError("a TRACK answer without a message/tracking-status part")
    return found


# -- finding the server (section 2, RFC 2782, RFC 8553) ----------------------


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


#: (priority, weight, port, target) as an SRV record holds them.
SrvRecord = tuple[int, int, int, str]


def order_srv(records: Sequence[SrvRecord], rng: random.Random | None = None) -> list[Target]:
    """RFC 2782's usage rules: lowest priority first; within a priority, a
    weighted random order (weight-0 records stay possible, rarely first).
    A lone record whose target is "." says the service is not offered:
    that is an empty list."""
    rng = rng or random.Random()
    if len(records) == 1 and records[0][3].rstrip(".") == "":
        return []
    out: list[Target] = []
    for priority in sorted({r[0] for r in records}):
        pool = sorted((r for r in records if r[0] == priority), key=lambda r: r[1])  # weight 0 first
        while pool:
            total = sum(r[1] for r in pool)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(pool):
                running += r[1]
                if running >= pick:
                    chosen = pool.pop(i)
                    break
            out.append(Target(chosen[3].rstrip("."), chosen[2]))
    return out


async def srv_lookup(name: str, resolver: Any = None) -> list[SrvRecord] | None:
    """The SRV records of ``name`` (absolute), or None when there are none
    or DNS cannot say (no resolver, timeout): the caller falls back to the
    host itself, as section 2 does when "the SRV records do not exist".
    ``resolver``: a ``dns.asyncresolver.Resolver`` (default: the system's)."""
    try:
        import dns.asyncresolver
        import dns.exception
        import dns.name
    except ImportError:  # dnspython is a dependency; without it, no SRV
        log.warning("dnspython is not installed: no SRV lookup for %s", name)
        return None
    try:
        resolver = resolver or dns.asyncresolver.get_default_resolver()
        answer = await resolver.resolve(dns.name.from_text(name), "SRV", lifetime=SRV_TIMEOUT, search=False)
    except dns.exception.DNSException as exc:
        log.debug("no SRV records for %s: %s", name, exc)
        return None
    return [(r.priority, r.weight, r.port, r.target.to_text()) for r in answer]  # type: ignore[attr-defined]


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve(host: str, port: int | None) -> list[Target]:
    """Where the MTQP server of ``host`` listens: an explicit port is used
    as given; else SRV ``_mtqp._tcp.<host>``, else ``host`` on 1038. An IP
    address or ``localhost`` is never looked up in DNS."""
    if port is not None:
        return [Target(host, port)]
    if _is_literal(host) or host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return [Target(host, DEFAULT_PORT)]
    records = await srv_lookup(f"_mtqp._tcp.{host.rstrip('.')}.")
    if records is None:
        return [Target(host, DEFAULT_PORT)]
    targets = order_srv(records)
    if not targets:
        raise ClientError(f"{host} publishes no MTQP service (its _mtqp._tcp SRV target is '.')")
    return targets


Resolver = Callable[[str, int | None], Awaitable[list[Target]]]


# -- one session --------------------------------------------------------------


@dataclass(slots=True)
class TLSPolicy:
    """How TLS is used: ``require`` (``--starttls``: a server that does not
    offer it is an error), else only when the server requires it. The
    context verifies certificates unless made with ``insecure``."""

    context: ssl.SSLContext
    require: bool = False
    insecure: bool = False


def tls_context(cafile: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """A client context: the system's CAs, or ``cafile``'s, TLS 1.2 or
    later; ``insecure`` encrypts without checking who answers."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Session:
    """One MTQP connection. ``await Session.open(target, name, tls)`` leaves
    it greeted (and with TLS, when the policy and the server call for it)."""

    def __init__(self, stream: trio.abc.Stream, target: Target, name: str) -> None:
        self.stream: trio.abc.Stream = stream
        self.target = target
        self.name = name
        self.reader = ResponseReader()
        self.options: list[str] = []
        self.tls: str | None = None  # e.g. "TLSv1.3, certificate verified for mx1.example.test"

    @classmethod
    async def open(cls, target: Target, name: str, tls: TLSPolicy | None) -> Session:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(target.host, target.port)
        except (OSError, trio.TooSlowError) as exc:
            raise ClientError(f"cannot connect to {target}: {exc or 'timed out'}") from None
        session = cls(stream, target, name)
        try:
            await session.greeting()
            if tls is not None:
                offered = starttls_option(session.options)
                if tls.require and offered is None:
                    raise ClientError(f"{target} does not offer STARTTLS (and --starttls requires it)")
                if tls.require or offered == "required":
                    await session.starttls(tls)
        except BaseException:
            await trio.aclose_forcefully(session.stream)
            raise
        return session

    async def _read(self) -> Response:
        while True:
            try:
                response = self.reader.next_response()
            except EOFError:
                raise ClientError(f"{self.target} closed the connection") from None
            if response is not None:
                return response
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, OSError) as exc:
                raise ClientError(f"connection to {self.target} lost: {exc}") from None
            self.reader.receive_data(data)

    async def _send(self, line: bytes) -> None:
        try:
            await self.stream.send_all(line)
        except (trio.BrokenResourceError, OSError) as exc:
            raise ClientError(f"connection to {self.target} lost: {exc}") from None

    async def greeting(self) -> None:
        """Section 3: ``+OK/MTQP`` or ``+OK+/MTQP`` and options; a refusal
        is a ``ClientError`` that quotes it."""
        response = await self._read()
        if not response.info or response.info[0] != "mtqp":
            raise ServerProtocolError(f"{self.target} is not an MTQP server (greeting: {response})")
        if not response.ok:
            raise ClientError(f"{self.target} refuses service: {response}")
        self.options = parse_options(response.lines or ())

    async def starttls(self, tls: TLSPolicy) -> None:
        """Section 6: STARTTLS with the FQDN, the handshake, a new greeting;
        every option heard before it is forgotten (section 6.2)."""
        if _is_literal(self.name) or not DOMAIN.matches(self.name, parse_all=True):
            raise ClientError(
                f"STARTTLS needs the server's fully qualified domain name, not {self.name!r} (give --tls-name)"
            )
        if self.tls is not None:
            raise ClientError("TLS is already active")
        await self._send(f"STARTTLS {self.name}\r\n".encode("ascii"))
        response = await self._read()
        if not response.ok:
            raise ClientError(f"{self.target} refuses STARTTLS: {response}")
        if self.reader.buffered:
            raise ServerProtocolError(f"{self.target} sent data after accepting STARTTLS, before TLS")
        ssl_stream = trio.SSLStream(self.stream, tls.context, server_hostname=self.name)
        try:
            await ssl_stream.do_handshake()
        except (ssl.SSLError, trio.BrokenResourceError) as exc:
            why = exc.__cause__ or exc
            raise ClientError(f"TLS with {self.target} as {self.name} failed: {why}") from None
        self.stream = ssl_stream
        self.reader = ResponseReader()
        self.options = []
        checked = "certificate NOT verified" if tls.insecure else f"certificate verified for {self.name}"
        self.tls = f"{ssl_stream.version()}, {checked}"
        await self.greeting()

    async def track(self, envid: str, secret: str, tls: TLSPolicy | None) -> Response:
        """TRACK; on ``/tls-required`` STARTTLS first (when offered, and TLS
        is not active yet), then once more."""
        line = track_line(envid, secret)
        await self._send(line)
        response = await self._read()
        if (
            response.has("tls-required")
            and self.tls is None
            and tls is not None
            and starttls_option(self.options) is not None
        ):
            await self.starttls(tls)
            await self._send(line)
            response = await self._read()
        return response

    async def close(self) -> None:
        """QUIT (section 7), then close; a server that does not answer
        promptly is not waited for."""
        with trio.move_on_after(5):
            try:
                await self._send(b"QUIT\r\n")
                await self._read()
            except ClientError:
                pass
            await self.stream.aclose()
            return
        await trio.aclose_forcefully(self.stream)


# -- tracking, with referrals -------------------------------------------------


@dataclass(slots=True)
class Answer:
    """What one server said."""

    server: str  # the name asked, as the user or a Remote-MTA gave it
    target: Target
    depth: int
    tls: str | None
    response: Response
    parts: list[TrackingStatus] = field(default_factory=list)


@dataclass(slots=True)
class Failure:
    """A server that could not be asked (a referral's, or the first)."""

    server: str
    depth: int
    reason: str


@dataclass(slots=True)
class Trace:
    envid: str
    answers: list[Answer] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: Referrals not followed: server, why.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timed_out: bool = False

    @property
    def found(self) -> bool:
        """The first server gave tracking information."""
        return bool(self.answers) and self.answers[0].depth == 0 and self.answers[0].response.ok


def referrals(parts: Sequence[TrackingStatus]) -> list[str]:
    """The servers the parts refer on: Remote-MTAs (``dns;`` names and
    address literals) of ``transferred`` recipients that no part of the same
    answer reports as its Reporting-MTA (that would be chaining, already
    done), in order, each once."""
    reported = {p.reporting_mta.lower() for p in parts if p.reporting_mta}
    out: list[str] = []
    for part in parts:
        for r in part.recipients:
            if r.action != "transferred" or not r.remote_mta or r.remote_mta_type != "dns":
                continue
            host = r.remote_mta.strip()
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
                host = host[5:] if host[:5].lower() == "ipv6:" else host
            if host.lower() not in reported and host.lower() not in (h.lower() for h in out):
                out.append(host)
    return out


async def _ask(
    server: str,
    port: int | None,
    name: str,
    envid: str,
    secret: str,
    tls: TLSPolicy | None,
    resolver: Resolver,
    depth: int,
    asked: set[Target],
) -> Answer:
    targets = await resolver(server, port)
    fresh = [t for t in targets if t not in asked]
    if targets and not fresh:
        raise _AlreadyAsked(f"{', '.join(map(str, targets))} already asked")
    errors: list[ClientError] = []
    for target in fresh:
        try:
            session = await Session.open(target, name, tls)
        except ClientError as exc:
            errors.append(exc)
            continue
        asked.add(target)
        try:
            response = await session.track(envid, secret, tls)
        finally:
            await session.close()
        answer = Answer(server, target, depth, session.tls, response)
        if response.status is Status.OK_DATA:
            answer.parts = parse_tracking_body(response.body)
        elif response.ok:
            raise ServerProtocolError(f"{target} answered TRACK without tracking information: {response}")
        return answer
    if len(errors) == 1:
        raise errors[0]
    raise ClientError("; ".join(map(str, errors)) or f"no address for {server}")


async def track(
    host: str,
    port: int | None,
    envid: str,
    secret: str,
    *,
    tls: TLSPolicy | None = None,
    tls_name: str | None = None,
    follow: bool = True,
    timeout: float = OVERALL_TIMEOUT,
    resolver: Resolver = resolve,
    max_depth: int = MAX_DEPTH,
    max_servers: int = MAX_SERVERS,
) -> Trace:
    """Ask ``host`` about ``envid`` (wire form, xtext) with ``secret``
    (base64), then the servers its ``transferred`` recipients went to,
    breadth first, within ``timeout`` seconds in all. The first server's
    failure raises ``ClientError``; a referral's is recorded in the trace."""
    trace = Trace(envid)
    asked: set[Target] = set()
    names_asked: set[str] = set()
    queue: list[tuple[str, int | None, str, int]] = [(host, port, tls_name or host, 0)]
    with trio.move_on_after(timeout) as scope:
        while queue:
            server, server_port, name, depth = queue.pop(0)
            names_asked.add(server.lower())
            try:
                answer = await _ask(server, server_port, name, envid, secret, tls, resolver, depth, asked)
            except _AlreadyAsked as exc:
                trace.skipped.append((server, str(exc)))
                continue
            except ClientError as exc:
                if depth == 0:
                    raise
                trace.failures.append(Failure(server, depth, str(exc)))
                continue
            trace.answers.append(answer)
            if not follow or not answer.response.ok:
                continue
            for nxt in referrals(answer.parts):
                if nxt.lower() in names_asked or any(nxt.lower() == q[0].lower() for q in queue):
                    continue
                if depth + 1 > max_depth:
                    trace.skipped.append((nxt, f"more than {max_depth} referrals deep"))
                elif len(names_asked) + len(queue) >= max_servers:
                    trace.skipped.append((nxt, f"more than {max_servers} servers"))
                else:
                    queue.append((nxt, None, nxt, depth + 1))
    if scope.cancelled_caught:
        if not trace.answers:
            raise ClientError(f"no answer from {host} within {timeout:g} seconds")
        trace.timed_out = True
        trace.skipped += [(q[0], f"not asked within {timeout:g} seconds") for q in queue]
    return trace


# -- output ---------------------------------------------------------------------


def _when(value: str | None) -> str | None:
    when = _date(value)
    return when.strftime("%Y-%m-%d %H:%M:%S %z") if when else value


def format_trace(trace: Trace) -> str:
    """The trace for a person: per server, per reporting MTA, per recipient."""
    out: list[str] = []
    for answer in trace.answers:
        where = str(answer.target) if answer.server == answer.target.host else f"{answer.server} at {answer.target}"
        where += f" ({answer.tls})" if answer.tls else " (no TLS)"
        lead = "referral: " if answer.depth else ""
        if not answer.response.ok:
            out += [f"{lead}{where}", f"  no tracking information: {answer.response}", ""]
            continue
        out.append(f"{lead}{where}")
        for part in answer.parts:
            arrived = _when(part.arrival_date)
            out.append(f"  {part.reporting_mta or '(unnamed MTA)'}: envelope {part.envid or '?'}, arrived {arrived}")
            for r in part.recipients:
                who = r.original or r.final or "?"
                if r.final and r.original and r.final.lower() != r.original.lower():
                    who += f" -> {r.final}"
                status = f"{r.status} {r.comment}".strip() if r.status else "no status"
                out.append(f"    {who}: {r.action or '?'}, {status}")
                if r.remote_mta:
                    out.append(f"      remote MTA:       {r.remote_mta}")
                if r.last_attempt:
                    out.append(f"      last attempt:     {_when(r.last_attempt)}")
                if r.will_retry_until:
                    out.append(f"      will retry until: {_when(r.will_retry_until)}")
        out.append("")
    for failure in trace.failures:
        out += [f"referral: {failure.server}: not answered: {failure.reason}", ""]
    for server, why in trace.skipped:
        out += [f"referral: {server}: not asked: {why}", ""]
    if trace.timed_out:
        out += ["(stopped at the overall time limit)", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def format_raw(trace: Trace) -> bytes:
    """The bodies as received (dot-stuffing undone); with referrals, each
    after a ``==> server <==`` line, as ``tail`` heads several files."""
    bodies = [a for a in trace.answers if a.response.lines is not None]
    if len(bodies) == 1 and not trace.failures:
        return bodies[0].response.body
    chunks = []
    for answer in trace.answers:
        chunks.append(f"==> {answer.server} ({answer.target}): {answer.response} <==\r\n".encode())
        chunks.append(answer.response.body)
    for failure in trace.failures:
        chunks.append(f"==> {failure.server}: not answered: {failure.reason} <==\r\n".encode())
    return b"\r\n".join(chunks)


# -- mtqpd secret ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issued:
    """What ``mtqpd secret`` hands out for an envelope."""

    envid: str  # the id TRACK asks for (decoded)
    keyed_on: str  # the id the secret is derived from
    secret: str  # base64, unpadded
    uri: str


def _trackable(ident: str) -> bool:
    return UNIQUE_ENVID.matches(xtext_encode(ident), parse_all=True)


def issue(store: Store, ident: str, site_key: bytes, host: str, port: int | None = None) -> Issued:
    """The keyed secret of the envelope ``ident`` (ENVID or Message-ID) and
    its URI on ``host``. The id in the URI is the ENVID when it is a valid
    RFC 3885 unique-envid (local@fqhn), else the Message-ID; the secret is
    checked with ``auth.authorise`` against what the server would find for
    that id. ``LookupError`` when the store knows nothing of ``ident`` or
    the keyed secret cannot unlock it."""
    records = auth.lookup(store, ident)
    if not records:
        raise LookupError(f"nothing known of {ident}")
    first = records[0]
    keyed_on = auth.envelope_id(first)
    if keyed_on is None:
        raise LookupError(f"{ident}: the record has neither an ENVID nor a Message-ID to key a secret on")
    if first.certifier:
        raise LookupError(f"{ident}: the envelope carries its own MTRK certifier; only its sender holds the secret")
    secret = auth.encode_secret(auth.keyed_secret(site_key, keyed_on))
    candidates = [bare_message_id(x) for x in (first.envid, first.message_id) if x]
    for candidate in dict.fromkeys(candidates):
        if not _trackable(candidate):
            continue
        found = auth.lookup(store, xtext_encode(candidate))
        if any(r.rid == first.rid for r in found) and auth.authorise(found, secret, site_key=site_key):
            return Issued(candidate, keyed_on, secret, format_uri(host, port, candidate, secret))
    raise LookupError(f"{ident}: neither its ENVID nor its Message-ID is a trackable local@domain id")


# -- the commands -----------------------------------------------------------------


def track_command(
    target: Sequence[str],
    *,
    server: str | None = None,
    starttls: bool = False,
    cafile: str | None = None,
    insecure: bool = False,
    tls_name: str | None = None,
    raw: bool = False,
    follow: bool = True,
    timeout: float = OVERALL_TIMEOUT,
    out: IO[str],
    err: IO[str],
) -> int:
    """``mtqpd track URI`` or ``mtqpd track --server HOST[:PORT] ENVID
    SECRET``: 0 when the server gave tracking information, 1 when it
    answered without (``-ERR/noinfo`` and the like) or could not be asked,
    2 for arguments that make no query."""
    try:
        if server is None:
            if len(target) != 1:
                raise ValueError("give one mtqp:// URI, or --server HOST[:PORT] ENVID SECRET")
            uri = parse_uri(target[0])
            host, port, envid, secret = uri.host, uri.port, uri.envid, uri.secret
        else:
            if len(target) != 2:
                raise ValueError("with --server, give ENVID and SECRET")
            host, port = parse_server(server)
            envid, secret = xtext_encode(target[0]), target[1]
        track_line(envid, secret)
        if tls_name is not None and not DOMAIN.matches(tls_name, parse_all=True):
            raise ValueError(f"--tls-name: not a fully qualified domain name: {tls_name!r}")
    except ValueError as exc:
        print(f"mtqpd track: {exc}", file=err)
        return 2
    try:
        context = tls_context(cafile, insecure=insecure)
    except (OSError, ssl.SSLError) as exc:
        print(f"mtqpd track: --ca {cafile}: {exc}", file=err)
        return 2
    if insecure:
        print("mtqpd track: --insecure: the server's certificate is not checked", file=err)
    policy = TLSPolicy(context, require=starttls, insecure=insecure)
    try:
        trace = trio.run(
            partial(track, host, port, envid, secret, tls=policy, tls_name=tls_name, follow=follow, timeout=timeout)
        )
    except ClientError as exc:
        print(f"mtqpd track: {exc}", file=err)
        return 1
    if raw:
        out.flush()
        out.buffer.write(format_raw(trace))  # type: ignore[attr-defined]
        out.buffer.flush()  # type: ignore[attr-defined]
    else:
        out.write(format_trace(trace))
    return 0 if trace.found else 1


def secret_command(store: Store, ident: str, site_key: bytes, host: str, port: int | None, *, out: IO[str]) -> int:
    """``mtqpd secret ID``: the envelope id to track, the keyed secret, the URI."""
    issued = issue(store, ident, site_key, host, port)
    out.write(f"envid:  {issued.envid}\n")
    if issued.keyed_on != issued.envid:
        out.write(f"keyed:  {issued.keyed_on}\n")
    out.write(f"secret: {issued.secret}\n")
    out.write(f"uri:    {issued.uri}\n")
    return 0
