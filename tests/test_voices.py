"""Known voices: ``diarist voices`` enrols real people, results name them (and only them), labels follow
``[identify]``, and a voiceprint never leaves the ledger."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from diarist.daemon.config import parse_settings
from diarist.daemon.ledger import Ledger
from diarist.daemon.outcomes import named
from diarist.daemon.voices import VoiceBook
from diarist.policies.identify import assign, average

from conftest import DEV_AUDIO
from conversations import build_conversation

VOICES = DEV_AUDIO / "voices"
CLI = [sys.executable, "-m", "diarist.daemon.cli"]


def clips(speaker: str, numbers: range) -> list[str]:
    return [str(VOICES / f"ASR_{speaker}_snt{n}.wav") for n in numbers]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--config", str(tmp_path / "diarist.toml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def majority(doc: dict[str, Any], rttm: Path) -> dict[str, str]:
    """Each found label -> the reference speaker with most overlap."""
    ref = [
        (float(f[3]), float(f[3]) + float(f[4]), f[7]) for f in (line.split() for line in rttm.read_text().splitlines())
    ]
    out = {}
    for s in doc["speakers"]:
        overlap: dict[str, float] = {}
        for seg in (x for x in doc["segments"] if x["speaker"] == s["label"]):
            for a, b, who in ref:
                overlap[who] = overlap.get(who, 0.0) + max(0.0, min(b, seg["end"]) - max(a, seg["start"]))
        out[s["label"]] = max(overlap, key=overlap.get)
    return out


class TestPolicy:
    def test_one_to_one_best_pairs_first_and_never_below_the_threshold(self) -> None:
        speakers = {"S0": [1.0, 0.0], "S1": [0.9, 0.1], "S2": [0.0, 1.0]}
        prints = {"ada": [1.0, 0.05], "bob": [-1.0, 0.0]}
        assert assign(speakers, prints, 0.7) == {"S0": ("ada", pytest.approx(0.9988, abs=1e-3))}

    def test_a_voiceprint_averages_unit_vectors_by_speech(self) -> None:
        assert average([[2.0, 0.0], [0.0, 1.0]], [3.0, 1.0]) == pytest.approx([0.9487, 0.3162], abs=1e-4)
        with pytest.raises(ValueError):
            average([], [])


def test_named_leaves_results_alone_without_voiceprints_of_their_model(tmp_path: Path) -> None:
    """Another embedding model's voiceprints are never compared; no centroids, nothing to name."""
    ledger = Ledger(tmp_path / "l.db")
    VoiceBook(ledger).add("Ada", "other-model", [1.0, 0.0], 9.0, 1)
    settings = parse_settings({}, env={}).identify
    doc = {
        "speakers": [{"label": "SPEAKER_00"}],
        "centroids": {"model": "m", "encoding": "base64-float32-le", "speakers": {}},
    }
    assert named(doc, ledger, settings) is doc
    assert named({"speakers": []}, ledger, settings) == {"speakers": []}


