"""``diarist submit`` without a running daemon: process the files now, locally or in one cloud job, and wait."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from diarist.daemon import config as cfg
from diarist.daemon.ledger import JobState, Ledger
from diarist.handlers.errors import DiaristError
from diarist.handlers.results import OutputPaths, write_result
from diarist.policies.budget import BudgetCaps, settle_cost
from diarist.policies.flavor import DEFAULT_THROUGHPUT, Task, job_timeout_for
from diarist.policies.jobs import Verdict, judge_job
from diarist.policies.pricing import FALLBACK_PRICES

POLL_SECONDS = 2.0


def run_once(settings: cfg.Settings, files: list[Path], request: dict[str, Any], *, out: Path | None) -> int:
    from diarist.handlers.intake import sha256_of

    cloud = request.get("route") == "cloud"
    failures = 0
    docs: dict[Path, dict[str, Any]] = {}
    if cloud:
        try:
            docs = _cloud(settings, files, request)
        except DiaristError as e:
            if not settings.cloud.fallback:
                raise
            print(f"diarist: the cloud job failed ({e}); processing locally (fallback is on)", file=sys.stderr)
    engine = None
    for path in files:
        doc = docs.get(path)
        if doc is None:
            if engine is None:
                from diarist.daemon.cli import _engine

                engine = _engine(settings)
            from diarist.handlers.local import diarize_file

            reason = "diarist submit --local" if request.get("route") == "local" else "diarist submit on this machine"
            try:
                doc = diarize_file(
                    path,
                    engine=engine,
                    name=path.name,
                    relative_path=path.name,
                    sha256=sha256_of(path),
                    task=Task.DIARIZATION,
                    speakers={},
                    route={"decision": "local", "reason": reason},
                )
            except DiaristError as e:
                print(f"diarist: {path}: {e}", file=sys.stderr)
                failures += 1
                continue
        paths = OutputPaths.for_input((out or path.parent).resolve(), path.name)
        write_result(paths, doc)
        print(f"{path} -> {paths.rttm} ({len(doc['speakers'])} speakers, {doc['engine']['backend']})")
    return 1 if failures else 0


def _cloud(settings: cfg.Settings, files: list[Path], request: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    from diarist.daemon.cli_cloud import _hub
    from diarist.daemon.cloud import job_models
    from diarist.handlers import audio, cloud_fetch
    from diarist.handlers.cloud_submit import JobItem, JobSpec, Submitter
    from diarist.handlers.intake import sha256_of

    if not settings.cloud.enabled:
        raise DiaristError("the cloud route is disabled ([cloud] enabled = false / HF_JOBS_ENABLED=false)")
    hub = _hub(settings)
    flavor = request.get("flavor") or (settings.cloud.flavor if settings.cloud.flavor != "auto" else "a10g-small")
    items, total = [], 0.0
    for path in files:
        total += audio.probe(path).duration or 0.0
        items.append(
            JobItem(
                sha256=sha256_of(path),
                local_path=path,
                name=path.name,
                relative_path=path.name,
                task=Task.DIARIZATION.value,
                route={"decision": "cloud", "reason": "diarist submit --cloud", "flavor": flavor},
            )
        )
    spec = JobSpec(
        batch_id=uuid.uuid4().hex[:16],
        host=settings.daemon.host_id,
        flavor=flavor,
        timeout_seconds=job_timeout_for(total, DEFAULT_THROUGHPUT.get(flavor, 1.0)),
        image=settings.cloud.image,
        models=job_models(settings.models),
        items=tuple(items),
    )
    # the same budget as the daemon's: reserve the job's worst case in the ledger first, settle it at the end
    ledger = Ledger(settings.daemon.ledger)
    prices = {p.name: p for p in FALLBACK_PRICES} | {p.name: p for p in hub.prices()}
    if flavor not in prices:
        raise DiaristError(f"no price is known for flavor {flavor}", hint="pick a flavor from the Hub's Jobs hardware")
    c = settings.cloud
    decision = ledger.reserve_job(
        spec.batch_id,
        [],
        caps=BudgetCaps(daily_usd=c.daily_budget, monthly_usd=c.monthly_budget, max_concurrent=c.max_concurrent),
        reserve_usd=settle_cost(spec.timeout_seconds, prices[flavor]),
        tz=ZoneInfo(c.timezone),
        namespace=hub.namespace,
        repo=hub.repo,
        flavor=flavor,
        host=settings.daemon.host_id,
        timeout_seconds=spec.timeout_seconds,
        audio_seconds=total,
    )
    if not decision.allowed:
        raise DiaristError(f"over the cloud budget: {decision.reason}")
    submitter = Submitter(hub)
    try:
        staged = submitter.stage(spec)
        snap = submitter.start(spec)
    except Exception:
        ledger.settle_job(spec.batch_id, state=JobState.FAILED, cost_usd=None, message="could not start")
        raise
    ledger.job_started(spec.batch_id, job_id=snap.job_id, url=snap.url, stage=snap.stage, submitted_at=time.time())
    print(f"cloud job {snap.job_id} ({flavor}): {snap.url}", file=sys.stderr)
    submitted, stage = time.time(), None
    try:
        while True:
            snap = hub.inspect(snap.job_id)
            if snap.stage != stage:
                stage = snap.stage
                print(f"  {stage}", file=sys.stderr)
            verdict = judge_job(
                snap.stage,
                snap.message,
                submitted_at=submitted,
                deadline_at=submitted + spec.timeout_seconds + settings.cloud.scheduling_timeout + 300,
                now=time.time(),
                scheduling_limit=settings.cloud.scheduling_timeout,
                scheduling_seconds=snap.scheduling_seconds,
            )
            if verdict.verdict is Verdict.COLLECT:
                break
            if verdict.verdict is Verdict.CANCEL:
                hub.cancel(snap.job_id)
            if verdict.verdict is not Verdict.WAIT:
                tail = "\n".join(hub.last_lines(snap.job_id))
                raise DiaristError(f"cloud job {snap.job_id}: {verdict.reason}", hint=f"last log lines:\n{tail}")
            time.sleep(POLL_SECONDS)
        docs = {}
        for path, item in zip(files, items, strict=True):
            got = cloud_fetch.fetch_one(hub, snap.job_id, item.sha256)
            if got.doc is not None:
                cloud_fetch.label_result(
                    got.doc, job_id=snap.job_id, url=snap.url, flavor=flavor, running_seconds=snap.running_seconds
                )
                docs[path] = got.doc
            else:
                print(f"diarist: {path}: no cloud result ({got.error})", file=sys.stderr)
        return docs
    finally:
        cost = settle_cost(snap.running_seconds or 0, prices[flavor]) if snap.running_seconds else None
        ended = JobState.COLLECTED if snap.stage == "COMPLETED" else JobState.FAILED
        ledger.settle_job(spec.batch_id, state=ended, cost_usd=cost, stage=snap.stage, finished_at=time.time())
        if not settings.cloud.keep_staged:
            cloud_fetch.cleanup(hub, snap.job_id, staged)
