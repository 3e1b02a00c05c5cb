"""Where lines come from: plain or compressed files, or standard input.

A log is read as text with undecodable bytes replaced, not refused: a
Latin-1 subject in a header-check line must not cost the rest of the file.
"""

from __future__ import annotations

import bz2
import gzip
import io
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


def lines(path: str) -> Iterator[str]:
    """Every line of ``path``, newline kept off, in order."""
    raw = open_binary(path)
    try:
        with io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n") as text:
            for line in text:
                yield line.rstrip("\r\n")
    finally:
        if path != "-":
            raw.close()


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


def lines_between(path: str, start: int, end: int) -> Iterator[str]:
    """The lines of a plain file that start in [start, end)."""
    with open(path, "rb") as raw:
        raw.seek(start)
        remaining = end - start
        for chunk in raw:
            if remaining <= 0:
                break
            remaining -= len(chunk)
            yield chunk.decode("utf-8", "replace").rstrip("\r\n")
