"""A Bloom filter of the keys a process let go of: "maybe" or "surely not".

The correlator drops the records it no longer needs in memory and must
find them again in the store if a later line names them. Asking the store
about every new queue id would cost a lookup for each of the hundreds of
thousands of messages of a replay, nearly all of them new; this filter
answers "surely not" for those in about a microsecond, in a fixed amount of
memory whatever the length of the log. A "maybe" that is wrong costs one
lookup, which finds nothing; the answer is never wrong the other way.

``AgingBloom`` forgets keys two generations old, for a process that runs
for months: a key only needs remembering while a line could still name it.
"""

from __future__ import annotations

from collections.abc import Hashable

#: Positions set per key (``__contains__`` is unrolled for three). Three at 1% fill of a few MiB is one false
#: "maybe" in a million; the cost of a check grows with the count.
_PROBES = 3


class Bloom:
    """``bits`` bits (rounded up to bytes), hashed with Python's ``hash``:
    keys are only ever compared within one process."""

    __slots__ = ("_bits", "_size", "count")

    def __init__(self, bits: int) -> None:
        self._size = max(bits, 64)
        self._bits = bytearray((self._size + 7) // 8)
        self.count = 0

    def add(self, key: Hashable) -> None:
        bits, size = self._bits, self._size
        h = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        step = (h >> 32) | 1
        for i in range(_PROBES):
            p = (h + i * step) % size
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, key: Hashable) -> bool:
        # Unrolled, and out at the first bit not set: nearly every key
        # asked about is new, and this runs once for each.
        if not self.count:
            return False
        bits, size = self._bits, self._size
        h = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        p = h % size
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        step = (h >> 32) | 1
        p = (h + step) % size
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
        p = (h + 2 * step) % size
        return bool(bits[p >> 3] & (1 << (p & 7)))


class AgingBloom:
    """Two ``Bloom`` filters: keys are added to the newer, found in either;
    ``age`` makes the newer the older and starts a new one, so a key is
    remembered for one to two ages."""

    __slots__ = ("_bits", "newer", "older")

    def __init__(self, bits: int) -> None:
        self._bits = max(bits // 2, 64)
        self.newer = Bloom(self._bits)
        self.older = Bloom(64)

    def add(self, key: Hashable) -> None:
        self.newer.add(key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.newer or key in self.older

    def age(self) -> None:
        self.older, self.newer = self.newer, Bloom(self._bits)
