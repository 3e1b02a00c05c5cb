"""Capture real Exim logs with ground truth into samples/exim/.

Run as root on Debian 12, after ``samples/capture/setup-host.sh``::

    python3 samples/capture/capture_exim.py [--prefix /opt/mta/exim-root]

Postfix is installed with apt on the capture host and conflicts with the
exim4 packages, so Exim is not installed with apt: when the prefix lacks the
binary, the Debian 12 packages exim4-base, exim4-config and
exim4-daemon-light are fetched with ``apt-get download`` and unpacked there
with ``dpkg -x`` (their library dependencies are installed with apt).

Two Exim instances run on loopback, each from one complete configuration
file of ours (``-C``, templates in ``samples/capture/exim/``):

* mx1 on 127.0.0.1:2510 (mx1.example.test), logging to mainlog, rejectlog
  and syslog (tag ``exim``, routed by the shared capture rsyslogd to
  /var/log/mtqpd-capture/exim.syslog.log);
* mx2 on 127.0.0.1:2511 (mx2.example.test), which mx1 relays two domains to
  (scenario 11), logging to its own mainlog.

Loopback SMTP sinks (mtalab.Sink) on 2610-2614 play the remote relays. The
script runs the scenarios of samples/README.md, waits for their outcomes,
stops both instances and writes samples/exim/{mainlog, rejectlog,
exim.syslog.log, mx2.mainlog, expected.json}. The ground truth comes from the
scenarios, the sinks' journals and the local mailboxes, never from Exim's
logs. Every run starts from scratch (spools, logs and mailboxes wiped) and
takes three to four minutes, most of it waiting for scenario 9's message to
expire.

Exim keeps root privilege for a ``-C`` configuration only when it is listed
in TRUSTED_CONFIG_LIST, which Debian's build sets to
/etc/exim4/trusted_configs; without it the daemon's re-exec for immediate
delivery would lose privilege. The script adds its two configuration paths
there (the exim4 packages are not installed, so nobody else owns the file).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import mailbox
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mtalab

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "exim"
BASE = Path("/var/spool/mtqpd-capture/exim")
SYSLOG = Path("/var/log/mtqpd-capture/exim.syslog.log")
TRUSTED_CONFIGS = Path("/etc/exim4/trusted_configs")
PACKAGES = ("exim4-base", "exim4-config", "exim4-daemon-light")
EXIM_USER = "Debian-exim"

MX1_PORT, MX2_PORT = 2510, 2511
LOCAL = "mx1.example.test"
SENDER = f"sender@{LOCAL}"

# Loopback SMTP sinks standing in for the remote relays, one per domain so
# that the retry rules (per domain) and the sinks' answers stay independent.
SINK_PORTS = {"relay": 2610, "busy": 2611, "stuck": 2612, "expire": 2613, "far": 2614}

#: Upper bound for every outcome to show up; scenario 9 needs ~3.5 minutes.
OUTCOME_TIMEOUT = 480


class CaptureError(RuntimeError):
    """A ground-truth check did not hold: no expected.json is written."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CaptureError(what)


# --------------------------------------------------------------------------
# Installing Exim into a prefix (no apt-get install: it conflicts with Postfix)


def ensure_exim(prefix: Path) -> Path:
    """The exim4 binary under ``prefix``; download and unpack it if missing."""
    binary = prefix / "usr/sbin/exim4"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt sandbox user writes the downloads
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True)
        debs = sorted(Path(tmp).glob("*.deb"))
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), str(prefix)], check=True)
        daemon = next(d for d in debs if d.name.startswith("exim4-daemon-light_"))
        depends = subprocess.run(
            ["dpkg-deb", "-f", str(daemon), "Depends"], check=True, capture_output=True, text=True
        ).stdout
    # The daemon's library dependencies (the exim4-* ones are unpacked above).
    libs = []
    for dep in depends.split(","):
        name = dep.split("|")[0].split("(")[0].strip()
        if name and not name.startswith("exim4"):
            libs.append(name)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *libs], check=True)
    return binary


