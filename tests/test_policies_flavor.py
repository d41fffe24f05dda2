"""Flavor choice, job timeouts and throughput learning (diarist.policies.flavor, .pricing)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.policies.flavor import (
    BALANCED_SLOWDOWN,
    DEFAULT_THROUGHPUT,
    MAX_JOB_TIMEOUT_SECONDS,
    Priority,
    Task,
    choose_flavor,
    estimate_seconds,
    job_timeout_for,
    update_throughput,
)
from diarist.policies.pricing import FALLBACK_PRICES, JOB_FLAVORS, FlavorPrice, PriceUnit, unknown_flavor

HOUR = 3600.0
CPU_FLAVORS = {p.name for p in FALLBACK_PRICES if not p.accelerator}

audio = st.floats(min_value=0, max_value=4 * HOUR)
priorities = st.sampled_from(Priority)
tasks = st.sampled_from(Task)


def pick(task: Task, priority: Priority, seconds: float = HOUR, **kwargs) -> str | None:
    return choose_flavor(task, priority, seconds, FALLBACK_PRICES, DEFAULT_THROUGHPUT, **kwargs).flavor


class TestFlavorPrice:
    def test_per_second_price_from_each_unit(self) -> None:
        """An hourly, per-minute or per-second price converts to the same dollars per second."""
        per_hour = FlavorPrice("x", Decimal("3.60"), PriceUnit.HOUR)
        per_minute = FlavorPrice("x", Decimal("0.06"), PriceUnit.MINUTE)
        per_second = FlavorPrice("x", Decimal("0.001"), PriceUnit("second"))
        assert per_hour.usd_per_second == per_minute.usd_per_second == per_second.usd_per_second

    def test_negative_price_is_rejected(self) -> None:
        """A negative price is a configuration error."""
        with pytest.raises(ValueError, match="negative"):
            FlavorPrice("x", Decimal("-1"))

    def test_every_built_in_name_is_a_real_jobs_flavor(self) -> None:
        """The built-in tables name only flavors the Jobs API knows: the client's JobHardware, kept in sync with
        the Hub by its maintainers; the list of valid names is exactly that enum."""
        from huggingface_hub import JobHardware

        real = {h.value for h in JobHardware}
        assert set(JOB_FLAVORS) == real
        assert {p.name for p in FALLBACK_PRICES} <= real
        assert set(DEFAULT_THROUGHPUT) <= real
        assert unknown_flavor("a10g-small") is None
        assert "valid flavors: cpu-basic" in (unknown_flavor("h100") or "")

    def test_fallback_table_covers_published_flavors(self) -> None:
        """The fallback table lists CPU and GPU flavors, each with a positive price and a seed throughput."""
        names = {p.name for p in FALLBACK_PRICES}
        assert {"cpu-basic", "cpu-upgrade", "t4-small", "l4x1", "a10g-small", "a100-large", "h200"} <= names
        assert CPU_FLAVORS == {"cpu-basic", "cpu-upgrade"}
        assert all(p.unit_cost_usd > 0 for p in FALLBACK_PRICES)
        assert names <= set(DEFAULT_THROUGHPUT)
        assert next(p for p in FALLBACK_PRICES if p.name == "a10g-small").unit_cost_usd == Decimal("1.00")


class TestChooseFlavor:
    def test_cost_picks_cheapest_that_fits(self) -> None:
        """Cost priority takes the cheapest estimate; CPU is cheapest for diarization given a long limit."""
        assert pick(Task.DIARIZATION, Priority.COST) == "cpu-basic"

    def test_speed_picks_fastest(self) -> None:
        """Speed priority takes the flavor with the shortest estimated time."""
        assert pick(Task.DIARIZATION, Priority.SPEED) == "h200"

    def test_balanced_picks_cheapest_near_fastest(self) -> None:
        """Balanced takes the cheapest flavor within 1.5x of the fastest estimate."""
        assert pick(Task.DIARIZATION, Priority.BALANCED) == "l4x1"

    def test_vad_runs_on_cpu_only(self) -> None:
        """VAD work never gets a GPU flavor, whatever the priority."""
        for priority in Priority:
            assert pick(Task.VAD, priority) in CPU_FLAVORS
        assert pick(Task.VAD, Priority.SPEED) == "cpu-upgrade"

    def test_timeout_excludes_slow_flavors(self) -> None:
        """A flavor whose estimate exceeds the job limit is excluded and named in the reason."""
        choice = choose_flavor(Task.DIARIZATION, Priority.COST, HOUR, FALLBACK_PRICES, DEFAULT_THROUGHPUT, 3600)
        assert choice.flavor == "cpu-upgrade"
        assert "cpu-basic needs" in choice.reason

    def test_nothing_fits_is_a_decision(self) -> None:
        """When no flavor fits the limit there is no flavor and the reason says why, without raising."""
        choice = choose_flavor(Task.DIARIZATION, Priority.SPEED, HOUR, FALLBACK_PRICES, DEFAULT_THROUGHPUT, 60)
        assert choice.flavor is None and choice.estimate is None and choice.est_cost_usd is None
        assert "no flavor finishes" in choice.reason and "h200 needs" in choice.reason

    def test_vad_without_cpu_candidates(self) -> None:
        """VAD with only GPU flavors offered yields no flavor and says CPU is required."""
        gpus = [p for p in FALLBACK_PRICES if p.accelerator]
        choice = choose_flavor(Task.VAD, Priority.COST, HOUR, gpus, DEFAULT_THROUGHPUT)
        assert choice.flavor is None and "CPU flavors only" in choice.reason

    def test_unknown_throughput_excludes_flavor(self) -> None:
        """A flavor without a throughput figure cannot be estimated, so it is skipped with a reason."""
        extra = FlavorPrice("mystery", Decimal("0.001"), accelerator=True)
        choice = choose_flavor(Task.DIARIZATION, Priority.COST, HOUR, [extra], DEFAULT_THROUGHPUT)
        assert choice.flavor is None and "mystery has no throughput figure" in choice.reason

    def test_forced_flavor_wins(self) -> None:
        """A flavor requested per file is used when offered, even a GPU for VAD."""
        assert pick(Task.VAD, Priority.COST, forced_flavor="a100-large") == "a100-large"

    def test_unknown_forced_flavor_is_ignored(self) -> None:
        """A requested flavor that is not offered is ignored and the reason says so."""
        choice = choose_flavor(
            Task.DIARIZATION, Priority.SPEED, HOUR, FALLBACK_PRICES, DEFAULT_THROUGHPUT, forced_flavor="tpu"
        )
        assert choice.flavor == "h200" and "tpu is not offered" in choice.reason

    def test_tie_goes_to_faster_then_name(self) -> None:
        """Equal estimated costs are broken by speed, then by name, so the choice is deterministic."""
        a = FlavorPrice("b-flavor", Decimal("1"), accelerator=True)
        b = FlavorPrice("a-flavor", Decimal("1"), accelerator=True)
        choice = choose_flavor(Task.DIARIZATION, Priority.COST, 60, [a, b], {"a-flavor": 10, "b-flavor": 10})
        assert choice.flavor == "a-flavor"

    @given(seconds=audio, priority=priorities, task=tasks, limit=st.integers(60, MAX_JOB_TIMEOUT_SECONDS))
    def test_estimate_fits_and_reservation_covers_it(
        self, seconds: float, priority: Priority, task: Task, limit: int
    ) -> None:
        """A chosen flavor's estimate fits the limit, its timeout lies between estimate and limit, and the
        reservation is at least the estimated cost."""
        choice = choose_flavor(task, priority, seconds, FALLBACK_PRICES, DEFAULT_THROUGHPUT, limit)
        assert choice.reason
        if choice.estimate is not None:
            est = choice.estimate
            assert est.est_seconds <= est.timeout_seconds <= limit
            assert est.est_cost_usd <= est.reserve_usd

    @given(seconds=audio, task=tasks)
    def test_priorities_order_cost_and_time(self, seconds: float, task: Task) -> None:
        """Cost is never dearer than balanced or speed; speed is never slower; balanced stays near fastest."""
        by = {p: choose_flavor(task, p, seconds, FALLBACK_PRICES, DEFAULT_THROUGHPUT).estimate for p in Priority}
        cost, balanced, speed = by[Priority.COST], by[Priority.BALANCED], by[Priority.SPEED]
        assert cost and balanced and speed
        assert cost.est_cost_usd <= balanced.est_cost_usd and cost.est_cost_usd <= speed.est_cost_usd
        assert speed.est_seconds <= balanced.est_seconds <= speed.est_seconds * BALANCED_SLOWDOWN

    def test_negative_audio_is_rejected(self) -> None:
        """Negative durations are a caller bug."""
        with pytest.raises(ValueError):
            choose_flavor(Task.DIARIZATION, Priority.COST, -1, FALLBACK_PRICES, DEFAULT_THROUGHPUT)


class TestJobTimeoutFor:
    def test_long_recording_outlives_hub_default(self) -> None:
        """A ten-hour recording on a T4 gets twice its estimate, past the Hub's 30-minute default."""
        timeout = job_timeout_for(10 * HOUR, DEFAULT_THROUGHPUT["t4-small"])
        assert timeout > 30 * 60
        assert timeout >= 2 * estimate_seconds(10 * HOUR, DEFAULT_THROUGHPUT["t4-small"], 120)

    def test_short_job_gets_the_floor(self) -> None:
        """A short job still gets the ten-minute floor, so a slow start does not kill it."""
        assert job_timeout_for(10, 100.0) == 600

    def test_ceiling_wins(self) -> None:
        """No timeout exceeds the ceiling, even if the margin would ask for more."""
        assert job_timeout_for(10 * HOUR, 1.0, max_seconds=7200) == 7200

    @given(seconds=audio, rtf=st.floats(0.1, 200), margin=st.floats(1, 4))
    def test_whole_minutes_with_margin(self, seconds: float, rtf: float, margin: float) -> None:
        """Below the ceiling the timeout is whole minutes and at least margin times the estimate."""
        timeout = job_timeout_for(seconds, rtf, margin=margin, max_seconds=10**9)
        assert timeout % 60 == 0
        assert timeout >= margin * estimate_seconds(seconds, rtf, 120) - 1e-6

    def test_bad_arguments_raise(self) -> None:
        """A margin below 1 or a non-positive throughput is rejected."""
        with pytest.raises(ValueError):
            job_timeout_for(60, 1.0, margin=0.5)
        with pytest.raises(ValueError):
            job_timeout_for(60, 0.0)


