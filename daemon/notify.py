"""sd_notify in plain Python: tell systemd we are ready, how we are doing, that we are alive, that we stop.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named in ``$NOTIFY_SOCKET``
(``@name`` is the abstract namespace). Without that variable (not under systemd, or ``Type=simple``) every
call is a no-op, so the daemon calls it unconditionally.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self._address = address
        self.watchdog_seconds = watchdog_usec / 1e6 if watchdog_usec else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (honouring ``WATCHDOG_PID`` when set)."""
        env = os.environ if env is None else env
        usec = None
        raw_pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (not raw_pid or raw_pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"])
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``ready=1`` becomes ``READY=1``); False when there is nobody to tell.

        Failures are swallowed: a lost notification must never take the daemon down (systemd's watchdog
        notices if they keep failing).
        """
        if self._address is None:
            return False
        # STATUS is one line: systemctl shows it under the unit
        lines = [f"{key.upper()}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
        address = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(lines).encode("utf-8"), address)
        except OSError:
            return False
        return True
