"""``GET /metrics``: Prometheus metrics read from the ledger at each scrape, so the numbers are the ledger's
(across restarts, and whichever thread changed them). No file names in labels: their number is unbounded
and they may be personal.

Counters count rows that reached an outcome; a ledger pruned by hand would make them go down (Prometheus
treats that as a reset)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from diarist.daemon.config import UserSettings
from diarist.daemon.ledger import ONESHOT_PREFIX, Ledger, State
from diarist.daemon.ledger_hooks import DeliveryState
from diarist.policies.budget import BudgetCaps

#: one-shot runs (diarist process/submit) record their files in the same ledger; they are not the daemon's
DAEMON_ROWS = "inbox not like ?"
RUNS = ONESHOT_PREFIX + "%"
#: seconds from the start of the work (running locally, submitted to the cloud) to the result
BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0)


@dataclass(frozen=True)
class Health:
    """What the daemon knows about itself at scrape time (injected: tests drive it)."""

    heartbeat_ages: Callable[[], Mapping[str, float]]
    caps: Callable[[], BudgetCaps]
    tz: ZoneInfo
    users: Mapping[str, UserSettings]


class LedgerCollector(Collector):
    def __init__(self, ledger: Ledger, health: Health):
        self.ledger = ledger
        self.health = health

    def collect(self) -> Iterator[Metric]:
        db = self.ledger.db
        files = GaugeMetricFamily("diarist_files", "The daemon's files in the ledger by state", labels=["state"])
        counts = {
            r["state"]: r["n"]
            for r in db.query(f"select state, count(*) as n from files where {DAEMON_ROWS} group by state", [RUNS])
        }
        for state in State:
            files.add_metric([state.value], counts.get(state.value, 0))
        yield files

        finished = CounterMetricFamily(
            "diarist_files_finished", "Files that reached an outcome, by outcome and route", labels=["outcome", "route"]
        )
        for row in db.query(
            "select state, coalesce(route, 'none') as route, count(*) as n from files where state in (?, ?) "
            f"and {DAEMON_ROWS} group by state, route",
            [State.DONE.value, State.FAILED.value, RUNS],
        ):
            finished.add_metric([row["state"], row["route"]], row["n"])
        yield finished

        yield self._durations()

        queue = GaugeMetricFamily(
            "diarist_queue_depth", "Files claimed and waiting, by where they wait", labels=["route"]
        )
        queue.add_metric(["local"], self.ledger.waiting_local())
        queue.add_metric(["cloud"], counts.get(State.QUEUED.value, 0))
        yield queue
        jobs = GaugeMetricFamily("diarist_cloud_jobs_in_flight", "Cloud jobs reserved, submitted or running")
        jobs.add_metric([], len(self.ledger.open_jobs()))
        yield jobs

        yield from self._budget()

        hooks = GaugeMetricFamily(
            "diarist_hook_deliveries", "Hook deliveries by state (given-up ones need a look)", labels=["state"]
        )
        delivered = self.ledger.delivery_counts()
        for state in DeliveryState:
            hooks.add_metric([state.value], delivered.get(state.value, 0))
        yield hooks

        ages = GaugeMetricFamily(
            "diarist_heartbeat_age_seconds", "Seconds since each daemon thread last reported", labels=["component"]
        )
        for component, age in sorted(self.health.heartbeat_ages().items()):
            ages.add_metric([component], age)
        yield ages

    def _durations(self) -> HistogramMetricFamily:
        spans: dict[str, list[float]] = {}
        for row in self.ledger.db.query(
            "select f.route as route, min(e.at) as started, max(d.at) as finished from files f "
            "join events e on e.file_id = f.id and e.state in (?, ?) "
            "join events d on d.file_id = f.id and d.state = ? "
            f"where f.state = ? and f.{DAEMON_ROWS} group by f.id",
            [State.RUNNING.value, State.SUBMITTED.value, State.DONE.value, State.DONE.value, RUNS],
        ):
            spans.setdefault(row["route"] or "none", []).append(max(row["finished"] - row["started"], 0.0))
        histogram = HistogramMetricFamily(
            "diarist_processing_seconds",
            "Seconds from the start of a file's work (local run or cloud submission) to its result",
            labels=["route"],
        )
        for route, values in sorted(spans.items()):
            buckets = [(f"{b:g}", sum(v <= b for v in values)) for b in BUCKETS]
            histogram.add_metric([route], [*buckets, ("+Inf", len(values))], sum(values))
        return histogram

    def _budget(self) -> Iterator[Metric]:
        caps = self.health.caps()
        spent = GaugeMetricFamily(
            "diarist_cloud_committed_usd", "Cloud spend billed plus reserved in the current period", labels=["cap"]
        )
        limit = GaugeMetricFamily("diarist_cloud_cap_usd", "Each configured spending cap", labels=["cap"])
        left = GaugeMetricFamily("diarist_cloud_remaining_usd", "What each cap leaves (never below 0)", labels=["cap"])
        totals = self.ledger.budget_totals(self.health.tz)
        periods = [("daily", caps.daily_usd, totals.day), ("monthly", caps.monthly_usd, totals.month)]
        for user, prefs in sorted(self.health.users.items()):
            if prefs.cost_limit is not None:
                periods.append(
                    (f"user:{user}", prefs.cost_limit, self.ledger.budget_totals(self.health.tz, user).user_month)
                )
        for name, cap, total in periods:
            spent.add_metric([name], float(total.committed_usd))
            if cap is not None:
                limit.add_metric([name], float(cap))
                left.add_metric([name], float(max(cap - total.committed_usd, 0)))
        yield from (spent, limit, left)


def registry(ledger: Ledger, health: Health) -> CollectorRegistry:
    """A registry of its own: the process's default one would add Python's GC and platform metrics twice."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(ledger, health))
    return reg
