#!/usr/bin/env python3
"""Capture real Sendmail logs, with ground truth, into ``samples/sendmail/``.

Run as root on Debian 12, after ``samples/capture/setup-host.sh``::

    python3 samples/capture/capture_sendmail.py [--prefix /opt/mta/sendmail-root]

Sendmail conflicts with the Postfix that the host has installed, so it is not
installed with apt: the Debian packages (sendmail-bin, sendmail-base,
sendmail-cf) are fetched with ``apt-get download`` and unpacked with
``dpkg -x`` into ``--prefix`` when that prefix does not hold them yet.

Everything the run writes lives under ``/var/spool/mtqpd-capture/sendmail/``
(configs, queues, maps, pid files), except local mail, which the unpacked
``mail.local`` appends to ``/var/mail/<user>``. Three Sendmail programs run,
all from the unpacked tree, all logging to the shared capture rsyslogd:

* ``mx1``: the main MTA (syslog name ``sm-mta``) on 127.0.0.1:2520, local
  domain ``mx1.example.test``. A mailertable sends ``relay.test`` to the
  loopback sink (port 2620) and ``mx2.example.test`` to the second instance.
* ``mx2``: a second MTA (syslog name ``sm-mta-mx2``) on 127.0.0.1:2521, its
  own config, queue and host name ``mx2.example.test`` (scenario 11).
* ``msp``: the mail submission program (``sendmail -t`` then one
  ``sm-msp-queue`` run) with its own client queue (scenario 13).

The run takes about five minutes: the expiry scenario needs a message to
outlive the (shortened) queue lifetime, while the still-deferred scenarios
are submitted late enough to still be queued when both daemons are stopped.
The ground truth comes from the scenario plan, the sink's journal, the local
mailboxes (including the notifications the MTA sent to ``sender``) and the
queue files left in the spool; never from the logs. When any of these
disagrees with what a scenario expects, the script stops with an error and
writes no ``expected.json``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mtalab

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "sendmail"
WORK = Path("/var/spool/mtqpd-capture/sendmail")
CAPTURE_LOGS = Path("/var/log/mtqpd-capture")
MAILDIR = Path("/var/mail")
DEFAULT_PREFIX = Path("/opt/mta/sendmail-root")
PACKAGES = ["sendmail-bin", "sendmail-base", "sendmail-cf"]

#: The capture's log files and their forms (the same capture, two syslog forms).
LOGS = {"sendmail.bsd.log": "syslog-bsd", "sendmail.rfc3339.log": "syslog-rfc3339"}
#: What the shared rsyslogd calls itself in every line (its localHostname).
SYSLOG_HOST = "mx1"

MX1_PORT, MX2_PORT, SINK_PORT = 2520, 2521, 2620
MX1_DOMAIN, MX2_DOMAIN, RELAY_DOMAIN = "mx1.example.test", "mx2.example.test", "relay.test"
SENDER = f"sender@{MX1_DOMAIN}"
#: Users whose /var/mail files this capture owns (wiped at the start).
MAIL_USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "sender"]

#: Sendmail's LogLevel per instance. The main MTA logs at 11, the lowest
#: level that names an alias and its members ("alias <team@...> => bob,
#: carol, dave"; it also adds "Milter: no active filter" and "done" lines);
#: the second instance and the MSP keep Sendmail's default, 9.
MX1_LOG_LEVEL = 11
DEFAULT_LOG_LEVEL = 9
QUEUE_INTERVAL = "15s"
#: Timeout.queuereturn / Timeout.queuewarn, in minutes. Expiry (scenario 9)
#: happens QUEUE_RETURN minutes after submission, so the still-deferred
#: messages are submitted LATE_SUBMIT seconds in, which keeps them well inside
#: their own lifetime when the capture ends.
QUEUE_RETURN_MIN = 5
QUEUE_WARN_MIN = 1
LATE_SUBMIT = 120


# --------------------------------------------------------------------------
# The unpacked Sendmail


@dataclass
class Tree:
    """Paths into the unpacked Debian packages."""

    prefix: Path

    @property
    def bindir(self) -> Path:
        return self.prefix / "usr/libexec/sendmail"

    @property
    def sendmail(self) -> Path:
        return self.bindir / "sendmail"

    @property
    def makemap(self) -> Path:
        return self.bindir / "makemap"

    @property
    def mail_local(self) -> Path:
        return self.bindir / "mail.local"

    @property
    def cfdir(self) -> Path:
        return self.prefix / "usr/share/sendmail/cf"

    def command(self, hostname: str, *args: str) -> list[str]:
        """A sendmail command line that runs under its own host name.

        Sendmail wants a dotted host name at start-up and sleeps a minute on
        an unqualified one (this host is plain "vm"); a private UTS namespace
        gives each instance its own fully qualified name instead, without
        touching the host's configuration.
        """
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, str(self.sendmail), *args]

    def version(self, cf: Path) -> str:
        """The version the binary reports (``sendmail -d0.1``, address test mode: no log line)."""
        out = subprocess.run(
            self.command(MX1_DOMAIN, "-d0.1", "-bt", "-C", str(cf)),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        ).stdout
        m = re.search(r"^Version (\S+)", out, re.M)
        if not m:
            raise RuntimeError(f"cannot read the Sendmail version from: {out!r}")
        return m.group(1)

    def package_versions(self) -> dict[str, str]:
        """Debian package versions, from each package's changelog in the tree."""
        versions = {}
        for pkg in PACKAGES:
            log = self.prefix / "usr/share/doc" / pkg / "changelog.Debian.gz"
            with gzip.open(log, "rt") as f:
                versions[pkg] = re.match(r"\S+ \(([^)]+)\)", f.readline()).group(1)
        return versions


