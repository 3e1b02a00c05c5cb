"""The sample corpus is what every later test is judged against, so its
ground truth must be well formed and must belong to the logs beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MTAS = ("postfix", "exim", "sendmail")
ACTIONS = {"delivered", "relayed", "transferred", "delayed", "failed", "expanded"}
LOG_FORMS = {"syslog-bsd", "syslog-rfc3339", "exim-mainlog", "exim-rejectlog", "exim-syslog"}
STATUS_CLASSES = {"2", "4", "5"}
# Scenario numbers every capture must cover (samples/README.md); 10 is the
# Postfix content filter hop.
REQUIRED_SCENARIOS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12}
# Sendmail writes no from=/msgid= line for the notifications it creates; its
# log links them to their parent by queue id only ("PARENT: CHILD: DSN: ...").
UNLOGGED_NOTIFICATION_IDS = {"sendmail"}


def load(mta: str) -> dict:
    return json.loads((SAMPLES / mta / "expected.json").read_text())


def log_text(mta: str, doc: dict) -> dict[str, str]:
    return {
        entry["file"]: (SAMPLES / mta / entry["file"]).read_text(encoding="utf-8", errors="replace")
        for entry in doc["logs"]
    }


def bare(message_id: str) -> str:
    return message_id[1:-1]


def check_recipient(r: dict, where: str) -> None:
    assert isinstance(r["original"], str) and "@" in r["original"], where
    assert isinstance(r["final"], str), where
    assert r["action"] in ACTIONS, where
    assert r["status"] in STATUS_CLASSES, where
    assert r["path"] and all(a in ACTIONS for a in r["path"]), where
    assert r["path"][-1] == r["action"], f"{where}: the last hop's action is the final action"
    assert all(a == "transferred" for a in r["path"][:-1]), f"{where}: only a transfer leads to a next hop"
    expected_class = {"delivered": "2", "relayed": "2", "transferred": "2", "expanded": "2", "delayed": "4"}
    if r["action"] in expected_class:
        assert r["status"] == expected_class[r["action"]], where
    if r["action"] == "expanded":
        assert r["members"], f"{where}: an expansion has members"
        for m in r["members"]:
            assert m["action"] in ACTIONS and m["status"] in STATUS_CLASSES, where


@pytest.mark.parametrize("mta", MTAS)
def test_expected_is_well_formed(mta: str) -> None:
    doc = load(mta)
    assert doc["mta"] == mta
    assert doc["mta_version"]
    assert doc["hosts"]
    assert doc["logs"], "a capture without logs"
    for entry in doc["logs"]:
        assert entry["form"] in LOG_FORMS, entry
    message_ids = [m["message_id"] for m in doc["messages"]]
    assert len(message_ids) == len(set(message_ids)), "each scenario message has its own Message-ID"
    for m in doc["messages"]:
        where = f"{mta} scenario {m['scenario']} {m['message_id']}"
        assert m["message_id"].startswith("<") and m["message_id"].endswith(">"), where
        assert isinstance(m["sender"], str), where
        assert m["envid"] is None or isinstance(m["envid"], str), where
        assert m["recipients"], where
        for r in m["recipients"]:
            check_recipient(r, where)
        # Links run both ways: a notification names its parent, and the
        # parent names a notification about it.
        if m["bounce_of"] is not None:
            assert m["bounce_of"] in message_ids, where
            assert m["sender"] == "", f"{where}: notifications use the null sender"
        if m["bounce"] is not None:
            child = next(c for c in doc["messages"] if c["message_id"] == m["bounce"])
            assert child["bounce_of"] == m["message_id"], where
    for rej in doc["rejections"]:
        assert rej["status"] in {"4", "5"} and "@" in rej["recipient"], rej
    scenarios = {m["scenario"] for m in doc["messages"]} | {r["scenario"] for r in doc["rejections"]}
    required = REQUIRED_SCENARIOS | ({10} if mta == "postfix" else set())
    assert required <= scenarios, f"missing scenarios {sorted(required - scenarios)}"


@pytest.mark.parametrize("mta", MTAS)
def test_expected_refers_to_its_logs(mta: str) -> None:
    doc = load(mta)
    logs = log_text(mta, doc)  # a dropped log file fails here
    for name, text in logs.items():
        assert text.strip(), f"{mta}/{name} is empty"
    everything = "\n".join(logs.values())
    logged = [m for m in doc["messages"] if m["bounce_of"] is None or mta not in UNLOGGED_NOTIFICATION_IDS]
    assert logged
    for m in logged:
        # Exim logs id= without the angle brackets; the others keep them.
        assert bare(m["message_id"]) in everything, f"{mta}: {m['message_id']} is in no log"
    for rej in doc["rejections"]:
        assert rej["recipient"] in everything, f"{mta}: rejected {rej['recipient']} is in no log"
    # Two forms of one capture (BSD and RFC 3339 syslog) must each hold it all.
    syslog_forms = [e["file"] for e in doc["logs"] if e["form"] in ("syslog-bsd", "syslog-rfc3339")]
    for name in syslog_forms:
        for m in logged:
            assert bare(m["message_id"]) in logs[name], f"{mta}/{name} lacks {m['message_id']}"


def test_every_log_in_a_sample_folder_is_listed() -> None:
    """A log file added to a folder without ground truth would be untested."""
    for mta in MTAS:
        listed = {e["file"] for e in load(mta)["logs"]}
        present = {p.name for p in (SAMPLES / mta).iterdir() if p.name not in ("expected.json", "README.md")}
        assert present == listed, mta
