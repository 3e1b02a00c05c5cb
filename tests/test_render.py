"""RFC 3886 message/tracking-status parts and the RFC 3887 multipart/related
TRACK answer, from records replayed out of the real sample logs and from
hand-built records for the edge cases and RFC 3887's examples #10 to #12."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.correlator import Settings
from ingest.records import Recipient, TrackingRecord
from ingest.replay import replay
from ingest.store import MemoryStore
from ingest.view import origins
from server.auth import authorise, lookup
from server.render import (
    _QCHAR,
    BOUNDARY,
    CRLF,
    MAX_PARTS,
    _address,
    _date,
    _escape,
    _text,
    tracking_response,
    tracking_status,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MTA = "mx1.example.test"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# helpers


def split(text: str) -> list[str]:
    """The message/tracking-status bodies of an answer, checking the MIME
    frame on the way: the header, one delimiter per part, the close
    delimiter, nothing else."""
    head, sep, rest = text.partition(CRLF + CRLF)
    assert sep
    m = re.fullmatch(
        r'Content-Type: multipart/related;\r\n boundary="(mtqp-[0-9a-f]{32})";\r\n type="message/tracking-status"',
        head,
    )
    assert m, head
    boundary = m[1]
    chunks = rest.split(f"--{boundary}")
    assert chunks[0] == "" and chunks[-1] == "--" + CRLF
    intro = CRLF + "Content-Type: message/tracking-status" + CRLF + CRLF
    bodies = []
    for chunk in chunks[1:-1]:
        # RFC 3886 section 3.1: a blank line between the last field and the boundary.
        assert chunk.startswith(intro) and chunk.endswith(CRLF + CRLF), chunk
        bodies.append(chunk[len(intro) : -len(CRLF)])
    return bodies


def groups(body: str) -> list[list[tuple[str, str]]]:
    """A body's field groups (per-message first), unfolded, as (name, value)."""
    assert body.endswith(CRLF) and not body.endswith(CRLF + CRLF)
    out = []
    for group in body[: -len(CRLF)].split(CRLF + CRLF):
        unfolded = re.sub(r"\r\n(?=[ \t])", "", group)
        out.append([tuple(line.split(": ", 1)) for line in unfolded.split(CRLF)])
    return out  # type: ignore[return-value]


def fields(text: str) -> list[list[list[tuple[str, str]]]]:
    return [groups(body) for body in split(text)]


def names(group: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in group]


def replayed(mta: str, entries: list[tuple[str, str]]) -> MemoryStore:
    store = MemoryStore()
    for file, host in entries:
        replay([str(SAMPLES / mta / file)], store, settings=Settings(default_host=host))
    return store


@pytest.fixture(scope="module")
def postfix() -> MemoryStore:
    return replayed("postfix", [("postfix.bsd.log", "mx1")])


@pytest.fixture(scope="module")
def exim() -> MemoryStore:
    return replayed("exim", [("mainlog", "mx1"), ("mx2.mainlog", "mx2")])


def first(store: MemoryStore, message_id: str) -> TrackingRecord:
    (found,) = origins(store.by_message_id(message_id), store)
    return found


def rcpt(final: str, action: str = "delivered", status: str = "2.0.0", **kw: object) -> Recipient:
    kw.setdefault("last_attempt", T0)
    return Recipient(final, action=action, status=status, **kw)  # type: ignore[arg-type]


def record(host: str, qid: str, recipients: list[Recipient], *, arrival: datetime = T0, **kw: object) -> TrackingRecord:
    kw.setdefault("message_id", f"<{qid}@example.com>")
    kw.setdefault("removed", arrival + timedelta(minutes=1))
    rid = TrackingRecord.make_rid(host, qid, arrival)
    return TrackingRecord(rid, host, qid, "postfix", arrival, recipients=recipients, **kw)  # type: ignore[arg-type]


def one(rec: TrackingRecord, *others: TrackingRecord, hide: bool = False) -> list[list[tuple[str, str]]]:
    """The groups of a single record's part, read against a store holding it."""
    store = MemoryStore()
    store.put([rec, *others])
    return groups(tracking_status(rec, store, reporting_mta=MTA, hide_internal=hide))


# the sample capture, scenario by scenario

