"""Put names on known voices in a result document: its speaker centroids against the enrolled voiceprints of
the same embedding model (``policies.identify.assign``: one-to-one, above a threshold)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from diarist.handlers.results import read_centroids
from diarist.policies.identify import assign


def centroid_model(doc: Mapping[str, Any]) -> str | None:
    block = doc.get("centroids")
    return block.get("model") if isinstance(block, dict) else None


def identify(
    doc: dict[str, Any], prints: Mapping[str, Sequence[float]], *, threshold: float, labels: str
) -> dict[str, Any]:
    """A copy of ``doc`` whose matched speakers carry ``identity: {name, score}``, with an ``identify`` block
    saying how (``labels``: "names" makes RTTM and exports use the names). Unmatched speakers keep their
    generic label; a document without centroids, or no voiceprints, is returned unchanged."""
    centroids = read_centroids(doc)
    if not centroids or not prints:
        return doc
    names = assign({k: v.tolist() for k, v in centroids.items()}, prints, threshold)
    out = copy.deepcopy(doc)
    for speaker in out["speakers"]:
        speaker.pop("identity", None)
        match = names.get(speaker["label"])
        if match:
            speaker["identity"] = {"name": match[0], "score": round(match[1], 3)}
    out["identify"] = {
        "labels": labels,
        "threshold": threshold,
        "model": centroid_model(doc),
        "voiceprints": len(prints),
        "named": len(names),
    }
    return out
