"""Bad and odd inputs against a real ``diarist run``: each ends as a clear result or a clear failure.

Everything that cannot be diarized ends in ``.diarist/failed/`` with an ``.error.json`` beside it and in the
outbox, in words a person can act on; odd but valid audio (a tone, 8 kHz, 48 kHz stereo, two hours of
silence, strange names, hard links) gets a normal result; and the daemon keeps serving throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import wave
from pathlib import Path

import pytest

from diarist.handlers.results import parse_rttm, validate_result

from conftest import (
    WITHOUT_DAC,
    DaemonProcess,
    copy,
    cut,
    daemon_config,
    finished,
    ledger_rows,
    ledger_state,
    log_events,
    wait_until,
)


def ffmpeg(dst: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, str(dst)], check=True)
    return dst


def noise_wav(path: Path, seconds: float) -> Path:
    """A correct 16 kHz 16-bit WAV header with random bytes as its samples."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(os.urandom(int(16000 * 2 * seconds)))
    return path


def error_of(outbox: Path, stem: str) -> dict:
    return json.loads((outbox / f"{stem}.error.json").read_text())


def assert_failed_aside(inbox: Path, outbox: Path, name: str, stem: str, *words: str) -> dict:
    """In failed/ (untouched, with the explanation beside it) and explained in the outbox."""
    error = error_of(outbox, stem)
    assert error["kind"] == "bad-input" and error["what_to_do"], error
    for word in words:
        assert word in error["error"], (word, error)
    failed = inbox / ".diarist" / "failed"
    assert os.path.lexists(failed / name), sorted(p.name for p in failed.iterdir())
    assert (failed / f"{name}.error.json").exists()
    assert not os.path.lexists(inbox / name)
    return error


