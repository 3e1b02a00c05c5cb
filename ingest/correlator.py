"""The correlator: events in, tracking records out.

It keeps, per (host, queue id), the record that queue id currently names,
and folds each event into it. Everything a record says is derived from facts
it keeps (attempts, links, times), so that:

- applying the same event twice changes nothing (replay, crash recovery);
- lines that arrive out of order across programs (a delivery line before
  qmgr's ``from=``) give the same record as lines in order;
- a queue id reused after its message left the queue starts a new record.

Records are written to the store in batches (``flush``); reads between
batches see the correlator's own copies first.

Memory does not grow with the log. A record that no later line can change
(it left the queue an hour ago, in log time) is written and dropped; so is
a record that arrived longer ago than its MTA's queue lifetime and a day,
since no line after that is taken for its message (``stale``); and when
more keys are held than ``max_keys``, the longest untouched are written
and dropped too. Dropped keys go into a Bloom filter: a later line that
names one (a retry days later, a bounce linked after the fact) has its
records read back from the store, changed, and written again in place; a
key the filter has never seen is new and costs no lookup at all, unless
the store held records before this correlator started whose hours a line
could still reach (``Store.span``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from parsers import Event, Kind

from .bloom import AgingBloom
from .outcome import FINAL, settle
from .records import NEW, Attempt, Link, Recipient, TrackingRecord
from .store import Store

#: Each MTA's own default queue lifetime: Postfix maximal_queue_lifetime (5d),
#: Exim's default retry rule (F,4d,6h), Sendmail Timeout.queuereturn (5d).
DEFAULT_LIFETIMES = {"postfix": timedelta(days=5), "exim": timedelta(days=4), "sendmail": timedelta(days=5)}

#: How far out of order two lines of one message may arrive and still be
#: taken as one message after its "removed" line.
SLACK = timedelta(seconds=5)
#: Beyond its MTA's queue lifetime, how much longer a record may still be
#: a later line's message: after that the MTA has long given the message
#: up, and a line under its queue id is another message's.
STALE_AFTER = timedelta(days=1)
#: How long (in log time) a record that left the queue stays in memory.
KEEP_AFTER_REMOVAL = timedelta(hours=1)
#: The memory a correlator's records may take unless told otherwise, and
#: what one key's records take, for the count of keys that fits.
DEFAULT_MEMORY = 128 << 20
_KEY_BYTES = 2000

#: Lines that only ever open a message: after the previous message under the
#: same queue id was removed, they start a new record at once.
_STARTS = frozenset({Kind.CLIENT, Kind.PICKUP})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FRESH_STEP = timedelta(minutes=1)

_REJECT, _ENQUEUE = Kind.REJECT, Kind.ENQUEUE

#: Delivery statuses as attempt outcomes.
_OUTCOMES = {
    "sent": "sent",
    "deferred": "deferred",
    "bounced": "bounced",
    "expired": "expired",
    "failed": "failed",
    "softbounce": "deferred",
}


@dataclass(slots=True)
class Settings:
    #: Host name for lines that carry none (Exim's own mainlog).
    default_host: str = "localhost"
    lifetimes: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_LIFETIMES))


Key = tuple[str, str]


class Correlator:
    def __init__(self, store: Store, settings: Settings | None = None, *, memory: int = DEFAULT_MEMORY) -> None:
        self.store = store
        self.settings = settings or Settings()
        #: The records of each (host, queue id) held in memory, oldest first.
        self._gens: dict[Key, list[TrackingRecord]] = {}
        self._dirty: dict[str, TrackingRecord] = {}
        #: Records made, and records read back from the store and changed.
        self.created = 0
        self._changed_stored: set[str] = set()
        #: Latest line time seen: what "long ago" means when evicting.
        self._now: datetime | None = None
        #: Told the (host, queue id) of every record an event reads or
        #: changes: a spread replay finds the messages that span its cuts so.
        self.on_touch: Callable[[Key], object] | None = None
        self.max_keys = max(memory // _KEY_BYTES, 1000)
        #: Keys dropped from memory (see the module's docstring).
        self.dropped = AgingBloom(min(max(memory // 16, 1 << 16), 16 << 20) * 8)
        self._dropped_age: datetime | None = None
        #: Keys in the order their records left the queue, and the keys held
        #: in the order they were first held: the candidates for dropping,
        #: oldest first.
        self._left: deque[tuple[datetime, Key]] = deque()
        self._made: OrderedDict[Key, datetime] = OrderedDict()
        #: The hours of what the store held before this correlator began.
        self._before = store.span()
        self._stale = {mta: life + STALE_AFTER for mta, life in self.settings.lifetimes.items()}
        self._longest = max(self._stale.values(), default=timedelta(days=6))
        self._shortest = min(self._stale.values(), default=timedelta(days=5))
        #: No record that arrived after this is stale for a line up to
        #: ``_fresh_until``: one comparison a line spares the per-MTA sum.
        self._fresh = _EPOCH
        self._fresh_until = _EPOCH

    @property
    def written(self) -> int:
        """Records this correlator made or changed."""
        return self.created + len(self._changed_stored)

    def _stale_before(self, ts: datetime, mta: str) -> datetime:
        return ts - self._stale.get(mta, self._longest)

    # -- finding the record an event belongs to ---------------------------------

    def _generations(self, host: str, qid: str, ts: datetime | None) -> list[TrackingRecord]:
        """Every record of (host, qid) a line at ``ts`` may belong to, oldest
        first: read from the store the first time the key is seen, if the
        store may have any (see the module's docstring), and kept here
        after that (copies: the store's are its own)."""
        key = (host, qid)
        gens = self._gens.get(key)
        if gens is None:
            gens = []
            if key in self.dropped or self._store_may_hold(ts):
                stored = [r for r in self.store.by_queue_id(qid) if r.host == host]
                for r in stored:
                    copy = TrackingRecord.from_dict(r.to_dict())
                    copy.handle = r.handle
                    gens.append(copy)
            self._gens[key] = gens
            if gens:
                self._made[key] = gens[-1].arrival
        return gens

    def _store_may_hold(self, ts: datetime | None) -> bool:
        """Whether what the store held at the start may hold a record a
        line at ``ts`` belongs to: one that arrived before the line (give or
        take ``SLACK``), and not longer ago than the stalest MTA allows."""
        if self._before is None:
            return False
        if ts is None:
            return True
        first, last = self._before
        return first <= ts + SLACK and last >= ts - self._longest

    def _record(self, host: str, qid: str, ev: Event, mta: str) -> TrackingRecord:
        """The record that ``ev`` belongs to, made when there is none.

        That is the last record of (host, qid) to have arrived by the
        event's time, unless that message had already left the queue: then
        the queue id was reused and a new record begins.
        """
        ts = ev.ts
        key = (host, qid)
        if self.on_touch is not None:
            self.on_touch(key)
        gens = self._gens.get(key)
        if gens is None:
            gens = self._generations(host, qid, ts)
        rec = gens[-1] if gens else None
        if ts is not None and rec is not None:
            # (The first test spares nearly every line the sum's new datetime.)
            if rec.arrival > ts and rec.arrival > ts + SLACK:  # an older message under the same id, or none
                rec = next((g for g in reversed(gens) if g.arrival <= ts + SLACK), None)
            left = rec is not None and rec.removed is not None and ts > rec.removed
            stale = rec is not None and rec.arrival < self._fresh and rec.arrival < self._stale_before(ts, rec.mta)
            if stale or (left and (ev.kind in _STARTS or ts > rec.removed + SLACK)):  # type: ignore[union-attr]
                rec = None
        if rec is None:
            at = ts or self._now or _EPOCH
            rec = TrackingRecord(TrackingRecord.make_rid(host, qid, at), host, qid, mta, at, last_seen=at, handle=NEW)
            gens.append(rec)
            gens.sort(key=lambda g: g.arrival)
            self.created += 1
            self._made.setdefault(key, at)
        elif rec.handle is not None and rec.handle != NEW and rec.rid not in self._dirty:
            self._changed_stored.add(rec.rid)
        if ts is not None:
            if ts < rec.arrival:
                rec.arrival = ts
            if rec.last_seen is None or ts > rec.last_seen:
                rec.last_seen = ts
        self._dirty[rec.rid] = rec
        return rec

    # -- applying events -----------------------------------------------------------

    def apply(self, ev: Event, host: str | None = None) -> None:
        """Fold one event into the records it concerns."""
        qid = ev.queue_id
        handler = _HANDLERS.get(ev.kind) if qid is not None else None
        if handler is None or ev.mta is None:
            return
        kind = ev.kind
        if kind is _REJECT and ev.fields.get("stage") not in ("DATA", "END-OF-MESSAGE"):
            return  # one recipient refused in the dialogue; the message goes on
        if kind is _ENQUEUE and ev.fields.get("nrcpt") == 0 and not ev.fields.get("recipients"):
            return  # Sendmail names every SMTP session; nothing was queued
        ts = ev.ts
        if ts is not None and (self._now is None or ts > self._now):
            self._now = ts
            if ts > self._fresh_until:
                self._fresh_until = ts + _FRESH_STEP
                self._fresh = self._fresh_until - self._shortest
        host = host or ev.host or self.settings.default_host
        handler(self, self._record(host, qid, ev, ev.mta), ev, host)  # type: ignore[arg-type]

    def _on_client(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        h, ip = ev.fields.get("client_host"), ev.fields.get("client_ip")
        if ip or h:
            rec.client = f"{h or 'unknown'}[{ip}]" if ip else h

    def _on_pickup(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        rec.client = rec.client or "local"
        if rec.sender is None:
            rec.sender = ev.fields.get("sender")

    def _on_message_id(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        if not ev.fields.get("resent") and ev.fields.get("message_id"):
            rec.message_id = ev.fields["message_id"]

    def _on_enqueue(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        f = ev.fields
        if f.get("sender") is not None:
            rec.sender = f["sender"]
        if f.get("size") is not None:
            rec.size = f["size"]
        if f.get("message_id") and not rec.message_id:
            rec.message_id = f["message_id"]
        if f.get("envid"):
            rec.envid = f["envid"]
        if f.get("client_ip") or f.get("client_host"):
            self._on_client(rec, ev, host)
        for address in f.get("recipients") or ():
            self._recipient(rec, address, None)
        parent = f.get("bounce_of")
        if parent:
            self._link_bounce(host, parent, rec, ev)

    def _on_attempt(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        f = ev.fields
        addresses = f.get("recipients") or ([f["recipient"]] if f.get("recipient") else [])
        if not addresses:
            return  # a note about one host of an attempt; the per-recipient line follows
        outcome = _OUTCOMES.get(f.get("status") or "", "deferred" if ev.kind is Kind.DEFERRAL else "sent")
        if f.get("attempted") is False:
            outcome = ""  # Exim's "retry time not reached": nothing was tried
        remote = f.get("relay_host") or f.get("relay_ip")
        if remote and f.get("relay_ip") and remote != f["relay_ip"] and f.get("relay_host") in (None, "", "none"):
            remote = f["relay_ip"]
        for address in addresses:
            r = self._recipient(rec, address, f.get("orig_recipient"))
            if f.get("transport") and (r.transport is None or outcome == "sent"):
                r.transport = f["transport"]
            if outcome == "sent":
                hop = f.get("queued_as") or f.get("forwarded_as")
                if hop:
                    r.next_hop = hop
            if outcome and ev.ts is not None:
                attempt = Attempt(ev.ts, outcome, f.get("dsn"), remote, f.get("reply"))
                if attempt not in r.attempts:
                    r.attempts.append(attempt)

    def _on_bounce(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        child_qid = ev.fields.get("child")
        if child_qid:
            child = self._record(host, child_qid, ev, rec.mta)
            if child.sender is None:
                child.sender = ""
            self._link(rec, Link(host, child_qid, "bounce"))
            self._link(child, Link(host, rec.queue_id, "bounce-of"), parents=True)
        if ev.fields.get("expired"):
            self._expire(rec, ev)

    def _link_bounce(self, host: str, parent_qid: str, child: TrackingRecord, ev: Event) -> None:
        self._link(child, Link(host, parent_qid, "bounce-of"), parents=True)
        if self.on_touch is not None:
            self.on_touch((host, parent_qid))
        ts = ev.ts
        gens = self._gens.get((host, parent_qid))
        if gens is None:
            gens = self._generations(host, parent_qid, ts)
        parent = next((g for g in reversed(gens) if ts is None or g.arrival <= ts), None)
        if parent is not None and ts is not None and parent.arrival < self._stale_before(ts, parent.mta):
            parent = None
        if parent is not None:
            self._link(parent, Link(host, child.queue_id, "bounce"))
            self._dirty[parent.rid] = parent

    def _on_expansion(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        alias = ev.fields.get("recipient")
        for member in ev.fields.get("members") or ():
            self._recipient(rec, member, alias)

    def _on_requeue(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        for child in ev.fields.get("children") or [ev.fields.get("queued_as")]:
            if child:
                self._link(rec, Link(host, child, "split"))

    def _on_removed(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        if ev.ts is not None and (rec.removed is None or ev.ts > rec.removed):
            rec.removed = ev.ts
            self._left.append((ev.ts, (host, rec.queue_id)))

    def _on_expired(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        self._expire(rec, ev)

    def _on_reject(self, rec: TrackingRecord, ev: Event, host: str) -> None:
        # Refused at the end of DATA (header/body checks, milters): the queue
        # file is gone and no "removed" line will follow.
        self._on_removed(rec, ev, host)

    # -- helpers ------------------------------------------------------------------

    def _recipient(self, rec: TrackingRecord, address: str, original: str | None) -> Recipient:
        """The recipient ``address`` of ``rec``, added when new.

        A bare local part (Exim and Sendmail local deliveries) is the member
        of this record it names. A recipient known only from the envelope
        (Exim's ``for``) gives way to the members of its expansion once one
        is seen, so that an alias to one address stays that address's story.
        """
        if "@" not in address and original is None:
            for r in rec.recipients:
                if r.final.partition("@")[0] == address:
                    return r
        final = _qualify(address, original)
        r = rec.recipient(final)
        if r is None:
            r = Recipient(final=final)
            rec.recipients.append(r)
        if original and original != final:
            if r.original is None:
                r.original = original
            placeholder = rec.recipient(original)
            if placeholder is not None and not placeholder.attempts and placeholder.original is None:
                rec.recipients.remove(placeholder)
        return r

    def _expire(self, rec: TrackingRecord, ev: Event) -> None:
        """The message left the queue by expiry: every recipient still
        waiting failed, keeping the status of its last refusal."""
        if ev.ts is None:
            return
        for r in rec.recipients:
            if not any(a.outcome in FINAL for a in r.attempts):
                last = next((a.dsn for a in reversed(r.attempts) if a.dsn), None)
                attempt = Attempt(ev.ts, "expired", last)
                if attempt not in r.attempts:
                    r.attempts.append(attempt)

    def _settle(self, rec: TrackingRecord) -> None:
        lifetime = self.settings.lifetimes.get(rec.mta, timedelta(days=5))
        for r in rec.recipients:
            settle(r, rec.arrival, lifetime)

    @staticmethod
    def _link(rec: TrackingRecord, link: Link, parents: bool = False) -> None:
        links = rec.parents if parents else rec.children
        if link not in links:
            links.append(link)

    # -- writing ------------------------------------------------------------------

    def flush(self, durable: bool = True) -> int:
        """Settle and write every changed record to the store (made durable
        when ``durable``), then drop what need not stay in memory; return
        how many records were written."""
        written = self._put(list(self._dirty.values()))
        if durable:
            self.store.flush()
        self._drop(self._droppable())
        return written

    def evict(self) -> int:
        """Write and drop only the records that need not stay in memory:
        a replay's step, which keeps every record that may still change
        here until it is done, so that each is written about once."""
        keys = self._droppable()
        written = self._put([r for key in keys for r in self._gens[key] if r.rid in self._dirty])
        self._drop(keys)
        return written

    def _put(self, changed: list[TrackingRecord]) -> int:
        for rec in changed:
            _canonical(rec)
            self._settle(rec)  # arrival may have moved earlier since
            del self._dirty[rec.rid]
        if changed:
            self.store.put(changed)
        return len(changed)

    def _droppable(self) -> list[Key]:
        """Keys whose records no later line changes (see the module's
        docstring), then the longest untouched while too many are held."""
        now = self._now
        if now is None:
            return []
        gens_of = self._gens
        out: dict[Key, None] = {}
        horizon = now - KEEP_AFTER_REMOVAL
        left = self._left
        while left and left[0][0] < horizon:
            _, key = left.popleft()
            gens = gens_of.get(key)
            if gens and gens[-1].removed is not None and gens[-1].removed < horizon:
                out[key] = None
        stale = now - self._longest
        excess = len(gens_of) - len(out) - self.max_keys
        for key, first in self._made.items():
            if first >= stale and excess <= 0:
                break
            if key not in out:
                out[key] = None
                excess -= 1
        if self._dropped_age is None:
            self._dropped_age = now
        elif now - self._dropped_age > self._longest:
            self.dropped.age()  # what was dropped two lifetimes ago no line can name
            self._dropped_age = now
        return list(out)

    def _drop(self, keys: list[Key]) -> None:
        gens_of, dirty = self._gens, self._dirty
        for key in keys:
            gens = gens_of.get(key)
            if gens is None or any(r.rid in dirty for r in gens):
                continue  # changed since it was chosen: kept for the next round
            del gens_of[key]
            self._made.pop(key, None)
            self.dropped.add(key)

    # -- a spread replay's parent (ingest.parallel) ------------------------------------

    def live_keys(self, keep: timedelta = KEEP_AFTER_REMOVAL) -> set[Key]:
        """The keys held whose records a later line is likely to change:
        not left the queue more than ``keep`` ago, not stale. (Any other
        may still be changed: it is then read back from the store.)"""
        now = self._now
        if now is None:
            return set(self._gens)
        horizon, stale = now - keep, now - self._longest
        return {
            key
            for key, gens in self._gens.items()
            if not (gens[-1].removed is not None and gens[-1].removed < horizon) and gens[-1].arrival >= stale
        }

    def carried(self, keys: set[Key], ties: list[tuple[Key, ...]]) -> set[Key]:
        """Of a chunk's keys, those this correlator holds or may have
        dropped, and every key a line ties to one of them, transitively:
        the keys whose lines it must apply itself. (A store that held
        records before it began would make every key one of them.)"""
        if self._before is not None:
            return set(keys)
        gens_of, dropped = self._gens, self.dropped
        found = {key for key in keys if key in gens_of or key in dropped}
        neighbours: dict[Key, set[Key]] = {}
        for tie in ties:
            for key in tie:
                neighbours.setdefault(key, set()).update(tie)
        todo = [key for key in found if key in neighbours]
        while todo:
            for other in neighbours[todo.pop()]:
                if other not in found:
                    found.add(other)
                    todo.append(other)
        return found

    def take_over(self, records: list[TrackingRecord], now: datetime | None, gone: set[Key]) -> None:
        """Hold ``records`` (in flight at the end of a chunk another process
        correlated) as if this correlator had made them; remember the other
        keys of ``gone`` as dropped (their records are written)."""
        if now is not None and (self._now is None or now > self._now):
            self._now = now
            self._fresh_until = now + _FRESH_STEP
            self._fresh = self._fresh_until - self._shortest
        by_key: dict[Key, list[TrackingRecord]] = {}
        for r in records:
            by_key.setdefault((r.host, r.queue_id), []).append(r)
        for key in gone:
            if key not in by_key:
                self.dropped.add(key)
        for key, gens in by_key.items():
            gens.sort(key=lambda g: g.arrival)
            self._gens[key] = gens
            self._made[key] = gens[0].arrival
            for r in gens:
                self._dirty[r.rid] = r
                if r.removed is not None:
                    self._left.append((r.removed, key))
        self.created += len(records)

    @property
    def pending(self) -> int:
        """Records changed since the last flush."""
        return len(self._dirty)

    @property
    def held(self) -> int:
        """Keys whose records are in memory."""
        return len(self._gens)


def _canonical(rec: TrackingRecord) -> None:
    """One order for what a record lists, whatever order the lines came in.
    (Most lists hold one item: sorting it would still make its key.)"""
    if len(rec.recipients) > 1:
        rec.recipients.sort(key=lambda r: (r.original or r.final, r.final))
    for r in rec.recipients:
        if len(r.attempts) > 1:
            r.attempts.sort(key=lambda a: (a.at, a.outcome, a.dsn or "", a.reply or ""))
    if len(rec.parents) > 1:
        rec.parents.sort(key=lambda link: (link.kind, link.host, link.queue_id))
    if len(rec.children) > 1:
        rec.children.sort(key=lambda link: (link.kind, link.host, link.queue_id))


def _qualify(address: str, original: str | None) -> str:
    """Exim and Sendmail name a local delivery by its local part alone
    (``=> carol <team@example.org>``, ``to=bob,carol``): give it the domain of
    the address it came from."""
    if "@" in address or not original or "@" not in original:
        return address
    local, _, domain = original.rpartition("@")
    return original if local == address else f"{address}@{domain}"


#: The kinds that concern a queued message, and what each does to its record;
#: every other kind (connections, service notices, foreign lines) is not the
#: correlator's business.
_HANDLERS = {
    Kind.CLIENT: Correlator._on_client,
    Kind.PICKUP: Correlator._on_pickup,
    Kind.MESSAGE_ID: Correlator._on_message_id,
    Kind.ENQUEUE: Correlator._on_enqueue,
    Kind.DELIVERY: Correlator._on_attempt,
    Kind.DEFERRAL: Correlator._on_attempt,
    Kind.BOUNCE: Correlator._on_bounce,
    Kind.EXPANSION: Correlator._on_expansion,
    Kind.REQUEUE: Correlator._on_requeue,
    Kind.REMOVED: Correlator._on_removed,
    Kind.EXPIRED: Correlator._on_expired,
    Kind.REJECT: Correlator._on_reject,
}
