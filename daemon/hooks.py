"""Hooks ([[hook]]): what each event tells them (``HookPlanner``, called by ``Outcomes`` as the event is
recorded) and the worker that delivers them (``HookWorker``, its own thread: the model worker never waits
for a hook). At least once: a delivery is a ledger row from the moment its event is, retried with capped
backoff until it succeeds or ``give_up_after`` passes; receivers drop repeats by their idempotency key."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from diarist.daemon.config import HookSettings
from diarist.daemon.ledger import FileRow, Ledger
from diarist.daemon.ledger_hooks import Delivery, DeliveryState, PlannedDelivery
from diarist.handlers.crashpoints import crash_point
from diarist.handlers.hook_delivery import Attempt, post, run_program
from diarist.handlers.results import OutputPaths, iso
from diarist.policies.hooks import idempotency_key, retry_at, wants

log = structlog.get_logger("diarist")

#: seconds past an attempt's timeout after which a delivery whose attempt never ended (a crash) is due again
CLAIM_MARGIN = 60.0


class HookPlanner:
    """Builds each matching hook's copy of an event. ``hooks`` is read at each event (a reload changes it)."""

    def __init__(
        self, hooks: Callable[[], tuple[HookSettings, ...]], ledger: Ledger, host: str, wall: Callable[[], float]
    ):
        self._hooks = hooks
        self._ledger = ledger
        self._host = host
        self._wall = wall

    def plan(
        self,
        event: str,
        row: FileRow,
        *,
        user: str | None,
        paths: OutputPaths | None,
        doc: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> list[PlannedDelivery]:
        hooks = [
            h
            for h in self._hooks()
            if wants(h.on, str(h.inbox) if h.inbox else None, h.user, event=event, inbox=row.inbox, user=user)
        ]
        if not hooks:
            return []
        payload = {
            "event": event,
            "at": iso(self._wall()),
            "host": self._host,
            "file": {
                "id": row.id,
                "name": row.rel_path,
                "inbox": row.inbox,
                "sha256": row.sha256,
                "user": user,
                "route": row.route,
                "task": row.task,
                "duration": row.duration,
            },
            "result": {
                "json": str(paths.json),
                "rttm": str(paths.rttm),
                "speakers": len(doc.get("speakers", [])),
            }
            if paths is not None and doc is not None
            else None,
            "error": dict(error, error_json=str(paths.error) if paths else None) if error is not None else None,
            "note": note,
            "cost_usd": self._cost(row),
        }
        return [PlannedDelivery(h.name, event, payload) for h in hooks]

    def _cost(self, row: FileRow) -> str | None:
        """A cloud file's share of its job's cost (billed, else the estimate); 0 on the local route."""
        if row.batch_id is None:
            return "0" if row.route == "local" else None
        job = self._ledger.job(row.batch_id)
        files = max(len(self._ledger.job_files(row.batch_id)), 1)
        total = job.cost_usd or job.est_usd
        return f"{float(total) / files:.6f}" if total else None


def variables(delivery: Delivery, key: str) -> dict[str, str]:
    """The environment an ``exec`` hook gets (README: Hooks)."""
    p = delivery.payload
    f, result, error = p["file"], p.get("result") or {}, p.get("error") or {}
    values = {
        "DIARIST_EVENT": p["event"],
        "DIARIST_FILE": f["name"],
        "DIARIST_FILE_ID": str(f["id"]),
        "DIARIST_INBOX": f["inbox"],
        "DIARIST_SHA256": f["sha256"] or "",
        "DIARIST_USER": f["user"] or "",
        "DIARIST_ROUTE": f["route"] or "",
        "DIARIST_TASK": f["task"] or "",
        "DIARIST_COST_USD": p.get("cost_usd") or "",
        "DIARIST_RESULT_JSON": result.get("json", ""),
        "DIARIST_RTTM": result.get("rttm", ""),
        "DIARIST_ERROR_JSON": error.get("error_json") or "",
        "DIARIST_ERROR": error.get("message") or "",
        "DIARIST_NOTE": p.get("note") or "",
        "DIARIST_IDEMPOTENCY_KEY": key,
        "DIARIST_EVENT_JSON": json.dumps({**p, "idempotency_key": key}),
    }
    return values


class HookWorker:
    """Delivers what is due: each hook has at most one attempt in flight, on a thread of its own, so a hook
    that never answers holds up only its own deliveries (each attempt ends within its ``timeout``). Attempt
    threads are daemon threads: one cut short by a stop is attempted again at the next start."""

    def __init__(
        self,
        ledger: Ledger,
        hooks: Callable[[], tuple[HookSettings, ...]],
        *,
        wall: Callable[[], float],
        beat: Callable[[], None] = lambda: None,
    ):
        self.ledger = ledger
        self._hooks = hooks
        self._wall = wall
        self._beat = beat
        #: set when deliveries are added or an attempt ends (the loop then looks at once)
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Thread] = {}

    def tick(self, wait: bool = False) -> int:
        """Start an attempt for each hook with a due delivery; returns how many started. ``wait``: until no
        attempt is in flight and nothing more is due (tests drive the clock this way)."""
        started = self._start_due()
        while wait:
            with self._lock:
                running = list(self._busy.values())
            if not running:
                more = self._start_due()
                if not more:
                    break
                started += more
                continue
            for thread in running:
                thread.join()
        return started

    def _start_due(self) -> int:
        hooks = {h.name: h for h in self._hooks()}
        started = 0
        with self._lock:
            busy = list(self._busy)
        for delivery in self.ledger.due_deliveries(self._wall(), busy):
            hook = hooks.get(delivery.hook)
            # taken in the ledger first: a row read before another attempt ended is not attempted again
            if not self.ledger.claim_delivery(delivery, self._wall() + (hook.timeout if hook else 0) + CLAIM_MARGIN):
                continue
            with self._lock:
                thread = threading.Thread(
                    target=self._run_one,
                    args=(delivery, hook),
                    name=f"diarist-hook-{delivery.hook}",
                    daemon=True,
                )
                self._busy[delivery.hook] = thread
            thread.start()
            started += 1
        return started

    def _run_one(self, delivery: Delivery, hook: HookSettings | None) -> None:
        try:
            self._attempt(delivery, hook)
        except Exception:  # the ledger was busy: the claim runs out and the delivery is due again
            log.exception("hook_error", hook=delivery.hook)
        finally:
            with self._lock:
                self._busy.pop(delivery.hook, None)
            self.wake.set()

    def _attempt(self, delivery: Delivery, hook: HookSettings | None) -> None:
        key = idempotency_key(delivery.payload["file"]["sha256"], delivery.event, delivery.id)
        where = {"hook": delivery.hook, "on": delivery.event, "file": delivery.payload["file"]["name"]}
        if hook is None:
            self.ledger.delivery_attempted(delivery, DeliveryState.GIVEN_UP, error="the hook is no longer configured")
            log.error("hook_given_up", **where, error="the hook is no longer configured (removed by a reload?)")
            return
        crash_point("hook_deliver")
        attempt = self._deliver(delivery, hook, key)
        now = self._wall()
        if attempt.ok:
            self.ledger.delivery_attempted(delivery, DeliveryState.DELIVERED)
            log.info(
                "hook_delivered",
                **where,
                attempt=delivery.attempts + 1,
                detail=attempt.detail,
                output=attempt.output or None,
            )
            return
        if now - delivery.created_at >= hook.give_up_after:
            self.ledger.delivery_attempted(delivery, DeliveryState.GIVEN_UP, error=attempt.detail)
            log.error(
                "hook_given_up",
                **where,
                attempts=delivery.attempts + 1,
                error=attempt.detail,
                output=attempt.output or None,
                hint=f"it kept failing for {hook.give_up_after:g} s ([[hook]] give_up_after); fix the hook: "
                "the event stays listed in diarist status",
            )
            return
        retry = retry_at(delivery.attempts + 1, now)
        self.ledger.delivery_attempted(delivery, DeliveryState.PENDING, error=attempt.detail, next_at=retry)
        log.warning(
            "hook_failed",
            **where,
            attempt=delivery.attempts + 1,
            error=attempt.detail,
            output=attempt.output or None,
            retry_in=round(retry - now, 1),
        )

    def _deliver(self, delivery: Delivery, hook: HookSettings, key: str) -> Attempt:
        try:
            return self._make(delivery, hook, key)
        except Exception as e:  # whatever a hook does wrong is a failed attempt, retried with backoff
            return Attempt(False, f"{type(e).__name__}: {str(e)[:200]}")

    def _make(self, delivery: Delivery, hook: HookSettings, key: str) -> Attempt:
        if hook.exec is not None:
            return run_program(hook.exec, variables(delivery, key), hook.timeout)
        body = json.dumps({**delivery.payload, "idempotency_key": key, "attempt": delivery.attempts + 1}).encode()
        return post(hook.url or "", body, secret=hook.secret or "", key=key, timeout=hook.timeout, now=self._wall())

    def run(self, stop: threading.Event, poll: float = 1.0) -> None:
        """The hook loop: start what is due, then sleep until woken or the next one is due."""
        self.ledger.deliveries_due_now()  # what a previous run had in flight is attempted again at once
        while not stop.is_set():
            self._beat()
            try:
                self.tick()
            except Exception:  # the hook loop must survive whatever one pass throws (a busy ledger)
                log.exception("hook_error")
            with self._lock:
                busy = list(self._busy)
            due = self.ledger.next_delivery_at(busy)
            wait = poll if due is None else min(max(due - self._wall(), 0.05), poll)
            self.wake.wait(wait)
            self.wake.clear()
