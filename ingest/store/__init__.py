"""The stores of tracking records, behind one interface (``base.Store``).

- ``memory``: everything in dictionaries, the interface's reference semantics;
- ``tiny``: the embedded default, TinyDB files with a persisted index.

``open_store`` turns what a user typed (``--store``, ``store =``) into a
store: a path is a TinyStore directory; a URI names its kind by scheme, and
a scheme mtqpd does not know is an error, never a folder name.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import (
    DEFAULT_RETENTION,
    MIN_RETENTION,
    Store,
    StoreError,
    StoreLocked,
    expired,
    matches,
    retention_of,
    store_order,
)
from .memory import MemoryStore

__all__ = [
    "DEFAULT_RETENTION",
    "MIN_RETENTION",
    "MemoryStore",
    "Store",
    "StoreError",
    "StoreLocked",
    "expired",
    "location_path",
    "matches",
    "retention_of",
    "store_order",
]

#: ``scheme:`` at the start of a location, as RFC 3986 spells a scheme.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def location_path(location: str) -> Path:
    """The directory of a TinyStore named by ``location``: a path, or a
    ``file:`` URI; StoreError for any other scheme."""
    m = _SCHEME.match(location)
    if m is None or (len(m[1]) == 1 and location[2:3] in ("\\", "/")):  # not a scheme: C:/ on Windows
        return Path(location)
    scheme = m[1].lower()
    if scheme == "file":
        rest = location[m.end() :]
        if rest.startswith("//"):
            host, _, rest = rest[2:].partition("/")
            if host not in ("", "localhost"):
                raise StoreError(f"store {location!r}: a file: URI names a file on this host")
            rest = "/" + rest
        return Path(rest)
    if scheme in ("postgresql", "postgres"):
        raise StoreError(f"store {location!r}: this mtqpd has no PostgreSQL store (a directory is the only store)")
    raise StoreError(f"store {location!r}: unknown scheme {m[1]!r} (give a directory, or a file: URI)")