def exim_versions(binary: Path, prefix: Path) -> tuple[str, str]:
    """(Exim version, Debian package version) of the unpacked build."""
    banner = subprocess.run([str(binary), "-bV"], capture_output=True, text=True).stdout
    version = re.search(r"Exim version (\S+)", banner).group(1)
    changelog = prefix / "usr/share/doc/exim4-daemon-light/changelog.Debian.gz"
    with gzip.open(changelog, "rt") as f:
        debian = re.match(r"\S+ \(([^)]+)\)", f.readline()).group(1)
    return version, debian


# --------------------------------------------------------------------------
# The two Exim instances


@dataclass
class Instance:
    """One Exim daemon: its configuration, spool, logs and mailboxes under ``base``."""

    name: str
    base: Path
    port: int
    template: Path

    @property
    def config(self) -> Path:
        return self.base / "exim.conf"

    @property
    def pid_file(self) -> Path:
        return self.base / "exim.pid"

    @property
    def log_dir(self) -> Path:
        return self.base / "log"

    def mbox(self, user: str) -> Path:
        return self.base / "mail" / user

    def prepare(self, exim: Path, values: dict[str, int]) -> None:
        """Create the directories and write the configuration from its template."""
        exim_uid, exim_gid = _exim_ids()
        for sub, mode in (("spool", 0o750), ("log", 0o750)):
            d = self.base / sub
            d.mkdir(parents=True)
            os.chown(d, exim_uid, exim_gid)
            d.chmod(mode)
        mail = self.base / "mail"
        mail.mkdir()
        mail.chmod(0o1777)  # appendfile runs as the recipient and creates its mbox
        text = self.template.read_text()
        for key, value in {"EXIM": exim, "BASE": self.base, "PORT": self.port, **values}.items():
            text = text.replace(f"@{key}@", str(value))
        expect(re.search(r"@[A-Z0-9_]+@", text) is None, f"unfilled placeholder in {self.config}")
        self.config.write_text(text)
        self.config.chmod(0o644)

    def exim(self, exim: Path, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([str(exim), "-C", str(self.config), *args], check=True, **kw)

    def start(self, exim: Path) -> None:
        """Start the daemon (it detaches) with a queue runner every 15 seconds."""
        self.exim(exim, "-bd", "-q15s")
        mtalab.wait_until(
            lambda: mtalab.port_open(self.port) and self.pid_file.exists(), 30, 0.2, f"{self.name} daemon"
        )

    def queue_count(self, exim: Path) -> int:
        return int(self.exim(exim, "-bpc", capture_output=True, text=True).stdout.strip())

    def processes(self) -> list[int]:
        """Pids of every process running this instance's configuration."""
        needle = str(self.config).encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if needle in (proc / "cmdline").read_bytes():
                        pids.append(int(proc.name))
                except OSError:
                    pass
        return pids

    def stop(self) -> None:
        """Stop the daemon by its pid file, then wait for its children to finish."""
        if self.pid_file.exists():
            pid = int(self.pid_file.read_text().split()[0])
            if pid in self.processes():
                os.kill(pid, signal.SIGTERM)
        try:
            mtalab.wait_until(lambda: not self.processes(), 30, 0.2, f"{self.name} processes to exit")
        except TimeoutError:
            for pid in self.processes():
                os.kill(pid, signal.SIGTERM)
            mtalab.wait_until(lambda: not self.processes(), 10, 0.2, f"{self.name} processes to exit")


def _exim_ids() -> tuple[int, int]:
    pw = pwd.getpwnam(EXIM_USER)
    return pw.pw_uid, pw.pw_gid


def trust_configs(instances: list[Instance]) -> None:
    """List our configurations in Debian's TRUSTED_CONFIG_LIST file (see module doc)."""
    TRUSTED_CONFIGS.parent.mkdir(mode=0o755, exist_ok=True)
    present = TRUSTED_CONFIGS.read_text().splitlines() if TRUSTED_CONFIGS.exists() else []
    missing = [str(i.config) for i in instances if str(i.config) not in present]
    if missing:
        with TRUSTED_CONFIGS.open("a") as f:
            f.write("".join(line + "\n" for line in missing))
    TRUSTED_CONFIGS.chmod(0o644)


# --------------------------------------------------------------------------
# Scenario helpers


def message_id(n: int, name: str) -> str:
    return f"<s{n:02d}.{name}@client.example.test>"


def send(
    n: int,
    name: str,
    rcpts: list[str],
    *,
    mail_options: tuple[str, ...] = (),
    notify: str | None = None,
    subject: str | None = None,
    data_refused: bool = False,
) -> tuple[str, mtalab.Submission]:
    """Submit scenario n's message over SMTP with ENVID and per-recipient ORCPT.

    Checks the answer to DATA: 250, or a 5xx refusal when ``data_refused``.
    """
    mid = message_id(n, name)
    msg = mtalab.make_message(mid, SENDER, rcpts, subject or f"s{n:02d} {name}")
    rcpt_options = {r: [f"ORCPT=rfc822;{r}"] + ([f"NOTIFY={notify}"] if notify else []) for r in rcpts}
    sub = mtalab.submit(
        MX1_PORT, msg, SENDER, rcpts, mail_options=[f"ENVID=mtqpd-s{n:02d}", *mail_options], rcpt_options=rcpt_options
    )
    if any(code in (250, 251) for code, _ in sub.rcpt_replies.values()):
        code = sub.data_reply[0] if sub.data_reply else None
        expect(
            code is not None and (code // 100 == 5 if data_refused else code == 250),
            f"s{n:02d}: unexpected answer to DATA: {sub}",
        )
    return mid, sub


def in_mbox(path: Path, mid: str) -> bool:
    return any(d.message_id == mid for d in mtalab.read_mbox(path))


def return_path(path: Path, mid: str) -> str | None:
    """The Return-path header (the envelope sender) of message ``mid`` in an mbox."""
    box = mailbox.mbox(str(path), create=False)
    try:
        for msg in box:
            if (msg.get("Message-ID") or "").strip() == mid:
                return (msg.get("Return-path") or "").strip()
    finally:
        box.close()
    return None


def recipient(addr: str, action: str, status: str, *, final: str | None = None, **extra) -> dict:
    return {"original": addr, "final": final or addr, "action": action, "status": status, **extra}


class Lab:
    """The running capture: instances, sinks and the ground-truth checks."""

    def __init__(self, exim: Path, mx1: Instance, mx2: Instance, sinks: dict[str, mtalab.Sink]):
        self.exim, self.mx1, self.mx2, self.sinks = exim, mx1, mx2, sinks

    def notifications(self, mid: str) -> list[mtalab.Delivered]:
        """Notifications about ``mid`` delivered to the sender, in delivery order."""
        return [d for d in mtalab.read_mbox(self.mx1.mbox("sender")) if d.reports_on == mid]

    def sink_outcome(self, sink: str, mid: str, rcpt: str) -> str | None:
        return self.sinks[sink].outcome(mid, rcpt)


# --------------------------------------------------------------------------
# The run


def run_scenarios(lab: Lab, truth: mtalab.GroundTruth) -> None:
    """Submit every scenario, wait for the outcomes, and record the ground truth."""
    mx1, mx2, relay = lab.mx1, lab.mx2, lab.sinks["relay"]
    lab.sinks["expire"].answer("never@expire.test", "450 4.2.1 Mailbox busy, try again later")
    lab.sinks["stuck"].answer("wait@stuck.test", "451 4.4.1 stuck.test: service temporarily unavailable")
    lab.sinks["busy"].answer("full@busy.test", "452 4.2.2 Mailbox full, try again later")
    relay.answer("later@relay.test", "451 4.3.0 Temporary failure, please try again later", "250 2.1.5 Ok")
    relay.answer("nosuch@relay.test", "550 5.1.1 <nosuch@relay.test>: Recipient address rejected: User unknown")
    relay.answer("gone@relay.test", "550 5.1.1 <gone@relay.test>: Recipient address rejected: User unknown")

    # The slow ones first: scenario 9 must expire, scenario 8 must draw a
    # delay warning, both while the others run.
    s09, _ = send(9, "expired", ["never@expire.test"])
    s08, _ = send(8, "still-deferred", ["wait@stuck.test"])
    s05, _ = send(5, "mixed-outcomes", [f"bob@{LOCAL}", "full@busy.test", "gone@relay.test"])
    s03, _ = send(3, "relay-deferred-then-accepted", ["later@relay.test"])
    s01, _ = send(1, "local-delivery", [f"alice@{LOCAL}"])
    s02, _ = send(2, "relay-accepted", ["ok@relay.test"])
    s04, _ = send(4, "relay-rejected-bounce", ["nosuch@relay.test"])
    s06a, _ = send(6, "alias-expansion", [f"team@{LOCAL}"])
    s06b, _ = send(6, "alias-single", [f"info@{LOCAL}"])
    s07_rcpt = f"ghost@{LOCAL}"
    _, s07 = send(7, "unknown-local-user", [s07_rcpt])
    s11, _ = send(11, "second-instance", ["carol@mx2.example.test", "far@far.test"])
    s12, _ = send(12, "dsn-parameters", [f"dave@{LOCAL}"], mail_options=("RET=HDRS",), notify="SUCCESS,FAILURE")
    s13 = message_id(13, "local-submission")
    mx1.exim(
        lab.exim,
        "-f",
        SENDER,
        "-oi",
        f"erin@{LOCAL}",
        input=mtalab.make_message(s13, SENDER, [f"erin@{LOCAL}"], "s13 local-submission"),
    )
    s14, _ = send(14, "relay-two-recipients", ["one@relay.test", "two@relay.test"])
    s15_rcpt = "someone@elsewhere.test"
    _, s15 = send(15, "relay-denied", [s15_rcpt])
    s16_rcpt = f"alice@{LOCAL}"
    _, s16 = send(16, "content-rejected", [s16_rcpt], subject="s16 cheap SPAM offer", data_refused=True)

    def delivered(inst: Instance, user: str, mid: str):
        return lambda: in_mbox(inst.mbox(user), mid)

    def relayed(mid: str, rcpt: str, sink: str = "relay"):
        return lambda: lab.sink_outcome(sink, mid, rcpt) == "2"

    def notified(mid: str):
        return lambda: bool(lab.notifications(mid))

    waits = {
        "s01 in alice's mailbox": delivered(mx1, "alice", s01),
        "s02 at the sink": relayed(s02, "ok@relay.test"),
        "s03 at the sink after a deferral": relayed(s03, "later@relay.test"),
        "s04 NDR": notified(s04),
        "s05 in bob's mailbox": delivered(mx1, "bob", s05),
        "s05 NDR": notified(s05),
        "s05 deferred at busy.test": lambda: lab.sink_outcome("busy", s05, "full@busy.test") == "4",
        "s06 in carol's mailbox": delivered(mx1, "carol", s06a),
        "s06 in dave's mailbox": delivered(mx1, "dave", s06a),
        "s06 in erin's mailbox": delivered(mx1, "erin", s06a),
        "s06 alias-single in frank's mailbox": delivered(mx1, "frank", s06b),
        "s08 delay warning": notified(s08),
        "s09 NDR after expiry": notified(s09),
        "s11 in carol's mailbox on mx2": delivered(mx2, "carol", s11),
        "s11 at the far sink": relayed(s11, "far@far.test", "far"),
        "s12 in dave's mailbox": delivered(mx1, "dave", s12),
        "s12 success DSN": notified(s12),
        "s13 in erin's mailbox": delivered(mx1, "erin", s13),
        "s14 one@ at the sink": relayed(s14, "one@relay.test"),
        "s14 two@ at the sink": relayed(s14, "two@relay.test"),
    }
    deadline = time.monotonic() + OUTCOME_TIMEOUT
    for what, predicate in waits.items():
        mtalab.wait_until(predicate, max(1.0, deadline - time.monotonic()), 1.0, what)
    # Only scenarios 5 (busy.test) and 8 stay queued on mx1; let the
    # notifications' and the relays' deliveries finish their log lines.
    mtalab.wait_until(
        lambda: lab.mx1.queue_count(lab.exim) == 2 and lab.mx2.queue_count(lab.exim) == 0, 60, 1.0, "queues to settle"
    )
    time.sleep(2)

    # -- ground truth, scenario by scenario
    m = truth.message
    m(
        scenario=1,
        name="local-delivery",
        message_id=s01,
        envid="mtqpd-s01",
        sender=SENDER,
        recipients=[recipient(f"alice@{LOCAL}", "delivered", "2")],
    )
    m(
        scenario=2,
        name="relay-accepted",
        message_id=s02,
        envid="mtqpd-s02",
        sender=SENDER,
        recipients=[recipient("ok@relay.test", "relayed", "2")],
    )
    expect(relay.rules.attempts["later@relay.test"] >= 2, "s03: the sink saw no retry")
    m(
        scenario=3,
        name="relay-deferred-then-accepted",
        message_id=s03,
        envid="mtqpd-s03",
        sender=SENDER,
        recipients=[recipient("later@relay.test", "relayed", "2")],
    )

    ndr04 = lab_ndr(lab, s04, {"nosuch@relay.test": "failed"})
    expect(lab.sink_outcome("relay", s04, "nosuch@relay.test") == "5", "s04: sink did not refuse")
    m(
        scenario=4,
        name="relay-rejected-bounce",
        message_id=s04,
        envid="mtqpd-s04",
        sender=SENDER,
        recipients=[recipient("nosuch@relay.test", "failed", "5")],
        bounce=ndr04.message_id,
    )
    notification(lab, truth, ndr04, s04, 4, "relay-rejected-bounce-ndr")

    ndr05 = lab_ndr(lab, s05, {"gone@relay.test": "failed"})
    expect(lab.sink_outcome("relay", s05, "gone@relay.test") == "5", "s05: sink did not refuse gone@")
    expect(lab.sink_outcome("busy", s05, "full@busy.test") == "4", "s05: busy.test did not stay 4xx")
    m(
        scenario=5,
        name="mixed-outcomes",
        message_id=s05,
        envid="mtqpd-s05",
        sender=SENDER,
        recipients=[
            recipient(f"bob@{LOCAL}", "delivered", "2"),
            recipient("full@busy.test", "delayed", "4"),
            recipient("gone@relay.test", "failed", "5"),
        ],
        bounce=ndr05.message_id,
    )
    notification(lab, truth, ndr05, s05, 5, "mixed-outcomes-ndr")

    m(
        scenario=6,
        name="alias-expansion",
        message_id=s06a,
        envid="mtqpd-s06",
        sender=SENDER,
        recipients=[
            recipient(
                f"team@{LOCAL}",
                "expanded",
                "2",
                members=[
                    {"final": f"{u}@{LOCAL}", "action": "delivered", "status": "2"} for u in ("carol", "dave", "erin")
                ],
            )
        ],
    )
    m(
        scenario=6,
        name="alias-single",
        message_id=s06b,
        envid="mtqpd-s06",
        sender=SENDER,
        recipients=[recipient(f"info@{LOCAL}", "delivered", "2", final=f"frank@{LOCAL}")],
    )

    for n, name, sub, rcpt in ((7, "unknown-local-user", s07, s07_rcpt), (15, "relay-denied", s15, s15_rcpt)):
        code, text = sub.rcpt_replies[rcpt]
        expect(code == 550 and sub.data_reply is None, f"s{n:02d}: unexpected reply {code} {text}")
        truth.rejection(scenario=n, name=name, sender=SENDER, recipient=rcpt, status="5", reply=f"{code} {text}")

    expect(lab.sink_outcome("stuck", s08, "wait@stuck.test") == "4", "s08: stuck.test did not stay 4xx")
    [warn08] = lab.notifications(s08)
    expect([r["action"] for r in warn08.dsn_recipients] == ["delayed"], f"s08: not a delay warning: {warn08}")
    m(
        scenario=8,
        name="still-deferred",
        message_id=s08,
        envid="mtqpd-s08",
        sender=SENDER,
        recipients=[recipient("wait@stuck.test", "delayed", "4")],
        bounce=warn08.message_id,
    )
    notification(lab, truth, warn08, s08, 8, "still-deferred-delay-warning")

    ndr09 = lab_ndr(lab, s09, {"never@expire.test": "failed"})
    expect(lab.sink_outcome("expire", s09, "never@expire.test") == "4", "s09: expire.test did not stay 4xx")
    m(
        scenario=9,
        name="expired",
        message_id=s09,
        envid="mtqpd-s09",
        sender=SENDER,
        recipients=[recipient("never@expire.test", "failed", "4")],
        bounce=ndr09.message_id,
    )
    notification(lab, truth, ndr09, s09, 9, "expired-ndr")

    m(
        scenario=11,
        name="second-instance",
        message_id=s11,
        envid="mtqpd-s11",
        sender=SENDER,
        recipients=[
            recipient("carol@mx2.example.test", "delivered", "2", path=["transferred", "delivered"]),
            recipient("far@far.test", "relayed", "2", path=["transferred", "relayed"]),
        ],
    )

    [dsn12] = lab.notifications(s12)
    expect([r["action"] for r in dsn12.dsn_recipients] == ["delivered"], f"s12: not a success DSN: {dsn12}")
    m(
        scenario=12,
        name="dsn-parameters",
        message_id=s12,
        envid="mtqpd-s12",
        sender=SENDER,
        recipients=[recipient(f"dave@{LOCAL}", "delivered", "2")],
        bounce=dsn12.message_id,
    )
    notification(lab, truth, dsn12, s12, 12, "dsn-parameters-success-dsn")

    m(
        scenario=13,
        name="local-submission",
        message_id=s13,
        envid=None,
        sender=SENDER,
        recipients=[recipient(f"erin@{LOCAL}", "delivered", "2")],
    )
    m(
        scenario=14,
        name="relay-two-recipients",
        message_id=s14,
        envid="mtqpd-s14",
        sender=SENDER,
        recipients=[recipient("one@relay.test", "relayed", "2"), recipient("two@relay.test", "relayed", "2")],
    )

    # The whole message is refused after DATA: recorded as a rejection of
    # its recipient, with the reply to DATA (nothing was queued).
    code, text = s16.data_reply
    expect(s16.rcpt_replies[s16_rcpt][0] == 250, f"s16: RCPT refused: {s16}")
    expect(not in_mbox(mx1.mbox("alice"), message_id(16, "content-rejected")), "s16: delivered after all")
    truth.rejection(
        scenario=16,
        name="content-rejected",
        sender=SENDER,
        recipient=s16_rcpt,
        status=str(code)[0],
        reply=f"{code} {text}",
    )

    for n, mid in ((1, s01), (2, s02), (3, s03), (6, s06a), (6, s06b), (11, s11), (13, s13), (14, s14)):
        expect(not lab.notifications(mid), f"s{n:02d}: unexpected notification")


def lab_ndr(lab: Lab, mid: str, failed: dict[str, str]) -> mtalab.Delivered:
    """The single non-delivery report about ``mid``, checked against ``failed``."""
    notes = lab.notifications(mid)
    expect(len(notes) == 1, f"{mid}: expected one NDR, got {notes}")
    got = {r["final_recipient"]: r["action"] for r in notes[0].dsn_recipients}
    expect(got == failed, f"{mid}: NDR reports {got}, expected {failed}")
    return notes[0]


def notification(lab: Lab, truth: mtalab.GroundTruth, note: mtalab.Delivered, about: str, n: int, name: str) -> None:
    """Record a notification Exim generated and delivered to the sender's mailbox."""
    rp = return_path(lab.mx1.mbox("sender"), note.message_id)
    expect(rp == "<>", f"{note.message_id}: Return-path {rp!r}, expected the null sender")
    truth.message(
        scenario=n,
        name=name,
        message_id=note.message_id,
        envid=None,
        sender="",
        recipients=[recipient(SENDER, "delivered", "2")],
        bounce_of=about,
    )


def copy_logs(mx1: Instance, mx2: Instance, syslog_offset: int) -> None:
    """Copy the run's logs into samples/exim/ byte for byte."""
    for name in ("mainlog", "rejectlog", "exim.syslog.log", "mx2.mainlog", "expected.json"):
        (OUT / name).unlink(missing_ok=True)
    shutil.copyfile(mx1.log_dir / "mainlog", OUT / "mainlog")
    shutil.copyfile(mx1.log_dir / "rejectlog", OUT / "rejectlog")
    shutil.copyfile(mx2.log_dir / "mainlog", OUT / "mx2.mainlog")
    for inst in (mx1, mx2):
        panic = inst.log_dir / "paniclog"
        expect(not panic.exists(), f"{inst.name} wrote a paniclog: {panic}")
    with SYSLOG.open("rb") as f:
        f.seek(syslog_offset)
        (OUT / "exim.syslog.log").write_bytes(f.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prefix", type=Path, default=Path("/opt/mta/exim-root"), help="where the exim4 .debs are (or get) unpacked"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")

    exim = ensure_exim(args.prefix)
    version, debian_version = exim_versions(exim, args.prefix)
    mx1 = Instance("mx1", BASE, MX1_PORT, HERE / "exim" / "mx1.conf.in")
    mx2 = Instance("mx2", BASE / "mx2", MX2_PORT, HERE / "exim" / "mx2.conf.in")

    # From scratch: stop an earlier run's instances, wipe spools, logs, mailboxes.
    for inst in (mx2, mx1):
        inst.stop()
    shutil.rmtree(BASE, ignore_errors=True)
    BASE.mkdir(parents=True)
    values = {f"SINK_{k.upper()}": v for k, v in SINK_PORTS.items()} | {"MX2_PORT": mx2.port}
    mx1.prepare(exim, values)
    mx2.prepare(exim, values)
    (BASE / "aliases").write_text("team: carol, dave, erin\ninfo: frank\n")
    trust_configs([mx1, mx2])
    journals = BASE / "sinks"
    journals.mkdir()

    syslog_offset = SYSLOG.stat().st_size if SYSLOG.exists() else 0
    sinks = {
        name: mtalab.Sink(
            port,
            journals / f"{name}.jsonl",
            hostname=f"sink.{name}.test",
            id_prefix="SINK" if name == "relay" else f"SINK{name.upper()}",
        )
        for name, port in SINK_PORTS.items()
    }
    truth = mtalab.GroundTruth(
        "exim",
        version,
        [
            {"file": "mainlog", "form": "exim-mainlog", "host": "mx1"},
            {"file": "rejectlog", "form": "exim-rejectlog", "host": "mx1"},
            {"file": "exim.syslog.log", "form": "exim-syslog"},
            {"file": "mx2.mainlog", "form": "exim-mainlog", "host": "mx2"},
        ],
        ["mx1", "mx2"],
    )
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        for sink in sinks.values():
            stack.enter_context(sink)
        try:
            mx2.start(exim)
            mx1.start(exim)
            run_scenarios(Lab(exim, mx1, mx2, sinks), truth)
        finally:
            for inst in (mx1, mx2):
                inst.stop()
    time.sleep(2)  # rsyslogd writes asynchronously
    OUT.mkdir(exist_ok=True)
    copy_logs(mx1, mx2, syslog_offset)
    truth.write(OUT / "expected.json")
    print(f"Exim {version} (Debian {debian_version}): capture written to {OUT} in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
