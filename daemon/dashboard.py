"""The dashboard at ``/``: files in flight with their progress, recent results with a speaker timeline each,
cloud jobs, and spend against each cap. The panel is rendered here (it reads as it is, without scripts);
``dashboard.js`` fetches it again every few seconds. Nothing comes from outside this server."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from html import escape

from diarist.daemon.charts import bar_chart, timeline
from diarist.daemon.config import InboxSettings
from diarist.daemon.ledger import Ledger, State
from diarist.daemon.usage import Usage, cap_meters
from diarist.daemon.views import IN_FLIGHT, daemon_files, file_view, job_views, outputs
from diarist.handlers.exports import label_names
from diarist.handlers.results import segments_from_result

REFRESH_SECONDS = 2.0
RECENT = 6
SPEND_DAYS = 14

STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1000px;color:#222}h1{margin:0 0 .2em}"
    "h2{margin-top:1.4em;border-bottom:1px solid #ddd}table{border-collapse:collapse;width:100%}"
    "td,th{text-align:left;padding:.25em .5em;border-bottom:1px solid #eee;font-size:.9em}"
    ".ok{color:#2e7d32}.stale{color:#c0392b;font-weight:bold}.muted{color:#777}progress{width:10em}"
    ".result{margin:.8em 0}.result h3{font-size:1em;margin:.2em 0}figure{margin:1em 0}"
    "figcaption{font-weight:bold}.total{font-weight:normal;color:#555}"
)

SCRIPT = f"""// refreshes the panel in place; the page itself never reloads
async function refresh() {{
  const panel = document.getElementById("panel");
  try {{
    const answer = await fetch("/dashboard/panel", {{credentials: "same-origin", cache: "no-store"}});
    if (!answer.ok) throw new Error("the server answered " + answer.status);
    panel.innerHTML = await answer.text();
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }} catch (e) {{
    document.getElementById("updated").textContent = "not updated: " + e.message;
  }}
}}
setInterval(refresh, {int(REFRESH_SECONDS * 1000)});
"""


def page(panel: str, host: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>diarist on {escape(host)}</title><style>{STYLE}</style></head><body>"
        f'<h1>diarist on {escape(host)}</h1><p class="muted" id="updated">as served</p>'
        f'<div id="panel">{panel}</div><script src="/dashboard.js"></script></body></html>\n'
    )


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(head: list[str], rows: list[list[str]], *, css: str, empty: str) -> str:
    if not rows:
        return f'<p class="muted {css}-empty">{escape(empty)}</p>'
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><tr>{"".join(f"<th>{escape(h)}</th>" for h in head)}</tr>{cells}</table>'


def _in_flight(ledger: Ledger, inboxes: Mapping[str, InboxSettings]) -> str:
    rows = []
    for row in reversed(daemon_files(ledger, states=tuple(s.value for s in IN_FLIGHT), limit=50)):
        v = file_view(row, inboxes)
        progress = v["progress"]
        bar = (
            f'<progress max="1" value="{progress:.3f}"></progress> {progress:.0%}'
            if isinstance(progress, int | float)
            else '<span class="muted">-</span>'
        )
        rows.append(
            [
                escape(v["name"]),
                f'<span class="state">{escape(v["state"])}</span>',
                bar,
                escape(v["step"] or ""),
                escape(v["route"] or ""),
                f'<span class="muted">{escape(v["route_reason"] or "")}</span>',
            ]
        )
    return _table(
        ["file", "state", "progress", "step", "route", "why"], rows, css="in-flight", empty="nothing in flight"
    )


def _recent(ledger: Ledger, inboxes: Mapping[str, InboxSettings]) -> str:
    parts = []
    for row in daemon_files(ledger, states=(State.DONE.value, State.FAILED.value), limit=RECENT):
        paths = outputs(row, inboxes)
        head = f"{escape(row.rel_path)} <span class='muted'>{escape(row.state.value)}, {_when(row.updated_at)}</span>"
        if row.state is State.FAILED:
            parts.append(
                f'<div class="result failed"><h3>{head}</h3><p class="stale">{escape(row.error or "")}</p></div>'
            )
            continue
        try:
            doc = json.loads(paths.json.read_text(encoding="utf-8")) if paths else None
        except (OSError, ValueError):
            doc = None
        if doc is None:
            parts.append(f'<div class="result"><h3>{head}</h3><p class="muted">result not in the outbox</p></div>')
            continue
        segments = [(s.start, s.end, s.speaker) for s in segments_from_result(doc)]
        duration = float(doc.get("source", {}).get("duration") or 0.0)
        speakers = len(doc.get("speakers", []))
        parts.append(
            f'<div class="result"><h3>{head} <span class="muted">{speakers} speaker{"s" if speakers != 1 else ""}, '
            f"{duration:.1f} s, {escape(row.route or '')}</span></h3>"
            f"{timeline(segments, duration, names=label_names(doc))}</div>"
        )
    return "".join(parts) or '<p class="muted">no results yet</p>'


def _jobs(ledger: Ledger, inboxes: Mapping[str, InboxSettings]) -> str:
    views = job_views(ledger, inboxes, include_closed=True)[:10]
    rows = [
        [
            escape(v["job_id"]),
            f'<span class="stage">{escape(v["stage"])}</span>',
            escape(v["flavor"]),
            str(len(v["files"])),
            escape(v["user"] or ""),
            escape(
                f"${v['cost_usd']}" if v["cost_usd"] else (f"reserved ${v['reserve_usd']}" if v["reserve_usd"] else "-")
            ),
            f'<a href="{escape(v["url"])}">Hub</a>' if v["url"] else "",
        ]
        for v in views
    ]
    return _table(["job", "stage", "flavor", "files", "user", "cost", ""], rows, css="jobs", empty="no cloud jobs")


def _spend(by_day: Usage) -> str:
    cap = by_day.caps["daily_cap"]
    since = (datetime.now(UTC) - timedelta(days=SPEND_DAYS)).date().isoformat()
    days = [(ln.key, float(ln.spent + ln.reserved)) for ln in by_day.lines if ln.key >= since]
    chart = bar_chart(
        f"Cloud spend per day, last {SPEND_DAYS} days (billed + reserved)",
        days,
        unit="USD",
        cap=float(cap) if cap is not None else None,
        cap_label="daily cap",
    )
    return "".join(cap_meters(by_day.caps)) + chart


def panel(
    ledger: Ledger, inboxes: Mapping[str, InboxSettings], *, stale: list[str], by_day: Usage, now: float | None = None
) -> str:
    counts = ledger.counts()
    health = (
        f'<span class="stale health">stale: {escape(", ".join(stale))}</span>'
        if stale
        else '<span class="ok health">healthy</span>'
    )
    summary = ", ".join(f"{escape(k)} {v}" for k, v in sorted(counts.items())) or "no files yet"
    return (
        f"<p>{health} · {summary} · {_when(now or time.time())}</p>"
        f"<h2>In flight</h2>{_in_flight(ledger, inboxes)}"
        f"<h2>Recent results</h2>{_recent(ledger, inboxes)}"
        f"<h2>Cloud jobs</h2>{_jobs(ledger, inboxes)}"
        f"<h2>Spend against caps</h2>{_spend(by_day)}"
    )
