"""Reloading a running ``diarist run`` (SIGHUP, what ``systemctl reload`` sends): a new inbox is served while
the file in hand carries on, a broken configuration is refused and the running one stays, and systemd hears
RELOADING=1 then READY=1."""

from __future__ import annotations

import json
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_notify import Listener

from conftest import DaemonProcess, cut, log_events, wait_until

pytestmark = pytest.mark.slow


def config_text(state: Path, inboxes: list[tuple[Path, Path]]) -> str:
    text = f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "reload-host"\nlog_format = "json"\n'
    for inbox, outbox in inboxes:
        text += f'\n[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\nstability_seconds = 0.5\n'
    return text


def events(daemon: DaemonProcess, name: str) -> list[dict]:
    return [e for e in log_events(daemon.text()) if e.get("event") == name]


def test_sighup_adds_an_inbox_mid_file_and_a_broken_config_keeps_the_old_one(
    tmp_path: Path, sample: tuple[Path, Path], daemon_factory: Any
) -> None:
    state = tmp_path / "state"
    first = (tmp_path / "in1", tmp_path / "out1")
    second = (tmp_path / "in2", tmp_path / "out2")
    config = tmp_path / "diarist.toml"
    config.write_text(config_text(state, [first]))
    hold = tmp_path / "hold-inference"
    hold.touch()
    listener = Listener(f"@diarist-reload-{uuid.uuid4().hex}")
    clip = cut(sample[0], tmp_path / "clip.wav", 3, 6)
    env = {"DIARIST_HOLD_AT": f"inference:{hold}", "NOTIFY_SOCKET": listener.address}
    daemon = daemon_factory(config, env)
    try:
        daemon.start()
        (first[0] / "long.wav").write_bytes(sample[0].read_bytes())
        wait_until((tmp_path / "hold-inference.held").exists, 120, "long.wav held mid-inference")

        # 1. a new inbox, while long.wav is in hand
        config.write_text(config_text(state, [first, second]))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: events(daemon, "reloaded"), 30, "the reload")
        (reloaded,) = events(daemon, "reloaded")
        assert reloaded["added"] == [str(second[0])] and reloaded["removed"] == [] and not reloaded["restart_needed"]
        (second[0] / "new.wav").write_bytes(clip.read_bytes())
        wait_until(lambda: (second[1] / "new.status.json").exists(), 30, "new.wav taken from the new inbox")
        reloading = [m for m in listener.messages if "RELOADING" in m]
        assert reloading and int(reloading[0]["MONOTONIC_USEC"]) > 0
        after = listener.messages[listener.messages.index(reloading[0]) :]
        assert any("READY" in m for m in after), "READY=1 after RELOADING=1"

        # 2. a broken configuration: refused, logged, the running one stays (both inboxes served)
        config.write_text(config_text(state, [first, second]) + "\n[[inbox]]\npath = \n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: events(daemon, "reload_refused"), 30, "the refusal")
        (refused,) = events(daemon, "reload_refused")
        assert "not valid TOML" in refused["error"] and refused["level"] == "error"
        (second[0] / "newer.wav").write_bytes(clip.read_bytes()[:-4000])
        wait_until(lambda: (second[1] / "newer.status.json").exists(), 30, "newer.wav still taken")

        # 3. a section read at start changes: applied where it can be, the rest said
        config.write_text(
            config_text(state, [first, second]).replace(
                'log_format = "json"', 'log_format = "json"\nrescan_interval = 30'
            )
        )
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: events(daemon, "reload_partial"), 30, "the partial reload")
        assert events(daemon, "reload_partial")[0]["sections"] == ["daemon"]

        hold.unlink()  # long.wav goes on: it was never let go
        for outbox, name in ((first[1], "long"), (second[1], "new"), (second[1], "newer")):
            wait_until(lambda o=outbox, n=name: (o / f"{n}.json").exists(), 300, f"{name}.json")

        # 4. the second inbox removed: what lands there now is not taken
        config.write_text(config_text(state, [first]))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(events(daemon, "reloaded")) >= 3, 30, "the removal")
        assert events(daemon, "reloaded")[-1]["removed"] == [str(second[0])]
        (second[0] / "late.wav").write_bytes(clip.read_bytes())
        (first[0] / "still.wav").write_bytes(clip.read_bytes()[:-8000])  # not a copy: no reuse
        wait_until(lambda: (first[1] / "still.json").exists(), 300, "still.json from the inbox that stayed")
        assert not (second[1] / "late.status.json").exists() and (second[0] / "late.wav").exists()
        assert daemon.stop() == 0
    finally:
        listener.close()
    assert not events(daemon, "released")
    conn = sqlite3.connect(state / "ledger.db")
    runs = dict(conn.execute("select rel_path, inference_runs from files").fetchall())
    conn.close()
    assert runs == {"long.wav": 1, "new.wav": 1, "newer.wav": 1, "still.wav": 1}, runs
    assert len(json.loads((first[1] / "long.json").read_text())["speakers"]) == 2
