"""Choosing an output name: two inputs never write over each other's results."""

from __future__ import annotations

import json
from pathlib import Path

from diarist.handlers.outbox import reserve_stem


def result(outbox: Path, stem: str, rel: str) -> None:
    path = outbox / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"source": {"relative_path": rel}}))


def status(outbox: Path, stem: str, rel: str) -> None:
    (outbox / f"{stem}.status.json").write_text(json.dumps({"file": rel}))


class TestReserveStem:
    def test_an_empty_outbox_gives_the_input_its_name(self, tmp_path):
        """Nothing there: the stem is the file name without extension."""
        assert reserve_stem(tmp_path / "missing", "sub/meeting.wav") == "sub/meeting"

    def test_the_same_input_keeps_its_name(self, tmp_path):
        """A re-drop of the same file replaces its own older result."""
        result(tmp_path, "meeting", "meeting.wav")
        assert reserve_stem(tmp_path, "meeting.wav") == "meeting"

    def test_another_extension_gets_a_numbered_name(self, tmp_path):
        """meeting.wav and meeting.mp3 both want meeting.*: the second gets meeting (2)."""
        result(tmp_path, "meeting", "meeting.wav")
        assert reserve_stem(tmp_path, "meeting.mp3") == "meeting (2)"

    def test_names_differing_only_in_case_clash(self, tmp_path):
        """On a case-insensitive share Meeting.json is meeting.json: treated as taken everywhere."""
        status(tmp_path, "Meeting", "Meeting.wav")
        assert reserve_stem(tmp_path, "meeting.wav") == "meeting (2)"

    def test_storable_names_that_collide_are_told_apart(self, tmp_path):
        """``a:b.wav`` and ``a_b.wav`` both become ``a_b``: the later one is numbered."""
        result(tmp_path, "a_b", "a:b.wav")
        assert reserve_stem(tmp_path, "a_b.wav") == "a_b (2)"
        assert reserve_stem(tmp_path, "a:b.wav") == "a_b"

    def test_a_foreign_json_counts_as_taken(self, tmp_path):
        """A file the user put there is never overwritten."""
        (tmp_path / "meeting.json").write_text("not ours")
        assert reserve_stem(tmp_path, "meeting.wav") == "meeting (2)"

    def test_skips_every_taken_number(self, tmp_path):
        """The first free number wins."""
        result(tmp_path, "m", "m.wav")
        result(tmp_path, "m (2)", "m.flac")
        assert reserve_stem(tmp_path, "m.mp3") == "m (3)"
