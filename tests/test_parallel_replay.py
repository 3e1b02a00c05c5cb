"""A replay spread over processes makes the store the sequential replay makes.

Logs are cut at many places (2 to 9 chunks of real MTA logs and of a
generated log with deferrals and bounces spanning hours, over 2 or 3
workers), so that messages in flight at a cut, deferred across several,
and bounces whose parent lies in another chunk all occur; each spread
store is compared record by record with the sequential one.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from ingest import parallel
from ingest.correlator import Settings
from ingest.replay import replay
from ingest.sources import cut, lines
from ingest.store.tiny import TinyStore
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
    return {r.rid: r.to_dict() for r in opened.search(oldest_first=True)}


def sequential(paths: list[str], store: Path) -> dict[str, dict]:
    opened = TinyStore(store)
    replay(paths, opened, settings=SETTINGS)
    opened.close()
    return records(store)


def spread(paths: list[str], store: Path, jobs: int, chunks: int | None = None) -> dict[str, dict]:
    summary = parallel.replay_spread(
        paths, store, settings=SETTINGS, tz=None, mta="auto", jobs=jobs, chunks=chunks or jobs
    )
    got = records(store)
    assert summary.records == len(got) and summary.lines == sum(1 for p in paths for _ in lines(p))
    return got


LOGS = ["postfix/postfix.bsd.log", "postfix/postfix.rfc3339.log", "exim/mainlog", "sendmail/sendmail.bsd.log"]


@pytest.mark.parametrize("log", LOGS)
@pytest.mark.parametrize(("jobs", "chunks"), [(2, 2), (2, 5), (3, 9)])
def test_sample_logs_cut_anywhere(tmp_path: Path, log: str, jobs: int, chunks: int) -> None:
    path = [str(SAMPLES / log)]
    assert spread(path, tmp_path / "spread", jobs, chunks) == sequential(path, tmp_path / "seq")


@pytest.mark.parametrize(("jobs", "chunks"), [(2, 2), (2, 7), (3, 12)])
def test_generated_log_with_spanning_messages(tmp_path: Path, generated: Path, jobs: int, chunks: int) -> None:
    want = sequential([str(generated)], tmp_path / "seq")
    got = spread([str(generated)], tmp_path / "spread", jobs, chunks)
    assert got == want
    # the cuts did fall inside messages: some chunks' keys were carried
    runs = cut([str(generated)], chunks)
    touched = [_keys(run) for run in runs]
    assert len(runs) == chunks and any(a & b for a, b in itertools.pairwise(touched))


def _keys(run: list) -> set:
    steps = list(parallel._correlate(run, SETTINGS, None, "auto", {}))
    return steps[-1].keys()


def test_hours_of_several_chunks(tmp_path: Path) -> None:
    """A log of several hours in several chunks: the workers write the
    records that are done, the parent those in flight at the cuts;
    together, the sequential replay's store."""
    log = tmp_path / "slow.log"
    subprocess.run(
        [sys.executable, str(SAMPLES / "generate.py"), "--lines", "6000", "--rate", "0.1", "--seed", "5", "-o", log],
        check=True,
        capture_output=True,
    )
    want = sequential([str(log)], tmp_path / "seq")
    assert spread([str(log)], tmp_path / "spread", 2, 6) == want
    hours = {p.name.split(".")[0] for p in (tmp_path / "spread" / "records").iterdir()}
    assert len(hours) >= 3, hours


def test_lines_and_ties_read_back_from_the_flat_hits() -> None:
    """Line 1 touches a, line 2 nothing, line 3 b and a (a bounce and its
    parent), line 4 c, line 5 a."""
    done = parallel._Correlation(None, None, None)  # type: ignore[arg-type]
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
    assert spread(paths, tmp_path / "spread", 2, 4) == sequential([str(generated)], tmp_path / "seq")


def test_cut_gives_every_line_once_on_line_boundaries(tmp_path: Path) -> None:
    files = []
    for i, body in enumerate(["a\nbb\nccc\n", "no newline at the end", "\n\nx\n" * 50, "y" * 300 + "\n"]):
        files.append(tmp_path / f"f{i}")
        files[-1].write_text(body)
    want = [text for f in files for text in lines(str(f))]
    for parts in (1, 2, 3, 8, 40):
        runs = cut([str(f) for f in files], parts)
        assert [text for run in runs for _, block in parallel._blocks(run) for text in block] == want, parts


def test_carried_keys_are_closed_under_ties() -> None:
    from ingest.store import MemoryStore

    a, b, c, d, e = (("mx1", q) for q in "ABCDE")
    correlator = parallel.Correlator(MemoryStore(), SETTINGS)
    correlator.dropped.add(a)  # a was written by an earlier chunk
    found = correlator.carried({a, b, c, d, e}, [(a, b), (b, c), (d, e)])
    assert found == {a, b, c}  # b tied to a; c tied to b; d and e are not


def test_a_range_that_fails_is_reported_with_its_traceback(
    tmp_path: Path, generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that fails (here, settling its records) reports its own
    traceback, not the pipe it left broken."""

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
