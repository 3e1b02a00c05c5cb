"""Where lines come from: plain or compressed files, or standard input.

A log is read as text with undecodable bytes replaced, not refused: a
Latin-1 subject in a header-check line must not cost the rest of the file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def open_binary(path: str) -> IO[bytes]:
    """``-`` for standard input; ``.gz``, ``.bz2`` and ``.xz`` decompressed."""
    if path == "-":
        return sys.stdin.buffer
    for suffix, opener in _OPENERS.items():
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
