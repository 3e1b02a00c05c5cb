"""The benchmark log generator: deterministic, and its ground truth matches
what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from parsers import parse

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
GENERATE = SAMPLES / "generate.py"


def generate(tmp_path: Path, name: str, *args: str) -> tuple[str, dict]:
    out = tmp_path / name
    subprocess.run([sys.executable, str(GENERATE), *args, "-o", str(out)], check=True, capture_output=True)
    return out.read_text(), json.loads(Path(f"{out}.expected.json").read_text())


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, _ = generate(tmp_path, "a.log", "--messages", "300", "--seed", "7")
    b, _ = generate(tmp_path, "b.log", "--messages", "300", "--seed", "7")
    c, _ = generate(tmp_path, "c.log", "--messages", "300", "--seed", "8")
    assert a == b
    assert a != c


def test_line_target_is_reached(tmp_path: Path) -> None:
    log, _ = generate(tmp_path, "l.log", "--lines", "5000")
    assert 5000 <= len(log.splitlines()) < 5100


def test_ground_truth_matches_the_log(tmp_path: Path) -> None:
    log, truth = generate(tmp_path, "t.log", "--messages", "2000", "--seed", "3")
    lines = log.splitlines()
    for m in truth["messages"]:
        assert f"message-id={m['message_id']}" in log
    rejects = [line for line in lines if "NOQUEUE: reject: RCPT from" in line]
    assert len(rejects) == len(truth["rejections"])
    for r, line in zip(truth["rejections"], rejects, strict=True):
        assert f"to=<{r['recipient']}>" in line
    actions = Counter(r["action"] for m in truth["messages"] for r in m["recipients"])
    assert actions["failed"] == sum("status=bounced" in line for line in lines)
    assert actions["failed"] == sum(1 for m in truth["messages"] if m["bounce_of"])
    assert actions["relayed"] + actions["delivered"] == sum("status=sent" in line for line in lines)
    still_queued = sum(1 for m in truth["messages"] if any(r["action"] == "delayed" for r in m["recipients"]))
    assert sum(line.endswith(": removed") for line in lines) == len(truth["messages"]) - still_queued
    assert {"relayed", "delivered", "failed", "delayed"} <= set(actions)


def test_timestamps_never_go_backwards(tmp_path: Path) -> None:
    log, _ = generate(tmp_path, "r.log", "--messages", "500", "--form", "rfc3339")
    stamps = [line.split(" ", 1)[0] for line in log.splitlines()]
    assert stamps == sorted(stamps)
    assert stamps[0].startswith("2026-03-01T00:00:") and stamps[0].endswith("+00:00")


def shape(line: str) -> tuple:
    """What a line is, without its values: daemon, kind, which fields it has."""
    ev = parse(line)
    status = ev.fields.get("status")
    return (
        ev.program.rpartition("/")[2],
        str(ev.kind),
        status,
        frozenset(k for k, v in ev.fields.items() if v is not None),
    )


def test_every_generated_shape_occurs_in_the_real_postfix_capture(tmp_path: Path) -> None:
    """ "Shapes taken from the real captures": a generated line whose shape
    Postfix never wrote in samples/postfix would benchmark a fiction."""
    log, _ = generate(tmp_path, "s.log", "--messages", "3000", "--seed", "5")
    real = {shape(line) for line in (SAMPLES / "postfix" / "postfix.bsd.log").read_text().splitlines()}
    made = {shape(line) for line in log.splitlines()}
    assert {kind for _, kind, _, _ in made} >= {
        "connect",
        "client",
        "message-id",
        "enqueue",
        "delivery",
        "deferral",
        "bounce",
        "reject",
        "removed",
        "disconnect",
    }
    assert made - real == set()
