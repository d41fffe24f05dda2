"""The ledger's cloud side: one row per batch (``jobs``), the budget reserved and settled with it, and the
clean-ups of staged files still owed to the Hub (``cleanups``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from diarist.daemon.ledger_schema import State, placeholders, row_to
from diarist.policies.budget import (
    ZERO_USD,
    BudgetCaps,
    BudgetDecision,
    BudgetTotals,
    JobCharge,
    check_budget,
    earliest_period_start,
    sum_budget,
)
from diarist.policies.pricing import usd


class JobState(StrEnum):
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
        return row_to(cls, row, state=JobState(row["state"]))

    @property
    def staged_paths(self) -> list[str]:
        return json.loads(self.staged or "[]")


@dataclass(frozen=True)
class PendingCleanup:
    batch_id: str
    job_id: str | None
    staged: list[str]


class JobBook:
    """Mixed into ``Ledger``: needs its ``db``, ``transaction`` and ``clock``."""

    db: sqlite_utils.Database
    clock: Callable[[], float]
    transaction: Callable[[], AbstractContextManager[sqlite_utils.Database]]
    add_event: Callable[..., None]

    def job_started(self, batch_id: str, **fields: Any) -> None:
        """The Hub accepted the job: its queued files are now submitted."""
        now = self.clock()
        with self.transaction() as db:
            db["jobs"].update(batch_id, {"state": JobState.IN_FLIGHT.value, **fields})
            for row in db.query(
                "select id from files where batch_id = ? and state = ?", [batch_id, State.QUEUED.value]
            ):
                db["files"].update(row["id"], {"state": State.SUBMITTED.value, "updated_at": now})
                self.add_event(db, row["id"], State.SUBMITTED, fields.get("job_id"), now)

    def update_job(self, batch_id: str, **fields: Any) -> None:
        with self.transaction() as db:
            db["jobs"].update(batch_id, fields)

    # -- budget: reserve at submit, settle (or release) when the job ends ---------------------------

    def _charges(self, db: sqlite_utils.Database, now: float, tz: ZoneInfo) -> Iterator[JobCharge]:
        rows = db.query(
            f"select state, created_at, reserve_usd, cost_usd, user from jobs "
            f"where created_at >= ? or state in ({placeholders(OPEN_JOB_STATES)})",
            [earliest_period_start(now, tz), *OPEN_JOB_STATES],
        )
        for r in rows:
            is_open = r["state"] in OPEN_JOB_STATES
            amount = usd(r["reserve_usd"] or 0) if is_open else usd(r["cost_usd"] or 0)
            yield JobCharge(r["created_at"], is_open, amount, r["user"])

    def budget_totals(self, tz: ZoneInfo, user: str | None = None) -> BudgetTotals:
        now = self.clock()
        return sum_budget(self._charges(self.db, now, tz), now, tz, user)

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
        now = self.clock()
        with self.transaction() as db:
            totals = sum_budget(self._charges(db, now, tz), now, tz, user)
            decision = check_budget(caps, totals, reserve_usd)
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

    # -- queries -----------------------------------------------------------------------------------

    def job(self, batch_id: str) -> JobRow:
        return JobRow.from_row(self.db["jobs"].get(batch_id))

    def job_by_hub_id(self, job_id: str) -> JobRow | None:
        row = next(self.db.query("select * from jobs where job_id = ? or batch_id = ?", [job_id, job_id]), None)
        return JobRow.from_row(row) if row else None

    def open_jobs(self) -> list[JobRow]:
        rows = self.db.query(
            f"select * from jobs where state in ({placeholders(OPEN_JOB_STATES)}) order by created_at",
            list(OPEN_JOB_STATES),
        )
        return [JobRow.from_row(r) for r in rows]

    def jobs(self, *, include_closed: bool = True, limit: int = 100) -> list[JobRow]:
        states = [s.value for s in JobState] if include_closed else list(OPEN_JOB_STATES)
        rows = self.db.query(
            f"select * from jobs where state in ({placeholders(states)}) order by created_at desc limit ?",
            [*states, limit],
        )
        return [JobRow.from_row(r) for r in rows]

    def known_job_ids(self) -> set[str]:
        return {r["job_id"] for r in self.db.query("select job_id from jobs where job_id is not null")}

    # -- clean-ups the Hub still owes us -------------------------------------------------------------

    def owe_cleanup(self, batch_id: str, job_id: str | None, staged: list[str]) -> None:
        with self.transaction() as db:
            db["cleanups"].upsert(
                {"batch_id": batch_id, "job_id": job_id, "staged": json.dumps(staged), "created_at": self.clock()},
                pk="batch_id",
            )

    def pending_cleanups(self) -> list[PendingCleanup]:
        rows = self.db.query("select * from cleanups order by created_at")
        return [PendingCleanup(r["batch_id"], r["job_id"], json.loads(r["staged"] or "[]")) for r in rows]

    def cleanup_done(self, batch_id: str) -> None:
        with self.transaction() as db:
            db.execute("delete from cleanups where batch_id = ?", [batch_id])
