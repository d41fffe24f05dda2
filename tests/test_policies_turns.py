"""Which stretches speech recognition hears (diarist.policies.turns): merged turns, long ones split at pauses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.policies.turns import plan_turns, speaker_turns, split_at_pauses


class TestSpeakerTurns:
    def test_a_breath_inside_one_speakers_sentence_is_one_turn(self) -> None:
        segs = [(0.0, 2.0, "A"), (2.4, 4.0, "A"), (4.5, 6.0, "B"), (6.1, 7.0, "A")]
        turns = speaker_turns(segs, merge_gap=1.0)
        assert [(t.start, t.end, t.speaker) for t in turns] == [(0.0, 4.0, "A"), (4.5, 6.0, "B"), (6.1, 7.0, "A")]

    def test_a_long_silence_separates_turns_of_one_speaker(self) -> None:
        turns = speaker_turns([(0.0, 1.0, "A"), (3.0, 4.0, "A")], merge_gap=1.0)
        assert len(turns) == 2

    def test_a_sliver_of_another_voice_does_not_cut_a_turn(self) -> None:
        segs = [(0.0, 5.0, "A"), (5.0, 5.1, "B"), (5.1, 9.0, "A"), (9.5, 9.6, "C")]
        turns = speaker_turns(segs, merge_gap=1.0, min_seconds=0.3)
        assert [(t.start, t.end, t.speaker) for t in turns] == [(0.0, 9.0, "A")]

    def test_unsorted_and_empty_segments(self) -> None:
        turns = speaker_turns([(5.0, 6.0, "B"), (1.0, 1.0, "A"), (0.0, 2.0, "A")], merge_gap=0.5)
        assert [(t.start, t.speaker) for t in turns] == [(0.0, "A"), (5.0, "B")]


class TestSplit:
    def test_a_turn_that_fits_is_one_piece(self) -> None:
        assert split_at_pauses(1.0, 9.0, max_seconds=10.0, energy=[1.0] * 400, hop=0.05) == [(1.0, 9.0)]

    def test_cut_at_the_quietest_frame_in_the_second_half_of_the_window(self) -> None:
        energy = [1.0] * 1000
        energy[int(7.0 / 0.05)] = 0.0  # a pause at 7 s
        energy[int(2.0 / 0.05)] = 0.0  # quieter earlier, but too early: a piece of 2 s wastes the window
        pieces = split_at_pauses(0.0, 25.0, max_seconds=10.0, energy=energy, hop=0.05)
        assert pieces[0][1] == pytest.approx(7.025)
        assert pieces[0][0] == 0.0 and pieces[-1][1] == 25.0

    def test_energy_shorter_than_the_turn_still_gives_bounded_pieces(self) -> None:
        pieces = split_at_pauses(0.0, 30.0, max_seconds=8.0, energy=[], hop=0.05)
        assert all(b - a <= 8.0 for a, b in pieces) and pieces[-1][1] == 30.0

    def test_bad_window_is_refused(self) -> None:
        with pytest.raises(ValueError):
            split_at_pauses(0.0, 1.0, max_seconds=0.0, energy=[], hop=0.05)

    def test_a_turn_a_rounding_error_longer_than_the_window_is_one_piece(self) -> None:
        """31.0 + 1.00001 - 31.0 is a hair above 1.00001 in floating point: no empty piece at the end."""
        assert split_at_pauses(31.0, 32.00001, max_seconds=1.00001, energy=[], hop=0.05) == [(31.0, 32.00001)]

    @given(
        start=st.floats(0, 100),
        length=st.floats(0.1, 300),
        window=st.floats(1, 30),
        energy=st.lists(st.floats(0, 1), max_size=3000),
    )
    def test_pieces_tile_the_turn_within_the_window(self, start, length, window, energy) -> None:
        pieces = split_at_pauses(start, start + length, max_seconds=window, energy=energy, hop=0.05)
        assert pieces[0][0] == start and pieces[-1][1] == start + length
        assert all(a < b and b - a <= window + 1e-9 for a, b in pieces)
        assert all(p[1] == q[0] for p, q in zip(pieces, pieces[1:], strict=False))


def test_plan_turns_gives_each_turn_its_pieces() -> None:
    turns = plan_turns([(0.0, 45.0, "A"), (46.0, 50.0, "B")], merge_gap=1.0, max_seconds=20.0, energy=[], hop=0.05)
    assert [len(t.pieces) for t in turns] == [3, 1]
    assert turns[1].pieces == ((46.0, 50.0),)
