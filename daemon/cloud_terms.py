"""What cloud jobs cost and how fast they run: the price list (the Hub's, cached in the ledger, else the
built-in table), the throughput learned from settled jobs, the caps per user, and one job's figures."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from diarist.daemon.config import CloudSettings, UserSettings
from diarist.daemon.ledger import FileRow, Ledger
from diarist.handlers.cloud_hub import Hub
from diarist.handlers.errors import DiaristError
from diarist.policies.budget import BudgetCaps, settle_cost
from diarist.policies.flavor import (
    DEFAULT_THROUGHPUT,
    Task,
    effort_seconds,
    estimate_seconds,
    job_timeout_for,
    update_throughput,
)
from diarist.policies.pricing import FALLBACK_PRICES, FlavorPrice, PriceUnit

log = structlog.get_logger("diarist.cloud")

PRICES_KEY = "prices"
THROUGHPUT_KEY = "throughput"


def work_seconds(rows: Iterable[FileRow]) -> float:
    """A batch's audio in diarization-equivalent seconds (``policies.flavor.effort_seconds``): what job
    estimates, timeouts and the learned throughput are measured in."""
    return sum(effort_seconds(r.task or Task.DIARIZATION, r.duration or 0.0) for r in rows)


@dataclass(frozen=True)
class JobFigures:
    """One job's timeout, expected cost and worst case (the price of its whole timeout: what is reserved)."""

    timeout_seconds: int
    est_usd: Decimal | None
    reserve_usd: Decimal | None


class CloudTerms:
    def __init__(
        self,
        settings: CloudSettings,
        ledger: Ledger,
        *,
        users: Mapping[str, UserSettings] | None = None,
        wall: Callable[[], float],
    ):
        self.settings = settings
        self.ledger = ledger
        self.users = dict(users or {})
        self.tz = ZoneInfo(settings.timezone)
        self._wall = wall
        self._prices: dict[str, FlavorPrice] = {p.name: p for p in FALLBACK_PRICES}
        self.prices_source = "built-in fallback table"

    def prices(self) -> list[FlavorPrice]:
        return list(self._prices.values())

    def price(self, flavor: str) -> FlavorPrice | None:
        return self._prices.get(flavor)

    def throughput(self) -> dict[str, float]:
        """Audio seconds per running second per flavor: the defaults, moved by every settled job."""
        stored = self.ledger.get_value(THROUGHPUT_KEY)
        return {**DEFAULT_THROUGHPUT, **(stored[0] if stored else {})}

    def learn(self, flavor: str, audio_seconds: float | None, running_seconds: float | None) -> None:
        """A settled job teaches the throughput table (estimates, timeouts and reservations get truer)."""
        if not audio_seconds or not running_seconds:
            return
        table = update_throughput(
            self.throughput(),
            flavor,
            audio_seconds,
            running_seconds,
            startup_seconds=min(self.settings.startup_seconds, running_seconds * 0.5),
        )
        self.ledger.set_value(THROUGHPUT_KEY, table)

    def caps(self, user: str | None) -> BudgetCaps:
        prefs = self.users.get(user or "")
        return BudgetCaps(
            daily_usd=self.settings.daily_budget,
            monthly_usd=self.settings.monthly_budget,
            user_monthly_usd=prefs.cost_limit if prefs else None,
            max_concurrent=self.settings.max_concurrent,
        )

    def figures(self, flavor: str, audio_seconds: float) -> JobFigures:
        s = self.settings
        throughput = self.throughput().get(flavor, 1.0)
        timeout = job_timeout_for(
            audio_seconds, throughput, startup_seconds=s.startup_seconds, min_seconds=s.min_job_timeout
        )
        price = self._prices.get(flavor)
        if price is None:
            return JobFigures(timeout, None, None)
        est = estimate_seconds(audio_seconds, throughput, s.startup_seconds)
        return JobFigures(timeout, settle_cost(est, price), settle_cost(timeout, price))

    def cost(self, flavor: str, running_seconds: float | None) -> Decimal | None:
        price = self._prices.get(flavor)
        if price is None or running_seconds is None:
            return None
        return settle_cost(running_seconds, price)

    def load_prices(self, hub: Hub) -> None:
        """The Hub's price list, cached in the ledger for ``price_ttl``; the built-in table when neither works."""
        cached = self.ledger.get_value(PRICES_KEY)
        if cached and self._wall() - cached[1] < self.settings.price_ttl:
            self._use_prices(cached[0], "the Hub's hardware list (cached in the ledger)")
            return
        try:
            fetched = hub.prices()
        except DiaristError as e:
            if cached:
                self._use_prices(cached[0], "the Hub's hardware list (stale cache: the Hub did not answer)")
            log.warning("prices_unavailable", error=str(e), using=self.prices_source)
            return
        if fetched:
            rows = [
                {
                    "name": p.name,
                    "unit_cost_usd": str(p.unit_cost_usd),
                    "unit": p.unit_label.value,
                    "gpu": p.accelerator,
                }
                for p in fetched
            ]
            self.ledger.set_value(PRICES_KEY, rows)
            self._use_prices(rows, "the Hub's hardware list")

    def _use_prices(self, rows: list[dict[str, Any]], source: str) -> None:
        self._prices = {
            r["name"]: FlavorPrice(r["name"], Decimal(r["unit_cost_usd"]), PriceUnit(r["unit"]), r["gpu"]) for r in rows
        }
        self.prices_source = source


class Availability:
    """A permanent refusal from the Hub (token, credits) makes the route unavailable for a while."""

    def __init__(self, wall: Callable[[], float], retry_seconds: float):
        self._wall = wall
        self._retry = retry_seconds
        self._until: tuple[str, float] | None = None

    def refused(self, error: DiaristError) -> None:
        self._until = (f"the Hub refused: {error}", self._wall() + self._retry)
        log.warning("cloud_unavailable", error=str(error), retry_in=self._retry)

    def reason(self) -> str | None:
        if self._until and self._wall() < self._until[1]:
            return self._until[0]
        return None