class TestUpdateThroughput:
    def test_moving_average(self) -> None:
        """The new figure moves the old one toward the observation by the weight."""
        table = {"t4-small": 20.0}
        new = update_throughput(table, "t4-small", audio_seconds=3000, running_seconds=100, weight=0.5)
        assert new["t4-small"] == pytest.approx(25.0)
        assert table == {"t4-small": 20.0}

    def test_startup_is_not_processing(self) -> None:
        """Startup seconds are subtracted before computing the observed factor."""
        new = update_throughput({}, "l4x1", 3000, 220, weight=1.0, startup_seconds=120)
        assert new["l4x1"] == pytest.approx(30.0)

    def test_new_flavor_takes_observation(self) -> None:
        """A flavor missing from the table starts at the observed factor."""
        assert update_throughput({}, "h100", 600, 6)["h100"] == pytest.approx(100.0)

    def test_degenerate_sample_teaches_nothing(self) -> None:
        """No audio or no processing time leaves the table unchanged."""
        assert update_throughput({"h100": 100.0}, "h100", 0, 10) == {"h100": 100.0}
        assert update_throughput({"h100": 100.0}, "h100", 60, 100, startup_seconds=120) == {"h100": 100.0}

    def test_weight_out_of_range_raises(self) -> None:
        """A weight outside (0, 1] is a caller bug."""
        with pytest.raises(ValueError):
            update_throughput({}, "h100", 60, 1, weight=0)

    @given(
        old=st.floats(0.1, 500),
        audio_s=st.floats(1, 10_000),
        running=st.floats(1, 10_000),
        w=st.floats(0.01, 1),
    )
    def test_result_between_old_and_observed(self, old: float, audio_s: float, running: float, w: float) -> None:
        """The updated figure lies between the old figure and the observed one."""
        observed = audio_s / running
        new = update_throughput({"x": old}, "x", audio_s, running, w)["x"]
        assert min(old, observed) - 1e-9 <= new <= max(old, observed) + 1e-9