@pytest.mark.slow
def test_enrolled_people_are_named_and_nobody_else(tmp_path: Path) -> None:
    """Enrol two real speakers from three clips each; a conversation of their *other* clips names both
    correctly; the LJ voice (not enrolled) stays SPEAKER_xx until enrolled from a result's speaker; generic
    labels keep the RTTM's numbers; removed voices are gone; no voiceprint appears in any output."""
    ledger = tmp_path / "state/ledger.db"
    (tmp_path / "diarist.toml").write_text(f'[daemon]\nledger = "{ledger}"\n')
    short = run(tmp_path, "voices", "add", "Speaker One", clips("spk1", range(1, 2))[0])
    assert short.returncode == 1 and "at least 5 s" in short.stderr, short.stderr
    for name, speaker in (("Speaker One", "spk1"), ("Speaker Two", "spk2")):
        done = run(tmp_path, "voices", "add", name, *clips(speaker, range(1, 4)))
        assert done.returncode == 0 and f"enrolled {name}" in done.stdout, done.stderr
    conn = sqlite3.connect(ledger)
    stored = [v for (v,) in conn.execute("select vector from voiceprints")]
    conn.close()
    assert len(stored) == 2

    conv, rttm = tmp_path / "conv.wav", tmp_path / "conv.rttm"
    others = {f"ASR_{s}_snt{n}" for s in ("spk1", "spk2") for n in (4, 5, 6)} | {"TTS_LJ050-0131"}
    build_conversation(VOICES, 3, conv, rttm, only=others)
    done = run(tmp_path, "process", str(conv), "--out", "out", "--format", "srt")
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "out/conv.json").read_text())
    truth = majority(doc, rttm)
    names = {s["label"]: s["identity"]["name"] for s in doc["speakers"] if "identity" in s}
    expected = {"spk1": "Speaker One", "spk2": "Speaker Two"}
    assert all(expected.get(truth[label]) == name for label, name in names.items()), (names, truth)
    assert set(names.values()) == {"Speaker One", "Speaker Two"}, doc["speakers"]
    assert doc["identify"]["labels"] == "names" and doc["identify"]["threshold"] == 0.72
    rttm_labels = {line.split()[7] for line in (tmp_path / "out/conv.rttm").read_text().splitlines()}
    assert {"Speaker_One", "Speaker_Two"} <= rttm_labels
    assert (
        "Speaker One: " in (tmp_path / "out/conv.srt").read_text()
        or "Speaker One\n" in (tmp_path / "out/conv.srt").read_text()
    )

    # name a speaker after the fact, from the result
    lj = next(label for label, who in truth.items() if who == "TTS" and label not in names)
    bad = run(tmp_path, "voices", "add", "LJ", "--from", "out/conv.json", "--speaker", "SPEAKER_99")
    assert bad.returncode == 1 and "SPEAKER_00" in bad.stderr
    assert run(tmp_path, "voices", "add", "Linda J", "--from", "out/conv.json", "--speaker", lj).returncode == 0
    listed = run(tmp_path, "voices", "list")
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["Linda J", "Speaker One", "Speaker Two"]

    (tmp_path / "diarist.toml").write_text(f'[daemon]\nledger = "{ledger}"\n[identify]\nlabels = "generic"\n')
    again = run(tmp_path, "process", str(conv), "--out", "generic")
    doc = json.loads((tmp_path / "generic/conv.json").read_text())
    assert {s["identity"]["name"] for s in doc["speakers"] if "identity" in s} == {
        "Linda J",
        "Speaker One",
        "Speaker Two",
    }
    assert all(
        line.split()[7].startswith("SPEAKER_") for line in (tmp_path / "generic/conv.rttm").read_text().splitlines()
    )

    for name in ("Linda J", "Speaker One", "Speaker Two"):
        assert run(tmp_path, "voices", "remove", name).returncode == 0
    assert run(tmp_path, "voices", "remove", "Nobody").returncode == 1
    assert "no voices enrolled" in run(tmp_path, "voices", "list").stdout
    gone = run(tmp_path, "process", str(conv), "--out", "gone")
    assert "identity" not in (tmp_path / "gone/conv.json").read_text()

    conn = sqlite3.connect(ledger)
    assert conn.execute("select count(*) from voiceprints").fetchone() == (0,)
    conn.close()
    # biometric data stays in the ledger: no enrolled vector in any result, export or command output
    outputs = "".join(
        p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.suffix in (".json", ".rttm", ".srt")
    )
    outputs += done.stdout + done.stderr + again.stderr + gone.stderr + listed.stdout
    assert not [v for v in stored if v[:24] in outputs]


def test_process_keeps_going_when_the_daemons_ledger_cannot_be_read(tmp_path: Path, capsys) -> None:
    """``process`` reads known voices from the configured ledger; one it cannot open costs the names (with a
    line saying so), never the run."""
    from diarist.daemon.oneshot import voices_ledger

    broken = tmp_path / "ledger.db"
    broken.mkdir()  # exists, but is no SQLite file
    settings = parse_settings({"daemon": {"ledger": str(broken)}}, env={})
    assert voices_ledger(settings, Ledger(tmp_path / "throwaway.db")) is None
    assert "known voices not read" in capsys.readouterr().err
    good = parse_settings({"daemon": {"ledger": str(tmp_path / "good.db")}}, env={})
    Ledger(tmp_path / "good.db")
    assert voices_ledger(good, Ledger(tmp_path / "throwaway.db")) is not None
    assert (
        voices_ledger(
            parse_settings({"daemon": {"ledger": str(tmp_path / "absent.db")}}, env={}), Ledger(tmp_path / "t2.db")
        )
        is None
    )
