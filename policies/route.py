"""Where a file is processed: locally, on Hugging Face Jobs, or later when the budget allows."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from .budget import BudgetCaps, BudgetDecision, BudgetTotals, Cap, check_budget
from .flavor import (
    DEFAULT_STARTUP_SECONDS,
    DEFAULT_THROUGHPUT,
    MAX_JOB_TIMEOUT_SECONDS,
    MIN_JOB_TIMEOUT_SECONDS,
    CostEstimate,
    Priority,
    Task,
    choose_flavor,
)
from .pricing import FALLBACK_PRICES, FlavorPrice, usd

MIB = 1024 * 1024


class Route(str, Enum):
    """The outcome: process here, submit to the cloud, or hold until the next budget period."""

    LOCAL = "local"
    CLOUD = "cloud"
    DEFERRED = "deferred"


class RouteSetting(str, Enum):
    """A route as configured per inbox or requested per file; ``auto`` leaves it to the heuristics."""

    AUTO = "auto"
    LOCAL = "local"
    CLOUD = "cloud"


@dataclass(frozen=True)
class FileFacts:
    """What is known about the audio file itself."""

    size_bytes: int
    duration_seconds: float
    task: Task = Task.DIARIZATION


@dataclass(frozen=True)
class FileOverride:
    """The routing part of a file's sidecar; None fields leave the decision to the other inputs."""

    route: RouteSetting | None = None
    flavor: str | None = None
    priority: Priority | None = None
    task: Task | None = None


@dataclass(frozen=True)
class UserPrefs:
    """Per-user preferences. ``prefer_cloud=None`` follows the global setting; ``cost_limit`` is USD/month."""

    prefer_cloud: bool | None = None
    priority_processing: bool = False
    cost_limit: Decimal | None = None


@dataclass(frozen=True)
class CloudState:
    """Whether Hugging Face Jobs can be used now, and whether to fall back to local when over budget."""

    enabled: bool
    has_token: bool
    fallback_enabled: bool = True
    unavailable_reason: str | None = None

    @property
    def why_unavailable(self) -> str | None:
        """None when the cloud can take jobs, else every reason it cannot."""
        reasons = []
        if not self.enabled:
            reasons.append("cloud processing is disabled in the configuration")
        if not self.has_token:
            reasons.append("no Hugging Face token is configured")
        if self.unavailable_reason:
            reasons.append(self.unavailable_reason)
        return "; ".join(reasons) or None


@dataclass(frozen=True)
class RouteSettings:
    """Global routing knobs: size threshold, global cloud preference, and flavor-choice defaults."""

    min_file_size: int = 10 * MIB
    prefer_cloud: bool = False
    default_priority: Priority = Priority.BALANCED
    max_job_timeout_seconds: int = MAX_JOB_TIMEOUT_SECONDS
    startup_seconds: float = DEFAULT_STARTUP_SECONDS
    min_job_timeout_seconds: int = MIN_JOB_TIMEOUT_SECONDS


@dataclass(frozen=True)
class RouteDecision:
    """Where the file goes and why.

    ``flavor`` and ``estimate`` are set exactly when the route is ``cloud`` or ``deferred``; submit with
    ``estimate.timeout_seconds`` and reserve ``estimate.reserve_usd``. ``budget`` is the budget check behind
    the decision, when one was made: for ``deferred`` its ``cap_name.period`` says which period to wait out.
    """

    route: Route
    reason: str
    flavor: str | None = None
    estimate: CostEstimate | None = None
    budget: BudgetDecision | None = None


