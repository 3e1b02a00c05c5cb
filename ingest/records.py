"""Tracking records: one per envelope per reporting MTA host.

A record keeps the facts the logs gave about one queued message: who sent
it, when it arrived, what became of each recipient, and which other records
it is linked to. Facts only: whether a relayed recipient counts as
``transferred`` depends on whether the next hop's record is held too, which
the store answers at read time (``next_hop``), so a record never has to be
rewritten when a later log (or another host's) reveals the next hop.

Records go to and from the store as plain JSON-able dicts (``to_dict`` /
``from_dict``); times are RFC 3339 strings there, aware UTC datetimes here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: RFC 3886 actions (section 3.3.3 of RFC 3886 / RFC 3464).
ACTIONS = ("delivered", "relayed", "transferred", "delayed", "failed", "expanded")


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC, or None."""
    return value.astimezone(UTC).isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def bare_message_id(message_id: str) -> str:
    """A Message-ID without its angle brackets or surrounding space: the
    form records are found by, whichever way a log or a client wrote it."""
    text = message_id.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


@dataclass(slots=True)
class Attempt:
    """One delivery attempt for one recipient, as the log told it."""

    at: datetime
    #: sent | deferred | bounced | expired | failed (the MTA's word, normalised)
    outcome: str
    dsn: str | None = None
    remote_mta: str | None = None
    reply: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "outcome": self.outcome,
            "dsn": self.dsn,
            "remote_mta": self.remote_mta,
            "reply": self.reply,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Attempt:
        return cls(_dt(d["at"]), d["outcome"], d.get("dsn"), d.get("remote_mta"), d.get("reply"))  # type: ignore[arg-type]


@dataclass(slots=True)
class Recipient:
    """One final recipient of a record, with its RFC 3886 outcome so far.

    ``original`` is the address the sender gave (ORCPT, Postfix ``orig_to``,
    Exim's parent address) when the log says; several recipients sharing one
    original are an expansion (alias, list), which ``recipient_view`` shows
    as one ``expanded`` recipient. ``next_hop`` is the queue id the next
    MTA or a content filter gave the message ("queued as"), or the id local
    delivery re-submitted it under ("forwarded as").
    """

    final: str
    original: str | None = None
    action: str = "delayed"
    status: str = "4.0.0"
    diagnostic: str | None = None
    remote_mta: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None
    next_hop: str | None = None
    #: How it left: local delivery agent / SMTP transport name, as logged.
    transport: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "final": self.final,
            "original": self.original,
            "action": self.action,
            "status": self.status,
            "diagnostic": self.diagnostic,
            "remote_mta": self.remote_mta,
            "last_attempt": iso(self.last_attempt),
            "will_retry_until": iso(self.will_retry_until),
            "next_hop": self.next_hop,
            "transport": self.transport,
            "attempts": [a.to_dict() for a in self.attempts],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipient:
        return cls(
            final=d["final"],
            original=d.get("original"),
            action=d.get("action", "delayed"),
            status=d.get("status", "4.0.0"),
            diagnostic=d.get("diagnostic"),
            remote_mta=d.get("remote_mta"),
            last_attempt=_dt(d.get("last_attempt")),
            will_retry_until=_dt(d.get("will_retry_until")),
            next_hop=d.get("next_hop"),
            transport=d.get("transport"),
            attempts=[Attempt.from_dict(a) for a in d.get("attempts", ())],
        )


@dataclass(slots=True, frozen=True)
class Link:
    """Another record: ``kind`` says what it is to this one.

    On a parent: ``bounce`` (a notification about this message). On a
    child: ``bounce-of``. Transfers are not stored as links: they are a
    recipient's ``next_hop``, resolved by the store.
    """

    host: str
    queue_id: str
    kind: str

    def to_dict(self) -> dict[str, str]:
        return {"host": self.host, "queue_id": self.queue_id, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> Link:
        return cls(d["host"], d["queue_id"], d["kind"])


@dataclass(slots=True)
class TrackingRecord:
    """One envelope on one reporting host.

    ``rid`` identifies the record in the store: host, queue id and the time
    of the first line that was applied to it. A queue id reused after the
    message left the queue starts a new record with a new rid.
    """

    rid: str
    host: str
    queue_id: str
    mta: str
    arrival: datetime
    message_id: str | None = None
    envid: str | None = None
    sender: str | None = None
    size: int | None = None
    client: str | None = None
    #: RFC 3885 certifier B (hex SHA-1) and MTRK timeout, when a log gave them.
    certifier: str | None = None
    mtrk_timeout: int | None = None
    #: When the message left the queue (all recipients done), or None while queued.
    removed: datetime | None = None
    #: The time of the last line applied: the store's retention looks at it.
    last_seen: datetime | None = None
    parents: list[Link] = field(default_factory=list)
    children: list[Link] = field(default_factory=list)
    recipients: list[Recipient] = field(default_factory=list)

    @staticmethod
    def make_rid(host: str, queue_id: str, first_seen: datetime) -> str:
        return f"{host}/{queue_id}/{iso(first_seen)}"

    @property
    def queued(self) -> bool:
        return self.removed is None

    def recipient(self, final: str) -> Recipient | None:
        for r in self.recipients:
            if r.final == final:
                return r
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rid": self.rid,
            "host": self.host,
            "queue_id": self.queue_id,
            "mta": self.mta,
            "arrival": iso(self.arrival),
            "message_id": self.message_id,
            "envid": self.envid,
            "sender": self.sender,
            "size": self.size,
            "client": self.client,
            "certifier": self.certifier,
            "mtrk_timeout": self.mtrk_timeout,
            "removed": iso(self.removed),
            "last_seen": iso(self.last_seen),
            "parents": [p.to_dict() for p in self.parents],
            "children": [c.to_dict() for c in self.children],
            "recipients": [r.to_dict() for r in self.recipients],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackingRecord:
        return cls(
            rid=d["rid"],
            host=d["host"],
            queue_id=d["queue_id"],
            mta=d["mta"],
            arrival=_dt(d["arrival"]),  # type: ignore[arg-type]
            message_id=d.get("message_id"),
            envid=d.get("envid"),
            sender=d.get("sender"),
            size=d.get("size"),
            client=d.get("client"),
            certifier=d.get("certifier"),
            mtrk_timeout=d.get("mtrk_timeout"),
            removed=_dt(d.get("removed")),
            last_seen=_dt(d.get("last_seen")),
            parents=[Link.from_dict(p) for p in d.get("parents", ())],
            children=[Link.from_dict(c) for c in d.get("children", ())],
            recipients=[Recipient.from_dict(r) for r in d.get("recipients", ())],
        )
