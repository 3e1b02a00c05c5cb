"""RFC 3886 message/tracking-status bodies from tracking records, and the
RFC 3887 multipart/related answer to TRACK that carries them.

Pure functions of records and the store they are read against: the store
decides, at read time, whether a relayed recipient was ``transferred`` to a
record this server also holds (``ingest.view``), and such a record is added
to the answer as a part of its own (chaining, RFC 3888; RFC 3887 section 2.4
and examples #10 to #12).

Where the texts disagree, the prose and the ABNF win over the examples:

- RFC 3887's examples write ``type=tracking-status``; RFC 3886 section 3
  says the type parameter is "message/tracking-status", and RFC 2387 wants a
  full media type there, quoted because of the "/".
- RFC 3887 example #7 puts Status after Last-Attempt-Date, and examples
  write ``Status:2.4.0`` and ``Status 5.2.2``; the order and the separator
  here are RFC 3886 section 3.3's ABNF.
- RFC 3464 makes Original-Envelope-Id and Original-Recipient optional, RFC
  3886 sections 3.2.1 and 3.3.1 make them REQUIRED. A legacy MTA logs no
  ENVID, so the id the record is tracked by (its Message-ID, DESIGN.md
  "Identity") stands in, without angle brackets as in RFC 3887's examples;
  and the original recipient is the final one when no ORCPT or ``orig_to``
  was logged, which is what the envelope said when nothing rewrote it.

The text is canonical MIME: CRLF line ends, 7-bit, header-field lines folded
before 78 characters where there is white space to fold at, never longer
than 998. Dot-stuffing belongs to the protocol layer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from ingest.records import TrackingRecord
from ingest.store import Store
from ingest.view import RecipientView, recipients

from .auth import envelope_id

CRLF = "\r\n"
TRACKING_STATUS = "message/tracking-status"
#: RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters, MUST be at most 998.
FOLD_AT = 78
MAX_LINE = 998
#: At most this many records in one answer: RFC 3887 section 2.4 wants a
#: chaining server to answer promptly, and a log can describe a mail loop.
MAX_PARTS = 50

#: RFC 3464 status-code: no leading zeros; RFC 3463 classes 2, 4 and 5.
_STATUS = re.compile(r"[245]\.(?:0|[1-9]\d{0,2})\.(?:0|[1-9]\d{0,2})")
#: The status an action stands for when the logged one is unusable.
_FALLBACK_STATUS = {
    "delivered": "2.0.0",
    "expanded": "2.0.0",
    "transferred": "2.0.0",
    "delayed": "4.0.0",
    "failed": "5.0.0",
}
#: RFC 3886 section 3.3.4: "Message relayed to non-compliant mailer".
RELAYED_STATUS = "2.1.9"
#: RFC 6533 utf-8-addr-xtext: printable ASCII but "+", "=" and "\" stand for themselves.
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"+", "=", "\\"}
_TOKEN = re.compile(r"[ \t]*[^ \t]+(?:[ \t]+$)?")


def _escape(c: str) -> str:
    """A character as RFC 6533's EmbeddedUnicodeChar, ``\\x{HEX}``."""
    return f"\\x{{{ord(c):X}}}"


def _text(value: str) -> str:
    """A field value in 7-bit printable ASCII (RFC 3886 section 3.1 requires
    7bit): anything else, control characters from a hostile log included,
    is escaped rather than allowed to break the field structure."""
    if value.isascii() and value.isprintable():  # the common case: " " to "~" only
        return value
    return "".join(c if " " <= c <= "~" else _escape(c) for c in value)


def _address(address: str) -> str:
    """``address-type; generic-address``: ``rfc822`` for an ASCII address,
    reported exactly (RFC 3464 section 2.3.2); RFC 6533's ``utf-8`` type,
    xtext-escaped, for an internationalised one."""
    if address.isascii() and address.isprintable():  # " " to "~" only
        return f"rfc822; {address}"
    return "utf-8; " + "".join(c if c in _QCHAR else _escape(c) for c in address)


def _status(action: str, status: str | None) -> str:
    """The Status for an action. A relay to a host that is not known to
    speak MTRK is exactly X.1.9's case, so ``relayed`` always reports 2.1.9
    (whatever the next hop's 250 reply said); and 2.1.9 MUST be used
    exclusively with ``relayed`` (RFC 3886 section 3.3.4), so a logged 2.1.9
    on another action falls back to the action's generic code."""
    if action == "relayed":
        return RELAYED_STATUS
    if status is None or status == RELAYED_STATUS or not _STATUS.fullmatch(status):
        return _FALLBACK_STATUS[action]
    return status


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


