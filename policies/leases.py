"""Leases on claims, for several hosts on one share (pure: readings and a monotonic ``now`` in, decisions out).

Each host rewrites its heartbeat file on the share every few seconds with a new token. Another host never
compares that file's timestamps with its own clock (hosts and the file server disagree about the time);
it notes when it last *saw the token change*, on its own monotonic clock. A host whose token has not changed
for a whole lease is presumed dead and its claimed files go back into the inbox. A host that was never
seen at all (a claims folder without a heartbeat) expires one lease after it was first noticed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Sighting:
    #: the heartbeat's content when last read; None: no heartbeat file (or unreadable)
    token: str | None
    #: our monotonic time when the token was first seen with this value
    since: float


def observe(previous: Mapping[str, Sighting], readings: Mapping[str, str | None], now: float) -> dict[str, Sighting]:
    """Fold new readings into the sightings: a changed token is a sign of life and restarts the lease.

    Hosts that no longer appear in ``readings`` (nothing left on the share) are dropped.
    """
    seen = {}
    for host, token in readings.items():
        old = previous.get(host)
        seen[host] = old if old is not None and old.token == token else Sighting(token, now)
    return seen


def expired(sightings: Mapping[str, Sighting], now: float, lease: float, *, me: str) -> list[str]:
    """Hosts (never ``me``) whose heartbeat has not changed for ``lease`` seconds, sorted."""
    return sorted(host for host, s in sightings.items() if host != me and now - s.since >= lease)
