"""Local or cloud, decided once per claimed file by ``policies.route.decide_route``; the reason goes into the
ledger (and later the result). Local files wait for the worker; cloud files wait in ``queued`` for a batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from diarist.daemon.cloud import CloudRoute
from diarist.daemon.config import InboxSettings, Settings
from diarist.daemon.ledger import FileRow, Ledger, State
from diarist.daemon.outcomes import FileOutcomes
from diarist.handlers import audio
from diarist.handlers.cloud_manifest import CLOUD_BACKEND
from diarist.handlers.errors import DiaristError, TransientError
from diarist.policies.request import question
from diarist.policies.route import FileFacts, Route, RouteSettings, UserPrefs, decide_route

log = structlog.get_logger("diarist")


class Router:
    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        cloud: CloudRoute,
        outcomes: FileOutcomes,
        inboxes: Mapping[str, InboxSettings],
        local_gpu: Callable[[], bool],
        wall: Callable[[], float],
        to_worker: Callable[[], None] = lambda: None,
    ):
        self.settings = settings
        self.ledger = ledger
        self.cloud = cloud
        self.out = outcomes
        self._inboxes = inboxes
        self._local_gpu = local_gpu
        self._wall = wall
        #: a file was routed local: wake the worker
        self._to_worker = to_worker

    def route_pending(self, rows: list[FileRow] | None = None) -> None:
        for row in self.ledger.unrouted() if rows is None else rows:
            inbox = self._inboxes.get(row.inbox)
            if inbox is None:
                continue
            try:
                self.route(row, inbox)
            except TransientError:
                raise
            except Exception as e:  # one odd file must not hold up routing for the others
                log.exception("route_error", file=row.rel_path)
                self.ledger.set_fields(row.id, route="local", route_reason=f"local: routing failed ({e})")
                self._to_worker()

    def _local(self, row: FileRow, reason: str, **fields: object) -> None:
        self.ledger.set_fields(row.id, route="local", route_reason=reason, **fields)
        self._to_worker()

    def route(self, row: FileRow, inbox: InboxSettings) -> None:
        assert row.sha256
        request = row.request()
        asked = question(request, inbox.defaults())
        if self.ledger.result(asked.result_key(row.sha256, self.settings.model_ids())):
            self._local(row, "local: identical content was already processed")
            return
        try:
            duration = audio.probe(Path(row.claim_path or "")).duration or 0.0
        except DiaristError:
            # unreadable: the local worker fails it with the full .error.json (nothing to pay the cloud for)
            self._local(row, "local: the file could not be probed")
            return
        c = self.settings.cloud
        prefs = self.settings.users.get(asked.user or "")
        override = request.as_override()
        if c.flavor != "auto" and override.flavor is None and override.priority is None:
            override = dataclasses.replace(override, flavor=c.flavor)
        decision = decide_route(
            FileFacts(size_bytes=row.size or 0, duration_seconds=duration, task=asked.task),
            cloud=self.cloud.state(),
            caps=self.cloud.terms.caps(asked.user),
            totals=self.ledger.budget_totals(self.cloud.tz, asked.user),
            inbox_route=inbox.route,
            override=override,
            prefs=UserPrefs(prefs.prefer_cloud, prefs.priority_processing, prefs.cost_limit) if prefs else None,
            settings=RouteSettings(
                min_file_size=c.min_file_size,
                prefer_cloud=c.prefer_cloud,
                default_priority=c.priority,
                startup_seconds=c.startup_seconds,
                min_job_timeout_seconds=c.min_job_timeout,
            ),
            local_gpu=self._local_gpu(),
            prices=self.cloud.terms.prices(),
            throughput=self.cloud.terms.throughput(),
        )
        log.info("routed", file=row.rel_path, route=decision.route.value, reason=decision.reason)
        if decision.route is Route.LOCAL:
            self._local(row, decision.reason, duration=duration, task=asked.task.value)
            return
        self.ledger.transition(
            row.id,
            State.QUEUED,
            route="cloud",
            route_reason=decision.reason,
            duration=duration,
            task=asked.task.value,
            flavor=decision.flavor,
            queued_at=self._wall(),
        )
        state = "deferred" if decision.route is Route.DEFERRED else "queued"
        self.out.status(self.ledger.get(row.id), state, note=decision.reason, engine=CLOUD_BACKEND)