S10_ANSWER = (
    "Content-Type: multipart/related;\r\n"
    ' boundary="mtqp-44ea1d3fa8021124825e337d0f841cf4";\r\n'
    ' type="message/tracking-status"\r\n'
    "\r\n"
    "--mtqp-44ea1d3fa8021124825e337d0f841cf4\r\n"
    "Content-Type: message/tracking-status\r\n"
    "\r\n"
    "Original-Envelope-Id: s10.content-filter@client.example.test\r\n"
    "Reporting-MTA: dns; mx1.example.test\r\n"
    "Arrival-Date: Sun, 29 Nov 2026 02:25:06 +0000\r\n"
    "\r\n"
    "Original-Recipient: rfc822; frank@mx1.example.test\r\n"
    "Final-Recipient: rfc822; frank@mx1.example.test\r\n"
    "Action: transferred\r\n"
    "Status: 2.0.0\r\n"
    "Remote-MTA: dns; mx1.example.test\r\n"
    "Last-Attempt-Date: Sun, 29 Nov 2026 02:25:07 +0000\r\n"
    "\r\n"
    "--mtqp-44ea1d3fa8021124825e337d0f841cf4\r\n"
    "Content-Type: message/tracking-status\r\n"
    "\r\n"
    "Original-Envelope-Id: s10.content-filter@client.example.test\r\n"
    "Reporting-MTA: dns; mx1.example.test\r\n"
    "Arrival-Date: Sun, 29 Nov 2026 02:25:07 +0000\r\n"
    "\r\n"
    "Original-Recipient: rfc822; frank@mx1.example.test\r\n"
    "Final-Recipient: rfc822; frank@mx1.example.test\r\n"
    "Action: delivered\r\n"
    "Status: 2.0.0\r\n"
    "Last-Attempt-Date: Sun, 29 Nov 2026 02:25:07 +0000\r\n"
    "\r\n"
    "--mtqp-44ea1d3fa8021124825e337d0f841cf4--\r\n"
)


