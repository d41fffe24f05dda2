"""Spending caps for cloud jobs: may this job be reserved, what did a finished job cost, which periods apply.

How the caps stay hard: the daemon reserves ``CostEstimate.reserve_usd`` (the price of the job's whole
timeout, see ``flavor.job_timeout_for``) rather than the expected cost, submits the job with that timeout, and
settles it with ``settle_cost`` of the seconds Hugging Face billed. ``settle_cost`` is monotone in the running
time, so a job stopped at its timeout costs at most its reservation, and spent + reserved never rises when a
job settles. Checking spent + reserved + reservation against every cap before each submission therefore keeps
every total within its cap, including for jobs that run longer than expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from zoneinfo import ZoneInfo

from .pricing import BILLING_GRANULARITY_SECONDS, FlavorPrice, format_usd, usd, usd_ceil

ZERO_USD = usd(0)


class Cap(str, Enum):
    """The limits a cloud job must fit under; values are the configuration key names."""

    USER_MONTHLY = "cost_limit"
    MONTHLY = "monthly_usd"
    DAILY = "daily_usd"
    CONCURRENCY = "max_concurrent"

    @property
    def period(self) -> str | None:
        """The budget period after which the cap frees up again (None: it frees up when a job ends)."""
        return {Cap.USER_MONTHLY: "month", Cap.MONTHLY: "month", Cap.DAILY: "day"}.get(self)


def _money_or_none(value: Decimal | None, name: str) -> Decimal | None:
    if value is None:
        return None
    amount = usd(value)
    if amount < 0:
        raise ValueError(f"{name} must not be negative, got {amount}")
    return amount


@dataclass(frozen=True)
class BudgetCaps:
    """Configured limits. ``None`` means unlimited; ``0`` means no cloud spending (or no cloud job) at all.

    ``user_monthly_usd`` is the submitting user's monthly ``cost_limit``. Raises ``ValueError`` on a
    negative limit.
    """

    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None
    user_monthly_usd: Decimal | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in ("daily_usd", "monthly_usd", "user_monthly_usd"):
            object.__setattr__(self, name, _money_or_none(getattr(self, name), name))
        if self.max_concurrent is not None and self.max_concurrent < 0:
            raise ValueError(f"max_concurrent must not be negative, got {self.max_concurrent}")


@dataclass(frozen=True)
class PeriodTotal:
    """Ledger totals for one period: settled spending and open reservations."""

    spent_usd: Decimal = ZERO_USD
    reserved_usd: Decimal = ZERO_USD

    def __post_init__(self) -> None:
        object.__setattr__(self, "spent_usd", usd(self.spent_usd))
        object.__setattr__(self, "reserved_usd", usd(self.reserved_usd))

    @property
    def committed_usd(self) -> Decimal:
        return self.spent_usd + self.reserved_usd


@dataclass(frozen=True)
class BudgetTotals:
    """What the ledger holds for the current day, month, and the submitting user's month."""

    day: PeriodTotal = field(default_factory=PeriodTotal)
    month: PeriodTotal = field(default_factory=PeriodTotal)
    user_month: PeriodTotal = field(default_factory=PeriodTotal)
    jobs_in_flight: int = 0


@dataclass(frozen=True)
class BudgetDecision:
    """Outcome of ``check_budget``.

    ``cap_name`` names the cap that refused (None when allowed). ``headroom`` is what the tightest money cap
    leaves after this job (negative when over, None when no money cap is set). ``wait_helps`` says whether the
    job could pass later: after its period resets or a job slot frees up; False when it never will (a zero
    cap, or a job dearer than the cap on its own).
    """

    allowed: bool
    reason: str
    cap_name: Cap | None = None
    headroom: Decimal | None = None
    wait_helps: bool = True


