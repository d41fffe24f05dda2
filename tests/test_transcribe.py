"""Who said what (task transcribe): real voices with known words, the bundled recogniser (Moonshine base-en,
offline), through ``diarist process``, the daemon and a cloud job on the loopback Hub emulator."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from wer import cpwer, wer

from diarist.daemon.cloud_terms import THROUGHPUT_KEY
from diarist.daemon.config import parse_settings
from diarist.daemon.ledger import Ledger
from diarist.daemon.oneshot import RunRequest, run_files
from diarist.handlers import audio
from diarist.handlers.results import parse_rttm, validate_result
from diarist.policies.flavor import DEFAULT_THROUGHPUT, Task, effort_seconds, job_timeout_for, update_throughput
from diarist.policies.route import RouteSetting
from diarist.policies.sidecar import FileRequest

from conftest import DEV_AUDIO, SUITE_TOKEN, daemon_config, finished, noon_timezone, wait_until
from conversations import build_conversation, transcripts
from hub_emulator import HubEmulator

pytestmark = pytest.mark.slow

VOICES = DEV_AUDIO / "voices"
#: the acceptance bounds of "who said what" on a built two-speaker conversation
MAX_WER, MAX_CPWER = 0.15, 0.20


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    """A 2-speaker conversation of the clips with known words, and (speaker, words) per turn in order."""
    refs = transcripts(VOICES)  # the words per clip (conversations.transcripts: one line corrected)
    folder = tmp_path_factory.mktemp("conversation")
    audio_path = folder / "conv.wav"
    order = build_conversation(VOICES, 2, audio_path, folder / "conv.rttm", only=set(refs))
    return audio_path, [(speaker, refs[stem]) for speaker, stem in order]


def scores(doc: dict[str, Any], truth: list[tuple[str, str]]) -> tuple[float, float]:
    ref_by: dict[str, list[str]] = {}
    hyp_by: dict[str, list[str]] = {}
    for speaker, words in truth:
        ref_by.setdefault(speaker, []).append(words)
    for turn in doc["turns"]:
        hyp_by.setdefault(turn["speaker"], []).append(turn["text"])
    flat = wer(" ".join(w for _, w in truth), " ".join(t["text"] for t in doc["turns"]))
    return flat, cpwer(ref_by, hyp_by)


def test_process_transcribes_each_speaker_turn(tmp_path: Path, conversation) -> None:
    """``diarist process --task transcribe`` on real voices: the words match the reference (WER, and cpWER
    with the speakers as diarized), one transcript line per turn, the RTTM as for diarization."""
    conv, truth = conversation
    done = subprocess.run(
        [sys.executable, "-m", "diarist.daemon.cli", "process", str(conv), "--task", "transcribe", "--out", "out"]
        + ["--format", "srt,vtt", "--format", "textgrid", "--format", "eaf,audacity,csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    doc = validate_result(json.loads((tmp_path / "out/conv.json").read_text()))
    flat, per_speaker = scores(doc, truth)
    assert flat <= MAX_WER and per_speaker <= MAX_CPWER, (flat, per_speaker, doc["transcript"])
    assert doc["task"] == "transcribe" and doc["schema"] == "diarist.result/1.2"
    assert doc["transcription"] == {"model": doc["transcription"]["model"], "language": "en"}
    assert "moonshine" in doc["transcription"]["model"].lower()
    assert len(doc["speakers"]) == 2 and all(t["text"] for t in doc["turns"] if t["end"] - t["start"] > 1.0)
    lines = doc["transcript"].splitlines()
    assert lines == [f"{t['speaker']}: {t['text']}" for t in doc["turns"] if t["text"]]
    timings = doc["timings"]
    assert timings["diarization_seconds"] > 0 and timings["transcription_seconds"] > 0
    assert timings["transcription_real_time_factor"] == pytest.approx(
        timings["transcription_seconds"] / doc["source"]["duration"], abs=0.01
    )
    # the RTTM is the diarization's, as for task diarization
    _, rttm = parse_rttm((tmp_path / "out/conv.rttm").read_text())
    assert [(s.start, s.end, s.speaker) for s in rttm] == [
        (s["start"], s["end"], s["speaker"]) for s in doc["segments"]
    ]


def test_another_language_without_a_model_for_it_is_refused(tmp_path: Path, conversation) -> None:
    """No multilingual recogniser configured: ``--language de`` stops before any work with what to change
    (never an English transcript of German speech); a configured one that is not installed says how."""
    conv, _ = conversation
    cli = [sys.executable, "-m", "diarist.daemon.cli"]
    done = subprocess.run(
        [*cli, "process", str(conv), "--task", "transcribe", "--language", "de", "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert '"de"' in done.stderr and "English only" in done.stderr and "faster-whisper" in done.stderr
    assert not (tmp_path / "out/conv.json").exists()

    config = tmp_path / "whisper.toml"
    config.write_text(
        f'[transcription]\nmodel = "{tmp_path / "no-such-model"}"\nlanguage = "de"\n'
        f'[[inbox]]\npath = "{tmp_path / "in"}"\noutbox = "{tmp_path / "outbox"}"\ntask = "transcribe"\n'
        f'[daemon]\nledger = "{tmp_path / "ledger.db"}"\n'
    )
    done = subprocess.run([*cli, "--config", str(config), "run"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "[transcription] model" in done.stderr and ("faster-whisper" in done.stderr or "model.bin" in done.stderr)


def test_the_daemon_transcribes_a_dropped_file_and_refuses_a_language_it_cannot_hear(
    tmp_path: Path, conversation, daemon_factory
) -> None:
    """A transcribe inbox: the dropped conversation comes out with turns and a transcript, its status said
    it was transcribing on the way; a file whose sidecar asks for German fails aside with the reason."""
    conv, truth = conversation
    config, inbox, outbox, _ = daemon_config(tmp_path, task="transcribe", formats=["vtt", "csv"])
    daemon = daemon_factory(config).start()
    assert '"event": "recogniser_loaded"' in daemon.text()
    german = inbox / "german.wav"
    (inbox / "german.wav.diarist.json").write_text('{"language": "de"}')
    german.write_bytes(conv.read_bytes())
    (inbox / "talk.wav").write_bytes(conv.read_bytes())
    steps: set[str] = set()

    def watch_status() -> bool:
        try:
            steps.add(json.loads((outbox / "talk.status.json").read_text()).get("step", ""))
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        return (outbox / "talk.json").exists()

    wait_until(watch_status, 600, "talk.json", interval=0.1)
    finished(daemon, "talk.wav", timeout=60)
    doc = validate_result(json.loads((outbox / "talk.json").read_text()))
    flat, _ = scores(doc, truth)
    assert doc["task"] == "transcribe" and flat <= MAX_WER, doc["transcript"]
    assert "transcription" in steps, steps
    # the inbox's formats, with the words
    assert [r["text"] for r in csv.DictReader(io.StringIO((outbox / "talk.csv").read_text()))] == [
        t["text"] for t in doc["turns"]
    ]
    assert (outbox / "talk.vtt").read_text().startswith("WEBVTT")

    finished(daemon, "german.wav", timeout=120, event="failed")
    error = json.loads((outbox / "german.error.json").read_text())
    assert '"de"' in error["error"] and "faster-whisper" in error["what_to_do"] and error["kind"] == "model"
    assert (inbox / ".diarist/failed/german.wav").exists()
    assert daemon.stop() == 0


def test_a_cloud_job_transcribes_with_the_same_code(tmp_path: Path, conversation, engine) -> None:
    """Routed to the cloud (loopback Hub emulator, the job runs the staged wheel): the same turns come back,
    and the job's timeout counts transcription as the heavier work it is."""
    conv, truth = conversation
    with HubEmulator(token=SUITE_TOKEN, namespace="alice", kill_grace=0.5) as emu:
        settings = parse_settings(
            {
                "daemon": {"ledger": str(tmp_path / "state/ledger.db"), "host_id": "cli-host"},
                "cloud": {"endpoint": emu.url, "poll_interval": 0.3, "timezone": noon_timezone()},
            },
            env={"HF_TOKEN": SUITE_TOKEN},
        )
        request = FileRequest(route=RouteSetting.CLOUD, flavor="t4-small", task=Task.TRANSCRIBE)
        code = run_files(
            settings,
            [conv],
            RunRequest(request),
            ledger=Ledger(settings.daemon.ledger),
            out=tmp_path / "out",
            engine=lambda: engine,
            sleep=lambda s: time.sleep(min(s, 0.3)),
        )
        assert code == 0
        (job,) = emu.jobs.values()
    doc = validate_result(json.loads((tmp_path / "out/conv.json").read_text()))
    assert doc["engine"]["backend"] == "hf-jobs" and doc["task"] == "transcribe"
    flat, per_speaker = scores(doc, truth)
    assert flat <= MAX_WER and per_speaker <= MAX_CPWER, doc["transcript"]
    duration = audio.probe(conv).duration or 0.0
    assert job["timeoutSeconds"] == job_timeout_for(
        effort_seconds(Task.TRANSCRIBE, duration), DEFAULT_THROUGHPUT["t4-small"], startup_seconds=120
    )
    # usage counts the audio; the learned throughput is in the same work units as the estimates that read it
    ledger = Ledger(settings.daemon.ledger)
    (row,) = ledger.jobs()
    assert row.audio_seconds == pytest.approx(duration, abs=0.01)
    learned = (ledger.get_value(THROUGHPUT_KEY) or ({}, 0))[0]["t4-small"]
    assert learned == pytest.approx(
        update_throughput(
            DEFAULT_THROUGHPUT,
            "t4-small",
            effort_seconds(Task.TRANSCRIBE, duration),
            row.running_seconds,
            startup_seconds=min(settings.cloud.startup_seconds, row.running_seconds * 0.5),
        )["t4-small"]
    )