def test_s10_content_filter_chains_to_the_requeued_record_exact_text(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s10.content-filter@client.example.test>")
    assert tracking_response([rec], postfix, reporting_mta=MTA) == S10_ANSWER


def test_s10_both_records_found_by_message_id_give_each_part_once_origin_first(postfix: MemoryStore) -> None:
    found = lookup(postfix, "<s10.content-filter@client.example.test>")
    assert len(found) == 2
    assert tracking_response(found, postfix, reporting_mta=MTA) == S10_ANSWER
    assert tracking_response(found[::-1], postfix, reporting_mta=MTA) == S10_ANSWER


def test_tracking_status_is_the_body_of_the_records_part(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s10.content-filter@client.example.test>")
    assert tracking_status(rec, postfix, reporting_mta=MTA) == split(S10_ANSWER)[0]


def test_s10_hidden_names_every_hop_after_this_server(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s10.content-filter@client.example.test>")
    text = tracking_response([rec], postfix, reporting_mta="gateway.example.test", hide_internal=True)
    (msg1, frank1), (msg2, _) = fields(text)
    assert dict(msg1)["Reporting-MTA"] == dict(msg2)["Reporting-MTA"] == "dns; gateway.example.test"
    assert dict(frank1)["Remote-MTA"] == "dns; gateway.example.test"
    assert "dns; mx1" not in text and "127.0.0.1" not in text


def test_s04_bounced(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s04.relay-rejected-bounce@client.example.test>")
    [[msg, r]] = fields(tracking_response([rec], postfix, reporting_mta=MTA))
    assert msg == [
        ("Original-Envelope-Id", "s04.relay-rejected-bounce@client.example.test"),
        ("Reporting-MTA", "dns; mx1.example.test"),
        ("Arrival-Date", "Sun, 29 Nov 2026 02:25:06 +0000"),
    ]
    assert r == [
        ("Original-Recipient", "rfc822; s04-reject@relay.test"),
        ("Final-Recipient", "rfc822; s04-reject@relay.test"),
        ("Action", "failed"),
        ("Status", "5.1.1"),
        ("Remote-MTA", "dns; [127.0.0.1]"),
        ("Last-Attempt-Date", "Sun, 29 Nov 2026 02:25:07 +0000"),
    ]


def test_s08_still_deferred_says_until_when(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s08.still-deferred@client.example.test>")
    [[_, r]] = fields(tracking_response([rec], postfix, reporting_mta=MTA))
    assert r == [
        ("Original-Recipient", "rfc822; s08-later@relay.test"),
        ("Final-Recipient", "rfc822; s08-later@relay.test"),
        ("Action", "delayed"),
        ("Status", "4.2.2"),
        ("Remote-MTA", "dns; [127.0.0.1]"),
        ("Last-Attempt-Date", "Sun, 29 Nov 2026 02:28:16 +0000"),
        ("Will-Retry-Until", "Fri, 04 Dec 2026 02:26:36 +0000"),
    ]


def test_s06_expansion_is_one_expanded_recipient_and_nothing_of_its_members(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s06.alias-expansion@client.example.test>")
    assert len(rec.recipients) == 3  # bob, carol and dave, all orig_to team
    text = tracking_response([rec], postfix, reporting_mta=MTA)
    [[_, r]] = fields(text)
    assert r == [
        ("Original-Recipient", "rfc822; team@mx1.example.test"),
        ("Final-Recipient", "rfc822; team@mx1.example.test"),
        ("Action", "expanded"),
        ("Status", "2.0.0"),
        ("Last-Attempt-Date", "Sun, 29 Nov 2026 02:25:06 +0000"),
    ]
    for member in ("bob", "carol", "dave", "mailbox"):
        assert member not in text


def test_s06_single_alias_keeps_the_original_recipient(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s06.alias-single@client.example.test>")
    [[_, r]] = fields(tracking_response([rec], postfix, reporting_mta=MTA))
    assert r[:3] == [
        ("Original-Recipient", "rfc822; info@mx1.example.test"),
        ("Final-Recipient", "rfc822; erin@mx1.example.test"),
        ("Action", "delivered"),
    ]


def test_s11_second_instance_is_chained(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s11.second-instance@client.example.test>")
    (_, bob1, far1), (_, bob2, far2) = fields(tracking_response([rec], postfix, reporting_mta=MTA))
    actions = [dict(g)["Action"] for g in (bob1, far1, bob2, far2)]
    assert actions == ["transferred", "transferred", "delivered", "relayed"]
    assert dict(far1)["Remote-MTA"] == "dns; mx1.example.test"  # postfix-out logs as mx1 too
    assert dict(far2)["Status"] == "2.1.9"
    assert dict(far2)["Remote-MTA"] == "dns; [127.0.0.1]"
    assert "Remote-MTA" not in dict(bob2)  # local delivery, no remote MTA logged


def test_s11_hidden(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s11.second-instance@client.example.test>")
    text = tracking_response([rec], postfix, reporting_mta=MTA, hide_internal=True)
    (_, _, far1), (msg2, _, far2) = fields(text)
    assert dict(far1)["Remote-MTA"] == dict(msg2)["Reporting-MTA"] == f"dns; {MTA}"
    # The sink the far recipient was relayed to sits on loopback: internal.
    assert dict(far2)["Remote-MTA"] == f"dns; {MTA}"
    assert "127.0.0.1" not in text


def test_exim_s11_chains_to_another_hosts_log(exim: MemoryStore) -> None:
    rec = first(exim, "<s11.second-instance@client.example.test>")
    assert rec.host == "mx1"
    (msg1, carol1, far1), (msg2, carol2, far2) = fields(tracking_response([rec], exim, reporting_mta=MTA))
    assert dict(msg1)["Reporting-MTA"] == f"dns; {MTA}"
    assert dict(carol1)["Remote-MTA"] == dict(far1)["Remote-MTA"] == dict(msg2)["Reporting-MTA"] == "dns; mx2"
    assert (dict(carol2)["Action"], dict(far2)["Action"]) == ("delivered", "relayed")

    text = tracking_response([rec], exim, reporting_mta=MTA, hide_internal=True)
    assert "dns; mx2" not in text and "127.0.0.1" not in text
    assert {v for part in fields(text) for g in part for k, v in g if k.endswith("MTA")} == {f"dns; {MTA}"}


def test_relayed_always_reports_2_1_9(postfix: MemoryStore) -> None:
    rec = first(postfix, "<s02.relay-accepted@client.example.test>")
    assert rec.recipients[0].status == "2.0.0"  # as logged: the next hop's 250
    [[_, r]] = fields(tracking_response([rec], postfix, reporting_mta=MTA))
    assert (dict(r)["Action"], dict(r)["Status"]) == ("relayed", "2.1.9")


def test_every_sample_answer_is_well_formed(postfix: MemoryStore, exim: MemoryStore) -> None:
    """Every record of both captures: the frame, 7-bit CRLF text, the field
    order of RFC 3886 section 3.3, and its MUST / MUST NOT rules."""
    order = [
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Last-Attempt-Date",
        "Will-Retry-Until",
    ]
    for store in (postfix, exim):
        for rec in store.search():
            text = tracking_response([rec], store, reporting_mta=MTA)
            assert text.isascii() and "\n" not in text.replace(CRLF, "")
            assert all(len(line) <= 78 for line in text.split(CRLF))
            for part in fields(text):
                assert names(part[0]) in (
                    ["Original-Envelope-Id", "Reporting-MTA", "Arrival-Date"],
                    ["Reporting-MTA", "Arrival-Date"],
                )
                for g in part[1:]:
                    got = names(g)
                    assert got == [n for n in order if n in got] and got[:4] == order[:4]
                    d = dict(g)
                    assert (d["Status"] == "2.1.9") == (d["Action"] == "relayed")
                    assert "Will-Retry-Until" not in d or d["Action"] == "delayed"
                    assert "Remote-MTA" not in d or "Last-Attempt-Date" in d
                    assert d["Action"] != "expanded" or "Remote-MTA" not in d


# hand-built records: the rules one by one


def test_queued_without_an_attempt() -> None:
    r = rcpt("a@example.org", "delayed", "4.0.0", last_attempt=None, will_retry_until=T0 + timedelta(days=5))
    r.remote_mta = "mx.example.org"  # even if something set one, no attempt means no Remote-MTA
    [_, g] = one(record("mx1", "Q1", [r], removed=None))
    assert g == [
        ("Original-Recipient", "rfc822; a@example.org"),
        ("Final-Recipient", "rfc822; a@example.org"),
        ("Action", "delayed"),
        ("Status", "4.0.0"),
        ("Will-Retry-Until", "Fri, 06 Mar 2026 12:00:00 +0000"),
    ]


def test_will_retry_until_only_for_delayed_and_only_while_queued() -> None:
    until = T0 + timedelta(days=5)
    out_of_queue = record("mx1", "Q1", [rcpt("a@example.org", "delayed", "4.4.1", will_retry_until=until)])
    failed = record("mx1", "Q2", [rcpt("a@example.org", "failed", "5.1.1", will_retry_until=until)], removed=None)
    queued = record("mx1", "Q3", [rcpt("a@example.org", "delayed", "4.4.1", will_retry_until=until)], removed=None)
    assert "Will-Retry-Until" not in dict(one(out_of_queue)[1])
    assert "Will-Retry-Until" not in dict(one(failed)[1])
    assert "Will-Retry-Until" in dict(one(queued)[1])


@pytest.mark.parametrize(
    ("action", "status", "shown"),
    [
        ("delivered", "2.1.9", "2.0.0"),  # 2.1.9 only with relayed
        ("relayed", "2.0.0", "2.1.9"),
        ("relayed", "2.1.5", "2.1.9"),
        ("failed", "4.7.1", "4.7.1"),  # an expiry keeps the deferral's class (RFC 3464)
        ("failed", "5.01.1", "5.0.0"),  # leading zeros are not allowed
        ("failed", "9.9.9", "5.0.0"),
        ("delayed", "4.2.2 injected\r\nX-Evil: 1", "4.0.0"),
        ("delivered", "", "2.0.0"),
        ("delayed", "4.4.1", "4.4.1"),
    ],
)
def test_status(action: str, status: str, shown: str) -> None:
    removed = None if action == "delayed" else T0
    [_, g] = one(record("mx1", "Q1", [rcpt("a@example.org", action, status)], removed=removed))
    assert dict(g)["Status"] == shown


def test_a_transfer_never_reports_2_1_9() -> None:
    hop = rcpt("a@example.org", "relayed", "2.1.9", remote_mta="10.0.0.2", next_hop="Q2")
    nxt = record("mx2", "Q2", [rcpt("a@example.org")])
    [_, g] = one(record("mx1", "Q1", [hop]), nxt)
    assert (dict(g)["Action"], dict(g)["Status"], dict(g)["Remote-MTA"]) == ("transferred", "2.0.0", "dns; mx2")


def test_original_envelope_id_and_original_recipient() -> None:
    r = [rcpt("a@example.org")]
    msg, g = one(record("mx1", "Q1", r, envid="env-1@example.com", message_id="<m@example.com>"))
    assert msg[0] == ("Original-Envelope-Id", "env-1@example.com")
    # No ORCPT logged: the envelope's recipient is the original one.
    assert g[0] == ("Original-Recipient", "rfc822; a@example.org")
    msg, _ = one(record("mx1", "Q1", r, message_id="<m@example.com>"))
    assert msg[0] == ("Original-Envelope-Id", "m@example.com")
    msg, _ = one(record("mx1", "Q1", r, message_id=None))
    assert names(msg) == ["Reporting-MTA", "Arrival-Date"]


def test_remote_mta_names() -> None:
    cases = {
        "mx.example.org": "dns; mx.example.org",
        "192.0.2.7": "dns; [192.0.2.7]",
        "2001:db8::7": "dns; [IPv6:2001:db8::7]",
        "[192.0.2.8]": "dns; [192.0.2.8]",
    }
    for remote, shown in cases.items():
        [_, g] = one(record("mx1", "Q1", [rcpt("a@example.org", "failed", "5.1.1", remote_mta=remote)]))
        assert dict(g)["Remote-MTA"] == shown


@pytest.mark.parametrize(
    ("action", "remote", "hidden"),
    [
        ("delivered", "lmtp.internal.example.com", True),  # the LDA's host
        ("relayed", "mx.elsewhere.example", False),  # the outside world stays visible
        ("failed", "mx.elsewhere.example", False),
        ("relayed", "10.1.2.3", True),
        ("delayed", "::1", True),
        ("failed", "mailhub", True),  # unqualified: a local name
        ("failed", "8.8.8.8", False),
    ],
)
def test_hide_internal_remote_mta(action: str, remote: str, hidden: bool) -> None:
    rec = record("mx1", "Q1", [rcpt("a@example.org", action, "4.4.1", remote_mta=remote)], removed=None)
    [msg, g] = one(rec, hide=True)
    assert dict(msg)["Reporting-MTA"] == f"dns; {MTA}"
    assert (dict(g)["Remote-MTA"] == f"dns; {MTA}") == hidden
    [_, g] = one(rec)
    assert dict(g)["Remote-MTA"] != f"dns; {MTA}"


def test_long_fields_are_folded_at_white_space_and_unfold_unchanged() -> None:
    envid = " ".join(f"word{i:03}" for i in range(40))
    rec = record("mx1", "Q1", [rcpt("a@example.org")], envid=envid)
    body = tracking_status(rec, MemoryStore(), reporting_mta=MTA)
    lines = body.split(CRLF)
    assert all(len(line) <= 78 for line in lines)
    assert sum(line.startswith(" ") for line in lines) >= 4
    assert groups(body)[0][0] == ("Original-Envelope-Id", envid)


def test_no_line_exceeds_998_octets_even_without_white_space() -> None:
    address = "x" * 2500 + "@example.org"
    body = tracking_status(record("mx1", "Q1", [rcpt(address)]), MemoryStore(), reporting_mta=MTA)
    lines = body.split(CRLF)
    assert max(len(line) for line in lines) == 998
    assert all(line.startswith(" ") for line in lines[5:8])  # continuations of Original-Recipient
    # A long word that fits in 998 is left whole (78 is a SHOULD).
    address = "y" * 200 + "@example.org"
    body = tracking_status(record("mx1", "Q1", [rcpt(address)]), MemoryStore(), reporting_mta=MTA)
    assert f"Final-Recipient: rfc822;{CRLF} {address}{CRLF}" in body


def test_the_answer_is_seven_bit() -> None:
    r = rcpt("jörg+tag@exämple.org", "failed", "5.1.1", remote_mta="mx\x1b[2J.example.org")
    [_, g] = one(record("mx1", "Q1", [r], message_id="<ü@example.com>"))
    assert dict(g)["Final-Recipient"] == "utf-8; j\\x{F6}rg\\x{2B}tag@ex\\x{E4}mple.org"
    assert dict(g)["Remote-MTA"] == "dns; mx\\x{1B}[2J.example.org"
    text = tracking_response([record("mx1", "Q1", [r], message_id="<ü@example.com>")], MemoryStore(), reporting_mta=MTA)
    assert text.isascii() and "\x1b" not in text


def test_the_boundary_is_fixed_unless_a_part_contains_it() -> None:
    store = MemoryStore()
    a = record("mx1", "Q1", [rcpt("a@example.org")])
    b = record("mx1", "Q2", [rcpt(f"{BOUNDARY}@example.org")])
    store.put([a, b])
    ta, tb = (tracking_response([r], store, reporting_mta=MTA) for r in (a, b))
    assert re.search(r'boundary="([^"]+)"', ta)[1] == BOUNDARY  # type: ignore[index]
    # A log can put the fixed boundary in an address: then it is the hash
    # of the parts, the same for the same records.
    assert tb == tracking_response([b], store, reporting_mta=MTA)
    boundary = re.search(r'boundary="([^"]+)"', tb)[1]  # type: ignore[index]
    [body] = split(tb)
    assert BOUNDARY in body
    assert boundary == "mtqp-" + hashlib.sha256(body.encode()).hexdigest()[:32]
    assert boundary not in body


def test_no_records_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        tracking_response([], MemoryStore(), reporting_mta=MTA)


def test_a_transfer_loop_ends() -> None:
    a = record("mx1", "QA", [rcpt("a@example.org", "relayed", remote_mta="10.0.0.2", next_hop="QB")])
    b = record("mx2", "QB", [rcpt("a@example.org", "relayed", remote_mta="10.0.0.1", next_hop="QA")])
    store = MemoryStore()
    store.put([a, b])
    assert len(split(tracking_response([a], store, reporting_mta=MTA))) == 2
    [combined] = fields(tracking_response([a], store, reporting_mta=MTA, combine=True))
    assert dict(combined[1])["Action"] == "transferred"  # back to QA, already reported


def test_a_long_chain_is_cut_at_max_parts() -> None:
    chain = [
        record(f"h{i}", f"Q{i}", [rcpt("a@example.org", "relayed", remote_mta="10.0.0.9", next_hop=f"Q{i + 1}")])
        for i in range(MAX_PARTS + 10)
    ]
    store = MemoryStore()
    store.put(chain)
    assert len(split(tracking_response([chain[0]], store, reporting_mta=MTA))) == MAX_PARTS


# RFC 3887 examples #10 to #12, from records
#
# The examples' times are Mon, 1 Jan 2001 15:15:15 -0500 and 19:15:03 -0500;
# answers here give the same instants in UTC. The TRACK id and secret are
# the examples' own, the certifier the SHA-1 of that secret (section 4.1's
# stated hash is an erratum).

ENVID = "12345-20010101@example.com"
ARRIVAL = datetime(2001, 1, 1, 20, 15, 15, tzinfo=UTC)
LAST = datetime(2001, 1, 2, 0, 15, 3, tzinfo=UTC)
CERTIFIER = hashlib.sha1(b"abcdefgh\n").hexdigest()

FIREWALL_PART = (
    f"Original-Envelope-Id: {ENVID}\r\n"
    "Reporting-MTA: dns; example2.com\r\n"
    "Arrival-Date: Mon, 01 Jan 2001 20:15:15 +0000\r\n"
)
USER1 = (
    "Original-Recipient: rfc822; user1@example1.com\r\n"
    "Final-Recipient: rfc822; user1@example1.com\r\n"
    "Action: relayed\r\n"
    "Status: 2.1.9\r\n"
    "Remote-MTA: dns; smtp.example3.com\r\n"
    "Last-Attempt-Date: Tue, 02 Jan 2001 00:15:03 +0000\r\n"
)
USER2_TRANSFERRED = (
    "Original-Recipient: rfc822; user2@example1.com\r\n"
    "Final-Recipient: rfc822; user2@example1.com\r\n"
    "Action: transferred\r\n"
    "Status: 2.0.0\r\n"
    "Remote-MTA: dns; smtp.example3.com\r\n"
    "Last-Attempt-Date: Mon, 01 Jan 2001 20:15:15 +0000\r\n"
)
USER4 = (
    "Original-Recipient: rfc822; user2@example1.com\r\n"
    "Final-Recipient: rfc822; user4@example3.com\r\n"
    "Action: delivered\r\n"
    "Status: 2.5.0\r\n"
)


@pytest.fixture()
def firewall() -> tuple[MemoryStore, list[TrackingRecord]]:
    """example2.com relayed user1 out and transferred user2 to
    smtp.example3.com behind it, whose log it also reads; there user2 was
    delivered as user4 (no attempt time known: no Last-Attempt-Date)."""
    outer = record(
        "example2",
        "E2",
        [
            rcpt("user1@example1.com", "relayed", remote_mta="smtp.example3.com", last_attempt=LAST),
            rcpt("user2@example1.com", "relayed", remote_mta="smtp.example3.com", last_attempt=ARRIVAL, next_hop="Q3"),
        ],
        arrival=ARRIVAL,
        envid=ENVID,
        certifier=CERTIFIER,
    )
    inner = record(
        "smtp.example3.com",
        "Q3",
        [rcpt("user4@example3.com", status="2.5.0", original="user2@example1.com", last_attempt=None)],
        arrival=ARRIVAL,
        envid=ENVID,
        certifier=CERTIFIER,
    )
    store = MemoryStore()
    store.put([outer, inner])
    found = authorise(lookup(store, f"<{ENVID}>"), "YWJjZGVmZ2gK", site_key=b"k")
    assert found == [outer, inner]
    return store, found


def test_rfc3887_example_10_firewall_chaining(firewall: tuple[MemoryStore, list[TrackingRecord]]) -> None:
    """Example #10 shows only user1 in the first part; RFC 3886 has the
    first hop report user2 too, as transferred to the hop whose part follows."""
    store, found = firewall
    assert split(tracking_response(found, store, reporting_mta="example2.com")) == [
        FIREWALL_PART + CRLF + USER1 + CRLF + USER2_TRANSFERRED,
        FIREWALL_PART.replace("dns; example2.com", "dns; smtp.example3.com") + CRLF + USER4,
    ]


def test_rfc3887_example_11_firewall_combining_blocks(firewall: tuple[MemoryStore, list[TrackingRecord]]) -> None:
    store, found = firewall
    text = tracking_response(found, store, reporting_mta="example2.com", combine=True)
    assert split(text) == [FIREWALL_PART + CRLF + USER1 + CRLF + USER4]


def test_rfc3887_example_12_firewall_hiding_names(firewall: tuple[MemoryStore, list[TrackingRecord]]) -> None:
    """Every host behind the firewall is named example2.com. Example #12 also
    shows user4's address under example1.com: rewriting addresses is beyond
    what a log tells, so the final recipient stays as delivered."""
    store, found = firewall
    text = tracking_response(found, store, reporting_mta="example2.com", hide_internal=True)
    user1, user2 = (
        block.replace("dns; smtp.example3.com", "dns; example2.com") for block in (USER1, USER2_TRANSFERRED)
    )
    assert split(text) == [FIREWALL_PART + CRLF + user1 + CRLF + user2, FIREWALL_PART + CRLF + USER4]
    assert "smtp.example3.com" not in text


# the cheap paths of the field renderers give exactly the text of the plain ones


@settings(max_examples=2000, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=st.one_of(
            st.none(),
            st.just(UTC),
            st.builds(
                timezone,
                st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)),
            ),
        ),
    )
)
def test_date_is_the_text_of_email_utils(value: datetime) -> None:
    assert _date(value) == format_datetime(value.astimezone(UTC))


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.text(), st.text(alphabet=st.characters(max_codepoint=0x7F)), st.sampled_from([chr(c) for c in range(0x100)])
    )
)
def test_text_and_address_are_the_escaping_of_every_character(value: str) -> None:
    assert _text(value) == "".join(c if " " <= c <= "~" else _escape(c) for c in value)
    if all(" " <= c <= "~" for c in value):
        assert _address(value) == f"rfc822; {value}"
    else:
        assert _address(value) == "utf-8; " + "".join(c if c in _QCHAR else _escape(c) for c in value)
