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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from diarist.daemon.ledger_hooks import DeliveryBook, PlannedDelivery
from diarist.daemon.ledger_jobs import OPEN_JOB_STATES, JobBook, JobRow, JobState, PendingCleanup
from diarist.daemon.ledger_schema import State, create_schema, placeholders, row_to
from diarist.handlers.errors import TransientError
from diarist.policies.request import request_of
from diarist.policies.sidecar import FileRequest

__all__ = ["ONESHOT_PREFIX", "OPEN_JOB_STATES", "FileRow", "JobRow", "JobState", "Ledger", "PendingCleanup", "State"]

#: runs without a daemon (``diarist process``/``submit``) record their files under an inbox key with this
#: prefix, which no configured inbox has; the daemon leaves those rows to the run that owns them
ONESHOT_PREFIX = "(run "

ACTIVE_STATES = (State.CLAIMED.value, State.RUNNING.value)
#: between a claim decision and done/failed
UNFINISHED_STATES = tuple(s.value for s in (State.STABLE, State.CLAIMED, State.RUNNING, State.QUEUED, State.SUBMITTED))
#: not claimed yet: a rescan or a restart finds the same row again
UNCLAIMED_STATES = (State.DISCOVERED.value, State.STABLE.value)


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
    #: the task it was routed with (set by the router)
    task: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FileRow:
        return row_to(cls, row, state=State(row["state"]))

    def request(self) -> FileRequest:
        """What its sidecar asked for (an empty request when it had none)."""
        return request_of(self.params)


