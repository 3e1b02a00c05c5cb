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


def byte_ranges(path: str, parts: int) -> list[tuple[int, int]]:
    """Cut a plain file into up to ``parts`` ranges that begin and end on
    line boundaries, so that each can be read by another process."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(max(size * i // parts, cuts[-1]))
            f.readline()  # to the start of the next line
            cuts.append(min(f.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def blocks_between(path: str, start: int, end: int) -> Iterator[list[str]]:
    """The lines of a plain file that start in [start, end), a list at a time."""
    with open(path, "rb") as raw:
        raw.seek(start)
        yield from blocks(raw, end - start)


def lines_between(path: str, start: int, end: int) -> Iterator[str]:
    """The lines of a plain file that start in [start, end)."""
    return itertools.chain.from_iterable(blocks_between(path, start, end))
