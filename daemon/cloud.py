"""The daemon's cloud route: batch queued files into Hugging Face Jobs, poll them, collect or fall back.

One ``tick`` (an APScheduler interval job, never two at once) does, in order: recover batches whose job
start was not confirmed, submit new batches while job slots are free, and inspect every job in flight. The
SQLite ledger is the only state: a restarted daemon resumes every job from it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from diarist.daemon.config import CloudSettings, ModelSettings, UserSettings
from diarist.daemon.ledger import FileRow, JobRow, JobState, Ledger, State
from diarist.handlers import cloud_fetch
from diarist.handlers.cloud_hub import Hub, JobSnapshot
from diarist.handlers.cloud_submit import JobItem, JobSpec, Submitter
from diarist.handlers.crashpoints import crash_point
from diarist.handlers.errors import CloudError, DiaristError, PermanentFileError, TransientError
from diarist.policies.budget import BudgetCaps, BudgetDecision, Cap, settle_cost
from diarist.policies.flavor import DEFAULT_THROUGHPUT, estimate_seconds, job_timeout_for, update_throughput
from diarist.policies.jobs import BatchSettings, QueuedFile, Verdict, judge_job, plan_batches
from diarist.policies.pricing import FALLBACK_PRICES, FlavorPrice, PriceUnit, format_usd
from diarist.policies.route import CloudState

log = structlog.get_logger("diarist.cloud")

# Past submit + timeout + this, a job the Hub still calls alive is cancelled: the Hub should have stopped it.
DEADLINE_GRACE_SECONDS = 300.0
# A permanent refusal (token, credits) makes the route unavailable for this long before it is tried again.
UNAVAILABLE_RETRY_SECONDS = 600.0
LOG_TAIL_LINES = 20
PRICES_KEY = "prices"
THROUGHPUT_KEY = "throughput"
#: batches whose staged files could not be deleted yet: {batch id: {"job_id", "staged"}}
CLEANUP_KEY = "cloud.cleanup_pending"


@dataclass(frozen=True)
class CloudCallbacks:
    """What the daemon does with a file once the cloud is done with it (the same writers as the local route)."""

    finish: Callable[[FileRow, dict[str, Any]], None]
    fail: Callable[[FileRow, DiaristError, dict[str, Any] | None], None]
    fall_back: Callable[[FileRow, str, dict[str, Any]], None]
    status: Callable[[FileRow, str, str | None], None]
    item: Callable[[FileRow], JobItem]
    user_of: Callable[[FileRow], str | None]


def job_models(m: ModelSettings) -> dict[str, Any]:
    """The ``[models]`` settings a job is told to load: the daemon's own, on the job's device."""
    return {
        "pipeline": m.pipeline,
        # "auto" picks the job's GPU; a daemon pinned to cpu locally still wants the cloud GPU
        "device": "auto",
        "clustering_threshold": m.clustering_threshold,
        "segmentation_batch_size": m.segmentation_batch_size,
        "embedding_batch_size": m.embedding_batch_size,
        "fast": m.fast,
    }


def connect_hub(settings: CloudSettings, token: str) -> Hub:
    """The configured namespace and staging repo on the configured endpoint (whoami when no namespace is set)."""
    return Hub(
        token=token, namespace=settings.namespace, staging_repo=settings.staging_repo, endpoint=settings.endpoint
    )


@contextmanager
def _one_job(job: JobRow) -> Iterator[None]:
    """One job's trouble is logged and left for the next tick; the other jobs still get their turn."""
    try:
        yield
    except TransientError as e:
        log.warning("cloud_retry", batch=job.batch_id, job=job.job_id, error=str(e))
    except Exception:
        log.exception("cloud_job_error", batch=job.batch_id, job=job.job_id)


