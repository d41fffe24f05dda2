"""One cloud job's life after its budget is reserved: stage and start it (or adopt it after a crash), poll
it, and hand it to ``JobEndings`` (collect, give up, abandon, clean up). The daemon's scheduler tick and
``diarist submit`` without a daemon both run it through ``CloudRoute``; what happens to each file at the end
is the caller's ``FileOutcomes``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import structlog
from structlog.contextvars import bound_contextvars

from diarist.daemon.cloud_cleanup import StagedCleanup
from diarist.daemon.cloud_endings import JobEndings, asked_of
from diarist.daemon.cloud_terms import Availability, CloudTerms
from diarist.daemon.config import CloudSettings, InboxSettings
from diarist.daemon.ledger import FileRow, JobRow, JobState, Ledger, State
from diarist.daemon.outcomes import FileOutcomes
from diarist.handlers.cloud_hub import Hub, JobSnapshot
from diarist.handlers.cloud_manifest import CLOUD_BACKEND
from diarist.handlers.cloud_submit import JobItem, JobSpec, Submitter
from diarist.handlers.crashpoints import crash_point
from diarist.handlers.engine_settings import EngineSettings, TranscriptionSettings
from diarist.handlers.errors import CloudError, PermanentFileError, TransientError
from diarist.policies.jobs import Verdict, judge_job
from diarist.policies.request import ModelIds, Question

log = structlog.get_logger("diarist.cloud")

# Past submit + timeout + this, a job the Hub still calls alive is cancelled: the Hub should have stopped it.
DEADLINE_GRACE_SECONDS = 300.0


class CloudJobs:
    def __init__(
        self,
        settings: CloudSettings,
        *,
        ledger: Ledger,
        terms: CloudTerms,
        availability: Availability,
        hub: Callable[[], Hub],
        outcomes: FileOutcomes,
        inboxes: Mapping[str, InboxSettings],
        host: str,
        models: EngineSettings,
        model_ids: ModelIds,
        wall: Callable[[], float],
        telemetry: bool = False,
        transcription: TranscriptionSettings | None = None,
    ):
        self.settings = settings
        self.transcription = transcription or TranscriptionSettings()
        self.ledger = ledger
        self.terms = terms
        self.availability = availability
        self._hub = hub
        self.out = outcomes
        self._inboxes = inboxes
        self.host = host
        self.models = models
        self.model_ids = model_ids
        self._wall = wall
        self._telemetry = telemetry
        self._submitter: Submitter | None = None
        self.cleanup = StagedCleanup(ledger, hub, keep_staged=settings.keep_staged)
        self.end = JobEndings(
            settings,
            ledger=ledger,
            terms=terms,
            hub=hub,
            outcomes=outcomes,
            inboxes=inboxes,
            cleanup=self.cleanup,
            model_ids=model_ids,
            wall=wall,
        )
        #: the last transient Hub problem met on a job this tick (None when every job's turn went through)
        self.trouble: str | None = None

    @contextmanager
    def one_job(self, job: JobRow) -> Iterator[None]:
        """One job's trouble is logged and left for the next tick; the other jobs still get their turn."""
        try:
            with bound_contextvars(batch=job.batch_id, job=job.job_id):
                yield
        except TransientError as e:
            self.trouble = str(e)
            log.warning("cloud_retry", batch=job.batch_id, job=job.job_id, error=str(e))
        except Exception:
            log.exception("cloud_job_error", batch=job.batch_id, job=job.job_id)

    @property
    def submitter(self) -> Submitter:
        if self._submitter is None:
            self._submitter = Submitter(self._hub())
        return self._submitter

    def question(self, row: FileRow) -> Question:
        return asked_of(row, self._inboxes)

    def _item(self, row: FileRow) -> JobItem:
        asked = self.question(row)
        assert row.sha256 and row.claim_path
        return JobItem(
            sha256=row.sha256,
            local_path=Path(row.claim_path),
            name=Path(row.rel_path).name,
            relative_path=row.rel_path,
            task=asked.task.value,
            speakers=asked.speakers,
            route={"decision": "cloud", "reason": row.route_reason, "flavor": row.flavor},
            language=asked.language,
        )

    # -- stage and start -----------------------------------------------------------------------------

    def submit(self, job: JobRow) -> None:
        rows = [r for r in self.ledger.job_files(job.batch_id) if r.state is State.QUEUED]
        for row in [r for r in rows if not Path(r.claim_path or "").is_file()]:
            rows.remove(row)
            with bound_contextvars(file=row.rel_path, sha=(row.sha256 or "")[:12], route="cloud"):
                self.out.fail(row, PermanentFileError("the claimed input vanished from .diarist/processing"))
        if not rows:
            self.ledger.settle_job(job.batch_id, state=JobState.FAILED, cost_usd=None, message="no files to submit")
            return
        try:
            spec = JobSpec(
                batch_id=job.batch_id,
                host=self.host,
                flavor=job.flavor,
                timeout_seconds=job.timeout_seconds,
                image=self.settings.image,
                models=self.models,
                items=tuple(self._item(r) for r in rows),
                telemetry=self._telemetry,
                transcription=self.transcription,
            )
            staged = self.submitter.stage(spec)
            self.ledger.update_job(job.batch_id, staged=json.dumps(staged))
            snap = self.submitter.start(spec)
            crash_point("cloud_submit")
        except TransientError:
            raise  # the job row stays "submitting"; recover_submitting finds or restarts it
        except Exception as e:  # refused by the Hub, or anything else: never leave the batch half-open
            if isinstance(e, CloudError):
                self.availability.refused(e)
            else:
                log.exception("submit_error", batch=job.batch_id)
            self.ledger.settle_job(job.batch_id, state=JobState.FAILED, cost_usd=None, message=str(e))
            for row in rows:
                self.end.give_up_file(row, job, f"the cloud job could not be started: {e}", None, [])
            self.cleanup.after(self.ledger.job(job.batch_id))  # the audio must not stay on the Hub
            return
        self.started(job, snap)

    def started(self, job: JobRow, snap: JobSnapshot) -> None:
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
                self.out.status(
                    row, "submitted", note=f"cloud job {snap.job_id} ({job.flavor}): {snap.url}", engine=CLOUD_BACKEND
                )
        log.info("job_started", batch=job.batch_id, job=snap.job_id, flavor=job.flavor, url=snap.url)

    def recover_submitting(self, jobs: list[JobRow]) -> None:
        """A batch whose job start was not confirmed (crash, lost answer): adopt the job if it exists."""
        for job in jobs:
            if job.state is not JobState.SUBMITTING:
                continue
            with self.one_job(job):
                found = self._hub().find({"app": "diarist", "batch": job.batch_id})
                if found:
                    log.info("job_adopted", batch=job.batch_id, job=found[0].job_id)
                    self.started(job, found[0])
                else:
                    self.submit(job)

    # -- poll ----------------------------------------------------------------------------------------

    def poll(self, jobs: list[JobRow]) -> None:
        for job in jobs:
            if job.state is not JobState.IN_FLIGHT or not job.job_id:
                continue
            with self.one_job(job):
                self._poll_one(job)

    def _poll_one(self, job: JobRow) -> None:
        assert job.job_id
        try:
            snap = self._hub().inspect(job.job_id)
        except CloudError as e:
            if e.status == 404:  # deleted on the Hub (or by hand): nothing left to collect
                self.end.give_up(job, f"the job no longer exists on the Hub: {e}", None, job.running_seconds)
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
                        note = f"cloud job {job.job_id}: {snap.url}"
                        self.out.status(row, snap.stage.lower(), note=note, engine=CLOUD_BACKEND)
            return
        if verdict.verdict is Verdict.COLLECT:
            self.end.collect(job, snap)
            return
        reason = verdict.reason
        if job.cancel_requested:
            reason = f"{job.cancel_requested} ({reason})"
        if verdict.verdict is Verdict.CANCEL:
            try:
                self._hub().cancel(job.job_id)
            except CloudError as e:
                # it may run on until its timeout: count it as its whole reservation, never less
                log.warning("cancel_failed", job=job.job_id, error=str(e))
                self.end.give_up(job, reason, None, job.timeout_seconds)
                return
        self.end.give_up(job, reason, snap)
