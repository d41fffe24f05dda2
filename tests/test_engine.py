"""The local engine on real audio: pyannote's SpeakerDiarization with the bundled offline weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave

import pytest

from diarist.handlers.audio import decode
from diarist.handlers.engine import LocalEngine
from diarist.handlers.errors import ModelError, PermanentFileError
from diarist.handlers.local import diarize_file
from diarist.handlers.results import parse_rttm, validate_result
from diarist.policies.flavor import Task

from conftest import DEV_AUDIO, annotation, der, reference, to_format
from conversations import build_conversation


class TestBundledPipeline:
    def test_sample_der_within_target(self, engine, sample):
        """pyannote's sample: 2 speakers found and DER <= 0.08 (collar 0, overlap scored)."""
        wav, rttm = sample
        out = engine.run(decode(wav), uri="sample", task=Task.DIARIZATION)
        assert len({s.speaker for s in out.segments}) == 2
        assert der(reference(rttm), out.segments) <= 0.08

    def test_generated_conversation_finds_several_speakers(self, engine, audio_dir):
        """A generated 3-voice conversation yields more than one speaker and sane segments."""
        out = engine.run(decode(audio_dir / "conv3.wav"), uri="conv3", task=Task.DIARIZATION)
        assert len({s.speaker for s in out.segments}) >= 2
        assert all(s.end > s.start for s in out.segments)

    def test_num_speakers_is_honoured(self, engine, tmp_path):
        """Asking for exactly 3 speakers on a conversation of 3 real voices returns 3 labels; asking for 2
        returns 2 (a maximum is a hard bound)."""
        wav, rttm = tmp_path / "conv.wav", tmp_path / "conv.rttm"
        build_conversation(DEV_AUDIO / "voices", 3, wav, rttm, seed=5)
        for wanted in (3, 2):
            out = engine.run(decode(wav), uri="conv", task=Task.DIARIZATION, speakers={"num_speakers": wanted})
            assert len({s.speaker for s in out.segments}) == wanted

    def test_a_minimum_never_splits_a_voice(self, engine, audio_dir):
        """Three espeak-ng voices that CAM++ hears as two: told "3 speakers", the engine does not cut one of
        them in two to make up the number (stock pyannote does, and on real meetings that costs accuracy);
        the result says so (``speakers_note``)."""
        doc = diarize_file(
            audio_dir / "conv3.wav",
            engine=engine,
            name="conv3.wav",
            relative_path="conv3.wav",
            sha256="0" * 64,
            task=Task.DIARIZATION,
            speakers={"num_speakers": 3},
            route={},
        )
        found = len(doc["speakers"])
        assert found <= 3
        if found < 3:
            assert doc["speakers_note"] == f"asked for 3 speakers; {found} distinct voices found"

    def test_vad_covers_reference_speech(self, engine, sample):
        """The vad task's speech regions cover at least 90% of the reference speech."""
        wav, rttm = sample
        out = engine.run(decode(wav), uri="sample", task=Task.VAD)
        assert out.vad and not out.segments
        ref = reference(rttm).get_timeline().support()
        hyp = annotation([type("S", (), {"start": r.start, "end": r.end, "speaker": "speech"}) for r in out.vad], "s")
        covered = ref.crop(hyp.get_timeline().support()).duration()
        assert covered >= 0.9 * ref.duration()

    def test_full_task_reports_everything_from_one_pass(self, engine, sample):
        """full = segments + exclusive segments + vad + overlap, overlap inside speech."""
        out = engine.run(decode(sample[0]), uri="sample", task=Task.FULL)
        assert out.segments and out.exclusive_segments and out.vad is not None and out.overlap is not None
        speech = sum(r.end - r.start for r in out.vad)
        overlap = sum(r.end - r.start for r in out.overlap)
        assert 0 < overlap < speech

    def test_telemetry_is_off(self, engine):
        """pyannote's usage telemetry is disabled unless the user opts in."""
        from pyannote.audio.telemetry.metrics import is_metrics_enabled

        assert os.environ["PYANNOTE_METRICS_ENABLED"] == "false"
        assert not is_metrics_enabled()


class TestDiarizeFile:
    def test_result_document_for_m4a(self, engine, audio_dir, tmp_path):
        """An m4a decodes through FFmpeg and yields a valid diarist.result/1 document."""
        m4a = to_format(audio_dir / "conv2.wav", tmp_path / "call.m4a")
        doc = diarize_file(
            m4a,
            engine=engine,
            name="call.m4a",
            relative_path="x/call.m4a",
            sha256="0" * 64,
            task=Task.DIARIZATION,
            speakers={},
            route={"decision": "local", "reason": "test"},
        )
        validate_result(doc)
        with wave.open(str(audio_dir / "conv2.wav")) as w:
            expected = w.getnframes() / w.getframerate()
        assert doc["source"]["sample_rate"] == 16000 and abs(doc["source"]["duration"] - expected) < 0.1
        assert doc["engine"]["backend"] == "pyannote-local" and doc["route"]["reason"] == "test"

    def test_text_file_named_wav_is_permanent_error(self, engine, tmp_path):
        """A text file named .wav is rejected with an actionable PermanentFileError."""
        bad = tmp_path / "bad.wav"
        bad.write_text("this is not audio\n" * 50)
        with pytest.raises(PermanentFileError, match="not a readable audio file"):
            diarize_file(
                bad,
                engine=engine,
                name="bad.wav",
                relative_path="bad.wav",
                sha256="0" * 64,
                task=Task.DIARIZATION,
                speakers={},
                route={},
            )


class TestModelErrors:
    def test_hub_model_without_token_says_what_to_do(self, monkeypatch):
        """A Hub pipeline without a token (and no network) names the model, HF_TOKEN and the offline option."""
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        e = LocalEngine(pipeline="pyannote/speaker-diarization-community-1", token=None)
        with pytest.raises(ModelError) as err:
            e.load()
        text = str(err.value)
        assert "pyannote/speaker-diarization-community-1" in text and "HF_TOKEN" in text and "bundled" in text

    def test_local_directory_without_config(self, tmp_path):
        """A local pipeline folder without config.yaml is refused with the path in the message."""
        e = LocalEngine(pipeline=str(tmp_path))
        with pytest.raises(ModelError, match="config.yaml"):
            e.load()


class TestProcessCommand:
    def test_process_writes_rttm_and_json(self, audio_dir, tmp_path):
        """`diarist process FILE --out DIR` writes <stem>.rttm and <stem>.json (real subprocess)."""
        mp3 = to_format(audio_dir / "short.wav", tmp_path / "interview one.mp3")
        out = tmp_path / "results"
        proc = subprocess.run(
            [sys.executable, "-m", "diarist.daemon.cli", "process", str(mp3), "--out", str(out), "--task", "full"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        uri, segments = parse_rttm((out / "interview one.rttm").read_text())
        assert uri == "interview_one" and segments
        doc = validate_result(json.loads((out / "interview one.json").read_text()))
        assert doc["task"] == "full" and "vad" in doc and "overlap" in doc

    def test_process_bad_file_exits_nonzero(self, tmp_path):
        """A non-audio input makes `diarist process` exit 1 with the reason on stderr."""
        bad = tmp_path / "notes.wav"
        bad.write_text("hello")
        proc = subprocess.run(
            [sys.executable, "-m", "diarist.daemon.cli", "process", str(bad)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 1 and "not a readable audio file" in proc.stderr
