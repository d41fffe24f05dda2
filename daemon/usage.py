"""Usage and cost from the ledger: ``diarist usage`` tables and a self-contained HTML report with charts."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from diarist.daemon.charts import bar_chart, meter
from diarist.daemon.ledger import OPEN_JOB_STATES, Ledger, State
from diarist.policies.budget import BudgetCaps, period_bounds
from diarist.policies.pricing import format_usd, usd

GROUPS = ("day", "user", "flavor", "task")


@dataclass
class Line:
    key: str
    jobs: int = 0
    cloud_hours: float = 0.0
    local_hours: float = 0.0
    spent: Decimal = field(default_factory=lambda: usd(0))
    reserved: Decimal = field(default_factory=lambda: usd(0))
    estimated: Decimal = field(default_factory=lambda: usd(0))

    @property
    def estimate_error(self) -> float | None:
        """How far settled jobs were from their estimates: (spent - estimated) / estimated."""
        return float((self.spent - self.estimated) / self.estimated) if self.estimated else None

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(spent=str(self.spent), reserved=str(self.reserved), estimated=str(self.estimated))
        d["estimate_error"] = self.estimate_error
        return d


@dataclass
class Usage:
    by: str
    since: date | None
    lines: list[Line]
    total: Line
    caps: dict[str, Any]


def _day(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone(tz).date().isoformat()


def collect(ledger: Ledger, *, by: str, tz: ZoneInfo, since: date | None, caps: BudgetCaps, now: float) -> Usage:
    """Group the ledger's cloud jobs and processed files by ``by`` (day, user, flavor or task)."""
    if by not in GROUPS:
        raise ValueError(f"--by must be one of {', '.join(GROUPS)}")
    lines: dict[str, Line] = {}

    def line(key: str | None) -> Line:
        key = key or "-"
        return lines.setdefault(key, Line(key))

    start = None
    if since is not None:
        start = datetime.combine(since, datetime.min.time(), tzinfo=tz).timestamp()
    db = ledger.db
    tasks: dict[str, str] = {}
    for f in db.query("select batch_id, task from files where batch_id is not null"):
        tasks.setdefault(f["batch_id"], f["task"] or "diarization")
    for job in db.query("select * from jobs"):
        if start is not None and job["created_at"] < start:
            continue
        key = {
            "day": _day(job["created_at"], tz),
            "user": job["user"],
            "flavor": job["flavor"],
            "task": tasks.get(job["batch_id"], "diarization"),
        }[by]
        ln = line(key)
        ln.jobs += 1
        ln.cloud_hours += (job["audio_seconds"] or 0.0) / 3600
        if job["state"] in OPEN_JOB_STATES:
            ln.reserved += usd(job["reserve_usd"] or 0)
        else:
            ln.spent += usd(job["cost_usd"] or 0)
            if job["cost_usd"] is not None and job["est_usd"]:
                ln.estimated += usd(job["est_usd"])
    for f in db.query(
        "select f.updated_at, f.duration, f.task, f.params, f.inbox, f.flavor from files f "
        "where f.state = ? and f.route = 'local'",
        [State.DONE.value],
    ):
        if start is not None and f["updated_at"] < start:
            continue
        user = (json.loads(f["params"]).get("user") if f["params"] else None) or None
        key = {"day": _day(f["updated_at"], tz), "user": user, "flavor": "local", "task": f["task"]}[by]
        line(key).local_hours += (f["duration"] or 0.0) / 3600
    ordered = sorted(lines.values(), key=lambda ln: ln.key)
    total = Line("total")
    for ln in ordered:
        total.jobs += ln.jobs
        total.cloud_hours += ln.cloud_hours
        total.local_hours += ln.local_hours
        total.spent += ln.spent
        total.reserved += ln.reserved
        total.estimated += ln.estimated
    totals = ledger.budget_totals(tz)
    periods = period_bounds(datetime.fromtimestamp(now, UTC), tz)
    cap_info = {
        "timezone": str(tz),
        "day": periods.day_start.date().isoformat(),
        "month": periods.month_start.strftime("%Y-%m"),
        "daily_cap": str(caps.daily_usd) if caps.daily_usd is not None else None,
        "daily_committed": str(totals.day.committed_usd),
        "daily_left": str(caps.daily_usd - totals.day.committed_usd) if caps.daily_usd is not None else None,
        "monthly_cap": str(caps.monthly_usd) if caps.monthly_usd is not None else None,
        "monthly_committed": str(totals.month.committed_usd),
        "monthly_left": str(caps.monthly_usd - totals.month.committed_usd) if caps.monthly_usd is not None else None,
    }
    return Usage(by, since, ordered, total, cap_info)


