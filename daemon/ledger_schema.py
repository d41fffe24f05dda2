"""The ledger's tables, created on first open; columns and tables added since are added to older ledgers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import sqlite_utils

from diarist.daemon.ledger_hooks import create_deliveries


class State(StrEnum):
    """A file's state (see ``ledger``'s module doc for the flow)."""

    DISCOVERED = "discovered"
    STABLE = "stable"
    CLAIMED = "claimed"
    RUNNING = "running"
    QUEUED = "queued"
    SUBMITTED = "submitted"
    DONE = "done"
    FAILED = "failed"
    #: given back to the inbox unfinished (stop timeout, or another host took the claim over)
    RELEASED = "released"


#: before the ``cleanups`` table, pending clean-ups were one JSON value in ``kv`` under this key
OLD_CLEANUP_KEY = "cloud.cleanup_pending"

FILE_COLUMNS: dict[str, type] = {
    "id": int,
    "inbox": str,
    "rel_path": str,
    "state": str,
    "sha256": str,
    "size": int,
    "claim_path": str,
    "result_key": str,
    "reused_from": int,
    "inference_runs": int,
    "error": str,
    "task": str,
    "params": str,
    "route": str,
    "route_reason": str,
    "kept_signature": str,
    "created_at": float,
    "updated_at": float,
}
# Columns added with the cloud route; older ledgers get them on open.
FILE_COLUMNS_V2: dict[str, type] = {
    "duration": float,
    "flavor": str,
    "batch_id": str,
    "fallback": str,
    "queued_at": float,
    "out_name": str,
}
JOB_COLUMNS: dict[str, type] = {
    "batch_id": str,
    "job_id": str,
    "state": str,
    "namespace": str,
    "repo": str,
    "flavor": str,
    "stage": str,
    "url": str,
    "host": str,
    "timeout_seconds": int,
    "created_at": float,
    "submitted_at": float,
    "deadline_at": float,
    "finished_at": float,
    "running_seconds": float,
    "est_usd": str,
    "reserve_usd": str,
    "cost_usd": str,
    "message": str,
    "cancel_requested": str,
    "staged": str,
    "audio_seconds": float,
    "user": str,
}


def create_schema(db: sqlite_utils.Database) -> None:
    db.enable_wal()
    tables = set(db.table_names())
    if "files" not in tables:
        db["files"].create(
            {**FILE_COLUMNS, **FILE_COLUMNS_V2},
            pk="id",
            not_null={"inbox", "rel_path", "state"},
            defaults={"inference_runs": 0},
        )
        db["files"].create_index(["state"])
        db["files"].create_index(["sha256"])
        db["files"].create_index(["inbox", "rel_path"])
    for name, kind in FILE_COLUMNS_V2.items():
        if name not in db["files"].columns_dict:  # a ledger from before the cloud route
            db["files"].add_column(name, kind)
    # a keep inbox's rescans ask about every file in it, every few seconds
    db["files"].create_index(["inbox", "kept_signature"], if_not_exists=True)
    if "jobs" not in tables:
        db["jobs"].create(JOB_COLUMNS, pk="batch_id", not_null={"state", "namespace", "repo", "flavor"})
        db["jobs"].create_index(["job_id"])
        db["jobs"].create_index(["state"])
    if "user" not in db["jobs"].columns_dict:
        db["jobs"].add_column("user", str)
    if "kv" not in tables:
        db["kv"].create({"key": str, "value": str, "updated_at": float}, pk="key")
    if "hosts" not in tables:
        db["hosts"].create({"host": str, "pid": int, "started_at": float, "heartbeat_at": float}, pk="host")
    if "events" not in tables:
        db["events"].create({"id": int, "file_id": int, "state": str, "at": float, "detail": str}, pk="id")
        db["events"].create_index(["file_id"])
    if "results" not in tables:
        db["results"].create({"key": str, "file_id": int, "sha256": str, "doc": str, "created_at": float}, pk="key")
    if "voiceprints" not in tables:
        # known voices (biometric data: never logged, never sent anywhere; ``diarist voices remove`` deletes)
        db["voiceprints"].create(
            {"name": str, "model": str, "vector": str, "speech_seconds": float, "clips": int, "created_at": float},
            pk=("name", "model"),
        )
    create_deliveries(db)
    if "cleanups" not in tables:
        # batches whose staged files are still on the Hub because deleting them failed: retried every tick
        db["cleanups"].create({"batch_id": str, "job_id": str, "staged": str, "created_at": float}, pk="batch_id")
        _adopt_old_cleanups(db)


def _adopt_old_cleanups(db: sqlite_utils.Database) -> None:
    row = next(db.query("select value, updated_at from kv where key = ?", [OLD_CLEANUP_KEY]), None)
    if row is None:
        return
    for batch_id, item in json.loads(row["value"]).items():
        db["cleanups"].upsert(
            {
                "batch_id": batch_id,
                "job_id": item.get("job_id"),
                "staged": json.dumps(item.get("staged", [])),
                "created_at": row["updated_at"],
            },
            pk="batch_id",
        )
    db.execute("delete from kv where key = ?", [OLD_CLEANUP_KEY])


def row_to(cls: Any, row: Mapping[str, Any], **parsed: Any) -> Any:
    """One row as the dataclass ``cls`` (columns it does not name are ignored, missing ones are None);
    ``parsed`` replaces raw column values with typed ones (enums)."""
    values = {name: row.get(name) for name in cls.__dataclass_fields__}
    return cls(**{**values, **parsed})


def placeholders(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))
