"""Result writers: strict RTTM, the diarist.result/1 JSON document and atomic files (diarist.handlers.results)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diarist.handlers.engine import Region, Segment
from diarist.handlers.results import (
    FILE_MODE,
    SCHEMA,
    SCHEMA_MAJOR,
    OutputPaths,
    SourceFacts,
    atomic_write,
    build_result,
    dumps,
    parse_rttm,
    rttm_uri,
    speaker_totals,
    sweep_temporaries,
    to_rttm,
    validate_result,
    write_result,
)

SOURCE = SourceFacts(
    name="team meeting.m4a",
    relative_path="a/team meeting.m4a",
    sha256="ab" * 32,
    size=1234,
    duration=61.5,
    sample_rate=16000,
    channels=1,
)

speakers = st.from_regex(r"SPEAKER_[0-9]{2}|[A-Za-z][A-Za-z0-9_-]{0,11}", fullmatch=True)
times = st.floats(min_value=0, max_value=100_000, allow_nan=False, allow_infinity=False)


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    start, end = sorted((draw(times), draw(times)))
    return Segment(start, end, draw(speakers))


@st.composite
def millisecond_segments(draw: st.DrawFn) -> Segment:
    start = draw(st.integers(0, 10**8))
    return Segment(start / 1000, (start + draw(st.integers(0, 10**7))) / 1000, draw(speakers))


def document(segs: list[Segment], **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "source": SOURCE,
        "task": "diarization",
        "engine": {"backend": "pyannote-local", "device": "cpu", "models": ["seg", "emb"]},
        "route": {"decision": "local", "reason": "test"},
        "timings": {"total_seconds": 1.23456},
        "segments": tuple(segs),
        "exclusive_segments": tuple(segs),
        "vad": None,
        "overlap": None,
    }
    kwargs.update(overrides)
    return build_result(**kwargs)


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


class TestRttm:
    @given(st.lists(millisecond_segments(), max_size=20), st.text(max_size=30))
    def test_round_trip_on_millisecond_grid(self, segs: list[Segment], name: str) -> None:
        """Segments whose times are whole milliseconds come back unchanged, with the sanitized uri."""
        uri, parsed = parse_rttm(to_rttm(name, segs))
        assert parsed == segs
        assert uri == (rttm_uri(name) if segs else None)

    @given(st.lists(segments(), max_size=20))
    def test_round_trip_to_three_decimals(self, segs: list[Segment]) -> None:
        """Arbitrary times come back rounded to 3 decimals (the end within one millisecond)."""
        _, parsed = parse_rttm(to_rttm("a", segs))
        assert [(p.start, p.speaker) for p in parsed] == [(round(s.start, 3), s.speaker) for s in segs]
        assert all(abs(p.end - s.end) <= 0.001 + 1e-6 for p, s in zip(parsed, segs, strict=True))

    def test_end_rounds_like_start(self) -> None:
        """The parsed end equals the end rounded to 3 decimals, like the start."""
        _, parsed = parse_rttm(to_rttm("a", [Segment(0.0004, 0.0008, "A")]))
        assert parsed == [Segment(0.0, 0.001, "A")]

    @given(st.lists(segments(), min_size=1, max_size=10), st.text(max_size=30))
    def test_every_line_has_ten_fields(self, segs: list[Segment], name: str) -> None:
        """Every line is SPEAKER <uri> 1 <start> <dur> <NA> <NA> <speaker> <NA> <NA>, whatever the file name."""
        lines = to_rttm(name, segs).splitlines()
        assert len(lines) == len(segs)
        for line, seg in zip(lines, segs, strict=True):
            fields = line.split(" ")
            assert len(fields) == 10 and len(line.split()) == 10
            assert fields[0] == "SPEAKER" and fields[2] == "1" and fields[7] == seg.speaker
            assert fields[5:7] == fields[8:10] == ["<NA>", "<NA>"]

    @pytest.mark.parametrize(
        ("name", "uri"), [("team meeting", "team_meeting"), ("a \t b\nc", "a_b_c"), ("", "audio"), ("x", "x")]
    )
    def test_uri_has_no_whitespace(self, name: str, uri: str) -> None:
        """Whitespace runs in the uri become one underscore; an empty name becomes "audio"."""
        assert rttm_uri(name) == uri
        assert parse_rttm(to_rttm(name, [Segment(0, 1, "A")]))[0] == uri

    def test_format(self) -> None:
        """Times are written with three decimals; duration, not end, is the fifth field."""
        assert to_rttm("m", [Segment(1.5, 4.25, "SPEAKER_00")]) == (
            "SPEAKER m 1 1.500 2.750 <NA> <NA> SPEAKER_00 <NA> <NA>\n"
        )

    def test_empty(self) -> None:
        """No segments give an empty file, and an empty file no segments."""
        assert to_rttm("m", []) == ""
        assert parse_rttm("") == (None, [])

    def test_blank_lines_are_skipped(self) -> None:
        """Blank lines between records are tolerated."""
        text = "\nSPEAKER m 1 0.000 1.000 <NA> <NA> A <NA> <NA>\n\n"
        assert parse_rttm(text) == ("m", [Segment(0.0, 1.0, "A")])

    @pytest.mark.parametrize(
        "line",
        [
            "SPEAKER m 1 0.0 1.0 <NA> <NA> A <NA>",
            "LEXEME m 1 0.0 1.0 <NA> <NA> A <NA> <NA>",
            "SPEAKER m 1 0 1 a b c d e f",
        ],
    )
    def test_rejects_malformed_line_naming_it(self, line: str) -> None:
        """A line that is not 10 fields starting with SPEAKER raises ValueError naming the line number."""
        with pytest.raises(ValueError, match="RTTM line 2"):
            parse_rttm("SPEAKER m 1 0.000 1.000 <NA> <NA> A <NA> <NA>\n" + line + "\n")


class TestSpeakerTotals:
    def test_sums_per_speaker_sorted_by_label(self) -> None:
        """Speech seconds are summed per label, sorted by label and rounded to milliseconds."""
        segs = [Segment(0, 1.5, "B"), Segment(2, 2.25, "A"), Segment(3, 4.0001, "B")]
        assert speaker_totals(segs) == [
            {"label": "A", "speech_seconds": 0.25},
            {"label": "B", "speech_seconds": 2.5},
        ]

    def test_no_segments(self) -> None:
        """No segments give no speakers."""
        assert speaker_totals([]) == []


class TestResultDocument:
    @settings(max_examples=50)
    @given(
        segs=st.lists(segments(), max_size=15),
        name=st.text(min_size=1, max_size=30),
        requested=st.dictionaries(st.sampled_from(["num_speakers", "min_speakers", "max_speakers"]), st.integers(1, 9)),
        regions=st.none() | st.lists(st.tuples(times, times).map(lambda t: Region(*sorted(t))), max_size=5),
    )
    def test_json_round_trip(
        self, segs: list[Segment], name: str, requested: dict[str, int], regions: list[Region] | None
    ) -> None:
        """build_result -> dumps -> json.loads -> validate_result gives back the same document."""
        source = SourceFacts(name, f"sub/{name}", "00" * 32, 10, 1.0, 16000, 2)
        vad = None if regions is None else tuple(regions)
        doc = document(segs, source=source, speakers_requested=requested, vad=vad, overlap=vad)
        loaded = validate_result(json.loads(dumps(doc)))
        assert loaded == doc
        assert loaded["schema"] == SCHEMA
        assert loaded["speakers"] == speaker_totals(segs)
        assert [Segment(**s) for s in loaded["segments"]] == segs
        assert ("vad" in loaded) == ("overlap" in loaded) == (regions is not None)
        assert ("speakers_requested" in loaded) == bool(requested)

    def test_timings_rounded(self) -> None:
        """Timings are rounded to milliseconds."""
        assert document([])["timings"] == {"total_seconds": 1.235}

    def test_dumps_is_utf8_not_escaped(self) -> None:
        """dumps writes UTF-8 (names stay readable) and ends with a newline."""
        data = dumps({"name": "Besprechung Büro"})
        assert "Büro".encode() in data and data.endswith(b"\n")


def broken(change: Any) -> dict[str, Any]:
    doc = json.loads(dumps(document([Segment(0, 1, "A")])))
    change(doc)
    return doc


BROKEN_DOCS: list[tuple[str, Any, str]] = [
    ("wrong schema", lambda d: d.update(schema="other/1"), SCHEMA_MAJOR),
    ("missing source", lambda d: d.pop("source"), "'source'"),
    ("task not a string", lambda d: d.update(task=1), "'task'"),
    ("engine not a dict", lambda d: d.update(engine=[]), "'engine'"),
    ("route missing", lambda d: d.pop("route"), "'route'"),
    ("timings missing", lambda d: d.pop("timings"), "'timings'"),
    ("speakers not a list", lambda d: d.update(speakers={}), "'speakers'"),
    ("segments not a list", lambda d: d.update(segments=None), "'segments'"),
    ("exclusive segments missing", lambda d: d.pop("exclusive_segments"), "'exclusive_segments'"),
    ("source.name missing", lambda d: d["source"].pop("name"), "source.name"),
    ("source.sha256 missing", lambda d: d["source"].pop("sha256"), "source.sha256"),
    ("source.duration missing", lambda d: d["source"].pop("duration"), "source.duration"),
    ("source.sample_rate missing", lambda d: d["source"].pop("sample_rate"), "source.sample_rate"),
    ("segment ends before start", lambda d: d["segments"][0].update(end=-1), "bad segment"),
    ("segment without speaker", lambda d: d["segments"][0].pop("speaker"), "bad segment"),
    ("exclusive segment not a dict", lambda d: d["exclusive_segments"].append([0, 1]), "bad segment"),
]


class TestValidateResult:
    @pytest.mark.parametrize(("change", "field"), [c[1:] for c in BROKEN_DOCS], ids=[c[0] for c in BROKEN_DOCS])
    def test_rejects_naming_the_field(self, change: Any, field: str) -> None:
        """A broken document raises ValueError whose message names the offending field."""
        with pytest.raises(ValueError) as info:
            validate_result(broken(change))
        assert field in str(info.value)

    @pytest.mark.parametrize("doc", [None, [], "diarist.result/1", {}])
    def test_rejects_non_documents(self, doc: Any) -> None:
        """Anything that is not a dict with the schema tag is rejected."""
        with pytest.raises(ValueError, match="not a diarist.result/1 document"):
            validate_result(doc)

    def test_rejects_non_numeric_times(self) -> None:
        """A segment whose start is a string is rejected with ValueError, not a crash."""
        with pytest.raises(ValueError, match="bad segment"):
            validate_result(broken(lambda d: d["segments"][0].update(start="0")))


class TestOutputPaths:
    def test_mirrors_sub_folders(self, tmp_path: Path) -> None:
        """a/b/meeting.m4a in the inbox gives outbox/a/b/meeting.{rttm,json,status.json,error.json}."""
        p = OutputPaths.for_input(tmp_path, "a/b/meeting.m4a")
        assert (p.rttm, p.json) == (tmp_path / "a/b/meeting.rttm", tmp_path / "a/b/meeting.json")
        assert (p.status, p.error) == (tmp_path / "a/b/meeting.status.json", tmp_path / "a/b/meeting.error.json")

    def test_top_level_file(self, tmp_path: Path) -> None:
        """A file at the inbox root maps to the outbox root; only the last extension is replaced."""
        assert OutputPaths.for_input(tmp_path, "x.y.wav").rttm == tmp_path / "x.y.rttm"


class TestAtomicWrite:
    def test_writes_and_creates_folders(self, tmp_path: Path) -> None:
        """The target's folders are created and no temporary file is left behind."""
        target = tmp_path / "a/b/out.json"
        atomic_write(target, b"new")
        assert target.read_bytes() == b"new"
        assert files_in(tmp_path) == ["a/b/out.json"]

    def test_replaces_existing(self, tmp_path: Path) -> None:
        """An existing file is replaced whole."""
        target = tmp_path / "out.json"
        target.write_bytes(b"old content that is longer")
        atomic_write(target, b"new")
        assert target.read_bytes() == b"new" and files_in(tmp_path) == ["out.json"]

    def test_mode_is_readable_not_world_writable(self, tmp_path: Path) -> None:
        """Files get mode 0o644: readable by the team, never world-writable."""
        target = tmp_path / "out.rttm"
        atomic_write(target, b"x")
        mode = stat.S_IMODE(target.stat().st_mode)
        assert mode == FILE_MODE == 0o644
        assert not mode & stat.S_IWOTH

    @pytest.mark.parametrize("failing", ["replace", "fsync", "chmod"])
    def test_failure_keeps_old_content(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
        """If writing fails midway the old file is untouched, no temporary file remains, and the error propagates."""
        target = tmp_path / "out.json"
        target.write_bytes(b"old")

        def boom(*args: Any, **kwargs: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, failing, boom)
        with pytest.raises(OSError, match="No space left"):
            atomic_write(target, b"new")
        monkeypatch.undo()
        assert target.read_bytes() == b"old"
        assert files_in(tmp_path) == ["out.json"]

    def test_a_crash_mid_write_leaves_a_temporary_that_the_next_start_sweeps(self, tmp_path: Path) -> None:
        """A write killed before its rename leaves a hidden temporary: only old ones are removed (a young one
        may be another host's write in progress), and nothing else is touched."""
        atomic_write(tmp_path / "sub/keep.json", b"{}")
        old = tmp_path / "sub" / ".meeting.json.abc123.diarist-tmp"
        young = tmp_path / ".meeting.rttm.def456.diarist-tmp"
        user = tmp_path / ".notes.tmp"
        for path in (old, young, user):
            path.write_bytes(b"part")
        os.utime(old, (1000.0, 1000.0))
        assert sweep_temporaries(tmp_path, older_than=2000.0) == 1
        assert not old.exists() and young.exists() and user.exists() and (tmp_path / "sub/keep.json").exists()
        assert sweep_temporaries(tmp_path / "missing", older_than=2000.0) == 0


class TestWriteResult:
    def test_writes_rttm_and_json_and_clears_sidecars(self, tmp_path: Path) -> None:
        """write_result writes the RTTM and JSON and removes a stale .status.json and .error.json."""
        paths = OutputPaths.for_input(tmp_path, SOURCE.relative_path)
        for stale in (paths.status, paths.error):
            stale.parent.mkdir(parents=True, exist_ok=True)
            stale.write_text("{}")
        segs = [Segment(0.5, 2.0, "SPEAKER_00"), Segment(2.0, 3.25, "SPEAKER_01")]
        doc = document(segs)
        write_result(paths, doc)
        assert files_in(tmp_path) == ["a/team meeting.json", "a/team meeting.rttm"]
        assert parse_rttm(paths.rttm.read_text()) == ("team_meeting", segs)
        assert validate_result(json.loads(paths.json.read_bytes())) == doc

    def test_without_sidecars(self, tmp_path: Path) -> None:
        """Missing sidecars are not an error."""
        paths = OutputPaths.for_input(tmp_path, "x.wav")
        write_result(paths, document([]))
        assert files_in(tmp_path) == ["x.json", "x.rttm"]
        assert paths.rttm.read_text() == ""