#: The day part of ``_date`` ("Sun, 01 Mar 2026"), by proleptic ordinal. An
#: answer has two dates or more and a store spans a few weeks, so nearly
#: every day is asked for again and again; the bound is only against a
#: hostile log's stray years.
_DAY_TEXT: dict[int, str] = {}
_DAY_TEXT_MAX = 4096
#: "00" to "59": formatting the time's three numbers costs more than the
#: rest of the date together.
_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))


def _day_text(d: datetime) -> str:
    if len(_DAY_TEXT) >= _DAY_TEXT_MAX:
        _DAY_TEXT.clear()
    text = _DAY_TEXT[d.toordinal()] = "%s, %02d %s %04d" % (  # noqa: UP031 - the format of _date below
        _DAYS[d.weekday()],
        d.day,
        _MONTHS[d.month - 1],
        d.year,
    )
    return text


def _date(value: datetime) -> str:
    """RFC 5322 date-time with a numeric zone, as RFC 3464 requires: the
    text of ``email.utils.format_datetime(value.astimezone(UTC))``, which
    tests/test_render.py checks, without its timetuple and strftime."""
    d = value if value.tzinfo is UTC else value.astimezone(UTC)
    try:
        day = _DAY_TEXT[d.toordinal()]
    except KeyError:
        day = _day_text(d)
    return f"{day} {_TWO_DIGITS[d.hour]}:{_TWO_DIGITS[d.minute]}:{_TWO_DIGITS[d.second]} +0000"


@lru_cache(maxsize=4096)
def _mta_name(name: str) -> str:
    """An MTA name for ``dns;``: a host name as logged, an address as an
    address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``)."""
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return _text(name)
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


def _fold(line: str) -> list[str]:
    """One header-field line folded per RFC 5322 section 2.2.3: a CRLF goes
    before white space, so unfolding gives the line back. A run without white
    space longer than 998 characters (only a hostile log has one) is cut, the
    one place where unfolding adds a space, because the limit is a MUST."""
    if len(line) <= FOLD_AT:
        return [line]
    folded: list[str] = []
    current = ""
    for token in _TOKEN.findall(line):
        if current and len(current) + len(token) > FOLD_AT:
            folded.append(current)
            current = token
        else:
            current += token
    folded.append(current)
    out = []
    for piece in folded:
        while len(piece) > MAX_LINE:
            out.append(piece[:MAX_LINE])
            piece = " " + piece[MAX_LINE:]
        out.append(piece)
    return out


def _joined(lines: list[str]) -> str:
    """Header-field lines, each folded where it must be, CRLF-joined
    (without a final CRLF). Nearly every field is short: they are checked
    all at once, and folded one by one only when one is not."""
    if max(map(len, lines)) <= FOLD_AT:
        return CRLF.join(lines)
    return CRLF.join(piece for line in lines for piece in _fold(line))


# _Block and _Names are never changed once made; they are not frozen only
# because a frozen dataclass's __init__ costs three times as much, and a
# _Block is made for every recipient of every answer.


@dataclass(slots=True)
class _Block:
    """One per-recipient group: ``original`` as the sender gave it (from the
    first hop, when downstream blocks are combined into an upstream part),
    the view of the recipient, and the record that view is of."""

    original: str
    view: RecipientView
    record: TrackingRecord


@dataclass(slots=True)
class _Names:
    """How hosts are named in one answer.

    Records of ``home`` (the host whose logs this server answers for) are
    reported as ``reporting_mta``; records of other hosts whose logs are
    merged in, under their logged host name. ``hide`` is RFC 3887 section 2.4
    and example #12, the firewall that disguises the systems behind it: every
    part is reported as ``reporting_mta``, and so is every internal Remote-MTA.
    """

    home: str
    #: As field text (``_text``): it names nearly every part.
    reporting_mta: str
    hide: bool
    #: Hosts (lower case) of the records in this answer and of their next
    #: hops; only filled in when hiding, the one case that reads it.
    held: frozenset[str]

    def reporter(self, record: TrackingRecord) -> str:
        """The name a record's part is reported under, as field text."""
        return self.reporting_mta if self.hide or record.host == self.home else _text(record.host)

    def internal(self, name: str) -> bool:
        """A host behind the firewall: one whose records this answer holds,
        an address that is not globally routable, or an unqualified name."""
        host = name.strip("[]")
        host = host[5:] if host[:5].lower() == "ipv6:" else host
        try:
            return not ipaddress.ip_address(host).is_global
        except ValueError:
            return host.lower() in self.held or "." not in host

    def remote(self, v: RecipientView) -> str | None:
        """The Remote-MTA of a recipient as field text, or None when there
        is none to give.

        RFC 3886 section 3.3.5: none before any delivery attempt. A transfer
        names the next hop as this answer reports it, so that the tracking
        agent can tell the chained part it is given from one it must ask for.
        """
        if v.last_attempt is None:
            return None
        if v.next_record is not None:
            return self.reporter(v.next_record)
        if v.remote_mta is None:
            return None
        # A local delivery agent's host (RFC 3886 section 3.3.5) is internal.
        if self.hide and (v.action == "delivered" or self.internal(v.remote_mta)):
            return self.reporting_mta
        return _mta_name(v.remote_mta)


