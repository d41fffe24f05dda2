"""Who said what: speech recognition of each speaker turn of a diarization, in the same file pass.

Turns come from the exclusive diarization (one speaker at a time, so overlapped speech is heard once, by
the speaker pyannote gives it to); ``policies.turns`` merges a speaker's neighbouring segments and splits
long turns at their quietest moments to fit the recogniser's window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from diarist.handlers.asr import SAMPLE_RATE, Transcriber
from diarist.handlers.audio import to_float
from diarist.handlers.engine import Segment
from diarist.policies.turns import plan_turns

#: a speaker's segments closer than this (no one else between) are one turn
MERGE_GAP = 1.0
#: energy frames for choosing where to split a long turn
HOP = 0.05
#: a segment shorter than this is not a turn (it stays in the diarization's segments), and a piece of a long
#: turn shorter than this is not sent to the recogniser (it hallucinates words into a cough)
MIN_PIECE = 0.3
#: context added at each end of a piece: turn boundaries fall on word edges, and a clipped edge loses the word
PAD = 0.15


@dataclass(frozen=True)
class SpokenTurn:
    start: float
    end: float
    speaker: str
    text: str


@dataclass(frozen=True)
class Transcript:
    turns: tuple[SpokenTurn, ...]
    model: str
    language: str
    seconds: float

    def text(self) -> str:
        """One line per turn, ``SPEAKER: words`` (turns without words left out)."""
        return "".join(f"{t.speaker}: {t.text}\n" for t in self.turns if t.text)


def energy_envelope(samples: np.ndarray, hop: float = HOP, block: int = 60 * SAMPLE_RATE) -> np.ndarray:
    """Mean square per ``hop``-second frame (the last partial frame dropped), a minute at a time so that a
    long recording is never copied whole as floats."""
    frame = int(hop * SAMPLE_RATE)
    n = len(samples) // frame
    block -= block % frame
    parts = []
    for at in range(0, n * frame, block):
        x = to_float(samples[at : min(at + block, n * frame)]).reshape(-1, frame)
        parts.append(np.mean(x * x, axis=1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def transcribe_turns(
    samples: np.ndarray,
    segments: Sequence[Segment],
    transcriber: Transcriber,
    language: str,
    progress: Callable[[float], None] | None = None,
) -> Transcript:
    """Recognise every turn of ``segments`` in ``samples`` (16 kHz mono: ``audio.decode``'s 16-bit samples,
    converted a piece at a time, or float32)."""
    started = time.monotonic()
    turns = plan_turns(
        ((s.start, s.end, s.speaker) for s in segments),
        merge_gap=MERGE_GAP,
        max_seconds=transcriber.window - 2 * PAD,
        energy=energy_envelope(samples).tolist(),
        hop=HOP,
        min_seconds=MIN_PIECE,
    )
    total = sum(t.duration for t in turns) or 1.0
    done = 0.0
    spoken: list[SpokenTurn] = []
    for turn in turns:
        words = []
        for start, end in turn.pieces:
            if end - start >= MIN_PIECE:
                lo = max(0, int((start - PAD) * SAMPLE_RATE))
                hi = min(len(samples), int((end + PAD) * SAMPLE_RATE))
                text = transcriber.transcribe(to_float(samples[lo:hi]), language)
                if text:
                    words.append(text)
            done += end - start
            if progress:
                progress(done / total)
        spoken.append(SpokenTurn(round(turn.start, 3), round(turn.end, 3), turn.speaker, " ".join(words)))
    return Transcript(tuple(spoken), transcriber.model_id, language, time.monotonic() - started)
