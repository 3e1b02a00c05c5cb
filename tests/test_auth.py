"""Who may see a record: RFC 3885 certifiers checked as RFC 3887 section 4
says, the keyed certifier that stands in for a log without MTRK, trusted
networks, and finding records by the id a TRACK names."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.records import Recipient, TrackingRecord
from ingest.replay import replay
from ingest.store import MemoryStore
from server import auth
from server.auth import (
    authorise,
    certifier_of,
    decode_secret,
    encode_secret,
    envelope_id,
    is_trusted,
    keyed_secret,
    lookup,
    xtext_decode,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
KEY = b"site key for tests, 32 octets!!!"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S10 = "<s10.content-filter@client.example.test>"


def record(qid: str = "Q1", **kw: object) -> TrackingRecord:
    kw.setdefault("message_id", "<m1@example.com>")
    kw.setdefault("recipients", [Recipient("rcpt@example.org")])
    return TrackingRecord(TrackingRecord.make_rid("mx1", qid, T0), "mx1", qid, "postfix", T0, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def postfix() -> MemoryStore:
    store = MemoryStore()
    replay([str(SAMPLES / "postfix" / "postfix.bsd.log")], store)
    return store


def secret_for(rec: TrackingRecord) -> str:
    ident = envelope_id(rec)
    assert ident is not None
    return encode_secret(keyed_secret(KEY, ident))


# RFC 3887 section 4.1 and its erratum


def test_rfc3887_example_secret_and_its_wrong_hash() -> None:
    """The example's secret decodes to "abcdefgh" and a newline, and the hash
    it states is the SHA-1 of neither (erratum in rfc/README.md). The prose
    rule, SHA1(base64-decoded A) == B, is what is implemented."""
    stated = "734ba8b31975d0dbae4d6e249f4e8da270796c94"
    secret = "YWJjZGVmZ2gK"
    assert decode_secret(secret) == b"abcdefgh\n"
    assert hashlib.sha1(b"abcdefgh\n").hexdigest() != stated
    assert hashlib.sha1(b"abcdefgh").hexdigest() != stated
    by_prose = record(certifier=hashlib.sha1(b"abcdefgh\n").hexdigest())
    by_example = record("Q2", certifier=stated)
    assert authorise([by_prose, by_example], secret, site_key=KEY) == [by_prose]


# the keyed certifier


def test_keyed_secret_is_hmac_sha256_of_the_envelope_id_within_rfc3885_bounds() -> None:
    a = keyed_secret(KEY, "m1@example.com")
    assert a == hmac.new(KEY, b"m1@example.com", hashlib.sha256).digest()
    assert 128 <= len(a) * 8 <= 1024
    assert keyed_secret(KEY, "<m1@example.com>") == a
    assert keyed_secret(KEY, "m2@example.com") != a
    assert keyed_secret(b"another site key", "m1@example.com") != a


def test_keyed_secret_from_the_reused_keyed_hmac_is_a_fresh_hmac_every_time() -> None:
    """The keyed HMAC is made once per key and copied: no derivation may
    see what an earlier one fed it, whatever the order of keys and ids."""
    keys = [KEY, b"another site key", KEY + b"x" * 80]  # the last longer than SHA-256's block
    for _ in range(2):
        for key in keys:
            for ident in ("m1@example.com", "m2@example.com", "m1@example.com"):
                assert keyed_secret(key, ident) == hmac.new(key, ident.encode(), hashlib.sha256).digest()


def test_keyed_certifier_is_sha1_of_the_keyed_secret() -> None:
    rec = record()
    assert certifier_of(rec, KEY) == hashlib.sha1(keyed_secret(KEY, "m1@example.com")).digest()
    assert authorise([rec], secret_for(rec), site_key=KEY) == [rec]


def test_keyed_certifier_follows_envid_when_a_log_revealed_one() -> None:
    rec = record(envid="envelope-7@example.com")
    assert envelope_id(rec) == "envelope-7@example.com"
    assert authorise([rec], encode_secret(keyed_secret(KEY, "envelope-7@example.com")), site_key=KEY) == [rec]
    assert authorise([rec], encode_secret(keyed_secret(KEY, "m1@example.com")), site_key=KEY) == []


def test_envelope_id_envid_then_message_id_then_none() -> None:
    assert envelope_id(record(envid="<e@x>")) == "e@x"
    assert envelope_id(record(message_id=" <m@x> ")) == "m@x"
    assert envelope_id(record(message_id=None)) is None


def test_a_record_without_any_id_is_never_authorised_by_secret() -> None:
    rec = record(message_id=None)
    assert certifier_of(rec, KEY) is None
    empty_id_secret = encode_secret(keyed_secret(KEY, ""))
    assert authorise([rec], empty_id_secret, site_key=KEY) == []
    assert authorise([rec], "", site_key=KEY) == []


def test_sample_records_are_authorised_by_their_message_id_secret(postfix: MemoryStore) -> None:
    found = lookup(postfix, S10)
    assert len(found) == 2  # the content filter re-queued it under a second queue id
    assert authorise(found, secret_for(found[0]), site_key=KEY) == found
    other = lookup(postfix, "<s04.relay-rejected-bounce@client.example.test>")
    assert authorise(other, secret_for(found[0]), site_key=KEY) == []


# a certifier a log recorded


def test_a_logged_certifier_wins_over_the_keyed_one() -> None:
    a = b"\x01" * 24
    rec = record(certifier=hashlib.sha1(a).hexdigest())
    assert certifier_of(rec, KEY) == hashlib.sha1(a).digest()
    assert authorise([rec], encode_secret(a), site_key=KEY) == [rec]
    assert authorise([rec], secret_for(rec), site_key=KEY) == []


def test_a_logged_certifier_in_mtrk_wire_form_base64() -> None:
    a = b"\x02" * 16
    rec = record(certifier=base64.b64encode(hashlib.sha1(a).digest()).decode())
    assert authorise([rec], encode_secret(a), site_key=KEY) == [rec]


def test_a_garbled_logged_certifier_falls_back_to_the_keyed_one() -> None:
    rec = record(certifier="not a certifier")
    assert authorise([rec], secret_for(rec), site_key=KEY) == [rec]


# wrong, malformed, unknown


@pytest.mark.parametrize(
    "secret",
    ["", "!!!!", "a", "abcde", "YWJj=ZGVm", "YWJjZGVmZ2gK===", "YWJj ZGVm", "é", "\ud800", "YWJjZGVmZ2gK\r\n", "=" * 8],
)
def test_malformed_or_wrong_secrets_are_refused_without_an_exception(secret: str) -> None:
    assert authorise([record()], secret, site_key=KEY) == []


def test_unknown_envelope_and_wrong_secret_give_the_same_answer() -> None:
    wrong = encode_secret(b"\x00" * 32)
    assert authorise([], wrong, site_key=KEY) == authorise([record()], wrong, site_key=KEY) == []


def test_unknown_envelope_and_wrong_secret_cost_the_same_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """One HMAC derivation and the same two constant-time comparisons,
    whether the envelope is unknown, keyed, or carries a logged certifier."""
    calls: list[str] = []
    real_keyed, real_compare = auth.keyed_secret, hmac.compare_digest

    def keyed(site_key: bytes, envid: str) -> bytes:
        calls.append("hmac")
        return real_keyed(site_key, envid)

    def compare(a: bytes, b: bytes) -> bool:
        calls.append(f"compare {len(a)} {len(b)}")
        return real_compare(a, b)

    monkeypatch.setattr(auth, "keyed_secret", keyed)
    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    wrong = encode_secret(b"\x00" * 32)
    work = []
    for records in ([], [record()], [record(certifier="ab" * 20)], [record(message_id=None)]):
        calls.clear()
        assert authorise(records, wrong, site_key=KEY) == []
        work.append(list(calls))
        calls.clear()
        assert authorise(records, b"\x00" * 32, site_key=KEY) == []  # decoded already, as the server passes it
        work.append(list(calls))
    calls.clear()
    authorise([], "%%% malformed", site_key=KEY)
    work.append(list(calls))
    assert all(w == ["hmac", "compare 20 20", "compare 32 32"] for w in work[:-1]), work
    assert work[-1] == ["hmac", "compare 20 20", "compare 0 32"]  # a malformed secret is compared as empty


@pytest.mark.parametrize("envid", ["m1@example.com", "envelope-7@example.com"])
def test_a_decoded_secret_is_authorised_as_its_base64_form_is(envid: str) -> None:
    recs = [record(envid="envelope-7@example.com"), record("Q2")]
    a = keyed_secret(KEY, envid)
    assert authorise(recs, a, site_key=KEY) == authorise(recs, encode_secret(a), site_key=KEY) != []
    assert authorise(recs, a[:-1], site_key=KEY) == authorise(recs, encode_secret(a[:-1]), site_key=KEY) == []


def test_secret_with_or_without_padding() -> None:
    """RFC 3885's base64 token has no "=": accept both, print without."""
    rec = record()
    a = keyed_secret(KEY, "m1@example.com")
    assert "=" not in encode_secret(a)
    assert len(encode_secret(a)) == 43
    assert authorise([rec], encode_secret(a), site_key=KEY) == [rec]
    assert authorise([rec], base64.b64encode(a).decode(), site_key=KEY) == [rec]
    assert decode_secret(encode_secret(a)) == a


