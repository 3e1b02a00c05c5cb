"""Bulk work over millions of small objects.

Replaying a log or loading a store makes several containers per line or
record, none of them garbage. CPython's cyclic collector, triggered by
allocations, would walk the whole growing heap again and again: on a
million-line replay that is a third of the run. Nothing here makes
reference cycles worth collecting mid-run, so the collector is paused for
the duration and runs once at the end.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
