"""The ``mtqpd`` command line.

It lives in ``server`` because that package is the top of the one-way flow
(parsers -> ingest -> store -> server): the command line may reach every
layer, and no layer below may reach it.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ingest import parsecmd
from parsers import MTAS


def _version() -> str:
    try:
        return version("mtqpd")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


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
    p.add_argument(
        "--mta", choices=("auto", *MTAS), default="auto", help="reader for lines whose program name does not say"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--stats", action="store_true", help="counts per MTA and kind, and the first unknown lines")
    p.add_argument(
        "--tz", metavar="ZONE", help="zone of timestamps written without one (default UTC), e.g. Europe/Berlin"
    )
    p.add_argument(
        "--jobs", type=_positive, metavar="N", help="processes for --stats on large plain files (default: one per core)"
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "parse":
            if args.tz:
                _check_zone(parser, args.tz)
            return parsecmd.run(
                args.files,
                mta=args.mta,
                as_json=args.json,
                stats=args.stats,
                tz=args.tz,
                jobs=args.jobs,
                out=sys.stdout,
            )
    except BrokenPipeError:  # `mtqpd parse big.log | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


def _check_zone(parser: argparse.ArgumentParser, name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        parser.error(f"--tz: unknown time zone {name!r}")


if __name__ == "__main__":
    sys.exit(main())