def ensure_tree(prefix: Path) -> Tree:
    """Unpack the Debian packages into ``prefix`` unless they are there already.

    Sendmail conflicts with the installed Postfix, so the packages are only
    downloaded (``apt-get download``) and unpacked (``dpkg -x``), never
    installed; the runtime libraries they need are ordinary Debian packages.
    """
    tree = Tree(prefix)
    if tree.sendmail.exists() and (tree.cfdir / "m4/cf.m4").exists():
        return tree
    subprocess.run(["apt-get", "update"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True)
        prefix.mkdir(parents=True, exist_ok=True)
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(prefix)], check=True)
    return tree


# --------------------------------------------------------------------------
# Instances: .mc -> .cf, maps, start, stop


@dataclass
class Instance:
    """One Sendmail configuration with its own directory under WORK."""

    name: str
    label: str  # syslog name (-L)
    domain: str
    tree: Tree
    port: int | None = None  # None: not a daemon (the MSP)
    log_level: int = DEFAULT_LOG_LEVEL

    @property
    def dir(self) -> Path:
        return WORK / self.name

    @property
    def cf(self) -> Path:
        return self.dir / f"{self.name}.cf"

    @property
    def queue(self) -> Path:
        return self.dir / "mqueue"

    @property
    def pidfile(self) -> Path:
        return self.dir / "sendmail.pid"

    def common_mc(self) -> str:
        """The .mc lines every instance shares: its own paths, no DNS, names."""
        d = self.dir
        return f"""\
divert(-1)
# Generated by samples/capture/capture_sendmail.py for the {self.name} instance.
divert(0)dnl
include(`{self.tree.cfdir}/m4/cf.m4')dnl
define(`confDOMAIN_NAME', `{self.domain}')dnl
define(`STATUS_FILE', `{d}/sendmail.st')dnl
define(`confPID_FILE', `{self.pidfile}')dnl
define(`HELP_FILE', `{d}/helpfile')dnl
define(`confDEAD_LETTER_DROP', `{d}/dead.letter')dnl
define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl
define(`confEBINDIR', `{self.tree.bindir}')dnl
define(`confLOG_LEVEL', `{self.log_level}')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confTO_IDENT', `0')dnl
define(`confQUEUE_LA', `50')dnl
define(`confREFUSE_LA', `100')dnl
"""

    def mta_mc(self, mailertable: bool) -> str:
        """A daemon MTA listening on its port, delivering locally with mail.local.

        OSTYPE(bsd4.4) rather than Debian's own: ostype/debian.m4 includes
        files from /usr/share and /etc/mail, and linux.m4 delivers through
        procmail. mail.local switches to the recipient's uid and then makes
        its dot-lock in /var/mail (root:mail, 2775), so the local mailer keeps
        root (F=S) and runs with group mail (RunAsUser=root:mail).
        The esmtp mailer reaches the sink's port, the relay mailer mx2's.
        """
        d = self.dir
        mc = (
            self.common_mc()
            + f"""\
define(`QUEUE_DIR', `{self.queue}')dnl
define(`ALIAS_FILE', `{d}/aliases')dnl
define(`confCW_FILE', `{d}/local-host-names')dnl
define(`confTO_QUEUERETURN', `{QUEUE_RETURN_MIN}m')dnl
define(`confTO_QUEUEWARN', `{QUEUE_WARN_MIN}m')dnl
define(`confMIN_QUEUE_AGE', `0')dnl
define(`confPRIVACY_FLAGS', `authwarnings')dnl
define(`confRUN_AS_USER', `root:mail')dnl
define(`LOCAL_MAILER_PATH', `{self.tree.mail_local}')dnl
define(`LOCAL_MAILER_ARGS', `mail.local -d $u')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {SINK_PORT}')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {MX2_PORT}')dnl
OSTYPE(`bsd4.4')dnl
MODIFY_MAILER_FLAGS(`LOCAL', `+S')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Port={self.port}, Addr=127.0.0.1')dnl
FEATURE(`use_cw_file')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`access_db', `hash -T<TMPF> {d}/access')dnl
"""
        )
        if mailertable:
            mc += f"FEATURE(`mailertable', `hash -o {d}/mailertable')dnl\n"
        return mc + "MAILER(`local')dnl\nMAILER(`smtp')dnl\n"

    def msp_mc(self, mta_port: int) -> str:
        """The submission program: queue locally, relay to the MTA on mta_port."""
        return (
            self.common_mc()
            + f"""\
define(`MSP_QUEUE_DIR', `{self.queue}')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {mta_port}')dnl
OSTYPE(`bsd4.4')dnl
FEATURE(`msp', `[127.0.0.1]')dnl
"""
        )

    def prepare(self, mc: str, *, aliases: str = "", mailertable: str = "", owner: str = "root") -> None:
        """Write the directory from scratch: .mc, .cf (m4), queue and maps."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, mode=0o755)
        uid = pwd.getpwnam(owner).pw_uid
        gid = pwd.getpwnam(owner).pw_gid
        self.queue.mkdir(mode=0o700 if owner == "root" else 0o770)
        os.chown(self.queue, uid, gid)
        (self.dir / "sendmail.st").touch()
        os.chown(self.dir / "sendmail.st", uid, gid)
        shutil.copy(self.tree.prefix / "etc/mail/helpfile", self.dir / "helpfile")
        # Host names come from /etc/hosts only: the capture host has no DNS.
        (self.dir / "service.switch").write_text("hosts\t\tfiles\naliases\t\tfiles\n")
        mc_path = self.dir / f"{self.name}.mc"
        mc_path.write_text(mc)
        cf = subprocess.run(["m4", str(mc_path)], capture_output=True, text=True, check=True)
        if cf.stderr.strip():
            raise RuntimeError(f"m4 {mc_path}: {cf.stderr}")
        self.cf.write_text(cf.stdout)
        if self.port is None:
            return
        (self.dir / "local-host-names").write_text(f"{self.domain}\nlocalhost\n")
        # Let the loopback client relay (to the mailertable's domains).
        self.makemap("access", "Connect:127.0.0.1\tRELAY\nConnect:localhost\tRELAY\n")
        if mailertable:
            self.makemap("mailertable", mailertable)
        (self.dir / "aliases").write_text(
            "# Generated by capture_sendmail.py\nMAILER-DAEMON:\tpostmaster\npostmaster:\troot\n" + aliases
        )
        self.run("-bi")

    def makemap(self, name: str, text: str) -> None:
        (self.dir / name).write_text(text)
        subprocess.run(
            [str(self.tree.makemap), "-C", str(self.cf), "hash", str(self.dir / name)],
            input=text,
            text=True,
            check=True,
        )

    def run(self, *args: str, input: bytes | None = None) -> None:
        """Run this instance's sendmail once (not as a daemon)."""
        subprocess.run(self.tree.command(self.domain, "-C", str(self.cf), *args), input=input, check=True)

    def start(self) -> None:
        """Start the daemon (it forks into the background and writes its pid file)."""
        if mtalab.port_open(self.port):
            raise RuntimeError(f"port {self.port} is busy: is an earlier run still up?")
        self.run("-bd", f"-q{QUEUE_INTERVAL}", "-L", self.label)
        mtalab.wait_until(lambda: mtalab.port_open(self.port), 30, 0.5, f"{self.name} on port {self.port}")

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the daemon by its own pid file; wait until it and its children are gone."""
        pid = self.pid()
        try:
            exe = os.readlink(f"/proc/{pid}/exe") if pid else None
        except FileNotFoundError:
            exe = None
        if exe != str(self.tree.sendmail):
            return  # not running (or the pid now belongs to someone else)
        os.kill(pid, signal.SIGTERM)
        # The daemon leads its own process group; its queue runners and
        # delivery agents are in it too.
        mtalab.wait_until(lambda: not _group_alive(pid), 60, 0.5, f"{self.name} (pid {pid}) to exit")

    def queued_message_ids(self) -> set[str]:
        """Message-IDs of the messages still in this instance's queue (from its qf files)."""
        ids = set()
        for qf in self.queue.glob("qf*"):
            for line in qf.read_text(errors="replace").splitlines():
                m = re.match(r"H\??[^?]*\??Message-ID:\s*(\S+)", line, re.I)
                if m:
                    ids.add(m.group(1))
        return ids


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# --------------------------------------------------------------------------
# Logs


