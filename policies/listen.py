"""Where the HTTP API listens (``[api] listen``) and whether that reaches beyond this machine.

``"127.0.0.1:8650"``, ``"[::1]:8650"``, ``"0.0.0.0:8650"`` or ``"unix:/run/diarist/api.sock"``. Port 0 asks
the system for a free port (the daemon logs the one it got). A unix socket is local: its file permissions
decide who may connect.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


class ListenError(ValueError):
    """A listen address diarist cannot use; the message says what to write instead."""


@dataclass(frozen=True)
class Listen:
    host: str | None = None
    port: int | None = None
    unix: str | None = None

    @property
    def loopback(self) -> bool:
        """Only this machine can connect (so the API may run without tokens)."""
        if self.unix is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False  # a host name: whatever it resolves to later, assume the worst

    def url(self, port: int | None = None) -> str:
        if self.unix is not None:
            return f"unix:{self.unix}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}"


def parse_listen(text: str) -> Listen:
    text = text.strip()
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path.startswith("/"):
            raise ListenError(f"a unix socket needs an absolute path, e.g. unix:/run/diarist/api.sock, got {text!r}")
        return Listen(unix=path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ListenError(f"expected HOST:PORT (e.g. 127.0.0.1:8650) or unix:/PATH, got {text!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ListenError(f"an IPv6 address goes in brackets, e.g. [::1]:8650, got {text!r}")
        host = host[1:-1]
    elif ":" in host:
        raise ListenError(f"an IPv6 address goes in brackets, e.g. [::1]:8650, got {text!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenError(f"the port must be a number from 0 to 65535, got {port_text!r}")
    return Listen(host=host, port=int(port_text))
