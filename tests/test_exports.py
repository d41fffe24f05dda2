"""Result formats people open (diarist.handlers.exports), each read back by a real parser from its ecosystem:
``srt`` (SRT), ``webvtt-py`` (WebVTT), ``praatio`` (Praat TextGrid), ``pympi-ling`` (ELAN EAF), ``csv``."""

from __future__ import annotations

import csv
import html
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pympi
import pytest
import srt
import webvtt
from praatio import textgrid

from diarist.handlers.engine import Centroids, Segment
from diarist.handlers.exports import cues, label_names, render, tiers
from diarist.handlers.results import SourceFacts, build_result, rttm_of
from diarist.handlers.transcribe import SpokenTurn, Transcript
from diarist.policies.formats import parse_formats

CLI = [sys.executable, "-m", "diarist.daemon.cli"]


def check_exports(folder: Path, stem: str, doc: dict[str, Any]) -> None:
    """Every format of ``doc`` in ``folder`` parses, and says what the result says (times, speakers, words)."""
    expected = cues(doc)
    assert expected, "a result with speech has cues"
    subs = list(srt.parse((folder / f"{stem}.srt").read_text(encoding="utf-8")))
    assert [(round(s.start.total_seconds(), 3), round(s.end.total_seconds(), 3)) for s in subs] == [
        (round(c.start, 3), round(c.end, 3)) for c in expected
    ]
    assert [s.content for s in subs] == [f"{c.speaker}: {c.text}" if c.text else c.speaker for c in expected]
    captions = webvtt.read(str(folder / f"{stem}.vtt")).captions
    # cue text is escaped as WebVTT requires (& < > as entities); a player shows it unescaped
    assert [(c.voice, html.unescape(c.text)) for c in captions] == [(c.speaker, c.text or c.speaker) for c in expected]
    grid = textgrid.openTextgrid(str(folder / f"{stem}.TextGrid"), includeEmptyIntervals=False)
    speakers = {c.speaker for c in expected}
    assert set(grid.tierNames) >= speakers
    # annotation tools get a tier per speaker with all of that speaker's speech (overlaps included)
    stretches = {
        speaker: [(round(c.start, 3), c.text or speaker) for c in tier] for speaker, tier in tiers(doc).items()
    }
    assert {n: [(e.start, e.label) for e in grid.getTier(n).entries] for n in grid.tierNames} == stretches
    eaf = pympi.Elan.Eaf(str(folder / f"{stem}.eaf"))
    assert {
        t: [(a[0] / 1000, a[2]) for a in sorted(eaf.get_annotation_data_for_tier(t))] for t in eaf.get_tier_names()
    } == stretches
    with open(folder / f"{stem}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["speaker"], r["text"]) for r in rows] == [(c.speaker, c.text) for c in expected]
    labels = [line.split("\t") for line in (folder / f"{stem}.audacity.txt").read_text().splitlines()]
    assert [(float(a), float(b)) for a, b, _ in labels] == [(round(c.start, 6), round(c.end, 6)) for c in expected]


def result(identity: bool, labels: str = "names") -> dict[str, Any]:
    """A small result with a transcript; with ``identity``, SPEAKER_01 is known as "Ada Lovelace"."""
    segs = (Segment(0.5, 2.0, "SPEAKER_00"), Segment(1.8, 4.0, "SPEAKER_01"), Segment(4.5, 6.25, "SPEAKER_00"))
    doc = build_result(
        source=SourceFacts("talk & notes.wav", "talk & notes.wav", "0" * 64, 10, 7.0, 16000, 1),
        task="transcribe",
        engine={},
        route={},
        timings={},
        segments=segs,
        exclusive_segments=segs,
        vad=None,
        overlap=None,
        centroids=Centroids("m", (("SPEAKER_00", (1.0, 0.0)), ("SPEAKER_01", (0.0, 1.0)))),
        transcript=Transcript(
            (
                SpokenTurn(0.5, 2.0, "SPEAKER_00", "Hello <there> & welcome."),
                SpokenTurn(2.0, 4.0, "SPEAKER_01", 'She said "fine", thanks'),
                SpokenTurn(4.5, 6.25, "SPEAKER_00", ""),
            ),
            "asr",
            "en",
            1.0,
        ),
    )
    if identity:
        doc["speakers"][1]["identity"] = {"name": "Ada Lovelace", "score": 0.8}
        doc["identify"] = {"labels": labels}
    return doc


@pytest.mark.parametrize("identity", [False, True], ids=["generic", "names"])
def test_every_format_parses_and_carries_words_and_names(tmp_path: Path, identity: bool) -> None:
    """Text with markup characters and quotes, an empty turn, and a name with a space all survive each format."""
    doc = result(identity)
    for fmt in ("srt", "vtt", "textgrid", "eaf", "audacity", "csv"):
        ext = {"textgrid": "TextGrid", "audacity": "audacity.txt"}.get(fmt, fmt)
        (tmp_path / f"talk.{ext}").write_bytes(render(doc, fmt))
    check_exports(tmp_path, "talk", doc)
    speakers = {c.speaker for c in cues(doc)}
    assert ("Ada Lovelace" in speakers) is identity and ("SPEAKER_01" in speakers) is not identity
    rttm_labels = {line.split()[7] for line in rttm_of(doc).splitlines()}
    assert rttm_labels == ({"SPEAKER_00", "Ada_Lovelace"} if identity else {"SPEAKER_00", "SPEAKER_01"})


def test_generic_labels_keep_speaker_numbers_but_the_json_keeps_the_name() -> None:
    doc = result(identity=True, labels="generic")
    assert label_names(doc) == {} and doc["speakers"][1]["identity"]["name"] == "Ada Lovelace"
    assert "Ada" not in render(doc, "srt").decode() and "SPEAKER_01" in rttm_of(doc)


def test_format_names_are_checked() -> None:
    assert parse_formats(["SRT", "rttm", "srt", "csv"]) == (("srt", "csv"), None)
    formats, problem = parse_formats(["docx"])
    assert formats == () and problem is not None and "'docx'" in problem and "textgrid" in problem


@pytest.mark.slow
def test_export_rerenders_a_stored_result_byte_for_byte(tmp_path: Path, sample) -> None:
    """``diarist process --format`` then ``diarist export`` from its JSON elsewhere: the same bytes (the formats
    are pure renderings of the result); a bad format name is a usage error, a broken JSON a failed file."""
    done = subprocess.run(
        [*CLI, "process", str(sample[0]), "--out", "a", "--format", "srt,vtt,textgrid,eaf,audacity,csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    exported = subprocess.run(
        [*CLI, "export", "a/sample.json", "--format", "srt,vtt,textgrid,eaf,audacity,csv,rttm", "--out", "b"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    written = sorted(p.name for p in (tmp_path / "a").iterdir() if p.name != "sample.json")
    assert written == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(written) == 7
    for name in written:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    check_exports(tmp_path / "b", "sample", json.loads((tmp_path / "a/sample.json").read_text()))

    bad = subprocess.run(
        [*CLI, "export", "a/sample.json", "--format", "docx"], cwd=tmp_path, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "docx" in bad.stderr
    (tmp_path / "broken.json").write_text("{")
    broken = subprocess.run(
        [*CLI, "export", "broken.json", "--format", "srt"], cwd=tmp_path, capture_output=True, text=True
    )
    assert broken.returncode == 1 and "broken.json" in broken.stderr
