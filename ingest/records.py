"""Tracking records: one per envelope per reporting MTA host.

A record keeps the facts the logs gave about one queued message: who sent
it, when it arrived, what became of each recipient, and which other records
it is linked to. Facts only: whether a relayed recipient counts as
``transferred`` depends on whether the next hop's record is held too, which
the store answers at read time (``next_hop``), so a record never has to be
rewritten when a later log (or another host's) reveals the next hop.

Records go to and from the store as plain JSON-able dicts (``to_dict`` /
``from_dict``); times are RFC 3339 strings there, aware UTC datetimes here.
The dicts are compact: a field that is None, an empty list or its default
is left out (``from_dict`` takes a missing field as exactly that), which
makes the store's files a seventh smaller and a third cheaper to write and
read back. Dicts that spell out every field, as stores written before
did, read the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: How ``from_dict`` takes a recurring string value: ``pool.setdefault``
#: of a caller's pool, to keep one copy per distinct value, or ``_as_is``.
Share = Callable[[Any, Any], Any]
#: How ``from_dict`` reads a time: ``_dt``, or a caller's that shares them.
When = Callable[[str | None], datetime | None]

#: RFC 3886 actions (section 3.3.3 of RFC 3886 / RFC 3464).
ACTIONS = ("delivered", "relayed", "transferred", "delayed", "failed", "expanded")
#: What a recipient is until the log says otherwise.
DEFAULT_ACTION = "delayed"
DEFAULT_STATUS = "4.0.0"


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC, or None.

    ``isoformat`` costs a quarter of writing a record, and the same second
    recurs in a record (arrival, attempts, removal) and its neighbours: the
    text of each time is kept in ``_ISO`` (an aware time equals its UTC
    self, whose text is the one wanted), and nine in ten are found there.
    """
    if value is None:
        return None
    text = _ISO.get(value)
    if text is None:
        # Nearly every time is in UTC already: astimezone would only copy it.
        text = (value if value.tzinfo is UTC else value.astimezone(UTC)).isoformat()
        if len(_ISO) >= 1 << 14:
            _ISO.clear()
        _ISO[value] = text
    return text


_ISO: dict[datetime, str] = {}


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _as_is(value: Any, _default: Any) -> Any:
    """The ``Share`` that shares nothing."""
    return value


