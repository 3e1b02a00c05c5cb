"""server/config.py: the TOML file, the command line over it, and the errors
that name their key; and ``mtqpd run`` (tail and serve in one process) as a
subprocess driven by such a file."""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from ingest.store.tiny import TinyStore
from server import client, config
from server.config import Config, ConfigError, LogSource

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"

FULL = """
store = "store"
site_key_file = "/etc/mtqpd/site.key"
reporting_mta = "mx1.example.org"
hide_internal = true
trusted_networks = ["192.0.2.0/24", "2001:db8::/32"]
listen = ["127.0.0.1:1038", "[::1]:11038", "*:2038", 3038]

[[log]]
path = "/var/log/mail.log"

[[log]]
path = "exim/mainlog"
host = "mx2"
tz = "Europe/Berlin"
mta = "Exim"

[tls]
required = true
[[tls.certificate]]
cert = "certs/mx1.pem"
key = "/etc/mtqpd/mx1.key"

[timeouts]
idle = "15m"
tls_handshake = 20

[limits]
max_connections = 50
max_commands = 200
max_bad_commands = 3

[queue_lifetime]
exim = "2d"
sendmail = 3600
"""


def write(tmp_path: Path, text: str, name: str = "mtqpd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    config.add_options(p)
    return p


def resolved(argv: list[str]) -> Config:
    return config.from_args(parser().parse_args(argv))


def test_every_key_of_the_file(tmp_path: Path) -> None:
    cfg, given = config.load(write(tmp_path, FULL))
    assert cfg.store == tmp_path / "store"  # relative to the file's directory
    assert cfg.site_key_file == Path("/etc/mtqpd/site.key") and cfg.site_key_path == cfg.site_key_file
    assert cfg.reporting_mta == "mx1.example.org" and cfg.mta_name == "mx1.example.org"
    assert cfg.hide_internal is True
    assert cfg.trusted == (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert cfg.listen == (("127.0.0.1", 1038), ("::1", 11038), (None, 2038), (None, 3038))
    assert cfg.logs == (
        LogSource("/var/log/mail.log"),
        LogSource(str(tmp_path / "exim" / "mainlog"), "mx2", "Europe/Berlin", "exim"),
    )
    assert cfg.tls == ((str(tmp_path / "certs" / "mx1.pem"), "/etc/mtqpd/mx1.key"),)
    assert cfg.tls_required is True
    limits = cfg.limits
    assert (limits.timeout, limits.handshake_timeout) == (900, 20)
    assert (limits.max_connections, limits.max_commands, limits.max_bad_commands) == (50, 200, 3)
    assert cfg.lifetimes == {"postfix": timedelta(days=5), "exim": timedelta(days=2), "sendmail": timedelta(hours=1)}
    assert cfg.settings("mx2").default_host == "mx2" and cfg.settings().lifetimes["exim"] == timedelta(days=2)
    assert {"store", "logs", "tls", "tls_required", "limits.timeout", "queue_lifetime.exim"} <= given


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTQPD_STORE", raising=False)
    cfg, given = config.load(write(tmp_path, ""))
    assert given == set() and cfg.source == tmp_path / "mtqpd.toml"
    assert cfg.store == Path("/var/lib/mtqpd") and cfg.site_key_path == Path("/var/lib/mtqpd/site.key")
    assert cfg.listen == ((None, 1038),) and cfg.logs == () and cfg.tls == () and not cfg.tls_required
    assert cfg.limits == config.Limits() and cfg.limits.timeout == 600
    monkeypatch.setenv("MTQPD_STORE", "/srv/store")
    assert resolved([]).store == Path("/srv/store")  # no file: the environment, then the default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('stroe = "/x"', "stroe: unknown key (did you mean store?)"),
        ("hide_internal = 1", "hide_internal: true or false, not 1"),
        ('trusted_networks = ["192.0.2.1/24"]', "trusted_networks: not a network: 192.0.2.1/24 has host bits set"),
        ('trusted_networks = "192.0.2.0/24"', "trusted_networks: a list"),
        ('listen = ["[::1]"]', "listen: no port: [::1]:PORT"),
        ('listen = ["*:http"]', "listen: not a port"),
        ('listen = ["::1:1038"]', "listen: an IPv6 address goes in brackets"),
        ('[[log]]\nhost = "mx1"', "log[1].path: missing: which file to tail?"),
        (
            '[[log]]\npath = "a"\n[[log]]\npath = "b"\ntz = "Europe/Berln"',
            "log[2].tz: unknown time zone 'Europe/Berln'",
        ),
        ('[[log]]\npath = "a"\nmta = "qmail"', "log[1].mta: one of auto, postfix, exim, sendmail; not 'qmail'"),
        ('[[log]]\npath = "a"\nfile = "b"', "log[1].file: unknown key"),
        ('[[log]]\npath = "a"\n[[log]]\npath = "a"', "log: "),
        ('log = ["a"]', "log[1]: a table"),
        ("[tls]\nrequired = true", "tls.required: needs a certificate"),
        ('[[tls.certificate]]\ncert = "c.pem"', "tls.certificate[1].key: missing"),
        ('[tls]\nciphers = "x"', "tls.ciphers: unknown key"),
        ('[timeouts]\nidle = "5m"', "timeouts.idle: at least 600 seconds (RFC 3887 section 2.5)"),
        ('[timeouts]\ntls_handshake = "soon"', "timeouts.tls_handshake: not a duration"),
        ("[timeouts]\ntls_handshake = 0", "timeouts.tls_handshake: must be more than zero"),
        ("[limits]\nmax_connections = 0", "limits.max_connections: must be 1 or more"),
        ("[limits]\nmax_commands = 1.5", "limits.max_commands: a whole number"),
        ('[queue_lifetime]\nqmail = "5d"', "queue_lifetime.qmail: unknown key"),
        ("store = ", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        resolved(["--config", str(tmp_path / "nope.toml")])


def test_the_command_line_wins(tmp_path: Path) -> None:
    path = str(write(tmp_path, FULL))
    cfg = resolved(
        [
            *("--config", path, "--store", "/other", "--no-hide-internal", "--listen", "127.0.0.2:1"),
            *("--trusted", "198.51.100.0/24", "--timeout", "20m", "--max-bad-commands", "9"),
            *("--queue-lifetime", "postfix=1d", "--reporting-mta", "mx9.example.org", "--no-tls-required"),
        ]
    )
    assert cfg.store == Path("/other") and cfg.hide_internal is False and cfg.tls_required is False
    assert cfg.listen == (("127.0.0.2", 1),) and cfg.trusted == (ipaddress.ip_network("198.51.100.0/24"),)
    assert cfg.limits.timeout == 1200 and cfg.limits.max_bad_commands == 9 and cfg.limits.max_connections == 50
    assert cfg.lifetimes["postfix"] == timedelta(days=1) and cfg.lifetimes["exim"] == timedelta(days=2)
    assert cfg.reporting_mta == "mx9.example.org"
    assert cfg.site_key_file == Path("/etc/mtqpd/site.key")  # not given: the file's
    assert cfg.tls == ((str(tmp_path / "certs" / "mx1.pem"), "/etc/mtqpd/mx1.key"),)
    # --log replaces the file's logs; --host/--tz/--mta go with it.
    cfg = resolved(["--config", path, "--log", "a.log", "--log", "b.log", "--tz", "UTC", "--mta", "postfix"])
    assert [(Path(x.path).name, x.host, x.tz, x.mta) for x in cfg.logs] == [
        ("a.log", None, "UTC", "postfix"),
        ("b.log", None, "UTC", "postfix"),
    ]
    assert all(Path(x.path).is_absolute() for x in cfg.logs)
    # Without --log they apply to the file's logs.
    cfg = resolved(["--config", path, "--host", "mx7"])
    assert [x.host for x in cfg.logs] == ["mx7", "mx7"] and cfg.logs[1].tz == "Europe/Berlin"
    cfg = resolved(["--config", path, "--tls-cert", "a.pem", "--tls-key", "a.key"])
    assert cfg.tls == (("a.pem", "a.key"),)
    with pytest.raises(ConfigError, match="one --tls-key for each --tls-cert"):
        resolved(["--config", path, "--tls-cert", "a.pem", "--tls-key", "a.key", "--tls-cert", "b.pem"])


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--tls-key: give one --tls-key for each --tls-cert"):
        resolved(["--tls-cert", "a.pem"])
    with pytest.raises(ConfigError, match="--tls-required: needs a certificate"):
        resolved(["--tls-required"])
    for argv, message in [
        (["--timeout", "60"], "at least 600 seconds"),
        (["--tz", "Mars/Olympus"], "unknown time zone"),
        (["--queue-lifetime", "qmail=1d"], "MTA=DURATION"),
        (["--listen", "[::1]"], "no port"),
        (["--max-connections", "none"], "a whole number"),
    ]:
        with pytest.raises(SystemExit):
            parser().parse_args(argv)
        assert message in capsys.readouterr().err


def test_duration() -> None:
    assert [config.duration(x) for x in (90, 1.5, "90", "90s", "10m", "2h", "5d", "1w", "0.5h")] == [
        90,
        1.5,
        90,
        90,
        600,
        7200,
        432000,
        604800,
        1800,
    ]
    for bad in (True, "5 days", "-1", "", None):
        with pytest.raises(ValueError):
            config.duration(bad)


# -- mtqpd run -----------------------------------------------------------------------


def test_run_tails_and_serves_in_one_process_and_flushes_on_sigterm(tmp_path: Path) -> None:
    """``mtqpd run --config``: lines appended to the log are answerable over
    MTQP from the same process at once; SIGTERM ends it with status 0 and
    the store flushed (a fresh reader finds the records, and the tail
    checkpoint is at the end of the log)."""
    lines = (SAMPLES / "postfix" / "postfix.bsd.log").read_text().splitlines(keepends=True)
    log = tmp_path / "mail.log"
    log.write_text("".join(lines[:20]))
    store = tmp_path / "store"
    path = write(
        tmp_path,
        """
store = "store"
reporting_mta = "mx1.example.test"
listen = ["127.0.0.1:0"]
[[log]]
path = "mail.log"
host = "mx1"
""",
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "run", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert run.stderr is not None
        port = None
        for line in run.stderr:
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(m[1])
            if "following" in line:
                break
        assert port, "mtqpd run did not start"
        with log.open("a") as f:
            f.write("".join(lines[20:]))
        site_key = (store / "site.key").read_bytes()
        assert len(site_key) == 32 and (store / "site.key").stat().st_mode & 0o777 == 0o600

        async def ask() -> client.Trace:
            # A reader of the same store (read-only) sees what run flushed; the
            # secret is derived from the id, so it is the same for the server.
            secret = client.auth.encode_secret(
                client.auth.keyed_secret(site_key, "s05.mixed-outcomes@client.example.test")
            )
            return await client.track("127.0.0.1", port, "s05.mixed-outcomes@client.example.test", secret)

        deadline = time.monotonic() + 20
        while True:
            trace = trio.run(ask)
            if trace.found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert trace.found, client.format_trace(trace)
        actions = sorted(r.action for part in trace.answers[0].parts for r in part.recipients)
        assert actions == ["delayed", "delivered", "failed"]
    finally:
        run.send_signal(signal.SIGTERM)
        code = run.wait(timeout=30)
    assert code == 0, run.stderr.read() if run.stderr else ""
    reader = TinyStore(store, readonly=True)
    (checkpoint,) = [reader.get_meta(f"tail:{log}")]
    reader.close()
    assert checkpoint["offset"] == log.stat().st_size
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "show",
            "--store",
            str(store),
            "--json",
            "<s10.content-filter@client.example.test>",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert [json.loads(x)["recipients"][0]["action"] for x in shown.stdout.splitlines()] == ["transferred", "delivered"]


def test_run_needs_a_log(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "run", "--store", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 1 and "nothing to tail" in out.stderr
