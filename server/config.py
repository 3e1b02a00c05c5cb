"""One TOML file for all of mtqpd (stdlib ``tomllib``), and the command
line options that override it.

Every setting has one key in the file and one option on the command line;
the command line wins, then the file, then the default. Paths in the file
are relative to the file's own directory. A mistake is a ``ConfigError``
that names the file and the key (``mtqpd.toml: log[2].tz: unknown time zone
'Europe/Berln'``); an unknown key is a mistake too, so that a misspelt one
is not silently ignored.

The file, every key optional::

    store = "/var/lib/mtqpd"          # else $MTQPD_STORE, else /var/lib/mtqpd
    memory = "256M"                   # what the process keeps within, whatever the store's size
    site_key_file = "site.key"        # default: <store>/site.key (made if missing)
    reporting_mta = "mx1.example.org" # default: this host's FQDN
    hide_internal = false             # RFC 3887 example #12
    trusted_networks = ["192.0.2.0/24"]
    listen = ["*:1038"]               # ADDR:PORT, [IPV6]:PORT, *:PORT

    [[log]]                           # one table per log file to tail
    path = "/var/log/mail.log"
    host = "mx1"                      # for lines that name none (Exim's mainlog)
    tz = "Europe/Berlin"              # for timestamps without a zone
    mta = "auto"                      # or postfix, exim, sendmail

    [tls]
    required = false
    [[tls.certificate]]
    cert = "/etc/mtqpd/mx1.pem"
    key = "/etc/mtqpd/mx1.key"

    [timeouts]
    idle = "10m"                      # at least 10 minutes (RFC 3887 section 2.5)
    tls_handshake = "30s"

    [limits]
    max_connections = 1000
    max_commands = 1000
    max_bad_commands = 10

    [queue_lifetime]                  # Will-Retry-Until = arrival + this
    postfix = "5d"
    exim = "4d"
    sendmail = "5d"

Durations are seconds (a number) or a number and a unit: ``90s``, ``10m``,
``2h``, ``5d``, ``1w``.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ingest.correlator import DEFAULT_LIFETIMES, Settings
from ingest.memory import DEFAULT_MEMORY, Budget, parse_size
from ingest.store import StoreError, location_path
from parsers import MTAS

from .auth import Network
from .net import DEFAULT_ADDRESSES, Limits
from .serve import ConfigError, parse_listen

#: Where the store lives when neither the command line nor the file says.
DEFAULT_STORE = "/var/lib/mtqpd"
#: RFC 3887 section 2.5: an autologout timer MUST be at least 10 minutes.
MIN_IDLE = 600.0

__all__ = ["DEFAULT_STORE", "Config", "ConfigError", "LogSource", "add_options", "from_args", "load"]


@dataclass(frozen=True, slots=True)
class LogSource:
    """A log file to tail, with what its lines cannot say themselves."""

    path: str
    host: str | None = None
    tz: str | None = None
    mta: str = "auto"


@dataclass(slots=True)
class Config:
    """Everything ``mtqpd run`` needs, resolved: defaults, then the file,
    then the command line."""

    store: Path = field(default_factory=lambda: Path(os.environ.get("MTQPD_STORE", DEFAULT_STORE)))
    memory: int = DEFAULT_MEMORY
    site_key_file: Path | None = None
    reporting_mta: str | None = None
    hide_internal: bool = False
    trusted: tuple[Network, ...] = ()
    listen: tuple[tuple[str | None, int], ...] = DEFAULT_ADDRESSES
    logs: tuple[LogSource, ...] = ()
    tls: tuple[tuple[str, str], ...] = ()
    tls_required: bool = False
    limits: Limits = field(default_factory=Limits)
    lifetimes: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_LIFETIMES))
    #: The file read, if any.
    source: Path | None = None

    @property
    def budget(self) -> Budget:
        return Budget(self.memory)

    @property
    def site_key_path(self) -> Path:
        return self.site_key_file or self.store / "site.key"

    @property
    def mta_name(self) -> str:
        """The Reporting-MTA of answers: as configured, else this host's FQDN."""
        return self.reporting_mta or socket.getfqdn()

    def settings(self, host: str | None = None) -> Settings:
        """The correlator's settings for a log of ``host``."""
        return Settings(default_host=host or default_host(), lifetimes=dict(self.lifetimes))


def default_host() -> str:
    """The host name for lines that name none: this machine's short name."""
    return os.uname().nodename.split(".")[0]


