"""Where lines come from: plain or compressed files, or standard input.

A log is read as text with undecodable bytes replaced, not refused: a
Latin-1 subject in a header-check line must not cost the rest of the file.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import lzma
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def open_binary(path: str) -> IO[bytes]:
    """``-`` for standard input; ``.gz``, ``.bz2`` and ``.xz`` decompressed."""
    if path == "-":
        return sys.stdin.buffer
    for suffix, opener in OPENERS.items():
        if path.endswith(suffix):
            return opener(path, "rb")
    return open(path, "rb")


#: Bytes read at a time. A block is decoded and split in one call each,
#: which costs a fraction of decoding line by line; a small one keeps what
#: a caller makes of its lines in the CPU's cache (on the benchmark log,
#: parsing 1 MiB blocks' lines cost 20% more than 64 KiB blocks' lines).
BLOCK = 1 << 16


def _split_block(data: bytes) -> list[str]:
    """The lines of a block of whole lines, newline and carriage return off.

    Only ``\n`` ends a line (``str.splitlines`` would also cut at form
    feeds and Unicode separators, which a log line may hold), and UTF-8
    never has the byte 0x0A inside a character, so decoding per block is
    decoding per line.
    """
    text = data.decode("utf-8", "replace")
    found = text.split("\n")
    if "\r" in text:
        found = [line.rstrip("\r") for line in found]
    return found


def blocks(raw: IO[bytes], limit: int | None = None) -> Iterator[list[str]]:
    """The lines of ``raw`` from where it stands, a list at a time, the
    last line whether or not a newline ends it; with ``limit``, the lines
    that start within the next ``limit`` bytes."""
    rest = b""
    while limit is None or limit > 0:
        try:
            # read1: what is there, without waiting for a whole block (a pipe).
            data = raw.read1(BLOCK if limit is None else min(BLOCK, limit))  # type: ignore[attr-defined]
        except EOFError:  # a truncated .gz/.bz2/.xz: what it gave counts
            if rest:
                yield _split_block(rest)
            raise
        if not data:
            break
        if limit is not None:
            limit -= len(data)
        data = rest + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield _split_block(data[: cut - 1])
    if rest and limit is not None and limit <= 0:
        rest += raw.readline()  # a range's last line ends past the range
    if rest:
        yield _split_block(rest.removesuffix(b"\n"))


def line_blocks(path: str) -> Iterator[list[str]]:
    """Every line of ``path`` (see ``open_binary``), in order, a list at a time."""
    raw = open_binary(path)
    try:
        yield from blocks(raw)
    finally:
        if path != "-":
            raw.close()


def lines(path: str) -> Iterator[str]:
    """Every line of ``path``, newline kept off, in order."""
    return itertools.chain.from_iterable(line_blocks(path))


def reference_time(path: str) -> datetime:
    """The time no line of ``path`` is much later than: when it was last
    written (a rotated file keeps its mtime), or now for standard input."""
    if path == "-":
        return datetime.now(UTC)
    return datetime.fromtimestamp(os.stat(path).st_mtime, UTC)


#: A piece of one file: path, first byte, end byte.
Segment = tuple[str, int, int]


def cut(paths: list[str], parts: int) -> list[list[Segment]]:
    """Plain files, laid end to end, cut into up to ``parts`` runs of whole
    lines of about equal size, so that each can be read by another process;
    a run is one or more segments of consecutive files."""
    sizes = [os.path.getsize(p) for p in paths]
    total = sum(sizes)
    starts = [0]
    for i in range(1, parts):
        starts.append(max(_line_start(paths, sizes, total * i // parts), starts[-1]))
    starts.append(total)
    runs = []
    for a, b in itertools.pairwise(starts):
        if b <= a:
            continue
        run, offset = [], 0
        for path, size in zip(paths, sizes, strict=True):
            lo, hi = max(a, offset), min(b, offset + size)
            if lo < hi:
                run.append((path, lo - offset, hi - offset))
            offset += size
        runs.append(run)
    return runs


def _line_start(paths: list[str], sizes: list[int], at: int) -> int:
    """The first line start at or after ``at`` in the files laid end to end."""
    offset = 0
    for path, size in zip(paths, sizes, strict=True):
        if at < offset + size:
            if at == offset:
                return at
            with open(path, "rb") as f:
                f.seek(at - offset - 1)
                f.readline()  # to the end of the line holding the byte before ``at``
                return offset + f.tell()
        offset += size
    return offset


def byte_ranges(path: str, parts: int) -> list[tuple[int, int]]:
    """One plain file cut into up to ``parts`` ranges of whole lines."""
    return [(start, end) for [(_, start, end)] in cut([path], parts)]


def blocks_between(path: str, start: int, end: int) -> Iterator[list[str]]:
    """The lines of a plain file that start in [start, end), a list at a time."""
    with open(path, "rb") as raw:
        raw.seek(start)
        yield from blocks(raw, end - start)
