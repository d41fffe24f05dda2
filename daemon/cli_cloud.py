"""Cloud commands: ``submit``, ``jobs``, ``logs``, ``cancel`` (the seed service's HTTP API, as a CLI)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from diarist.daemon import config as cfg
from diarist.daemon.ledger import ONESHOT_PREFIX
from diarist.handlers.cloud_submit import label_value
from diarist.handlers.errors import ConfigError, DiaristError
from diarist.policies.flavor import Priority, Task
from diarist.policies.formats import format_args
from diarist.policies.jobs import ALIVE, JobStage
from diarist.policies.pricing import format_usd
from diarist.policies.sidecar import FLAVOR_PATTERN, SIDECAR_SUFFIX

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
ALIVE_SECONDS = 15.0


def _hub(settings: cfg.Settings) -> Any:
    from diarist.daemon.cloud import connect_hub

    return connect_hub(settings.cloud, settings.hf_token)


def _ledger(settings: cfg.Settings) -> Any:
    from diarist.daemon.ledger import Ledger

    return Ledger(settings.daemon.ledger) if settings.daemon.ledger.exists() else None


def _age(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- jobs ---------------------------------------------------------------------------------------------


def cmd_jobs(settings: cfg.Settings, args: argparse.Namespace) -> int:
    if args.orphans:
        return _orphans(settings, cancel=args.cancel_orphans, all_hosts=args.all_hosts)
    ledger = _ledger(settings)
    if ledger is None:
        print(f"no ledger at {settings.daemon.ledger}: no cloud jobs yet")
        return EXIT_OK
    hub = None
    if settings.hf_token:
        try:
            hub = _hub(settings)
        except DiaristError as e:
            print(f"(stages from the ledger: {e})", file=sys.stderr)
    from diarist.daemon.views import job_views

    def inspect(job_id: str) -> tuple[str, float | None]:
        snap = hub.inspect(job_id)
        return snap.stage, snap.running_seconds

    inboxes = {str(i.path): i for i in settings.inboxes}
    rows = job_views(
        ledger, inboxes, user=args.user, include_closed=args.all, inspect=inspect if hub is not None else None
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no cloud jobs in flight" + ("" if args.all else " (--all shows finished ones)"))
        return EXIT_OK
    for r in rows:
        files = r["files"][0] + (f" (+{len(r['files']) - 1})" if len(r["files"]) > 1 else "") if r["files"] else "-"
        cost = format_usd(Decimal(r["cost_usd"])) if r["cost_usd"] else "-"
        print(f"{r['job_id']}  {r['stage']:<10} {r['flavor']:<11} {_age(r['age_seconds']):>6}  {cost:>7}  {files}")
        if r["url"]:
            print(f"    {r['url']}")
        if r["message"] and r["stage"] not in (*ALIVE, JobStage.COMPLETED):
            print(f"    {r['message']}")
    return EXIT_OK


def _orphans(settings: cfg.Settings, *, cancel: bool, all_hosts: bool) -> int:
    hub = _hub(settings)
    ledger = _ledger(settings)
    known = ledger.known_job_ids() if ledger else set()
    labels = {"app": "diarist"} if all_hosts else {"app": "diarist", "host": label_value(settings.daemon.host_id)}
    orphans = [j for j in hub.find(labels) if j.job_id not in known]
    if not orphans:
        where = "" if all_hosts else f" from host {settings.daemon.host_id} (--all-hosts: every host)"
        print(f"no orphaned diarist jobs in {hub.namespace}{where}")
        return EXIT_OK
    for job in orphans:
        alive = job.stage in ALIVE
        print(f"{job.job_id}  {job.stage:<10} host={job.labels.get('host', '?')}  batch={job.labels.get('batch', '?')}")
        print(f"    {job.url}")
        if cancel and alive:
            hub.cancel(job.job_id)
            print("    canceled")
    if not cancel:
        print("these jobs carry app=diarist but no ledger here knows them; --cancel-orphans cancels the live ones")
    return EXIT_OK


# -- logs / cancel ------------------------------------------------------------------------------------


def _resolve_job(settings: cfg.Settings, ident: str) -> str:
    ledger = _ledger(settings)
    job = ledger.job_by_hub_id(ident) if ledger else None
    return job.job_id if job is not None and job.job_id else ident


def cmd_logs(settings: cfg.Settings, args: argparse.Namespace) -> int:
    hub = _hub(settings)
    for line in hub.logs(_resolve_job(settings, args.job), follow=args.follow, tail=args.tail):
        print(line, flush=True)
    return EXIT_OK


def cmd_cancel(settings: cfg.Settings, args: argparse.Namespace) -> int:
    from diarist.daemon.views import cancel_job

    hub = _hub(settings)
    canceled = cancel_job(_ledger(settings), args.job, hub.cancel)
    print(f"canceled {canceled.job_id} on the Hub")
    if canceled.job is None:
        print("the ledger does not know this job (an orphan?): no file to mark")
        return EXIT_OK
    then = "processed locally" if settings.cloud.fallback else "failed with an .error.json"
    print(f"its file(s) will be {then} at the daemon's next poll")
    return EXIT_OK


# -- submit -------------------------------------------------------------------------------------------


def _request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if args.cloud:
        request["route"] = "cloud"
    elif args.local:
        request["route"] = "local"
    if args.flavor:
        if not FLAVOR_PATTERN.fullmatch(args.flavor):
            raise ConfigError(f"--flavor {args.flavor!r} is not a Jobs hardware flavor name (e.g. a10g-small)")
        request["flavor"] = args.flavor
    if args.priority:
        request["priority"] = args.priority
    if args.user:
        request["user"] = args.user
    if args.task:
        request["task"] = args.task
    if args.language:
        request["language"] = args.language
    if args.format:
        request["formats"] = format_args(args.format)
    return request


def cmd_submit(settings: cfg.Settings, args: argparse.Namespace) -> int:
    from diarist.policies.sidecar import SidecarError, parse_sidecar

    request = _request(args)
    try:
        asked = parse_sidecar(request)  # what a daemon would refuse is refused here, before anything is queued
    except SidecarError as e:
        raise ConfigError(f"diarist submit: {e}") from None
    missing = [p for p in args.files if not p.is_file()]
    if missing:
        for p in missing:
            print(f"diarist: {p}: no such file", file=sys.stderr)
        return EXIT_FAILED
    inbox = _target_inbox(settings, args.inbox)
    ledger = _ledger(settings)
    # daemons only: a ``diarist submit`` run beats in the same table while it waits for its jobs
    alive = [h for h in ledger.live_hosts(ALIVE_SECONDS) if not h["host"].startswith(ONESHOT_PREFIX)] if ledger else []
    if inbox is not None and (alive or args.inbox):
        for path in args.files:
            dest = _queue_into(inbox.path, path, request)
            print(f"queued {path} -> {dest}")
        who = ", ".join(h["host"] for h in alive) or "no daemon is running now; the next one to start"
        print(f"the daemon ({who}) picks them up; results land in {inbox.outbox} (diarist status, diarist jobs)")
        return EXIT_OK
    from diarist.daemon.logs import configure as configure_logs
    from diarist.daemon.oneshot import RunRequest, run_files

    if args.cloud and not settings.hf_token:
        _hub(settings)  # says how to set one (exit 2), as it always has
    configure_logs(settings.daemon.log_format, "error")  # stdout is for results; what went wrong goes to stderr
    local = "diarist submit --local" if args.local else None
    return run_files(settings, args.files, RunRequest(asked, local), ledger=_open_ledger(settings), out=args.out)


def _open_ledger(settings: cfg.Settings) -> Any:
    from diarist.daemon.ledger import Ledger

    return Ledger(settings.daemon.ledger)


def _target_inbox(settings: cfg.Settings, wanted: Path | None) -> cfg.InboxSettings | None:
    if wanted is None:
        return settings.inboxes[0] if settings.inboxes else None
    wanted = wanted.resolve()
    for inbox in settings.inboxes:
        if inbox.path == wanted:
            return inbox
    raise ConfigError(f"--inbox {wanted} is not a configured inbox", hint="use one of the [[inbox]] paths")


def _queue_into(inbox: Path, path: Path, request: dict[str, Any]) -> Path:
    """Sidecar first, then the audio, each appearing atomically: the daemon never sees one without the other."""
    dest = inbox / path.name
    if dest.exists():
        dest = inbox / f"{path.stem}-{uuid.uuid4().hex[:6]}{path.suffix}"
    if request:
        sidecar = dest.with_name(dest.name + SIDECAR_SUFFIX)
        tmp = inbox / f".{sidecar.name}.part"
        tmp.write_text(json.dumps(request))
        os.replace(tmp, sidecar)
    tmp = inbox / f".{dest.name}.part"
    shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    return dest


# -- usage --------------------------------------------------------------------------------------------


def cmd_usage(settings: cfg.Settings, args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from diarist.daemon import usage
    from diarist.policies.budget import BudgetCaps

    ledger = _ledger(settings)
    if ledger is None:
        print(f"no ledger at {settings.daemon.ledger}: nothing processed yet")
        return EXIT_OK
    since = None
    if args.since:
        try:
            since = date.fromisoformat(args.since)
        except ValueError:
            raise ConfigError(f"--since {args.since!r} is not a date", hint="use YYYY-MM-DD") from None
    tz = ZoneInfo(settings.cloud.timezone)
    caps = BudgetCaps(daily_usd=settings.cloud.daily_budget, monthly_usd=settings.cloud.monthly_budget)
    now = time.time()

    def view(by: str) -> Any:
        return usage.collect(ledger, by=by, tz=tz, since=since, caps=caps, now=now)

    if args.report:
        page = usage.report_html(view("day"), view("user"), view("flavor"), generated=time.strftime("%Y-%m-%d %H:%M"))
        args.report.write_text(page, encoding="utf-8")
        print(f"wrote {args.report}")
        return EXIT_OK
    result = view(args.by)
    print(json.dumps(usage.as_json(result), indent=2) if args.json else usage.as_table(result))
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------------


def add_commands(sub: Any, common: Any, wrap: Any) -> None:
    submit = sub.add_parser("submit", help="queue files through the running daemon, or run them once without one")
    common(submit)
    submit.add_argument("files", nargs="+", type=Path)
    where = submit.add_mutually_exclusive_group()
    where.add_argument("--cloud", action="store_true", help="force the cloud route (Hugging Face Jobs)")
    where.add_argument("--local", action="store_true", help="force processing on this machine")
    submit.add_argument("--flavor", help="Jobs hardware flavor, e.g. a10g-small, t4-small")
    submit.add_argument("--priority", choices=[p.value for p in Priority])
    submit.add_argument("--user", help="whose budget pays for cloud jobs (the per-user cost_limit applies)")
    submit.add_argument("--task", choices=[t.value for t in Task], help="default: the inbox's task")
    submit.add_argument("--language", help='spoken language for --task transcribe (default: the inbox\'s, "en")')
    submit.add_argument("--format", action="append", help="also write srt, vtt, textgrid, eaf, audacity, csv")
    submit.add_argument("--inbox", type=Path, help="queue into this configured inbox (default: the first one)")
    submit.add_argument("--out", type=Path, help="without a daemon: results folder (default: beside each input)")
    submit.set_defaults(func=wrap(cmd_submit))

    jobs = sub.add_parser("jobs", help="cloud jobs: id, files, stage, flavor, age, cost so far, URL")
    common(jobs)
    jobs.add_argument("--user", help="only jobs with files of this user")
    jobs.add_argument("--all", action="store_true", help="include finished jobs")
    jobs.add_argument("--orphans", action="store_true", help="jobs labelled app=diarist that the ledger does not know")
    jobs.add_argument("--cancel-orphans", action="store_true", help="with --orphans: cancel the live ones")
    jobs.add_argument(
        "--all-hosts", action="store_true", help="with --orphans: other hosts' jobs too (their ledgers know them)"
    )
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=wrap(cmd_jobs))

    logs = sub.add_parser("logs", help="a cloud job's log (--follow streams it live)")
    common(logs)
    logs.add_argument("job", help="job id (or batch id from the ledger)")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    logs.set_defaults(func=wrap(cmd_logs))

    use = sub.add_parser("usage", help="cloud jobs, audio hours, spending, reservations and caps from the ledger")
    common(use)
    use.add_argument("--since", help="only from this date (YYYY-MM-DD, budget time zone)")
    use.add_argument("--by", choices=["day", "user", "task", "flavor"], default="day")
    use.add_argument("--json", action="store_true")
    use.add_argument("--report", type=Path, help="write a self-contained HTML page with charts to this file")
    use.set_defaults(func=wrap(cmd_usage))

    cancel = sub.add_parser("cancel", help="cancel a cloud job; its files fall back to local (or fail)")
    common(cancel)
    cancel.add_argument("job", help="job id (or batch id from the ledger)")
    cancel.set_defaults(func=wrap(cmd_cancel))
