"""Which stretches of audio speech recognition hears: speaker turns from the diarization, merged and split to
suit an ASR model's window (pure: segments and an energy envelope in, spans out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    """One speaker's stretch of speech; ``pieces`` are the spans the recogniser hears, in order."""

    start: float
    end: float
    speaker: str
    pieces: tuple[tuple[float, float], ...] = ()

    @property
    def duration(self) -> float:
        return self.end - self.start


def speaker_turns(
    segments: Iterable[tuple[float, float, str]], merge_gap: float, min_seconds: float = 0.0
) -> list[Turn]:
    """Time-ordered turns: a speaker's neighbouring segments closer than ``merge_gap`` seconds, with no other
    speaker between them, become one turn (a sentence cut by a breath is recognised as one). Segments shorter
    than ``min_seconds`` are left out first, so a sliver of another voice does not cut a sentence in two."""
    turns: list[Turn] = []
    for start, end, speaker in sorted(segments):
        if end - start <= 0 or end - start < min_seconds:
            continue
        last = turns[-1] if turns else None
        if last is not None and last.speaker == speaker and start - last.end <= merge_gap:
            turns[-1] = Turn(last.start, max(last.end, end), speaker)
        else:
            turns.append(Turn(start, end, speaker))
    return turns


def split_at_pauses(
    start: float, end: float, *, max_seconds: float, energy: Sequence[float], hop: float
) -> list[tuple[float, float]]:
    """``start..end`` in pieces of at most ``max_seconds``, each cut at the quietest frame of ``energy``
    (one value per ``hop`` seconds from time 0) in the second half of the window, where a pause most likely
    falls between words. A turn that fits is one piece."""
    if max_seconds <= 0 or hop <= 0:
        raise ValueError(f"max_seconds and hop must be positive, got {max_seconds} and {hop}")
    pieces: list[tuple[float, float]] = []
    at = start
    while end - at > max_seconds:
        lo, hi = int((at + max_seconds / 2) / hop), int((at + max_seconds) / hop)
        window = [(energy[i], i) for i in range(lo, min(hi, len(energy)))]
        cut = (min(window)[1] + 0.5) * hop if window else at + max_seconds
        cut = min(max(cut, at + hop), at + max_seconds)
        if cut >= end:  # a turn a rounding error longer than the window: no empty last piece
            break
        pieces.append((at, cut))
        at = cut
    pieces.append((at, end))
    return pieces


def plan_turns(
    segments: Iterable[tuple[float, float, str]],
    *,
    merge_gap: float,
    max_seconds: float,
    energy: Sequence[float],
    hop: float,
    min_seconds: float = 0.0,
) -> list[Turn]:
    """Turns with the pieces to recognise: ``speaker_turns`` then ``split_at_pauses`` for the long ones."""
    return [
        Turn(
            t.start,
            t.end,
            t.speaker,
            tuple(split_at_pauses(t.start, t.end, max_seconds=max_seconds, energy=energy, hop=hop)),
        )
        for t in speaker_turns(segments, merge_gap, min_seconds)
    ]