def _names(home: str, reporting_mta: str, hide: bool, parts: list[tuple[TrackingRecord, list[_Block]]]) -> _Names:
    if not hide:  # only hiding asks which hosts are held (``internal``)
        return _Names(home, _text(reporting_mta), hide, frozenset())
    held = {record.host.lower() for record, _ in parts}
    held |= {b.view.next_record.host.lower() for _, blocks in parts for b in blocks if b.view.next_record is not None}
    return _Names(home, _text(reporting_mta), hide, frozenset(held))


def _recipient_fields(b: _Block, names: _Names, lines: list[str]) -> None:
    """RFC 3886 section 3.3, in its ABNF's order, after the blank line that
    separates it from the fields before."""
    v = b.view
    action = v.action
    final = _address(v.final)
    lines += (
        "",
        f"Original-Recipient: {final if b.original == v.final else _address(b.original)}",
        f"Final-Recipient: {final}",
        f"Action: {action}",
        f"Status: {_status(action, v.status)}",
    )
    # Section 3.3.5: no Remote-MTA before the first attempt (remote() says None).
    remote = names.remote(v)
    if remote is not None:
        lines.append(f"Remote-MTA: dns; {remote}")
    # Section 3.3.6: REQUIRED once an attempt was made, MUST NOT before. An
    # expansion's is its members' last (ingest.view): they were attempts.
    if v.last_attempt is not None:
        lines.append(f"Last-Attempt-Date: {_date(v.last_attempt)}")
    # Section 3.3.7: only while the message is in the local queue; RFC 3464
    # section 2.3.9: only for "delayed".
    if action == "delayed" and b.record.queued and v.will_retry_until is not None:
        lines.append(f"Will-Retry-Until: {_date(v.will_retry_until)}")


def _content(record: TrackingRecord, blocks: list[_Block], names: _Names) -> str:
    """RFC 3886 section 3.1: tracking-status-content = per-message-fields
    1*(CRLF per-recipient-fields), each line ended by CRLF."""
    ident = envelope_id(record)
    lines = [f"Original-Envelope-Id: {_text(ident)}"] if ident is not None else []
    lines += (f"Reporting-MTA: dns; {names.reporter(record)}", f"Arrival-Date: {_date(record.arrival)}")
    for b in blocks:
        _recipient_fields(b, names, lines)
    return _joined(lines) + CRLF


#: The recipient views of the records of one answer, by record id.
_Views = dict[str, list[RecipientView]]


def _views(record: TrackingRecord, store: Store, memo: _Views) -> list[RecipientView]:
    """``ingest.view.recipients``, once per record and answer: a relayed
    recipient costs a store lookup for its next hop, and an answer needs the
    views both to find where the message started and for its parts."""
    views = memo.get(record.rid)
    if views is None:
        views = memo[record.rid] = recipients(record, store)
    return views


def _origins(records: Sequence[TrackingRecord], store: Store, memo: _Views) -> list[TrackingRecord]:
    """``ingest.view.origins`` from the views: the records that no other of
    them handed the message to (an expansion's members count one by one)."""
    reached = set()
    for record in records:
        for v in _views(record, store, memo):
            for m in v.members or (v,):
                if m.next_record is not None:
                    reached.add(m.next_record.rid)
    return [r for r in records if r.rid not in reached]


def _own_blocks(record: TrackingRecord, store: Store, memo: _Views) -> list[_Block]:
    """One block per original recipient; an expansion is one ``expanded``
    block and nothing of its members (RFC 3886 section 4.2)."""
    return [_Block(v.original, v, record) for v in _views(record, store, memo)]


def tracking_status(record: TrackingRecord, store: Store, *, reporting_mta: str, hide_internal: bool = False) -> str:
    """The message/tracking-status content for one record, as its
    ``reporting_mta`` reports it: the body of one part, without headers."""
    blocks = _own_blocks(record, store, {})
    names = _names(record.host, reporting_mta, hide_internal, [(record, blocks)])
    return _content(record, blocks, names)


