"""The TinyStore's index: where every record is, and what finds it.

An SQLite database (``index.sqlite``, the standard library's B-trees) beside
the segment files. It holds nothing a segment does not also say: it can be
rebuilt from them (``TinyStore.rebuild``), and every record read through it
is checked against what it was looked up by before it is believed. What it
adds is the ability to find one record among millions by reading a few
pages, and one transaction for everything a flush changes (locations,
keys, checkpoints), so that what is on disk is always one flush or the next.

Tables:

- ``recs``: record number -> segment, byte offset and length of its document;
- ``keys``: (hour of arrival, key hash, arrival second, record number), one row
  for each thing a record is found by (queue id, Message-ID, ENVID, next
  hop, sender, recipients). Rows are clustered by hour, so a flush adds
  rows where the B-tree is already in the cache (random keys over the whole
  tree cost 11 us a row at 8M rows, against 2 us), and an hour dropped by
  retention takes its keys with it in one contiguous range. A lookup seeks
  once per hour the store holds (about 2 us each);
- ``segs`` and ``parts``: the segment files, their hour and what retention
  needs to know of them; the hours that have any;
- ``pending``: the segments a flush is rewriting, committed before their
  files are touched, so that a crash in the middle is seen and repaired at
  the next open (``TinyStore._roll_forward``);
- ``changes``: which segments each commit changed, for readers' caches;
- ``meta`` (the store's own counters) and ``user_meta`` (``get_meta``).

A key is hashed to 64 bits (CRC-32 and Adler-32 of its UTF-8, a third of
the cost of blake2b; equal hashes of different keys only cost a record read
that the check then discards).
"""

from __future__ import annotations

import contextlib
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: The format of a store this code writes. 1: hour files and meta.json,
#: no index (mtqpd 0.1). 2: segments and index.sqlite.
FORMAT = 2
INDEX_FILE = "index.sqlite"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = 3600

