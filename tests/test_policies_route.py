"""Routing rules: local, cloud or deferred (diarist.policies.route)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarist.policies.budget import BudgetCaps, BudgetTotals, Cap, PeriodTotal
from diarist.policies.flavor import Priority, Task
from diarist.policies.route import (
    MIB,
    CloudState,
    FileFacts,
    FileOverride,
    Route,
    RouteDecision,
    RouteSetting,
    RouteSettings,
    UserPrefs,
    decide_route,
)

D = Decimal
BIG = FileFacts(size_bytes=50 * MIB, duration_seconds=3600)
SMALL = FileFacts(size_bytes=2 * MIB, duration_seconds=300)
FULL_SMALL = FileFacts(size_bytes=2 * MIB, duration_seconds=300, task=Task.FULL)
UP = CloudState(enabled=True, has_token=True, fallback_enabled=True)
UP_NO_FALLBACK = CloudState(enabled=True, has_token=True, fallback_enabled=False)
SPENT_DAY = BudgetTotals(day=PeriodTotal(D("0.99")), month=PeriodTotal(D("0.99")), user_month=PeriodTotal(D("0.99")))


def decide(file: FileFacts = BIG, **kwargs: Any) -> RouteDecision:
    kwargs.setdefault("cloud", UP)
    kwargs.setdefault("caps", BudgetCaps())
    kwargs.setdefault("totals", BudgetTotals())
    return decide_route(file, **kwargs)


CASES: list[tuple[str, FileFacts, dict[str, Any], Route, str]] = [
    ("large file goes to cloud", BIG, {}, Route.CLOUD, "50.0 MiB (threshold 10.0 MiB)"),
    ("small file stays local", SMALL, {}, Route.LOCAL, "small diarization job"),
    ("task full goes to cloud", FULL_SMALL, {}, Route.CLOUD, "task full"),
    (
        "sidecar task full goes to cloud",
        SMALL,
        {"override": FileOverride(task=Task.FULL)},
        Route.CLOUD,
        "full",
    ),
    ("user prefers cloud", SMALL, {"prefs": UserPrefs(prefer_cloud=True)}, Route.CLOUD, "the user prefers"),
    (
        "global prefer_cloud",
        SMALL,
        {"settings": RouteSettings(prefer_cloud=True)},
        Route.CLOUD,
        "the global setting prefers",
    ),
    (
        "user opts out of global prefer_cloud",
        SMALL,
        {"settings": RouteSettings(prefer_cloud=True), "prefs": UserPrefs(prefer_cloud=False)},
        Route.LOCAL,
        "small",
    ),
    (
        "threshold is configurable",
        BIG,
        {"settings": RouteSettings(min_file_size=100 * MIB)},
        Route.LOCAL,
        "small",
    ),
    (
        "inbox forces local",
        BIG,
        {"inbox_route": RouteSetting.LOCAL},
        Route.LOCAL,
        "the inbox is set to local",
    ),
    (
        "inbox forces cloud",
        SMALL,
        {"inbox_route": RouteSetting.CLOUD},
        Route.CLOUD,
        "the inbox is set to cloud",
    ),
    (
        "file forces cloud over inbox local",
        SMALL,
        {"inbox_route": RouteSetting.LOCAL, "override": FileOverride(route=RouteSetting.CLOUD)},
        Route.CLOUD,
        "sidecar asks for cloud",
    ),
    (
        "file forces local over inbox cloud",
        BIG,
        {"inbox_route": RouteSetting.CLOUD, "override": FileOverride(route=RouteSetting.LOCAL)},
        Route.LOCAL,
        "sidecar asks for local",
    ),
    (
        "file auto defers to inbox",
        BIG,
        {"inbox_route": RouteSetting.LOCAL, "override": FileOverride(route=RouteSetting.AUTO)},
        Route.LOCAL,
        "inbox",
    ),
    (
        "cloud disabled",
        BIG,
        {"cloud": CloudState(enabled=False, has_token=True)},
        Route.LOCAL,
        "disabled in the configuration",
    ),
    (
        "no token",
        BIG,
        {"cloud": CloudState(enabled=True, has_token=False)},
        Route.LOCAL,
        "no Hugging Face token",
    ),
    (
        "cloud unavailable for another reason",
        BIG,
        {"cloud": CloudState(True, True, unavailable_reason="the Hub is unreachable")},
        Route.LOCAL,
        "the Hub is unreachable",
    ),
    (
        "forced cloud, no token, fallback off",
        SMALL,
        {"inbox_route": RouteSetting.CLOUD, "cloud": CloudState(True, False, fallback_enabled=False)},
        Route.LOCAL,
        "waiting would not help",
    ),
    ("local GPU keeps large files", BIG, {"local_gpu": True}, Route.LOCAL, "local GPU"),
    (
        "local GPU but user prefers cloud",
        BIG,
        {"local_gpu": True, "prefs": UserPrefs(prefer_cloud=True)},
        Route.CLOUD,
        "prefers",
    ),
    (
        "over daily cap, fallback on",
        BIG,
        {"caps": BudgetCaps(daily_usd=D(1)), "totals": SPENT_DAY},
        Route.LOCAL,
        "falling back",
    ),
    (
        "over daily cap, fallback off",
        BIG,
        {"caps": BudgetCaps(daily_usd=D(1)), "totals": SPENT_DAY, "cloud": UP_NO_FALLBACK},
        Route.DEFERRED,
        "next budget day",
    ),
    (
        "over monthly cap, fallback off",
        BIG,
        {"caps": BudgetCaps(monthly_usd=D(1)), "totals": SPENT_DAY, "cloud": UP_NO_FALLBACK},
        Route.DEFERRED,
        "next budget month",
    ),
    (
        "over the user's cost_limit",
        BIG,
        {"prefs": UserPrefs(cost_limit=D(1)), "totals": SPENT_DAY, "cloud": UP_NO_FALLBACK},
        Route.DEFERRED,
        "cost_limit $1.00 would be exceeded",
    ),
    (
        "zero cap, fallback off: waiting cannot help",
        BIG,
        {"caps": BudgetCaps(daily_usd=D(0)), "cloud": UP_NO_FALLBACK},
        Route.LOCAL,
        "daily_usd is $0.00",
    ),
    (
        "job dearer than the cap itself",
        BIG,
        {"caps": BudgetCaps(daily_usd=D("0.01")), "cloud": UP_NO_FALLBACK},
        Route.LOCAL,
        "will not help",
    ),
    (
        "all job slots busy",
        BIG,
        {"caps": BudgetCaps(max_concurrent=2), "totals": BudgetTotals(jobs_in_flight=2)},
        Route.CLOUD,
        "waits in the queue",
    ),
    ("max_concurrent zero", BIG, {"caps": BudgetCaps(max_concurrent=0)}, Route.LOCAL, "max_concurrent is 0"),
    (
        "no flavor fits the job limit",
        BIG,
        {"settings": RouteSettings(max_job_timeout_seconds=60)},
        Route.LOCAL,
        "no flavor finishes",
    ),
]


class TestDecideRoute:
    @pytest.mark.parametrize(("name", "file", "kwargs", "route", "phrase"), CASES, ids=[c[0] for c in CASES])
    def test_rules(self, name: str, file: FileFacts, kwargs: dict[str, Any], route: Route, phrase: str) -> None:
        """Each rule and override gives its route with a reason that says why."""
        decision = decide(file, **kwargs)
        assert decision.route is route, decision.reason
        assert phrase in decision.reason
        assert decision.reason.startswith(f"{route.value}: ")

    def test_cloud_carries_flavor_and_estimate(self) -> None:
        """A cloud decision names a flavor and the timeout and reservation to submit with."""
        decision = decide()
        assert decision.flavor == "l4x1" and decision.estimate is not None
        assert decision.estimate.flavor == decision.flavor
        assert decision.budget is not None and decision.budget.allowed

    def test_deferred_names_the_cap(self) -> None:
        """A deferred decision keeps the estimate and says which period to wait out."""
        decision = decide(caps=BudgetCaps(monthly_usd=D(1)), totals=SPENT_DAY, cloud=UP_NO_FALLBACK)
        assert decision.budget is not None and decision.budget.cap_name is Cap.MONTHLY
        assert decision.budget.cap_name.period == "month"
        assert decision.flavor is not None and decision.estimate is not None

    def test_user_cap_is_the_stricter(self) -> None:
        """The user's cost_limit cannot loosen a configured per-user cap."""
        decision = decide(
            caps=BudgetCaps(user_monthly_usd=D(1)),
            prefs=UserPrefs(cost_limit=D(100)),
            totals=SPENT_DAY,
            cloud=UP_NO_FALLBACK,
        )
        assert decision.route is Route.DEFERRED and "cost_limit $1.00" in decision.reason

    @pytest.mark.parametrize(
        ("kwargs", "flavor"),
        [
            ({}, "l4x1"),
            ({"prefs": UserPrefs(priority_processing=True)}, "h200"),
            (
                {
                    "prefs": UserPrefs(priority_processing=True),
                    "override": FileOverride(priority=Priority.COST),
                },
                "cpu-basic",
            ),
            ({"settings": RouteSettings(default_priority=Priority.COST)}, "cpu-basic"),
            ({"override": FileOverride(flavor="a10g-large")}, "a10g-large"),
            ({"override": FileOverride(task=Task.VAD)}, "cpu-upgrade"),
        ],
    )
    def test_priority_and_flavor_overrides(self, kwargs: dict[str, Any], flavor: str) -> None:
        """Sidecar priority beats priority_processing (speed), then the default; a sidecar flavor wins."""
        assert decide(**kwargs).flavor == flavor

    def test_flavor_alone_does_not_force_cloud(self) -> None:
        """A sidecar flavor applies only once the cloud is chosen; a small file still stays local."""
        assert decide(SMALL, override=FileOverride(flavor="h200")).route is Route.LOCAL

    @given(
        size=st.integers(0, 200 * MIB),
        duration=st.floats(0, 6 * 3600),
        task=st.sampled_from(Task),
        inbox=st.sampled_from(RouteSetting),
        file_route=st.none() | st.sampled_from(RouteSetting),
        prefer=st.none() | st.booleans(),
        speed=st.booleans(),
        cloud=st.builds(CloudState, st.booleans(), st.booleans(), st.booleans(), st.none() | st.just("down")),
        local_gpu=st.booleans(),
        cap=st.none() | st.decimals(0, 2, places=2),
        spent=st.decimals(0, 2, places=2),
        in_flight=st.integers(0, 3),
        max_concurrent=st.none() | st.integers(0, 3),
    )
    def test_every_decision_is_explained_and_consistent(
        self,
        size,
        duration,
        task,
        inbox,
        file_route,
        prefer,
        speed,
        cloud,
        local_gpu,
        cap,
        spent,
        in_flight,
        max_concurrent,
    ) -> None:
        """Any input yields a reason; flavor and estimate come exactly with cloud or deferred; cloud is only
        chosen when available; deferral only when fallback is off."""
        spent_total = PeriodTotal(spent)
        decision = decide_route(
            FileFacts(size, duration, task),
            cloud=cloud,
            caps=BudgetCaps(daily_usd=cap, max_concurrent=max_concurrent),
            totals=BudgetTotals(spent_total, spent_total, spent_total, in_flight),
            inbox_route=inbox,
            override=FileOverride(route=file_route),
            prefs=UserPrefs(prefer_cloud=prefer, priority_processing=speed),
            local_gpu=local_gpu,
        )
        assert decision.reason.startswith(f"{decision.route.value}: ") and len(decision.reason) > 12
        assert (decision.flavor is None) == (decision.estimate is None) == (decision.route is Route.LOCAL)
        if decision.route is not Route.LOCAL:
            assert cloud.why_unavailable is None
        if decision.route is Route.DEFERRED:
            assert not cloud.fallback_enabled