def as_json(u: Usage) -> dict[str, Any]:
    return {
        "by": u.by,
        "since": u.since.isoformat() if u.since else None,
        "lines": [ln.as_json() for ln in u.lines],
        "total": u.total.as_json(),
        "caps": u.caps,
    }


def as_table(u: Usage) -> str:
    head = f"{u.by:<12} {'jobs':>5} {'cloud h':>8} {'local h':>8} {'spent':>10} {'reserved':>10} {'est. err':>8}"
    out = [head, "-" * len(head)]
    for ln in [*u.lines, u.total]:
        err = f"{ln.estimate_error:+.0%}" if ln.estimate_error is not None else "-"
        out.append(
            f"{ln.key[:12]:<12} {ln.jobs:>5} {ln.cloud_hours:>8.2f} {ln.local_hours:>8.2f} "
            f"{format_usd(ln.spent):>10} {format_usd(ln.reserved):>10} {err:>8}"
        )
    c = u.caps
    for period, cap, committed, left in (
        ("today", c["daily_cap"], c["daily_committed"], c["daily_left"]),
        ("this month", c["monthly_cap"], c["monthly_committed"], c["monthly_left"]),
    ):
        spent = format_usd(Decimal(committed))
        if cap is None:
            out.append(f"{period}: {spent} committed, no cap")
        else:
            out.append(f"{period}: {spent} committed of {format_usd(Decimal(cap))}, {format_usd(Decimal(left))} left")
    return "\n".join(out)


# -- HTML report ----------------------------------------------------------------------------------------


def report_html(by_day: Usage, by_user: Usage, by_flavor: Usage, *, generated: str) -> str:
    return page(
        "diarist usage",
        f"Generated {generated}; budget time zone {by_day.caps['timezone']}.",
        usage_charts(by_day, by_user, by_flavor),
        by_day,
        by_user,
        by_flavor,
    )


def cap_meters(caps: dict[str, Any]) -> list[str]:
    """Today's and this month's committed spend (settled + reserved) against their caps."""
    return [
        meter(
            f"{title} ({caps[period]}): committed",
            float(caps[f"{key}_committed"]),
            float(caps[f"{key}_cap"]) if caps[f"{key}_cap"] is not None else None,
        )
        for title, period, key in (("Today", "day", "daily"), ("This month", "month", "monthly"))
    ]


def usage_charts(by_day: Usage, by_user: Usage, by_flavor: Usage) -> list[str]:
    daily_cap = float(by_day.caps["daily_cap"]) if by_day.caps["daily_cap"] is not None else None
    return [
        *cap_meters(by_day.caps),
        bar_chart(
            "Cloud spend per day (billed + reserved)",
            [(ln.key, float(ln.spent + ln.reserved)) for ln in by_day.lines],
            unit="USD",
            cap=daily_cap,
            cap_label="daily cap",
        ),
        bar_chart("Cloud spend by user", [(ln.key, float(ln.spent + ln.reserved)) for ln in by_user.lines], unit="USD"),
        bar_chart(
            "Cloud spend by flavor",
            [(ln.key, float(ln.spent + ln.reserved)) for ln in by_flavor.lines if ln.jobs],
            unit="USD",
        ),
        bar_chart("Audio hours per day: cloud", [(ln.key, ln.cloud_hours) for ln in by_day.lines], unit="hours"),
        bar_chart("Audio hours per day: local", [(ln.key, ln.local_hours) for ln in by_day.lines], unit="hours"),
    ]


def page(title: str, lead: str, charts: list[str], by_day: Usage, by_user: Usage, by_flavor: Usage) -> str:
    data = json.dumps({"by_day": as_json(by_day), "by_user": as_json(by_user), "by_flavor": as_json(by_flavor)})
    data = data.replace("</", "<\\/")  # JSON in a script element: only "</" could end it early
    table = html.escape(as_table(by_day))
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<style>body{font-family:sans-serif;margin:2em;max-width:720px}figure{margin:1.5em 0}"
        "figcaption{font-weight:bold;margin-bottom:.3em}.total{font-weight:normal;color:#555}"
        "pre{background:#f4f4f4;padding:1em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(lead)}</p>"
        + "".join(charts)
        + f"<h2>By day</h2><pre>{table}</pre>"
        + f'<script type="application/json" id="usage-data">{data}</script>'
        + "</body></html>\n"
    )
