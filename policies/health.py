"""Is the daemon healthy enough to ping the systemd watchdog, and the one-line status it reports (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal


def stale_components(beats: Mapping[str, float | None], now: float, limits: Mapping[str, float]) -> list[str]:
    """Components in ``limits`` whose last heartbeat is missing or older than their limit, sorted by name.

    A stale component means a wedged thread: the daemon stops pinging and systemd restarts it, which is
    better than a service that looks alive and does nothing.
    """
    stale = []
    for name, limit in sorted(limits.items()):
        beat = beats.get(name)
        if beat is None or now - beat > limit:
            stale.append(name)
    return stale


def status_line(
    *, waiting: int, running: int, cloud_files: int, cloud_jobs: int, budget_left: Decimal | None, stale: list[str]
) -> str:
    """What ``systemctl status`` shows under the unit: counts first, problems last."""
    parts = [f"{waiting} waiting", f"{running} running locally", f"{cloud_jobs} cloud jobs ({cloud_files} files)"]
    if budget_left is not None:
        parts.append(f"budget left ${budget_left:.2f}")
    if stale:
        parts.append("STALLED: " + ", ".join(stale))
    return "; ".join(parts)


def should_release(*, elapsed: float, fraction: float, time_left: float) -> bool:
    """While stopping: give the file in hand back to the inbox rather than overrun the stop timeout?

    The projection is linear in the progress reported so far; with no progress yet only the deadline counts.
    """
    if time_left <= 0:
        return True
    if fraction <= 0.0:
        return False
    remaining = elapsed * (1.0 - fraction) / fraction
    return remaining > time_left
