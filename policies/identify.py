"""Which found speaker is which known voice: cosine similarity of speaker centroids to enrolled voiceprints,
one-to-one, above a threshold (pure: vectors in, names out)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: a voiceprint needs at least this much of the person's speech (an embedding of a few words is unreliable)
MIN_ENROL_SECONDS = 5.0
#: cosine similarity a speaker needs to be given a name (calibrated on the dev set: benchmarks/identify.py)
DEFAULT_THRESHOLD = 0.72


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def assign(
    speakers: Mapping[str, Sequence[float]], prints: Mapping[str, Sequence[float]], threshold: float
) -> dict[str, tuple[str, float]]:
    """``{label: (name, similarity)}`` for the speakers that get a name: the most similar (speaker, voiceprint)
    pair first, each speaker and each name used once, pairs below ``threshold`` never."""
    pairs = sorted(
        ((cosine(vec, ref), label, name) for label, vec in speakers.items() for name, ref in prints.items()),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    named: dict[str, tuple[str, float]] = {}
    used: set[str] = set()
    for score, label, name in pairs:
        if score < threshold:
            break
        if label in named or name in used:
            continue
        named[label] = (name, score)
        used.add(name)
    return named


def average(vectors: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """The speech-weighted mean of unit-length vectors (a voiceprint from several clips)."""
    if not vectors or len(vectors) != len(weights):
        raise ValueError("one weight per vector, at least one vector")
    dim = len(vectors[0])
    total = [0.0] * dim
    for vec, w in zip(vectors, weights, strict=True):
        norm = math.sqrt(sum(x * x for x in vec)) or 1.0
        for i, x in enumerate(vec):
            total[i] += w * x / norm
    norm = math.sqrt(sum(x * x for x in total)) or 1.0
    return [x / norm for x in total]
