"""The ``mtqpd`` command line.

It lives in ``server`` because that package is the top of the one-way flow
(parsers -> ingest -> store -> server): the command line may reach every
layer, and no layer below may reach it. Each command's work is done by a
module of its layer; this file only reads arguments and reports errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import trio

from ingest import parsecmd, showcmd, tailcmd
from ingest.correlator import Settings
from ingest.replay import progress_stream, replay
from ingest.tailcmd import Tailer
from ingest.tinystore import StoreLocked, TinyStore
from parsers import MTAS

#: Where the store lives unless --store or $MTQPD_STORE says otherwise.
DEFAULT_STORE = "/var/lib/mtqpd"


def _version() -> str:
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


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="DIR",
        default=os.environ.get("MTQPD_STORE", DEFAULT_STORE),
        help=f"the tracking store (default: $MTQPD_STORE or {DEFAULT_STORE})",
    )


def _ingest_options(p: argparse.ArgumentParser) -> None:
    """What replay and tail share: the logs, the store, and what the lines cannot say."""
    p.add_argument("files", nargs="+", metavar="FILE")
    _store_option(p)
    p.add_argument("--host", help="host name for lines that carry none (Exim's mainlog; default: this host)")
    p.add_argument("--mta", choices=("auto", *MTAS), default="auto", help="reader for lines whose program does not say")
    p.add_argument("--tz", type=_zone, metavar="ZONE", help="zone of timestamps written without one (default UTC)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtqpd",
        description="Message tracking (RFC 3885-3888) for Postfix, Exim and Sendmail, from their logs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "parse",
        help="read log lines into events: what did mtqpd understand?",
        description="Parse Postfix, Exim and Sendmail log lines into events. "
        "FILE may be '-' for standard input; .gz, .bz2 and .xz are read transparently.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--mta", choices=("auto", *MTAS), default="auto", help="reader for lines whose program does not say")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--stats", action="store_true", help="counts per MTA and kind, and the first unknown lines")
    p.add_argument("--tz", type=_zone, metavar="ZONE", help="zone of timestamps written without one (default UTC)")
    p.add_argument("--jobs", type=_positive, metavar="N", help="processes for --stats on large plain files")

    p = commands.add_parser(
        "replay",
        help="import old logs into the store",
        description="Read logs (rotated and compressed sets in any order) into the tracking store. "
        "Running it twice changes nothing.",
    )
    _ingest_options(p)

    p = commands.add_parser(
        "tail",
        help="follow live logs into the store",
        description="Follow log files into the tracking store through rotation (rename, copytruncate, "
        "compression) and restarts, until SIGTERM. Records are durable within a second; a restart "
        "resumes where the last durable record ended.",
    )
    _ingest_options(p)

    p = commands.add_parser(
        "show",
        help="where did this message go? (queue id, Message-ID or ENVID)",
        description="Print the records of a queue id, Message-ID (with or without <>) or ENVID, "
        "with every record linked to them.",
    )
    p.add_argument("ident", metavar="ID")
    _store_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object per record")

    p = commands.add_parser(
        "search", help="find messages by sender, recipient, time and outcome", description="Search the store."
    )
    _store_option(p)
    p.add_argument("--from", dest="sender", metavar="ADDR", help="envelope sender")
    p.add_argument("--to", dest="recipient", metavar="ADDR", help="recipient, final or original")
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
    return parser


def _open(args: argparse.Namespace, *, readonly: bool) -> TinyStore:
    path = Path(args.store)
    if readonly and not path.is_dir():
        raise SystemExit(f"mtqpd {args.command}: no store at {path} (mtqpd replay --store {path} LOG... makes one)")
    return TinyStore(path, readonly=readonly)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(default_host=args.host or os.uname().nodename.split(".")[0])


def _replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _open(args, readonly=False)
    try:
        summary = replay(args.files, store, settings=settings, tz=args.tz, mta=args.mta, progress=progress_stream())
    finally:
        store.close()
    summary.write(sys.stderr if sys.stdout.isatty() else sys.stdout)
    return 1 if summary.errors else 0


def _tail(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="mtqpd tail: %(message)s")
    logging.getLogger("ingest").setLevel(logging.INFO)
    settings = _settings(args)
    store = _open(args, readonly=False)
    try:
        tailer = Tailer(store, settings, tz=args.tz, mta=args.mta)
        trio.run(tailcmd.run, [os.path.abspath(f) for f in args.files], tailer)
    finally:
        store.close()
    return 0


def _show(args: argparse.Namespace) -> int:
    store = _open(args, readonly=True)
    status = showcmd.show(store, args.ident, as_json=args.json, out=sys.stdout)
    if status:
        print(f"mtqpd show: nothing known of {args.ident}", file=sys.stderr)
    return status


def _search(args: argparse.Namespace) -> int:
    store = _open(args, readonly=True)
    criteria = {k: getattr(args, k) for k in ("sender", "recipient", "since", "until", "action", "limit")}
    return showcmd.search(store, as_json=args.json, out=sys.stdout, **criteria)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "parse":
            return parsecmd.run(
                args.files,
                mta=args.mta,
                as_json=args.json,
                stats=args.stats,
                tz=args.tz,
                jobs=args.jobs,
                out=sys.stdout,
            )
        handler = {"replay": _replay, "tail": _tail, "show": _show, "search": _search}[args.command]
        return handler(args)
    except StoreLocked as exc:
        print(f"mtqpd {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mtqpd parse big.log | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
