"""systemd notify protocol: READY, STATUS, WATCHDOG only while healthy, STOPPING; draining on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from diarist.daemon.notify import Notifier
from diarist.daemon.supervisor import Supervisor
from diarist.handlers.intake import sha256_of

from conftest import copy, wait_until


class Listener:
    """A datagram socket standing in for systemd: collects every notification sent to it."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def having(self, key: str) -> list[dict[str, str]]:
        return [m for m in list(self.messages) if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener():
    made = Listener(f"@diarist-test-{uuid.uuid4().hex}")
    yield made
    made.close()


class FakeDaemon:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def stale(self) -> list[str]:
        return list(self.problems)

    def status_line(self) -> str:
        return "0 waiting" + ("; STALLED: " + ", ".join(self.problems) if self.problems else "")


class TestNotifier:
    def test_without_notify_socket_nothing_is_sent(self):
        """Not under systemd: every call is a quiet no-op."""
        n = Notifier.from_env({})
        assert not n.enabled and n.send(ready=1) is False and n.watchdog_seconds is None

    def test_path_socket(self, tmp_path):
        """A socket given by path receives KEY=value lines, STATUS kept to one line."""
        address = str(tmp_path / "n.sock")
        got = Listener(address)
        try:
            assert Notifier(address).send(ready=1, status="a\nb")
            wait_until(lambda: got.messages, 5, "a datagram")
            assert got.messages == [{"READY": "1", "STATUS": "a b"}]
        finally:
            got.close()

    def test_watchdog_usec_for_another_pid_is_ignored(self):
        """WATCHDOG_PID names who must ping; a child that inherited the variables must not."""
        env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        assert Notifier.from_env(env).watchdog_seconds is None
        env["WATCHDOG_PID"] = str(os.getpid())
        assert Notifier.from_env(env).watchdog_seconds == 2.0


class TestSupervisor:
    def test_pings_only_while_healthy(self, listener):
        """A stale thread stops the WATCHDOG pings (systemd then restarts us); STATUS says why."""
        daemon = FakeDaemon()
        sup = Supervisor(daemon, Notifier(listener.address, watchdog_usec=2_000_000))
        assert sup.interval == 1.0
        assert sup.beat() is True
        daemon.problems = ["worker"]
        assert sup.beat() is False
        wait_until(lambda: len(listener.messages) == 2, 5, "two datagrams")
        assert listener.messages[0] == {"STATUS": "0 waiting", "WATCHDOG": "1"}
        assert listener.messages[1] == {"STATUS": "0 waiting; STALLED: worker"}

    def test_stopping_keeps_pinging_while_draining(self, listener):
        """After STOPPING=1 the drain is bounded by TimeoutStopSec, not cut short by the watchdog."""
        daemon = FakeDaemon()
        daemon.problems = ["intake"]
        sup = Supervisor(daemon, Notifier(listener.address, watchdog_usec=2_000_000))
        sup.stopping("finishing")
        assert sup.beat() is True
        wait_until(lambda: len(listener.messages) == 2, 5, "two datagrams")
        assert listener.messages[0] == {"STOPPING": "1", "STATUS": "stopping: finishing"}


def write_config(tmp_path: Path, stop_timeout: float) -> tuple[Path, Path, Path, Path]:
    inbox, outbox, state = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"
    config = tmp_path / f"diarist-{stop_timeout:g}.toml"
    config.write_text(
        f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "h"\nlog_format = "json"\nstop_timeout = {stop_timeout}\n'
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\nstability_seconds = 0.5\n'
    )
    inbox.mkdir(exist_ok=True)
    return config, inbox, outbox, state / "ledger.db"


def running(outbox: Path, name: str) -> bool:
    status = outbox / f"{name}.status.json"
    try:
        doc = json.loads(status.read_text())
    except (OSError, ValueError):
        return False
    return doc["state"] == "running"


@pytest.mark.slow
class TestNotifyEndToEnd:
    def test_ready_status_watchdog_then_sigterm_releases_or_finishes(self, tmp_path, sample, listener, daemon_factory):
        """Under a fake systemd: READY, STATUS, WATCHDOG pings; SIGTERM mid-file gives it back (stop_timeout 0)
        or finishes it (default), exit 0 both times, nothing lost."""
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
        config, inbox, outbox, db = write_config(tmp_path, stop_timeout=0)
        # The SIGTERM must land mid-inference, whatever the hardware's speed: the worker is held in its first
        # embeddings progress call (DIARIST_HOLD_AT) until the daemon begins to stop, then checks the deadline.
        hold = tmp_path / "hold-inference"
        hold.touch()
        daemon = daemon_factory(config, {**env, "DIARIST_HOLD_AT": f"inference:{hold}"}).start()
        wait_until(lambda: listener.having("READY"), 10, "READY=1")
        wait_until(lambda: len(listener.having("WATCHDOG")) >= 3, 20, "three WATCHDOG=1 pings")
        assert listener.having("READY")[0]["STATUS"].startswith("0 waiting; 0 running locally")

        copy(sample[0], inbox / "talk.wav")
        wait_until((tmp_path / "hold-inference.held").exists, 120, "talk.wav held mid-inference")
        assert running(outbox, "talk")
        wait_until(lambda: any("1 running locally" in m["STATUS"] for m in listener.having("STATUS")), 20, "STATUS")
        assert daemon.stop(signal.SIGTERM) == 0
        # sent before the daemon exited, but the listener's thread may not have taken it off the socket yet
        wait_until(lambda: listener.having("STOPPING"), 10, "STOPPING=1")
        # given back: the input is in the inbox again, untouched, and no result was written
        assert sha256_of(inbox / "talk.wav") == sha256_of(sample[0])
        assert not (outbox / "talk.json").exists()
        assert not list((inbox / ".diarist/processing").rglob("*.wav"))
        conn = sqlite3.connect(db)
        assert [s for (s,) in conn.execute("select state from files")] == ["released"]
        conn.close()
        assert '"event": "released"' in daemon.text()

        # second run, default stop_timeout: the file is taken again (held mid-inference as before, so that the
        # SIGTERM surely comes while it runs), SIGTERM waits for it to finish
        (tmp_path / "hold-inference.held").unlink()
        config, *_ = write_config(tmp_path, stop_timeout=240)
        again = daemon_factory(config, {**env, "DIARIST_HOLD_AT": f"inference:{hold}"}).start()
        wait_until((tmp_path / "hold-inference.held").exists, 120, "talk.wav held mid-inference again")
        assert running(outbox, "talk")
        stopping_at = len(listener.messages)
        assert again.stop(signal.SIGTERM) == 0
        wait_until(lambda: any("STOPPING" in m for m in listener.messages[stopping_at:]), 10, "STOPPING=1 again")
        result = json.loads((outbox / "talk.json").read_text())
        assert result["source"]["sha256"] == sha256_of(sample[0]) and len(result["speakers"]) == 2
        assert (inbox / ".diarist/done/talk.wav").exists() and not (inbox / "talk.wav").exists()