def log_offsets() -> dict[str, int]:
    """Current size of each capture log, so that only this run's lines are copied."""
    return {name: (CAPTURE_LOGS / name).stat().st_size if (CAPTURE_LOGS / name).exists() else 0 for name in LOGS}


def copy_logs(offsets: dict[str, int]) -> None:
    """Copy the part of each capture log written since ``offsets`` into OUT, byte for byte."""
    for name, start in offsets.items():
        with (CAPTURE_LOGS / name).open("rb") as f:
            f.seek(start)
            data = f.read()
        if not data:
            raise RuntimeError(f"{CAPTURE_LOGS / name} got no lines during the capture")
        (OUT / name).write_bytes(data)


# --------------------------------------------------------------------------
# Scenarios


@dataclass
class Rcpt:
    """One recipient as submitted, and where the scenario means it to end up.

    ``route`` is one of: ``local`` (delivered by mx1 to ``users[0]``),
    ``expand`` (an alias of mx1 expanding to ``users``), ``sink`` (relayed to
    the sink, whose answers are ``answers``), ``mx2`` (relayed to the second
    instance, which delivers to ``users[0]``), ``rejected`` (refused at RCPT).
    """

    address: str
    route: str
    users: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    #: For sink recipients refused with 4xx forever: "queued" (still there at
    #: the end) or "expired" (returned by the queue lifetime).
    fate: str = ""

    def answers_class(self) -> str:
        """The status class of the sink's final answer ("2" when it has no rule)."""
        return self.answers[-1][0] if self.answers else "2"


