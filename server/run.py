"""``mtqpd run``: tail the MTA's logs into the store and serve MTQP from
it, in one trio process, until SIGTERM.

One writable ``TinyStore`` is shared: the tailer puts each batch of lines
into it at once (``Tailer.on_lines``), and the server reads the same
in-memory records, so a new log line is answerable as soon as it is read,
not at the next flush. ``ingest.tailcmd.run`` owns SIGTERM and SIGINT: when
it returns it has flushed the records and then their checkpoints; the
server is cancelled after it, and the store is closed (flushed again, and
its lock released) last. SIGUSR1 and SIGUSR2 pause and resume the service,
as with ``mtqpd serve``.

Logs that differ in host, time zone or MTA get a ``Tailer`` (and so a
correlator) each; logs that share them share one.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter

import trio

from ingest import tailcmd
from ingest.store.tiny import TinyStore
from ingest.tail import Checkpoint
from ingest.tailcmd import Tailer

from .config import Config
from .net import Server
from .serve import SPARE_FDS, ConfigError, freeze_loaded_heap, load_identity, load_site_key, raise_fd_limit

log = logging.getLogger(__name__)


class Tailers:
    """Several ``Tailer``s behind the one interface ``tailcmd.run`` uses:
    each path's lines go to the tailer of its settings."""

    def __init__(self, by_path: dict[str, Tailer]) -> None:
        self.by_path = by_path
        self.tailers = list({id(t): t for t in by_path.values()}.values())

    @property
    def lines(self) -> int:
        return sum(t.lines for t in self.tailers)

    def checkpoints(self, paths: list[str]) -> dict[str, Checkpoint]:
        out: dict[str, Checkpoint] = {}
        for path in paths:
            out.update(self.by_path[path].checkpoints([path]))
        return out

    async def on_lines(self, path: str, batch: list[tuple[str, Checkpoint]]) -> None:
        await self.by_path[path].on_lines(path, batch)

    def flush(self) -> None:
        for tailer in self.tailers:
            tailer.flush()

    def expire(self) -> int:
        return self.tailers[0].expire()  # they share one store


def make_tailers(store: TinyStore, cfg: Config) -> tuple[list[str], Tailer | Tailers]:
    """The absolute paths to follow, and what applies their lines: the
    budget's correlator share goes to the tailers together."""
    memory = cfg.budget.correlator
    groups: dict[tuple[str | None, str | None, str], Tailer] = {}
    by_path: dict[str, Tailer] = {}
    for source in cfg.logs:
        key = (source.host, source.tz, source.mta)
        if key not in groups:
            groups[key] = Tailer(
                store, cfg.settings(source.host), tz=source.tz, mta=source.mta, memory=memory // max(len(cfg.logs), 1)
            )
        by_path[os.path.abspath(source.path)] = groups[key]
    hosts = Counter(host for host, _, _ in groups)
    for host, n in hosts.items():
        if n > 1:
            log.warning("the logs of host %s differ in tz or mta: each reader keeps its own view of it", host)
    paths = list(by_path)
    if len(groups) == 1:
        return paths, next(iter(groups.values()))
    return paths, Tailers(by_path)


async def _pause_on_signal(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
        async for signum in signals:
            server.paused = signum == signal.SIGUSR1
            log.info("paused: queries get -TEMP/admin" if server.paused else "resumed")


async def serve_and_tail(server: Server, cfg: Config, paths: list[str], tailer: Tailer | Tailers) -> None:
    """Listen, serve, and tail until SIGTERM or SIGINT."""
    try:
        listeners = await server.listen(cfg.listen)
    except OSError as exc:
        raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        for listener in listeners:
            host, port = listener.socket.getsockname()[:2]
            log.info("listening on %s", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        nursery.start_soon(_pause_on_signal, server)
        await tailcmd.run(paths, tailer)  # type: ignore[arg-type]
        log.info("shutting down")
        nursery.cancel_scope.cancel()


def run(cfg: Config) -> None:
    """``mtqpd run``. Raises ``ConfigError`` for a configuration that cannot
    run, ``StoreLocked`` when another process writes the store."""
    if not cfg.logs:
        raise ConfigError("nothing to tail: give [[log]] in the file or --log (mtqpd serve serves without tailing)")
    identities = [load_identity(cert, key) for cert, key in cfg.tls]
    store = TinyStore(cfg.store, memory=cfg.budget.store)
    freeze_loaded_heap()  # what is loaded now lives as long as the process
    try:
        server = Server(
            store,
            site_key=load_site_key(cfg.site_key_path),
            reporting_mta=cfg.mta_name,
            identities=identities,
            tls_required=cfg.tls_required,
            hide_internal=cfg.hide_internal,
            trusted=cfg.trusted,
            limits=cfg.limits,
        )
        raise_fd_limit(cfg.limits.max_connections + SPARE_FDS)
        paths, tailer = make_tailers(store, cfg)
        trio.run(serve_and_tail, server, cfg, paths, tailer)
    finally:
        store.close()
