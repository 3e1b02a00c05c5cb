#!/usr/bin/env python3
"""Capture the Postfix sample corpus: real Postfix logs plus their ground truth.

Run as root on Debian 12, after ``samples/capture/setup-host.sh`` (test users,
capture rsyslogd):

    python3 samples/capture/capture_postfix.py

It takes about three and a half minutes. It installs Postfix if needed, (re)writes the
configuration of two instances from the templates in ``samples/capture/postfix/``
(the primary ``postfix``, mx1.example.test, on 127.0.0.1:25 and 10026, and the
postmulti instance ``postfix-out``, mx2.example.test, on 127.0.0.1:2501), wipes
their queues and the capture mailboxes, starts them next to loopback SMTP sinks
(127.0.0.1:2600-2602) and a content filter (127.0.0.1:10025), runs the
scenarios of ``samples/README.md``, stops Postfix, and writes:

- ``samples/postfix/postfix.bsd.log`` and ``postfix.rfc3339.log``: the part of
  the capture rsyslogd's files that this run wrote (both instances, two forms);
- ``samples/postfix/expected.json``: the ground truth, built from the scenario
  definitions, the sinks' journals, the local mailboxes and, for "still
  queued", Postfix's queue listing (``postqueue -j``) - never from the log.

Every recipient has an expected outcome; if what the mailboxes, sinks and
queue show differs, the script stops with an error instead of writing a wrong
expected.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mtalab

CAPTURE_DIR = Path(__file__).resolve().parent
TEMPLATES = CAPTURE_DIR / "postfix"
OUT_DIR = CAPTURE_DIR.parent / "postfix"

# Where the shared rsyslogd writes every "postfix*" syslog tag, in two forms.
SYSLOG_DIR = Path("/var/log/mtqpd-capture")
LOG_FORMS = {"postfix.bsd.log": "syslog-bsd", "postfix.rfc3339.log": "syslog-rfc3339"}
SYSLOG_HOST = "mx1"  # rsyslogd's localHostname, the host field of every line

WORK = Path("/var/spool/mtqpd-capture/postfix")
MAIL = WORK / "mail"  # mail_spool_directory of the primary instance
MAIL_OUT = WORK / "mail-out"  # mail_spool_directory of postfix-out

MX1 = "mx1.example.test"
MX2 = "mx2.example.test"
SENDER = f"sender@{MX1}"
OUT_INSTANCE = "postfix-out"
OUT_CONFIG = Path("/etc/postfix-out")

SMTP_PORT = 25
FILTER_PORT = 10025
REINJECT_PORT = 10026
OUT_PORT = 2501
# Sink port by recipient domain; mirrors samples/capture/postfix/transport
# (and postfix-out/transport for out.relay.test, which goes through mx2).
SINK_PORTS = {"relay.test": 2600, "late.relay.test": 2601, "out.relay.test": 2602}
VIA_MX2 = {"out.relay.test"}

# Mirrors samples/capture/postfix/aliases.
ALIASES = {"team": ["bob", "carol", "dave"], "info": ["erin"]}
# Mirrors samples/capture/postfix/filter_access: these go through the filter.
FILTERED = {f"frank@{MX1}"}

#: The DSN action of a notification -> the word used in its scenario name.
NOTICE_KINDS = {
    "failed": "ndr",
    "delayed": "delay-notice",
    "delivered": "success-notice",
    "relayed": "success-notice",
    "expanded": "success-notice",
}


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command from a neutral cwd, echoing it, so the run log shows what was done."""
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check, cwd="/", **kw)


def postconf(name: str) -> str:
    """One parameter's value as the running configuration has it."""
    return subprocess.run(["postconf", "-h", name], check=True, capture_output=True, text=True).stdout.strip()


