"""Pure decisions: routing, flavor choice, budgets, intake filters, watch mode. No I/O, no clock reads."""

from diarist.policies.budget import (
    BudgetCaps,
    BudgetDecision,
    BudgetTotals,
    Cap,
    Periods,
    PeriodTotal,
    check_budget,
    period_bounds,
    settle_cost,
)
from diarist.policies.flavor import (
    CostEstimate,
    FlavorChoice,
    Priority,
    Task,
    choose_flavor,
    job_timeout_for,
    update_throughput,
)
from diarist.policies.intake import AUDIO_EXTENSIONS, ignore_reason
from diarist.policies.pricing import FALLBACK_PRICES, FlavorPrice, PriceUnit
from diarist.policies.route import (
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
from diarist.policies.sidecar import FileRequest, SidecarError, parse_sidecar, parse_sidecar_text, sidecar_names
from diarist.policies.watchmode import WatchMode, choose_watch_mode, parse_mounts

__all__ = [
    "AUDIO_EXTENSIONS",
    "FALLBACK_PRICES",
    "BudgetCaps",
    "BudgetDecision",
    "BudgetTotals",
    "Cap",
    "CloudState",
    "CostEstimate",
    "FileFacts",
    "FileOverride",
    "FileRequest",
    "FlavorChoice",
    "FlavorPrice",
    "PeriodTotal",
    "Periods",
    "PriceUnit",
    "Priority",
    "Route",
    "RouteDecision",
    "RouteSetting",
    "RouteSettings",
    "SidecarError",
    "Task",
    "UserPrefs",
    "WatchMode",
    "check_budget",
    "choose_flavor",
    "choose_watch_mode",
    "decide_route",
    "ignore_reason",
    "job_timeout_for",
    "parse_mounts",
    "parse_sidecar",
    "parse_sidecar_text",
    "period_bounds",
    "settle_cost",
    "sidecar_names",
    "update_throughput",
]
