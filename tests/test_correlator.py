"""Correlation rules that the samples do not exercise on their own:
idempotency, order independence, queue id reuse, hosts kept apart."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.correlator import Correlator, Settings
from ingest.replay import order_logs, replay, rotation_key
from ingest.store import MemoryStore
from ingest.view import recipients
from parsers import Context, parse

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CTX = Context(reference=datetime(2026, 12, 1, tzinfo=UTC))


def snapshot(store: MemoryStore) -> list[dict]:
    return [r.to_dict() for r in store.search(oldest_first=True)]


def apply_lines(lines: list[str], store: MemoryStore, flush_every: int = 0) -> MemoryStore:
    c = Correlator(store, Settings(default_host="mx1"))
    for i, line in enumerate(lines, 1):
        c.apply(parse(line, CTX))
        if flush_every and i % flush_every == 0:
            c.flush()
    c.flush()
    return store


@pytest.mark.parametrize("mta", ["postfix", "sendmail"])
def test_replaying_twice_changes_nothing(mta: str) -> None:
    log = str(SAMPLES / mta / f"{mta}.bsd.log")
    store = MemoryStore()
    replay([log], store)
    once = snapshot(store)
    replay([log], store)
    assert snapshot(store) == once
    assert len(once) > 10


def test_applying_every_event_twice_changes_nothing() -> None:
    lines = (SAMPLES / "postfix" / "postfix.bsd.log").read_text().splitlines()
    once = snapshot(apply_lines(lines, MemoryStore()))
    doubled = [x for line in lines for x in (line, line)]
    assert snapshot(apply_lines(doubled, MemoryStore())) == once


def test_restart_mid_log_with_overlap_gives_the_same_store() -> None:
    """A crash after a flush: the lines since the last checkpoint are applied
    again by a fresh correlator over the same store."""
    lines = (SAMPLES / "exim" / "mainlog").read_text().splitlines()
    clean = snapshot(apply_lines(lines, MemoryStore()))
    store = MemoryStore()
    apply_lines(lines[:90], store)
    apply_lines(lines[60:], store)  # lines 60-89 twice, by a new correlator
    assert snapshot(store) == clean


def test_order_of_lines_within_a_few_seconds_does_not_matter() -> None:
    """Lines of different programs reach syslog in any order within a second."""
    lines = (SAMPLES / "postfix" / "postfix.bsd.log").read_text().splitlines()
    clean = snapshot(apply_lines(lines, MemoryStore()))
    rng = random.Random(7)
    for _ in range(5):
        shuffled: list[str] = []
        by_second: dict[str, list[str]] = {}
        for line in lines:
            by_second.setdefault(line[:15], []).append(line)
        for group in by_second.values():
            rng.shuffle(group)
            shuffled += group
        assert snapshot(apply_lines(shuffled, MemoryStore())) == clean


def test_queue_id_reused_after_removed_starts_a_new_record() -> None:
    lines = [
        "Mar  1 10:00:00 mx1 postfix/smtpd[1]: 1A2B3C4D5E: client=a[192.0.2.1]",
        "Mar  1 10:00:00 mx1 postfix/cleanup[2]: 1A2B3C4D5E: message-id=<first@a>",
        "Mar  1 10:00:00 mx1 postfix/qmgr[3]: 1A2B3C4D5E: from=<x@a>, size=10, nrcpt=1 (queue active)",
        "Mar  1 10:00:01 mx1 postfix/local[4]: 1A2B3C4D5E: to=<u@mx1>, relay=local, delay=1, delays=0/0/0/1, "
        "dsn=2.0.0, status=sent (delivered to mailbox)",
        "Mar  1 10:00:01 mx1 postfix/qmgr[3]: 1A2B3C4D5E: removed",
        "Mar  1 14:00:00 mx1 postfix/smtpd[1]: 1A2B3C4D5E: client=b[192.0.2.2]",
        "Mar  1 14:00:00 mx1 postfix/cleanup[2]: 1A2B3C4D5E: message-id=<second@b>",
        "Mar  1 14:00:00 mx1 postfix/qmgr[3]: 1A2B3C4D5E: from=<y@b>, size=20, nrcpt=1 (queue active)",
    ]
    store = apply_lines(lines, MemoryStore())
    first, second = store.by_queue_id("1A2B3C4D5E")
    assert (first.message_id, first.sender, first.removed is not None) == ("<first@a>", "x@a", True)
    assert (second.message_id, second.sender, second.removed) == ("<second@b>", "y@b", None)
    assert [v.action for v in recipients(first, store)] == ["delivered"]
    assert second.recipients == []


def test_same_queue_id_on_two_hosts_is_two_records() -> None:
    lines = [
        "Mar  1 10:00:00 mx1 postfix/cleanup[2]: 1A2B3C4D5E: message-id=<on-mx1@a>",
        "Mar  1 10:00:00 mx2 postfix/cleanup[2]: 1A2B3C4D5E: message-id=<on-mx2@a>",
    ]
    store = apply_lines(lines, MemoryStore())
    assert sorted((r.host, r.message_id) for r in store.by_queue_id("1A2B3C4D5E")) == [
        ("mx1", "<on-mx1@a>"),
        ("mx2", "<on-mx2@a>"),
    ]


def test_delivery_before_enqueue_line_is_one_record() -> None:
    lines = [
        "Mar  1 10:00:01 mx1 postfix/smtp[4]: 1A2B3C4D5E: to=<r@far.example>, relay=mx.far.example[198.51.100.1]:25,"
        " delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)",
        "Mar  1 10:00:00 mx1 postfix/qmgr[3]: 1A2B3C4D5E: from=<x@a>, size=10, nrcpt=1 (queue active)",
        "Mar  1 10:00:01 mx1 postfix/qmgr[3]: 1A2B3C4D5E: removed",
    ]
    store = apply_lines(lines, MemoryStore())
    (rec,) = store.by_queue_id("1A2B3C4D5E")
    assert rec.sender == "x@a" and rec.arrival == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert [(v.action, v.remote_mta) for v in recipients(rec, store)] == [("relayed", "mx.far.example")]


def test_rotated_sets_are_read_oldest_first_whatever_the_argument_order() -> None:
    given = ["/l/mail.log", "/l/mail.log.1", "/l/mail.log.3.gz", "/l/mail.log.2.gz", "/l/mainlog", "/l/mainlog.1"]
    assert order_logs(given) == [
        "/l/mail.log.3.gz",
        "/l/mail.log.2.gz",
        "/l/mail.log.1",
        "/l/mail.log",
        "/l/mainlog.1",
        "/l/mainlog",
    ]
    dated = ["/l/maillog", "/l/maillog-20260308.gz", "/l/maillog-20260301.gz", "/l/maillog-20260315"]
    assert order_logs(dated) == [
        "/l/maillog-20260301.gz",
        "/l/maillog-20260308.gz",
        "/l/maillog-20260315",
        "/l/maillog",
    ]
    assert rotation_key("/l/mail.log.10.gz") < rotation_key("/l/mail.log.9.gz")
    assert order_logs(["-", "/l/a.log"]) == ["/l/a.log", "-"]
