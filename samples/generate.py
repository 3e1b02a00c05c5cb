"""Generate large, realistic Postfix logs with their ground truth, for benchmarks.

    python samples/generate.py --lines 1000000 --seed 1 -o samples/generated/postfix-1m.log

writes the log and, beside it, ``<log>.expected.json`` in the schema of
``samples/README.md``. The same seed gives the same bytes.

The line shapes are those Postfix 3.7 wrote in ``samples/postfix/`` (smtpd,
cleanup, qmgr, local, smtp, bounce, NOQUEUE rejects), with the wording and
field order of the real capture. What is synthetic is the traffic: arrivals
are a Poisson stream, deliveries take random times, so the lines of many
messages interleave the way they do on a busy server. The outcome mix is
set by ``OUTCOMES`` below.

Only the standard library is used, so that benchmarks can run it anywhere.
"""

from __future__ import annotations

import argparse
import calendar
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "mx1"
MYDOMAIN = "mx1.example.test"
LOCAL_USERS = [f"user{n:03d}" for n in range(200)]
REMOTE_DOMAINS = [
    f"{name}.example.{tld}"
    for name in (
        "acme",
        "globex",
        "initech",
        "umbrella",
        "hooli",
        "vandelay",
        "wonka",
        "stark",
        "wayne",
        "tyrell",
    )
    for tld in ("com", "net", "org")
]
CLIENTS = [(f"client{n}.example.net", f"192.0.2.{n}") for n in range(1, 120)]

# (weight, outcome) for each recipient of an accepted message.
OUTCOMES = [
    (55, "relayed"),
    (25, "delivered"),
    (10, "deferred-then-relayed"),
    (5, "bounced"),
    (3, "delayed"),
]
REJECT_RATE = 0.06  # share of SMTP sessions that end in a NOQUEUE reject
MULTI_RCPT_RATE = 0.15


@dataclass(slots=True)
class Pids:
    """Postfix's processes: long-lived qmgr, pools of the rest (pids wrap)."""

    rng: random.Random
    qmgr: int = 0

    def __post_init__(self) -> None:
        self.qmgr = self.rng.randint(800, 2000)

    def pool(self, base: int) -> int:
        return base + self.rng.randint(0, 40)


def pretty(seconds: float) -> str:
    """Postfix's delay style: whole seconds from 10 up, one decimal from 1,
    two below that, and a bare 0 for what rounds to nothing."""
    if round(seconds, 1) >= 10:
        return f"{seconds:.0f}"
    if seconds >= 1:
        return f"{seconds:.1f}"
    text = f"{seconds:.2f}".rstrip("0").rstrip(".")
    return text or "0"


class Clock:
    """Formats timestamps, once per second, in the chosen syslog form."""

    def __init__(self, form: str):
        self.form = form
        self.cache: dict[int, str] = {}

    def stamp(self, t: float) -> str:
        sec = int(t)
        base = self.cache.get(sec)
        if base is None:
            tm = time.gmtime(sec)
            if self.form == "bsd":
                base = time.strftime("%b ", tm) + f"{tm.tm_mday:2d}" + time.strftime(" %H:%M:%S", tm)
            else:
                base = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
            self.cache[sec] = base
        if self.form == "bsd":
            return base
        return f"{base}.{int((t - sec) * 1_000_000):06d}+00:00"


