"""`diarist run` end to end: a real daemon subprocess on real folders with real audio and a real ledger."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from diarist.handlers.intake import sha256_of
from diarist.handlers.results import parse_rttm, validate_result

from conftest import (
    Poller,
    copy,
    daemon_config,
    done_counts,
    finished,
    ledger_rows,
    log_events,
    to_format,
    wait_until,
)


class ArchiveOrderWatch(Poller):
    """Watches, from another thread, that no archived input ever exists without its result beside it."""

    interval = 0.02

    def __init__(self, pairs: list[tuple[Path, Path]]):
        super().__init__()
        self.pairs, self.violations = pairs, []

    def poll(self) -> None:
        for archived, result in self.pairs:
            if archived.exists() and not result.exists():
                self.violations.append(str(archived))


def intake_heartbeats(db: Path, pid: int, seen: set[float]) -> set[float]:
    """Add the intake heartbeat of the daemon ``pid`` now in the ledger to ``seen``, and return it."""
    conn = sqlite3.connect(db)
    try:
        seen.update(at for (at,) in conn.execute("select heartbeat_at from hosts where pid = ?", (pid,)))
    finally:
        conn.close()
    return seen


def slow_write(src: Path, dst: Path, chunks: int = 20, pause: float = 0.3) -> None:
    """Write a file in chunks over several seconds, like a slow copy onto a share: 6 s in all, longer than the
    inbox's stability window (4 s in the test using it), in steps far shorter than it, so that only a tracker
    re-armed by every change waits for the end (a stall of the writer up to 3.7 s is still no early claim)."""
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with open(dst, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)


@pytest.mark.slow
class TestDaemonEndToEnd:
    def test_inbox_to_outbox(self, tmp_path, audio_dir, sample, daemon_factory):
        """Many kinds of drops at once: every good file gets RTTM+JSON once, bad ones fail aside, junk is ignored."""
        config, inbox, outbox, db = daemon_config(tmp_path, stability_seconds=4)
        daemon = daemon_factory(config).start()
        done = inbox / ".diarist" / "done"
        watch_pairs = [
            (done / "conv3.wav", outbox / "conv3.json"),
            (done / "team/2026/call.mp3", outbox / "team/2026/call.json"),
        ]
        with ArchiveOrderWatch(watch_pairs) as order:
            copy(audio_dir / "conv3.wav", inbox / "conv3.wav")
            to_format(audio_dir / "conv2.wav", tmp_path / "call.mp3")
            copy(tmp_path / "call.mp3", inbox / "team" / "2026" / "call.mp3")
            (inbox / "broken.wav").write_text("definitely not audio\n" * 100)
            for junk in ("upload.wav.part", ".hidden.wav", "notes.txt", "~$meeting.wav", "x.crdownload"):
                (inbox / junk).write_bytes(b"junk")
            writer = threading.Thread(target=slow_write, args=(audio_dir / "conv2b.wav", inbox / "slow.wav"))
            writer.start()
            writer.join()
            # broken.wav is found unreadable by the one worker, in queue order: after the inference of conv3 and
            # call.mp3, which can take minutes on a small busy machine. So its wait has the budget of a queue,
            # like the waits for the results below, not that of one file.
            finished(daemon, "broken.wav", event="failed", timeout=400)
            # the daemon keeps serving after a failure, and reuses results for identical content
            copy(audio_dir / "short.wav", inbox / "after.wav")
            copy(audio_dir / "conv2b.wav", inbox / "again" / "same-content.wav")
            # each file's end (result written, status removed, input archived, ledger done), not its JSON
            for name in ("conv3.wav", "team/2026/call.mp3", "slow.wav", "after.wav", "again/same-content.wav"):
                finished(daemon, name, timeout=400)
        assert order.violations == [], "an input was archived before its result was written"

        # results: strict RTTM + valid JSON, sub-folders mirrored, status sidecars gone
        conv3 = validate_result(json.loads((outbox / "conv3.json").read_text()))
        assert len(conv3["speakers"]) >= 2
        uri, segments = parse_rttm((outbox / "team/2026/call.rttm").read_text())
        assert uri == "call" and segments
        assert not list(outbox.rglob("*.status.json"))
        assert (done / "team/2026/call.mp3").exists() and (done / "conv3.wav").exists()

        # the slow file was taken once, complete
        slow = json.loads((outbox / "slow.json").read_text())
        assert slow["source"]["sha256"] == sha256_of(audio_dir / "conv2b.wav")
        rows = ledger_rows(db)
        assert [r["state"] for r in rows if r["rel_path"] == "slow.wav"] == ["done"]

        # identical content is reused, not re-run
        again = json.loads((outbox / "again/same-content.json").read_text())
        assert again["reused"]["from_file"] == "slow.wav"
        # its route says it was reused, not the earlier file's route and reason
        assert again["route"]["decision"] == "reused" and "as slow.wav" in again["route"]["reason"]
        assert again["route"]["original"] == slow["route"]
        assert again["segments"] == slow["segments"]
        assert next(r for r in rows if r["rel_path"] == "again/same-content.wav")["inference_runs"] == 0

        # bad input: moved to failed/ with an explanation in the outbox and beside it
        error = json.loads((outbox / "broken.error.json").read_text())
        assert error["kind"] == "bad-input" and "not a readable audio file" in error["error"] and error["what_to_do"]
        assert (inbox / ".diarist/failed/broken.wav").exists()
        assert (inbox / ".diarist/failed/broken.wav.error.json").exists()

        # junk never touched
        for junk in ("upload.wav.part", ".hidden.wav", "notes.txt", "~$meeting.wav", "x.crdownload"):
            assert (inbox / junk).read_bytes() == b"junk"

        # nothing processed twice
        for r in rows:
            assert r["inference_runs"] <= 1, r
        assert daemon.stop() == 0
        events = log_events(daemon.text())
        assert any(e["event"] == "done" and e.get("file") == "conv3.wav" for e in events)
        assert "hf_" not in daemon.text()

    def test_restart_mid_file_loses_nothing_and_does_nothing_twice(self, tmp_path, sample, audio_dir, daemon_factory):
        """SIGKILL during inference, then restart: the file is finished once, the queued one too."""
        config, inbox, outbox, db = daemon_config(tmp_path)
        daemon = daemon_factory(config).start()
        copy(sample[0], inbox / "first.wav")
        copy(audio_dir / "short.wav", inbox / "second.wav")
        wait_until(
            lambda: (
                (outbox / "first.status.json").exists()
                and json.loads((outbox / "first.status.json").read_text())["state"] == "running"
            ),
            60,
            "first.wav running",
        )
        daemon.stop(signal.SIGKILL)
        assert not (outbox / "first.json").exists()
        assert (inbox / ".diarist/processing/test-host/first.wav").exists()

        restarted = daemon_factory(config).start()
        for name in ("first", "second"):
            wait_until(lambda n=name: (outbox / f"{n}.json").exists(), 300, f"{name}.json after restart")
        assert restarted.stop() == 0
        assert done_counts(db) == {"first.wav": 1, "second.wav": 1}
        assert sorted(r["rel_path"] for r in ledger_rows(db)) == ["first.wav", "second.wav"]
        assert (inbox / ".diarist/done/first.wav").exists() and not any((inbox / ".diarist/processing").rglob("*.wav"))
        assert len(json.loads((outbox / "first.json").read_text())["speakers"]) == 2

    def test_sigterm_exits_cleanly_and_result_survives_restart(self, tmp_path, audio_dir, daemon_factory):
        """SIGTERM exits 0; a restart with on_success = "keep" neither reprocesses nor loses the kept input."""
        config, inbox, outbox, db = daemon_config(tmp_path, on_success="keep")
        daemon = daemon_factory(config).start()
        copy(audio_dir / "short.wav", inbox / "kept.wav")
        finished(daemon, "kept.wav", timeout=300)  # put back after its result is written: wait for its end
        assert (inbox / "kept.wav").exists()
        assert daemon.stop() == 0
        first = (outbox / "kept.json").stat().st_mtime_ns
        again = daemon_factory(config).start()
        # The daemon logs no rescans, but its intake loop records a heartbeat in the ledger every 5 s, in the
        # same loop that rescans (every 3 s) and takes what it finds: by its third heartbeat at least two whole
        # rescans were done, however loaded the machine. The kept file was still not retaken.
        beats: set[float] = set()
        wait_until(lambda: len(intake_heartbeats(db, again.proc.pid, beats)) >= 3, 120, "three intake heartbeats")
        assert again.stop() == 0
        assert not [e for e in log_events(again.text()) if e.get("file") == "kept.wav"], "kept.wav was seen again"
        assert (outbox / "kept.json").stat().st_mtime_ns == first
        assert [r["state"] for r in ledger_rows(db)] == ["done"]


class TestDaemonConfigErrors:
    def test_no_inbox_is_a_config_error(self, tmp_path):
        """`diarist run` with no inbox configured exits 2 and says how to add one."""
        import subprocess
        import sys

        config = tmp_path / "empty.toml"
        config.write_text(f'[daemon]\nledger = "{tmp_path}/l.db"\n')
        proc = subprocess.run(
            [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), "run"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "[[inbox]]" in proc.stderr


def test_demo_command(tmp_path):
    """`diarist demo` prints the sample's RTTM with 2 speakers (the README's demo, as a subprocess)."""
    import subprocess
    import sys

    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg missing: run the README set-up")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diarist.daemon.cli",
            "demo",
            "--inbox",
            str(tmp_path / "in"),
            "--outbox",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "speakers: 2" in proc.stdout and "SPEAKER sample 1" in proc.stdout