# trusted networks


def test_trusted_networks_are_off_by_default() -> None:
    assert authorise([record()], "", site_key=KEY, client_ip="127.0.0.1") == []
    assert not is_trusted("127.0.0.1", ())


def test_a_trusted_client_sees_every_record_without_a_secret() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]
    recs = [record(), record("Q2")]
    assert authorise(recs, "garbage", site_key=KEY, client_ip="10.1.2.3", trusted=nets) == recs
    assert authorise(recs, "", site_key=KEY, client_ip="2001:db8::5", trusted=nets) == recs
    assert authorise(recs, "", site_key=KEY, client_ip=ipaddress.ip_address("10.9.9.9"), trusted=nets) == recs
    # An IPv4 client on a dual-stack socket.
    assert authorise(recs, "", site_key=KEY, client_ip="::ffff:10.1.2.3", trusted=nets) == recs


def test_an_untrusted_or_unparsable_client_needs_the_secret() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8")]
    rec = record()
    for ip in ("192.0.2.1", "::1", "not an address", "", None):
        assert authorise([rec], "", site_key=KEY, client_ip=ip, trusted=nets) == []
        assert authorise([rec], secret_for(rec), site_key=KEY, client_ip=ip, trusted=nets) == [rec]


# finding records by the TRACK id