class Ledger(JobBook, DeliveryBook):
    """Thread-safe access to the ledger file (one SQLite connection per thread, WAL journal)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time):
        self.path = path
        self.clock = clock
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        create_schema(self.db)

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

    # -- transitions -------------------------------------------------------------------------------

    def add_event(self, db: sqlite_utils.Database, file_id: int, state: State, detail: str | None, now: float) -> None:
        db["events"].insert({"file_id": file_id, "state": state.value, "at": now, "detail": detail})

    def discover(self, inbox: str, rel_path: str) -> int:
        """Row for a candidate file; reuses an unclaimed row for the same path (rescans, restarts)."""
        now = self.clock()
        with self.transaction() as db:
            row = next(
                db.query(
                    "select id from files where inbox = ? and rel_path = ? "
                    f"and state in ({placeholders(UNCLAIMED_STATES)}) order by id desc limit 1",
                    [inbox, rel_path, *UNCLAIMED_STATES],
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
            self.add_event(db, file_id, State.DISCOVERED, None, now)
            return int(file_id)

    def admit(self, inbox: str, rel_path: str, *, detail: str, **fields: Any) -> int:
        """Row for a file that arrives complete (an upload through the API): no discovery, no stability wait;
        ``stable`` with its claim path, like a dropped file just before its claim."""
        now = self.clock()
        with self.transaction() as db:
            row = {"inbox": inbox, "rel_path": rel_path, "state": State.STABLE.value, "created_at": now}
            file_id = int(db["files"].insert({**row, "updated_at": now, **fields}).last_pk)
            self.add_event(db, file_id, State.STABLE, detail, now)
            return file_id

    def transition(
        self,
        file_id: int,
        state: State,
        *,
        detail: str | None = None,
        deliveries: Sequence[PlannedDelivery] = (),
        **fields: Any,
    ) -> None:
        """One transaction: the new state, its event, and the hook deliveries it owes (never one without the
        other, whatever crashes when)."""
        now = self.clock()
        with self.transaction() as db:
            updates = {"state": state.value, "updated_at": now, **fields}
            if state is State.RUNNING:
                db.execute("update files set inference_runs = inference_runs + 1 where id = ?", [file_id])
            db["files"].update(file_id, updates)
            self.add_event(db, file_id, state, detail, now)
            self.insert_deliveries(db, file_id, deliveries, now)

    def set_fields(self, file_id: int, **fields: Any) -> None:
        with self.transaction() as db:
            db["files"].update(file_id, {**fields, "updated_at": self.clock()})

    def store_result(self, file_id: int, key: str, sha256: str, doc: dict[str, Any]) -> None:
        """Keep the result document before the outbox sees it (see module doc)."""
        now = self.clock()
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
            f"select * from files where state in ({placeholders(ACTIVE_STATES)}) order by updated_at, id",
            list(ACTIVE_STATES),
        )
        return [FileRow.from_row(r) for r in rows]

    def local_queue(self) -> list[FileRow]:
        """The local worker's queue: claimed files routed local (or reusing a result), and interrupted runs."""
        rows = self.db.query(
            "select * from files where (state = ? and route is not null) or state = ? order by updated_at, id",
            [State.CLAIMED.value, State.RUNNING.value],
        )
        return [FileRow.from_row(r) for r in rows]

    def unfinished(self) -> list[FileRow]:
        """Every file between a claim decision and done/failed (stable, claimed, running, queued, submitted)."""
        rows = self.db.query(
            f"select * from files where state in ({placeholders(UNFINISHED_STATES)}) order by id",
            list(UNFINISHED_STATES),
        )
        return [FileRow.from_row(r) for r in rows]

    def unrouted(self) -> list[FileRow]:
        rows = self.db.query(
            "select * from files where state = ? and route is null order by updated_at, id", [State.CLAIMED.value]
        )
        return [FileRow.from_row(r) for r in rows]

    def waiting_local(self) -> int:
        """Files claimed here and not yet started that the local engine will (or may) take: the claim-ahead."""
        row = next(
            self.db.query(
                "select count(*) as n from files where state in (?, ?) and (route is null or route = 'local')",
                [State.STABLE.value, State.CLAIMED.value],
            )
        )
        return int(row["n"])

    def in_state(self, state: State) -> list[FileRow]:
        rows = self.db.query("select * from files where state = ? order by coalesce(queued_at, 0), id", [state.value])
        return [FileRow.from_row(r) for r in rows]

    def get_value(self, key: str) -> tuple[Any, float] | None:
        row = next(self.db.query("select value, updated_at from kv where key = ?", [key]), None)
        return (json.loads(row["value"]), row["updated_at"]) if row else None

    def set_value(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db["kv"].upsert({"key": key, "value": json.dumps(value), "updated_at": self.clock()}, pk="key")

    def job_files(self, batch_id: str) -> list[FileRow]:
        rows = self.db.query("select * from files where batch_id = ? order by id", [batch_id])
        return [FileRow.from_row(r) for r in rows]

    def heartbeat(self, host: str, pid: int, started_at: float) -> None:
        """A running daemon says so (the CLI queues through it when it is alive)."""
        with self.transaction() as db:
            db["hosts"].upsert(
                {"host": host, "pid": pid, "started_at": started_at, "heartbeat_at": self.clock()}, pk="host"
            )

    def live_hosts(self, within: float) -> list[dict[str, Any]]:
        return list(self.db.query("select * from hosts where heartbeat_at >= ?", [self.clock() - within]))

    def by_claim_path(self, claim_path: str) -> FileRow | None:
        row = next(
            self.db.query("select * from files where claim_path = ? order by id desc limit 1", [claim_path]), None
        )
        return FileRow.from_row(row) if row else None

    def is_kept(self, inbox: str, signature: str) -> bool:
        """True when this exact file (size + mtime) was processed and put back (``on_success = "keep"``).

        Not tied to the row's state: the signature is recorded before the file goes back, and the intake may
        see it there before the row is ``done``. Nor to its name: a same-named newcomer makes it ``x (2).wav``.
        A failed row never kept anything, so a file moved back from ``failed/`` for another try is taken."""
        row = next(
            self.db.query(
                "select 1 from files where inbox = ? and kept_signature = ? and state != ? limit 1",
                [inbox, signature, State.FAILED.value],
            ),
            None,
        )
        return row is not None

    def pending_stable(self) -> list[FileRow]:
        rows = self.db.query("select * from files where state = ? and claim_path is not null", [State.STABLE.value])
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