def seconds(value: str) -> int:
    """A Postfix time value (``3m``, ``1d``, ``90``) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if value[-1] in units:
        return int(value[:-1]) * units[value[-1]]
    return int(value)


# --------------------------------------------------------------------------
# Preparing and running Postfix


def install_postfix() -> None:
    """Install the Debian package unless it is there (no debconf questions)."""
    if shutil.which("postconf"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run("sh", "-c", "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections")
    run("apt-get", "update")
    run("apt-get", "install", "-y", "postfix", env=env)


def stop_postfix(check: bool) -> None:
    """Stop both instances (``postfix stop`` goes through multi_instance_wrapper)."""
    run("postfix", "stop", check=check, stderr=subprocess.DEVNULL if not check else None)


def configure() -> None:
    """Write both configurations from the templates, creating the second instance on the first run."""
    for name in ("main.cf", "master.cf", "aliases", "transport", "filter_access", "bounce.cf"):
        shutil.copyfile(TEMPLATES / name, Path("/etc/postfix") / name)
    if not (OUT_CONFIG / "main.cf").exists():
        # postmulti refuses to create an instance that main.cf already lists;
        # it lists it again itself (and makes its queue and data directories).
        run("postconf", "-e", "multi_instance_directories=")
        run("postmulti", "-I", OUT_INSTANCE, "-G", "mta", "-e", "create")
    for name in ("main.cf", "master.cf", "transport"):
        shutil.copyfile(TEMPLATES / OUT_INSTANCE / name, OUT_CONFIG / name)
    run("postmap", "/etc/postfix/transport", "/etc/postfix/filter_access", str(OUT_CONFIG / "transport"))
    run("postalias", "/etc/postfix/aliases")
    run("postfix", "check")
    run("postfix", "-c", str(OUT_CONFIG), "check")


def wipe() -> None:
    """Empty both queues and the capture mailboxes, so that a re-run starts from scratch."""
    run("postsuper", "-d", "ALL")
    run("postsuper", "-c", str(OUT_CONFIG), "-d", "ALL")
    for spool in (MAIL, MAIL_OUT):
        shutil.rmtree(spool, ignore_errors=True)
        spool.mkdir(parents=True)
        # Local delivery writes as the recipient and dot-locks in this directory.
        spool.chmod(0o1777)


def queued_recipients() -> set[str]:
    """Recipients still in either instance's queue, from ``postqueue -j`` (the queue, not the log)."""
    out = set()
    for config in ("/etc/postfix", str(OUT_CONFIG)):
        listing = subprocess.run(["postqueue", "-c", config, "-j"], check=True, capture_output=True, text=True)
        for line in listing.stdout.splitlines():
            for r in json.loads(line)["recipients"]:
                out.add(r["address"].lower())
    return out


# --------------------------------------------------------------------------
# Scenarios and their observed outcomes


@dataclass
class Sent:
    """One scenario message: what was asked for and what the submitting client saw."""

    scenario: int
    name: str
    message_id: str
    envid: str | None
    #: recipient -> the action the scenario is designed to end in ("rejected"
    #: for a recipient that the SMTP dialogue must refuse).
    expect: dict[str, str]
    #: DSN actions of the notifications the scenario must produce (at least).
    notices: set[str]
    submitted: float
    rcpt_replies: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass
class Snapshot:
    """The state the ground truth is read from at one moment."""

    #: Notifications in the sender's mailbox (all of it must be notifications).
    notices: list[mtalab.Delivered]
    queued: set[str]


