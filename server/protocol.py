"""The MTQP protocol core (RFC 3887), without I/O.

A ``Connection`` is the server's side of one MTQP session as a pure state
machine, in the manner of h11: the network shell feeds it the bytes it read
(``receive_data``), takes events from it (``next_event``), and asks it for
the bytes of each response (``send_greeting``, ``send_refusal``,
``send_ok``, ``send_error``). It owns no socket, no TLS, no clock and no
task, so every rule of the byte stream and of the session state can be
tested byte by byte, and the shell (sockets, ``trio.SSLStream``, timeouts,
connection caps) stays thin.

What the core decides, and where RFC 3887 leaves room:

* Lines end at LF. A command line must end with CRLF (section 2.2, and the
  ABNF's ``CRLF``); one that ends with a bare LF is answered ``-BAD`` rather
  than run, so that no command is executed from a line the RFC does not
  frame, while a client that sends bare LFs still gets one answer per line.
  A CR inside a line is not printable ASCII, hence ``-BAD`` too.
* A command line holds at most ``MAX_LINE`` (998) octets before its CRLF.
  A longer one is discarded as it arrives, never buffered, and answered
  with one ``-BAD`` when its LF comes; the session goes on. So the part of
  the input that is not yet a line never exceeds ``MAX_LINE + 1`` octets
  (998 and a CR waiting for its LF).
* Trailing white space after the last parameter (or after QUIT) is
  accepted: section 2.2 describes parameters as separated by white space,
  and STARTTLS's own ABNF allows it; nothing can be misread because of it.
  Leading white space and anything else outside the ABNF is ``-BAD``.
* ``unique-envid`` (RFC 3885: ``local-envid "@" fqhn``, both xtext) is
  accepted with or without one enclosing pair of angle brackets, as the
  RFC's own examples send it; the literal brackets are dropped, xtext is
  decoded (RFC 3461), and the decoded value must be printable US-ASCII as
  RFC 3461 section 4.4 requires. An identifier that really contains
  brackets can still be sent as ``+3C``/``+3E``.
* ``mtrk-secret``: RFC 3885's ``base64`` production lists the alphabet
  without the ``=`` padding of RFC 2045 section 6.8, from which it is
  imported. Both the unpadded and the padded forms are accepted; anything
  that does not decode strictly is ``-BAD``. The length rule for A (128 to
  1024 bits) is not enforced here: the RFC's own example uses 72 bits, and
  a secret of the wrong length simply never matches a certifier.
* STARTTLS: a syntactically invalid domain is ``-BAD/bad-fqdn`` (it cannot
  match any certificate, which is what that code reports); STARTTLS when
  the greeting did not offer it is ``-BAD/unsupported`` (section 2.3: an
  unimplemented command is ``-BAD``; section 6: ``/unsupported``); while
  TLS is active it is ``-BAD/tls-in-progress`` (section 6, a MUST).
* STARTTLS ends a pipelined group (sections 6 and 8). Whatever follows a
  well-formed STARTTLS command line in the buffer is discarded unread (and
  counted), never run as commands, and the STARTTLS itself is refused with
  ``-BAD`` (or with the state's own answer above, if it is refused anyway):
  a client that pipelines after STARTTLS is broken, or something on the
  path is injecting commands, and starting TLS would let those bytes pass
  for protected ones. Bytes that arrive after the ``StartTLS`` event was
  handed out but before the shell answered ``+OK`` are discarded too. A
  malformed STARTTLS line is only a ``-BAD`` line: no TLS can follow it.
* After an insecure TLS negotiation (``tls_established(secure=False)``)
  every command but QUIT gets ``-ERR/insecure`` (section 6.1).
* After QUIT is answered, or after a negative greeting, the server has
  said its last word: the state is CLOSING, later input is discarded, and
  ``next_event`` says ``ConnectionClosed`` so that the shell closes.
* A command line that is not complete when the client closes its end is
  never run (commands are terminated by CRLF); its octets are counted as
  discarded.
* Example #4 of section 3.1 (an empty ``+OK+`` greeting) is an alternative
  form; with no options this core always sends example #1's one line.

Wrong use by the shell (answering twice, asking for the next command before
answering the last, a response line over 998 octets, an invalid reason code
or text, a negative answer to QUIT or COMMENT) raises ``LocalProtocolError``
and leaves the state unchanged. Bytes from the client never raise: each
complete line becomes exactly one event.
"""

