"""The one memory setting (``--memory``, ``memory =``), and how it is shared out.

Whatever the size of the store or the length of the logs, a process keeps
within about this much: the correlator's records in flight, the store's
caches and write buffer, SQLite's page cache. It is a budget the parts
size themselves by (counts of records, of pages), not a limit the kernel
enforces: the interpreter itself, the parsers and the sockets come on top
(about 40 MB), and a spread replay's workers each have their own share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The default: enough for a busy server's hour of mail in flight.
DEFAULT_MEMORY = 256 << 20
#: Below this the parts would not hold one hour of a quiet server.
MIN_MEMORY = 32 << 20

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes from ``256M``, ``1.5G``, ``512MiB``, ``300MB`` (powers of
    1024 either way) or a plain number of bytes; ValueError otherwise, or
    below ``MIN_MEMORY``."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE.fullmatch(str(text))
        if m is None:
            raise ValueError(f"not a size: {text!r} (try 256M, 1G)")
        value = int(float(m[1]) * _UNITS[m[2].lower()])
    if value < MIN_MEMORY:
        raise ValueError(f"{text!r} is less than the {MIN_MEMORY >> 20}M mtqpd needs")
    return value


@dataclass(frozen=True, slots=True)
class Budget:
    """``total`` bytes shared out: the correlator's records, the store's."""

    total: int = DEFAULT_MEMORY

    @property
    def correlator(self) -> int:
        return self.total * 2 // 5

    @property
    def store(self) -> int:
        return self.total - self.correlator

    def split(self, ways: int) -> Budget:
        """One of ``ways`` processes' share (a spread replay's workers)."""
        return Budget(max(self.total // ways, MIN_MEMORY))