class Capture:
    """Submits the scenario messages and reads back, from sinks, mailboxes and queue, where each ended."""

    def __init__(self, sinks: dict[int, mtalab.Sink]):
        self.sinks = sinks
        self.sent: list[Sent] = []

    # -- submitting ---------------------------------------------------------

    def send(
        self,
        scenario: int,
        name: str,
        expect: dict[str, str],
        *,
        notices=(),
        envid=None,
        notify: str | None = None,
        ret: str | None = None,
        local_submission: bool = False,
    ) -> Sent:
        """Submit one scenario message with ENVID, ORCPT (and NOTIFY/RET when given)."""
        message_id = f"<s{scenario:02d}.{name}@client.example.test>"
        envid = envid or f"mtqpd-s{scenario:02d}"
        recipients = list(expect)
        body = mtalab.make_message(message_id, SENDER, recipients, f"scenario {scenario}: {name}")
        sent = Sent(scenario, name, message_id, envid, expect, set(notices), time.time())
        if local_submission:
            # The sendmail(1) command -> postdrop -> pickup; -V sets the ENVID.
            run("/usr/sbin/sendmail", "-i", "-f", SENDER, "-V", envid, "--", *recipients, input=body)
        else:
            mail_options = [f"ENVID={envid}"] + ([f"RET={ret}"] if ret else [])
            rcpt_options = {r: [f"ORCPT=rfc822;{r}"] + ([f"NOTIFY={notify}"] if notify else []) for r in recipients}
            sub = mtalab.submit(
                SMTP_PORT, body, SENDER, recipients, mail_options=mail_options, rcpt_options=rcpt_options
            )
            sent.rcpt_replies = sub.rcpt_replies
            for rcpt, (code, text) in sub.rcpt_replies.items():
                if (code // 100 == 2) != (expect[rcpt] != "rejected"):
                    raise RuntimeError(f"{message_id}: RCPT {rcpt} got {code} {text}, expected {expect[rcpt]}")
            if any(a != "rejected" for a in expect.values()) and (sub.data_reply or (0,))[0] != 250:
                raise RuntimeError(f"{message_id}: DATA not accepted: {sub.data_reply}")
        print(f"scenario {scenario} {name}: submitted", flush=True)
        self.sent.append(sent)
        return sent

    # -- observing ----------------------------------------------------------

    @staticmethod
    def notices() -> list[mtalab.Delivered]:
        """The notifications in the sender's mailbox, which must hold nothing else."""
        notices = mtalab.read_mbox(MAIL / "sender")
        for n in notices:
            if n.reports_on is None:
                raise RuntimeError(f"unexpected non-notification {n.message_id} in sender's mailbox")
        return notices

    def snapshot(self) -> Snapshot:
        return Snapshot(self.notices(), queued_recipients())

    @staticmethod
    def in_mailbox(mbox: Path, message_id: str) -> bool:
        return any(d.message_id == message_id for d in mtalab.read_mbox(mbox))

    @staticmethod
    def notice_for(snap: Snapshot, sent: Sent, rcpt: str, action: str) -> mtalab.Delivered | None:
        """The notification about ``sent`` that reports ``rcpt`` with DSN ``action``."""
        for n in snap.notices:
            if n.reports_on == sent.message_id:
                for r in n.dsn_recipients:
                    if r["final_recipient"].lower() == rcpt.lower() and r["action"] == action:
                        return n
        return None

    def observe(self, snap: Snapshot, sent: Sent, rcpt: str) -> dict | None:
        """What the mailboxes, sinks and queue say happened to one recipient; None if unsettled.

        Returns an expected.json recipient entry.
        """
        if sent.expect[rcpt] == "rejected":
            return None  # never in the envelope; goes to "rejections"
        user, domain = rcpt.split("@")
        entry = {"original": rcpt, "final": rcpt}
        if domain == MX1 and user in ALIASES:
            members = [f"{m}@{MX1}" for m in ALIASES[user]]
            if not all(self.in_mailbox(MAIL / m.split("@")[0], sent.message_id) for m in members):
                return None
            if len(members) == 1:
                return entry | {"final": members[0], "action": "delivered", "status": "2"}
            return entry | {
                "action": "expanded",
                "status": "2",
                "members": [{"final": m, "action": "delivered", "status": "2"} for m in members],
            }
        if domain in (MX1, MX2):
            mbox = (MAIL if domain == MX1 else MAIL_OUT) / user
            if not self.in_mailbox(mbox, sent.message_id):
                return None
            hops = ["transferred"] if rcpt in FILTERED or domain == MX2 else []
            return entry | {"action": "delivered", "status": "2", "path": [*hops, "delivered"]}
        hops = ["transferred"] if domain in VIA_MX2 else []
        sink = self.sinks[SINK_PORTS[domain]]
        answer = sink.outcome(sent.message_id, rcpt)
        if answer == "2":
            return entry | {"action": "relayed", "status": "2", "path": [*hops, "relayed"]}
        if answer in ("4", "5"):
            # Refused for good (5xx), or expired after 4xx: the NDR says "failed".
            ndr = self.notice_for(snap, sent, rcpt, "failed")
            if ndr is not None:
                dsn = next(r for r in ndr.dsn_recipients if r["final_recipient"].lower() == rcpt.lower())
                if dsn["status"][:1] != answer:
                    raise RuntimeError(f"{sent.message_id} {rcpt}: NDR status {dsn['status']}, sink said {answer}xx")
                return entry | {"action": "failed", "status": answer, "path": [*hops, "failed"]}
            if answer == "4" and rcpt.lower() in snap.queued:
                return entry | {"action": "delayed", "status": "4", "path": [*hops, "delayed"]}
        return None

    def settled(self, sent: Sent, snap: Snapshot | None = None) -> bool:
        """Every recipient of ``sent`` ended as designed and its required notifications are there."""
        snap = snap or self.snapshot()
        for rcpt, action in sent.expect.items():
            if action == "rejected":
                continue
            seen = self.observe(snap, sent, rcpt)
            if seen is None or seen["action"] != action:
                return False
        kinds = {r["action"] for n in snap.notices if n.reports_on == sent.message_id for r in n.dsn_recipients}
        return sent.notices <= kinds

    def wait_settled(self, sents: list[Sent], deadline: float, what: str) -> None:
        def done() -> bool:
            snap = self.snapshot()
            return all(self.settled(s, snap) for s in sents)

        mtalab.wait_until(done, timeout=max(1.0, deadline - time.time()), what=what)

    # -- the ground truth ---------------------------------------------------

    def ground_truth(self, snap: Snapshot, version: str) -> mtalab.GroundTruth:
        """expected.json from the final snapshot; raises if any recipient is not as designed."""
        truth = mtalab.GroundTruth(
            "postfix", version, [{"file": f, "form": form} for f, form in LOG_FORMS.items()], [SYSLOG_HOST]
        )
        by_id = {s.message_id: s for s in self.sent}
        for n in snap.notices:
            if n.reports_on not in by_id:
                raise RuntimeError(f"notification {n.message_id} reports on unknown {n.reports_on}")
        for sent in sorted(self.sent, key=lambda s: s.scenario):
            if not self.settled(sent, snap):
                raise RuntimeError(f"{sent.message_id} did not end as designed")
            for rcpt, action in sent.expect.items():
                if action == "rejected":
                    code, text = sent.rcpt_replies[rcpt]
                    truth.rejection(
                        scenario=sent.scenario,
                        name=sent.name,
                        sender=SENDER,
                        recipient=rcpt,
                        status=str(code)[0],
                        reply=f"{code} {text}",
                    )
            recipients = [self.observe(snap, sent, r) for r, a in sent.expect.items() if a != "rejected"]
            if not recipients:
                continue  # nothing accepted, no message
            notices = [n for n in snap.notices if n.reports_on == sent.message_id]
            truth.message(
                scenario=sent.scenario,
                name=sent.name,
                message_id=sent.message_id,
                envid=sent.envid,
                sender=SENDER,
                recipients=recipients,
                bounce=notices[0].message_id if notices else None,
            )
            for n in notices:
                kinds = {NOTICE_KINDS[r["action"]] for r in n.dsn_recipients}
                if len(kinds) != 1:
                    raise RuntimeError(f"notification {n.message_id} mixes DSN actions: {n.dsn_recipients}")
                truth.message(
                    scenario=sent.scenario,
                    name=f"{sent.name}/{kinds.pop()}",
                    message_id=n.message_id,
                    sender="",
                    recipients=[{"original": SENDER, "final": SENDER, "action": "delivered", "status": "2"}],
                    bounce_of=sent.message_id,
                )
        return truth


# --------------------------------------------------------------------------
# The run


def run_scenarios(cap: Capture, stack: contextlib.ExitStack, lifetime: int) -> set[str]:
    """Drive all scenarios; returns the recipients still queued just before Postfix is stopped.

    Timeline: scenario 9 (to expire) goes first, the quick scenarios right
    after; scenarios 5 and 8 (which must still be queued at the end) go 90 s
    later, so that the capture ends - after scenario 9's expiry and after the
    delay notices of 5 and 8 - well before they could expire themselves.
    """
    relay = cap.sinks[2600]
    relay.answer("s03-retry@relay.test", "451 4.3.0 Sink busy, try again later", "250 2.1.5 Ok")
    relay.answer("s04-reject@relay.test", "550 5.1.1 <s04-reject@relay.test>: Recipient unknown")
    relay.answer("s05-later@relay.test", "450 4.2.1 <s05-later@relay.test>: Mailbox busy")
    relay.answer("s05-reject@relay.test", "550 5.1.1 <s05-reject@relay.test>: Recipient unknown")
    relay.answer("s08-later@relay.test", "452 4.2.2 <s08-later@relay.test>: Mailbox full")
    relay.answer("s09-expire@relay.test", "451 4.7.1 <s09-expire@relay.test>: Greylisted, try again later")

    t0 = time.time()
    s09 = cap.send(9, "expired", {"s09-expire@relay.test": "failed"}, notices={"delayed", "failed"})
    quick = [
        cap.send(1, "local-delivery", {f"alice@{MX1}": "delivered"}),
        cap.send(2, "relay-accepted", {"s02-ok@relay.test": "relayed"}),
        cap.send(3, "relay-deferred-then-accepted", {"s03-retry@relay.test": "relayed"}),
        cap.send(4, "relay-rejected-bounce", {"s04-reject@relay.test": "failed"}, notices={"failed"}),
        cap.send(6, "alias-expansion", {f"team@{MX1}": "expanded"}),
        cap.send(6, "alias-single", {f"info@{MX1}": "delivered"}, envid="mtqpd-s06b"),
        cap.send(7, "unknown-local-user", {f"nosuchuser@{MX1}": "rejected"}),
        cap.send(10, "content-filter", {f"frank@{MX1}": "delivered"}),
        cap.send(11, "second-instance", {f"bob@{MX2}": "delivered", "s11-far@out.relay.test": "relayed"}),
        cap.send(
            12,
            "dsn-parameters",
            {f"carol@{MX1}": "delivered", "s12-dsn@relay.test": "relayed"},
            notices={"delivered"},
            notify="SUCCESS,FAILURE",
            ret="HDRS",
        ),
        cap.send(13, "local-submission", {f"alice@{MX1}": "delivered"}, local_submission=True),
        cap.send(14, "relay-connect-refused-then-accepted", {"s14-late@late.relay.test": "relayed"}),
        cap.send(15, "partial-rcpt-rejection", {f"dave@{MX1}": "delivered", f"ghost@{MX1}": "rejected"}),
    ]
    # Scenario 14's sink starts (and binds its port) only after Postfix has
    # met a refused connection.
    time.sleep(max(0.0, t0 + 20 - time.time()))
    cap.sinks[2601] = stack.enter_context(make_sink(2601))
    cap.wait_settled(quick, t0 + 85, "the quick scenarios")

    time.sleep(max(0.0, t0 + 90 - time.time()))
    s05 = cap.send(
        5,
        "mixed-outcomes",
        {f"dave@{MX1}": "delivered", "s05-later@relay.test": "delayed", "s05-reject@relay.test": "failed"},
        notices={"failed", "delayed"},
    )
    s08 = cap.send(8, "still-deferred", {"s08-later@relay.test": "delayed"}, notices={"delayed"})
    # Stop well before scenario 5 and 8 could reach maximal_queue_lifetime.
    deadline = s05.submitted + lifetime - 30
    cap.wait_settled([s09, s05, s08], deadline, "expiry of 9 and delay notices of 5 and 8")
    snap = cap.snapshot()
    if time.time() > deadline or not all(cap.settled(s, snap) for s in cap.sent):
        raise RuntimeError("the final state is not as designed (or too close to scenario 5/8's expiry)")
    return snap.queued


def make_sink(port: int) -> mtalab.Sink:
    """The loopback sink of one relay domain, journalling into the capture's work directory."""
    domain = next(d for d, p in SINK_PORTS.items() if p == port)
    return mtalab.Sink(port, WORK / f"sink-{port}.jsonl", hostname=f"sink.{domain}")


def copy_logs(offsets: dict[str, int]) -> None:
    """Copy what this run appended to the capture rsyslogd's files, byte for byte."""
    time.sleep(2)  # let rsyslogd write the last lines (the stop messages)
    for name, offset in offsets.items():
        src = SYSLOG_DIR / name
        if src.stat().st_size < offset:
            raise RuntimeError(f"{src} shrank during the capture (rotated?)")
        with src.open("rb") as f:
            f.seek(offset)
            (OUT_DIR / name).write_bytes(f.read())


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root")
    install_postfix()
    stop_postfix(check=False)
    configure()
    wipe()
    busy = [p for p in (SMTP_PORT, FILTER_PORT, REINJECT_PORT, OUT_PORT, *SINK_PORTS.values()) if mtalab.port_open(p)]
    if busy:
        sys.exit(f"ports already in use: {busy}")
    version = postconf("mail_version")
    lifetime = seconds(postconf("maximal_queue_lifetime"))

    offsets = {name: (SYSLOG_DIR / name).stat().st_size if (SYSLOG_DIR / name).exists() else 0 for name in LOG_FORMS}
    cap = Capture({})
    with contextlib.ExitStack() as stack:
        for port in (2600, 2602):
            cap.sinks[port] = stack.enter_context(make_sink(port))
        stack.enter_context(mtalab.ContentFilter(FILTER_PORT, ("127.0.0.1", REINJECT_PORT)))
        try:
            # multi_instance_wrapper: this starts the primary and postfix-out.
            run("postfix", "start")
            mtalab.wait_until(
                lambda: all(mtalab.port_open(p) for p in (SMTP_PORT, REINJECT_PORT, OUT_PORT)),
                timeout=30,
                what="Postfix listening",
            )
            queued = run_scenarios(cap, stack, lifetime)
        finally:
            stop_postfix(check=False)
    # Nothing changes after the stop; the queue listing was taken just before it.
    snap = Snapshot(cap.notices(), queued)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    copy_logs(offsets)
    cap.ground_truth(snap, version).write(OUT_DIR / "expected.json")
    print(f"wrote {OUT_DIR}", flush=True)


if __name__ == "__main__":
    main()