from __future__ import annotations

import binascii
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import lru_cache

import pyparsing as pp

#: Octets in a command or response line, CRLF excluded (RFC 3887 section 2.2
#: and 2.3, the ABNF's ``dataline = *998OCTET CRLF``).
MAX_LINE = 998


class LocalProtocolError(Exception):
    """The shell asked for something that RFC 3887 or this session's state
    forbids; the core refuses instead of putting wrong bytes on the wire."""


class LineTooLong(LocalProtocolError):
    """A response line would exceed ``MAX_LINE`` octets. The renderer must
    fold (header fields) or shorten (texts) before handing a body over."""


class Status(StrEnum):
    """The status indicators of section 2.3."""

    OK = "+OK"
    OK_DATA = "+OK+"  # success followed by a dot-terminated multi-line body
    TEMP = "-TEMP"
    ERR = "-ERR"
    BAD = "-BAD"


class State(Enum):
    """Where the session is; the shell reads it, the core moves it."""

    GREETING = "greeting"  # a greeting (or a refusal) is owed: at connect, and again after TLS
    COMMANDS = "commands"  # reading commands and answering them in order
    TLS_HANDSHAKE = "tls-handshake"  # STARTTLS was accepted; the shell runs the handshake
    CLOSING = "closing"  # the server said its last word; send it, then close
    CLOSED = "closed"  # the client closed its end and every complete command was handed out


# -- events ----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Track:
    """TRACK: the envelope id (brackets dropped, xtext decoded) and secret A.

    The secret is left out of ``repr`` so that logging an event never logs
    the one value that authorises a query.
    """

    envid: str
    secret: bytes = field(repr=False)


@dataclass(slots=True, frozen=True)
class Comment:
    """COMMENT: the text is for logs only; the answer must be a success."""

    text: str


@dataclass(slots=True, frozen=True)
class StartTLS:
    """STARTTLS: the host name the client believes it speaks to, as sent,
    so that the shell can pick (or fail to find) a certificate for it."""

    fqdn: str


@dataclass(slots=True, frozen=True)
class Quit:
    """QUIT: the answer must be a success, after which the session ends."""


@dataclass(slots=True, frozen=True)
class BadCommand:
    """A command line the core answered itself (malformed, or not allowed
    now). ``response`` is already owed: the shell sends it in order, before
    the bytes of any later response, and need not call a ``send_`` method."""

    status: Status
    code: str | None
    reason: str

    @property
    def response(self) -> bytes:
        return response_line(self.status, (self.code,) if self.code else (), self.reason)


@dataclass(slots=True, frozen=True)
class NeedData:
    """No complete command line is buffered: read more, then ask again."""


@dataclass(slots=True, frozen=True)
class ConnectionClosed:
    """The session is over (the client closed, QUIT was answered, or the
    greeting refused service): the shell closes the connection."""


Command = Track | Comment | StartTLS | Quit
Event = Command | BadCommand | NeedData | ConnectionClosed

# Field-less and frozen, so one instance of each serves every connection.
_NEED_DATA = NeedData()
_CONNECTION_CLOSED = ConnectionClosed()


@dataclass(slots=True)
class Counters:
    """What the shell needs to cap abuse (section 2.5 lets a server limit
    commands and unrecognised commands). They count the whole connection,
    across the STARTTLS reset: the reset is about what the client said,
    and a client must not be able to wipe its record by negotiating TLS."""

    commands: int = 0  # complete command lines turned into events, bad ones included
    bad: int = 0  # of which answered -BAD or -ERR by the core
    discarded: int = 0  # octets never turned into an event (after STARTTLS or QUIT, a torn last line)


