"""Collect what a finished job left in the staging repo, and clean the staging repo up afterwards."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from diarist.handlers.cloud_hub import Hub
from diarist.handlers.cloud_manifest import CLOUD_BACKEND, Manifest, result_folder
from diarist.handlers.cloud_submit import is_manifest, staged_sha
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


def cleanup(hub: Hub, job_id: str | None, staged: list[str], *, attempts: int = 3) -> None:
    """Delete the job's results folder and the staged paths the batch owned (inputs, manifest), then make
    them unretrievable: the history is squashed and the stored audio permanently deleted.

    Several hosts may share the staging repo, and one recording can be in two batches: an input that another
    batch's manifest at head still lists stays. The delete is bound to the head it was decided on, so a batch
    staged in the meantime makes it decide again."""
    if not staged and not job_id:
        return  # nothing was staged and no job ran: nothing of this batch is on the Hub
    folder = f"jobs/{job_id}/" if job_id else None

    def commit(head: str, files: dict[str, str | None]) -> tuple[set[str], dict[str, str | None], set[str]]:
        needed = _inputs_listed(hub, head, [p for p in files if is_manifest(p) and p not in staged])
        doomed = [p for p in staged if p in files and p not in needed]
        folders = [folder] if folder and any(p.startswith(folder) for p in files) else []
        hub.delete(doomed, folders, f"diarist: clean up after {job_id or 'an unstarted batch'}", parent=head)
        return needed, files, set(doomed) | {p for p in files if folder and p.startswith(folder)}

    needed, files, gone = hub.on_head(commit, attempts=attempts)
    large = {sha for p in staged if p not in needed and (sha := staged_sha(p))}
    hub.forget(large, keep={oid for p, oid in files.items() if oid and p not in gone})


def _inputs_listed(hub: Hub, head: str, manifests: list[str]) -> set[str]:
    listed: set[str] = set()
    for path in manifests:
        raw = hub.read(path, revision=head)
        try:
            listed.update(item.input for item in Manifest.from_json(json.loads(raw or b"")).items)
        except (ValueError, KeyError, TypeError):
            # a manifest diarist cannot read is not one of its batches' (or is broken): it protects nothing
            continue
    return listed
