"""A recipient's RFC 3886 outcome, as a pure function of its delivery attempts.

Deriving the outcome from the attempts, rather than updating it line by
line, is what makes applying an event idempotent and the result
independent of the order in which lines arrive: the same set of attempts
always gives the same action, status and dates.

The mapping is DESIGN.md's table: delivered to a mailbox -> delivered;
relayed over SMTP -> relayed (``transferred`` is decided at read time, when
the next hop's record is known to be held); deferred and still queued ->
delayed; bounced, refused by the next hop or expired in the queue -> failed;
no attempt yet -> delayed 4.0.0.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from .records import Attempt, Recipient

#: Outcomes that end a recipient's story; the last of them wins.
FINAL = frozenset({"sent", "bounced", "expired", "failed"})

#: Delivery agents and transports that put mail into a mailbox (or a
#: program) on this host, whatever the relay field says: Postfix local,
#: virtual, lmtp, pipe, discard; Sendmail local and prog; common Exim names.
LOCAL_TRANSPORTS = frozenset(
    {
        "local",
        "virtual",
        "lmtp",
        "pipe",
        "discard",
        "prog",
        "procmail",
        "cyrus",
        "cyrusv2",
        "local_delivery",
        "address_pipe",
        "address_file",
        "address_directory",
        "address_reply",
        "appendfile",
        "maildir_home",
        "mail_spool",
        "dovecot_lmtp",
        "dovecot",
    }
)


def delivered_locally(transport: str | None, remote_mta: str | None) -> bool:
    """Into a mailbox here (delivered), rather than on to another MTA (relayed)."""
    if transport is not None and transport.lower() in LOCAL_TRANSPORTS:
        return True
    return remote_mta is None


def settle(r: Recipient, arrival: datetime, lifetime: timedelta) -> None:
    """Set ``r``'s action, status, diagnostic and dates from its attempts."""
    attempts = r.attempts
    if len(attempts) > 1:  # most recipients have one attempt, whose sort would still make its key
        attempts = sorted(attempts, key=lambda a: (a.at, a.outcome, a.dsn or ""))
    if not attempts:
        r.action, r.status, r.diagnostic, r.remote_mta = "delayed", "4.0.0", None, None
        r.last_attempt = None
        r.will_retry_until = arrival + lifetime
        return
    final = [a for a in attempts if a.outcome in FINAL]
    last: Attempt = final[-1] if final else attempts[-1]
    r.last_attempt = attempts[-1].at
    r.diagnostic = last.reply
    # The last MTA that was talked to, even when the final word was the
    # queue's own (an expiry names no host).
    r.remote_mta = next((a.remote_mta for a in reversed(attempts) if a.remote_mta), None)
    if last.outcome == "sent":
        r.action = "delivered" if delivered_locally(r.transport, last.remote_mta) else "relayed"
        r.status = last.dsn or "2.0.0"
        r.will_retry_until = None
    elif last.outcome in FINAL:
        r.action = "failed"
        # An expiry keeps the last refusal's status (4.x.x when the next hop
        # only ever deferred), as RFC 3464 allows for "failed".
        r.status = last.dsn or _last_dsn(attempts) or "5.0.0"
        r.will_retry_until = None
    else:
        r.action = "delayed"
        r.status = last.dsn or "4.0.0"
        r.will_retry_until = arrival + lifetime


def _last_dsn(attempts: list[Attempt]) -> str | None:
    for a in reversed(attempts):
        if a.dsn:
            return a.dsn
    return None