# -- the grammar of RFC 3887 section 12 (client side) -----------------------

S = pp.Suppress

WSP = pp.Regex(r"[ \t]+").set_name("WSP")
OWS = pp.Opt(WSP)

# RFC 3461 section 4: xchar is "!" to "~" except "+" and "="; hexchar is "+"
# and two upper-case hex digits.
_XTEXT = r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+"
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_PRINTABLE = re.compile(r"[\t\x20-\x7e]*")


def _unique_envid(s: str, loc: int, toks: pp.ParseResults) -> str:
    """RFC 3885 ``unique-envid = local-envid "@" fqhn``, from the wire form."""
    raw: str = toks[0]
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1]
    # xchar includes "@", so the split point is any literal "@"; one encoded
    # as "+40" is part of an xtext and does not count.
    if "@" not in raw:
        raise pp.ParseException(s, loc, "unique-envid is local-envid@fqhn")
    value = _HEXCHAR.sub(lambda m: chr(int(m[1], 16)), raw)
    if not _PRINTABLE.fullmatch(value):
        raise pp.ParseException(s, loc, "an ENVID decodes to printable US-ASCII (RFC 3461 section 4.4)")
    return value


def _mtrk_secret(s: str, loc: int, toks: pp.ParseResults) -> bytes:
    """Secret A, decoded strictly; the padding RFC 3885's ABNF leaves out is
    restored first, so that both spellings of the same value are one."""
    text: str = toks[0]
    if "=" not in text:
        text += "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        raise pp.ParseException(s, loc, "mtrk-secret is not base64") from None


UNIQUE_ENVID = pp.Regex(_XTEXT).set_name("unique-envid").set_parse_action(_unique_envid)
MTRK_SECRET = pp.Regex(r"[A-Za-z0-9+/]+={0,2}").set_name("mtrk-secret").set_parse_action(_mtrk_secret)
# RFC 2821: sub-domain = Let-dig [Ldh-str]; the RFC 3887 domain has at least one dot.
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
DOMAIN = pp.Regex(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})+").set_name("domain")
TEXT = pp.Regex(r"[\t\x20-\x7e]+").set_name("text")

# White space is never skipped implicitly (leave_whitespace): the ABNF says
# where WSP goes, and "TRACK<id>" must not pass for "TRACK <id>".
track_command = (
    (S(pp.CaselessKeyword("TRACK")) + S(WSP) + UNIQUE_ENVID("envid") + S(WSP) + MTRK_SECRET("secret") + S(OWS))
    .set_parse_action(lambda t: Track(t["envid"], t["secret"]))
    .leave_whitespace()
)
starttls_command = (
    (S(pp.CaselessKeyword("STARTTLS")) + S(WSP) + DOMAIN("fqdn") + S(OWS))
    .set_parse_action(lambda t: StartTLS(t["fqdn"]))
    .leave_whitespace()
)
quit_command = (S(pp.CaselessKeyword("QUIT")) + S(OWS)).set_parse_action(lambda: Quit()).leave_whitespace()
comment_command = (
    (S(pp.CaselessKeyword("COMMENT")) + pp.Opt(S(WSP) + pp.Opt(TEXT("text"))))
    .set_parse_action(lambda t: Comment(t.get("text", "")))
    .leave_whitespace()
)

#: One command line, CRLF removed. Tabs are WSP, not to be expanded to spaces.
CLIENT_COMMAND = (
    ((track_command | starttls_command | quit_command | comment_command) + pp.StringEnd())
    .leave_whitespace()
    .parse_with_tabs()
)

#: Section 3: ``STARTTLS [1*WSP "required"]``, parameters case-insensitive.
STARTTLS_OPTION = (
    (pp.CaselessKeyword("STARTTLS") + pp.Opt(WSP + pp.CaselessKeyword("required")) + pp.StringEnd())
    .leave_whitespace()
    .parse_with_tabs()
)

