"""The parsers' output: one ``Event`` per log line.

An event says what one line reports about one envelope (or about none), in
words shared by all three MTAs, so that ``ingest`` can correlate without
knowing which MTA wrote the line. The MTA's own spelling survives where it
matters to a person (``reply``, ``dsn``), never as the only copy of a fact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What a line reports. Every line gets exactly one kind."""

    #: An SMTP client connected / disconnected (smtpd, postscreen, Exim, Sendmail).
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    #: The queue id was given to a message from this client (Postfix smtpd ``client=``).
    CLIENT = "client"
    #: A message arrived from a local submission (Postfix pickup, Sendmail MSP).
    PICKUP = "pickup"
    #: The message's Message-ID header.
    MESSAGE_ID = "message-id"
    #: The envelope entered the queue: sender, size, recipient count.
    ENQUEUE = "enqueue"
    #: One delivery attempt for one recipient that ended the recipient's
    #: story: sent, bounced, or failed permanently.
    DELIVERY = "delivery"
    #: One delivery attempt that failed temporarily; the recipient stays queued.
    DEFERRAL = "deferral"
    #: The MTA created a notification (bounce, delay, success DSN) about this
    #: envelope; ``fields["child"]`` is the notification's queue id.
    BOUNCE = "bounce"
    #: The message was handed on and re-queued under another id elsewhere
    #: (a content filter's ``queued_as``).
    REQUEUE = "requeue"
    #: A recipient was expanded (alias, list, forward) into others.
    EXPANSION = "expansion"
    #: The envelope left the queue (every recipient done).
    REMOVED = "removed"
    #: The envelope left the queue because its lifetime ran out.
    EXPIRED = "expired"
    #: A recipient, sender or client was refused in the SMTP dialogue.
    REJECT = "reject"
    #: A header/body check, milter or policy acted on a queued message
    #: (HOLD, DISCARD, REDIRECT, FILTER, WARN, INFO...).
    CHECK = "check"
    #: A queue operation by the administrator or the MTA (postsuper, freeze,
    #: thaw, release, requeue).
    ADMIN = "admin"
    #: The MTA said something about itself, not about a message: daemon
    #: start/stop, statistics, warnings with no queue id.
    SERVICE = "service"
    #: A line from a program that is not one of the MTAs (dovecot, opendkim...).
    FOREIGN = "foreign"
    #: A line mtqpd could not read. Counted, never an exception.
    UNKNOWN = "unknown"


#: What any delivery attempt says, sent or deferred.
_ATTEMPT_FIELDS = (
    "recipient",
    "orig_recipient",
    "status",
    "dsn",
    "reply",
    "relay",
    "relay_host",
    "relay_ip",
    "relay_port",
    "delay",
    "transport",
)

#: The field names each kind uses, shared by the three MTAs so that ingest
#: never asks which MTA wrote a line. A reader may add MTA-specific keys
#: (Exim's ``R=`` router as ``router``, Sendmail's ``pri``) but never spells
#: one of these differently. Addresses are bare (no angle brackets); times
#: are aware UTC datetimes; durations are float seconds; sizes are ints.
FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.CONNECT: ("client_host", "client_ip", "client_port"),
    Kind.DISCONNECT: ("client_host", "client_ip", "commands"),
    Kind.CLIENT: ("client_host", "client_ip", "client_port", "sasl_username", "orig_queue_id", "orig_client"),
    Kind.PICKUP: ("sender", "uid"),
    # message_id is the header's value as logged, brackets included.
    Kind.MESSAGE_ID: ("message_id", "resent"),
    # One line may say more (Exim's "<=" carries the client, protocol,
    # Message-ID and recipients; a bounce's "<= <>" names its parent).
    Kind.ENQUEUE: (
        "sender",
        "size",
        "nrcpt",
        "client_host",
        "client_ip",
        "helo",
        "protocol",
        "message_id",
        "envid",
        "recipients",
        "bounce_of",
    ),
    # status: sent | bounced | expired | failed | deliverable | undeliverable
    # (DELIVERY); deferred (DEFERRAL). reply is the remote or local text.
    Kind.DELIVERY: (*_ATTEMPT_FIELDS, "queued_as", "forwarded_as"),
    Kind.DEFERRAL: _ATTEMPT_FIELDS,
    # notification: non-delivery | delay | delivery status; child: its queue id.
    Kind.BOUNCE: ("child", "notification"),
    Kind.REQUEUE: ("queued_as",),
    Kind.EXPANSION: ("recipient", "members"),
    Kind.REMOVED: (),
    Kind.EXPIRED: ("sender",),
    Kind.REJECT: (
        "stage",
        "code",
        "dsn",
        "reply",
        "sender",
        "recipient",
        "client_host",
        "client_ip",
        "helo",
        "protocol",
    ),
    Kind.CHECK: ("action", "text", "sender", "recipient"),
    Kind.ADMIN: ("action",),
    Kind.SERVICE: ("text",),
    Kind.FOREIGN: ("text",),
    # reason: "overlong" for a line too long to parse; absent otherwise.
    Kind.UNKNOWN: ("reason",),
}


@dataclass(slots=True)
class Event:
    """One log line, read.

    ``ts`` is aware UTC. ``queue_id`` is the MTA-local id (Postfix queue id,
    Exim message id, Sendmail queue id) or None. ``fields`` holds the kind's
    typed values; the keys each kind uses are listed in ``FIELDS``.
    """

    ts: datetime | None
    host: str | None
    mta: str | None
    program: str | None
    pid: int | None
    queue_id: str | None
    kind: Kind
    fields: dict[str, Any] = field(default_factory=dict)
    #: The line as read, for ``unknown`` and for people; not part of equality.
    line: str = field(default="", compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The ``mtqpd parse --json`` object: stable keys first, then the fields."""
        out: dict[str, Any] = {
            "ts": self.ts.isoformat() if self.ts else None,
            "host": self.host,
            "mta": self.mta,
            "program": self.program,
            "pid": self.pid,
            "queue_id": self.queue_id,
            "kind": str(self.kind),
        }
        for key, value in self.fields.items():
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        if self.kind is Kind.UNKNOWN:
            out["line"] = self.line
        return out