class Generator:
    def __init__(self, seed: int, start: float, rate: float, retry: float):
        self.rng = random.Random(seed)
        self.t = start
        self.rate = rate
        self.retry = retry
        self.pids = Pids(self.rng)
        self.lines: list[tuple[float, int, str]] = []
        self.seq = 0
        self.used_ids: set[str] = set()
        self.messages: list[dict] = []
        self.rejections: list[dict] = []
        self.serial = 0

    # -- helpers --------------------------------------------------------
    def emit(self, t: float, text: str) -> None:
        self.seq += 1
        self.lines.append((t, self.seq, text))

    def queue_id(self) -> str:
        while True:
            qid = f"{self.rng.getrandbits(40):010X}"
            if qid not in self.used_ids:
                self.used_ids.add(qid)
                return qid

    def message_id(self) -> str:
        self.serial += 1
        return f"<{self.serial:08d}.{self.rng.getrandbits(32):08x}@{self.rng.choice(REMOTE_DOMAINS)}>"

    def delays(self, total: float) -> str:
        """``delay=T, delays=a/b/c/d`` in Postfix's own number style."""
        parts = (total * 0.3, total * 0.1, total * 0.2, total * 0.4)
        return f"delay={pretty(total)}, delays={'/'.join(pretty(x) for x in parts)}"

    # -- one SMTP session -------------------------------------------------
    def session(self) -> None:
        rng = self.rng
        t = self.t
        client, ip = rng.choice(CLIENTS)
        smtpd = f"postfix/smtpd[{self.pids.pool(3000)}]"
        self.emit(t, f"{smtpd}: connect from {client}[{ip}]")
        sender = f"{rng.choice(['news', 'billing', 'info', 'jane', 'joe'])}@{rng.choice(REMOTE_DOMAINS)}"
        if rng.random() < REJECT_RATE:
            rcpt = f"nosuch{rng.randint(1, 999)}@{MYDOMAIN}"
            t += 0.05
            self.emit(
                t,
                f"{smtpd}: NOQUEUE: reject: RCPT from {client}[{ip}]: 550 5.1.1 <{rcpt}>: Recipient address "
                f"rejected: User unknown in local recipient table; from=<{sender}> to=<{rcpt}> proto=ESMTP "
                f"helo=<{client}>",
            )
            self.emit(
                t + 0.01,
                f"{smtpd}: disconnect from {client}[{ip}] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
            )
            self.rejections.append(
                {
                    "scenario": 0,
                    "name": "generated",
                    "sender": sender,
                    "recipient": rcpt,
                    "status": "5",
                    "reply": "550 5.1.1 User unknown in local recipient table",
                }
            )
            return
        n = rng.randint(2, 4) if rng.random() < MULTI_RCPT_RATE else 1
        qid = self.queue_id()
        mid = self.message_id()
        size = rng.randint(800, 120_000)
        t += 0.03
        self.emit(t, f"{smtpd}: {qid}: client={client}[{ip}]")
        t += 0.02
        self.emit(t, f"postfix/cleanup[{self.pids.pool(3100)}]: {qid}: message-id={mid}")
        t += 0.01
        self.emit(
            t,
            f"postfix/qmgr[{self.pids.qmgr}]: {qid}: from=<{sender}>, size={size}, nrcpt={n} (queue active)",
        )
        self.emit(
            t + 0.01,
            f"{smtpd}: disconnect from {client}[{ip}] ehlo=1 mail=1 rcpt={n} data=1 quit=1 commands={n + 4}",
        )
        arrival = t
        recipients = []
        last = t
        weights = [w for w, _ in OUTCOMES]
        kinds = [k for _, k in OUTCOMES]
        bounced = []
        for _ in range(n):
            kind = rng.choices(kinds, weights)[0]
            truth, t_done = self.deliver(qid, kind, arrival)
            recipients.append(truth)
            last = max(last, t_done)
            if truth["action"] == "failed":
                bounced.append(truth)
        entry = {
            "scenario": 0,
            "name": "generated",
            "message_id": mid,
            "envid": None,
            "sender": sender,
            "recipients": recipients,
            "bounce": None,
            "bounce_of": None,
        }
        self.messages.append(entry)
        if bounced:
            last = self.bounce(qid, entry, last)
        if all(r["action"] != "delayed" for r in recipients):
            self.emit(last + 0.01, f"postfix/qmgr[{self.pids.qmgr}]: {qid}: removed")

    def deliver(self, qid: str, kind: str, arrival: float) -> tuple[dict, float]:
        """Log one recipient's attempts; return its ground truth and the last attempt's time."""
        rng = self.rng
        t = arrival + rng.uniform(0.05, 2.0)
        if kind == "delivered":
            user = rng.choice(LOCAL_USERS)
            rcpt = f"{user}@{MYDOMAIN}"
            total = t - arrival
            self.emit(
                t,
                f"postfix/local[{self.pids.pool(3200)}]: {qid}: to=<{rcpt}>, relay=local, "
                f"{self.delays(total)}, dsn=2.0.0, status=sent (delivered to mailbox)",
            )
            return self.truth(rcpt, "delivered", "2"), t
        domain = rng.choice(REMOTE_DOMAINS)
        rcpt = f"{rng.choice(['sales', 'ops', 'hr', 'ceo', 'team'])}{rng.randint(1, 99)}@{domain}"
        mx = f"mx.{domain}[198.51.100.{rng.randint(1, 254)}]:25"
        smtp = f"postfix/smtp[{self.pids.pool(3300)}]"
        if kind in ("deferred-then-relayed", "delayed"):
            tries = rng.randint(1, 3)
            for _ in range(tries):
                self.emit(
                    t,
                    f"{smtp}: {qid}: to=<{rcpt}>, relay={mx}, {self.delays(t - arrival)}, dsn=4.7.1, "
                    f"status=deferred (host {mx.rsplit(':', 1)[0]} said: 450 4.7.1 <{rcpt}>: Recipient "
                    f"address rejected: greylisted, try again later (in reply to RCPT TO command))",
                )
                t += self.retry * rng.uniform(1.0, 1.5)
            if kind == "delayed":
                return self.truth(rcpt, "delayed", "4"), t
        if kind == "bounced":
            self.emit(
                t,
                f"{smtp}: {qid}: to=<{rcpt}>, relay={mx}, {self.delays(t - arrival)}, dsn=5.1.1, "
                f"status=bounced (host {mx.rsplit(':', 1)[0]} said: 550 5.1.1 <{rcpt}>: Recipient "
                f"address rejected: User unknown in virtual mailbox table (in reply to RCPT TO command))",
            )
            return self.truth(rcpt, "failed", "5"), t
        remote_id = f"{self.rng.getrandbits(48):012X}"
        self.emit(
            t,
            f"{smtp}: {qid}: to=<{rcpt}>, relay={mx}, {self.delays(t - arrival)}, dsn=2.0.0, "
            f"status=sent (250 2.0.0 Ok: queued as {remote_id})",
        )
        return self.truth(rcpt, "relayed", "2"), t

    def truth(self, rcpt: str, action: str, status: str) -> dict:
        return {"original": rcpt, "final": rcpt, "action": action, "status": status, "path": [action]}

    def bounce(self, parent_qid: str, parent: dict, t: float) -> float:
        """The non-delivery notification: a new queue id, relayed back to the remote sender."""
        qid = self.queue_id()
        mid = f"<{time.strftime('%Y%m%d%H%M%S', time.gmtime(t))}.{qid}@{MYDOMAIN}>"
        cleanup = f"postfix/cleanup[{self.pids.pool(3100)}]"
        t += 0.01
        self.emit(t, f"{cleanup}: {qid}: message-id={mid}")
        self.emit(
            t + 0.001,
            f"postfix/bounce[{self.pids.pool(3400)}]: {parent_qid}: sender non-delivery notification: {qid}",
        )
        t += 0.01
        self.emit(
            t,
            f"postfix/qmgr[{self.pids.qmgr}]: {qid}: from=<>, size={self.rng.randint(2500, 9000)}, "
            f"nrcpt=1 (queue active)",
        )
        domain = parent["sender"].split("@", 1)[1]
        mx = f"mx.{domain}[198.51.100.{self.rng.randint(1, 254)}]:25"
        t += self.rng.uniform(0.1, 1.0)
        self.emit(
            t,
            f"postfix/smtp[{self.pids.pool(3300)}]: {qid}: to=<{parent['sender']}>, relay={mx}, "
            f"{self.delays(0.5)}, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as "
            f"{self.rng.getrandbits(48):012X})",
        )
        self.emit(t + 0.01, f"postfix/qmgr[{self.pids.qmgr}]: {qid}: removed")
        parent["bounce"] = mid
        self.messages.append(
            {
                "scenario": 0,
                "name": "generated",
                "message_id": mid,
                "envid": None,
                "sender": "",
                "recipients": [self.truth(parent["sender"], "relayed", "2")],
                "bounce": None,
                "bounce_of": parent["message_id"],
            }
        )
        return t

    # -- the whole log ----------------------------------------------------
    def run(self, *, messages: int | None, lines: int | None) -> None:
        """Sessions until the count of messages or of lines is reached.

        The log ends with the last delivery attempt: a message the scenario
        leaves "delayed" simply has no later line.
        """
        count = 0
        while (messages is None or count < messages) and (lines is None or len(self.lines) < lines):
            self.t += self.rng.expovariate(self.rate)
            self.session()
            count += 1


def write(gen: Generator, out: Path, form: str) -> int:
    clock = Clock(form)
    gen.lines.sort()
    prefix = f" {HOST} "
    n = 0
    with out.open("w", encoding="ascii", newline="\n") as f:
        for t, _, text in gen.lines:
            f.write(clock.stamp(t) + prefix + text + "\n")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--messages", type=int, help="number of SMTP sessions to generate")
    size.add_argument("--lines", type=int, help="generate sessions until the log has at least this many lines")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start", default="2026-03-01T00:00:00", help="UTC time of the first line")
    p.add_argument("--rate", type=float, default=2.0, help="mean SMTP sessions per second")
    p.add_argument("--retry", type=float, default=300.0, help="seconds between delivery attempts")
    p.add_argument("--form", choices=("bsd", "rfc3339"), default="bsd", help="syslog timestamp form")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)

    start = calendar.timegm(time.strptime(args.start, "%Y-%m-%dT%H:%M:%S"))
    gen = Generator(args.seed, start, args.rate, args.retry)
    gen.run(messages=args.messages, lines=args.lines)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    written = write(gen, args.output, args.form)
    truth = {
        "mta": "postfix",
        "mta_version": "generated",
        "logs": [{"file": args.output.name, "form": f"syslog-{args.form}"}],
        "hosts": [HOST],
        "messages": gen.messages,
        "rejections": gen.rejections,
    }
    Path(f"{args.output}.expected.json").write_text(json.dumps(truth) + "\n")
    print(
        f"{args.output}: {written} lines, {len(gen.messages)} messages, {len(gen.rejections)} rejections",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