def test_xtext_decode() -> None:
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    assert xtext_decode("+3C12345-20010101@example.com+3E") == "<12345-20010101@example.com>"
    assert xtext_decode("caf+C3+A9") == "café"
    assert xtext_decode("no+hex+zz+2b") == "no+hex+zz+2b"  # RFC 3461: upper-case hex only


def test_lookup_by_envid_in_every_form() -> None:
    store = MemoryStore()
    rec = record(envid="12345-20010101@example.com")
    plus = record("Q2", envid="a+b@example.com", message_id="<m2@example.com>")
    store.put([rec, plus])
    assert lookup(store, "12345-20010101@example.com") == [rec]
    # RFC 3887's examples track "<12345-20010101@example.com>".
    assert lookup(store, "<12345-20010101@example.com>") == [rec]
    assert lookup(store, "+3C12345-20010101@example.com+3E") == [rec]
    assert lookup(store, "a+2Bb@example.com") == [plus]
    assert lookup(store, "unknown@example.com") == []


def test_lookup_by_message_id_with_or_without_brackets(postfix: MemoryStore) -> None:
    found = lookup(postfix, S10)
    assert [r.queue_id for r in found] == ["E09F1160044", "0644B160043"]
    assert lookup(postfix, S10.strip("<>")) == found
    assert lookup(postfix, "+3Cs10.content-filter@client.example.test+3E") == found


def test_lookup_prefers_envid_over_message_id() -> None:
    store = MemoryStore()
    by_envid = record(envid="x@example.com", message_id="<other@example.com>")
    by_mid = record("Q2", message_id="<x@example.com>")
    store.put([by_envid, by_mid])
    assert lookup(store, "<x@example.com>") == [by_envid]


def test_lookup_falls_back_to_the_raw_form_of_an_unencoded_plus() -> None:
    """A Gmail-style Message-ID pasted as is: "+2B" in it means itself."""
    store = MemoryStore()
    rec = record(message_id="<CA+2Bq@mail.example.com>")
    store.put([rec])
    assert lookup(store, "<CA+2Bq@mail.example.com>") == [rec]
