"""The TinyStore's files: segments of records, each a TinyDB database.

A segment file is what TinyDB writes for one table, ``records``, whose
document ids are the records' numbers in the store (their ``handle``)::

    {"records":{"17":{...record...},"18":{...}}}

It is made here, not through TinyDB's table API, for two reasons: one
atomic write per file (TinyDB writes once per operation, and a crash
between two would leave half a change), and the byte span of every
document, which the index keeps so that a lookup reads one record with one
``pread`` instead of the whole file. ``tinydb.TinyDB(path)`` opens every
segment and finds every record in it (a test holds it to that).

``scan`` reads the spans back from any file of that shape, including one
TinyDB itself rewrote (with spaces) and one that is damaged: what cannot
be read is reported as a span of its own and the scan goes on after it, so
that one bad record costs that record, not its neighbours.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

#: The one table of a segment file.
RECORDS_TABLE = "records"

#: What orjson must leave to the standard library (see ``json_bytes``).
_ORJSON_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def json_bytes(data: Any) -> bytes:
    """``data`` as compact JSON in UTF-8, what every file of the store holds.

    orjson writes it five times as fast as the standard library's encoder.
    The files still say what ``json.dumps`` says, since orjson is made to
    refuse what it would write otherwise, and what it refuses goes to the
    standard library: str and int subclasses (an enum member), an integer
    beyond 64 bits (a hostile log's ``size=``), a lone surrogate (an
    undecodable byte of a file name in a tail checkpoint); and dataclasses
    and times, which ``json.dumps`` refuses in turn. Files are read back by
    the standard library, which, unlike orjson, reads a big integer as an
    integer.
    """
    try:
        return orjson.dumps(data, option=_ORJSON_STRICT)
    except TypeError:
        # Without the check for cycles, a tenth of the encoding: records'
        # dicts and checkpoints have none.
        import json  # (only here, and in ``loads`` and ``scan``: ``mtqpd show`` starts faster without it)

        return json.dumps(data, separators=(",", ":"), check_circular=False).encode("ascii")


def loads(raw: bytes | bytearray | memoryview) -> Any:
    """What ``json_bytes`` wrote, read back: by orjson, four times as fast
    as the standard library, unless it holds what orjson reads otherwise:
    an integer of 20 digits or more (orjson makes one beyond 64 bits a
    float) or a lone surrogate (which orjson refuses)."""
    if _LONG_NUMBER.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    import json

    return json.loads(bytes(raw))


#: A number orjson might not read as the standard library does.
_LONG_NUMBER = re.compile(rb"\d{20}")


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in ``path`` survive a power cut, not just a
    process crash: they are changes to the directory, not to the files."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` whole: whoever reads the file, and
    whenever the writer dies, sees the previous content or the new one.

    The temporary file is in the same directory (a rename within one file
    system) and named ``.<name>.<random>.tmp``, which the writer removes at
    its next start if a crash left one. ``durable`` fsyncs the file before
    the rename; the caller fsyncs the directory once for all its renames.
    """
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    # Mode 0o666 so that the umask decides, as for TinyDB's own open().
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_OPEN = b'{"' + RECORDS_TABLE.encode() + b'":{'


def segment_bytes(docs: Iterable[tuple[int, bytes]]) -> tuple[bytes, list[tuple[int, int, int]]]:
    """The file of documents ``(number, JSON)``, and each one's (number,
    offset, length) in it, in the order given."""
    parts = [_OPEN]
    spans = []
    at = len(_OPEN)
    first = True
    for number, doc in docs:
        head = b'"%d":' % number if first else b',"%d":' % number
        first = False
        at += len(head)
        spans.append((number, at, len(doc)))
        parts += (head, doc)
        at += len(doc)
    parts.append(b"}}")
    return b"".join(parts), spans


@dataclass(slots=True)
class Scan:
    """What ``scan`` found in a segment file."""

    #: (number, offset, length) of every document that is a JSON object.
    docs: list[tuple[int, int, int]] = field(default_factory=list)
    #: (offset, length) of what could not be read as a document.
    damaged: list[tuple[int, int]] = field(default_factory=list)


#: The start of a document in the records table: ``"17":{``, after a
#: separator. A damaged stretch ends where the next one begins.
_DOC_START = re.compile(rb'[{,]\s*"(\d+)"\s*:\s*\{')
_TABLE_START = re.compile(rb'\s*\{\s*"' + RECORDS_TABLE.encode() + rb'"\s*:\s*\{\s*')
_NEXT = re.compile(rb'\s*(?:,\s*"(\d+)"\s*:\s*|\}\s*)')


def scan(data: bytes) -> Scan:
    """The documents of a segment file and their spans; damaged stretches
    as spans of their own.

    The file is decoded as Latin-1 for the scan, one character a byte, so
    that the decoder's positions are byte offsets (UTF-8 is still valid
    JSON structure read that way: its bytes all lie inside strings); each
    document is decoded properly when it is read (``read_doc``).
    """
    import json

    decoder = json.JSONDecoder()
    text = data.decode("latin-1")
    found = Scan()
    m = _TABLE_START.match(data)
    if m is None:  # not even the head: look for documents anywhere
        return _resync(data, text, 0, found, decoder)
    pos = m.end()
    if data[pos : pos + 1] == b"}":  # an empty table
        return found
    head = re.compile(rb'"(\d+)"\s*:\s*').match(data, pos)
    if head is None:
        return _resync(data, text, pos, found, decoder)
    number, pos = int(head[1]), head.end()
    while True:
        try:
            doc, end = decoder.raw_decode(text, pos)
        except ValueError:
            return _resync(data, text, pos, found, decoder)
        if not isinstance(doc, dict):
            return _resync(data, text, pos, found, decoder)
        found.docs.append((number, pos, end - pos))
        nxt = _NEXT.match(data, end)
        if nxt is None:
            return _resync(data, text, end, found, decoder)
        if nxt[1] is None:  # the table's closing brace
            return found
        number, pos = int(nxt[1]), nxt.end()


def _resync(data: bytes, text: str, pos: int, found: Scan, decoder: Any) -> Scan:
    """Go on after a damaged stretch that starts at ``pos``: at the next
    place a document starts, until the end of the file."""
    while pos < len(data):
        m = _DOC_START.search(data, pos + 1)
        if m is None:
            found.damaged.append((pos, len(data) - pos))
            return found
        start = m.end() - 1  # the document's "{"
        try:
            doc, end = decoder.raw_decode(text, start)
        except ValueError:
            pos = start
            continue
        if m.start() > pos:
            found.damaged.append((pos, m.start() - pos))
        if isinstance(doc, dict):
            found.docs.append((int(m[1]), start, end - start))
        nxt = _NEXT.match(data, end)
        if nxt is not None and nxt[1] is None:
            return found
        pos = end
    return found


def read_doc(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    """One document's bytes as a dict; ValueError when they are not one."""
    doc = loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc
