"""Shared pieces of the sample captures: an SMTP sink, a content filter, a
submitter, mailbox readers and the ground-truth writer.

The per-MTA capture scripts (``capture_postfix.py`` and friends) drive a real
MTA with these. Nothing here reads an MTA's log: the ground truth in
``samples/<mta>/expected.json`` comes from what the scenario asked for, what
the sink accepted or refused, and what landed in local mailboxes.

Standard library only, so that a bare Debian host can run it.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import json
import mailbox
import smtplib
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

# --------------------------------------------------------------------------
# SMTP sink


@dataclass
class SinkRules:
    """Per-recipient RCPT answers, by attempt.

    ``answers[rcpt]`` is a list of replies; attempt n gets ``answers[n]`` and
    every later attempt the last one. Recipients without a rule are accepted.
    """

    answers: dict[str, list[str]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)

    def reply_for(self, rcpt: str) -> str:
        key = rcpt.lower()
        n = self.attempts.get(key, 0)
        self.attempts[key] = n + 1
        replies = self.answers.get(key)
        if not replies:
            return "250 2.1.5 Ok"
        return replies[min(n, len(replies) - 1)]


class _SMTPHandler(socketserver.StreamRequestHandler):
    """What the sink and the filter both speak: reply lines, and DATA undone."""

    def send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def read_data(self) -> bytes:
        """The message after 354, up to the lone dot, dot-stuffing undone."""
        body = bytearray()
        while True:
            chunk = self.rfile.readline(65536)
            if not chunk or chunk in (b".\r\n", b".\n"):
                return bytes(body)
            body += chunk[1:] if chunk.startswith(b"..") else chunk


class _SinkHandler(_SMTPHandler):
    server: _SinkServer

    def handle(self) -> None:
        srv = self.server
        self.send(f"220 {srv.hostname} ESMTP mtalab sink")
        mail_from: str | None = None
        rcpts: list[dict] = []
        while True:
            raw = self.rfile.readline(4096)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.send(f"250-{srv.hostname}")
                self.send("250-PIPELINING")
                self.send("250-8BITMIME")
                self.send("250 DSN")
            elif verb == "MAIL":
                mail_from, rcpts = line[10:].strip(), []
                self.send("250 2.1.0 Ok")
            elif verb == "RCPT":
                arg = line[8:].strip()
                addr = arg.split(">", 1)[0].lstrip("<")
                with srv.lock:
                    reply = srv.rules.reply_for(addr)
                rcpts.append({"rcpt": addr, "args": arg, "reply": reply})
                self.send(reply)
            elif verb == "DATA":
                accepted = [r for r in rcpts if r["reply"].startswith("2")]
                if not accepted:
                    self.send("554 5.5.1 Error: no valid recipients")
                    continue
                self.send("354 End data with <CR><LF>.<CR><LF>")
                body = self.read_data()
                msg = email.message_from_bytes(body, policy=email.policy.compat32)
                with srv.lock:
                    queued_as = f"{srv.id_prefix}{next(srv.counter):06d}"
                    srv.record(
                        {
                            "time": time.time(),
                            "port": srv.server_address[1],
                            "mail_from": mail_from,
                            "rcpts": rcpts,
                            "message_id": msg.get("Message-ID", "").strip(),
                            "queued_as": queued_as,
                        }
                    )
                self.send(f"250 2.0.0 Ok: queued as {queued_as}")
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                self.send("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.send("221 2.0.0 Bye")
                return
            elif verb == "NOOP":
                self.send("250 2.0.0 Ok")
            else:
                self.send("502 5.5.2 Error: command not recognized")


class _SinkServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr, rules: SinkRules, journal: Path, hostname: str, id_prefix: str):
        super().__init__(addr, _SinkHandler)
        self.rules = rules
        self.journal = journal
        self.hostname = hostname
        self.id_prefix = id_prefix
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    def record(self, entry: dict) -> None:
        with self.journal.open("a") as f:
            f.write(json.dumps(entry) + "\n")


class Sink:
    """A loopback SMTP server whose per-recipient answers the scenario sets.

    Every accepted transaction is appended to ``journal`` (JSON lines) with
    the Message-ID it carried and the id the sink answered with, so that the
    ground truth can say "this message reached the sink" without reading the
    MTA's log.
    """

    def __init__(self, port: int, journal: Path, hostname: str = "sink.relay.test", id_prefix: str = "SINK"):
        self.rules = SinkRules()
        self.journal = journal
        journal.unlink(missing_ok=True)
        self.server = _SinkServer(("127.0.0.1", port), self.rules, journal, hostname, id_prefix)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, rcpt: str, *replies: str) -> None:
        self.rules.answers[rcpt.lower()] = list(replies)

    def __enter__(self) -> Sink:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[dict]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines()]

    def outcome(self, message_id: str, rcpt: str) -> str | None:
        """The last reply the sink gave ``rcpt`` of ``message_id``: '2', '4', '5' or None.

        Refused RCPTs never reach DATA, so they are looked up in the rules'
        attempt counter instead of the journal.
        """
        for entry in self.accepted():
            if entry["message_id"] == message_id:
                for r in entry["rcpts"]:
                    if r["rcpt"].lower() == rcpt.lower() and r["reply"].startswith("2"):
                        return "2"
        n = self.rules.attempts.get(rcpt.lower(), 0)
        replies = self.rules.answers.get(rcpt.lower())
        if n and replies:
            return replies[min(n - 1, len(replies) - 1)][0]
        return None


# --------------------------------------------------------------------------
# Content filter (the amavis shape: receive, re-submit, answer with the
# downstream reply so that the MTA logs "queued as" of the second queue id)


class _FilterHandler(_SMTPHandler):
    server: _FilterServer

    def handle(self) -> None:
        self.send("220 filter.localhost ESMTP mtalab content filter")
        mail_from, mail_opts, rcpts = "", [], []
        while True:
            raw = self.rfile.readline(4096)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO", "LHLO"):
                self.send("250-filter.localhost")
                self.send("250-PIPELINING")
                self.send("250 DSN")
            elif verb == "MAIL":
                parts = line[10:].strip().split(" ")
                mail_from, mail_opts, rcpts = parts[0].strip("<>"), parts[1:], []
                self.send("250 2.1.0 Ok")
            elif verb == "RCPT":
                parts = line[8:].strip().split(" ")
                rcpts.append((parts[0].strip("<>"), parts[1:]))
                self.send("250 2.1.5 Ok")
            elif verb == "DATA":
                self.send("354 go ahead")
                body = self.read_data()
                host, port = self.server.downstream
                with smtplib.SMTP(host, port, local_hostname="filter.localhost") as s:
                    s.ehlo()
                    s.mail(mail_from, mail_opts)
                    for rcpt, opts in rcpts:
                        s.rcpt(rcpt, opts)
                    code, reply = s.data(body)
                text = reply.decode()
                self.send(f"250 2.0.0 from MTA(smtp:[{host}]:{port}): {code} {text}")
            elif verb == "RSET":
                self.send("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.send("221 2.0.0 Bye")
                return
            else:
                self.send("502 5.5.2 Error: command not recognized")


class _FilterServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr, downstream: tuple[str, int]):
        super().__init__(addr, _FilterHandler)
        self.downstream = downstream


class ContentFilter:
    """Listen on ``port``; pass every message on, unchanged, to ``downstream``."""

    def __init__(self, port: int, downstream: tuple[str, int]):
        self.server = _FilterServer(("127.0.0.1", port), downstream)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ContentFilter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------
# Submitting scenario messages


def make_message(message_id: str, sender: str, to: list[str], subject: str, body: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg.set_content(body or f"mtqpd sample capture: {subject}\n")
    return msg.as_bytes()


@dataclass
class Submission:
    """What the submitting client saw: the MTA's answer to each RCPT and to DATA."""

    rcpt_replies: dict[str, tuple[int, str]]
    data_reply: tuple[int, str] | None


def submit(
    port: int,
    message: bytes,
    sender: str,
    recipients: list[str],
    *,
    mail_options: list[str] = (),
    rcpt_options: dict[str, list[str]] | None = None,
    host: str = "127.0.0.1",
    helo: str = "client.example.test",
) -> Submission:
    """Send one message over SMTP, recipient by recipient, recording each answer."""
    rcpt_options = rcpt_options or {}
    replies: dict[str, tuple[int, str]] = {}
    with smtplib.SMTP(host, port, local_hostname=helo, timeout=60) as s:
        s.ehlo()
        code, text = s.mail(sender, list(mail_options))
        if code != 250:
            raise RuntimeError(f"MAIL FROM refused: {code} {text!r}")
        for rcpt in recipients:
            code, text = s.rcpt(rcpt, rcpt_options.get(rcpt, []))
            replies[rcpt] = (code, text.decode())
        data_reply = None
        if any(code in (250, 251) for code, _ in replies.values()):
            code, text = s.data(message)
            data_reply = (code, text.decode())
    return Submission(replies, data_reply)


def wait_until(predicate, timeout: float, step: float = 1.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# Reading mailboxes (ground truth for local deliveries and for NDRs)


@dataclass
class Delivered:
    message_id: str
    subject: str
    #: For a delivery status notification: the Message-ID of the message it
    #: reports on (read from its message/rfc822 or text/rfc822-headers part).
    reports_on: str | None
    #: For a DSN: per-recipient (Final-Recipient, Action, Status) from its
    #: message/delivery-status part.
    dsn_recipients: list[dict]
    x_original_to: str | None
    delivered_to: str | None


def _parse_delivery_status(part) -> list[dict]:
    """Per-recipient groups of a message/delivery-status part."""
    payload = part.get_payload()
    # The stdlib parses message/delivery-status into a list of header blocks.
    blocks = payload if isinstance(payload, list) else []
    out = []
    for block in blocks[1:]:
        out.append(
            {
                "final_recipient": (block.get("Final-Recipient") or "").split(";", 1)[-1].strip(),
                "original_recipient": (block.get("Original-Recipient") or "").split(";", 1)[-1].strip() or None,
                "action": (block.get("Action") or "").strip().lower(),
                "status": (block.get("Status") or "").strip(),
            }
        )
    return out


def read_mbox(path: Path) -> list[Delivered]:
    """Every message in an mbox file, in order; [] when there is no file."""
    if not path.exists():
        return []
    out = []
    box = mailbox.mbox(str(path), create=False)
    try:
        for msg in box:
            reports_on = None
            dsn = []
            for part in msg.walk():
                ctype = part.get_content_type()
                if ctype == "message/delivery-status":
                    dsn = _parse_delivery_status(part)
                elif ctype == "message/rfc822" and reports_on is None:
                    inner = part.get_payload()
                    inner = inner[0] if isinstance(inner, list) else inner
                    reports_on = (inner.get("Message-ID") or "").strip() or None
                elif ctype == "text/rfc822-headers" and reports_on is None:
                    inner = email.message_from_string(part.get_payload(decode=True).decode("utf-8", "replace"))
                    reports_on = (inner.get("Message-ID") or "").strip() or None
            out.append(
                Delivered(
                    message_id=(msg.get("Message-ID") or "").strip(),
                    subject=msg.get("Subject") or "",
                    reports_on=reports_on,
                    dsn_recipients=dsn,
                    x_original_to=msg.get("X-Original-To"),
                    delivered_to=msg.get("Delivered-To"),
                )
            )
    finally:
        box.close()
    return out


# --------------------------------------------------------------------------
# Ground truth


class GroundTruth:
    """Collects ``expected.json`` for one MTA, one scenario at a time.

    The schema is described in ``samples/README.md``.
    """

    def __init__(self, mta: str, version: str, logs: list[str], hosts: list[str]):
        self.doc = {
            "mta": mta,
            "mta_version": version,
            "logs": logs,
            "hosts": hosts,
            "messages": [],
            "rejections": [],
        }

    def message(self, **entry) -> dict:
        entry.setdefault("envid", None)
        entry.setdefault("bounce", None)
        entry.setdefault("bounce_of", None)
        for r in entry["recipients"]:
            r.setdefault("path", [r["action"]])
        self.doc["messages"].append(entry)
        return entry

    def rejection(self, **entry) -> None:
        self.doc["rejections"].append(entry)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.doc, indent=2) + "\n")
