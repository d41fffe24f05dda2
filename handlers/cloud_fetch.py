"""Collect what a finished job left in the staging repo, and clean the staging repo up afterwards."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from diarist.handlers.cloud_hub import Hub
from diarist.handlers.cloud_manifest import CLOUD_BACKEND, result_folder
from diarist.handlers.results import validate_result


@dataclass(frozen=True)
class Fetched:
    """One input's answer: a result document, a per-input error from the job, or neither (missing)."""

    sha256: str
    doc: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def missing(self) -> bool:
        return self.doc is None and self.error is None


def fetch_one(hub: Hub, job_id: str, sha256: str) -> Fetched:
    folder = result_folder(job_id, sha256)
    raw = hub.read(f"{folder}/result.json")
    if raw is not None:
        try:
            return Fetched(sha256, doc=validate_result(json.loads(raw)))
        except ValueError as e:  # json.JSONDecodeError is a ValueError too
            return Fetched(sha256, error={"kind": "cloud", "message": f"the job's result.json is invalid: {e}"})
    raw = hub.read(f"{folder}/error.json")
    if raw is not None:
        try:
            error = json.loads(raw)
        except ValueError as e:
            error = None
            why = str(e)
        else:
            why = "not a JSON object"
        if not isinstance(error, dict):  # callers read it with .get(); a bad one must not stall the batch
            return Fetched(sha256, error={"kind": "cloud", "message": f"the job's error.json is invalid: {why}"})
        return Fetched(sha256, error=error)
    return Fetched(sha256)


def label_result(doc: dict[str, Any], *, job_id: str, url: str, flavor: str, running_seconds: float | None) -> None:
    """What only the daemon knows once the job is over: where it ran and for how long."""
    doc["engine"].update(
        backend=CLOUD_BACKEND,
        job_id=job_id,
        job_url=url,
        flavor=flavor,
        running_seconds=running_seconds,
    )


def cleanup(hub: Hub, job_id: str | None, staged: list[str]) -> None:
    """Delete the job's results folder and the staged paths the batch owned (inputs, manifest)."""
    folders = [f"jobs/{job_id}"] if job_id else []
    present = set(hub.list_files())
    hub.delete(
        [p for p in staged if p in present],
        [f for f in folders if any(p.startswith(f + "/") for p in present)],
        f"diarist: clean up after {job_id or 'an unstarted batch'}",
    )
