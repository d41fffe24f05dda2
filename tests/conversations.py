"""Conversations built from real single-speaker recordings (the dev set's ``voices/``), with an exact reference.

Turns alternate between speakers (each turn one recording, trimmed to where its voice is, at 16 kHz),
separated by pauses of 0.3-0.9 s; the RTTM gives each turn's exact span. Used by the accuracy benchmark
and the accuracy tests; the voices are real people, so DER on these means something, unlike espeak-ng.
"""

from __future__ import annotations

import random
import wave
from collections.abc import Collection
from pathlib import Path

import numpy as np

RATE = 16000


def _load(path: Path) -> np.ndarray:
    from diarist.handlers.audio import decode, to_float

    return to_float(decode(path))


def _trim(x: np.ndarray, floor_db: float = -35.0) -> np.ndarray:
    """The part between the first and last 20 ms frame within ``floor_db`` of the loudest one."""
    frame = RATE // 50
    n = len(x) // frame
    if n == 0:
        return x
    energy = 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy > energy.max() + floor_db)
    return x[loud[0] * frame : (loud[-1] + 1) * frame]


def speaker_clips(folder: Path) -> dict[str, list[Path]]:
    """Recordings by speaker: ``ASR_spk1_*`` are speaker spk1, each other prefix (e.g. ``TTS_LJ…``) its own."""
    clips: dict[str, list[Path]] = {}
    for wav in sorted(folder.glob("*.wav")):
        speaker = wav.stem.split("_")[1] if wav.stem.startswith("ASR_") else wav.stem.split("_")[0]
        clips.setdefault(speaker, []).append(wav)
    return clips


def build_conversation(
    folder: Path, speakers: int, audio: Path, rttm: Path, *, seed: int = 0, only: Collection[str] | None = None
) -> list[tuple[str, str]]:
    """Write a conversation of ``speakers`` voices (every clip of each used once, turns alternating) to
    ``audio`` (16 kHz WAV) and its reference to ``rttm``; ``only``: the clip stems to use. Returns the turns
    as (speaker, clip stem), in order."""
    rng = random.Random(seed)
    voices = dict(list(speaker_clips(folder).items())[:speakers])
    if len(voices) < speakers:
        raise ValueError(f"{folder} has {len(voices)} speakers, {speakers} wanted")
    queues = {
        s: [(p.stem, _trim(_load(p))) for p in paths if only is None or p.stem in only] for s, paths in voices.items()
    }
    for q in queues.values():
        rng.shuffle(q)
    parts, lines, t, last = [np.zeros(int(0.5 * RATE), dtype=np.float32)], [], 0.5, None
    order: list[tuple[str, str]] = []
    while any(queues.values()):
        choices = [s for s, q in queues.items() if q and s != last] or [s for s, q in queues.items() if q]
        speaker = rng.choice(choices)
        stem, clip = queues[speaker].pop()
        order.append((speaker, stem))
        lines.append(f"SPEAKER {audio.stem} 1 {t:.3f} {len(clip) / RATE:.3f} <NA> <NA> {speaker} <NA> <NA>")
        pause = np.zeros(int(rng.uniform(0.3, 0.9) * RATE), dtype=np.float32)
        parts += [clip.astype(np.float32), pause]
        t += (len(clip) + len(pause)) / RATE
        last = speaker
    audio.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(np.concatenate(parts), -1.0, 1.0 - 1 / 32768) * 32768).astype("<i2")
    with wave.open(str(audio), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.tobytes())
    rttm.write_text("\n".join(lines) + "\n")
    return order


def transcripts(folder: Path) -> dict[str, str]:
    """``transcripts.csv``: clip stem -> the words spoken in it, with one correction. The file gives
    ``ASR_spk2_snt5`` the words "ken pairs lack full flavor", which are spoken in ``ASR_spk2_snt6`` (not
    listed); snt5 says something else entirely ("jump the fence and hurry up the bank"): an off-by-one in
    the source annotations, so the line is moved to snt6."""
    import csv

    with open(folder / "transcripts.csv", newline="") as f:
        refs = {Path(row["file"]).stem: row["text"] for row in csv.DictReader(f)}
    if "ASR_spk2_snt5" in refs and "ASR_spk2_snt6" not in refs:
        refs["ASR_spk2_snt6"] = refs.pop("ASR_spk2_snt5")
    return refs