def check_budget(caps: BudgetCaps, totals: BudgetTotals, estimate_usd: Decimal) -> BudgetDecision:
    """Allow a job costing up to ``estimate_usd`` only if spent + reserved + estimate fits every cap.

    Money caps are checked before concurrency, so a refusal naming ``Cap.CONCURRENCY`` means the money fits
    and only a job slot is missing. Among money caps the monthly ones are named first because a month-long
    wait covers a day-long one. Raises ``ValueError`` on a negative estimate.
    """
    estimate = usd(estimate_usd)
    if estimate < 0:
        raise ValueError(f"estimate must not be negative, got {estimate}")
    checks = (
        (Cap.USER_MONTHLY, caps.user_monthly_usd, totals.user_month),
        (Cap.MONTHLY, caps.monthly_usd, totals.month),
        (Cap.DAILY, caps.daily_usd, totals.day),
    )
    over: list[tuple[Cap, Decimal, PeriodTotal]] = []
    tightest: tuple[Cap, Decimal, Decimal] | None = None
    for cap, limit, total in checks:
        if limit is None:
            continue
        left = limit - total.committed_usd - estimate
        if tightest is None or left < tightest[2]:
            tightest = (cap, limit, left)
        # A zero cap refuses even a free job: it is how a user switches cloud spending off.
        if left < 0 or limit == 0:
            over.append((cap, limit, total))
    headroom = tightest[2] if tightest else None

    if over:
        cap, limit, total = over[0]
        if limit == 0:
            reason = f"{cap.value} is {format_usd(limit)}: no cloud spending is allowed"
        else:
            reason = (
                f"{cap.value} {format_usd(limit)} would be exceeded: spent {format_usd(total.spent_usd)}"
                f" + reserved {format_usd(total.reserved_usd)} + this job {format_usd(estimate)}"
                f" = {format_usd(total.committed_usd + estimate)}"
            )
        if len(over) > 1:
            reason += f" (also over {', '.join(c.value for c, _, _ in over[1:])})"
        wait_helps = all(0 < lim and estimate <= lim for _, lim, _ in over)
        if not wait_helps and limit != 0:
            reason += "; waiting for a new period will not help (a cap is zero or below this job alone)"
        return BudgetDecision(False, reason, cap, headroom, wait_helps)

    if caps.max_concurrent is not None and totals.jobs_in_flight >= caps.max_concurrent:
        if caps.max_concurrent == 0:
            reason = "max_concurrent is 0: no cloud job may run"
        else:
            reason = (
                f"all {caps.max_concurrent} cloud job slots are busy"
                f" ({totals.jobs_in_flight} in flight, max_concurrent {caps.max_concurrent})"
            )
        return BudgetDecision(False, reason, Cap.CONCURRENCY, headroom, caps.max_concurrent > 0)

    if tightest is None:
        reason = f"within budget: no spending cap is set (this job up to {format_usd(estimate)})"
    else:
        cap, limit, left = tightest
        reason = (
            f"within budget: {cap.value} {format_usd(limit)} leaves {format_usd(left)}"
            f" after this job's {format_usd(estimate)}"
        )
    return BudgetDecision(True, reason, None, headroom)


def settle_cost(
    running_seconds: float,
    price: FlavorPrice,
    *,
    granularity_seconds: int = BILLING_GRANULARITY_SECONDS,
) -> Decimal:
    """Return what a job billed for ``running_seconds`` costs, in dollars quantized to micro-dollars.

    Billing counts every started ``granularity_seconds`` block (Hugging Face bills per minute) and the result
    is rounded up, so it never undercounts. The result is monotone in ``running_seconds``: this is what lets a
    reservation for a job's timeout cover the job. Non-positive running time costs nothing. Raises
    ``ValueError`` for a non-finite running time or a non-positive granularity.
    """
    if not math.isfinite(running_seconds):
        raise ValueError(f"running time must be finite, got {running_seconds}")
    if granularity_seconds <= 0:
        raise ValueError(f"billing granularity must be positive, got {granularity_seconds}")
    if running_seconds <= 0:
        return ZERO_USD
    billed_seconds = math.ceil(running_seconds / granularity_seconds) * granularity_seconds
    return usd_ceil(price.unit_cost_usd * billed_seconds / price.unit_label.seconds)


