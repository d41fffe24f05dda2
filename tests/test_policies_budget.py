"""Budget caps, settling costs and budget periods (diarist.policies.budget, .pricing money helpers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from diarist.policies.budget import (
    BudgetCaps,
    BudgetTotals,
    Cap,
    PeriodTotal,
    check_budget,
    period_bounds,
    settle_cost,
)
from diarist.policies.flavor import DEFAULT_THROUGHPUT, Priority, Task, choose_flavor
from diarist.policies.pricing import FALLBACK_PRICES, FlavorPrice, format_usd, usd

D = Decimal
UTC = UTC
MICROSECOND = timedelta(microseconds=1)
A10G = next(p for p in FALLBACK_PRICES if p.name == "a10g-small")
DST_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # half-hour DST shift
    "America/Havana",  # DST starts at midnight: the day begins at 01:00
    "America/Santiago",
    "America/Goose_Bay",  # 1987-2010: fall-back at 00:01 crosses midnight
    "Pacific/Apia",  # skipped 2011-12-30 entirely
    "Asia/Kolkata",
    "UTC",
]


def totals(day: str = "0", month: str = "0", user: str = "0", reserved: str = "0", in_flight: int = 0):
    r = D(reserved)
    return BudgetTotals(
        day=PeriodTotal(D(day), r),
        month=PeriodTotal(D(month), r),
        user_month=PeriodTotal(D(user), r),
        jobs_in_flight=in_flight,
    )


class TestMoney:
    def test_float_config_values_are_exact(self) -> None:
        """A float from configuration becomes the decimal it was written as, quantized to micro-dollars."""
        assert usd(0.1) == D("0.100000")
        assert usd("1.0000004") == D("1.000000")

    def test_non_numbers_rejected(self) -> None:
        """NaN, infinity and text are not money."""
        for bad in (float("nan"), float("inf"), "ten"):
            with pytest.raises(ValueError):
                usd(bad)

    def test_format(self) -> None:
        """Amounts show cents always and sub-cent digits only when present."""
        assert [format_usd(D(x)) for x in ("5", "0.5", "0.000833", "-1.25")] == [
            "$5.00",
            "$0.50",
            "$0.000833",
            "-$1.25",
        ]


class TestCheckBudget:
    @pytest.mark.parametrize(
        ("caps", "state", "estimate", "allowed", "cap"),
        [
            (BudgetCaps(), totals(), "100", True, None),
            (BudgetCaps(daily_usd=D(5)), totals(day="4", reserved="0.5"), "0.5", True, None),
            (BudgetCaps(daily_usd=D(5)), totals(day="4", reserved="0.5"), "0.500001", False, Cap.DAILY),
            (BudgetCaps(monthly_usd=D(20)), totals(month="19.9"), "0.2", False, Cap.MONTHLY),
            (BudgetCaps(user_monthly_usd=D(3)), totals(user="2.9"), "0.2", False, Cap.USER_MONTHLY),
            (BudgetCaps(daily_usd=D(0)), totals(), "0", False, Cap.DAILY),
            (BudgetCaps(max_concurrent=2), totals(in_flight=1), "1", True, None),
            (BudgetCaps(max_concurrent=2), totals(in_flight=2), "1", False, Cap.CONCURRENCY),
            (BudgetCaps(max_concurrent=0), totals(), "0", False, Cap.CONCURRENCY),
        ],
    )
    def test_caps_table(self, caps: BudgetCaps, state: BudgetTotals, estimate: str, allowed: bool, cap) -> None:
        """spent + reserved + estimate must fit every cap; None is unlimited, 0 allows nothing."""
        decision = check_budget(caps, state, D(estimate))
        assert (decision.allowed, decision.cap_name) == (allowed, cap)
        assert decision.reason

    def test_reason_names_cap_and_amounts(self) -> None:
        """A refusal names the cap and spells out spent, reserved, this job and the total."""
        decision = check_budget(BudgetCaps(daily_usd=D(5)), totals(day="4.2", reserved="0.5"), D("0.4"))
        assert decision.reason == (
            "daily_usd $5.00 would be exceeded: spent $4.20 + reserved $0.50 + this job $0.40 = $5.10"
        )
        assert decision.headroom == D("-0.1") and decision.wait_helps

    def test_monthly_named_before_daily(self) -> None:
        """When several caps are over, the longest period is named, as that is the wait that helps."""
        decision = check_budget(BudgetCaps(daily_usd=D(1), monthly_usd=D(1)), totals("1", "1"), D("0.1"))
        assert decision.cap_name is Cap.MONTHLY and "also over daily_usd" in decision.reason

    def test_money_checked_before_concurrency(self) -> None:
        """A concurrency refusal implies the money fits."""
        caps = BudgetCaps(daily_usd=D(1), max_concurrent=1)
        assert check_budget(caps, totals(day="1", in_flight=1), D("0.1")).cap_name is Cap.DAILY
        assert check_budget(caps, totals(in_flight=1), D("0.1")).cap_name is Cap.CONCURRENCY

    def test_waiting_cannot_help(self) -> None:
        """A job dearer than the cap itself, or a zero cap, will never pass: wait_helps is False."""
        assert not check_budget(BudgetCaps(daily_usd=D(1)), totals(), D(2)).wait_helps
        assert not check_budget(BudgetCaps(monthly_usd=D(0)), totals(), D(0)).wait_helps
        assert not check_budget(BudgetCaps(max_concurrent=0), totals(), D(0)).wait_helps

    def test_headroom_is_tightest_cap(self) -> None:
        """Headroom is what the tightest money cap leaves after the job."""
        caps = BudgetCaps(daily_usd=D(5), monthly_usd=D(10))
        assert check_budget(caps, totals(day="1", month="9"), D("0.5")).headroom == D("0.5")
        assert check_budget(BudgetCaps(), totals(), D(1)).headroom is None

    def test_negative_inputs_raise(self) -> None:
        """A negative estimate or cap is a caller bug."""
        with pytest.raises(ValueError):
            check_budget(BudgetCaps(), totals(), D(-1))
        with pytest.raises(ValueError):
            BudgetCaps(daily_usd=D(-1))


class TestSettleCost:
    def test_billed_per_started_minute(self) -> None:
        """Every started minute is billed in full: 61 s on $1/h cost two minutes."""
        assert settle_cost(61, A10G) == D("0.033334")
        assert settle_cost(3600, A10G) == D("1.000000")

    def test_nothing_run_costs_nothing(self) -> None:
        """Zero or negative running time costs nothing."""
        assert settle_cost(0, A10G) == 0 and settle_cost(-5, A10G) == 0

    @given(a=st.floats(0, 10 * 3600), b=st.floats(0, 10 * 3600), price=st.sampled_from(FALLBACK_PRICES))
    def test_monotone(self, a: float, b: float, price: FlavorPrice) -> None:
        """Running longer never costs less: a reservation for the timeout covers any shorter run."""
        lo, hi = sorted((a, b))
        assert settle_cost(lo, price) <= settle_cost(hi, price)


class TestPeriodBounds:
    @given(
        now=st.datetimes(datetime(1971, 1, 1), datetime(2037, 12, 31), timezones=st.just(UTC)),
        zone=st.sampled_from(DST_ZONES),
    )
    def test_now_within_periods(self, now: datetime, zone: str) -> None:
        """now lies in [day_start, day_end) within [month_start, month_end); each bound is a date change."""
        tz = ZoneInfo(zone)
        p = period_bounds(now, tz)
        start, end = p.day_start.astimezone(UTC), p.day_end.astimezone(UTC)
        m_start, m_end = p.month_start.astimezone(UTC), p.month_end.astimezone(UTC)
        assert m_start <= start <= now < end <= m_end
        for bound in (start, end, m_start, m_end):
            assert (bound - MICROSECOND).astimezone(tz).date() < bound.astimezone(tz).date()
        assert m_start.astimezone(tz).day == 1 and m_end.astimezone(tz).day == 1
        assert start.astimezone(tz).date() - now.astimezone(tz).date() in (timedelta(0), timedelta(days=1))
        assert timedelta(hours=22) <= end - start <= timedelta(hours=26)

    @given(now=st.datetimes(datetime(1971, 1, 1), datetime(2037, 12, 31), timezones=st.just(UTC)))
    def test_periods_tile_time(self, now: datetime) -> None:
        """The day after a day starts where it ended, so periods neither overlap nor leave gaps."""
        tz = ZoneInfo("America/New_York")
        p = period_bounds(now, tz)
        assert period_bounds(p.day_end, tz).day_start.astimezone(UTC) == p.day_end.astimezone(UTC)
        assert period_bounds(p.month_end, tz).month_start.astimezone(UTC) == p.month_end.astimezone(UTC)

    @pytest.mark.parametrize(
        ("zone", "day", "hours"),
        [
            ("Europe/Berlin", date(2024, 3, 31), 23),
            ("Europe/Berlin", date(2024, 10, 27), 25),
            ("America/New_York", date(2024, 3, 10), 23),
            ("America/New_York", date(2024, 11, 3), 25),
            ("Europe/Berlin", date(2024, 6, 1), 24),
        ],
    )
    def test_dst_days(self, zone: str, day: date, hours: int) -> None:
        """Days of a DST change last 23 or 25 hours; others 24."""
        tz = ZoneInfo(zone)
        p = period_bounds(datetime(day.year, day.month, day.day, 12, tzinfo=tz), tz)
        assert p.day_end.astimezone(UTC) - p.day_start.astimezone(UTC) == timedelta(hours=hours)

    def test_midnight_in_dst_gap(self) -> None:
        """Where midnight does not exist (Havana, spring), the day starts at 01:00."""
        tz = ZoneInfo("America/Havana")
        p = period_bounds(datetime(2024, 3, 10, 12, tzinfo=tz), tz)
        assert (p.day_start.hour, p.day_start.date()) == (1, date(2024, 3, 10))

    @pytest.mark.parametrize(
        ("now", "start", "end"),
        [
            (datetime(2024, 2, 29, 23, 59), date(2024, 2, 1), date(2024, 3, 1)),
            (datetime(2023, 12, 31, 23, 59), date(2023, 12, 1), date(2024, 1, 1)),
            (datetime(2024, 4, 1, 0, 0), date(2024, 4, 1), date(2024, 5, 1)),
        ],
    )
    def test_month_ends(self, now: datetime, start: date, end: date) -> None:
        """Months end at midnight of the next month's first day, leap years and year ends included."""
        tz = ZoneInfo("Europe/Berlin")
        p = period_bounds(now.replace(tzinfo=tz), tz)
        assert (p.month_start.date(), p.month_end.date()) == (start, end)
        assert p.month_start.hour == p.month_end.hour == 0

    def test_naive_now_rejected(self) -> None:
        """A naive time is ambiguous near DST changes, so it is refused."""
        with pytest.raises(ValueError, match="aware"):
            period_bounds(datetime(2024, 1, 1), ZoneInfo("UTC"))