#: The answer to a known keyword whose parameters do not parse.
_USAGE: dict[str, tuple[str | None, str]] = {
    "TRACK": (None, "Syntax: TRACK unique-envid mtrk-secret"),
    "STARTTLS": ("bad-fqdn", "Syntax: STARTTLS fully-qualified-domain-name"),
    "QUIT": (None, "QUIT takes no parameters"),
}
_KEYWORD_END = re.compile(r"[ \t]")
_COMMAND_LINE = re.compile(rb"[\t\x20-\x7e]*")
_TOO_LONG = BadCommand(Status.BAD, None, f"Line too long (limit {MAX_LINE} octets)")


# -- a fast path for the common lines ----------------------------------------
#
# The grammar above is the definition; these precompiled expressions only
# recognise the well-formed TRACK, QUIT and COMMENT lines a client sends all
# the time, and answer exactly what the grammar answers for them. Anything
# they do not recognise (or a TRACK whose envid or secret the parse actions
# would reject) goes to the grammar, so no error answer is ever produced
# here. tests/test_protocol.py checks the agreement differentially.

# Both tokens are runs of non-WSP characters, so the backtracking of ``re``
# cannot split a line differently from pyparsing's greedy, non-backtracking
# tokens: envid is the whole first token, secret the whole second. The same
# holds with possessive repeats (what follows each token cannot start inside
# it), which spare ``re`` a branch per character of the envid: several
# times faster, and linear whatever the line.
_FAST_XTEXT = r"(?:[!-*,-<>-~]++|\+[0-9A-F]{2})++"
_FAST_TRACK = re.compile(rf"(?i:TRACK)[ \t]+({_FAST_XTEXT})[ \t]+([A-Za-z0-9+/]++={{0,2}})[ \t]*+")
_FAST_QUIT = re.compile(r"(?i:QUIT)[ \t]*")
_FAST_COMMENT = re.compile(r"(?i:COMMENT)(?:[ \t]+([\t\x20-\x7e]*))?")


# The TRACK line as clients send it, matched on the raw line before any
# other check: an envid with an "@", in at most one pair of brackets and
# without "+" hexchars (so there is nothing to decode, and nothing that could
# decode to a control character), then a secret, padded or not. Every octet
# it admits is printable ASCII, it ends with CRLF and the lookahead (constant
# time: "." with DOTALL is not scanned) bounds its length, so a match has
# passed the framing checks too. Other TRACK lines go the general way.
_TRACK_LINE = re.compile(
    rb"(?s:(?=.{0,%d}+\Z))(?i:TRACK)[ \t]++"
    rb"(<)?([!-*,-;?A-~]*+@[!-*,-;?-~]*+)(?(1)>)[ \t]++"  # xchars but "<" and ">" (and "@" before the "@")
    rb"([A-Za-z0-9+/]++)(={0,2}+)[ \t]*+\r\n" % (MAX_LINE + 2)
)


def _fast_command(text: str) -> Command | None:
    """The command on a printable line, or None to ask the grammar."""
    head = text[:1]
    if head in "Tt":
        m = _FAST_TRACK.fullmatch(text)
        if m is None:
            return None
        raw, secret = m.groups()
        if raw.startswith("<") and raw.endswith(">"):
            raw = raw[1:-1]
        if "@" not in raw:
            return None
        if "+" in raw:
            raw = _HEXCHAR.sub(lambda h: chr(int(h[1], 16)), raw)
            if not _PRINTABLE.fullmatch(raw):
                return None
        if "=" not in secret:
            secret += "=" * (-len(secret) % 4)
        try:
            return Track(raw, binascii.a2b_base64(secret, strict_mode=True))
        except binascii.Error:
            return None
    if head in "Qq":
        return Quit() if _FAST_QUIT.fullmatch(text) else None
    if head in "Cc":
        m = _FAST_COMMENT.fullmatch(text)
        return Comment(m[1] or "") if m is not None else None
    return None