def sharing() -> tuple[Share, When]:
    """A ``share`` and a ``when`` for ``from_dict`` that give every record
    they read the same copy of each recurring string and of each time.

    JSON decoding makes a new string for every occurrence of a value and
    ``_dt`` a new time for each: a store's records keep one per value
    instead, which takes a third off the memory of a store loaded from
    files, for no more time (a time is looked up by its text: for one that
    recurs, that is cheaper than parsing it again).
    """
    times: dict[str, datetime] = {}
    known = times.get
    parse = datetime.fromisoformat

    def when(text: str | None) -> datetime | None:
        if not text:
            return None
        value = known(text)
        if value is None:
            value = times[text] = parse(text)
        return value

    strings: dict[Any, Any] = {}
    return strings.setdefault, when


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
        d: dict[str, Any] = {"at": iso(self.at), "outcome": self.outcome}
        if self.dsn is not None:
            d["dsn"] = self.dsn
        if self.remote_mta is not None:
            d["remote_mta"] = self.remote_mta
        if self.reply is not None:
            d["reply"] = self.reply
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], share: Share = _as_is, when: When = _dt) -> Attempt:
        """``share`` and ``when`` as for ``TrackingRecord.from_dict``."""
        get = d.get
        return cls(
            when(d["at"]),  # type: ignore[arg-type]
            share(d["outcome"], d["outcome"]),
            share(dsn := get("dsn"), dsn),
            share(mta := get("remote_mta"), mta),
            share(reply := get("reply"), reply),
        )


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
    action: str = DEFAULT_ACTION
    status: str = DEFAULT_STATUS
    diagnostic: str | None = None
    remote_mta: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None
    next_hop: str | None = None
    #: How it left: local delivery agent / SMTP transport name, as logged.
    transport: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"final": self.final}
        if self.original is not None:
            d["original"] = self.original
        if self.action != DEFAULT_ACTION:
            d["action"] = self.action
        if self.status != DEFAULT_STATUS:
            d["status"] = self.status
        if self.diagnostic is not None:
            d["diagnostic"] = self.diagnostic
        if self.remote_mta is not None:
            d["remote_mta"] = self.remote_mta
        if self.last_attempt is not None:
            d["last_attempt"] = iso(self.last_attempt)
        if self.will_retry_until is not None:
            d["will_retry_until"] = iso(self.will_retry_until)
        if self.next_hop is not None:
            d["next_hop"] = self.next_hop
        if self.transport is not None:
            d["transport"] = self.transport
        if self.attempts:
            d["attempts"] = [a.to_dict() for a in self.attempts]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], share: Share = _as_is, when: When = _dt) -> Recipient:
        """``share`` and ``when`` as for ``TrackingRecord.from_dict``."""
        get = d.get
        return cls(
            share(d["final"], d["final"]),
            share(orig := get("original"), orig),
            share(action := get("action", DEFAULT_ACTION), action),
            share(status := get("status", DEFAULT_STATUS), status),
            share(diag := get("diagnostic"), diag),
            share(mta := get("remote_mta"), mta),
            when(get("last_attempt")),
            when(get("will_retry_until")),
            get("next_hop"),
            share(transport := get("transport"), transport),
            [Attempt.from_dict(a, share, when) for a in get("attempts", ())],
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


#: ``TrackingRecord.handle`` of a record no store holds yet.
NEW = -1


@dataclass(slots=True, weakref_slot=True)
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
    #: The store's own number for the record, None until a store holds it:
    #: writing the record again then finds its place without a lookup;
    #: ``NEW`` when whoever made it vouches that no store holds its rid yet
    #: (the correlator, for the records it makes). Not one of the record's
    #: facts: not in ``to_dict``, not compared.
    handle: int | None = field(default=None, compare=False, repr=False)

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
        """The compact dict (see the module's docstring)."""
        d: dict[str, Any] = {
            "rid": self.rid,
            "host": self.host,
            "queue_id": self.queue_id,
            "mta": self.mta,
            "arrival": iso(self.arrival),
        }
        if self.message_id is not None:
            d["message_id"] = self.message_id
        if self.envid is not None:
            d["envid"] = self.envid
        if self.sender is not None:
            d["sender"] = self.sender
        if self.size is not None:
            d["size"] = self.size
        if self.client is not None:
            d["client"] = self.client
        if self.certifier is not None:
            d["certifier"] = self.certifier
        if self.mtrk_timeout is not None:
            d["mtrk_timeout"] = self.mtrk_timeout
        if self.removed is not None:
            d["removed"] = iso(self.removed)
        if self.last_seen is not None:
            d["last_seen"] = iso(self.last_seen)
        if self.parents:
            d["parents"] = [p.to_dict() for p in self.parents]
        if self.children:
            d["children"] = [c.to_dict() for c in self.children]
        if self.recipients:
            d["recipients"] = [r.to_dict() for r in self.recipients]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], share: Share = _as_is, when: When = _dt) -> TrackingRecord:
        """A record from ``to_dict``'s form, compact or spelled out in full.

        ``share`` is given each string that recurs across records (host,
        MTA, sender, client; addresses, actions, status codes, diagnostics,
        remote MTAs and replies of the recipients and attempts) and returns
        the copy to keep; ``when`` reads each time. A store loading many
        records passes those of ``sharing()``.
        """
        get = d.get
        # Arguments by position, in the order of the fields (here, and in
        # Recipient's and Attempt's): by keyword, making the half million
        # objects of a store's load would take 0.2 s longer.
        return cls(
            d["rid"],
            share(d["host"], d["host"]),
            d["queue_id"],
            share(d["mta"], d["mta"]),
            when(d["arrival"]),  # type: ignore[arg-type]
            get("message_id"),
            get("envid"),
            share(sender := get("sender"), sender),
            get("size"),
            share(client := get("client"), client),
            get("certifier"),
            get("mtrk_timeout"),
            when(get("removed")),
            when(get("last_seen")),
            [Link.from_dict(p) for p in get("parents", ())],
            [Link.from_dict(c) for c in get("children", ())],
            [Recipient.from_dict(r, share, when) for r in get("recipients", ())],
        )