# --- The budget invariant, as a state machine over an in-memory ledger -------------------------------------

USERS = ("ana", "ben")
cap_amounts = st.none() | st.decimals(min_value=0, max_value=3, places=2)


@dataclass
class Reservation:
    user: str
    price: FlavorPrice
    est_seconds: float
    timeout_seconds: int
    amount: Decimal


class BudgetLedger(RuleBasedStateMachine):
    """A daemon's ledger driven only through check_budget and settle_cost.

    Open reservations count against every current period until they close; a settled job's real cost is
    booked in the periods current when it settles. The daemon stops a job at its timeout, so the billed
    running time never exceeds it.
    """

    reservations = Bundle("reservations")

    @initialize(
        daily=cap_amounts,
        monthly=cap_amounts,
        user_caps=st.tuples(cap_amounts, cap_amounts),
        max_concurrent=st.none() | st.integers(0, 4),
    )
    def configure(self, daily, monthly, user_caps, max_concurrent) -> None:
        self.caps = {
            user: BudgetCaps(daily, monthly, cap, max_concurrent) for user, cap in zip(USERS, user_caps, strict=True)
        }
        self.day_spent = self.month_spent = D(0)
        self.user_spent = {user: D(0) for user in USERS}
        self.open: dict[int, Reservation] = {}
        self.closed: dict[int, str] = {}
        self.next_id = 0

    def reserved(self, user: str | None = None) -> Decimal:
        return sum((r.amount for r in self.open.values() if user in (None, r.user)), D(0))

    def totals_for(self, user: str) -> BudgetTotals:
        return BudgetTotals(
            day=PeriodTotal(self.day_spent, self.reserved()),
            month=PeriodTotal(self.month_spent, self.reserved()),
            user_month=PeriodTotal(self.user_spent[user], self.reserved(user)),
            jobs_in_flight=len(self.open),
        )

    @rule(
        target=reservations,
        user=st.sampled_from(USERS),
        price=st.sampled_from(FALLBACK_PRICES),
        audio_seconds=st.floats(0, 3 * 3600),
    )
    def reserve(self, user: str, price: FlavorPrice, audio_seconds: float):
        estimate = choose_flavor(Task.DIARIZATION, Priority.COST, audio_seconds, [price], DEFAULT_THROUGHPUT).estimate
        if estimate is None:
            return multiple()
        decision = check_budget(self.caps[user], self.totals_for(user), estimate.reserve_usd)
        assert decision.reason
        if not decision.allowed:
            return multiple()
        event("reserved")
        rid, self.next_id = self.next_id, self.next_id + 1
        self.open[rid] = Reservation(user, price, estimate.est_seconds, estimate.timeout_seconds, estimate.reserve_usd)
        return rid

    @rule(rid=consumes(reservations), overrun=st.booleans(), share=st.floats(0, 1))
    def settle(self, rid: int, overrun: bool, share: float) -> None:
        """Settle below the estimate, or above it (a slow job) but never past the timeout."""
        r = self.open.pop(rid)
        if overrun:
            running = r.est_seconds + share * (r.timeout_seconds - r.est_seconds)
        else:
            running = share * r.est_seconds
        cost = settle_cost(running, r.price)
        event("settled above the estimate" if cost > settle_cost(r.est_seconds, r.price) else "settled within it")
        assert cost <= r.amount
        self.day_spent += cost
        self.month_spent += cost
        self.user_spent[r.user] += cost
        self.closed[rid] = "settled"

    @rule(rid=consumes(reservations))
    def release(self, rid: int) -> None:
        """A job that never started (submission failed) releases its reservation and costs nothing."""
        self.open.pop(rid)
        self.closed[rid] = "released"

    @rule()
    def new_day(self) -> None:
        self.day_spent = D(0)

    @rule()
    def new_month(self) -> None:
        self.day_spent = self.month_spent = D(0)
        self.user_spent = {user: D(0) for user in USERS}

    @invariant()
    def within_every_cap(self) -> None:
        if not hasattr(self, "caps"):
            return
        for user in USERS:
            caps, state = self.caps[user], self.totals_for(user)
            for limit, total in (
                (caps.daily_usd, state.day),
                (caps.monthly_usd, state.month),
                (caps.user_monthly_usd, state.user_month),
            ):
                assert limit is None or total.committed_usd <= limit
            assert caps.max_concurrent is None or state.jobs_in_flight <= caps.max_concurrent

    @invariant()
    def each_reservation_in_one_state(self) -> None:
        if hasattr(self, "open"):
            assert not self.open.keys() & self.closed.keys()
            assert len(self.open) + len(self.closed) == self.next_id

    def teardown(self) -> None:
        # The daemon settles whatever is still open from the Hub's record of the job.
        for rid in list(getattr(self, "open", {})):
            self.settle(rid, overrun=False, share=1.0)
        assert set(getattr(self, "closed", {})) == set(range(getattr(self, "next_id", 0)))


BudgetLedger.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBudgetLedger = BudgetLedger.TestCase
