"""The ``[models]`` choices an engine is built from (stdlib only: the configuration and the cloud manifest
use it without loading numpy or torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineSettings:
    """The same on this machine and in a cloud job (the manifest carries them)."""

    pipeline: str = "bundled"
    device: str = "auto"
    clustering_threshold: float | None = None
    segmentation_batch_size: int = 32
    embedding_batch_size: int = 32
    fast: bool = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> EngineSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})