@dataclass(frozen=True)
class Periods:
    """The budget day and month containing an instant, as half-open ranges ``[start, end)``.

    Values carry the budget time zone, for display. Compare and subtract them as UTC (``.astimezone(utc)``)
    or through ``.timestamp()``: Python compares and subtracts two datetimes sharing a ``tzinfo`` by wall
    clock, which is wrong across a DST change.
    """

    day_start: datetime
    day_end: datetime
    month_start: datetime
    month_end: datetime


def _start_of(day: date, tz: ZoneInfo) -> datetime:
    # fold=0 picks the earlier of two midnights in a fold and, when midnight falls in a DST gap, the offset
    # from before the gap, which lands on the first instant that exists that day. The trip through UTC
    # turns the result into a real wall-clock reading with the right fold.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC).astimezone(tz)


def period_bounds(now: datetime, tz: ZoneInfo) -> Periods:
    """Return the day and month in ``tz`` that contain ``now``: ``day_start <= now < day_end`` and likewise
    for the month, each bound being the first instant the local clock shows its date. Days last 23 or 25 hours
    around DST changes, and successive periods neither overlap nor leave gaps.

    Raises ``ValueError`` if ``now`` is naive: a naive time could fall in either of two days around a change.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    today = now.astimezone(tz).date()
    # Where a DST fold crosses midnight (Goose Bay, 1987: 00:01 back to 23:01) the clock shows yesterday's
    # date again after the new day has begun. The day that has begun wins, so periods never overlap.
    tomorrow_start = _start_of(today + timedelta(days=1), tz)
    if now.astimezone(UTC) >= tomorrow_start.astimezone(UTC):
        today += timedelta(days=1)
    first = today.replace(day=1)
    next_first = (first + timedelta(days=32)).replace(day=1)
    return Periods(
        day_start=_start_of(today, tz),
        day_end=_start_of(today + timedelta(days=1), tz),
        month_start=_start_of(first, tz),
        month_end=_start_of(next_first, tz),
    )


@dataclass(frozen=True)
class JobCharge:
    """One cloud job as the budget sees it: open jobs count their reservation, settled ones their cost."""

    created_at: float
    open: bool
    amount_usd: Decimal
    user: str | None = None


def sum_budget(charges: Iterable[JobCharge], now: float, tz: ZoneInfo, user: str | None = None) -> BudgetTotals:
    """Spent (settled jobs) and reserved (open jobs) per period; a job counts in the period it was reserved.

    ``user_month`` sums ``user``'s jobs only (empty when ``user`` is None).
    """
    periods = period_bounds(datetime.fromtimestamp(now, UTC), tz)
    bounds = {
        "day": (periods.day_start.timestamp(), periods.day_end.timestamp()),
        "month": (periods.month_start.timestamp(), periods.month_end.timestamp()),
    }
    sums = {k: [ZERO_USD, ZERO_USD] for k in ("day", "month", "user")}
    in_flight = 0
    for c in charges:
        in_flight += c.open
        slot = 1 if c.open else 0
        for name, (start, end) in bounds.items():
            if start <= c.created_at < end:
                sums[name][slot] += usd(c.amount_usd)
                if name == "month" and user is not None and c.user == user:
                    sums["user"][slot] += usd(c.amount_usd)
    return BudgetTotals(
        day=PeriodTotal(*sums["day"]),
        month=PeriodTotal(*sums["month"]),
        user_month=PeriodTotal(*sums["user"]),
        jobs_in_flight=in_flight,
    )


def earliest_period_start(now: float, tz: ZoneInfo) -> float:
    """Jobs created before this cannot count in any current period (open ones count regardless)."""
    periods = period_bounds(datetime.fromtimestamp(now, UTC), tz)
    return min(periods.day_start.timestamp(), periods.month_start.timestamp())