class CloudRoute:
    def __init__(
        self,
        settings: CloudSettings,
        models: ModelSettings,
        *,
        ledger: Ledger,
        host: str,
        token: str | None,
        callbacks: CloudCallbacks,
        wall: Callable[[], float] = time.time,
        telemetry: bool = False,
        users: Mapping[str, UserSettings] | None = None,
    ):
        self.settings = settings
        self.users = dict(users or {})
        self.tz = ZoneInfo(settings.timezone)
        self.models = models
        self.ledger = ledger
        self.host = host
        self.token = token
        self.cb = callbacks
        self._wall = wall
        self._telemetry = telemetry
        self._hub: Hub | None = None
        self._submitter: Submitter | None = None
        self._unavailable: tuple[str, float] | None = None
        self._prices: dict[str, FlavorPrice] = {p.name: p for p in FALLBACK_PRICES}
        self._prices_source = "built-in fallback table"

    # -- availability --------------------------------------------------------------------------------

    def state(self) -> CloudState:
        """What routing needs to know; a recent permanent refusal from the Hub makes the route unavailable."""
        reason = None
        if self._unavailable and self._wall() < self._unavailable[1]:
            reason = self._unavailable[0]
        return CloudState(
            enabled=self.settings.enabled,
            has_token=bool(self.token),
            fallback_enabled=self.settings.fallback,
            unavailable_reason=reason,
        )

    def prices(self) -> list[FlavorPrice]:
        return list(self._prices.values())

    def throughput(self) -> dict[str, float]:
        """Audio seconds per running second per flavor: the defaults, moved by every settled job."""
        stored = self.ledger.get_value(THROUGHPUT_KEY)
        return {**DEFAULT_THROUGHPUT, **(stored[0] if stored else {})}

    def caps(self, user: str | None) -> BudgetCaps:
        prefs = self.users.get(user or "")
        return BudgetCaps(
            daily_usd=self.settings.daily_budget,
            monthly_usd=self.settings.monthly_budget,
            user_monthly_usd=prefs.cost_limit if prefs else None,
            max_concurrent=self.settings.max_concurrent,
        )

    def _load_prices(self, hub: Hub) -> None:
        """The Hub's price list, cached in the ledger for ``price_ttl``; the built-in table when neither works."""
        cached = self.ledger.get_value(PRICES_KEY)
        if cached and self._wall() - cached[1] < self.settings.price_ttl:
            self._use_prices(cached[0], "the Hub's hardware list (cached in the ledger)")
            return
        try:
            fetched = hub.prices()
        except DiaristError as e:
            if cached:
                self._use_prices(cached[0], "the Hub's hardware list (stale cache: the Hub did not answer)")
            log.warning("prices_unavailable", error=str(e), using=self._prices_source)
            return
        if fetched:
            rows = [
                {
                    "name": p.name,
                    "unit_cost_usd": str(p.unit_cost_usd),
                    "unit": p.unit_label.value,
                    "gpu": p.accelerator,
                }
                for p in fetched
            ]
            self.ledger.set_value(PRICES_KEY, rows)
            self._use_prices(rows, "the Hub's hardware list")

    def _use_prices(self, rows: list[dict[str, Any]], source: str) -> None:
        self._prices = {
            r["name"]: FlavorPrice(r["name"], Decimal(r["unit_cost_usd"]), PriceUnit(r["unit"]), r["gpu"]) for r in rows
        }
        self._prices_source = source

    def _mark_unavailable(self, error: DiaristError) -> None:
        self._unavailable = (f"the Hub refused: {error}", self._wall() + UNAVAILABLE_RETRY_SECONDS)
        log.warning("cloud_unavailable", error=str(error), retry_in=UNAVAILABLE_RETRY_SECONDS)

    def hub(self) -> Hub:
        if self._hub is None:
            assert self.token, "the cloud route is only used with a token"
            self._hub = connect_hub(self.settings, self.token)
            self._submitter = Submitter(self._hub)
            self._load_prices(self._hub)
            log.info("cloud_connected", namespace=self._hub.namespace, repo=self._hub.repo, prices=self._prices_source)
        return self._hub

    # -- the tick ------------------------------------------------------------------------------------

    def tick(self) -> None:
        """One scheduler pass. Transient Hub trouble leaves everything as it is for the next pass."""
        try:
            if not self.settings.enabled or not self.token:
                self._fall_back_queue("the cloud route is not available")
                if not self.token or not self.ledger.open_jobs():
                    return  # with a token, jobs already in flight are still seen through
            if self.ledger.in_state(State.QUEUED) or self.ledger.open_jobs():
                try:
                    self.hub()
                except CloudError as e:
                    self._mark_unavailable(e)
                    self._fall_back_queue(str(e))
                    return
            self._recover_submitting()
            self._dispatch()
            self._poll()
            self._retry_cleanups()
        except TransientError as e:
            log.warning("cloud_retry", error=str(e))

    # -- submitting ----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        queued = self.ledger.in_state(State.QUEUED)
        if not queued:
            return
        unavailable = self.state().why_unavailable
        if unavailable:
            self._fall_back_queue(unavailable)
            return
        s = self.settings
        users = {r.id: self.cb.user_of(r) for r in queued}
        batches = plan_batches(
            [
                QueuedFile(
                    r.id, r.flavor or s.flavor, r.duration or 0.0, r.queued_at or r.updated_at, users[r.id] or ""
                )
                for r in queued
            ],
            in_flight=len(self.ledger.open_jobs()),
            now=self._wall(),
            settings=BatchSettings(s.batch_max_files, s.batch_max_audio_seconds, s.batch_window, s.max_concurrent),
        )
        by_id = {r.id: r for r in queued}
        for batch in batches:
            rows = [by_id[i] for i in batch.file_ids]
            user = users[rows[0].id]
            job = self._reserve(rows, batch.flavor, user)
            if job is None:
                continue
            log.info("batch", batch=job.batch_id, files=len(self.ledger.job_files(job.batch_id)), flavor=job.flavor)
            self._submit(job)

    def _figures(self, flavor: str, audio_seconds: float) -> tuple[int, Decimal | None, Decimal | None]:
        """Timeout, expected cost and worst-case cost (the price of the whole timeout) of one job."""
        s = self.settings
        throughput = self.throughput().get(flavor, 1.0)
        timeout = job_timeout_for(
            audio_seconds, throughput, startup_seconds=s.startup_seconds, min_seconds=s.min_job_timeout
        )
        price = self._prices.get(flavor)
        if price is None:
            return timeout, None, None
        est = estimate_seconds(audio_seconds, throughput, s.startup_seconds)
        return timeout, settle_cost(est, price), settle_cost(timeout, price)

    def _reserve(self, rows: list[FileRow], flavor: str, user: str | None) -> JobRow | None:
        """Reserve the biggest leading part of the batch that fits every cap; the rest waits or goes local.

        The reservation is the job's worst case (its timeout's price), so what it really costs can never
        take spending past a cap.
        """
        caps = self.caps(user)
        decision = None
        for n in range(len(rows), 0, -1):
            part = rows[:n]
            audio = sum(r.duration or 0.0 for r in part)
            timeout, est, reserve = self._figures(flavor, audio)
            if reserve is None:
                reason = f"no price is known for flavor {flavor}"
                for row in part:
                    self._give_up_file(row, None, reason, None, [])
                return None
            batch_id = uuid.uuid4().hex[:16]
            decision = self.ledger.reserve_job(
                batch_id,
                [r.id for r in part],
                caps=caps,
                reserve_usd=reserve,
                tz=self.tz,
                user=user,
                namespace=self.hub().namespace,
                repo=self.hub().repo,
                flavor=flavor,
                host=self.host,
                timeout_seconds=timeout,
                audio_seconds=audio,
                est_usd=str(est),
            )
            if decision.allowed:
                return self.ledger.job(batch_id)
            if decision.cap_name is Cap.CONCURRENCY:
                return None  # a slot frees up when a job ends: wait, whatever the money says
        assert decision is not None
        self._over_budget(rows, decision)
        return None

    def _over_budget(self, rows: list[FileRow], decision: BudgetDecision) -> None:
        """Not even one file fits: local when fallback is on (or waiting cannot help), else wait for the period."""
        if self.settings.fallback or not decision.wait_helps:
            for row in rows:
                self.cb.fall_back(
                    row,
                    f"local: over the cloud budget: {decision.reason}",
                    {
                        "from": "budget",
                        "cap": decision.cap_name.value if decision.cap_name else None,
                        "reason": decision.reason,
                    },
                )
            return
        period = decision.cap_name.period if decision.cap_name else "period"
        reason = f"deferred: budget: {decision.reason}; waits for the next budget {period} (fallback is off)"
        for row in rows:
            if row.route_reason != reason:
                self.ledger.set_fields(row.id, route_reason=reason)
                self.cb.status(row, "deferred", reason)
                log.info("deferred", file=row.rel_path, reason=reason)

    def _spec(self, job: JobRow, rows: list[FileRow]) -> JobSpec:
        return JobSpec(
            batch_id=job.batch_id,
            host=self.host,
            flavor=job.flavor,
            timeout_seconds=job.timeout_seconds,
            image=self.settings.image,
            models=job_models(self.models),
            items=tuple(self.cb.item(r) for r in rows),
            telemetry=self._telemetry,
        )

    def _submit(self, job: JobRow) -> None:
        rows = [r for r in self.ledger.job_files(job.batch_id) if r.state is State.QUEUED]
        if not rows:
            self.ledger.settle_job(
                job.batch_id, state=JobState.FAILED, cost_usd=None, message="no files left to submit"
            )
            return
        assert self._submitter is not None
        for row in [r for r in rows if not Path(r.claim_path or "").is_file()]:
            rows.remove(row)
            self.cb.fail(row, PermanentFileError("the claimed input vanished from .diarist/processing"), None)
        if not rows:
            self.ledger.settle_job(job.batch_id, state=JobState.FAILED, cost_usd=None, message="inputs vanished")
            return
        try:
            spec = self._spec(job, rows)
            staged = self._submitter.stage(spec)
            self.ledger.update_job(job.batch_id, staged=json.dumps(staged))
            snap = self._submitter.start(spec)
            crash_point("cloud_submit")
        except TransientError:
            raise  # the job row stays "submitting"; _recover_submitting finds or restarts it
        except Exception as e:  # refused by the Hub, or anything else: never leave the batch half-open
            if isinstance(e, CloudError):
                self._mark_unavailable(e)
            else:
                log.exception("submit_error", batch=job.batch_id)
            self.ledger.settle_job(job.batch_id, state=JobState.FAILED, cost_usd=None, message=str(e))
            for row in rows:
                self._give_up_file(row, job, f"the cloud job could not be started: {e}", None, [])
            self._cleanup(self.ledger.job(job.batch_id))  # the audio must not stay on the Hub
            return
        # TransientError: the job row stays "submitting"; _recover_submitting finds or restarts it
        self._started(job, snap)

    def _started(self, job: JobRow, snap: JobSnapshot) -> None:
        now = self._wall()
        self.ledger.job_started(
            job.batch_id,
            job_id=snap.job_id,
            url=snap.url,
            stage=snap.stage,
            submitted_at=now,
            deadline_at=now + job.timeout_seconds + self.settings.scheduling_timeout + DEADLINE_GRACE_SECONDS,
        )
        for row in self.ledger.job_files(job.batch_id):
            if row.state is State.SUBMITTED:
                self.cb.status(row, "submitted", f"cloud job {snap.job_id} ({job.flavor}): {snap.url}")
        log.info("job_started", batch=job.batch_id, job=snap.job_id, flavor=job.flavor, url=snap.url)

    def _recover_submitting(self) -> None:
        """A batch whose job start was not confirmed (crash, lost answer): adopt the job if it exists."""
        for job in self.ledger.open_jobs():
            if job.state is not JobState.SUBMITTING:
                continue
            with _one_job(job):
                found = self.hub().find({"app": "diarist", "batch": job.batch_id})
                if found:
                    log.info("job_adopted", batch=job.batch_id, job=found[0].job_id)
                    self._started(job, found[0])
                else:
                    self._submit(job)

    def _fall_back_queue(self, reason: str) -> None:
        for row in self.ledger.in_state(State.QUEUED):
            self._give_up_file(row, None, f"the cloud route became unavailable: {reason}", None, [])

    # -- polling -------------------------------------------------------------------------------------

    def _poll(self) -> None:
        for job in self.ledger.open_jobs():
            if job.state is not JobState.IN_FLIGHT or not job.job_id:
                continue
            with _one_job(job):
                self._poll_one(job)

    def _poll_one(self, job: JobRow) -> None:
        assert job.job_id
        try:
            snap = self.hub().inspect(job.job_id)
        except CloudError as e:
            if e.status == 404:  # deleted on the Hub (or by hand): nothing left to collect
                self._give_up(job, f"the job no longer exists on the Hub: {e}", None, job.running_seconds)
                return
            raise
        self.ledger.update_job(job.batch_id, stage=snap.stage, running_seconds=snap.running_seconds)
        crash_point("cloud_poll")
        verdict = judge_job(
            snap.stage,
            snap.message,
            submitted_at=job.submitted_at or job.created_at,
            deadline_at=job.deadline_at or float("inf"),
            now=self._wall(),
            scheduling_limit=self.settings.scheduling_timeout,
            scheduling_seconds=snap.scheduling_seconds,
        )
        if verdict.verdict is Verdict.WAIT:
            if snap.stage != job.stage:
                for row in self.ledger.job_files(job.batch_id):
                    if row.state is State.SUBMITTED:
                        self.cb.status(row, snap.stage.lower(), f"cloud job {job.job_id}: {snap.url}")
            return
        if verdict.verdict is Verdict.COLLECT:
            self._collect(job, snap)
            return
        reason = verdict.reason
        if job.cancel_requested:
            reason = f"{job.cancel_requested} ({reason})"
        if verdict.verdict is Verdict.CANCEL:
            try:
                self.hub().cancel(job.job_id)
            except CloudError as e:
                # it may run on until its timeout: count it as its whole reservation, never less
                log.warning("cancel_failed", job=job.job_id, error=str(e))
                self._give_up(job, reason, None, job.timeout_seconds)
                return
        self._give_up(job, reason, snap)

    def _cost(self, job: JobRow, running_seconds: float | None) -> Decimal | None:
        price = self._prices.get(job.flavor)
        if price is None or running_seconds is None:
            return None
        return settle_cost(running_seconds, price)

    def _collect(self, job: JobRow, snap: JobSnapshot) -> None:
        assert job.job_id
        hub = self.hub()
        cost = self._cost(job, snap.running_seconds)
        for row in self.ledger.job_files(job.batch_id):
            if row.state is not State.SUBMITTED:
                continue
            if row.result_key:  # stored before a crash: write it out, do not fetch again
                stored = self.ledger.result(row.result_key)
                if stored:
                    self.cb.finish(row, stored[1])
                    continue
            assert row.sha256
            got = cloud_fetch.fetch_one(hub, job.job_id, row.sha256)
            if self._deliver(job, row, got, snap.url, snap.running_seconds):
                crash_point("cloud_collect")
                continue
            if got.error is not None and got.error.get("kind") == "bad-input":
                err = PermanentFileError(
                    f"the cloud job could not process it: {got.error.get('message')}", hint=got.error.get("hint")
                )
                self.cb.fail(row, err, {"job_id": job.job_id, "job_url": snap.url})
            else:
                why = (got.error or {}).get("message") or "the job completed without a result for this file"
                self._give_up_file(row, job, f"cloud job {job.job_id} completed but {why}", snap, [])
        self.ledger.settle_job(job.batch_id, state=JobState.COLLECTED, cost_usd=cost, finished_at=self._wall())
        self._learn(job, snap)
        log.info(
            "job_collected",
            job=job.job_id,
            running_seconds=snap.running_seconds,
            cost=format_usd(cost) if cost is not None else None,
        )
        self._cleanup(job)

    def _deliver(
        self, job: JobRow, row: FileRow, got: cloud_fetch.Fetched, url: str, running_seconds: float | None
    ) -> bool:
        """Write a result the job uploaded, labelled with where it ran; False when there is none."""
        if got.doc is None:
            return False
        assert job.job_id
        cloud_fetch.label_result(
            got.doc, job_id=job.job_id, url=url, flavor=job.flavor, running_seconds=running_seconds
        )
        self.cb.finish(row, got.doc)
        return True

    def _learn(self, job: JobRow, snap: JobSnapshot) -> None:
        """A settled job teaches the throughput table (estimates, timeouts and reservations get truer)."""
        if not job.audio_seconds or not snap.running_seconds:
            return
        table = update_throughput(
            self.throughput(),
            job.flavor,
            job.audio_seconds,
            snap.running_seconds,
            startup_seconds=min(self.settings.startup_seconds, snap.running_seconds * 0.5),
        )
        self.ledger.set_value(THROUGHPUT_KEY, table)

    def _give_up(
        self, job: JobRow, reason: str, snap: JobSnapshot | None, running_seconds: float | None = None
    ) -> None:
        lines = self.hub().last_lines(job.job_id, LOG_TAIL_LINES) if job.job_id else []
        for row in self.ledger.job_files(job.batch_id):
            if row.state is not State.SUBMITTED:
                continue
            # the job uploads each result as it finishes: keep what it did before it failed
            got = cloud_fetch.fetch_one(self.hub(), job.job_id, row.sha256) if job.job_id and row.sha256 else None
            url = snap.url if snap else job.url or ""
            if got is None or not self._deliver(job, row, got, url, snap.running_seconds if snap else None):
                self._give_up_file(row, job, f"cloud job {job.job_id}: {reason}", snap, lines)
        # settled only once every file is handled: an error above leaves the job open for the next tick
        running = snap.running_seconds if snap and snap.running_seconds is not None else running_seconds
        cost = self._cost(job, running)
        self.ledger.settle_job(
            job.batch_id, state=JobState.FAILED, cost_usd=cost, finished_at=self._wall(), message=reason
        )
        log.warning("job_failed", job=job.job_id, reason=reason)
        self._cleanup(job)

    def _give_up_file(
        self, row: FileRow, job: JobRow | None, reason: str, snap: JobSnapshot | None, lines: list[str]
    ) -> None:
        info = {
            "from": "hf-jobs",
            "job_id": job.job_id if job else None,
            "job_url": (snap.url if snap else job.url) if job else None,
            "flavor": job.flavor if job else row.flavor,
            "reason": reason,
            "log_tail": lines,
        }
        if self.settings.fallback:
            self.cb.fall_back(row, f"local: fallback from the cloud route, because {reason}", info)
        else:
            error = CloudError(
                reason,
                hint="see the job's log lines in this file; fix the cause and drop the file again, "
                "or turn fallback on ([cloud] fallback = true / HF_JOBS_FALLBACK=true) to process it locally",
            )
            self.cb.fail(row, error, info)

    def _cleanup(self, job: JobRow) -> None:
        if self.settings.keep_staged:
            return
        self._delete_staged(job.batch_id, job.job_id, json.loads(job.staged or "[]"))

    def _delete_staged(self, batch_id: str, job_id: str | None, staged: list[str]) -> bool:
        """Delete what a finished batch put on the Hub. When the Hub cannot be reached the batch is remembered
        (``CLEANUP_KEY``) and retried on later ticks: staged recordings must not stay on the Hub."""
        # an input another open batch still needs stays (same content dropped twice, in two batches)
        needed = set()
        for other in self.ledger.open_jobs():
            if other.batch_id != batch_id:
                needed.update(json.loads(other.staged or "[]"))
        try:
            cloud_fetch.cleanup(self.hub(), job_id, [p for p in staged if p not in needed])
        except DiaristError as e:
            log.warning("cleanup_failed", job=job_id, error=str(e), retry=True)
            pending = self._pending_cleanups()
            pending[batch_id] = {"job_id": job_id, "staged": staged}
            self.ledger.set_value(CLEANUP_KEY, pending)
            return False
        return True

    def _pending_cleanups(self) -> dict[str, dict[str, Any]]:
        stored = self.ledger.get_value(CLEANUP_KEY)
        return dict(stored[0]) if stored else {}

    def _retry_cleanups(self) -> None:
        for batch_id, item in self._pending_cleanups().items():
            if not self._delete_staged(batch_id, item["job_id"], item["staged"]):
                return  # the Hub is still out of reach: the next tick tries again
            remaining = self._pending_cleanups()
            remaining.pop(batch_id, None)
            self.ledger.set_value(CLEANUP_KEY, remaining)
            log.info("cleanup_done", job=item["job_id"])
