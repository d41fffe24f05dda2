"""Several hosts on one share: heartbeats, expiry and taking a dead host's claims back (real folders)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from diarist.daemon.config import InboxSettings
from diarist.daemon.leases import ShareLeases, hosts_dir
from diarist.handlers.intake import processing_dir


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def leases(inbox: InboxSettings, host: str, clock: Clock, lease: float = 60.0) -> ShareLeases:
    return ShareLeases([inbox], host, lease, clock=clock, wall=lambda: 1.7e9)


def claimed(inbox: Path, host: str, rel: str, content: bytes = b"audio") -> Path:
    path = processing_dir(inbox, host) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def box(tmp_path: Path) -> InboxSettings:
    (tmp_path / "in").mkdir(exist_ok=True)
    return InboxSettings(path=tmp_path / "in", outbox=tmp_path / "out")


class TestRenew:
    def test_writes_a_new_token_each_time(self, tmp_path):
        """The heartbeat names the host and changes with every renewal."""
        inbox = box(tmp_path)
        a = leases(inbox, "a", Clock())
        a.renew()
        first = (hosts_dir(inbox.path) / "a.json").read_text()
        a.renew()
        second = json.loads((hosts_dir(inbox.path) / "a.json").read_text())
        assert second["host"] == "a" and second["seq"] == 2 and first != json.dumps(second)


class TestCheck:
    def test_a_renewing_host_keeps_its_claims(self, tmp_path):
        """However long it runs, a host that renews is never robbed."""
        inbox, clock = box(tmp_path), Clock()
        a, b = leases(inbox, "a", clock), leases(inbox, "b", clock)
        claimed(inbox.path, "a", "x.wav")
        for _ in range(20):
            a.renew()
            assert b.check() == []
            clock.now += 30
        assert (processing_dir(inbox.path, "a") / "x.wav").exists()

    def test_a_silent_host_loses_its_claims_after_one_lease(self, tmp_path):
        """No renewal for a whole lease: its files (and sidecars) are back in the inbox."""
        inbox, clock = box(tmp_path), Clock()
        a, b = leases(inbox, "a", clock), leases(inbox, "b", clock)
        claimed(inbox.path, "a", "sub/x.wav", b"one")
        claimed(inbox.path, "a", "sub/x.wav.diarist.json", b"{}")
        a.renew()
        assert b.check() == []
        clock.now += 59
        assert b.check() == []
        clock.now += 1
        taken = b.check()
        assert [(t.host, t.path) for t in taken] == [("a", inbox.path / "sub/x.wav")]
        assert (inbox.path / "sub/x.wav").read_bytes() == b"one"
        assert (inbox.path / "sub/x.wav.diarist.json").read_bytes() == b"{}"
        assert list(processing_dir(inbox.path, "a").rglob("*.*")) == []

    def test_clocks_do_not_matter(self, tmp_path):
        """A heartbeat stamped far in the past but still changing keeps the host alive."""
        inbox, clock = box(tmp_path), Clock()
        a = ShareLeases([inbox], "a", 60.0, clock=clock, wall=lambda: 0.0)
        b = leases(inbox, "b", clock)
        claimed(inbox.path, "a", "x.wav")
        for _ in range(5):
            a.renew()
            b.check()
            clock.now += 50
        assert (processing_dir(inbox.path, "a") / "x.wav").exists()

    def test_a_returned_file_never_replaces_a_new_one(self, tmp_path):
        """The user dropped a new x.wav meanwhile: the taken-back one becomes x (2).wav."""
        inbox, clock = box(tmp_path), Clock()
        b = leases(inbox, "b", clock)
        claimed(inbox.path, "dead", "x.wav", b"old")
        (inbox.path / "x.wav").write_bytes(b"new")
        b.check()
        clock.now += 61
        assert [t.path.name for t in b.check()] == ["x (2).wav"]
        assert (inbox.path / "x.wav").read_bytes() == b"new"

    def test_two_hosts_taking_back_at_once_move_each_file_once(self, tmp_path):
        """Of several live hosts reclaiming one dead host concurrently, each file lands in the inbox once."""
        inbox, clock = box(tmp_path), Clock()
        for i in range(40):
            claimed(inbox.path, "dead", f"f{i:02}.wav", str(i).encode())
        takers = [leases(inbox, name, clock) for name in ("b", "c", "d")]
        for t in takers:
            t.check()
        clock.now += 61
        results: list[list] = []
        threads = [threading.Thread(target=lambda t=t: results.append(t.check())) for t in takers]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        back = sorted(p.name for p in inbox.path.iterdir() if p.is_file())
        assert back == [f"f{i:02}.wav" for i in range(40)]
        assert sum(len(r) for r in results) == 40

    def test_a_second_daemon_with_our_host_id_is_reported(self, tmp_path):
        """Two daemons with one host id would resume each other's claims: logged as an error."""
        from structlog.testing import capture_logs

        inbox, clock = box(tmp_path), Clock()
        one, two = leases(inbox, "same", clock), leases(inbox, "same", clock)
        with capture_logs() as logs:
            one.renew()
            two.renew()
            one.renew()
            one.renew()
        assert any(e["event"] == "host_id_in_use" for e in logs)
