"""What the ledger says about files and cloud jobs, as plain documents: the HTTP API, the dashboard and
``diarist jobs`` show the same thing. Reading only, except ``cancel_job``, which ``diarist cancel`` and
``DELETE /v1/jobs/{id}`` share."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diarist.daemon.config import InboxSettings
from diarist.daemon.ledger import ONESHOT_PREFIX, FileRow, JobRow, JobState, Ledger, State
from diarist.daemon.outcomes import stem_of
from diarist.handlers.errors import DiaristError
from diarist.handlers.results import OutputPaths
from diarist.policies.budget import settle_cost
from diarist.policies.pricing import FALLBACK_PRICES
from diarist.policies.request import InboxDefaults, question

#: file states a person thinks of as "in flight"
IN_FLIGHT = (State.STABLE, State.CLAIMED, State.RUNNING, State.QUEUED, State.SUBMITTED)


def file_user(row: FileRow, inboxes: Mapping[str, InboxSettings]) -> str | None:
    inbox = inboxes.get(row.inbox)
    return question(row.request(), inbox.defaults() if inbox else InboxDefaults()).user


def shown_state(row: FileRow) -> str:
    """``deferred`` for a cloud file held back by a budget cap (the ledger says queued)."""
    if row.state is State.QUEUED and (row.route_reason or "").startswith("deferred:"):
        return "deferred"
    return row.state.value


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def outputs(row: FileRow, inboxes: Mapping[str, InboxSettings]) -> OutputPaths | None:
    inbox = inboxes.get(row.inbox)
    return OutputPaths.for_stem(inbox.outbox, stem_of(row)) if inbox else None


def file_view(row: FileRow, inboxes: Mapping[str, InboxSettings]) -> dict[str, Any]:
    """One file: where it is, how far, which route and why, what went wrong and what to do."""
    paths = outputs(row, inboxes)
    status = _read_json(paths.status) if paths and row.state in IN_FLIGHT else None
    problem = _read_json(paths.error) if paths and row.state is State.FAILED else None
    progress = 1.0 if row.state is State.DONE else (status or {}).get("progress")
    return {
        "id": row.id,
        "name": row.rel_path,
        "inbox": row.inbox,
        "state": shown_state(row),
        "progress": progress,
        "step": (status or {}).get("step"),
        "route": row.route,
        "route_reason": row.route_reason,
        "task": row.task,
        "user": file_user(row, inboxes),
        "sha256": row.sha256,
        "size": row.size,
        "duration": row.duration,
        "flavor": row.flavor,
        "batch_id": row.batch_id,
        "error": ({k: problem.get(k) for k in ("kind", "message", "hint")} if problem else {"message": row.error})
        if row.state is State.FAILED
        else None,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "result": f"/v1/files/{row.id}/result" if row.state is State.DONE else None,
    }


def daemon_files(ledger: Ledger, *, states: tuple[str, ...] = (), limit: int = 1000) -> list[FileRow]:
    """The daemon's files, newest first (one-shot runs' rows are theirs, not the daemon's)."""
    where, args = ["inbox not like ?"], [ONESHOT_PREFIX + "%"]
    if states:
        where.append(f"state in ({', '.join('?' * len(states))})")
        args.extend(states)
    rows = ledger.db.query(f"select * from files where {' and '.join(where)} order by id desc limit ?", [*args, limit])
    return [FileRow.from_row(r) for r in rows]


def job_view(
    job: JobRow,
    files: list[FileRow],
    *,
    now: float,
    inspect: Callable[[str], tuple[str, float | None]] | None = None,
) -> dict[str, Any]:
    """One cloud job. ``inspect`` (the Hub's live stage and running seconds) when asked; else the ledger's."""
    stage, running = job.stage or job.state.value, job.running_seconds
    if inspect is not None and job.job_id and job.state is JobState.IN_FLIGHT:
        try:
            stage, running = inspect(job.job_id)
        except DiaristError:
            pass
    prices = {p.name: p for p in FALLBACK_PRICES}
    cost = job.cost_usd
    if cost is None and running is not None and job.flavor in prices:
        cost = str(settle_cost(running, prices[job.flavor]))
    return {
        "job_id": job.job_id or f"(batch {job.batch_id}, not started)",
        "batch_id": job.batch_id,
        "state": job.state.value,
        "files": [f.rel_path for f in files],
        "file_ids": [f.id for f in files],
        "stage": stage,
        "flavor": job.flavor,
        "user": job.user,
        "age_seconds": round(now - job.created_at),
        "running_seconds": running,
        "cost_usd": cost,
        "reserve_usd": job.reserve_usd if job.state.value in ("submitting", "in-flight") else None,
        "url": job.url,
        "message": job.message,
    }


def job_views(
    ledger: Ledger,
    inboxes: Mapping[str, InboxSettings],
    *,
    user: str | None = None,
    include_closed: bool = False,
    inspect: Callable[[str], tuple[str, float | None]] | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Cloud jobs, newest first; with ``user``, those holding a file of that user's."""
    now = time.time() if now is None else now
    views = []
    for job in ledger.jobs(include_closed=include_closed):
        files = ledger.job_files(job.batch_id)
        if user and job.user != user and not any(file_user(f, inboxes) == user for f in files):
            continue
        views.append(job_view(job, files, now=now, inspect=inspect))
    return views


@dataclass(frozen=True)
class Canceled:
    job_id: str
    #: the ledger's job, None for one it does not know (an orphan)
    job: JobRow | None


def cancel_job(ledger: Ledger | None, ident: str, cancel: Callable[[str], None]) -> Canceled:
    """Cancel a job by its Hub id or batch id. The ledger learns that the user did it before the Hub is asked:
    a running daemon may poll the job the moment it is canceled, and its files' reason must then say so."""
    job = ledger.job_by_hub_id(ident) if ledger else None
    job_id = job.job_id if job is not None and job.job_id else ident
    if ledger is not None and job is not None:
        ledger.update_job(job.batch_id, cancel_requested="canceled by the user (diarist cancel)")
    try:
        cancel(job_id)
    except BaseException:
        if ledger is not None and job is not None:  # not canceled after all: take the request back
            ledger.update_job(job.batch_id, cancel_requested=job.cancel_requested)
        raise
    return Canceled(job_id, job)