# -- values -----------------------------------------------------------------

_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(value: Any) -> float:
    """Seconds from a number or ``90s``/``10m``/``2h``/``5d``/``1w``."""
    if isinstance(value, bool):
        raise ValueError("a duration, not true/false")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _SPAN.fullmatch(value.strip())):
        seconds = float(m[1]) * _UNIT[m[2]]
    else:
        raise ValueError(f"not a duration (seconds, or 90s, 10m, 2h, 5d): {value!r}")
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def _idle(value: Any) -> float:
    seconds = duration(value)
    if seconds < MIN_IDLE:
        raise ValueError(f"at least {MIN_IDLE:g} seconds (RFC 3887 section 2.5)")
    return seconds


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a whole number, not {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"a whole number, not {value!r}") from None
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"true or false, not {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a non-empty string, not {value!r}")
    return value.strip()


def _zone(value: Any) -> str:
    text = _text(value)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {text!r}") from None
    return text


def _memory(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a size like 256M or a number of bytes, not {value!r}")
    return parse_size(value)


def _mta(value: Any) -> str:
    text = _text(value).lower()
    if text not in ("auto", *MTAS):
        raise ValueError(f"one of auto, {', '.join(MTAS)}; not {text!r}")
    return text


def _network(value: Any) -> Network:
    try:
        return ipaddress.ip_network(_text(value))
    except ValueError as exc:
        raise ValueError(f"not a network: {exc}") from None


def _listen(value: Any) -> tuple[str | None, int]:
    """``ADDR:PORT``, ``[IPV6]:PORT``, ``*:PORT``, or a port alone."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _text(value)
    if text.startswith("[") and text.endswith("]"):
        raise ValueError(f"no port: {text}:PORT")
    return parse_listen(text)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"a list, not {value!r}")
    return value


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"a table, not {value!r}")
    return value


class _Reader:
    """Reads one file's tables, each value through its checker; every error
    names the file and the key."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.base = source.parent

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def take(self, table: dict[str, Any], prefix: str, checkers: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
        """The table's values, checked; an unknown key is an error that
        suggests the nearest known one."""
        out = {}
        for key, value in table.items():
            name = f"{prefix}{key}"
            if key not in checkers:
                close = difflib.get_close_matches(key, list(checkers), n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
                raise self.fail(name, f"unknown key{hint}")
            try:
                out[key] = checkers[key](value)
            except ValueError as exc:
                raise self.fail(name, str(exc)) from None
        return out

    def path(self, value: Any) -> Path:
        path = Path(os.path.expanduser(_text(value)))
        return path if path.is_absolute() else self.base / path

    def store(self, value: Any) -> Path:
        """A store's location: a path (relative to the file), or a URI of a
        kind this mtqpd has."""
        try:
            return self.path(str(location_path(os.path.expanduser(_text(value)))))
        except StoreError as exc:
            raise ValueError(str(exc)) from None


def _top_checkers(r: _Reader) -> dict[str, Callable[[Any], Any]]:
    return {
        "store": r.store,
        "memory": _memory,
        "site_key_file": r.path,
        "reporting_mta": _text,
        "hide_internal": _bool,
        "trusted_networks": lambda v: tuple(_network(x) for x in _list(v)),
        "listen": lambda v: tuple(_listen(x) for x in _list(v)),
        "log": _list,
        "tls": _table,
        "timeouts": _table,
        "limits": _table,
        "queue_lifetime": _table,
    }


def load(path: Path | str) -> tuple[Config, set[str]]:
    """The file's settings over the defaults, and the keys it set."""
    source = Path(path)
    try:
        with source.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    r = _Reader(source)
    top = r.take(data, "", _top_checkers(r))
    cfg = Config(source=source)
    given: set[str] = set()

    for key in ("store", "memory", "site_key_file", "reporting_mta", "hide_internal", "listen"):
        if key in top:
            setattr(cfg, key, top[key])
            given.add(key)
    if "trusted_networks" in top:
        cfg.trusted = top["trusted_networks"]
        given.add("trusted")

    if "log" in top:
        logs = []
        for i, entry in enumerate(top["log"], 1):
            name = f"log[{i}]"
            try:
                entry = _table(entry)
            except ValueError as exc:
                raise r.fail(name, str(exc)) from None
            values = r.take(entry, f"{name}.", {"path": r.path, "host": _text, "tz": _zone, "mta": _mta})
            if "path" not in values:
                raise r.fail(f"{name}.path", "missing: which file to tail?")
            logs.append(LogSource(str(values.pop("path")), **values))
        paths = [log.path for log in logs]
        for p in paths:
            if paths.count(p) > 1:
                raise r.fail("log", f"{p} is listed twice")
        cfg.logs = tuple(logs)
        given.add("logs")

    if "tls" in top:
        tls = r.take(top["tls"], "tls.", {"required": _bool, "certificate": _list})
        if "required" in tls:
            cfg.tls_required = tls["required"]
            given.add("tls_required")
        pairs = []
        for i, entry in enumerate(tls.get("certificate", ()), 1):
            name = f"tls.certificate[{i}]"
            try:
                entry = _table(entry)
            except ValueError as exc:
                raise r.fail(name, str(exc)) from None
            values = r.take(entry, f"{name}.", {"cert": r.path, "key": r.path})
            for part in ("cert", "key"):
                if part not in values:
                    raise r.fail(f"{name}.{part}", "missing: a certificate needs both cert and key")
            pairs.append((str(values["cert"]), str(values["key"])))
        if "certificate" in tls:
            cfg.tls = tuple(pairs)
            given.add("tls")

    limits: dict[str, Any] = {}
    if "timeouts" in top:
        t = r.take(top["timeouts"], "timeouts.", {"idle": _idle, "tls_handshake": duration})
        limits.update({"timeout": t["idle"]} if "idle" in t else {})
        limits.update({"handshake_timeout": t["tls_handshake"]} if "tls_handshake" in t else {})
    if "limits" in top:
        limits.update(
            r.take(
                top["limits"],
                "limits.",
                {"max_connections": _positive_int, "max_commands": _positive_int, "max_bad_commands": _positive_int},
            )
        )
    if limits:
        cfg.limits = Limits(**{**_limits_dict(cfg.limits), **limits})
        given.update(f"limits.{k}" for k in limits)

    if "queue_lifetime" in top:
        spans = r.take(top["queue_lifetime"], "queue_lifetime.", dict.fromkeys(MTAS, duration))
        cfg.lifetimes.update({mta: timedelta(seconds=s) for mta, s in spans.items()})
        given.update(f"queue_lifetime.{m}" for m in spans)

    _check(cfg, lambda key, problem: r.fail(key, problem))
    return cfg, given


def _limits_dict(limits: Limits) -> dict[str, Any]:
    return {
        "timeout": limits.timeout,
        "max_connections": limits.max_connections,
        "max_commands": limits.max_commands,
        "max_bad_commands": limits.max_bad_commands,
        "handshake_timeout": limits.handshake_timeout,
    }


def _check(cfg: Config, fail: Callable[[str, str], ConfigError]) -> None:
    """What only the whole configuration can say."""
    if cfg.tls_required and not cfg.tls:
        raise fail("tls.required", "needs a certificate ([[tls.certificate]] with cert and key)")


# -- the command line ---------------------------------------------------------


def _arg(check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """A checker as an argparse type, so that the command line's errors
    read like the file's."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__.lstrip("_")
    return convert


def _lifetime(text: str) -> tuple[str, float]:
    mta, sep, span = text.partition("=")
    if not sep or mta.strip().lower() not in MTAS:
        raise ValueError(f"MTA=DURATION with MTA one of {', '.join(MTAS)}: {text!r}")
    return mta.strip().lower(), duration(span)


#: Option groups, by what a command needs: each is added by ``add_options``.
GROUPS = ("store", "server", "tail")


def add_options(p: argparse.ArgumentParser, groups: Sequence[str] = GROUPS) -> None:
    """``--config`` and the options of ``groups`` ("store": the store and
    the site key; "server": what ``serve`` needs; "tail": the logs and the
    queue lifetimes). Every default is None: only what is given overrides
    the file."""
    p.add_argument(
        "--config", metavar="FILE", default=os.environ.get("MTQPD_CONFIG"), help="TOML file (default: $MTQPD_CONFIG)"
    )
    if "store" in groups:
        p.add_argument("--store", metavar="DIR", help="the tracking store (file: store)")
        p.add_argument("--memory", type=_arg(_memory), metavar="SIZE", help="memory to keep within (file: memory)")
        p.add_argument("--site-key-file", metavar="FILE", help="default: <store>/site.key (file: site_key_file)")
        p.add_argument("--reporting-mta", metavar="NAME", help="this server's name in answers (default: FQDN)")
    if "server" in groups:
        p.add_argument("--listen", action="append", type=_arg(_listen), metavar="ADDR:PORT", help="repeatable")
        p.add_argument("--tls-cert", action="append", metavar="CERT", help="PEM certificate chain, repeatable")
        p.add_argument("--tls-key", action="append", metavar="KEY", help="its key, one per --tls-cert")
        p.add_argument("--tls-required", action=argparse.BooleanOptionalAction, help="TRACK only after STARTTLS")
        p.add_argument("--hide-internal", action=argparse.BooleanOptionalAction, help="report internal hops as us")
        p.add_argument("--trusted", action="append", type=_arg(_network), metavar="NET", help="repeatable")
        p.add_argument("--timeout", type=_arg(_idle), metavar="DURATION", help="inactivity timeout (>= 10m)")
        p.add_argument("--handshake-timeout", type=_arg(duration), metavar="DURATION")
        p.add_argument("--max-connections", type=_arg(_positive_int), metavar="N")
        p.add_argument("--max-commands", type=_arg(_positive_int), metavar="N", help="per connection")
        p.add_argument("--max-bad-commands", type=_arg(_positive_int), metavar="N", help="per connection")
    if "tail" in groups:
        p.add_argument("--log", action="append", metavar="FILE", help="a log to tail, repeatable (replaces [[log]])")
        p.add_argument("--host", help="host name for --log lines that carry none (default: this host)")
        p.add_argument("--tz", type=_arg(_zone), metavar="ZONE", help="zone of --log timestamps without one")
        p.add_argument("--mta", type=_arg(_mta), help="reader for --log lines whose program does not say")
        p.add_argument(
            "--queue-lifetime", action="append", type=_arg(_lifetime), metavar="MTA=DURATION", help="e.g. exim=4d"
        )


def from_args(args: argparse.Namespace) -> Config:
    """The configuration: defaults, then ``--config``'s file, then every
    option given on the command line."""
    cfg, _ = load(args.config) if getattr(args, "config", None) else (Config(), set())
    given = {k for k, v in vars(args).items() if v is not None}

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"--{key.replace('_', '-')}: {problem}")

    if "store" in given:
        try:
            cfg.store = location_path(args.store)
        except StoreError as exc:
            raise fail("store", str(exc)) from None
    if "site_key_file" in given:
        cfg.site_key_file = Path(args.site_key_file)
    if "memory" in given:
        cfg.memory = args.memory
    for key in ("reporting_mta", "hide_internal", "tls_required"):
        if key in given:
            setattr(cfg, key, getattr(args, key))
    if "listen" in given:
        cfg.listen = tuple(args.listen)
    if "trusted" in given:
        cfg.trusted = tuple(args.trusted)
    if "tls_cert" in given or "tls_key" in given:
        certs, keys = args.tls_cert or [], args.tls_key or []
        if len(certs) != len(keys):
            raise fail("tls_key", "give one --tls-key for each --tls-cert")
        cfg.tls = tuple(zip(certs, keys, strict=True))
    limits = {
        name: getattr(args, opt)
        for opt, name in (
            ("timeout", "timeout"),
            ("handshake_timeout", "handshake_timeout"),
            ("max_connections", "max_connections"),
            ("max_commands", "max_commands"),
            ("max_bad_commands", "max_bad_commands"),
        )
        if opt in given
    }
    if limits:
        cfg.limits = Limits(**{**_limits_dict(cfg.limits), **limits})
    if "log" in given:
        cfg.logs = tuple(LogSource(os.path.abspath(p), args.host, args.tz, args.mta or "auto") for p in args.log)
    elif given & {"host", "tz", "mta"}:
        # No --log: --host/--tz/--mta still apply, to every log of the file.
        cfg.logs = tuple(
            LogSource(
                log.path,
                args.host if "host" in given else log.host,
                args.tz if "tz" in given else log.tz,
                args.mta if "mta" in given else log.mta,
            )
            for log in cfg.logs
        )
    if "queue_lifetime" in given:
        cfg.lifetimes.update({mta: timedelta(seconds=s) for mta, s in args.queue_lifetime})
    _check(cfg, lambda key, problem: fail(key.replace(".", "_"), problem))
    return cfg
