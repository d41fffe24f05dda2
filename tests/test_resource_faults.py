"""Faults of the machine, not of the file, against a real ``diarist run``: the outbox not writable, the
outbox's disk full, the ledger locked by another process, FFmpeg missing.

Each must be reported in words a person can act on (log and status), cost no data (the input stays in
``.diarist/processing``, nothing half-written is left) and clear by itself: once the fault is fixed the
file is finished without a restart, and inference is never run twice for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from diarist.handlers.results import TEMPORARY_SUFFIX, validate_result

from conftest import WITHOUT_DAC, copy, cut, daemon_config, ledger_rows, log_events, wait_until

RETRY = 2  # [daemon] retry_interval for these tests: recovery within seconds of the fault clearing


def warned(daemon, words: str) -> bool:
    return any(e.get("event") == "transient_error" and words in e.get("error", "") for e in log_events(daemon.text()))


def assert_finished_once(inbox: Path, outbox: Path, db: Path, name: str, attempts: int = 1) -> None:
    stem = Path(name).stem
    doc = validate_result(json.loads((outbox / f"{stem}.json").read_text()))
    assert doc["source"]["name"] == name
    assert (outbox / f"{stem}.rttm").exists()
    assert (inbox / ".diarist" / "done" / name).exists(), "archived only after its result"
    assert not (outbox / f"{stem}.status.json").exists() and not (outbox / f"{stem}.error.json").exists()
    [row] = [r for r in ledger_rows(db) if r["rel_path"] == name]
    assert row["state"] == "done" and row["inference_runs"] == attempts, row
    assert not list(outbox.rglob(f"*{TEMPORARY_SUFFIX}")), "a temporary was left in the outbox"


def status_in(outbox: Path, stem: str, state: str) -> dict | None:
    """The status document of ``stem`` if it says ``state`` (None while it is absent or says another)."""
    try:
        doc = json.loads((outbox / f"{stem}.status.json").read_text())
    except FileNotFoundError:
        return None
    return doc if doc.get("state") == state else None


def claimed_copy(inbox: Path, name: str) -> Path:
    [path] = list((inbox / ".diarist" / "processing").rglob(name))
    return path


@pytest.fixture
def speech(tmp_path, sample) -> Path:
    (tmp_path / "src").mkdir()
    return cut(sample[0], tmp_path / "src" / "speech.wav", 2.0, 8.0)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs setpriv to drop root's override")
def test_outbox_not_writable_waits_then_finishes(tmp_path, speech, daemon_factory):
    config, inbox, outbox, db = daemon_config(tmp_path, daemon={"retry_interval": RETRY})
    outbox.mkdir()
    outbox.chmod(0o555)
    d = daemon_factory(config, prefix=WITHOUT_DAC).start()
    try:
        copy(speech, inbox / "meeting.wav")
        wait_until(lambda: warned(d, "could not write its output"), 120, "a transient error about the outbox")
        [e] = [e for e in log_events(d.text()) if e.get("event") == "transient_error"][:1]
        assert "Permission denied" in e["error"] and "writable" in e["error"] and str(outbox) in e["error"], e
        # nothing is lost meanwhile: the input waits in processing/, its finished result is kept in the ledger
        assert claimed_copy(inbox, "meeting.wav").read_bytes() == speech.read_bytes()
        assert not (inbox / ".diarist" / "failed").exists()
        [row] = ledger_rows(db)
        assert row["state"] == "running" and row["result_key"] and row["inference_runs"] == 1, row
    finally:
        outbox.chmod(0o755)
    wait_until(lambda: (outbox / "meeting.json").exists(), 60, "meeting.json once the outbox is writable")
    assert d.stop() == 0
    assert_finished_once(inbox, outbox, db, "meeting.wav")
    assert any(e.get("event") == "result_recovered" for e in log_events(d.text())), "the stored result was reused"


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


@pytest.mark.slow
def test_outbox_disk_full_waits_then_finishes(tmp_path, speech, daemon_factory):
    config, inbox, outbox, db = daemon_config(tmp_path, daemon={"retry_interval": RETRY})
    if not _mount_tmpfs(outbox, "256k"):
        pytest.skip(
            "cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN); the outbox-not-writable "
            "test covers the same error path"
        )
    try:
        filler = outbox / "filler.bin"
        with open(filler, "wb", buffering=0) as f:  # fill the disk to the last block
            try:
                while f.write(b"\0" * 4096):
                    pass
            except OSError:
                pass
        d = daemon_factory(config).start()
        copy(speech, inbox / "call.wav")
        wait_until(lambda: warned(d, "No space left on device"), 120, "a transient error about the full disk")
        assert claimed_copy(inbox, "call.wav").read_bytes() == speech.read_bytes()
        # No check for temporaries here: a retry (every RETRY s) may be between its mkstemp and its unlink. One
        # a failed write left behind would stay: assert_finished_once looks for it after the daemon stopped.
        assert not (outbox / "call.json").exists() and not (outbox / "call.rttm").exists()
        filler.unlink()  # space again
        wait_until(lambda: (outbox / "call.json").exists(), 60, "call.json once there is space")
        assert d.stop() == 0
        assert_finished_once(inbox, outbox, db, "call.wav")
    finally:
        subprocess.run(["umount", "-l", str(outbox)], check=False)


@pytest.mark.slow
def test_ledger_locked_by_another_process(tmp_path, speech, daemon_factory):
    """Another process holds the ledger's write lock for longer than diarist's 30-second wait: intake says
    so and retries; once the lock is gone the file is processed."""
    config, inbox, outbox, db = daemon_config(tmp_path, daemon={"retry_interval": RETRY})
    d = daemon_factory(config).start()
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
            str(db),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        copy(speech, inbox / "locked.wav")
        wait_until(lambda: "is locked" in d.text(), 90, "the daemon saying the ledger is locked")
        locked = [e for e in log_events(d.text()) if "is locked" in e.get("error", "")]
        assert str(db) in locked[0]["error"] and "another process holds it" in locked[0]["error"], locked[0]
        assert (inbox / "locked.wav").exists() or claimed_copy(inbox, "locked.wav").exists()
    finally:
        holder.communicate("", timeout=30)  # releases the lock
    wait_until(lambda: (outbox / "locked.json").exists(), 120, "locked.json after the lock is released")
    assert d.stop() == 0
    assert_finished_once(inbox, outbox, db, "locked.wav")
    assert not [e for e in log_events(d.text()) if e.get("level") == "error"], "no crash, only warnings"


@pytest.mark.slow
def test_ffmpeg_missing_then_installed(tmp_path, speech, daemon_factory):
    """PATH holds a folder without FFmpeg; the file waits saying what to install; FFmpeg appears in that
    folder and the file is finished without a restart."""
    tools = tmp_path / "bin"
    tools.mkdir()
    config, inbox, outbox, db = daemon_config(tmp_path, daemon={"retry_interval": RETRY})
    d = daemon_factory(config, env={"PATH": str(tools)}).start()
    copy(speech, inbox / "interview.wav")
    wait_until(lambda: warned(d, "is not installed"), 120, "a transient error naming FFmpeg")
    [e] = [e for e in log_events(d.text()) if e.get("event") == "transient_error"][:1]
    assert "apt-get install ffmpeg" in e["error"], e
    # the status document is rewritten just after that log line: wait for it to say so
    status = wait_until(lambda: status_in(outbox, "interview", "waiting"), 30, "interview.status.json waiting")
    assert "not installed" in status["note"], status
    assert claimed_copy(inbox, "interview.wav").read_bytes() == speech.read_bytes()
    for tool in ("ffmpeg", "ffprobe"):
        (tools / tool).symlink_to(shutil.which(tool))
    wait_until(lambda: (outbox / "interview.json").exists(), 60, "interview.json once FFmpeg is there")
    assert d.stop() == 0
    # every attempt without FFmpeg counts as a run that stopped before decoding, and was logged as a transient
    # error; it is retried every RETRY seconds until the tools appear, so how many there were is up to timing
    events = log_events(d.text())
    waits = [e for e in events if e.get("event") == "transient_error" and e.get("file") == "interview.wav"]
    assert waits and all("is not installed" in e["error"] for e in waits), waits
    assert_finished_once(inbox, outbox, db, "interview.wav", attempts=1 + len(waits))