def _stricter(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _wanted(
    file: FileFacts,
    task: Task,
    inbox_route: RouteSetting,
    override: FileOverride,
    prefs: UserPrefs,
    local_gpu: bool,
    settings: RouteSettings,
) -> tuple[Route, str, bool]:
    """The route the rules ask for before availability and budget, its reason, and whether it was forced."""
    if override.route not in (None, RouteSetting.AUTO):
        asked = RouteSetting(override.route)
        return Route(asked.value), f"the file's sidecar asks for {asked.value}", True
    if inbox_route is not RouteSetting.AUTO:
        return Route(inbox_route.value), f"the inbox is set to {inbox_route.value}", True

    prefer = settings.prefer_cloud if prefs.prefer_cloud is None else prefs.prefer_cloud
    who = "the global setting" if prefs.prefer_cloud is None else "the user"
    if prefer:
        return Route.CLOUD, f"{who} prefers cloud processing", False
    size = f"{file.size_bytes / MIB:.1f} MiB"
    threshold = f"{settings.min_file_size / MIB:.1f} MiB"
    if local_gpu:
        # A local GPU processes even long files fast and for free; only an explicit preference pays for cloud.
        why = f"a local GPU is available and cloud is not preferred ({size}, task {task.value})"
        return Route.LOCAL, why, False
    grounds = []
    if file.size_bytes >= settings.min_file_size:
        grounds.append(f"the file is {size} (threshold {threshold})")
    if task in (Task.FULL, Task.TRANSCRIBE):
        grounds.append(f"task {task.value} is heavy for a CPU")
    if grounds:
        return Route.CLOUD, " and ".join(grounds), False
    return Route.LOCAL, f"small {task.value} job ({size} < {threshold}) and cloud is not preferred", False


def decide_route(
    file: FileFacts,
    *,
    cloud: CloudState,
    caps: BudgetCaps,
    totals: BudgetTotals,
    inbox_route: RouteSetting = RouteSetting.AUTO,
    override: FileOverride | None = None,
    prefs: UserPrefs | None = None,
    local_gpu: bool = False,
    settings: RouteSettings | None = None,
    prices: Sequence[FlavorPrice] = FALLBACK_PRICES,
    throughput: Mapping[str, float] = DEFAULT_THROUGHPUT,
) -> RouteDecision:
    """Decide where one file is processed; every decision carries a non-empty reason.

    Rules, in order:

    1. A route in the file's sidecar beats the inbox's route, which beats the heuristics.
    2. Heuristics (inbox ``auto``): the user's ``prefer_cloud`` (or, if unset, the global one) sends the file
       to the cloud. Otherwise a machine with a local GPU keeps everything local. Otherwise a file of at least
       ``min_file_size`` bytes or task ``full`` goes to the cloud, anything else stays local.
    3. Cloud wanted but unusable (disabled, no token, or ``unavailable_reason``): local, naming why, even when
       fallback is off, because no budget period would change that.
    4. A flavor is chosen (``choose_flavor``; priority from the sidecar, else ``speed`` when the user has
       ``priority_processing``, else ``default_priority``). If none fits the job limit: local.
    5. The worst-case cost (``estimate.reserve_usd``) is checked against the caps, the user's cap being the
       stricter of ``caps.user_monthly_usd`` and ``prefs.cost_limit``. Over a cap: local when fallback is on,
       else ``deferred`` until the period resets; but local whenever waiting cannot help (a zero cap, a job
       dearer than the cap on its own, ``max_concurrent`` 0).
    6. All job slots busy but money fits: still ``cloud``, and the reason says it waits in the daemon's
       queue. A slot frees up when any running job ends, so changing route over it would only make routing
       flap with load.

    The daemon must check the budget again when it actually reserves, since totals move between decisions.
    Raises ``ValueError`` on negative money or durations in the inputs.
    """
    override = override or FileOverride()
    prefs = prefs or UserPrefs()
    settings = settings or RouteSettings()
    task = Task(override.task or file.task)

    wanted, why, forced = _wanted(file, task, inbox_route, override, prefs, local_gpu, settings)
    if wanted is not Route.CLOUD:
        return RouteDecision(Route.LOCAL, f"local: {why}")

    unavailable = cloud.why_unavailable
    if unavailable:
        waiting_useless = forced and not cloud.fallback_enabled
        tail = " (fallback is off, but waiting would not help)" if waiting_useless else ""
        return RouteDecision(Route.LOCAL, f"local: {why}, but {unavailable}{tail}")

    if override.priority is not None:
        priority = Priority(override.priority)
    elif prefs.priority_processing:
        priority = Priority.SPEED
    else:
        priority = settings.default_priority
    choice = choose_flavor(
        task,
        priority,
        file.duration_seconds,
        prices,
        throughput,
        settings.max_job_timeout_seconds,
        settings.startup_seconds,
        forced_flavor=override.flavor,
        min_timeout_seconds=settings.min_job_timeout_seconds,
    )
    estimate = choice.estimate
    if estimate is None:
        return RouteDecision(Route.LOCAL, f"local: {why}, but {choice.reason}")

    user_cap = _stricter(caps.user_monthly_usd, None if prefs.cost_limit is None else usd(prefs.cost_limit))
    budget = check_budget(dataclasses.replace(caps, user_monthly_usd=user_cap), totals, estimate.reserve_usd)
    detail = f"{why}; {choice.reason}; {budget.reason}"
    if budget.allowed:
        return RouteDecision(Route.CLOUD, f"cloud: {detail}", estimate.flavor, estimate, budget)
    if budget.cap_name is Cap.CONCURRENCY and budget.wait_helps:
        reason = f"cloud: {detail}; it waits in the queue for a free slot"
        return RouteDecision(Route.CLOUD, reason, estimate.flavor, estimate, budget)
    if over_budget_route(budget, fallback_enabled=cloud.fallback_enabled) is Route.LOCAL:
        tail = "; falling back to local processing" if budget.wait_helps else ""
        return RouteDecision(Route.LOCAL, f"local: {detail}{tail}", budget=budget)
    period = budget.cap_name.period if budget.cap_name else None
    return RouteDecision(
        Route.DEFERRED,
        f"deferred: {detail}; fallback is off, so it waits for the next budget {period}",
        estimate.flavor,
        estimate,
        budget,
    )


def over_budget_route(budget: BudgetDecision, *, fallback_enabled: bool) -> Route:
    """A cloud job the caps refuse: process here when fallback is on or when waiting cannot help (the job
    alone is over a cap), else defer the file to the next budget period. The one rule for routing time and
    for a batch refused at submit time."""
    if fallback_enabled or not budget.wait_helps:
        return Route.LOCAL
    return Route.DEFERRED
