"""Budgets through the real ledger: reservations and settlements never let committed spending pass a cap.

Hypothesis drives interleavings of submits, settlements, failures and period changes against a real SQLite
ledger with an injected clock; a second test races submitters in threads, each with its own connection (as
separate daemons on one ledger would). The invariant is checked with the test's own arithmetic over the
``jobs`` table, not with the ledger's totals.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diarist.daemon.ledger import JobState, Ledger
from diarist.policies.budget import BudgetCaps, period_bounds

TZ = ZoneInfo("Europe/Berlin")
START = datetime(2026, 3, 28, 20, 0, tzinfo=UTC).timestamp()  # the night Berlin moves its clocks forward


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def committed_by_period(ledger: Ledger, now: float) -> dict[str, dict[str, Decimal]]:
    """Independent arithmetic: per day / month / user-month, settled cost plus open reservations."""
    out: dict[str, dict[str, Decimal]] = {"day": {}, "month": {}, "user": {}}
    for job in ledger.db.query("select * from jobs"):
        at = datetime.fromtimestamp(job["created_at"], UTC).astimezone(TZ)
        is_open = job["state"] in ("submitting", "in-flight")
        amount = Decimal(job["reserve_usd"] if is_open else (job["cost_usd"] or "0"))
        for period, key in (("day", at.date().isoformat()), ("month", at.strftime("%Y-%m"))):
            out[period][key] = out[period].get(key, Decimal(0)) + amount
        user_key = f"{job['user']}:{at:%Y-%m}"
        out["user"][user_key] = out["user"].get(user_key, Decimal(0)) + amount
    return out


def assert_within(ledger: Ledger, caps: BudgetCaps, user_caps: dict[str, Decimal]) -> None:
    totals = committed_by_period(ledger, 0)
    for day, amount in totals["day"].items():
        assert caps.daily_usd is None or amount <= caps.daily_usd, f"day {day}: {amount} > {caps.daily_usd}"
    for month, amount in totals["month"].items():
        assert caps.monthly_usd is None or amount <= caps.monthly_usd, f"month {month}: {amount}"
    for key, amount in totals["user"].items():
        cap = user_caps.get(key.split(":")[0])
        assert cap is None or amount <= cap, f"user {key}: {amount} > {cap}"


op = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(["ann", "bob"]), st.integers(1, 40)),  # cents
    st.tuples(st.just("settle"), st.integers(0, 50), st.integers(0, 100)),  # which job, % of its reservation
    st.tuples(st.just("fail"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("advance"), st.integers(60, 3 * 86400), st.just(0)),  # seconds: crosses days and DST
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=40), daily=st.integers(0, 60), monthly=st.integers(20, 150))
def test_committed_spending_never_exceeds_a_cap(tmp_path: Path, ops, daily: int, monthly: int) -> None:
    clock = Clock(START)
    ledger = Ledger(tmp_path / f"{uuid.uuid4().hex}.db", clock=clock)
    user_caps = {"ann": Decimal("0.50"), "bob": None}
    open_jobs: list[tuple[str, Decimal]] = []
    reserved_ever: set[str] = set()
    closed: set[str] = set()
    for kind, a, b in ops:
        if kind == "submit":
            caps = BudgetCaps(
                daily_usd=Decimal(daily) / 100,
                monthly_usd=Decimal(monthly) / 100,
                user_monthly_usd=user_caps[a],
            )
            batch = uuid.uuid4().hex[:16]
            amount = Decimal(b) / 100
            decision = ledger.reserve_job(
                batch, [], caps=caps, reserve_usd=amount, tz=TZ, user=a, namespace="ns", repo="ns/r", flavor="t4-small"
            )
            if decision.allowed:
                open_jobs.append((batch, amount))
                reserved_ever.add(batch)
            else:
                assert decision.reason and decision.cap_name is not None
            assert_within(
                ledger,
                BudgetCaps(daily_usd=Decimal(daily) / 100, monthly_usd=Decimal(monthly) / 100),
                {"ann": user_caps["ann"]},
            )
        elif kind in ("settle", "fail") and open_jobs:
            batch, amount = open_jobs.pop(a % len(open_jobs))
            # a job never costs more than its reservation: the reservation is its timeout's price
            cost = (amount * b / 100).quantize(Decimal("0.000001")) if kind == "settle" else None
            ledger.settle_job(batch, state=JobState.COLLECTED if kind == "settle" else JobState.FAILED, cost_usd=cost)
            closed.add(batch)
        elif kind == "advance":
            clock.now += a
        assert_within(
            ledger,
            BudgetCaps(daily_usd=Decimal(daily) / 100, monthly_usd=Decimal(monthly) / 100),
            {"ann": user_caps["ann"]},
        )
    # every reservation ends settled or released, never lost
    for batch in closed:
        assert ledger.job(batch).state in (JobState.COLLECTED, JobState.FAILED)
    for batch, _ in open_jobs:
        ledger.settle_job(batch, state=JobState.FAILED, cost_usd=None)
    assert ledger.open_jobs() == []
    assert {j.batch_id for j in ledger.jobs(limit=1000)} == reserved_ever
    totals = ledger.budget_totals(TZ)
    assert totals.day.reserved_usd == 0 and totals.month.reserved_usd == 0 and totals.jobs_in_flight == 0


def test_racing_submitters_cannot_share_the_same_headroom(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    # every connection on one fixed instant, mid-day in Berlin: the budget day cannot end during the race
    noon = Clock(datetime(2026, 5, 12, 10, 0, tzinfo=UTC).timestamp())
    Ledger(path, clock=noon)  # schema
    caps = BudgetCaps(daily_usd=Decimal("1.00"))
    allowed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def submitter(n: int) -> None:
        ledger = Ledger(path, clock=noon)  # its own connection, as another daemon would have
        barrier.wait()
        for i in range(10):
            batch = f"t{n}-{i}"
            decision = ledger.reserve_job(
                batch, [], caps=caps, reserve_usd=Decimal("0.07"), tz=TZ, namespace="ns", repo="ns/r", flavor="l4x1"
            )
            if decision.allowed:
                with lock:
                    allowed.append(batch)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 80 attempts at $0.07 against $1.00: exactly 14 fit, however the threads interleave
    assert len(allowed) == 14
    ledger = Ledger(path, clock=noon)
    assert ledger.budget_totals(TZ).day.reserved_usd == Decimal("0.98")


def test_a_new_day_frees_the_daily_cap_but_not_the_monthly_one(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 10, 21, 30, tzinfo=UTC).timestamp())  # 23:30 in Berlin
    ledger = Ledger(tmp_path / "ledger.db", clock=clock)
    caps = BudgetCaps(daily_usd=Decimal("0.20"), monthly_usd=Decimal("0.25"))

    def submit(amount: str) -> str | None:
        decision = ledger.reserve_job(
            uuid.uuid4().hex, [], caps=caps, reserve_usd=Decimal(amount), tz=TZ, namespace="n", repo="n/r", flavor="x"
        )
        return None if decision.allowed else decision.cap_name.value

    assert [submit("0.10"), submit("0.10"), submit("0.01")] == [None, None, "daily_usd"]
    clock.now += timedelta(hours=1).total_seconds()  # 00:30 the next day in Berlin, still 22:30 UTC
    assert period_bounds(datetime.fromtimestamp(clock.now, UTC), TZ).day_start.day == 11
    assert [submit("0.05"), submit("0.01")] == [None, "monthly_usd"]
