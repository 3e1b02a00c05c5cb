"""The embedded store: TinyDB segment files and an SQLite index (``store``)."""

from .store import DEFAULT_MEMORY, SEGMENT_RECORDS, TinyStore, segment_name

__all__ = ["DEFAULT_MEMORY", "SEGMENT_RECORDS", "TinyStore", "segment_name"]
