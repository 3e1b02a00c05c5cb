"""``mtqpd tail``: follow live logs into the store.

Lines from ``ingest.tail.follow`` go through the parsers and the correlator
into the store at once (a reader in the same process sees them at once);
every ``FLUSH_EVERY`` seconds the changed records are made durable, and only
then the checkpoint of the last line they include. A crash therefore loses
no line (lines after the saved checkpoint are read again) and doubles
nothing (applying them again changes nothing). Every ``EXPIRE_EVERY`` the
store drops what is past retention (by the clock: a tailer follows today's
mail).
"""

from __future__ import annotations

import logging
import signal
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import trio

from parsers import Context, parse

from .correlator import DEFAULT_MEMORY, Correlator, Settings
from .records import iso
from .replay import note_sources
from .store import Store
from .tail import Checkpoint, follow

log = logging.getLogger(__name__)

#: How often changed records, then checkpoints, are made durable.
FLUSH_EVERY = 0.5
#: How often the store drops records past retention.
EXPIRE_EVERY = 3600.0
#: A BSD timestamp's year is inferred against "now"; a follower that runs for
#: months must move its reference on.
REFERENCE_REFRESH = timedelta(hours=1)


def checkpoint_key(path: str) -> str:
    return f"tail:{path}"


class Tailer:
    """Applies followed lines to the store and persists checkpoints after
    the records they cover."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        tz: str | None = None,
        mta: str = "auto",
        memory: int = DEFAULT_MEMORY,
    ) -> None:
        self.store = store
        self.correlator = Correlator(store, settings, memory=memory)
        self.zone = ZoneInfo(tz) if tz else UTC
        self.mta = mta
        self.lines = 0
        self._ctx = Context(tz=self.zone)
        self._ctx_made = time.monotonic()
        self._unsaved: dict[str, Checkpoint] = {}
        #: Per path, the times of the first and last lines read (for the
        #: store's ``sources``: what to replay to restore damaged records).
        self._times: dict[str, list[str]] = {}

    def checkpoints(self, paths: list[str]) -> dict[str, Checkpoint]:
        out = {}
        for path in paths:
            saved = self.store.get_meta(checkpoint_key(path))
            if saved:
                try:
                    out[path] = Checkpoint.from_dict(saved)
                except ValueError as exc:
                    log.warning("%s: ignoring an unreadable checkpoint (%s): reading from the start", path, exc)
        return out

    def _context(self) -> Context:
        if time.monotonic() - self._ctx_made > REFERENCE_REFRESH.total_seconds():
            self._ctx = Context(tz=self.zone, reference=datetime.now(UTC))
            self._ctx_made = time.monotonic()
        return self._ctx

    async def on_lines(self, path: str, batch: list[tuple[str, Checkpoint]]) -> None:
        ctx = self._context()
        apply = self.correlator.apply
        first = last = None
        for text, _ in batch:
            ev = parse(text, ctx, self.mta)
            apply(ev)
            if ev.ts is not None:
                first = first or ev.ts
                last = ev.ts
        if first is not None:
            seen = self._times.setdefault(path, [iso(first), iso(last)])
            seen[1] = iso(last)
        self.lines += len(batch)
        self.correlator.flush(durable=False)  # readers in this process see it now
        self._unsaved[path] = batch[-1][1]

    def flush(self) -> None:
        """Records first, then the checkpoints that they cover."""
        if not self._unsaved and not self.correlator.pending:
            return
        self.correlator.flush(durable=False)
        for path, cp in self._unsaved.items():
            self.store.set_meta(checkpoint_key(path), cp.to_dict())
        self._unsaved.clear()
        if self._times:
            note_sources(self.store, self._times)
            self._times.clear()
        self.store.flush()

    def expire(self) -> int:
        return self.store.expire(datetime.now(UTC))


async def run(
    paths: list[str], tailer: Tailer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Follow ``paths`` until SIGTERM or SIGINT, flushing as it goes and at the end."""
    try:
        async with trio.open_nursery() as nursery:
            checkpoints = tailer.checkpoints(paths)
            await nursery.start(follow, paths, checkpoints, tailer.on_lines)
            for path in paths:
                where = f"from byte {checkpoints[path].offset}" if path in checkpoints else "from its start"
                log.info("following %s %s", path, where)
            nursery.start_soon(_flush_loop, tailer)
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            task_status.started()
    finally:
        tailer.flush()


async def _flush_loop(tailer: Tailer) -> None:
    expire_at = time.monotonic() + EXPIRE_EVERY
    while True:
        await trio.sleep(FLUSH_EVERY)
        tailer.flush()
        if time.monotonic() >= expire_at:
            expire_at = time.monotonic() + EXPIRE_EVERY
            gone = tailer.expire()
            if gone:
                log.info("retention: %d records dropped", gone)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return
