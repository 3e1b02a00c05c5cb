"""Who may see a record: RFC 3885 certifiers, checked as RFC 3887 section 4 says.

A TRACK command carries an envelope id and the secret A (base64). The client
is authorised for a record iff SHA1(A) equals the record's certifier B. A
legacy MTA never logs ``MTRK=``, so B usually has to come from elsewhere
(DESIGN.md "Identity and authorisation without MTA changes"):

1. the certifier a log recorded for the envelope;
2. a keyed certifier, B = SHA1(A) with A = HMAC-SHA256(site key, envelope
   id): whoever holds the site key (the operator, ``mtqpd secret``, a sending
   application) can hand A to the originator, and on the wire it is plain
   RFC 3887;
3. trusted client networks, for a site's own helpdesk (off by default).

A wrong secret and an unknown envelope must be indistinguishable, in the
answer and in the time taken: every path below hashes, derives and compares
the same way, against a dummy certifier when there is nothing to compare
with.

Everything here is a pure function; the site key and the networks come from
the caller's configuration.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from ingest.records import TrackingRecord, bare_message_id
from ingest.store import Store

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: RFC 3885's base64 token has no "=" (it lists only the 64 alphabet
#: characters), so a client may send a secret with or without padding.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")
#: RFC 3461 xtext hexchar: "+" and two upper-case hex digits.
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_HEX_CERTIFIER = re.compile(r"[0-9a-fA-F]{40}")
#: What the keyed certifier is derived from when there is no record, so that
#: an unknown envelope costs the same HMAC as a known one.
_NO_ENVELOPE = "\0no such envelope"
#: What SHA1(A) is compared with when no log recorded a certifier.
_NO_CERTIFIER = bytes(hashlib.sha1().digest_size)


def xtext_decode(text: str) -> str:
    """RFC 3461 xtext to text: ``+HH`` is the octet HH (UTF-8 for non-ASCII).

    TRACK's unique-envid is xtext (RFC 3885 section 3.2), while logs and the
    store hold the decoded form.
    """
    if "+" not in text:  # nearly every id: nothing is encoded
        return text
    out = bytearray()
    pos = 0
    for m in _HEXCHAR.finditer(text):
        out += text[pos : m.start()].encode()
        out.append(int(m[1], 16))
        pos = m.end()
    out += text[pos:].encode()
    return out.decode("utf-8", "replace")


def envelope_id(record: TrackingRecord) -> str | None:
    """The id a client tracks this record by: its ENVID when a log revealed
    one, else its Message-ID; without angle brackets either way (RFC 3887's
    own example tracks ``<12345-20010101@example.com>`` and reports
    ``Original-Envelope-Id: 12345-20010101@example.com``)."""
    if record.envid:
        return bare_message_id(record.envid)
    if record.message_id:
        return bare_message_id(record.message_id)
    return None


def lookup(store: Store, envid: str) -> list[TrackingRecord]:
    """The records a TRACK for ``envid`` is about: by ENVID, then by Message-ID.

    ``envid`` is what the client sent: xtext, perhaps in angle brackets. The
    decoded form is tried first; the raw form after it, because clients
    often paste a Message-ID whose "+" was never xtext-encoded
    (``<CA+2Bx@...>`` means itself to them, not ``<CA+x@...>``).
    """
    decoded = xtext_decode(envid)
    forms = (decoded,) if decoded == envid else (decoded, envid)
    for form in forms:
        found = store.by_envid(form)
        if not found and (bare := bare_message_id(form)) != form:  # the same query again would find nothing
            found = store.by_envid(bare)
        if found:
            return found
    for form in forms:
        found = store.by_message_id(form)
        if found:
            return found
    return []


@lru_cache(maxsize=16)
def _keyed_hmac(site_key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed with the site key and fed nothing yet. Keying
    (padding the key, hashing both pads) is half the cost of one HMAC and
    depends only on the key, so each derivation copies this instead. Every
    derivation still copies, feeds and finishes one HMAC: the work stays
    the same for every envelope, known or not."""
    return hmac.new(site_key, digestmod=hashlib.sha256)


