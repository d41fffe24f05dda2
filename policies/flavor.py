"""Which Hugging Face Jobs hardware flavor runs a cloud job, how long it may run, and what it may cost."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from types import MappingProxyType

from .budget import settle_cost
from .pricing import BILLING_GRANULARITY_SECONDS, FlavorPrice, format_usd


class Task(str, Enum):
    """What a file asks for; ``full`` is diarization plus every extra output; ``transcribe`` is diarization
    plus speech recognition of each speaker turn (who said what)."""

    DIARIZATION = "diarization"
    VAD = "vad"
    OSD = "osd"
    FULL = "full"
    TRANSCRIBE = "transcribe"


#: how much more work than diarization a task is, per audio second, in a job: speech recognition runs on
#: the job's CPU cores (the bundled recogniser has no GPU build) at a few times real time, against the
#: tens of times of diarization on the GPU. Estimates, timeouts and reservations count audio seconds times
#: this; too high costs only a larger reservation, too low a timed-out job.
TASK_EFFORT: Mapping[Task, float] = MappingProxyType({Task.TRANSCRIBE: 6.0})


def effort_seconds(task: Task | str, audio_seconds: float) -> float:
    """Audio seconds in diarization-equivalent work (``TASK_EFFORT``)."""
    return audio_seconds * TASK_EFFORT.get(Task(task), 1.0)


class Priority(str, Enum):
    """How to trade money against waiting time when picking a flavor."""

    COST = "cost"
    BALANCED = "balanced"
    SPEED = "speed"


# Container start, image pull and model download before the first audio second is processed (billed time).
DEFAULT_STARTUP_SECONDS = 120.0
# A job gets twice its estimated time before it is stopped: room for a slow start or a pessimistic figure.
DEFAULT_TIMEOUT_MARGIN = 2.0
# Short jobs still get ten minutes, so a slow image pull does not kill them.
MIN_JOB_TIMEOUT_SECONDS = 600
# The Hub's default timeout is 30 minutes, which kills long recordings; ours is derived per job, up to this.
MAX_JOB_TIMEOUT_SECONDS = 6 * 3600
# "Balanced" accepts flavors up to this factor slower than the fastest one.
BALANCED_SLOWDOWN = 1.5

# Seed real-time factors (audio seconds processed per wall second) for pyannote diarization, replaced by
# ``update_throughput`` as jobs settle. VAD and OSD are faster than diarization, so using these figures for
# them overestimates time and cost, which is the safe side for timeouts and budget reservations.
DEFAULT_THROUGHPUT: Mapping[str, float] = MappingProxyType(
    {
        "cpu-basic": 0.5,
        "cpu-upgrade": 1.5,
        "t4-small": 20.0,
        "t4-medium": 22.0,
        "l4x1": 35.0,
        "a10g-small": 40.0,
        "a10g-large": 45.0,
        "l40sx1": 55.0,
        "a100-large": 70.0,
        "h200": 100.0,
    }
)


@dataclass(frozen=True)
class CostEstimate:
    """Expected and worst-case figures for one job on one flavor.

    ``est_*`` is what the job should take and cost. ``timeout_seconds`` is the limit the job must be submitted
    with, and ``reserve_usd`` (the billed price of the whole timeout) is what the budget must reserve: the job
    cannot cost more than that.
    """

    flavor: str
    est_seconds: float
    est_cost_usd: Decimal
    timeout_seconds: int
    reserve_usd: Decimal


@dataclass(frozen=True)
class FlavorChoice:
    """Outcome of ``choose_flavor``: an estimate for the chosen flavor, or None with the reason none fits."""

    reason: str
    estimate: CostEstimate | None = None

    @property
    def flavor(self) -> str | None:
        return self.estimate.flavor if self.estimate else None

    @property
    def est_seconds(self) -> float | None:
        return self.estimate.est_seconds if self.estimate else None

    @property
    def est_cost_usd(self) -> Decimal | None:
        return self.estimate.est_cost_usd if self.estimate else None


def format_seconds(seconds: float) -> str:
    """Render a duration for reasons: ``45s``, ``3m20s``, ``2h05m``."""
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def estimate_seconds(audio_seconds: float, throughput: float, startup_seconds: float) -> float:
    """Expected billed wall time: startup plus the audio at ``throughput`` times real time.

    Raises ``ValueError`` if ``throughput`` is not positive or a duration is negative.
    """
    if not throughput > 0:
        raise ValueError(f"throughput must be positive, got {throughput}")
    if audio_seconds < 0 or startup_seconds < 0:
        raise ValueError("durations must not be negative")
    return startup_seconds + audio_seconds / throughput


def job_timeout_for(
    audio_seconds: float,
    throughput: float,
    *,
    startup_seconds: float = DEFAULT_STARTUP_SECONDS,
    margin: float = DEFAULT_TIMEOUT_MARGIN,
    min_seconds: int = MIN_JOB_TIMEOUT_SECONDS,
    max_seconds: int = MAX_JOB_TIMEOUT_SECONDS,
) -> int:
    """Return the timeout to submit a job with: ``margin`` times its estimated time, in whole billing minutes,
    at least ``min_seconds`` and at most ``max_seconds``.

    Whole minutes cost nothing extra under per-minute billing. The timeout is what bounds the job's cost, so
    the budget reserves its price (``CostEstimate.reserve_usd``). ``max_seconds`` wins over the margin: check
    that the estimate itself fits (``choose_flavor`` does). Raises ``ValueError`` on a margin below 1, a
    non-positive throughput or limit, or ``min_seconds > max_seconds``.
    """
    if margin < 1:
        raise ValueError(f"margin must be at least 1, got {margin}")
    if max_seconds <= 0 or min_seconds > max_seconds:
        raise ValueError(f"bad timeout limits: min {min_seconds}, max {max_seconds}")
    wanted = margin * estimate_seconds(audio_seconds, throughput, startup_seconds)
    minutes = math.ceil(wanted / BILLING_GRANULARITY_SECONDS) * BILLING_GRANULARITY_SECONDS
    return min(max_seconds, max(min_seconds, minutes))


@dataclass(frozen=True)
class _Option:
    price: FlavorPrice
    estimate: CostEstimate


def choose_flavor(
    task: Task,
    priority: Priority,
    audio_seconds: float,
    candidates: Sequence[FlavorPrice],
    throughput: Mapping[str, float],
    job_timeout_seconds: int = MAX_JOB_TIMEOUT_SECONDS,
    startup_seconds: float = DEFAULT_STARTUP_SECONDS,
    *,
    forced_flavor: str | None = None,
    margin: float = DEFAULT_TIMEOUT_MARGIN,
    min_timeout_seconds: int = MIN_JOB_TIMEOUT_SECONDS,
) -> FlavorChoice:
    """Pick the flavor for a job of ``audio_seconds`` among ``candidates``.

    A flavor qualifies if it has a positive ``throughput`` figure and its estimated time (startup + audio /
    throughput) fits within ``job_timeout_seconds``, the longest timeout allowed. VAD work uses CPU flavors
    only. ``cost`` takes the cheapest estimated cost, ``speed`` the shortest estimated time, ``balanced`` the
    cheapest among flavors within 1.5x of the fastest; ties go to the faster, then the cheaper, then the name.
    ``forced_flavor`` (a per-file override) restricts the choice to that flavor, CPU rule included, if it is
    offered; otherwise it is ignored and the reason says so. When nothing qualifies the choice has no
    estimate and its reason lists why each flavor was excluded; that is a decision, not an error.

    Raises ``ValueError`` on negative audio or a non-positive ``job_timeout_seconds``.
    """
    if audio_seconds < 0:
        raise ValueError(f"audio duration must not be negative, got {audio_seconds}")
    audio, audio_seconds = audio_seconds, effort_seconds(task, audio_seconds)
    if job_timeout_seconds <= 0:
        raise ValueError(f"job timeout must be positive, got {job_timeout_seconds}")
    notes: list[str] = []
    pool = list(candidates)
    forced = [c for c in pool if c.name == forced_flavor]
    if forced:
        pool = forced
        notes.append(f"flavor {forced_flavor} requested")
    else:
        if forced_flavor is not None:
            notes.append(f"requested flavor {forced_flavor} is not offered, choosing automatically")
        if Task(task) is Task.VAD:
            pool = [c for c in pool if not c.accelerator]
            notes.append("VAD runs on CPU flavors only")
    if audio_seconds != audio:
        notes.append(f"{Task(task).value} counts as {audio_seconds / audio:g}x the work of diarization")

    options: list[_Option] = []
    excluded: list[str] = []
    for price in pool:
        rtf = throughput.get(price.name)
        if rtf is None or not rtf > 0:
            excluded.append(f"{price.name} has no throughput figure")
            continue
        seconds = estimate_seconds(audio_seconds, rtf, startup_seconds)
        if seconds > job_timeout_seconds:
            excluded.append(f"{price.name} needs ~{format_seconds(seconds)}")
            continue
        timeout = job_timeout_for(
            audio_seconds,
            rtf,
            startup_seconds=startup_seconds,
            margin=margin,
            min_seconds=min(min_timeout_seconds, job_timeout_seconds),
            max_seconds=job_timeout_seconds,
        )
        estimate = CostEstimate(
            flavor=price.name,
            est_seconds=seconds,
            est_cost_usd=settle_cost(seconds, price),
            timeout_seconds=timeout,
            reserve_usd=settle_cost(timeout, price),
        )
        options.append(_Option(price, estimate))

    prefix = "; ".join(notes) + "; " if notes else ""
    if not options:
        why = "; ".join(excluded) if excluded else "no flavor is offered"
        return FlavorChoice(
            f"{prefix}no flavor finishes {format_seconds(audio)} of audio within the"
            f" {format_seconds(job_timeout_seconds)} job limit: {why}"
        )

    def by_cost(o: _Option) -> tuple[Decimal, float, str]:
        return (o.estimate.est_cost_usd, o.estimate.est_seconds, o.price.name)

    def by_speed(o: _Option) -> tuple[float, Decimal, str]:
        return (o.estimate.est_seconds, o.estimate.est_cost_usd, o.price.name)

    priority = Priority(priority)
    fastest = min(options, key=by_speed)
    if priority is Priority.SPEED:
        best, rule = fastest, "the fastest"
    elif priority is Priority.COST:
        best, rule = min(options, key=by_cost), "the cheapest"
    else:
        limit = fastest.estimate.est_seconds * BALANCED_SLOWDOWN
        near = [o for o in options if o.estimate.est_seconds <= limit]
        best, rule = min(near, key=by_cost), f"the cheapest within {BALANCED_SLOWDOWN}x of the fastest"

    est = best.estimate
    reason = (
        f"{prefix}{priority.value} priority: {est.flavor} is {rule} of {len(options)} fitting flavor(s),"
        f" ~{format_seconds(est.est_seconds)} for ~{format_usd(est.est_cost_usd)}"
        f" (timeout {format_seconds(est.timeout_seconds)}, up to {format_usd(est.reserve_usd)})"
    )
    if excluded:
        reason += f"; excluded: {', '.join(excluded)}"
    return FlavorChoice(reason, est)


def update_throughput(
    table: Mapping[str, float],
    flavor: str,
    audio_seconds: float,
    running_seconds: float,
    weight: float = 0.3,
    *,
    startup_seconds: float = 0.0,
) -> dict[str, float]:
    """Return a copy of ``table`` with ``flavor``'s real-time factor moved toward one settled job's.

    The observed factor is ``audio_seconds / (running_seconds - startup_seconds)``; pass the job's processing
    time as ``running_seconds`` or its billed time together with ``startup_seconds``. The new figure is the
    exponential moving average ``(1 - weight) * old + weight * observed``, or the observation itself for a
    flavor not in the table. A sample with no audio or no processing time teaches nothing and leaves the
    table as it was. Raises ``ValueError`` unless ``0 < weight <= 1``.
    """
    if not 0 < weight <= 1:
        raise ValueError(f"weight must be in (0, 1], got {weight}")
    updated = dict(table)
    processing = running_seconds - startup_seconds
    if not (audio_seconds > 0 and processing > 0 and math.isfinite(audio_seconds / processing)):
        return updated
    observed = audio_seconds / processing
    old = table.get(flavor)
    updated[flavor] = observed if old is None else (1 - weight) * old + weight * observed
    return updated
