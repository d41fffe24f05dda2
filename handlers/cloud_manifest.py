"""The batch manifest: what the daemon tells a cloud job to do, written and read in this one place.

Stdlib only: the job reads it with the same code the daemon wrote it with, before any model is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from diarist.handlers.engine_settings import EngineSettings, TranscriptionSettings

MANIFEST_SCHEMA = "diarist.job/1"
#: ``engine.backend`` of a result computed in a Hugging Face Job
CLOUD_BACKEND = "hf-jobs"


def result_folder(job_id: str, sha256: str) -> str:
    """Where the job uploads one input's ``result.json``/``result.rttm`` or ``error.json``."""
    return f"jobs/{job_id}/{sha256}"


@dataclass(frozen=True)
class ManifestItem:
    sha256: str
    #: the staged audio's path in the staging repo
    input: str
    name: str
    relative_path: str
    task: str
    speakers: dict[str, int] = field(default_factory=dict)
    route: dict[str, Any] = field(default_factory=dict)
    #: the spoken language (task transcribe)
    language: str = "en"


@dataclass(frozen=True)
class Manifest:
    batch: str
    flavor: str
    models: EngineSettings
    items: tuple[ManifestItem, ...]
    telemetry: bool = False
    transcription: TranscriptionSettings = field(default_factory=TranscriptionSettings)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "batch": self.batch,
            "flavor": self.flavor,
            "models": self.models.to_json(),
            "transcription": self.transcription.to_json(),
            "telemetry": self.telemetry,
            "items": [asdict(i) for i in self.items],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        """Raises ``ValueError`` on a manifest of another schema (a wheel older or newer than the daemon)."""
        if doc.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(f"unknown manifest schema {doc.get('schema')!r}; this wheel speaks {MANIFEST_SCHEMA}")
        return cls(
            batch=doc["batch"],
            flavor=doc["flavor"],
            models=EngineSettings.from_json(doc["models"]),
            transcription=TranscriptionSettings.from_json(doc.get("transcription", {})),
            telemetry=bool(doc.get("telemetry", False)),
            items=tuple(ManifestItem(**i) for i in doc["items"]),
        )