def keep_growing(path: Path, every: float = 0.2) -> None:
    """Append a byte to ``path`` every ``every`` seconds until it is gone (a copy still under way)."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # no O_CREAT: once removed it stays removed
        except FileNotFoundError:
            return
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
        time.sleep(every)


def discovered(daemon: DaemonProcess, name: str) -> bool:
    return any(e.get("event") == "discovered" and e.get("file") == name for e in log_events(daemon.text()))


def result_of(outbox: Path, stem: str) -> dict:
    doc = validate_result(json.loads((outbox / f"{stem}.json").read_text()))
    parse_rttm((outbox / f"{stem}.rttm").read_text())  # strict: any uri with spaces would break it
    return doc


@pytest.mark.slow
def test_bad_inputs_fail_aside_and_odd_ones_get_results(tmp_path, sample, daemon_factory):
    config, inbox, outbox, db = daemon_config(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    speech = cut(sample[0], src / "speech.wav", 2.0, 8.0)
    header = speech.read_bytes()[:44]
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.wav"
    copy(speech, secret)
    shared = cut(sample[0], outside / "shared.wav", 10.0, 6.0)
    shared_bytes = shared.read_bytes()

    bad = {  # name in the inbox -> words its error must contain
        "empty.wav": ("empty", "0 bytes"),
        "truncated.wav": ("not a readable audio file",),
        "garbage.wav": ("white noise", "not audio"),
        "text.mp3": ("not a readable audio file",),
        "tiny.wav": ("too short",),
        "bad-sidecar.wav": ("sidecar", "invalid"),
        "odd-keys.wav": ("sidecar", "invalid"),
        ("x" * 230) + ".wav": ("white noise",),  # a long name, failed: its error document still fits beside it
    }
    (inbox / "empty.wav").write_bytes(b"")
    (inbox / "truncated.wav").write_bytes(header[:30])
    noise_wav(inbox / "garbage.wav", seconds=5)
    noise_wav(inbox / ("x" * 230 + ".wav"), seconds=3)
    (inbox / "text.mp3").write_text("These are meeting notes, not a recording.\n" * 50)
    ffmpeg(inbox / "tiny.wav", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "0.001")
    copy(speech, inbox / "bad-sidecar.wav")
    (inbox / "bad-sidecar.wav.diarist.json").write_text('{"task": "diarization",')
    copy(speech, inbox / "odd-keys.wav")
    (inbox / "odd-keys.wav.diarist.json").write_text('{"speakers": 2, "colour": "blue"}')

    odd = {  # valid audio, however unusual: a normal result
        "tone.wav": 0,
        "phone.wav": None,
        "studio.wav": None,
        "two-hours-of-silence.flac": 0,
        'we said "hi"\nthen it\'s over .wav': None,
        ("y" * 246) + ".wav": None,
        "hardlink.wav": None,
    }
    ffmpeg(inbox / "tone.wav", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=16000", "-t", "6")
    ffmpeg(inbox / "phone.wav", "-i", str(speech), "-ar", "8000")
    ffmpeg(inbox / "studio.wav", "-i", str(speech), "-ar", "48000", "-ac", "2")
    ffmpeg(inbox / "two-hours-of-silence.flac", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "7200")
    copy(speech, inbox / 'we said "hi"\nthen it\'s over .wav')
    copy(speech, inbox / ("y" * 246 + ".wav"))
    os.link(shared, inbox / "hardlink.wav")

    # turned away untouched: a link to a file outside the inbox, and a name that is not UTF-8
    (inbox / "link.wav").symlink_to(secret)
    non_utf8 = os.fsdecode(b"caf\xe9-meeting.wav")
    copy(speech, inbox / non_utf8)
    # ignored: a folder that looks like audio
    (inbox / "folder.wav").mkdir()
    (inbox / "folder.wav" / "notes.txt").write_text("not audio")

    daemon = daemon_factory(config).start()

    # a file that goes away after it was seen, while it was still being written: its row closes, nothing else
    # happens. It grows until it is removed, so that it never stays still for the stability window (1.5 s)
    # and cannot be claimed first, however long the discovery took.
    (inbox / "gone.wav").write_bytes(speech.read_bytes())
    growing = threading.Thread(target=keep_growing, args=(inbox / "gone.wav",), daemon=True)
    growing.start()
    wait_until(lambda: discovered(daemon, "gone.wav"), 30, "gone.wav discovered")
    (inbox / "gone.wav").unlink()
    growing.join()

    stems = {name: name.rsplit(".", 1)[0] for name in [*bad, *odd]}
    stems['we said "hi"\nthen it\'s over .wav'] = "we said _hi__then it's over"
    stems["y" * 246 + ".wav"] = "y" * 220
    stems["x" * 230 + ".wav"] = "x" * 220
    for name in bad:
        wait_until(lambda n=name: (outbox / f"{stems[n]}.error.json").exists(), 300, f"{name}: error document")
    # a file's end, not its first output: its result JSON is written before its status document is removed
    # and it leaves processing/; a refused entry's outbox document before the one beside it and its ledger row
    for name in odd:
        finished(daemon, name, timeout=300)
    finished(daemon, "link.wav", event="refused", timeout=60)
    finished(daemon, "caf\\xe9-meeting.wav", event="refused", timeout=60)  # refused under its printable name
    ledger_state(db, "gone.wav", state="failed", timeout=60)

    # the daemon still serves after all of that
    copy(speech, inbox / "after.wav")
    finished(daemon, "after.wav", timeout=120)
    assert len(result_of(outbox, "after")["speakers"]) >= 1

    for name, words in bad.items():
        assert_failed_aside(inbox, outbox, name, stems[name], *words)
    assert (inbox / ".diarist/failed/bad-sidecar.wav.diarist.json").exists(), "the sidecar travels with its file"

    for name in odd:
        assert not (outbox / f"{stems[name]}.error.json").exists(), name
        assert not (outbox / f"{stems[name]}.status.json").exists(), name
    tone = result_of(outbox, "tone")
    assert tone["speakers"] == [] and tone["segments"] == []
    silence = result_of(outbox, "two-hours-of-silence")
    assert silence["speakers"] == [] and silence["source"]["duration"] == pytest.approx(7200, abs=1)
    assert silence["timings"]["inference_seconds"] < 30, "digital silence needs no models"
    phone, studio = result_of(outbox, "phone"), result_of(outbox, "studio")
    assert phone["source"]["sample_rate"] == 8000 and phone["speakers"]
    assert studio["source"]["sample_rate"] == 48000 and studio["source"]["channels"] == 2 and studio["speakers"]
    quoted = result_of(outbox, stems['we said "hi"\nthen it\'s over .wav'])
    assert quoted["source"]["name"] == 'we said "hi"\nthen it\'s over .wav' and quoted["speakers"]
    assert result_of(outbox, "y" * 220)["source"]["name"] == "y" * 246 + ".wav"
    assert result_of(outbox, "hardlink")["speakers"]
    assert shared.read_bytes() == shared_bytes, "the other name of a hard link is left alone"

    link_error = assert_failed_aside(inbox, outbox, "link.wav", "link", "symbolic link")
    assert (inbox / ".diarist/failed/link.wav").is_symlink() and secret.read_bytes() == speech.read_bytes()
    assert "secret" not in json.dumps(link_error), "the link's target is not read or named"
    name_error = error_of(outbox, "caf_xe9-meeting")
    assert "not valid UTF-8" in name_error["error"] and name_error["file"] == "caf\\xe9-meeting.wav"
    assert (inbox / ".diarist/failed" / non_utf8).read_bytes() == speech.read_bytes()
    assert (inbox / "folder.wav/notes.txt").read_text() == "not audio"

    rows = {r["rel_path"]: r for r in ledger_rows(db)}
    assert rows["gone.wav"]["state"] == "failed" and "removed" in rows["gone.wav"]["error"]
    assert rows["link.wav"]["state"] == "failed" and rows["caf\\xe9-meeting.wav"]["state"] == "failed"
    assert "folder.wav" not in rows
    assert all(r["inference_runs"] <= 1 for r in rows.values())
    assert not (inbox / ".diarist/processing/test-host").exists() or not any(
        (inbox / ".diarist/processing/test-host").rglob("*.*")
    ), "nothing left half-done"
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.text()


@pytest.mark.slow
def test_unreadable_file_fails_with_what_to_do(tmp_path, sample, daemon_factory):
    """Run without root's override of file permissions: a file diarist may not read fails aside, explained,
    and readable files keep flowing."""
    config, inbox, outbox, _db = daemon_config(tmp_path)
    daemon = daemon_factory(config, prefix=WITHOUT_DAC).start()
    locked = cut(sample[0], tmp_path / "locked.wav", 0.0, 5.0)
    locked.chmod(0o200)  # write-only: the copy is complete, but nobody may read it
    os.rename(locked, inbox / "locked.wav")
    # made beside the inbox and renamed in whole: FFmpeg writing into the watched folder could be taken half-done
    os.rename(cut(sample[0], tmp_path / "fine.wav", 5.0, 5.0), inbox / "fine.wav")
    wait_until(lambda: (outbox / "locked.error.json").exists(), 120, "locked.error.json")
    wait_until(lambda: (outbox / "fine.json").exists(), 120, "fine.json")
    error = assert_failed_aside(inbox, outbox, "locked.wav", "locked", "not allowed to read")
    assert "read access" in error["what_to_do"]
    assert daemon.stop() == 0
