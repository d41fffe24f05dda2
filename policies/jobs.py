"""Cloud job decisions: which queued files go out together, and what to do about a job in flight."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum


@dataclass(frozen=True)
class BatchSettings:
    """``window``: seconds the oldest queued file waits for company; the batch leaves earlier once full."""

    max_files: int = 8
    max_audio_seconds: float = 4 * 3600.0
    window: float = 10.0
    max_concurrent: int = 3


@dataclass(frozen=True)
class QueuedFile:
    """A cloud-bound file waiting in the ledger, in queue order."""

    file_id: int
    flavor: str
    duration_seconds: float
    queued_at: float
    #: files of different groups never share a job (the daemon groups by user: budgets are per user)
    group: str = ""


@dataclass(frozen=True)
class Batch:
    flavor: str
    file_ids: tuple[int, ...]
    audio_seconds: float
    reason: str


def plan_batches(queue: Sequence[QueuedFile], *, in_flight: int, now: float, settings: BatchSettings) -> list[Batch]:
    """Batches to submit now, oldest file first, at most the free job slots.

    A batch takes the oldest queued file and the next files for the same flavor and group, up to ``max_files`` and
    ``max_audio_seconds`` (a single file longer than that still goes, alone). It leaves when it is full or
    when its oldest file has waited ``window`` seconds; otherwise everything waits, so files that arrive
    together share one job and pay the container start once. Files stay in queue order per flavor.
    """
    free = max(settings.max_concurrent - in_flight, 0)
    batches: list[Batch] = []
    taken: set[int] = set()
    for head in queue:
        if len(batches) >= free:
            break
        if head.file_id in taken:
            continue
        members = [head]
        audio = head.duration_seconds
        full = False
        for other in queue:
            if other.file_id in taken or other is head or (other.flavor, other.group) != (head.flavor, head.group):
                continue
            if other.queued_at < head.queued_at:
                continue
            if len(members) >= settings.max_files or audio + other.duration_seconds > settings.max_audio_seconds:
                full = True
                break
            members.append(other)
            audio += other.duration_seconds
        full = full or len(members) >= settings.max_files
        waited = now - head.queued_at
        if not full and waited < settings.window:
            # this flavor is still gathering; files for other flavors may be older than their window
            taken.update(m.file_id for m in members)
            continue
        why = "batch full" if full else f"oldest file waited {waited:.0f} s (window {settings.window:.0f} s)"
        batches.append(Batch(head.flavor, tuple(m.file_id for m in members), audio, why))
        taken.update(m.file_id for m in members)
    return batches


class Verdict(str, Enum):
    WAIT = "wait"
    COLLECT = "collect"
    FAILED = "failed"  # ended on the Hub without results
    CANCEL = "cancel"  # still alive on the Hub but given up on: cancel it, then treat as failed


class JobStage(StrEnum):
    """A Hugging Face Job's stage, as the Jobs API names it (``huggingface_hub`` ``JobStage``)."""

    SCHEDULING = "SCHEDULING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    CANCELED = "CANCELED"
    CANCELLED = "CANCELLED"
    DELETED = "DELETED"


TERMINAL_FAILURES = frozenset({JobStage.ERROR, JobStage.CANCELED, JobStage.CANCELLED, JobStage.DELETED})
ALIVE = frozenset({JobStage.SCHEDULING, JobStage.RUNNING})


@dataclass(frozen=True)
class JobJudgement:
    verdict: Verdict
    reason: str


def judge_job(
    stage: str,
    message: str | None,
    *,
    submitted_at: float,
    deadline_at: float,
    now: float,
    scheduling_limit: float,
    scheduling_seconds: float | None = None,
) -> JobJudgement:
    """What to do with a job in flight, from its Hub stage and our clock.

    ``deadline_at`` is submit time plus the job's own timeout plus a grace: past it the Hub should already
    have stopped the job, so one still running is cancelled rather than trusted. ``scheduling_seconds`` is
    how long the Hub says it has been scheduling (our clock since submit when it does not say).
    """
    stage = stage.upper()
    if stage == JobStage.COMPLETED:
        return JobJudgement(Verdict.COLLECT, "the job completed")
    if stage in TERMINAL_FAILURES:
        detail = f": {message}" if message else ""
        return JobJudgement(Verdict.FAILED, f"the job ended in {stage}{detail}")
    if now > deadline_at:
        return JobJudgement(Verdict.CANCEL, f"the job is still {stage} past its deadline")
    if stage == JobStage.SCHEDULING:
        waited = scheduling_seconds if scheduling_seconds is not None else now - submitted_at
        if waited > scheduling_limit:
            return JobJudgement(
                Verdict.CANCEL,
                f"the job waited {waited:.0f} s for hardware (limit {scheduling_limit:.0f} s); no capacity",
            )
    return JobJudgement(Verdict.WAIT, f"the job is {stage}")