def _grammar_command(text: str) -> Command | BadCommand:
    """A printable line (CRLF removed) by the grammar, or its ``-BAD``."""
    try:
        return CLIENT_COMMAND.parse_string(text, parse_all=True)[0]
    except pp.ParseException:
        keyword = _KEYWORD_END.split(text, 1)[0].upper()
        code, reason = _USAGE.get(keyword, (None, "Unknown command"))
        return BadCommand(Status.BAD, code, reason)


def parse_line(line: bytes) -> Command | BadCommand:
    """One received line, terminator included, as a command or as the
    ``-BAD`` that answers it. State is not considered here."""
    m = _TRACK_LINE.fullmatch(line)
    if m is not None:
        _, envid, secret, padding = m.groups()
        try:
            secret = binascii.a2b_base64(secret + (padding or b"=" * (-len(secret) % 4)), strict_mode=True)
        except binascii.Error:
            pass  # _mtrk_secret refuses it too; the grammar words the answer
        else:
            return Track(envid.decode(), secret)
    crlf = line.endswith(b"\r\n")
    body = line[:-2] if crlf else line.removesuffix(b"\n")
    if len(body) > MAX_LINE:
        return _TOO_LONG
    if not crlf:
        return BadCommand(Status.BAD, None, "Command lines end with CRLF")
    if not _COMMAND_LINE.fullmatch(body):
        return BadCommand(Status.BAD, None, "Commands are printable US-ASCII")
    text = body.decode("ascii")
    event = _fast_command(text)
    return event if event is not None else _grammar_command(text)


# -- responses (server side of section 12) ----------------------------------

_NAMECHARS = re.compile(r"[A-Za-z0-9_-]+")
_LINE_SPLIT = re.compile(rb"\r?\n")


def _wire(line: bytes) -> bytes:
    """Every line the server sends is terminated here, so that none can
    escape the limit."""
    if len(line) > MAX_LINE:
        raise LineTooLong(f"response line of {len(line)} octets (limit {MAX_LINE}): {line[:60]!r}...")
    return line + b"\r\n"


def response_line(status: Status, info: Sequence[str] = (), text: str = "") -> bytes:
    """``status response-info opt-text CRLF``: reason codes joined by "/",
    then the human-readable text after one space."""
    return _response_line(status, tuple(info), text)


@lru_cache(maxsize=256)
def _response_line(status: Status, info: tuple[str, ...], text: str) -> bytes:
    """``response_line``, checked and encoded once per distinct line: the
    shell sends a handful of fixed lines over and over (an exception is
    never cached, so a wrong line is refused every time)."""
    for code in info:
        if not _NAMECHARS.fullmatch(code):
            raise LocalProtocolError(f"a reason code is 1*NAMECHAR: {code!r}")
    if not _PRINTABLE.fullmatch(text):
        raise LocalProtocolError(f"response text is printable US-ASCII on one line: {text!r}")
    head = status.value + "".join("/" + code for code in info)
    return _wire((f"{head} {text}" if text else head).encode("ascii"))


