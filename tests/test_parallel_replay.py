"""A replay spread over processes makes the store the sequential replay makes.

Logs are cut at many places (2 to 7 ranges of real MTA logs and of a
generated log with deferrals and bounces spanning hours), so that messages
in flight at a cut, deferred across one, and bounces whose parent lies in
another range all occur; each spread store is compared record by record
with the sequential one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ingest import parallel
from ingest.correlator import Settings
from ingest.replay import replay
from ingest.sources import cut, lines
from ingest.tinystore import TinyStore
from server import cli

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SETTINGS = Settings(default_host="mx1")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "mail.log"
    subprocess.run(
        [sys.executable, str(SAMPLES / "generate.py"), "--lines", "30000", "--seed", "11", "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def records(store: Path) -> dict[str, dict]:
    opened = TinyStore(store, readonly=True)
    return {r.rid: r.to_dict() for r in opened.search()}


def sequential(paths: list[str], store: Path) -> dict[str, dict]:
    opened = TinyStore(store)
    replay(paths, opened, settings=SETTINGS)
    opened.close()
    return records(store)


def spread(paths: list[str], store: Path, jobs: int) -> dict[str, dict]:
    summary = parallel.replay_spread(paths, store, settings=SETTINGS, tz=None, mta="auto", jobs=jobs)
    got = records(store)
    assert summary.records == len(got) and summary.lines == sum(1 for p in paths for _ in lines(p))
    return got


LOGS = ["postfix/postfix.bsd.log", "postfix/postfix.rfc3339.log", "exim/mainlog", "sendmail/sendmail.bsd.log"]


@pytest.mark.parametrize("log", LOGS)
@pytest.mark.parametrize("jobs", [2, 3, 7])
def test_sample_logs_cut_anywhere(tmp_path: Path, log: str, jobs: int) -> None:
    path = [str(SAMPLES / log)]
    assert spread(path, tmp_path / "spread", jobs) == sequential(path, tmp_path / "seq")


@pytest.mark.parametrize("jobs", [2, 5])
def test_generated_log_with_spanning_messages(tmp_path: Path, generated: Path, jobs: int) -> None:
    want = sequential([str(generated)], tmp_path / "seq")
    got = spread([str(generated)], tmp_path / "spread", jobs)
    assert got == want
    # the cuts did fall inside messages: some keys had to be correlated again
    runs = cut([str(generated)], jobs)
    touched = [parallel._correlate(parallel._blocks(run), SETTINGS, None, "auto").keys() for run in runs]
    assert len(runs) == jobs and parallel._spanning(touched, [])


def test_hours_held_by_one_range_are_written_by_it(tmp_path: Path) -> None:
    """A log of several hours: each range writes the hours only it holds
    (their documents made while the parent works), the parent the hours
    around the cut; together, the sequential replay's store."""
    log = tmp_path / "slow.log"
    subprocess.run(
        [sys.executable, str(SAMPLES / "generate.py"), "--lines", "6000", "--rate", "0.1", "--seed", "5", "-o", log],
        check=True,
        capture_output=True,
    )
    want = sequential([str(log)], tmp_path / "seq")
    assert spread([str(log)], tmp_path / "spread", 2) == want
    hours = sorted(p.name for p in (tmp_path / "spread" / "records").iterdir())
    assert len(hours) >= 3, hours  # the first hour is the first range's alone, the last the second's


def test_lines_and_ties_read_back_from_the_flat_hits() -> None:
    """Line 1 touches a, line 2 nothing, line 3 b and a (a bounce and its
    parent), line 4 c, line 5 a."""
    done = parallel._Correlation(None, None)  # type: ignore[arg-type]
    a, b, c = ("h", "A"), ("h", "B"), ("h", "C")
    done.hits += [a, b, a, c, a]
    done.marks.extend([1, 1, 3, 4, 5])
    assert done.lines == 5
    assert done.keys() == {a, b, c}
    assert done.ties() == [(b, a)]
    assert done.lines_touching({a}) == [1, 3, 5]
    assert done.lines_touching({b, c}) == [3, 4]
    assert done.lines_touching(set()) == []


def test_rotated_set_cut_across_files(tmp_path: Path, generated: Path) -> None:
    text = generated.read_text()
    half = text.index("\n", len(text) // 3) + 1
    old, new = tmp_path / "mail.log.1", tmp_path / "mail.log"
    old.write_text(text[:half])
    new.write_text(text[half:])
    paths = [str(new), str(old)]  # the shell's order; replay puts mail.log.1 first
    assert spread(paths, tmp_path / "spread", 4) == sequential([str(generated)], tmp_path / "seq")


def test_cut_gives_every_line_once_on_line_boundaries(tmp_path: Path) -> None:
    files = []
    for i, body in enumerate(["a\nbb\nccc\n", "no newline at the end", "\n\nx\n" * 50, "y" * 300 + "\n"]):
        files.append(tmp_path / f"f{i}")
        files[-1].write_text(body)
    want = [text for f in files for text in lines(str(f))]
    for parts in (1, 2, 3, 8, 40):
        runs = cut([str(f) for f in files], parts)
        assert [text for run in runs for _, block in parallel._blocks(run) for text in block] == want, parts


def test_spanning_keys_are_closed_under_ties() -> None:
    a, b, c, d, e = (("mx1", q) for q in "ABCDE")
    found = parallel._spanning([{a, b, d}, {a, c}, {e}], [(a, b), (b, c), (d, e)])
    assert found == {a, b, c}  # a in two ranges; b tied to a; c tied to b; d and e are not


def test_a_range_that_fails_is_reported_with_its_traceback(
    tmp_path: Path, generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range's process that fails after the first round (here, settling
    its records) reports its own traceback, not the pipe it left broken."""

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("broken settle")

    monkeypatch.setattr(parallel.Correlator, "flush", broken)  # the forked ranges inherit it
    with pytest.raises(parallel.RangeFailed, match="RuntimeError: broken settle"):
        parallel.replay_spread([str(generated)], tmp_path / "store", settings=SETTINGS, tz=None, mta="auto", jobs=2)


def test_a_store_with_records_is_replayed_sequentially(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "SPREAD_FROM", 0)
    log = str(SAMPLES / "postfix/postfix.bsd.log")
    store = tmp_path / "store"
    calls = []
    real = parallel.replay_spread
    monkeypatch.setattr(parallel, "replay_spread", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert cli.main(["replay", "--store", str(store), "--host", "mx1", "--jobs", "3", log]) == 0
    first = records(store)
    assert cli.main(["replay", "--store", str(store), "--host", "mx1", "--jobs", "3", log]) == 0
    assert len(calls) == 1  # the second run found records: sequential, and idempotent
    assert records(store) == first
    with pytest.raises(ValueError, match="not empty"):
        parallel.replay_spread([log], store, settings=SETTINGS, tz=None, mta="auto", jobs=2)
