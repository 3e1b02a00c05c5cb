"""The ``mtqpd`` command line.

It lives in ``server`` because that package is the top of the one-way flow
(parsers -> ingest -> store -> server): the command line may reach every
layer, and no layer below may reach it. Each command's work is done by a
module of its layer; this file only reads arguments and reports errors.

Only the command being run has its options built and its modules imported:
``mtqpd parse`` on a big log is timed against pflogsumm, and importing trio,
the store and the server for it would cost a tenth of its run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingest.correlator import Settings
    from ingest.memory import Budget
    from ingest.store.tiny import TinyStore

#: The MTAs the parsers read (``parsers.MTAS``), spelt out here so that a
#: command that reads no log does not import the parsers (a tenth of
#: ``mtqpd show``'s start); a test holds the two equal.
MTAS = ("postfix", "exim", "sendmail")
#: A reader's exit status when some records it met could not be read.
PARTIAL = 3

#: Where the store lives unless --store or $MTQPD_STORE says otherwise.
DEFAULT_STORE = "/var/lib/mtqpd"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtqpd")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _zone(text: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r}") from None
    return text


_AGO = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _when(text: str) -> datetime:
    """An RFC 3339 time or date (UTC unless it says), or a span ago: 90m, 2h, 3d."""
    m = _AGO.fullmatch(text.strip())
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m[2]]: int(m[1])})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (try 2026-03-01, 2026-03-01T12:00, 2h, 3d)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _size(text: str) -> int:
    from ingest.memory import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="DIR",
        default=os.environ.get("MTQPD_STORE", DEFAULT_STORE),
        help=f"the tracking store (default: $MTQPD_STORE or {DEFAULT_STORE})",
    )
    p.add_argument(
        "--memory",
        type=_size,
        metavar="SIZE",
        help="memory to keep within, whatever the size of the store or the logs (default 256M)",
    )


def _ingest_options(p: argparse.ArgumentParser) -> None:
    """What replay and tail share: the logs, the store, and what the lines cannot say."""
    p.add_argument("files", nargs="+", metavar="FILE")
    _store_option(p)
    p.add_argument("--host", help="host name for lines that carry none (Exim's mainlog; default: this host)")
    p.add_argument("--mta", choices=("auto", *MTAS), default="auto", help="reader for lines whose program does not say")
    p.add_argument("--tz", type=_zone, metavar="ZONE", help="zone of timestamps written without one (default UTC)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, with the options of ``command`` (only)."""
    parser = argparse.ArgumentParser(
        prog="mtqpd",
        description="Message tracking (RFC 3885-3888) for Postfix, Exim and Sendmail, from their logs.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, description, options, _) in _COMMANDS.items():
        p = commands.add_parser(name, help=summary, description=description)
        if name == command:
            options(p)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The command named in ``argv``: its first word that is not an option
    (the top level takes no option with a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


class _Version(argparse.Action):
    """``--version``, with the installed version looked up only when asked."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _parse_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--mta", choices=("auto", *MTAS), default="auto", help="reader for lines whose program does not say")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--stats", action="store_true", help="counts per MTA and kind, and the first unknown lines")
    p.add_argument("--tz", type=_zone, metavar="ZONE", help="zone of timestamps written without one (default UTC)")
    p.add_argument("--jobs", type=_positive, metavar="N", help="processes for --stats on large plain files")


def _replay_options(p: argparse.ArgumentParser) -> None:
    _ingest_options(p)
    p.add_argument("--jobs", type=_positive, metavar="N", help="processes for large plain files into a fresh store")


def _show_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("ident", metavar="ID")
    _store_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object per record")


def _search_options(p: argparse.ArgumentParser) -> None:
    _store_option(p)
    p.add_argument("--from", dest="sender", metavar="ADDR", help="envelope sender")
    p.add_argument("--to", dest="recipient", metavar="ADDR", help="recipient, final or original")
    p.add_argument("--oldest-first", action="store_true", help="oldest first (default: newest first)")
    p.add_argument("--since", type=_when, metavar="T", help="arrived at or after T (RFC 3339, or 2h, 3d ago)")
    p.add_argument("--until", type=_when, metavar="T", help="arrived at or before T")
    p.add_argument(
        "--status",
        dest="action",
        choices=("delivered", "relayed", "delayed", "failed"),
        help="a recipient's outcome",
    )
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N records")
    p.add_argument("--json", action="store_true", help="one JSON object per record")


def _budget(args: argparse.Namespace) -> Budget:
    from ingest.memory import Budget

    return Budget(args.memory) if getattr(args, "memory", None) else Budget()


def _store_path(args: argparse.Namespace) -> Path:
    """The directory ``--store`` names (``StoreError`` for a URI of a kind
    this mtqpd does not have)."""
    from ingest.store import location_path

    return location_path(args.store)


def _open(args: argparse.Namespace, *, readonly: bool) -> TinyStore:
    from ingest.store.tiny import TinyStore

    path = _store_path(args)
    budget = _budget(args)
    if readonly and not path.is_dir():
        raise SystemExit(f"mtqpd {args.command}: no store at {path} (mtqpd replay --store {path} LOG... makes one)")
    return TinyStore(path, readonly=readonly, memory=budget.total if readonly else budget.store)


def _partial(store: TinyStore, status: int) -> int:
    """``status``, or ``PARTIAL`` (with a word on standard error) when the
    answer may lack records the store could not read."""
    if not store.unreadable:
        return status
    print(
        f"mtqpd: {store.unreadable} record(s) in the store could not be read (damaged files): the answer may be "
        f"incomplete; 'mtqpd reindex --store {store.path}' sets them aside and names the logs that restore them",
        file=sys.stderr,
    )
    return PARTIAL


def _settings(args: argparse.Namespace) -> Settings:
    from ingest.correlator import Settings

    return Settings(default_host=args.host or os.uname().nodename.split(".")[0])


def _parse(args: argparse.Namespace) -> int:
    from ingest import parsecmd

    return parsecmd.run(
        args.files, mta=args.mta, as_json=args.json, stats=args.stats, tz=args.tz, jobs=args.jobs, out=sys.stdout
    )


def _replay(args: argparse.Namespace) -> int:
    from ingest import parallel
    from ingest.replay import progress_stream, replay

    settings = _settings(args)
    budget = _budget(args)
    store = _open(args, readonly=False)
    jobs = args.jobs or os.cpu_count() or 1
    try:
        if store.span() is None and parallel.spreadable(args.files, jobs):
            store.close()  # the spread replay takes the store's lock itself
            summary = parallel.replay_spread(
                args.files, store.path, settings=settings, tz=args.tz, mta=args.mta, jobs=jobs, budget=budget
            )
        else:
            summary = replay(
                args.files,
                store,
                settings=settings,
                tz=args.tz,
                mta=args.mta,
                progress=progress_stream(),
                memory=budget.correlator,
            )
    except parallel.RangeFailed as exc:
        print(f"mtqpd replay: a worker process failed; the store may be incomplete:\n{exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    summary.write(sys.stderr if sys.stdout.isatty() else sys.stdout)
    return 1 if summary.errors else 0


def _tail(args: argparse.Namespace) -> int:
    import logging

    import trio

    from ingest import tailcmd

    logging.basicConfig(level=logging.WARNING, format="mtqpd tail: %(message)s")
    logging.getLogger("ingest").setLevel(logging.INFO)
    settings = _settings(args)
    store = _open(args, readonly=False)
    try:
        tailer = tailcmd.Tailer(store, settings, tz=args.tz, mta=args.mta, memory=_budget(args).correlator)
        trio.run(tailcmd.run, [os.path.abspath(f) for f in args.files], tailer)
    finally:
        store.close()
    return 0


def _show(args: argparse.Namespace) -> int:
    from ingest import showcmd

    store = _open(args, readonly=True)
    status = showcmd.show(store, args.ident, as_json=args.json, out=sys.stdout)
    if status and not store.unreadable:
        print(f"mtqpd show: nothing known of {args.ident}", file=sys.stderr)
    return _partial(store, status)


def _search(args: argparse.Namespace) -> int:
    from ingest import showcmd

    store = _open(args, readonly=True)
    names = ("sender", "recipient", "since", "until", "action", "limit", "oldest_first")
    criteria = {k: getattr(args, k) for k in names}
    return _partial(store, showcmd.search(store, as_json=args.json, out=sys.stdout, **criteria))


def _reindex_options(p: argparse.ArgumentParser) -> None:
    _store_option(p)


def _reindex(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="mtqpd reindex: %(message)s")
    path = _store_path(args)
    if not path.is_dir():
        raise SystemExit(f"mtqpd reindex: no store at {path}")
    store = _open(args, readonly=False)  # a store of an older format is upgraded as it opens
    try:
        records = store.rebuild()
    finally:
        store.close()
    print(f"{path}: {records} records indexed")
    return 0


# -- serve ---------------------------------------------------------------------


def _listen(text: str) -> tuple[str | None, int]:
    from server import serve

    try:
        return serve.parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timeout(text: str) -> float:
    value = float(text)
    if value < 600:
        raise argparse.ArgumentTypeError("at least 600 seconds (RFC 3887 section 2.5)")
    return value


def _serve_options(p: argparse.ArgumentParser) -> None:
    from server import serve

    limits = serve.Limits()
    _store_option(p)
    p.add_argument(
        "--listen",
        action="append",
        type=_listen,
        metavar="ADDR:PORT",
        help="where to listen, repeatable: 192.0.2.1:1038, [::1]:1038, *:1038 (default: every address, port 1038)",
    )
    p.add_argument("--tls-cert", action="append", default=[], metavar="CERT", help="PEM certificate chain, repeatable")
    p.add_argument("--tls-key", action="append", default=[], metavar="KEY", help="its key, one per --tls-cert")
    p.add_argument("--tls-required", action="store_true", help="answer TRACK only after STARTTLS")
    p.add_argument("--site-key-file", type=Path, metavar="FILE", help="default: <store>/site.key, made if missing")
    p.add_argument("--reporting-mta", metavar="NAME", help="the name answers report (default: this host's FQDN)")
    p.add_argument("--hide-internal", action="store_true", help="report internal hops as --reporting-mta")
    import ipaddress

    p.add_argument(
        "--trusted",
        action="append",
        default=[],
        type=ipaddress.ip_network,
        metavar="NET",
        help="client network that may track without a secret, repeatable (default: none)",
    )
    p.add_argument(
        "--timeout", type=_timeout, default=limits.timeout, metavar="SECONDS", help="inactivity timeout (default 600)"
    )
    p.add_argument(
        "--max-connections",
        type=_positive,
        default=limits.max_connections,
        metavar="N",
        help=f"concurrent connections; more are told -TEMP/MTQP/unavailable (default {limits.max_connections})",
    )


def _serve(args: argparse.Namespace) -> int:
    from server import serve

    if len(args.tls_cert) != len(args.tls_key):
        print("mtqpd serve: give one --tls-key for each --tls-cert", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING, format="mtqpd serve: %(message)s")
    logging.getLogger("server").setLevel(logging.INFO)
    try:
        serve.run(
            _store_path(args),
            memory=_budget(args).total,
            listen=args.listen or serve.DEFAULT_ADDRESSES,
            tls=list(zip(args.tls_cert, args.tls_key, strict=True)),
            tls_required=args.tls_required,
            site_key_file=args.site_key_file,
            reporting_mta=args.reporting_mta,
            hide_internal=args.hide_internal,
            trusted=args.trusted,
            limits=serve.Limits(timeout=args.timeout, max_connections=args.max_connections),
        )
    except serve.ConfigError as exc:
        print(f"mtqpd serve: {exc}", file=sys.stderr)
        return 1
    return 0


# -- track, secret, run ------------------------------------------------------------


def _track_options(p: argparse.ArgumentParser) -> None:
    from server import client

    p.add_argument("target", metavar="URI|ENVID")
    p.add_argument("secret", nargs="?", metavar="SECRET", help="with --server")
    p.add_argument("--server", metavar="HOST[:PORT]", help="the server to ask (SRV lookup when no port is given)")
    p.add_argument("--starttls", action="store_true", help="require TLS; the certificate is checked")
    p.add_argument("--ca", metavar="FILE", help="PEM CA certificates to check the server's against (default: system)")
    p.add_argument("--insecure", action="store_true", help="with TLS, do not check the server's certificate")
    p.add_argument("--tls-name", metavar="FQDN", help="the server's name for STARTTLS and its certificate")
    p.add_argument("--raw", action="store_true", help="print the answer (multipart/related) as received")
    p.add_argument("--no-referrals", dest="follow", action="store_false", help="ask the first server only")
    p.add_argument(
        "--timeout",
        type=float,
        default=client.OVERALL_TIMEOUT,
        metavar="SECONDS",
        help="for everything, referrals included (default: %(default)g)",
    )


def _secret_options(p: argparse.ArgumentParser) -> None:
    from server import config

    p.add_argument("ident", metavar="ID")
    config.add_options(p, ["store"])
    p.add_argument("--server", metavar="HOST[:PORT]", help="the URI's server (default: --reporting-mta, else FQDN)")


def _run_options(p: argparse.ArgumentParser) -> None:
    from server import config

    config.add_options(p)


def _track(args: argparse.Namespace) -> int:
    from server import client

    return client.track_command(
        [x for x in (args.target, args.secret) if x is not None],
        server=args.server,
        starttls=args.starttls,
        cafile=args.ca,
        insecure=args.insecure,
        tls_name=args.tls_name,
        raw=args.raw,
        follow=args.follow,
        timeout=args.timeout,
        out=sys.stdout,
        err=sys.stderr,
    )


def _secret(args: argparse.Namespace) -> int:
    from ingest.store.tiny import TinyStore
    from server import client, config, serve

    try:
        cfg = config.from_args(args)
        host, port = client.parse_server(args.server) if args.server else (cfg.mta_name, None)
        if not cfg.store.is_dir():
            raise config.ConfigError(f"no store at {cfg.store} (mtqpd replay --store {cfg.store} LOG... makes one)")
        site_key = serve.load_site_key(cfg.site_key_path)
        store = TinyStore(cfg.store, readonly=True, memory=cfg.memory)
        return client.secret_command(store, args.ident, site_key, host, port, out=sys.stdout)
    except (config.ConfigError, LookupError, ValueError) as exc:
        print(f"mtqpd secret: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import logging

    from server import config
    from server import run as runner

    logging.basicConfig(level=logging.WARNING, format="mtqpd run: %(message)s")
    for name in ("ingest", "server"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        runner.run(config.from_args(args))
    except config.ConfigError as exc:
        print(f"mtqpd run: {exc}", file=sys.stderr)
        return 1
    return 0


#: Each command: its one-line help, its description, its options, its handler.
_COMMANDS: dict[
    str, tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "parse": (
        "read log lines into events: what did mtqpd understand?",
        "Parse Postfix, Exim and Sendmail log lines into events. "
        "FILE may be '-' for standard input; .gz, .bz2 and .xz are read transparently.",
        _parse_options,
        _parse,
    ),
    "replay": (
        "import old logs into the store",
        "Read logs (rotated and compressed sets in any order) into the tracking store. "
        "Running it twice changes nothing.",
        _replay_options,
        _replay,
    ),
    "tail": (
        "follow live logs into the store",
        "Follow log files into the tracking store through rotation (rename, copytruncate, compression) and "
        "restarts, until SIGTERM. Records are durable within a second; a restart resumes where the last durable "
        "record ended.",
        _ingest_options,
        _tail,
    ),
    "show": (
        "where did this message go? (queue id, Message-ID or ENVID)",
        "Print the records of a queue id, Message-ID (with or without <>) or ENVID, with every record linked to them.",
        _show_options,
        _show,
    ),
    "search": (
        "find messages by sender, recipient, time and outcome",
        "Search the store, newest first. Exit status 1 when nothing matches, 3 when records could not be read.",
        _search_options,
        _search,
    ),
    "reindex": (
        "rebuild the store's index from its records (and upgrade an older store)",
        "Build the index of a store again from its record files; damaged records are set aside, and the logs "
        "that restore them named. A store written by an older mtqpd is upgraded in place.",
        _reindex_options,
        _reindex,
    ),
    "serve": (
        "answer MTQP queries (RFC 3887, port 1038) from the store",
        "Serve MTQP over an existing store until SIGTERM or SIGINT. SIGUSR1 pauses the service "
        "(clients are told -TEMP/admin), SIGUSR2 resumes it.",
        _serve_options,
        _serve,
    ),
    "track": (
        "ask an MTQP server where a message went",
        "Track a message over MTQP (RFC 3887): mtqpd track mtqp://HOST[:PORT]/track/ENVID/SECRET, or "
        "mtqpd track --server HOST[:PORT] ENVID SECRET. Recipients transferred to other MTQP servers are "
        "followed there. Exit status 0 when the server had tracking information.",
        _track_options,
        _track,
    ),
    "secret": (
        "the secret and mtqp:// URI that let a sender track a message",
        "Print the keyed secret (HMAC-SHA256 with the site key) of an envelope (ENVID or Message-ID) "
        "and its mtqp:// URI. The site key is made if it does not exist yet.",
        _secret_options,
        _secret,
    ),
    "run": (
        "tail the logs and serve MTQP, in one process",
        "Follow the MTA's logs into the store and answer MTQP queries from it until SIGTERM. "
        "Settings come from --config FILE (TOML), overridden by the options given.",
        _run_options,
        _run,
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from ingest.store import StoreError

    try:
        return _COMMANDS[args.command][3](args)
    except StoreError as exc:
        print(f"mtqpd {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mtqpd parse big.log | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
