"""Submit one batch of cloud-bound files: stage code, inputs and a manifest, then start the Job.

Staging layout in the private dataset repo (content-addressed, so a retry or a second host re-uses what is
already there)::

    code/<wheel sha256[:16]>/diarist-<version>-py3-none-any.whl
    inputs/<sha256><ext>
    batches/<batch id>/manifest.json
    jobs/<job id>/<sha256>/result.json | result.rttm | error.json      (written by the job)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diarist.handlers.cloud_code import Wheel, build_wheel
from diarist.handlers.cloud_hub import Hub, JobSnapshot
from diarist.handlers.cloud_manifest import Manifest, ManifestItem
from diarist.handlers.engine_settings import EngineSettings, TranscriptionSettings

BOOTSTRAP = Path(__file__).with_name("cloud_bootstrap.py")
APP_LABEL = "diarist"


@dataclass(frozen=True)
class JobItem:
    sha256: str
    local_path: Path
    name: str
    relative_path: str
    task: str
    speakers: dict[str, int] = field(default_factory=dict)
    route: dict[str, Any] = field(default_factory=dict)
    language: str = "en"


@dataclass(frozen=True)
class JobSpec:
    batch_id: str
    host: str
    flavor: str
    timeout_seconds: int
    image: str
    models: EngineSettings
    items: tuple[JobItem, ...]
    telemetry: bool = False
    transcription: TranscriptionSettings = field(default_factory=TranscriptionSettings)

    def manifest(self) -> Manifest:
        return Manifest(
            batch=self.batch_id,
            flavor=self.flavor,
            models=self.models,
            telemetry=self.telemetry,
            transcription=self.transcription,
            items=tuple(
                ManifestItem(
                    sha256=i.sha256,
                    input=input_path(i.sha256, i.name),
                    name=i.name,
                    relative_path=i.relative_path,
                    task=i.task,
                    speakers=dict(i.speakers),
                    route=dict(i.route),
                    language=i.language,
                )
                for i in self.items
            ),
        )


def input_path(sha256: str, name: str) -> str:
    ext = Path(name).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", ext):
        ext = ""
    return f"inputs/{sha256}{ext}"


def manifest_path(batch_id: str) -> str:
    return f"batches/{batch_id}/manifest.json"


def staged_sha(path: str) -> str | None:
    """The content sha256 of a staged input's path (its large-file id on the Hub), None for other paths."""
    match = re.fullmatch(r"inputs/([0-9a-f]{64})(\.[a-z0-9]{1,8})?", path)
    return match.group(1) if match else None


def is_manifest(path: str) -> bool:
    return re.fullmatch(r"batches/[^/]+/manifest\.json", path) is not None


def wheel_path(wheel: Wheel) -> str:
    return f"code/{wheel.sha256[:16]}/{wheel.filename}"


def label_value(text: str) -> str:
    """Label values are short identifiers on the Hub: keep [A-Za-z0-9._-], at most 63 characters."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63] or "-"


def job_labels(spec: JobSpec) -> dict[str, str]:
    return {
        "app": APP_LABEL,
        "sha": spec.items[0].sha256[:40],
        "host": label_value(spec.host),
        "batch": spec.batch_id,
        "files": str(len(spec.items)),
    }


class Submitter:
    """Stages and starts jobs on one Hub namespace. The wheel is built once per process."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self._wheel: Wheel | None = None

    @property
    def wheel(self) -> Wheel:
        if self._wheel is None:
            self._wheel = build_wheel()
        return self._wheel

    def stage(self, spec: JobSpec, *, attempts: int = 3) -> list[str]:
        """Upload what the job needs that is not there yet; returns the staged paths the job owns.

        What is already staged (content-addressed) is not sent again. The commit is bound to the head it was
        decided on: if a clean-up (this host's or another's) changed the repo meanwhile, it decides again, so
        that a manifest never names an input that was deleted under it."""
        self.hub.ensure_repo()
        code = wheel_path(self.wheel)
        owned = sorted({manifest_path(spec.batch_id), *(input_path(i.sha256, i.name) for i in spec.items)})

        def commit(head: str, present: dict[str, str | None]) -> None:
            files: dict[str, bytes | Path] = {} if code in present else {code: self.wheel.data}
            for item in spec.items:
                path = input_path(item.sha256, item.name)
                if path not in files and path not in present:
                    files[path] = item.local_path
            files[manifest_path(spec.batch_id)] = json.dumps(spec.manifest().to_json(), indent=2).encode()
            self.hub.upload(files, f"diarist: stage batch {spec.batch_id} ({len(spec.items)} file(s))", parent=head)

        self.hub.on_head(commit, attempts=attempts)
        return owned

    def start(self, spec: JobSpec) -> JobSnapshot:
        """Start the job; the token travels as a secret only, never in env or labels."""
        command = [
            "python",
            "-c",
            BOOTSTRAP.read_text(encoding="utf-8"),
            self.hub.repo,
            wheel_path(self.wheel),
            manifest_path(spec.batch_id),
        ]
        return self.hub.run_job(
            image=spec.image,
            command=command,
            secrets={"HF_TOKEN": self.hub.token},
            flavor=spec.flavor,
            timeout=spec.timeout_seconds,
            labels=job_labels(spec),
            name=f"diarist-{spec.batch_id}",
        )