#: Key kinds: the first character of what is hashed.
QUEUE_ID, MESSAGE_ID, ENVID, NEXT_HOP, SENDER, RECIPIENT = "qmensr"

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE user_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE parts(part INTEGER PRIMARY KEY);
CREATE TABLE segs(
    seg INTEGER PRIMARY KEY,
    part INTEGER NOT NULL,
    records INTEGER NOT NULL,
    queued INTEGER NOT NULL,
    done_first INTEGER,
    done_last INTEGER,
    keep_least INTEGER,
    keep_most INTEGER,
    damaged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX segs_part ON segs(part);
CREATE TABLE recs(rno INTEGER PRIMARY KEY, seg INTEGER NOT NULL, off INTEGER NOT NULL, len INTEGER NOT NULL);
CREATE TABLE keys(
    part INTEGER NOT NULL, h INTEGER NOT NULL, at INTEGER NOT NULL, rno INTEGER NOT NULL,
    PRIMARY KEY(part, h, at, rno)
) WITHOUT ROWID;
CREATE TABLE pending(seg INTEGER PRIMARY KEY);
CREATE TABLE changes(gen INTEGER NOT NULL, seg INTEGER NOT NULL);
CREATE INDEX changes_gen ON changes(gen);
"""

#: Kept of ``changes``: readers further behind than this drop their caches whole.
CHANGES_KEPT = 10_000


class IndexError_(Exception):
    """The index cannot be used: missing, damaged, or of another format."""


def key_hash(kind: str, key: str) -> int:
    """The 64-bit hash a key is filed under, as SQLite's signed integer."""
    raw = (kind + key).encode("utf-8", "surrogatepass")
    return ((zlib.crc32(raw) << 32) | zlib.adler32(raw)) - (1 << 63)


def part_of(when: datetime) -> int:
    """The hour of ``when`` as hours since 1970 (UTC): a partition's number."""
    return int(when.timestamp()) // HOUR


def part_name(part: int) -> str:
    """A partition's name, its UTC hour: ``2026-03-01T13``."""
    when = _EPOCH + timedelta(hours=part)
    return "%04d-%02d-%02dT%02d" % (when.year, when.month, when.day, when.hour)  # noqa: UP031 (as fast as it gets)


def part_start(part: int) -> datetime:
    return _EPOCH + timedelta(hours=part)


def seconds(when: datetime) -> int:
    return int(when.timestamp())


class Index:
    """One connection to a store's index.

    A writer creates the schema and keeps one transaction per flush; a
    reader opens the file read-only and sees each commit as it lands (SQLite
    WAL: readers never block the writer nor wait for it).
    """

    def __init__(self, path: Path, *, readonly: bool, cache_kib: int = 16 << 10) -> None:
        self.path = path
        self.readonly = readonly
        try:
            if readonly:
                self.db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
            else:
                self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
            self.db.execute("PRAGMA temp_store = MEMORY")
            if not readonly:
                # WAL: readers beside the writer. FULL: a commit is on disk
                # before the segment files it announces are touched.
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("PRAGMA busy_timeout = 5000")
            self._check()
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                self.db.close()
            raise IndexError_(f"{path}: {exc}") from None

    def _check(self) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if self.readonly:
                raise IndexError_(f"{self.path}: empty")
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.set_counter("format", FORMAT)
            return
        if "meta" not in tables:
            raise IndexError_(f"{self.path}: not an mtqpd index")
        found = self.counter("format")
        if found != FORMAT:
            raise IndexError_(f"{self.path}: store format {found}, this mtqpd knows {FORMAT}")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self):  # type: ignore[no-untyped-def]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- counters and user meta -------------------------------------------------

    def counter(self, key: str, default: int = 0) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def set_counter(self, key: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap: no I/O)."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # -- reading ----------------------------------------------------------------

    def find(self, h: int, since: int | None = None) -> list[tuple[int, int, int, int]]:
        """(rno, seg, off, len) of every record filed under ``h`` (arrived in
        the hour of ``since`` or later)."""
        if since is None:
            sql = _FIND
            args: tuple[int, ...] = (h,)
        else:
            sql = _FIND_SINCE
            args = (since // HOUR, h)
        return self.db.execute(sql, args).fetchall()

    def find_in(self, part: int, h: int) -> list[tuple[int, int, int, int]]:
        return self.db.execute(_FIND_IN, (part, h)).fetchall()

    def in_part(
        self, part: int, h: int, first: int | None, last: int | None, newest_first: bool
    ) -> list[tuple[int, int, int, int]]:
        """(rno, seg, off, len) under ``h`` in one hour, with arrival seconds
        in [first, last], in arrival order."""
        sql = _IN_PART_DESC if newest_first else _IN_PART_ASC
        lo = first if first is not None else -(1 << 62)
        hi = last if last is not None else 1 << 62
        return self.db.execute(sql, (part, h, lo, hi)).fetchall()

    def rnos_in(self, part: int, hashes: Sequence[int]) -> list[tuple[int, int]]:
        """(h, rno) of the rows of one hour under any of ``hashes``."""
        out: list[tuple[int, int]] = []
        for i in range(0, len(hashes), 500):
            chunk = hashes[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out += self.db.execute(
                f"SELECT h, rno FROM keys WHERE part = ? AND h IN ({marks})", (part, *chunk)
            ).fetchall()
        return out

    def locate(self, rno: int) -> tuple[int, int, int] | None:
        return self.db.execute("SELECT seg, off, len FROM recs WHERE rno = ?", (rno,)).fetchone()

    def locate_many(self, rnos: Sequence[int]) -> dict[int, tuple[int, int, int]]:
        out: dict[int, tuple[int, int, int]] = {}
        for i in range(0, len(rnos), 500):
            chunk = rnos[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for rno, seg, off, length in self.db.execute(
                f"SELECT rno, seg, off, len FROM recs WHERE rno IN ({marks})", chunk
            ):
                out[rno] = (seg, off, length)
        return out

    def parts(self, first: int | None = None, last: int | None = None, newest_first: bool = False) -> list[int]:
        order = "DESC" if newest_first else "ASC"
        return [
            row[0]
            for row in self.db.execute(
                f"SELECT part FROM parts WHERE part BETWEEN ? AND ? ORDER BY part {order}",
                (first if first is not None else -(1 << 62), last if last is not None else 1 << 62),
            )
        ]

    def span(self) -> tuple[int, int] | None:
        row = self.db.execute("SELECT min(part), max(part) FROM parts").fetchone()
        return None if row[0] is None else (row[0], row[1])

    def segments_of(self, part: int) -> list[tuple[int, int, int]]:
        """(seg, records, damaged) of one hour's segments, oldest first."""
        return self.db.execute("SELECT seg, records, damaged FROM segs WHERE part = ? ORDER BY seg", (part,)).fetchall()

    def segment(self, seg: int) -> tuple[int, int, int] | None:
        """(part, records, damaged) of a segment."""
        return self.db.execute("SELECT part, records, damaged FROM segs WHERE seg = ?", (seg,)).fetchone()

    def all_segments(self) -> list[tuple[int, int]]:
        return self.db.execute("SELECT seg, part FROM segs").fetchall()

    def open_segment(self, part: int) -> tuple[int, int] | None:
        """The newest segment of an hour and its record count."""
        return self.db.execute(
            "SELECT seg, records FROM segs WHERE part = ? ORDER BY seg DESC LIMIT 1", (part,)
        ).fetchone()

    def pending(self) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT seg FROM pending ORDER BY seg")]

    def changed_since(self, gen: int) -> list[int] | None:
        """The segments changed by commits after ``gen``; None when the
        record of changes no longer reaches back that far."""
        oldest = self.db.execute("SELECT min(gen) FROM changes").fetchone()[0]
        if oldest is not None and oldest > gen + 1:
            return None
        return [row[0] for row in self.db.execute("SELECT DISTINCT seg FROM changes WHERE gen > ?", (gen,))]

    def expiring(self, done_before: int) -> list[tuple[int, int, int, int, int]]:
        """(seg, part, queued, done_last, keep_most) of segments with a
        record that left the queue before ``done_before`` (seconds)."""
        return self.db.execute(
            "SELECT seg, part, queued, done_last, keep_most FROM segs WHERE done_first < ?", (done_before,)
        ).fetchall()

    def damaged_total(self) -> int:
        return self.db.execute("SELECT coalesce(sum(damaged), 0) FROM segs").fetchone()[0]

    # -- writing (inside ``transaction``) -----------------------------------------

    def mark_pending(self, segs: Iterable[int]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO pending VALUES (?)", [(s,) for s in segs])

    def clear_pending(self) -> None:
        self.db.execute("DELETE FROM pending")

    def put_locations(self, rows: Iterable[tuple[int, int, int, int]]) -> None:
        """(rno, seg, off, len) rows."""
        self.db.executemany("INSERT OR REPLACE INTO recs VALUES (?, ?, ?, ?)", rows)

    def put_keys(self, rows: Iterable[tuple[int, int, int, int]]) -> None:
        """(part, h, at, rno) rows; rows already there stay as they are."""
        self.db.executemany("INSERT OR IGNORE INTO keys VALUES (?, ?, ?, ?)", rows)

    def put_segment(
        self, seg: int, part: int, stats: tuple[int, int, int | None, int | None, int | None, int | None, int]
    ) -> None:
        """A segment's (records, queued, done_first, done_last, keep_least,
        keep_most, damaged)."""
        self.db.execute("INSERT OR REPLACE INTO segs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (seg, part, *stats))
        self.db.execute("INSERT OR IGNORE INTO parts VALUES (?)", (part,))

    def drop_segments(self, segs: Sequence[int]) -> None:
        """Segments whose files are gone, with their records' locations."""
        for seg in segs:
            self.db.execute("DELETE FROM recs WHERE seg = ?", (seg,))
            self.db.execute("DELETE FROM segs WHERE seg = ?", (seg,))

    def drop_locations(self, rnos: Iterable[int]) -> None:
        self.db.executemany("DELETE FROM recs WHERE rno = ?", [(r,) for r in rnos])

    def drop_empty_parts(self) -> list[int]:
        """Hours left without segments, and their keys with them."""
        gone = [row[0] for row in self.db.execute("SELECT part FROM parts WHERE part NOT IN (SELECT part FROM segs)")]
        for part in gone:
            self.db.execute("DELETE FROM keys WHERE part = ?", (part,))
            self.db.execute("DELETE FROM parts WHERE part = ?", (part,))
        return gone

    def note_changes(self, gen: int, segs: Iterable[int]) -> None:
        self.db.executemany("INSERT INTO changes VALUES (?, ?)", [(gen, s) for s in segs])
        self.db.execute("DELETE FROM changes WHERE gen <= ?", (gen - CHANGES_KEPT,))

    def set_user_meta(self, items: Iterable[tuple[str, Any]], json_text: Any) -> None:
        self.db.executemany("INSERT OR REPLACE INTO user_meta VALUES (?, ?)", [(k, json_text(v)) for k, v in items])

    def wipe(self) -> None:
        """Everything but the counters and user meta: for a rebuild."""
        for table in ("recs", "keys", "segs", "parts", "pending", "changes"):
            self.db.execute(f"DELETE FROM {table}")


_FIND = (
    "SELECT k.rno, r.seg, r.off, r.len FROM keys k JOIN recs r ON r.rno = k.rno"
    " WHERE k.part IN (SELECT part FROM parts) AND k.h = ?"
)
_FIND_SINCE = (
    "SELECT k.rno, r.seg, r.off, r.len FROM keys k JOIN recs r ON r.rno = k.rno"
    " WHERE k.part IN (SELECT part FROM parts WHERE part >= ?) AND k.h = ?"
)
_FIND_IN = "SELECT k.rno, r.seg, r.off, r.len FROM keys k JOIN recs r ON r.rno = k.rno WHERE k.part = ? AND k.h = ?"
_IN_PART = (
    "SELECT k.rno, r.seg, r.off, r.len FROM keys k JOIN recs r ON r.rno = k.rno"
    " WHERE k.part = ? AND k.h = ? AND k.at BETWEEN ? AND ?"
)
_IN_PART_ASC = _IN_PART + " ORDER BY k.at, k.rno"
_IN_PART_DESC = _IN_PART + " ORDER BY k.at DESC, k.rno DESC"
