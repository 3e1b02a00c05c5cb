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


def keep_out_of_gc() -> None:
    """Leave every object that exists now out of all later collections.

    For after loading a large set of objects that will live as long as the
    process, with no cycles among them (a store's records): the collector
    would walk each of them at the first collection after the pause (0.5 s
    for a store of 130k records), and again at every full collection of a
    long-running reader, to find nothing. They are still freed when their
    last reference goes; what a frozen cycle holds is not, so this is for
    a process's few big loads, not for its every step.
    """
    gc.freeze()