def keyed_secret(site_key: bytes, envid: str) -> bytes:
    """The secret A of the keyed certifier: HMAC-SHA256(site key, envelope
    id), 256 bits, inside RFC 3885's 128 to 1024. ``envid`` is the decoded id
    (``envelope_id`` of the record); angle brackets make no difference."""
    mac = _keyed_hmac(site_key).copy()
    mac.update(bare_message_id(envid).encode("utf-8"))
    return mac.digest()


def encode_secret(secret: bytes) -> str:
    """A secret as TRACK and ``mtqp://`` URIs carry it: base64 without the
    "=" padding that RFC 3885's base64 token does not allow."""
    return base64.b64encode(secret).decode("ascii").rstrip("=")


def decode_secret(text: str) -> bytes | None:
    """The secret A from its base64 form, padded or not; None when malformed."""
    core = text.rstrip("=")
    if len(text) - len(core) > 2 or len(core) % 4 == 1 or not _BASE64.fullmatch(core):
        return None
    try:
        return base64.b64decode(core + "=" * (-len(core) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _recorded(certifier: str | None) -> bytes | None:
    """A certifier from a log: hex (the store's form) or base64 (``MTRK=``'s
    wire form, should a front end log it verbatim); None if neither."""
    if not certifier:
        return None
    if _HEX_CERTIFIER.fullmatch(certifier):
        return bytes.fromhex(certifier)
    raw = decode_secret(certifier)
    return raw if raw is not None and len(raw) == hashlib.sha1().digest_size else None


def certifier_of(record: TrackingRecord, site_key: bytes) -> bytes | None:
    """The record's certifier B (20 octets): the logged one, else the keyed
    one; None when the record has neither a certifier nor an id to key."""
    recorded = _recorded(record.certifier)
    if recorded is not None:
        return recorded
    ident = envelope_id(record)
    return hashlib.sha1(keyed_secret(site_key, ident)).digest() if ident is not None else None


def _address(client_ip: str | Address | None) -> Address | None:
    if client_ip is None:
        return None
    if isinstance(client_ip, str):
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return None
    else:
        ip = client_ip  # already parsed (the server's peer address): parsing again only costs
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_trusted(client_ip: str | Address | None, trusted: Iterable[Network]) -> bool:
    """Whether the client is in one of the trusted networks."""
    if not trusted:  # the default: then the address need not be looked at
        return False
    ip = _address(client_ip)
    return ip is not None and any(ip.version == net.version and ip in net for net in trusted)


def authorise(
    records: Sequence[TrackingRecord],
    secret_b64: str | bytes,
    *,
    site_key: bytes,
    client_ip: str | Address | None = None,
    trusted: Iterable[Network] = (),
) -> list[TrackingRecord]:
    """The records the client may see, in the order given.

    ``secret_b64`` is A as TRACK carries it (base64), or as bytes when the
    caller decoded it already (``server.protocol`` does, strictly), which
    spares encoding it only to decode it again.

    Never raises on client input: a malformed secret is a wrong secret.
    Every record costs the same: one HMAC (from a dummy id when there is
    none to key) and two constant-time comparisons, of SHA1(A) with the
    logged certifier (or a dummy) and of A with the keyed secret; with no
    records, one dummy record is compared all the same. The second is the
    keyed certifier's test without hashing the keyed secret: SHA1(A) equals
    SHA1(keyed secret) exactly when A is the keyed secret, short of a SHA-1
    second preimage.
    """
    if is_trusted(client_ip, trusted):
        return list(records)
    secret = secret_b64 if isinstance(secret_b64, bytes) else decode_secret(secret_b64)
    given = secret if secret is not None else b""  # hashed and compared all the same
    digest = hashlib.sha1(given).digest()
    granted = []
    # An unknown envelope is compared like one record that cannot match.
    for record in records or (None,):
        ident = envelope_id(record) if record is not None else None
        keyed = keyed_secret(site_key, ident if ident is not None else _NO_ENVELOPE)
        recorded = _recorded(record.certifier) if record is not None else None
        by_log = hmac.compare_digest(digest, recorded if recorded is not None else _NO_CERTIFIER)
        by_key = hmac.compare_digest(given, keyed)
        if (
            secret is not None
            and record is not None
            and (by_log if recorded is not None else by_key and ident is not None)
        ):
            granted.append(record)
    return granted
