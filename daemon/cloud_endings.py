"""How a cloud job ends, for each of its files: collected (the result stored, then written through the
run's ``FileOutcomes``), given up (the results it uploaded before it failed kept, the rest falling back or
failing with the job's log tail), or abandoned (nobody waits for it any more). Then what it staged goes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from diarist.daemon.cloud_cleanup import StagedCleanup
from diarist.daemon.cloud_terms import CloudTerms, work_seconds
from diarist.daemon.config import CloudSettings, InboxSettings
from diarist.daemon.ledger import FileRow, JobRow, JobState, Ledger, State
from diarist.daemon.outcomes import FileOutcomes
from diarist.handlers import cloud_fetch
from diarist.handlers.cloud_hub import Hub, JobSnapshot
from diarist.handlers.crashpoints import crash_point
from diarist.handlers.errors import CloudError, PermanentFileError, TransientError
from diarist.policies.pricing import format_usd
from diarist.policies.request import InboxDefaults, ModelIds, Question, question

log = structlog.get_logger("diarist.cloud")

LOG_TAIL_LINES = 20


def asked_of(row: FileRow, inboxes: Mapping[str, InboxSettings], *, strict: bool = False) -> Question:
    """What the file asks for. ``strict``: its inbox must still be configured (its result is stored under the
    right key); else the job stays open, with its results on the Hub, until it is again."""
    inbox = inboxes.get(row.inbox)
    if inbox is None and strict:
        raise TransientError(
            f"{row.rel_path} belongs to inbox {row.inbox}, which is no longer configured",
            hint="add the inbox back to the configuration to receive its results",
        )
    return question(row.request(), inbox.defaults() if inbox else InboxDefaults())


class JobEndings:
    def __init__(
        self,
        settings: CloudSettings,
        *,
        ledger: Ledger,
        terms: CloudTerms,
        hub: Callable[[], Hub],
        outcomes: FileOutcomes,
        inboxes: Mapping[str, InboxSettings],
        cleanup: StagedCleanup,
        model_ids: ModelIds,
        wall: Callable[[], float],
    ):
        self.settings = settings
        self.ledger = ledger
        self.terms = terms
        self._hub = hub
        self.out = outcomes
        self._inboxes = inboxes
        self.cleanup = cleanup
        self.model_ids = model_ids
        self._wall = wall

    # -- collect or give up --------------------------------------------------------------------------

    def collect(self, job: JobRow, snap: JobSnapshot) -> None:
        assert job.job_id
        cost = self.terms.cost(job.flavor, snap.running_seconds)
        for row in self.ledger.job_files(job.batch_id):
            if row.state is not State.SUBMITTED:
                continue
            with bound_contextvars(file=row.rel_path, sha=(row.sha256 or "")[:12], route="cloud"):
                self._collect_file(job, snap, row)
        self.ledger.settle_job(job.batch_id, state=JobState.COLLECTED, cost_usd=cost, finished_at=self._wall())
        # the throughput table is in diarization-equivalent seconds, as the estimates that read it
        self.terms.learn(job.flavor, work_seconds(self.ledger.job_files(job.batch_id)), snap.running_seconds)
        log.info(
            "job_collected",
            job=job.job_id,
            running_seconds=snap.running_seconds,
            cost=format_usd(cost) if cost is not None else None,
        )
        self.cleanup.after(job)

    def _collect_file(self, job: JobRow, snap: JobSnapshot, row: FileRow) -> None:
        assert job.job_id and row.sha256
        if row.result_key:  # stored before a crash: write it out, do not fetch again
            stored = self.ledger.result(row.result_key)
            if stored:
                self.out.finish(row, stored[1])
                return
        got = cloud_fetch.fetch_one(self._hub(), job.job_id, row.sha256)
        if self._deliver(job, row, got, snap.url, snap.running_seconds):
            crash_point("cloud_collect")
            return
        if got.error is not None and got.error.get("kind") == "bad-input":
            err = PermanentFileError(
                f"the cloud job could not process it: {got.error.get('message')}", hint=got.error.get("hint")
            )
            self.out.fail(row, err, {"job_id": job.job_id, "job_url": snap.url})
        else:
            why = (got.error or {}).get("message") or "the job completed without a result for this file"
            self.give_up_file(row, job, f"cloud job {job.job_id} completed but {why}", snap, [])

    def _deliver(
        self, job: JobRow, row: FileRow, got: cloud_fetch.Fetched, url: str, running_seconds: float | None
    ) -> bool:
        """Store and write a result the job uploaded, labelled with where it ran; False when there is none."""
        if got.doc is None:
            return False
        assert job.job_id and row.sha256
        doc = got.doc
        cloud_fetch.label_result(doc, job_id=job.job_id, url=url, flavor=job.flavor, running_seconds=running_seconds)
        asked = asked_of(row, self._inboxes, strict=True)
        if asked.user:
            doc["user"] = asked.user
        self.ledger.store_result(row.id, asked.result_key(row.sha256, self.model_ids), row.sha256, doc)
        self.out.finish(self.ledger.get(row.id), doc)
        return True

    def give_up(self, job: JobRow, reason: str, snap: JobSnapshot | None, running_seconds: float | None = None) -> None:
        lines = self._hub().last_lines(job.job_id, LOG_TAIL_LINES) if job.job_id else []
        for row in self.ledger.job_files(job.batch_id):
            if row.state is not State.SUBMITTED:
                continue
            with bound_contextvars(file=row.rel_path, sha=(row.sha256 or "")[:12], route="cloud"):
                # the job uploads each result as it finishes: keep what it did before it failed
                got = cloud_fetch.fetch_one(self._hub(), job.job_id, row.sha256) if job.job_id and row.sha256 else None
                url = snap.url if snap else job.url or ""
                if got is None or not self._deliver(job, row, got, url, snap.running_seconds if snap else None):
                    self.give_up_file(row, job, f"cloud job {job.job_id}: {reason}", snap, lines)
        # settled only once every file is handled: an error above leaves the job open for the next tick
        running = snap.running_seconds if snap and snap.running_seconds is not None else running_seconds
        self.ledger.settle_job(
            job.batch_id,
            state=JobState.FAILED,
            cost_usd=self.terms.cost(job.flavor, running),
            finished_at=self._wall(),
            message=reason,
        )
        log.warning("job_failed", job=job.job_id, reason=reason)
        self.cleanup.after(job)

    def give_up_file(
        self, row: FileRow, job: JobRow | None, reason: str, snap: JobSnapshot | None, lines: list[str]
    ) -> None:
        """This file gets no cloud result: local when fallback is on, else it fails with the job's log tail."""
        info: dict[str, Any] = {
            "from": "hf-jobs",
            "job_id": job.job_id if job else None,
            "job_url": (snap.url if snap else job.url) if job else None,
            "flavor": job.flavor if job else row.flavor,
            "reason": reason,
            "log_tail": lines,
        }
        with bound_contextvars(file=row.rel_path, sha=(row.sha256 or "")[:12], route="cloud"):
            if self.settings.fallback:
                self.out.fall_back(row, f"local: fallback from the cloud route, because {reason}", info)
                return
            error = CloudError(
                reason,
                hint="see the job's log lines in this file; fix the cause and drop the file again, "
                "or turn fallback on ([cloud] fallback = true / HF_JOBS_FALLBACK=true) to process it locally",
            )
            self.out.fail(row, error, info)

    def abandon(self, job: JobRow, reason: str) -> None:
        """Nobody will wait for this job's results (its ``diarist submit`` run was interrupted or is gone):
        cancel it, fail its files, settle what it cost and delete what it staged."""
        running = job.running_seconds
        if job.state is JobState.SUBMITTING:  # its start may have gone through unrecorded: find it by label
            found = self._hub().find({"app": "diarist", "batch": job.batch_id})
            job = dataclasses.replace(job, job_id=found[0].job_id, state=JobState.IN_FLIGHT) if found else job
        if job.job_id and job.state is JobState.IN_FLIGHT:
            try:
                self._hub().cancel(job.job_id)
                snap = self._hub().inspect(job.job_id)  # what it ran for until now is what it costs
                if snap.running_seconds is not None:
                    running = snap.running_seconds
            except CloudError as e:  # it may run on until its timeout: count its whole reservation
                log.warning("cancel_failed", job=job.job_id, error=str(e))
                running = job.timeout_seconds
        for row in self.ledger.job_files(job.batch_id):
            if row.state in (State.QUEUED, State.SUBMITTED):
                self.ledger.transition(row.id, State.FAILED, error=f"cloud job {job.job_id or job.batch_id}: {reason}")
        self.ledger.settle_job(
            job.batch_id,
            state=JobState.FAILED,
            cost_usd=self.terms.cost(job.flavor, running),
            finished_at=self._wall(),
            message=reason,
        )
        log.warning("job_abandoned", job=job.job_id, batch=job.batch_id, reason=reason)
        self.cleanup.after(job)
