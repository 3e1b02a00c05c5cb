"""`mtqpd tail` against a real Postfix, with a real log rotation in the middle.

The sample corpus shows that mtqpd reads what Postfix writes; this shows that
it keeps up while Postfix writes it: a private Postfix instance logs to its
own file (postlogd, ``maillog_file``), mtqpd follows that file while real
messages go through it (to local mailboxes, to a loopback SMTP sink that
accepts some and refuses others, and bounces back to a local sender), and
``postfix logrotate`` renames and gzips the file halfway. What the tailed
store says each message became is checked against what the sink and the
mailboxes saw (never against the log), and against a replay of the same
files into a fresh store: the tail lost and doubled nothing across the
rotation.

It needs root (Postfix's master starts as root and drops privileges) and the
Debian postfix package; ``.ci/run`` installs it. The system's own Postfix, if
any, is neither used nor touched: the instance has its own configuration,
queue, data directory, ports and log, under a directory of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "samples" / "capture"))
import mtalab

POSTFIX = Path("/usr/sbin/postfix")
DOMAIN = "mx.mtqpd.test"
SENDER = f"root@{DOMAIN}"  # a local mailbox, so that the non-delivery notifications can be read back
#: A hang guard for each wait, not a performance bar: everything here settles within seconds.
TIMEOUT = 60.0

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
# postlogd writes only below these prefixes (default: /var, /dev/stdout).
maillog_file = {root}/log/mail.log
maillog_file_prefixes = {root}/log
maillog_file_rotate_suffix = %Y%m%d-%H%M%S
maillog_file_compressor = gzip
myhostname = {domain}
mydestination = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# No DNS: CI reaches only package mirrors.
smtpd_peername_lookup = no
mail_spool_directory = {root}/mail
# Not the system's /etc/aliases.db, which an unconfigured package never builds.
alias_maps =
biff = no
transport_maps = texthash:{root}/etc/transport
default_transport = error:mail for other domains never leaves this test
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
error     unix - - n - - error
retry     unix - - n - - error
local     unix - n n - - local
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def free_port() -> int:
    """A loopback port free now, for Postfix to bind a moment later."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Instance:
    """A running private Postfix and the sink it relays ``relay.test`` to."""

    root: Path
    port: int
    sink: mtalab.Sink

    @property
    def log(self) -> Path:
        return self.root / "log" / "mail.log"

    def postfix(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.root / "etc"), command],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=check,
            cwd="/",
        )

    def mailbox(self, user: str) -> list[mtalab.Delivered]:
        return mtalab.read_mbox(self.root / "mail" / user)


@pytest.fixture
def postfix() -> Iterator[Instance]:
    """Start a private Postfix on loopback; stop it and remove its files whatever happens.

    Its files live in a directory of their own rather than in ``tmp_path``:
    pytest keeps its temporary tree root-only (0700), but Postfix's master
    takes its lock in ``data_directory`` as the postfix user and local(8)
    writes mailboxes as the recipient, so every directory above theirs must
    be searchable by those users.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root: Postfix's master starts as root and drops privileges")
    if not POSTFIX.exists():
        pytest.skip(f"needs Postfix ({POSTFIX}): apt-get install postfix, as .ci/run does")
    root = Path(tempfile.mkdtemp(prefix="mtqpd-live-postfix-"))
    root.chmod(0o755)
    instance = None
    try:
        for name in ("etc", "log", "queue"):
            (root / name).mkdir()
        # local(8) writes and dot-locks mailboxes here as the recipient.
        (root / "mail").mkdir()
        (root / "mail").chmod(0o1777)
        with mtalab.Sink(0, root / "sink.jsonl") as sink:
            instance = Instance(root, free_port(), sink)
            sink_port = sink.server.server_address[1]
            (root / "etc" / "main.cf").write_text(MAIN_CF.format(root=root, domain=DOMAIN))
            (root / "etc" / "master.cf").write_text(MASTER_CF.format(port=instance.port))
            (root / "etc" / "transport").write_text(f"relay.test smtp:[127.0.0.1]:{sink_port}\n")
            # "postfix start" creates the queue's subdirectories and the data
            # directory with the ownership Postfix checks (post-install create-missing).
            started = instance.postfix("start", check=False)
            assert started.returncode == 0, f"postfix start failed: {started.stderr}\n{read(instance.log)}"
            mtalab.wait_until(lambda: mtalab.port_open(instance.port), TIMEOUT, 0.1, "Postfix's smtpd")
            yield instance
    finally:
        if instance is not None:
            instance.postfix("stop", check=False)  # waits for master to exit, kills it after 5 s
        shutil.rmtree(root, ignore_errors=True)


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"({path} does not exist)"


def mtqpd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=TIMEOUT)


def records(out: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in out.stdout.splitlines()]


def outcomes(recs: list[dict]) -> dict[str, dict]:
    """What a store says became of each message, by Message-ID: each
    recipient's action, and the Message-IDs of the notifications it bounced to."""
    by_queue_id = {r["queue_id"]: r for r in recs}
    return {
        r["message_id"]: {
            "actions": {x["final"]: x["action"] for x in r["recipients"]},
            "bounces": sorted(
                by_queue_id[c["queue_id"]]["message_id"]
                for c in r["children"]
                if c["kind"] == "bounce" and c["queue_id"] in by_queue_id
            ),
        }
        for r in recs
    }