def _combined_blocks(record: TrackingRecord, store: Store, seen: set[str], memo: _Views) -> list[_Block]:
    """The record's blocks with each transfer replaced by the blocks of the
    record it went to (RFC 3887 example #11), keeping the sender's original
    recipient. A record reached twice in one chain (a loop) stays a plain
    ``transferred`` block."""
    views = _views(record, store, memo)
    upstream = {v.final.lower(): v.original for v in views if v.next_record is not None}
    taken: set[str] = set()
    out = []
    for v in views:
        nxt = v.next_record
        if nxt is not None and nxt.rid in taken:
            continue  # several recipients went on in one transaction: combined once
        if nxt is None or nxt.rid in seen or len(seen) >= MAX_PARTS:
            out.append(_Block(v.original, v, record))
            continue
        seen.add(nxt.rid)
        taken.add(nxt.rid)
        for b in _combined_blocks(nxt, store, seen, memo):
            out.append(_Block(upstream.get(b.original.lower(), b.original), b.view, b.record))
    return out


def _parts(records: Sequence[TrackingRecord], store: Store, combine: bool) -> list[tuple[TrackingRecord, list[_Block]]]:
    """The records of an answer, each once, where the message started first,
    every chained record right after the one that handed the message on."""
    memo: _Views = {}
    if len(records) == 1:  # nearly every answer: one record that handed nothing on
        record = records[0]
        views = memo[record.rid] = recipients(record, store)
        if all(v.next_record is None for v in views):
            return [(record, [_Block(v.original, v, record) for v in views])]
    starts = [*_origins(records, store, memo), *records]
    seen: set[str] = set()
    parts = []
    for start in starts:
        stack = [start]
        while stack and len(parts) < MAX_PARTS:
            record = stack.pop()
            if record.rid in seen:
                continue
            seen.add(record.rid)
            if combine:
                parts.append((record, _combined_blocks(record, store, seen, memo)))
                continue
            blocks = _own_blocks(record, store, memo)
            parts.append((record, blocks))
            stack += reversed([b.view.next_record for b in blocks if b.view.next_record is not None])
    return parts


def _multipart_head() -> tuple[str, str]:
    """The answer's Content-Type field, folded, as the text before and after
    its boundary. Every boundary is "mtqp-" and 32 hex digits: one token of
    one length, so the field folds the same way whatever the boundary is,
    and is folded once, here, around a stand-in."""
    stand_in = "mtqp-" + "0" * 32
    head = CRLF.join(_fold(f'Content-Type: multipart/related; boundary="{stand_in}"; type="{TRACKING_STATUS}"'))
    before, after = head.split(stand_in)
    return before, after + CRLF + CRLF


_HEAD_BEFORE, _HEAD_AFTER = _multipart_head()
#: The boundary of nearly every answer: fixed, so that no answer has to be
#: hashed to find one (RFC 2046 section 5.1.1 asks only that it occur in no
#: part), and of the form of the hashed one.
BOUNDARY = "mtqp-" + hashlib.sha256(b"mtqpd: message/tracking-status").hexdigest()[:32]
#: What follows each delimiter: the part's own header, then a blank line.
_PART_HEAD = f"{CRLF}Content-Type: {TRACKING_STATUS}{CRLF}{CRLF}"


def tracking_response(
    records: Sequence[TrackingRecord],
    store: Store,
    *,
    reporting_mta: str,
    hide_internal: bool = False,
    combine: bool = False,
) -> str:
    """The body of a TRACK ``+OK+`` answer (RFC 3887 section 4): a
    multipart/related of message/tracking-status parts, one per record, with
    the records the message was transferred to that this server holds added
    after the record that transferred it (example #10). ``hide_internal``
    reports every hop under ``reporting_mta`` (example #12); ``combine``
    folds the downstream per-recipient blocks into the first part (example
    #11).

    The same records give the same text: the boundary is ``BOUNDARY``,
    unless a part contains it (only a log written to that end can put it in
    an address); then it is a hash of the parts, which a part could contain
    only by a SHA-256 preimage.
    """
    if not records:
        raise ValueError("a tracking response needs at least one record")
    parts = _parts(records, store, combine)
    names = _names(parts[0][0].host, reporting_mta, hide_internal, parts)
    bodies = [_content(record, blocks, names) for record, blocks in parts]
    boundary = BOUNDARY
    if any(boundary in body for body in bodies):
        boundary = "mtqp-" + hashlib.sha256(CRLF.join(bodies).encode("ascii")).hexdigest()[:32]
    out = [_HEAD_BEFORE, boundary, _HEAD_AFTER]
    for body in bodies:
        out += ("--", boundary, _PART_HEAD, body, CRLF)
    out += ("--", boundary, "--", CRLF)
    return "".join(out)