@dataclass
class Scenario:
    """One scenario's message, what to send with it and what it must cause."""

    number: int
    name: str
    rcpts: list[Rcpt]
    #: Notification kinds (the DSN Action the mailbox shows) this message
    #: must have caused, in order of arrival in sender's mailbox.
    notices: list[str] = field(default_factory=list)
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    via: str = "smtp"  # "smtp" to mx1, or "msp" (command-line sendmail -t)
    submission: mtalab.Submission | None = None

    @property
    def message_id(self) -> str:
        return f"<s{self.number:02d}.{self.name}@client.example.test>"

    @property
    def envid(self) -> str:
        return f"mtqpd-s{self.number:02d}"


def local(user: str) -> Rcpt:
    return Rcpt(f"{user}@{MX1_DOMAIN}", "local", [user])


def sink(local_part: str, *answers: str, fate: str = "") -> Rcpt:
    return Rcpt(f"{local_part}@{RELAY_DOMAIN}", "sink", answers=list(answers), fate=fate)


DEFER = "451 4.3.0 Temporary failure, try again later"
REFUSE = "550 5.1.1 <{}>: Recipient address rejected: User unknown in relay recipient table"

#: Submitted first: the message that must outlive the queue lifetime.
EXPIRING = [
    Scenario(9, "expired", [sink("expire", DEFER, fate="expired")], notices=["delayed", "failed"]),
]
#: Submitted right after; all settled within a minute.
EARLY = [
    Scenario(1, "local-delivery", [local("alice")]),
    Scenario(2, "relay-accepted", [sink("ok")]),
    Scenario(3, "relay-deferred-then-accepted", [sink("retry", DEFER, "250 2.1.5 Ok")]),
    Scenario(4, "relay-rejected-bounce", [sink("reject", REFUSE)], notices=["failed"]),
    Scenario(6, "alias-expansion", [Rcpt(f"team@{MX1_DOMAIN}", "expand", ["bob", "carol", "dave"])]),
    Scenario(6, "alias-single", [Rcpt(f"info@{MX1_DOMAIN}", "local", ["erin"])]),
    Scenario(7, "unknown-local-user", [Rcpt(f"ghost@{MX1_DOMAIN}", "rejected")]),
    Scenario(11, "second-instance", [Rcpt(f"frank@{MX2_DOMAIN}", "mx2", ["frank"])]),
    Scenario(
        12,
        "dsn-parameters",
        [local("alice"), sink("dsn")],
        notices=["delivered"],
        mail_options=["RET=HDRS"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
    ),
    Scenario(13, "msp-submission", [local("alice")], via="msp"),
]
#: Submitted LATE_SUBMIT seconds in: still queued when the capture ends.
LATE = [
    Scenario(
        5,
        "mixed-outcomes",
        [local("alice"), sink("mixed-defer", DEFER, fate="queued"), sink("mixed-fail", REFUSE)],
        notices=["failed", "delayed"],
    ),
    Scenario(8, "still-deferred", [sink("still", DEFER, fate="queued")], notices=["delayed"]),
]
SCENARIOS = EXPIRING + EARLY + LATE


def configure_sink(s: mtalab.Sink) -> None:
    """Tell the sink how to answer each scenario recipient that has rules."""
    for sc in SCENARIOS:
        for r in sc.rcpts:
            if r.route == "sink" and r.answers:
                s.answer(r.address, *[a.format(r.address) for a in r.answers])


def submit(sc: Scenario, msp: Instance) -> None:
    """Send one scenario's message: over SMTP to mx1, or through the MSP."""
    to = [r.address for r in sc.rcpts]
    msg = mtalab.make_message(sc.message_id, SENDER, to, f"scenario {sc.number} {sc.name}")
    if sc.via == "msp":
        # The command-line submission only queues (-odq); one sm-msp-queue
        # run (what Debian's cron job does) then hands it to mx1.
        msp.run("-odq", "-f", SENDER, "-V", sc.envid, "-t", input=msg)
        msp.run("-q", "-L", "sm-msp-queue")
        return
    # Sendmail 8.17 (and Debian's SMTP-smuggling fix) refuses bare LF in
    # DATA; a real client sends CRLF.
    crlf = msg.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    sc.submission = mtalab.submit(
        MX1_PORT,
        crlf,
        SENDER,
        to,
        mail_options=[f"ENVID={sc.envid}", *sc.mail_options],
        rcpt_options={a: [*sc.rcpt_options, f"ORCPT=rfc822;{a}"] for a in to},
    )
    for r in sc.rcpts:
        code, text = sc.submission.rcpt_replies[r.address]
        if (code >= 400) != (r.route == "rejected"):
            raise RuntimeError(f"s{sc.number}: RCPT {r.address} answered {code} {text}")
    if any(r.route != "rejected" for r in sc.rcpts) and sc.submission.data_reply[0] != 250:
        raise RuntimeError(f"s{sc.number}: DATA answered {sc.submission.data_reply}")


# --------------------------------------------------------------------------
# Ground truth (sink journal, mailboxes, queue files; never the logs)


def mailbox(user: str) -> list[mtalab.Delivered]:
    return mtalab.read_mbox(MAILDIR / user)


def in_mailbox(user: str, message_id: str) -> bool:
    return any(d.message_id == message_id for d in mailbox(user))


def notices_about(message_id: str) -> list[mtalab.Delivered]:
    """Notifications in sender's mailbox that report on ``message_id``, in order."""
    return [d for d in mailbox("sender") if d.reports_on == message_id]


def notice_kind(d: mtalab.Delivered) -> str:
    """The one DSN Action of a notification ("delivered (to mailbox)" reads "delivered")."""
    actions = {r["action"].split(" ", 1)[0] for r in d.dsn_recipients}
    if len(actions) != 1:
        raise RuntimeError(f"notification {d.message_id}: mixed or no DSN actions {actions}")
    return actions.pop()


def settled(sink_: mtalab.Sink, scenarios: list[Scenario]) -> bool:
    """True when every scenario's outcome is observable (does not judge it)."""
    for sc in scenarios:
        if [notice_kind(d) for d in notices_about(sc.message_id)] != sc.notices:
            return False
        for r in sc.rcpts:
            if r.route in ("local", "expand", "mx2") and not all(in_mailbox(u, sc.message_id) for u in r.users):
                return False
            if r.route == "sink" and not r.fate and sink_.outcome(sc.message_id, r.address) != r.answers_class():
                return False
    return True


def truth_for(sc: Scenario, sink_: mtalab.Sink, queued: set[str]) -> list[dict]:
    """The expected.json entries for one scenario: the message and its notifications."""
    if all(r.route == "rejected" for r in sc.rcpts):
        return []  # never accepted: a rejection, not a message
    recipients = []
    for r in sc.rcpts:
        if r.route in ("local", "mx2"):
            user = r.users[0]
            if not in_mailbox(user, sc.message_id):
                raise RuntimeError(f"s{sc.number}: {sc.message_id} not in {user}'s mailbox")
            domain = MX2_DOMAIN if r.route == "mx2" else MX1_DOMAIN
            entry = {"original": r.address, "final": f"{user}@{domain}", "action": "delivered", "status": "2"}
            if r.route == "mx2" or sc.via == "msp":
                # Two records on this host: mx1 (or the MSP) hands it on, then delivers.
                entry["path"] = ["transferred", "delivered"]
        elif r.route == "expand":
            members = []
            for user in r.users:
                if not in_mailbox(user, sc.message_id):
                    raise RuntimeError(f"s{sc.number}: {sc.message_id} not in {user}'s mailbox")
                members.append({"final": f"{user}@{MX1_DOMAIN}", "action": "delivered", "status": "2"})
            entry = {"original": r.address, "final": r.address, "action": "expanded", "status": "2", "members": members}
        elif r.route == "sink":
            got = sink_.outcome(sc.message_id, r.address)
            if got != r.answers_class():
                raise RuntimeError(
                    f"s{sc.number}: sink's last answer to {r.address} was {got}, not {r.answers_class()}"
                )
            if got == "2":
                action = "relayed"
            elif got == "5":
                action = "failed"
            elif r.fate == "queued":
                if sc.message_id not in queued:
                    raise RuntimeError(f"s{sc.number}: {sc.message_id} should still be queued")
                action = "delayed"
            else:
                if sc.message_id in queued:
                    raise RuntimeError(f"s{sc.number}: {sc.message_id} should have expired")
                action = "failed"
            entry = {"original": r.address, "final": r.address, "action": action, "status": got}
        else:
            raise ValueError(r.route)
        recipients.append(entry)

    notices = notices_about(sc.message_id)
    kinds = [notice_kind(d) for d in notices]
    if kinds != sc.notices:
        raise RuntimeError(f"s{sc.number}: notifications {kinds}, expected {sc.notices}")
    # Each notification may only speak of recipients whose outcome agrees:
    # a delay warning of one still queued or later expired, an NDR of a failed
    # one, a success DSN of a delivered one.
    agrees = {"failed": {"failed"}, "delayed": {"delayed", "failed"}, "delivered": {"delivered"}}
    by_address = {e["original"]: e for e in recipients} | {e["final"]: e for e in recipients}
    for d in notices:
        for dr in d.dsn_recipients:
            e = by_address.get(dr["final_recipient"])
            if e is None or e["action"] not in agrees[dr["action"].split(" ", 1)[0]]:
                raise RuntimeError(f"s{sc.number}: {d.message_id} reports {dr}, the truth says {e}")

    entries = [
        {
            "scenario": sc.number,
            "name": sc.name,
            "message_id": sc.message_id,
            "envid": sc.envid,
            "sender": SENDER,
            "recipients": recipients,
            "bounce": notices[0].message_id if notices else None,
        }
    ]
    for d, kind in zip(notices, kinds, strict=False):
        entries.append(
            {
                "scenario": sc.number,
                "name": f"{sc.name}-{NOTICE_NAMES[kind]}",
                "message_id": d.message_id,
                "envid": None,
                "sender": "",
                "recipients": [{"original": SENDER, "final": SENDER, "action": "delivered", "status": "2"}],
                "bounce_of": sc.message_id,
            }
        )
    return entries


NOTICE_NAMES = {"failed": "ndr", "delayed": "delay-warning", "delivered": "success-dsn"}


# --------------------------------------------------------------------------
# The run


def instances(tree: Tree) -> tuple[Instance, Instance, Instance]:
    mx1 = Instance("mx1", "sm-mta", MX1_DOMAIN, tree, MX1_PORT, MX1_LOG_LEVEL)
    mx2 = Instance("mx2", "sm-mta-mx2", MX2_DOMAIN, tree, MX2_PORT)
    msp = Instance("msp", "sendmail", MX1_DOMAIN, tree)
    return mx1, mx2, msp


def prepare(mx1: Instance, mx2: Instance, msp: Instance) -> None:
    mx1.prepare(
        mx1.mta_mc(mailertable=True),
        aliases="team:\tbob, carol, dave\ninfo:\terin\n",
        mailertable=f"{RELAY_DOMAIN}\tesmtp:[127.0.0.1]\n{MX2_DOMAIN}\trelay:[127.0.0.1]\n",
    )
    mx2.prepare(mx2.mta_mc(mailertable=False))
    # The MSP runs as smmsp (its RunAsUser), so smmsp owns its client queue.
    msp.prepare(msp.msp_mc(MX1_PORT), owner="smmsp")


def wipe_mailboxes() -> None:
    for user in MAIL_USERS:
        for path in (MAILDIR / user, MAILDIR / f"{user}.lock"):
            path.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--prefix", type=Path, default=DEFAULT_PREFIX, help="where the Debian sendmail packages are (or get) unpacked"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")

    tree = ensure_tree(args.prefix)
    mx1, mx2, msp = instances(tree)
    # A fresh start: an instance left running by an earlier run goes first.
    for inst in (mx1, mx2):
        inst.stop()
    wipe_mailboxes()
    OUT.mkdir(exist_ok=True)
    offsets = log_offsets()
    prepare(mx1, mx2, msp)
    version = tree.version(mx1.cf)

    with mtalab.Sink(SINK_PORT, WORK / "sink.journal") as sink_:
        configure_sink(sink_)
        try:
            mx2.start()
            mx1.start()
            t0 = time.monotonic()
            for sc in EXPIRING + EARLY:
                submit(sc, msp)
            print("early scenarios submitted; waiting for them to settle", flush=True)
            mtalab.wait_until(lambda: settled(sink_, EARLY), 120, 2, "the early scenarios")

            time.sleep(max(0.0, t0 + LATE_SUBMIT - time.monotonic()))
            late_t = time.monotonic()
            for sc in LATE:
                submit(sc, msp)
            print(f"late scenarios submitted; waiting {QUEUE_RETURN_MIN} min for the expiry", flush=True)
            mtalab.wait_until(
                lambda: settled(sink_, SCENARIOS),
                t0 + QUEUE_RETURN_MIN * 60 + 180 - time.monotonic(),
                5,
                "every scenario",
            )
            if time.monotonic() - late_t > QUEUE_RETURN_MIN * 60 - 30:
                raise RuntimeError("the late scenarios came too close to their own expiry")
        finally:
            mx1.stop()
            mx2.stop()

        queued = mx1.queued_message_ids()
        if mx2.queued_message_ids() or msp.queued_message_ids():
            raise RuntimeError("mx2 or the MSP still holds mail")
        truth = mtalab.GroundTruth(
            "sendmail",
            version,
            [{"file": name, "form": form} for name, form in LOGS.items()],
            [SYSLOG_HOST],
        )
        for sc in sorted(SCENARIOS, key=lambda sc: sc.number):
            for entry in truth_for(sc, sink_, queued):
                truth.message(**entry)
        for sc in SCENARIOS:
            for r in sc.rcpts:
                if r.route == "rejected":
                    code, text = sc.submission.rcpt_replies[r.address]
                    truth.rejection(
                        scenario=sc.number,
                        name=sc.name,
                        sender=SENDER,
                        recipient=r.address,
                        status=str(code)[0],
                        reply=f"{code} {text}",
                    )
        if queued != {sc.message_id for sc in LATE}:
            raise RuntimeError(f"mx1's queue holds {queued}, expected only the late scenarios")

    time.sleep(2)  # let rsyslogd write the daemons' last lines
    copy_logs(offsets)
    truth.write(OUT / "expected.json")
    print(f"wrote {OUT}: Sendmail {version}, packages {tree.package_versions()}")


if __name__ == "__main__":
    main()