@dataclass
class Message:
    """One message sent through Postfix and the action each recipient must end in."""

    message_id: str
    actions: dict[str, str]
    queue_id: str = ""

    def send(self, port: int) -> None:
        """Submit it, keeping the queue id that Postfix's smtpd answered with."""
        rcpts = list(self.actions)
        sent = mtalab.submit(port, mtalab.make_message(self.message_id, SENDER, rcpts, self.message_id), SENDER, rcpts)
        assert all(code == 250 for code, _ in sent.rcpt_replies.values()), sent
        assert sent.data_reply is not None and sent.data_reply[0] == 250, sent
        self.queue_id = re.search(r"queued as (\w+)", sent.data_reply[1])[1]

    @property
    def bounces(self) -> bool:
        return "failed" in self.actions.values()


def test_tail_follows_live_postfix_through_logrotate(postfix: Instance, tmp_path: Path) -> None:
    local, nobody = f"root@{DOMAIN}", f"nobody@{DOMAIN}"
    refused = ("refused1@relay.test", "refused2@relay.test")
    for rcpt in refused:
        postfix.sink.answer(rcpt, f"550 5.1.1 <{rcpt}>: Recipient address rejected: no such user")
    first = [
        Message("<live01.local@client.test>", {local: "delivered"}),
        Message("<live02.relayed@client.test>", {"ok1@relay.test": "relayed"}),
        Message("<live03.refused@client.test>", {refused[0]: "failed"}),
    ]
    second = [
        Message("<live04.local-and-relayed@client.test>", {nobody: "delivered", "ok2@relay.test": "relayed"}),
        Message("<live05.refused@client.test>", {refused[1]: "failed"}),
        Message("<live06.local@client.test>", {local: "delivered"}),
    ]
    messages = first + second

    def done_by_postfix(batch: list[Message]) -> bool:
        """Every message of ``batch`` has arrived where Postfix was to put it:
        mailboxes, the sink, or (for a refused one) a notification to the sender."""
        boxes = {u: {d.message_id for d in postfix.mailbox(u)} for u in ("root", "nobody")}
        notified = {d.reports_on for d in postfix.mailbox("root")}
        relayed = {e["message_id"] for e in postfix.sink.accepted()}
        for m in batch:
            for rcpt, action in m.actions.items():
                if action == "delivered" and m.message_id not in boxes[rcpt.split("@")[0]]:
                    return False
                if action == "relayed" and m.message_id not in relayed:
                    return False
            if m.bounces and m.message_id not in notified:
                return False
        return True

    store = tmp_path / "tailed"
    tail_err = tmp_path / "tail.stderr"
    seen: dict[str, dict] = {}

    def wait_tailed(want: dict[str, dict]) -> None:
        """Until the tailed store says of each message what ``want`` does; fail with both if it never does."""

        def caught_up() -> bool:
            assert tailer.poll() is None, f"mtqpd tail exited early:\n{read(tail_err)}"
            found = mtqpd("search", "--store", str(store), "--json")
            if found.returncode == 0:  # no store yet, or nothing in it, is "not yet"
                seen.clear()
                seen.update(outcomes(records(found)))
            return all(seen.get(mid) == outcome for mid, outcome in want.items())

        try:
            mtalab.wait_until(caught_up, TIMEOUT, 0.2, "the tailed store")
        except TimeoutError:
            pytest.fail(
                f"the tailed store never caught up\nexpected: {want}\nseen: {seen}\n"
                f"tail stderr: {read(tail_err)}\nlog: {read(postfix.log)}"
            )

    with tail_err.open("w") as err:
        tailer = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "tail", "--store", str(store), str(postfix.log)], stderr=err
        )
    try:
        # A follower with no checkpoint starts at the live file; only once the
        # first message is in the store is it certainly following that file,
        # so that the rotation happens under it.
        first[0].send(postfix.port)
        wait_tailed({first[0].message_id: {"actions": first[0].actions, "bounces": []}})
        for m in first[1:]:
            m.send(postfix.port)
        mtalab.wait_until(lambda: done_by_postfix(first), TIMEOUT, 0.1, "Postfix to finish the first half")
        # The first half is logged whole; the tailer may or may not have read
        # it yet. It must find the rest in the renamed (soon gzipped) file.
        rotated = postfix.postfix("logrotate", check=False)
        assert rotated.returncode == 0, rotated.stderr
        for m in second:
            m.send(postfix.port)
        mtalab.wait_until(lambda: done_by_postfix(messages), TIMEOUT, 0.1, "Postfix to finish the second half")

        # The ground truth: the actions asked for, and the notifications'
        # Message-IDs as the sender's mailbox received them.
        ndr = {d.reports_on: d.message_id for d in postfix.mailbox("root") if d.reports_on}
        expected = {
            m.message_id: {"actions": m.actions, "bounces": [ndr[m.message_id]] if m.bounces else []} for m in messages
        }
        expected |= {n: {"actions": {SENDER: "delivered"}, "bounces": []} for n in ndr.values()}
        wait_tailed(expected)
        tailer.send_signal(signal.SIGTERM)
        assert tailer.wait(TIMEOUT) == 0, read(tail_err)
    finally:
        if tailer.poll() is None:
            tailer.kill()
            tailer.wait()

    archives = sorted(postfix.log.parent.glob("mail.log.*.gz"))
    assert len(archives) == 1, sorted(p.name for p in postfix.log.parent.iterdir())
    replayed = tmp_path / "replayed"
    replay = mtqpd("replay", "--store", str(replayed), str(archives[0]), str(postfix.log))
    assert replay.returncode == 0, replay.stderr
    assert "unknown: 0" in replay.stdout, replay.stdout

    for m in messages:
        tailed = mtqpd("show", "--store", str(store), "--json", m.message_id)
        assert tailed.returncode == 0, tailed.stderr
        recs = records(tailed)
        record = next(r for r in recs if r["message_id"] == m.message_id)
        assert record["queue_id"] == m.queue_id  # as smtpd answered the DATA
        assert record["sender"] == SENDER
        for rcpt in record["recipients"]:
            assert rcpt["action"] == m.actions[rcpt["final"]], record
            assert rcpt["attempts"] == 1, record
            if rcpt["action"] == "failed":
                assert rcpt["status"] == "5.1.1" and "550 5.1.1" in rcpt["diagnostic"], record
            else:
                assert rcpt["status"].startswith("2."), record
            if rcpt["action"] == "relayed":
                assert rcpt["remote_mta"] and "127.0.0.1" in rcpt["remote_mta"], record
        assert len(recs) == 1 + m.bounces  # the message and its notification, nothing else
        again = mtqpd("show", "--store", str(replayed), "--json", m.message_id)
        assert records(again) == recs

    # Every record, not only those reached from the sent Message-IDs: the messages and their notifications.
    tailed_all, replayed_all = (
        sorted(records(mtqpd("search", "--store", str(at), "--json")), key=json.dumps) for at in (store, replayed)
    )
    assert tailed_all == replayed_all
    assert len(tailed_all) == len(expected)