def body_lines(body: str | bytes) -> list[bytes]:
    """A body as lines: CRLF and bare LF both end a line (so a renderer may
    use either), a final line terminator is optional, nothing else changes."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    # The same cut as _LINE_SPLIT.split(data): "\r\n" pairs cannot overlap,
    # so the replace drops exactly the CR before each LF. Several times faster.
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def data_block(lines: Sequence[bytes]) -> bytes:
    """The lines of a multi-line response, dot-stuffed, then ``.`` CRLF.

    The limit holds for the line as sent, after stuffing: that is what
    section 2.3 limits and what a client's buffer sees.
    """
    if lines and max(map(len, lines)) < MAX_LINE:
        # Even a stuffed line fits, so the lines are joined at once. When
        # every LF in the joined text is a separator's (no line holds one, as
        # none from body_lines does), "\n." finds exactly the lines to stuff
        # but the first.
        text = b"\r\n".join(lines)
        if text.count(b"\n") == len(lines) - 1:
            text = text.replace(b"\n.", b"\n..")
            return (b"." + text if text[:1] == b"." else text) + b"\r\n.\r\n"
    return b"".join(_wire(b"." + line if line.startswith(b".") else line) for line in lines) + b".\r\n"


def body_block(body: str | bytes) -> bytes:
    """``data_block(body_lines(body))``: a body as a multi-line response.

    A canonical body, ended by CRLF and with every LF in a CRLF (what
    ``server.render`` writes), is stuffed as one text instead of being cut
    into lines and joined again: its lines are then exactly the CRLF pieces
    (a CR elsewhere is line content either way), and when the whole body is
    shorter than ``MAX_LINE`` no line of it can reach the limit, even
    stuffed. Any other body takes the general path."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    canonical = data.endswith(b"\r\n") and data.count(b"\r\n") == data.count(b"\n")
    if canonical and (len(data) < MAX_LINE or max(map(len, data.split(b"\r\n"))) < MAX_LINE):
        data = data.replace(b"\n.", b"\n..")  # without a match, the same object back
        return (b"." + data if data[:1] == b"." else data) + b".\r\n"
    return data_block(body_lines(data))


def _option_lines(option: str) -> list[bytes]:
    """One option specification: an identifier line, then continuation
    lines that start with white space (section 3)."""
    lines = body_lines(option)
    if not lines or not lines[0] or lines[0][:1] in b" \t":
        raise LocalProtocolError(f"an option starts with its identifier: {option!r}")
    for line in lines:
        if not _COMMAND_LINE.fullmatch(line):
            raise LocalProtocolError(f"an option is printable US-ASCII: {option!r}")
    if any(line[:1] not in (b" ", b"\t") for line in lines[1:]):
        raise LocalProtocolError(f"option continuation lines start with white space: {option!r}")
    return lines


def _is_starttls(option: str) -> bool:
    """Whether an option is STARTTLS, whose syntax the core then checks and
    whose presence decides how a STARTTLS command is answered."""
    return option.split(None, 1)[0].upper() == "STARTTLS"


# -- the session ------------------------------------------------------------


class _Skip(Enum):
    """What happens to input up to the next LF (``None``: it is read)."""

    OVERLONG = 1  # the rest of an overlong line: one -BAD at its LF
    SILENT = 2  # the rest of a line that followed STARTTLS: counted, unanswered


# Python 3.11's EnumType defines __getattr__, which takes every ``State.X``
# (and ``Status.X``) off the fast attribute path, about a thousand
# instructions each; the per-command paths use these names instead.
_COMMANDS = State.COMMANDS
_TLS_HANDSHAKE = State.TLS_HANDSHAKE
_CLOSING = State.CLOSING
_OK_DATA = Status.OK_DATA


