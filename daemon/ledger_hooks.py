"""The ledger's ``deliveries`` table: each hook delivery owed, written in the same transaction as the file's
new state (``Ledger.transition(..., deliveries=...)``), so an event is never lost to a crash, and worked off
by the hook worker with retries (``daemon/hooks.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Any

import sqlite_utils


class DeliveryState(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    GIVEN_UP = "given-up"


@dataclass(frozen=True)
class PlannedDelivery:
    """One hook's copy of one event, as planned when the event happens."""

    hook: str
    event: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    id: int
    hook: str
    event: str
    file_id: int
    payload: dict[str, Any]
    state: DeliveryState
    attempts: int
    next_at: float
    created_at: float
    last_error: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Delivery:
        return cls(
            id=row["id"],
            hook=row["hook"],
            event=row["event"],
            file_id=row["file_id"],
            payload=json.loads(row["payload"]),
            state=DeliveryState(row["state"]),
            attempts=row["attempts"],
            next_at=row["next_at"],
            created_at=row["created_at"],
            last_error=row["last_error"],
        )


def create_deliveries(db: sqlite_utils.Database) -> None:
    if "deliveries" not in db.table_names():
        db["deliveries"].create(
            {
                "id": int,
                "hook": str,
                "event": str,
                "file_id": int,
                "payload": str,
                "state": str,
                "attempts": int,
                "next_at": float,
                "created_at": float,
                "updated_at": float,
                "last_error": str,
            },
            pk="id",
            not_null={"hook", "event", "state"},
        )
        db["deliveries"].create_index(["state", "next_at"])
        db["deliveries"].create_index(["file_id", "event"])


class DeliveryBook:
    """Mixed into ``Ledger``: needs its ``db``, ``transaction`` and ``clock``."""

    db: sqlite_utils.Database
    clock: Callable[[], float]
    transaction: Callable[[], AbstractContextManager[sqlite_utils.Database]]

    def insert_deliveries(
        self, db: sqlite_utils.Database, file_id: int, planned: Sequence[PlannedDelivery], now: float
    ) -> None:
        """Inside the caller's transaction (the one that records the event itself)."""
        for d in planned:
            db["deliveries"].insert(
                {
                    "hook": d.hook,
                    "event": d.event,
                    "file_id": file_id,
                    "payload": json.dumps(d.payload),
                    "state": DeliveryState.PENDING.value,
                    "attempts": 0,
                    "next_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )

    def add_deliveries_once(self, file_id: int, event: str, planned: Sequence[PlannedDelivery]) -> bool:
        """For events that are not state changes (``waiting``, ``deferred``): the first time only. True when
        they were added."""
        if not planned:
            return False
        with self.transaction() as db:
            seen = next(db.query("select 1 from deliveries where file_id = ? and event = ?", [file_id, event]), None)
            if seen:
                return False
            self.insert_deliveries(db, file_id, planned, self.clock())
            return True

    def due_deliveries(self, now: float, busy: Sequence[str] = ()) -> list[Delivery]:
        """The next due delivery of each hook that has no attempt in flight (``busy``): a hook with a long
        backlog never crowds out the others."""
        rows = self.db.query(
            "select * from (select *, row_number() over (partition by hook order by next_at, id) as nth "
            f"from deliveries where state = ? and next_at <= ? and hook not in ({', '.join('?' * len(busy))})) "
            "where nth = 1 order by next_at, id",
            [DeliveryState.PENDING.value, now, *busy],
        )
        return [Delivery.from_row(r) for r in rows]

    def next_delivery_at(self, busy: Sequence[str] = ()) -> float | None:
        row = next(
            self.db.query(
                "select min(next_at) as t from deliveries where state = ? "
                f"and hook not in ({', '.join('?' * len(busy))})",
                [DeliveryState.PENDING.value, *busy],
            )
        )
        return row["t"]

    def claim_delivery(self, delivery: Delivery, until: float) -> bool:
        """Take a delivery for one attempt: only if nobody attempted it since it was read (its ``attempts``
        unchanged) and it is still pending. ``until``: when it is due again should the attempt never end
        (a crash)."""
        with self.transaction() as db:
            cursor = db.execute(
                "update deliveries set next_at = ?, updated_at = ? where id = ? and state = ? and attempts = ?",
                [until, self.clock(), delivery.id, DeliveryState.PENDING.value, delivery.attempts],
            )
            return cursor.rowcount == 1

    def delivery_attempted(
        self,
        delivery: Delivery,
        state: DeliveryState,
        *,
        error: str | None = None,
        next_at: float | None = None,
    ) -> None:
        """The outcome of the attempt that ``claim_delivery`` allowed (no other attempt can overwrite it)."""
        with self.transaction() as db:
            db.execute(
                "update deliveries set state = ?, attempts = attempts + 1, last_error = ?, "
                "next_at = coalesce(?, next_at), updated_at = ? where id = ? and attempts = ?",
                [state.value, error, next_at, self.clock(), delivery.id, delivery.attempts],
            )

    def deliveries_due_now(self) -> None:
        """At start: every pending delivery is due (claims of attempts a crash cut short included)."""
        now = self.clock()
        with self.transaction() as db:
            db.execute(
                "update deliveries set next_at = ? where state = ? and next_at > ?",
                [now, DeliveryState.PENDING.value, now],
            )

    def delivery_counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.db.query("select state, count(*) as n from deliveries group by state")}

    def deliveries(self, *, state: DeliveryState | None = None, limit: int = 20) -> list[Delivery]:
        where, args = ("where state = ?", [state.value]) if state else ("", [])
        rows = self.db.query(f"select * from deliveries {where} order by id desc limit ?", [*args, limit])
        return [Delivery.from_row(r) for r in rows]
