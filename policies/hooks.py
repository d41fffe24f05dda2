"""Hooks: which hooks an event goes to, when a failed delivery is tried again, and how a webhook is signed
(pure: no I/O; the ledger keeps the deliveries, handlers/hook_delivery.py makes them)."""

from __future__ import annotations

import hashlib
import hmac

HOOK_EVENTS = ("done", "failed", "deferred", "waiting")
#: seconds before the second attempt; doubled each time up to ``BACKOFF_CAP``
BACKOFF_BASE = 5.0
BACKOFF_CAP = 600.0
#: the webhook headers (a receiver recomputes the signature over "<timestamp>.<body>")
SIGNATURE_HEADER = "X-Diarist-Signature"
TIMESTAMP_HEADER = "X-Diarist-Timestamp"
KEY_HEADER = "Idempotency-Key"


def wants(
    on: tuple[str, ...], inbox_filter: str | None, user_filter: str | None, *, event: str, inbox: str, user: str | None
) -> bool:
    """Whether a hook with these filters takes ``event`` for a file of ``inbox`` and ``user``."""
    return event in on and inbox_filter in (None, inbox) and user_filter in (None, user)


def retry_at(attempts: int, now: float, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """When to try again after ``attempts`` failed attempts: 5 s, 10 s, 20 s ... at most 10 minutes apart."""
    return now + min(base * 2 ** max(attempts - 1, 0), cap)


def idempotency_key(sha256: str | None, event: str, delivery_id: int) -> str:
    """The same for every attempt of one delivery (receivers drop repeats), different for each event of each
    file (a file dropped again is a new delivery)."""
    return f"{sha256 or 'nosha'}:{event}:{delivery_id}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, "<timestamp>.<body>"): the timestamp is signed too, so an old
    delivery cannot be replayed with a new one."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()
