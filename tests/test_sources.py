"""Reading lines a block at a time gives exactly the lines, whatever the
block size: line ends, carriage returns, bad UTF-8, byte ranges, a torn
compressed file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from ingest import sources
from ingest.sources import blocks_between, byte_ranges, lines

BODY = (
    "Mar  1 12:00:00 mx1 postfix/qmgr[1]: 4AB12: removed\n"
    "crlf line\r\n"
    "two returns\r\r\n"
    "a \r inside\n"
    "\n"
    "latin-1 \xe9 subject\n"
    "form\x0cfeed and \u2028 separator stay one line\n"
    "no newline at the end"
).encode("utf-8")
BAD = b"broken \xc3\n\xff\xfe header\n"


def expected(data: bytes) -> list[str]:
    """The lines as the line-at-a-time reader saw them."""
    found = [ln.decode("utf-8", "replace").rstrip("\r") for ln in data.split(b"\n")]
    return found[:-1] if found and found[-1] == "" else found


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_lines_whatever_the_block_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(sources, "BLOCK", block)
    for data in (BODY, BAD + BODY, BODY + b"\n", b"", b"\n", b"one"):
        path = tmp_path / "x.log"
        path.write_bytes(data)
        assert list(lines(str(path))) == expected(data), (block, data)


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 20])
def test_byte_ranges_whatever_the_block_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(sources, "BLOCK", block)
    path = tmp_path / "x.log"
    data = (BAD + BODY + b"\n") * 20
    path.write_bytes(data)
    for parts in (1, 2, 3, 9):
        ranges = byte_ranges(str(path), parts)
        assert [ln for a, b in ranges for block in blocks_between(str(path), a, b) for ln in block] == expected(data)
    # a range that ends inside a line keeps the whole line it starts
    assert [ln for block in blocks_between(str(path), 0, 5) for ln in block] == expected(data)[:1]


def test_a_torn_gzip_gives_every_line_before_the_tear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BLOCK", 1 << 20)  # the tear falls inside the first block
    text = "".join(f"line {i}\n" for i in range(50_000)).encode()
    whole = gzip.compress(text)
    path = tmp_path / "torn.log.gz"
    path.write_bytes(whole[: len(whole) // 2])
    got: list[str] = []
    with pytest.raises(EOFError):
        got.extend(lines(str(path)))
    readable = zlib.decompressobj(wbits=31).decompress(path.read_bytes())  # all that can be had
    assert len(got) > 1000 and got == expected(readable)
