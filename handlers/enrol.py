"""A voiceprint from recordings of one person, or from a speaker of a stored result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diarist.handlers import audio
from diarist.handlers.engine import LocalEngine
from diarist.handlers.errors import PermanentFileError
from diarist.handlers.identity import centroid_model
from diarist.handlers.results import read_centroids, read_result
from diarist.policies.flavor import Task
from diarist.policies.identify import MIN_ENROL_SECONDS, average


@dataclass(frozen=True)
class Enrolment:
    model: str
    vector: list[float]
    speech_seconds: float
    clips: int


def _enough(seconds: float, what: str) -> None:
    if seconds < MIN_ENROL_SECONDS:
        raise PermanentFileError(
            f"{what} has {seconds:.1f} s of speech; a voiceprint needs at least {MIN_ENROL_SECONDS:g} s",
            hint="add more recordings of the same person (several short clips add up)",
        )


def from_audio(engine: LocalEngine, files: list[Path]) -> Enrolment:
    """The main voice of each recording (the speaker with the most speech), averaged by speech time."""
    vectors, weights, model = [], [], None
    for path in files:
        waveform = audio.decode(path, audio.probe(path).duration)
        out = engine.run(waveform, uri=path.stem, task=Task.DIARIZATION)
        if out.centroids is None or not out.centroids.vectors:
            raise PermanentFileError(f"{path}: no speech found", hint="enrol from recordings where the person speaks")
        speech: dict[str, float] = {}
        for s in out.segments:
            speech[s.speaker] = speech.get(s.speaker, 0.0) + s.end - s.start
        vectors_of = dict(out.centroids.vectors)
        main = max(vectors_of, key=lambda label: speech.get(label, 0.0))
        vectors.append(list(vectors_of[main]))
        weights.append(speech.get(main, 0.0))
        model = out.centroids.model
    assert model is not None
    _enough(sum(weights), "the recording" if len(files) == 1 else f"the {len(files)} recordings")
    return Enrolment(model, average(vectors, weights), sum(weights), len(files))


def from_result(result: Path, speaker: str) -> Enrolment:
    doc: dict[str, Any] = read_result(result)
    vectors = read_centroids(doc)
    if speaker not in vectors:
        found = ", ".join(sorted(vectors)) or "none (the result has no speaker centroids: re-run it)"
        raise PermanentFileError(f"{result} has no speaker {speaker!r}", hint=f"speakers in it: {found}")
    seconds = next((s["speech_seconds"] for s in doc["speakers"] if s["label"] == speaker), 0.0)
    _enough(seconds, f"{speaker} in {result.name}")
    return Enrolment(str(centroid_model(doc)), average([vectors[speaker].tolist()], [1.0]), seconds, 1)
