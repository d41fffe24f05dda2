"""Serve the API from the daemon's process: the socket is bound at start (a port in use or a socket path
that cannot be made is a ``ConfigError`` before the daemon says ready), then uvicorn runs on its own
thread and event loop. Port 0 takes a free port; ``address`` says which."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import structlog
import uvicorn

from diarist.handlers.errors import ConfigError
from diarist.policies.listen import Listen

log = structlog.get_logger("diarist")


def bind(listen: Listen) -> socket.socket:
    try:
        if listen.unix is not None:
            path = Path(listen.unix)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_socket():
                path.unlink()  # left by a previous run (a live one would hold the ledger's host row too)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            os.chmod(path, 0o660)  # the service's user and group; nobody else
        else:
            family = socket.AF_INET6 if ":" in (listen.host or "") else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((listen.host or "127.0.0.1", listen.port or 0))
        sock.listen(128)
    except OSError as e:
        raise ConfigError(
            f"the API cannot listen on {listen.url()}: {e.strerror}",
            key="api.listen",
            hint="choose a free port (or another socket path), or stop what holds it",
        ) from e
    return sock


class ApiServer:
    """uvicorn on a thread of its own; ``stop`` lets requests in progress finish (briefly)."""

    def __init__(self, app: object, listen: Listen):
        self.listen = listen
        self.sock = bind(listen)
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            log_config=None,  # structlog owns the log; uvicorn's own access log would print query strings
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="diarist-api", daemon=True)

    @property
    def address(self) -> str:
        if self.listen.unix is not None:
            return self.listen.url()
        return self.listen.url(port=self.sock.getsockname()[1])

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except Exception:
            log.exception("api_error")

    def start(self) -> None:
        self._thread.start()
        log.info("api_listening", address=self.address)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()
        if self.listen.unix is not None:
            Path(self.listen.unix).unlink(missing_ok=True)