class Connection:
    """The server side of one MTQP session; see the module's docstring.

    A shell's loop: ``send_greeting()`` (or ``send_refusal()``); then feed
    each read to ``receive_data()`` (``b""`` at end of stream) and call
    ``next_event()`` until ``NeedData``, answering each command before the
    next (``BadCommand`` carries its own answer). On ``StartTLS``: answer,
    and if the answer was ``+OK``, run the handshake on the raw stream,
    call ``tls_established()`` and greet again.
    """

    def __init__(self) -> None:
        self._state = State.GREETING
        self._lines: deque[bytes | None] = deque()  # complete lines; None stands for an overlong one
        self._partial = bytearray()  # the line still waiting for its LF
        self._skip: _Skip | None = None
        self._eof = False
        self._awaiting: Command | None = None
        self._starttls_offered = False
        self._tls = False
        self._secure = True
        self.counters = Counters()

    # -- what the shell may read --

    @property
    def state(self) -> State:
        return self._state

    @property
    def awaiting(self) -> Command | None:
        """The command handed out and not answered yet."""
        return self._awaiting

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def buffered(self) -> int:
        """Octets received and not yet handed out as events. After
        ``next_event()`` returns ``NeedData`` this is at most
        ``MAX_LINE + 1``, whatever the client sends."""
        return len(self._partial) + sum(len(line) for line in self._lines if line is not None)

    # -- input --

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the client; ``b""`` means it closed its end."""
        if self._state is _TLS_HANDSHAKE:
            raise LocalProtocolError("bytes read during the TLS handshake belong to TLS, not to MTQP")
        if self._eof:
            raise LocalProtocolError("receive_data() after the end of the stream")
        if not data:
            self._eof = True
        elif self._state is _CLOSING:
            self.counters.discarded += len(data)
        else:
            self._split(data)

    def _split(self, data: bytes) -> None:
        """Cut the input into lines at once, so that only the incomplete
        last line is ever held as raw bytes, and an overlong one not even
        that."""
        end = len(data)
        if self._skip is None and not self._partial and data.find(b"\n") == end - 1:
            # The usual read, one whole line and nothing pending, without the loop.
            self._lines.append(data if end <= MAX_LINE + 2 else None)
            return
        pos = 0
        while pos < end:
            nl = data.find(b"\n", pos)
            if self._skip is not None:
                if nl < 0:
                    if self._skip is _Skip.SILENT:
                        self.counters.discarded += end - pos
                    return
                if self._skip is _Skip.OVERLONG:
                    self._lines.append(None)
                else:
                    self.counters.discarded += nl + 1 - pos
                self._skip = None
                pos = nl + 1
                continue
            if nl < 0:
                if len(self._partial) + end - pos > MAX_LINE + 1:  # not even 998 octets and a CR
                    self._partial.clear()
                    self._skip = _Skip.OVERLONG
                else:
                    self._partial += data[pos:]
                return
            line = bytes(self._partial) + data[pos : nl + 1] if self._partial else data[pos : nl + 1]
            self._partial.clear()
            self._lines.append(line if len(line) <= MAX_LINE + 2 else None)
            pos = nl + 1

    def next_event(self) -> Event:
        """The next thing the client did, in order."""
        if self._state is not _COMMANDS:
            if self._state is State.GREETING:
                raise LocalProtocolError("send the greeting first")
            if self._state is State.TLS_HANDSHAKE:
                raise LocalProtocolError("finish the TLS handshake (tls_established()) first")
            return _CONNECTION_CLOSED  # CLOSING or CLOSED; nothing is awaiting an answer in either
        if self._awaiting is not None:
            raise LocalProtocolError(f"answer {self._awaiting!r} first")
        if not self._lines:
            if not self._eof:
                return _NEED_DATA
            self._discard_input()
            self._state = State.CLOSED
            return _CONNECTION_CLOSED
        line = self._lines.popleft()
        self.counters.commands += 1
        event = self._admit(parse_line(line) if line is not None else _TOO_LONG)
        if isinstance(event, BadCommand):
            self.counters.bad += 1
        else:
            self._awaiting = event
        return event

    def _admit(self, event: Command | BadCommand) -> Command | BadCommand:
        """The session's verdict on a well-formed command."""
        if isinstance(event, StartTLS):
            dropped = self._discard_input()
            if not self._secure:
                return BadCommand(Status.ERR, "insecure", "TLS negotiation result not acceptable")
            if self._tls:
                return BadCommand(Status.BAD, "tls-in-progress", "TLS is already active")
            if not self._starttls_offered:
                return BadCommand(Status.BAD, "unsupported", "STARTTLS is not offered")
            if dropped:
                return BadCommand(
                    Status.BAD, None, f"STARTTLS must end a pipelined group; {dropped} octets after it discarded"
                )
        elif not self._secure and not isinstance(event, Quit | BadCommand):
            return BadCommand(Status.ERR, "insecure", "TLS negotiation result not acceptable")
        return event

    def _discard_input(self) -> int:
        """Drop everything buffered, and the rest of a line in flight, unread."""
        dropped = self.buffered
        if self._partial or self._skip is not None:
            # A line in flight (torn or overlong): its remainder is not a command either.
            self._skip = _Skip.SILENT
        self._lines.clear()
        self._partial.clear()
        self.counters.discarded += dropped
        return dropped

    # -- output --

    def send_greeting(self, options: Sequence[str] = (), text: str = "MTQP server ready") -> bytes:
        """The initial status response, positive (section 3): ``+OK/MTQP``,
        or ``+OK+/MTQP`` and one option specification per entry (an entry
        may hold continuation lines, each starting with white space)."""
        self._expect_greeting()
        lines = [line for option in options for line in _option_lines(option)]
        starttls = [option for option in options if _is_starttls(option)]
        for option in starttls:
            try:
                STARTTLS_OPTION.parse_string(option, parse_all=True)
            except pp.ParseException:
                raise LocalProtocolError(f'the STARTTLS option is STARTTLS [1*WSP "required"]: {option!r}') from None
        if starttls and self._tls:
            raise LocalProtocolError("STARTTLS must not be offered once TLS is active (RFC 3887 section 6.2)")
        out = response_line(Status.OK_DATA if options else Status.OK, ("MTQP",), text)
        if options:
            out += data_block(lines)
        self._starttls_offered = bool(starttls)
        self._state = State.COMMANDS
        return out

    def send_refusal(self, status: Status, code: str, text: str = "") -> bytes:
        """A negative initial status response (``-TEMP/MTQP/admin``,
        ``-ERR/MTQP/unavailable``), after which the session is over."""
        self._expect_greeting()
        if status not in (Status.TEMP, Status.ERR):
            raise LocalProtocolError(f"a refusal is -TEMP or -ERR, not {status}")
        out = response_line(status, ("MTQP", code), text)
        self._close()
        return out

    def send_ok(self, text: str = "", *, body: str | bytes | None = None) -> bytes:
        """The success response to the command handed out: ``+OK``, or with
        a body ``+OK+`` and the body dot-stuffed and ended by ``.``."""
        command = self._answering()
        if body is None:
            if isinstance(command, Track):
                raise LocalProtocolError("a successful TRACK response is multi-line (RFC 3887 section 4)")
            out = response_line(Status.OK, (), text)
        else:
            out = _response_line(_OK_DATA, (), text) + body_block(body)
        self._awaiting = None
        if isinstance(command, StartTLS):
            self._discard_input()
            self._state = State.TLS_HANDSHAKE
        elif isinstance(command, Quit):
            self._close()
        return out

    def send_error(self, status: Status, code: str | None = None, text: str = "") -> bytes:
        """A negative response to the command handed out: ``-TEMP``,
        ``-ERR`` or ``-BAD``, with a reason code such as noinfo,
        tls-required, insecure, admin, unavailable, bad-fqdn."""
        command = self._answering()
        if status not in (Status.TEMP, Status.ERR, Status.BAD):
            raise LocalProtocolError(f"a negative response is -TEMP, -ERR or -BAD, not {status}")
        if isinstance(command, Comment | Quit):
            raise LocalProtocolError(f"RFC 3887 requires a successful response to {type(command).__name__.upper()}")
        out = response_line(status, (code,) if code else (), text)
        self._awaiting = None
        return out

    def tls_established(self, secure: bool = True) -> None:
        """The handshake after STARTTLS completed. The session starts over
        (section 6.2): a new greeting is owed, and STARTTLS may no longer be
        offered. ``secure=False`` when the negotiated protection is not
        good enough to serve: every command but QUIT then gets
        ``-ERR/insecure`` (section 6.1)."""
        if self._state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("no STARTTLS was accepted")
        self._tls = True
        self._secure = secure
        self._starttls_offered = False
        self._skip = None
        self._state = State.GREETING

    def _expect_greeting(self) -> None:
        if self._state is not State.GREETING:
            raise LocalProtocolError(f"no greeting is owed in state {self._state.value}")

    def _answering(self) -> Command:
        if self._awaiting is None:
            raise LocalProtocolError("no command is waiting for an answer")
        return self._awaiting

    def _close(self) -> None:
        self._discard_input()
        self._state = State.CLOSING
