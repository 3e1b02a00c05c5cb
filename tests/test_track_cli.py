"""`mtqpd replay`, `show` and `search`, run as an operator runs them:
subprocesses over the real sample logs and a real store on disk."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
POSTFIX = SAMPLES / "postfix" / "postfix.bsd.log"


def mtqpd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def store_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*.json"))}


def test_replay_then_show_by_message_id_queue_id_and_linked_records(tmp_path: Path) -> None:
    store = tmp_path / "store"
    out = mtqpd("replay", "--store", str(store), str(POSTFIX))
    assert out.returncode == 0, out.stderr
    assert "lines: 218" in out.stdout and "unknown: 0" in out.stdout

    shown = mtqpd("show", "--store", str(store), "--json", "s10.content-filter@client.example.test")
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(records) == 2  # before and after the content filter
    first, second = records
    for r in records:
        assert {
            "host",
            "queue_id",
            "message_id",
            "envid",
            "sender",
            "size",
            "client",
            "arrival",
            "parent",
            "children",
            "recipients",
        } <= set(r)
        for rcpt in r["recipients"]:
            assert {
                "original",
                "final",
                "action",
                "status",
                "diagnostic",
                "remote_mta",
                "last_attempt",
                "will_retry_until",
                "attempts",
            } <= set(rcpt)
    assert [x["action"] for x in first["recipients"]] == ["transferred"]
    assert {"host": "mx1", "queue_id": second["queue_id"], "kind": "queued-as"} in first["children"]
    assert [x["action"] for x in second["recipients"]] == ["delivered"]

    by_qid = mtqpd("show", "--store", str(store), "--json", first["queue_id"])
    assert [json.loads(x)["queue_id"] for x in by_qid.stdout.splitlines()] == [first["queue_id"], second["queue_id"]]

    text = mtqpd("show", "--store", str(store), "<s04.relay-rejected-bounce@client.example.test>")
    assert text.returncode == 0
    assert "s04-reject@relay.test: failed 5.1.1" in text.stdout
    assert "bounce" in text.stdout and text.stdout.count("arrived") == 2  # the message and its NDR


def test_show_unknown_id_and_missing_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    mtqpd("replay", "--store", str(store), str(POSTFIX))
    out = mtqpd("show", "--store", str(store), "<nobody@nowhere>")
    assert out.returncode == 1 and "nothing known of <nobody@nowhere>" in out.stderr
    out = mtqpd("show", "--store", str(tmp_path / "nope"), "x")
    assert out.returncode == 1 and "no store at" in out.stderr


def test_search(tmp_path: Path) -> None:
    store = tmp_path / "store"
    mtqpd("replay", "--store", str(store), str(POSTFIX))
    failed = mtqpd("search", "--store", str(store), "--status", "failed", "--json")
    assert failed.returncode == 0
    ids = {json.loads(x)["message_id"] for x in failed.stdout.splitlines()}
    assert "<s04.relay-rejected-bounce@client.example.test>" in ids
    assert "<s01.local-delivery@client.example.test>" not in ids
    to = mtqpd("search", "--store", str(store), "--to", "alice@mx1.example.test", "--json")
    assert "<s01.local-delivery@client.example.test>" in to.stdout
    none = mtqpd("search", "--store", str(store), "--from", "nobody@example.com")
    assert none.returncode == 1 and none.stdout == ""
    window = mtqpd("search", "--store", str(store), "--since", "2030-01-01")
    assert window.returncode == 1
    bad = mtqpd("search", "--store", str(store), "--since", "yesterday-ish")
    assert bad.returncode == 2 and "not a time" in bad.stderr


def test_replay_is_idempotent_and_reads_rotated_compressed_sets_in_order(tmp_path: Path) -> None:
    lines = POSTFIX.read_text().splitlines(keepends=True)
    third = len(lines) // 3
    logs = tmp_path / "logs"
    logs.mkdir()
    with gzip.open(logs / "mail.log.2.gz", "wt") as f:
        f.writelines(lines[:third])
    (logs / "mail.log.1").write_text("".join(lines[third : 2 * third]))
    (logs / "mail.log").write_text("".join(lines[2 * third :]))
    store = tmp_path / "store"
    args = [str(logs / "mail.log"), str(logs / "mail.log.1"), str(logs / "mail.log.2.gz")]  # newest first
    assert mtqpd("replay", "--store", str(store), *args).returncode == 0
    once = store_files(store)
    assert mtqpd("replay", "--store", str(store), *args).returncode == 0
    assert store_files(store) == once

    whole = tmp_path / "whole"
    assert mtqpd("replay", "--store", str(whole), str(POSTFIX)).returncode == 0
    split_view = mtqpd("search", "--store", str(store), "--json").stdout
    whole_view = mtqpd("search", "--store", str(whole), "--json").stdout
    assert split_view == whole_view and split_view


def test_replay_from_stdin_and_a_missing_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    out = mtqpd("replay", "--store", str(store), "-", str(tmp_path / "missing.log"), stdin=POSTFIX.read_text())
    assert out.returncode == 1
    assert "missing.log" in out.stdout + out.stderr
    assert "lines: 218" in out.stdout
