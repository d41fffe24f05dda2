"""The daemon's side of ``Type=notify``: READY once it runs, STATUS and WATCHDOG while healthy, STOPPING.

WATCHDOG=1 is sent only while every thread shows a fresh heartbeat: a wedged worker or a hung share stops
the pings and systemd restarts the service (``WatchdogSec=``), instead of a unit that looks active and does
nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import structlog

from diarist.daemon.notify import Notifier

log = structlog.get_logger("diarist")

#: STATUS= refreshes at least this often, watchdog or not
STATUS_SECONDS = 5.0


class Supervised(Protocol):
    def stale(self) -> list[str]: ...

    def status_line(self) -> str: ...


class Supervisor:
    def __init__(self, daemon: Supervised, notifier: Notifier):
        self._daemon = daemon
        self._notifier = notifier
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_stale: list[str] = []
        self._stopping: str | None = None

    @property
    def interval(self) -> float:
        # systemd asks for pings at least every WATCHDOG_USEC; half of it leaves room for a late one
        watchdog = self._notifier.watchdog_seconds
        return min(STATUS_SECONDS, watchdog / 2) if watchdog else STATUS_SECONDS

    def ready(self) -> None:
        self._notifier.send(ready=1, status=self._daemon.status_line())
        if self._notifier.enabled:
            self._thread = threading.Thread(target=self._loop, name="diarist-notify", daemon=True)
            self._thread.start()

    def beat(self) -> bool:
        """One STATUS (and WATCHDOG when healthy) message; True when the watchdog was pinged."""
        if self._stopping is not None:
            # draining: the threads wind down one by one and TimeoutStopSec= bounds the wait, not the watchdog
            fields: dict[str, str | int] = {"status": f"stopping: {self._stopping}"}
            healthy = self._notifier.watchdog_seconds is not None
            if healthy:
                fields["watchdog"] = 1
            self._notifier.send(**fields)
            return healthy
        stale = self._daemon.stale()
        if stale != self._last_stale:
            (log.error if stale else log.info)("health", stale=stale)
            self._last_stale = stale
        fields = {"status": self._daemon.status_line()}
        healthy = not stale and self._notifier.watchdog_seconds is not None
        if healthy:
            fields["watchdog"] = 1
        self._notifier.send(**fields)
        return healthy

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # the ledger may be busy; the next beat tries again
                log.exception("notify_error")

    def reloading(self) -> None:
        """``systemctl reload`` waits for READY=1 after RELOADING=1 (stamped with CLOCK_MONOTONIC)."""
        self._notifier.send(
            reloading=1, monotonic_usec=time.monotonic_ns() // 1000, status="reloading the configuration"
        )

    def reloaded(self) -> None:
        self._notifier.send(ready=1, status=self._daemon.status_line())

    def stopping(self, detail: str) -> None:
        self._stopping = detail
        self._notifier.send(stopping=1, status=f"stopping: {detail}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
