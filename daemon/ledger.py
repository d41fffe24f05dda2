"""The SQLite ledger: every file diarist has seen, its state, and every result it produced.

States: discovered -> stable -> claimed -> running -> done | failed | released (given back to the inbox
unfinished); a cloud-bound file goes claimed -> queued (waiting for a batch and a job slot) -> submitted (in a
Hugging Face Job) -> done, or back to claimed for local processing when the job fails and fallback is on.
Each transition is one transaction and appends to ``events``. The ``jobs`` table holds one row per cloud
batch, created before the job is started so a crash between the two is recovered by finding the job again
through its ``batch`` label.

Results are stored here too, keyed by content hash + task + parameters + model, before anything reaches the
outbox: after a crash a claimed file whose result is already in the ledger is finished by rewriting the
outputs, never by running inference again, and a file dropped twice reuses it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from diarist.handlers.errors import TransientError
from diarist.policies.budget import (
    ZERO_USD,
    BudgetCaps,
    BudgetDecision,
    BudgetTotals,
    PeriodTotal,
    check_budget,
    period_bounds,
)
from diarist.policies.pricing import usd


class State(str, Enum):
    DISCOVERED = "discovered"
    STABLE = "stable"
    CLAIMED = "claimed"
    RUNNING = "running"
    QUEUED = "queued"
    SUBMITTED = "submitted"
    DONE = "done"
    FAILED = "failed"
    #: given back to the inbox unfinished (stop timeout, or another host took the claim over)
    RELEASED = "released"


ACTIVE_STATES = (State.CLAIMED.value, State.RUNNING.value)
# Columns added with the cloud route; older ledgers get them on open.
_FILE_COLUMNS_V2: dict[str, type] = {
    "duration": float,
    "flavor": str,
    "batch_id": str,
    "fallback": str,
    "queued_at": float,
    "out_name": str,
}


@dataclass(frozen=True)
class FileRow:
    id: int
    inbox: str
    rel_path: str
    state: State
    sha256: str | None
    size: int | None
    claim_path: str | None
    result_key: str | None
    reused_from: int | None
    inference_runs: int
    error: str | None
    created_at: float
    updated_at: float
    route: str | None = None
    route_reason: str | None = None
    params: str | None = None
    duration: float | None = None
    flavor: str | None = None
    batch_id: str | None = None
    fallback: str | None = None
    queued_at: float | None = None
    #: the outputs' stem relative to the outbox (``reserve_stem``); None on rows from older ledgers
    out_name: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FileRow:
        return cls(
            id=row["id"],
            inbox=row["inbox"],
            rel_path=row["rel_path"],
            state=State(row["state"]),
            sha256=row["sha256"],
            size=row["size"],
            claim_path=row["claim_path"],
            result_key=row["result_key"],
            reused_from=row["reused_from"],
            inference_runs=row["inference_runs"],
            error=row["error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            route=row.get("route"),
            route_reason=row.get("route_reason"),
            params=row.get("params"),
            duration=row.get("duration"),
            flavor=row.get("flavor"),
            batch_id=row.get("batch_id"),
            fallback=row.get("fallback"),
            queued_at=row.get("queued_at"),
            out_name=row.get("out_name"),
        )


class JobState(str, Enum):
    SUBMITTING = "submitting"  # row written, job not (known to be) started yet
    IN_FLIGHT = "in-flight"
    COLLECTED = "collected"
    FAILED = "failed"


OPEN_JOB_STATES = (JobState.SUBMITTING.value, JobState.IN_FLIGHT.value)


@dataclass(frozen=True)
class JobRow:
    batch_id: str
    job_id: str | None
    state: JobState
    namespace: str
    repo: str
    flavor: str
    stage: str | None
    url: str | None
    host: str | None
    timeout_seconds: int
    created_at: float
    submitted_at: float | None
    deadline_at: float | None
    finished_at: float | None
    running_seconds: float | None
    est_usd: str | None
    reserve_usd: str | None
    cost_usd: str | None
    message: str | None
    cancel_requested: str | None
    staged: str | None
    audio_seconds: float | None
    user: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobRow:
        names = cls.__dataclass_fields__
        values = {k: row.get(k) for k in names}
        values["state"] = JobState(row["state"])
        return cls(**values)


class Ledger:
    """Thread-safe access to the ledger file (one SQLite connection per thread, WAL journal)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = path
        self._clock = clock
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._create_schema()

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=True)
            except sqlite3.Error as e:
                raise TransientError(
                    f"cannot open the ledger {self.path}: {e}", hint="check the state directory's permissions"
                ) from e
            conn.execute("PRAGMA busy_timeout = 30000")
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise TransientError(
                f"the ledger {self.path} is locked: {e}", hint="another process holds it; diarist retries"
            ) from e
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _create_schema(self) -> None:
        db = self.db
        db.enable_wal()
        if "files" not in db.table_names():
            db["files"].create(
                {
                    "id": int,
                    "inbox": str,
                    "rel_path": str,
                    "state": str,
                    "sha256": str,
                    "size": int,
                    "claim_path": str,
                    "result_key": str,
                    "reused_from": int,
                    "inference_runs": int,
                    "error": str,
                    "task": str,
                    "params": str,
                    "route": str,
                    "route_reason": str,
                    "kept_signature": str,
                    "created_at": float,
                    "updated_at": float,
                    **_FILE_COLUMNS_V2,
                },
                pk="id",
                not_null={"inbox", "rel_path", "state"},
                defaults={"inference_runs": 0},
            )
            db["files"].create_index(["state"])
            db["files"].create_index(["sha256"])
            db["files"].create_index(["inbox", "rel_path"])
        missing = {k: v for k, v in _FILE_COLUMNS_V2.items() if k not in db["files"].columns_dict}
        for name, kind in missing.items():  # a ledger from before the cloud route
            db["files"].add_column(name, kind)
        if "jobs" not in db.table_names():
            db["jobs"].create(
                {
                    "batch_id": str,
                    "job_id": str,
                    "state": str,
                    "namespace": str,
                    "repo": str,
                    "flavor": str,
                    "stage": str,
                    "url": str,
                    "host": str,
                    "timeout_seconds": int,
                    "created_at": float,
                    "submitted_at": float,
                    "deadline_at": float,
                    "finished_at": float,
                    "running_seconds": float,
                    "est_usd": str,
                    "reserve_usd": str,
                    "cost_usd": str,
                    "message": str,
                    "cancel_requested": str,
                    "staged": str,
                    "audio_seconds": float,
                    "user": str,
                },
                pk="batch_id",
                not_null={"state", "namespace", "repo", "flavor"},
            )
            db["jobs"].create_index(["job_id"])
            db["jobs"].create_index(["state"])
        if "user" not in db["jobs"].columns_dict:
            db["jobs"].add_column("user", str)
        if "kv" not in db.table_names():
            db["kv"].create({"key": str, "value": str, "updated_at": float}, pk="key")
        if "hosts" not in db.table_names():
            db["hosts"].create({"host": str, "pid": int, "started_at": float, "heartbeat_at": float}, pk="host")
        if "events" not in db.table_names():
            db["events"].create({"id": int, "file_id": int, "state": str, "at": float, "detail": str}, pk="id")
            db["events"].create_index(["file_id"])
        if "results" not in db.table_names():
            db["results"].create({"key": str, "file_id": int, "sha256": str, "doc": str, "created_at": float}, pk="key")

    # -- transitions -------------------------------------------------------------------------------

    def _event(self, db: sqlite_utils.Database, file_id: int, state: State, detail: str | None, now: float) -> None:
        db["events"].insert({"file_id": file_id, "state": state.value, "at": now, "detail": detail})

    def discover(self, inbox: str, rel_path: str) -> int:
        """Row for a candidate file; reuses an unclaimed row for the same path (rescans, restarts)."""
        now = self._clock()
        with self.transaction() as db:
            row = next(
                db.query(
                    "select id from files where inbox = ? and rel_path = ? and state in ('discovered', 'stable') "
                    "order by id desc limit 1",
                    [inbox, rel_path],
                ),
                None,
            )
            if row:
                return int(row["id"])
            file_id = (
                db["files"]
                .insert(
                    {
                        "inbox": inbox,
                        "rel_path": rel_path,
                        "state": State.DISCOVERED.value,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                .last_pk
            )
            self._event(db, file_id, State.DISCOVERED, None, now)
            return int(file_id)

    def transition(self, file_id: int, state: State, *, detail: str | None = None, **fields: Any) -> None:
        now = self._clock()
        with self.transaction() as db:
            updates = {"state": state.value, "updated_at": now, **fields}
            if state is State.RUNNING:
                db.execute("update files set inference_runs = inference_runs + 1 where id = ?", [file_id])
            db["files"].update(file_id, updates)
            self._event(db, file_id, state, detail, now)

    def set_fields(self, file_id: int, **fields: Any) -> None:
        with self.transaction() as db:
            db["files"].update(file_id, {**fields, "updated_at": self._clock()})

    def store_result(self, file_id: int, key: str, sha256: str, doc: dict[str, Any]) -> None:
        """Keep the result document before the outbox sees it (see module doc)."""
        now = self._clock()
        with self.transaction() as db:
            db["results"].upsert(
                {"key": key, "file_id": file_id, "sha256": sha256, "doc": json.dumps(doc), "created_at": now}, pk="key"
            )
            db["files"].update(file_id, {"result_key": key, "updated_at": now})

    # -- queries -----------------------------------------------------------------------------------

    def forget(self, file_id: int) -> None:
        """Drop a row that never became ours (another host claimed the file first)."""
        with self.transaction() as db:
            db.execute("delete from events where file_id = ?", [file_id])
            db.execute("delete from files where id = ?", [file_id])

    def get(self, file_id: int) -> FileRow:
        return FileRow.from_row(self.db["files"].get(file_id))

    def result(self, key: str) -> tuple[int, dict[str, Any]] | None:
        row = next(self.db.query("select file_id, doc from results where key = ?", [key]), None)
        return (int(row["file_id"]), json.loads(row["doc"])) if row else None

    def active(self) -> list[FileRow]:
        """Claimed or running files, oldest claim first (routed or not)."""
        rows = self.db.query(
            f"select * from files where state in ({','.join('?' * len(ACTIVE_STATES))}) order by updated_at, id",
            list(ACTIVE_STATES),
        )
        return [FileRow.from_row(r) for r in rows]

    def local_queue(self) -> list[FileRow]:
        """The local worker's queue: claimed files routed local (or reusing a result), and interrupted runs."""
        rows = self.db.query(
            "select * from files where (state = 'claimed' and route is not null) or state = 'running' "
            "order by updated_at, id"
        )
        return [FileRow.from_row(r) for r in rows]

    def unfinished(self) -> list[FileRow]:
        """Every file between a claim decision and done/failed (stable, claimed, running, queued, submitted)."""
        rows = self.db.query(
            "select * from files where state in ('stable', 'claimed', 'running', 'queued', 'submitted') order by id"
        )
        return [FileRow.from_row(r) for r in rows]

    def unrouted(self) -> list[FileRow]:
        rows = self.db.query("select * from files where state = 'claimed' and route is null order by updated_at, id")
        return [FileRow.from_row(r) for r in rows]

    def in_state(self, state: State) -> list[FileRow]:
        rows = self.db.query("select * from files where state = ? order by coalesce(queued_at, 0), id", [state.value])
        return [FileRow.from_row(r) for r in rows]

    # -- cloud jobs --------------------------------------------------------------------------------

    def job_started(self, batch_id: str, **fields: Any) -> None:
        """The Hub accepted the job: its files are now submitted."""
        now = self._clock()
        with self.transaction() as db:
            db["jobs"].update(batch_id, {"state": JobState.IN_FLIGHT.value, **fields})
            for row in db.query("select id from files where batch_id = ? and state = 'queued'", [batch_id]):
                db["files"].update(row["id"], {"state": State.SUBMITTED.value, "updated_at": now})
                self._event(db, row["id"], State.SUBMITTED, fields.get("job_id"), now)

    def update_job(self, batch_id: str, **fields: Any) -> None:
        with self.transaction() as db:
            db["jobs"].update(batch_id, fields)

    # -- budget: reserve at submit, settle (or release) when the job ends ---------------------------

    def _totals(self, db: sqlite_utils.Database, now: float, tz: ZoneInfo, user: str | None) -> BudgetTotals:
        """Spent (settled jobs) and reserved (open jobs) per period; a job counts in the period it was reserved."""
        periods = period_bounds(datetime.fromtimestamp(now, UTC), tz)
        day = (periods.day_start.timestamp(), periods.day_end.timestamp())
        month = (periods.month_start.timestamp(), periods.month_end.timestamp())
        sums = {k: [ZERO_USD, ZERO_USD] for k in ("day", "month", "user")}
        in_flight = 0
        rows = db.query(
            "select state, created_at, reserve_usd, cost_usd, user from jobs where created_at >= ? or state in (?, ?)",
            [min(day[0], month[0]), *OPEN_JOB_STATES],
        )
        for r in rows:
            is_open = r["state"] in OPEN_JOB_STATES
            in_flight += is_open
            amount = usd(r["reserve_usd"] or 0) if is_open else usd(r["cost_usd"] or 0)
            slot = 1 if is_open else 0
            for name, (start, end) in (("day", day), ("month", month)):
                if start <= r["created_at"] < end:
                    sums[name][slot] += amount
                    if name == "month" and user is not None and r["user"] == user:
                        sums["user"][slot] += amount
        return BudgetTotals(
            day=PeriodTotal(*sums["day"]),
            month=PeriodTotal(*sums["month"]),
            user_month=PeriodTotal(*sums["user"]),
            jobs_in_flight=in_flight,
        )

    def budget_totals(self, tz: ZoneInfo, user: str | None = None) -> BudgetTotals:
        return self._totals(self.db, self._clock(), tz, user)

    def reserve_job(
        self,
        batch_id: str,
        file_ids: list[int],
        *,
        caps: BudgetCaps,
        reserve_usd: Decimal,
        tz: ZoneInfo,
        user: str | None = None,
        **fields: Any,
    ) -> BudgetDecision:
        """Check the caps and record the batch in one write transaction, so two submitters (threads or
        processes) can never both fit into the same headroom. Nothing is written when the check refuses."""
        now = self._clock()
        with self.transaction() as db:
            decision = check_budget(caps, self._totals(db, now, tz, user), reserve_usd)
            if not decision.allowed:
                return decision
            db["jobs"].insert(
                {
                    "batch_id": batch_id,
                    "state": JobState.SUBMITTING.value,
                    "created_at": now,
                    "reserve_usd": str(reserve_usd),
                    "user": user,
                    **fields,
                }
            )
            for file_id in file_ids:
                db["files"].update(file_id, {"batch_id": batch_id, "updated_at": now})
        return decision

    def settle_job(self, batch_id: str, *, state: JobState, cost_usd: Decimal | None, **fields: Any) -> None:
        """Close a job: its reservation is released and what it really cost (nothing if it never ran) is spent."""
        assert state not in (JobState.SUBMITTING, JobState.IN_FLIGHT)
        with self.transaction() as db:
            db["jobs"].update(
                batch_id,
                {"state": state.value, "cost_usd": str(cost_usd if cost_usd is not None else ZERO_USD), **fields},
            )

    def get_value(self, key: str) -> tuple[Any, float] | None:
        row = next(self.db.query("select value, updated_at from kv where key = ?", [key]), None)
        return (json.loads(row["value"]), row["updated_at"]) if row else None

    def set_value(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db["kv"].upsert({"key": key, "value": json.dumps(value), "updated_at": self._clock()}, pk="key")

    def job(self, batch_id: str) -> JobRow:
        return JobRow.from_row(self.db["jobs"].get(batch_id))

    def job_by_hub_id(self, job_id: str) -> JobRow | None:
        row = next(self.db.query("select * from jobs where job_id = ? or batch_id = ?", [job_id, job_id]), None)
        return JobRow.from_row(row) if row else None

    def open_jobs(self) -> list[JobRow]:
        rows = self.db.query(
            f"select * from jobs where state in ({','.join('?' * len(OPEN_JOB_STATES))}) order by created_at",
            list(OPEN_JOB_STATES),
        )
        return [JobRow.from_row(r) for r in rows]

    def jobs(self, *, include_closed: bool = True, limit: int = 100) -> list[JobRow]:
        where = "" if include_closed else f"where state in ({','.join(repr(s) for s in OPEN_JOB_STATES)})"
        rows = self.db.query(f"select * from jobs {where} order by created_at desc limit ?", [limit])
        return [JobRow.from_row(r) for r in rows]

    def job_files(self, batch_id: str) -> list[FileRow]:
        rows = self.db.query("select * from files where batch_id = ? order by id", [batch_id])
        return [FileRow.from_row(r) for r in rows]

    def heartbeat(self, host: str, pid: int, started_at: float) -> None:
        """A running daemon says so (the CLI queues through it when it is alive)."""
        with self.transaction() as db:
            db["hosts"].upsert(
                {"host": host, "pid": pid, "started_at": started_at, "heartbeat_at": self._clock()}, pk="host"
            )

    def live_hosts(self, within: float) -> list[dict[str, Any]]:
        return list(self.db.query("select * from hosts where heartbeat_at >= ?", [self._clock() - within]))

    def known_job_ids(self) -> set[str]:
        return {r["job_id"] for r in self.db.query("select job_id from jobs where job_id is not null")}

    def by_claim_path(self, claim_path: str) -> FileRow | None:
        row = next(
            self.db.query("select * from files where claim_path = ? order by id desc limit 1", [claim_path]), None
        )
        return FileRow.from_row(row) if row else None

    def is_kept(self, inbox: str, rel_path: str, signature: str) -> bool:
        """True when this exact file (size + mtime) was processed and left in place (``on_success = "keep"``)."""
        row = next(
            self.db.query(
                "select 1 from files where inbox = ? and rel_path = ? and state = 'done' "
                "and kept_signature = ? limit 1",
                [inbox, rel_path, signature],
            ),
            None,
        )
        return row is not None

    def pending_stable(self) -> list[FileRow]:
        rows = self.db.query("select * from files where state = 'stable' and claim_path is not null")
        return [FileRow.from_row(r) for r in rows]

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "select id, inbox, rel_path, state, sha256, route, route_reason, error, inference_runs, reused_from, "
                "updated_at from files order by updated_at desc, id desc limit ?",
                [limit],
            )
        )

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.db.query("select state, count(*) as n from files group by state")}

    def events(self, file_id: int) -> list[dict[str, Any]]:
        return list(self.db.query("select state, at, detail from events where file_id = ? order by id", [file_id]))

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None
