"""The cloud route: batch queued files into Hugging Face Jobs, poll them, collect or fall back.

One ``tick`` (an APScheduler interval job in the daemon, a loop in ``diarist submit``; never two at once)
does, in order: recover batches whose job start was not confirmed, reserve and submit new batches while job
slots are free, inspect every job in flight, and retry owed clean-ups. The SQLite ledger is the only state:
a restarted daemon resumes every job from it. A route sees only the files of its ``scope`` (the daemon's
inboxes, or one ``submit`` run).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from zoneinfo import ZoneInfo

import structlog

from diarist.daemon.cloud_jobs import CloudJobs
from diarist.daemon.cloud_terms import Availability, CloudTerms, work_seconds
from diarist.daemon.config import CloudSettings, InboxSettings, UserSettings
from diarist.daemon.ledger import ONESHOT_PREFIX, FileRow, JobRow, Ledger, State
from diarist.daemon.outcomes import FileOutcomes
from diarist.handlers.cloud_hub import Hub
from diarist.handlers.cloud_manifest import CLOUD_BACKEND
from diarist.handlers.engine_settings import EngineSettings, TranscriptionSettings
from diarist.handlers.errors import CloudError, ConfigError, TransientError
from diarist.policies.budget import BudgetDecision, Cap
from diarist.policies.jobs import BatchSettings, QueuedFile, plan_batches
from diarist.policies.request import ModelIds
from diarist.policies.route import CloudState, Route, over_budget_route

log = structlog.get_logger("diarist.cloud")

# A permanent refusal (token, credits) makes the route unavailable for this long before it is tried again.
UNAVAILABLE_RETRY_SECONDS = 600.0
#: a ``diarist submit`` run beats every couple of seconds while it waits; silent this long, it is gone
RUN_ALIVE_SECONDS = 60.0


def connect_hub(settings: CloudSettings, token: str | None) -> Hub:
    """The configured namespace and staging repo on the configured endpoint (whoami when no namespace is set)."""
    if not token:
        raise ConfigError(
            "HF_TOKEN is not set",
            hint="export HF_TOKEN=hf_... (a token with write access and the Jobs permission, "
            "from https://huggingface.co/settings/tokens)",
        )
    return Hub(
        token=token, namespace=settings.namespace, staging_repo=settings.staging_repo, endpoint=settings.endpoint
    )


class CloudRoute:
    def __init__(
        self,
        settings: CloudSettings,
        models: EngineSettings,
        *,
        ledger: Ledger,
        host: str,
        token: str | None,
        outcomes: FileOutcomes,
        inboxes: Mapping[str, InboxSettings],
        model_ids: ModelIds,
        scope: Callable[[str], bool] = lambda inbox: True,
        fileless_jobs: bool = True,
        wall: Callable[[], float] = time.time,
        telemetry: bool = False,
        users: Mapping[str, UserSettings] | None = None,
        transcription: TranscriptionSettings | None = None,
    ):
        self.settings = settings
        self.ledger = ledger
        self.host = host
        self.token = token
        self.out = outcomes
        self.scope = scope
        #: jobs without file rows (from before ``submit`` recorded its files) are the daemon's to see through
        self._fileless = fileless_jobs
        self._wall = wall
        self._hub: Hub | None = None
        self._trouble: str | None = None
        self.terms = CloudTerms(settings, ledger, users=users, wall=wall)
        self.availability = Availability(wall, UNAVAILABLE_RETRY_SECONDS)
        self.jobs = CloudJobs(
            settings,
            ledger=ledger,
            terms=self.terms,
            availability=self.availability,
            hub=self.hub,
            outcomes=outcomes,
            inboxes=inboxes,
            host=host,
            models=models,
            model_ids=model_ids,
            wall=wall,
            telemetry=telemetry,
            transcription=transcription,
        )

    @property
    def tz(self) -> ZoneInfo:
        return self.terms.tz

    def state(self) -> CloudState:
        """What routing needs to know; a recent permanent refusal from the Hub makes the route unavailable."""
        return CloudState(
            enabled=self.settings.enabled,
            has_token=bool(self.token),
            fallback_enabled=self.settings.fallback,
            unavailable_reason=self.availability.reason(),
        )

    def hub(self) -> Hub:
        if self._hub is None:
            self._hub = connect_hub(self.settings, self.token)
            self.terms.load_prices(self._hub)
            log.info(
                "cloud_connected", namespace=self._hub.namespace, repo=self._hub.repo, prices=self.terms.prices_source
            )
        return self._hub

    # -- what this route sees ------------------------------------------------------------------------

    def queued(self) -> list[FileRow]:
        return [r for r in self.ledger.in_state(State.QUEUED) if self.scope(r.inbox)]

    def open_jobs(self) -> list[JobRow]:
        """Open jobs with files in scope (and, for the daemon, jobs without files)."""
        mine = []
        for job in self.ledger.open_jobs():
            files = self.ledger.job_files(job.batch_id)
            if any(self.scope(f.inbox) for f in files) or (not files and self._fileless):
                mine.append(job)
        return mine

    @property
    def trouble(self) -> str | None:
        """The transient Hub problem the last tick met (None when it went through)."""
        return self._trouble or self.jobs.trouble

    def _reap_orphaned_runs(self) -> None:
        """Jobs of ``diarist submit`` runs that ended without settling them (killed, terminal closed): cancel
        them, fail their files and release their reservations, or they would hold budget and job slots."""
        alive = {h["host"] for h in self.ledger.live_hosts(RUN_ALIVE_SECONDS)}
        for job in self.ledger.open_jobs():
            runs = {f.inbox for f in self.ledger.job_files(job.batch_id)}
            if runs and all(r.startswith(ONESHOT_PREFIX) and r not in alive and not self.scope(r) for r in runs):
                with self.jobs.one_job(job):
                    self.jobs.end.abandon(job, "the diarist submit run that started it ended before it did")

    # -- the tick ------------------------------------------------------------------------------------

    def tick(self) -> None:
        """One pass. Transient Hub trouble leaves everything as it is for the next pass."""
        self._trouble = self.jobs.trouble = None
        try:
            if self.token:
                self._reap_orphaned_runs()
            if not self.settings.enabled or not self.token:
                self._fall_back_queue("the cloud route is not available")
                if not self.token or not self.open_jobs():
                    return  # with a token, jobs already in flight are still seen through
            if self.queued() or self.open_jobs():
                try:
                    self.hub()
                except CloudError as e:
                    self.availability.refused(e)
                    self._fall_back_queue(str(e))
                    return
            self.jobs.recover_submitting(self.open_jobs())
            self._dispatch()
            self.jobs.poll(self.open_jobs())
            self.jobs.cleanup.retry()
        except TransientError as e:
            self._trouble = str(e)
            log.warning("cloud_retry", error=str(e))

    def _dispatch(self) -> None:
        queued = self.queued()
        if not queued:
            return
        unavailable = self.state().why_unavailable
        if unavailable:
            self._fall_back_queue(unavailable)
            return
        s = self.settings
        users = {r.id: self.jobs.question(r).user for r in queued}
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
            job = self._reserve(rows, batch.flavor, users[rows[0].id])
            if job is None:
                continue
            log.info("batch", batch=job.batch_id, files=len(self.ledger.job_files(job.batch_id)), flavor=job.flavor)
            self.jobs.submit(job)

    def _reserve(self, rows: list[FileRow], flavor: str, user: str | None) -> JobRow | None:
        """Reserve the biggest leading part of the batch that fits every cap; the rest waits or goes local.

        The reservation is the job's worst case (its timeout's price), so what it really costs can never
        take spending past a cap.
        """
        caps = self.terms.caps(user)
        decision = None
        for n in range(len(rows), 0, -1):
            part = rows[:n]
            audio = sum(r.duration or 0.0 for r in part)
            # time and money are sized by the work: a transcribe file is more per audio second (speech
            # recognition on the job's CPU); the job records its audio, which usage reports
            figures = self.terms.figures(flavor, work_seconds(part))
            if figures.reserve_usd is None:
                for row in part:
                    self.jobs.end.give_up_file(row, None, f"no price is known for flavor {flavor}", None, [])
                return None
            batch_id = uuid.uuid4().hex[:16]
            decision = self.ledger.reserve_job(
                batch_id,
                [r.id for r in part],
                caps=caps,
                reserve_usd=figures.reserve_usd,
                tz=self.terms.tz,
                user=user,
                namespace=self.hub().namespace,
                repo=self.hub().repo,
                flavor=flavor,
                host=self.host,
                timeout_seconds=figures.timeout_seconds,
                audio_seconds=audio,
                est_usd=str(figures.est_usd),
            )
            if decision.allowed:
                return self.ledger.job(batch_id)
            if decision.cap_name is Cap.CONCURRENCY:
                return None  # a slot frees up when a job ends: wait, whatever the money says
        assert decision is not None
        self._over_budget(rows, decision)
        return None

    def _over_budget(self, rows: list[FileRow], decision: BudgetDecision) -> None:
        """Not even one file fits: the routing rule says local or wait for the next period."""
        if over_budget_route(decision, fallback_enabled=self.settings.fallback) is Route.LOCAL:
            info = {
                "from": "budget",
                "cap": decision.cap_name.value if decision.cap_name else None,
                "reason": decision.reason,
            }
            for row in rows:
                self.out.fall_back(row, f"local: over the cloud budget: {decision.reason}", info)
            return
        period = decision.cap_name.period if decision.cap_name else "period"
        reason = f"deferred: budget: {decision.reason}; waits for the next budget {period} (fallback is off)"
        for row in rows:
            if row.route_reason != reason:
                self.ledger.set_fields(row.id, route_reason=reason)
                self.out.status(row, "deferred", note=reason, engine=CLOUD_BACKEND)
                log.info("deferred", file=row.rel_path, reason=reason)

    def _fall_back_queue(self, reason: str) -> None:
        for row in self.queued():
            self.jobs.end.give_up_file(row, None, f"the cloud route became unavailable: {reason}", None, [])
