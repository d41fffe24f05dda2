"""The daemon: wires the rooms together and owns their threads. It decides nothing about files itself.

Flow of one file (see docs/architecture.md): ``Intake`` (event or scan -> ``discovered`` -> stable ->
claimed into ``.diarist/processing/<host>/`` -> ``claimed``) -> ``Router`` (local or cloud, once) ->
``LocalRunner`` on the worker thread, or ``CloudRoute`` on the scheduler's tick -> ``Outcomes`` (RTTM + JSON
written atomically, the input archived -> ``done``; bad input -> ``.diarist/failed/`` + ``.error.json``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from diarist.daemon.cloud import CloudRoute
from diarist.daemon.config import InboxSettings, Settings
from diarist.daemon.hooks import HookPlanner, HookWorker
from diarist.daemon.inboxes import Intake
from diarist.daemon.leases import ShareLeases
from diarist.daemon.ledger import ONESHOT_PREFIX, Ledger, State
from diarist.daemon.outcomes import Outcomes
from diarist.daemon.reload import ReloadPlan, Reloads, plan_reload
from diarist.daemon.router import Router
from diarist.daemon.uploads import sweep_staged
from diarist.daemon.watcher import InboxWatcher
from diarist.daemon.worker import LocalRunner
from diarist.handlers import intake
from diarist.handlers.asr import Transcribers
from diarist.handlers.engine import LocalEngine
from diarist.handlers.errors import TransientError
from diarist.handlers.results import sweep_temporaries
from diarist.policies.health import stale_components, status_line

if TYPE_CHECKING:
    from diarist.daemon.api import ApiContext
    from diarist.daemon.api_server import ApiServer

log = structlog.get_logger("diarist")

# How often a running daemon records itself in the ledger; the CLI treats 3x this as "alive".
HEARTBEAT_SECONDS = 5.0
#: a temporary this old is left over from a crash, not another host's write in progress
TEMPORARY_MAX_AGE = 60.0


class Daemon:
    """Owns the threads; ``start``/``stop`` are idempotent. Time sources are injected for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: LocalEngine,
        ledger: Ledger,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        tick: float = 0.25,
        transcribers: Transcribers | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.ledger = ledger
        self._clock = clock
        self._wall = wall
        self._tick = tick
        self._host = settings.daemon.host_id
        self._sweep_again_at: float | None = None  # the lease loop's one sweep after the start's
        inboxes = {str(i.path): i for i in settings.inboxes}
        #: the one map every part reads (by .get); a reload changes it in place, on the intake thread
        self._inboxes = inboxes
        self._reloads = Reloads(self._apply)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.heartbeats: dict[str, float] = {}
        self.hook_worker = HookWorker(ledger, lambda: self.settings.hooks, wall=wall, beat=lambda: self._beat("hooks"))
        planner = HookPlanner(lambda: self.settings.hooks, ledger, self._host, wall)
        self.out = Outcomes(
            ledger,
            self._host,
            wall,
            inboxes,
            self._wake,
            identify=settings.identify,
            hooks=planner,
            hooks_wake=self.hook_worker.wake,
        )
        self.intake = Intake(
            inboxes,
            ledger=ledger,
            outcomes=self.out,
            host=self._host,
            rescan_interval=settings.daemon.rescan_interval,
            clock=clock,
            beat=lambda: self._beat("intake"),
            claimed=self._wake.set,
            room=lambda: settings.daemon.claim_ahead - ledger.waiting_local(),
        )
        self.watcher = InboxWatcher(settings.inboxes, self.intake.on_path)
        self.cloud = CloudRoute(
            settings.cloud,
            settings.models.for_cloud(),
            ledger=ledger,
            host=self._host,
            token=settings.hf_token,
            outcomes=self.out,
            inboxes=inboxes,
            model_ids=settings.model_ids(),
            scope=lambda inbox: not inbox.startswith(ONESHOT_PREFIX),
            wall=wall,
            telemetry=settings.daemon.telemetry,
            users=settings.users,
            transcription=settings.transcription,
        )
        self.router = Router(
            settings,
            ledger=ledger,
            cloud=self.cloud,
            outcomes=self.out,
            inboxes=inboxes,
            local_gpu=lambda: self.engine.has_gpu,
            wall=wall,
            to_worker=self._wake.set,
        )
        self.worker = LocalRunner(
            engine=lambda: self.engine,
            ledger=ledger,
            outcomes=self.out,
            inboxes=inboxes,
            model_ids=settings.model_ids(),
            retry_interval=settings.daemon.retry_interval,
            clock=clock,
            beat=lambda: self._beat("worker"),
            scope=lambda inbox: not inbox.startswith(ONESHOT_PREFIX),
            transcribers=transcribers or Transcribers(settings.transcription, token=settings.hf_token),
        )
        self.leases = ShareLeases(settings.inboxes, self._host, settings.daemon.lease_seconds, clock=clock, wall=wall)
        self._scheduler: BackgroundScheduler | None = None
        self.api: ApiServer | None = None
        self._started_at = wall()
        self._next_heartbeat = 0.0

    def _beat(self, component: str) -> None:
        self.heartbeats[component] = self._clock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        for inbox in self.settings.inboxes:
            inbox.path.mkdir(parents=True, exist_ok=True)
            inbox.outbox.mkdir(parents=True, exist_ok=True)
            mode = self.watcher.modes[inbox.path]
            log.info("inbox", inbox=str(inbox.path), outbox=str(inbox.outbox), polling=mode.polling, reason=mode.reason)
        # a restart within the lease keeps our claims: renew before anything else
        self.leases.renew()
        self.intake.recover()
        sweep_leftovers(self.settings.inboxes, self._wall())
        self._sweep_again_at = self._wall() + TEMPORARY_MAX_AGE  # see sweep_leftovers
        for inbox in self.settings.inboxes:
            staged = sweep_staged(intake.uploads_dir(inbox.path, self._host))
            if staged:
                log.info("partial_uploads_removed", inbox=str(inbox.path), count=staged)
        if self.settings.api.listen is not None:  # FastAPI and uvicorn are only imported when asked for
            from diarist.daemon.api import build_app
            from diarist.daemon.api_server import ApiServer

            self.api = ApiServer(build_app(self.api_context()), self.settings.api.listen)  # binds now: fails early
        self.watcher.start()
        self.intake.scan_all()
        self._threads = [
            threading.Thread(target=self._intake_loop, name="diarist-intake", daemon=True),
            threading.Thread(target=self._worker_loop, name="diarist-worker", daemon=True),
            threading.Thread(target=self._lease_loop, name="diarist-lease", daemon=True),
            threading.Thread(target=self.hook_worker.run, args=(self._stop,), name="diarist-hooks", daemon=True),
        ]
        for t in self._threads:
            t.start()
        # One interval job: the ledger is the source of truth, so the job store stays in memory; never two
        # ticks at once, and missed runs collapse into one.
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()}, executors={"default": ThreadPoolExecutor(1)}
        )
        self._scheduler.add_job(
            self._cloud_tick,
            "interval",
            seconds=self.settings.cloud.poll_interval,
            id="cloud",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        self._scheduler.start()
        if self.api is not None:
            self.api.start()

    def api_context(self) -> ApiContext:
        from diarist.daemon.api import ApiContext

        return ApiContext(
            current=lambda: self.settings,
            ledger=self.ledger,
            admit=self.intake.admit,
            stale=self.stale,
            heartbeat_ages=lambda: {c: self._clock() - t for c, t in dict(self.heartbeats).items()},
            cancel=lambda job_id: self.cloud.hub().cancel(job_id),
            host=self._host,
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting files; cloud jobs keep running (the ledger resumes them at the next start).

        The file in hand gets ``[daemon] stop_timeout`` to finish; one that will not make it goes back into
        the inbox. ``timeout`` bounds how long to wait for the threads after that.
        """
        if self.api is not None:  # no new uploads; those in progress finish first
            self.api.stop()
            self.api = None
        self.worker.deadline = self._clock() + self.settings.daemon.stop_timeout
        self._stop.set()
        self._wake.set()
        self.hook_worker.wake.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.watcher.stop()
        for t in self._threads:
            t.join(timeout)

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    # -- the threads -------------------------------------------------------------------------------

    # -- reload ------------------------------------------------------------------------------------------

    def reload(self, settings: Settings, timeout: float = 60.0) -> ReloadPlan:
        """Apply a new configuration's inboxes and hooks (from any thread; done on the intake thread, which
        alone walks the inboxes). The file in hand is not touched."""
        return self._reloads.request(settings, timeout)

    def _apply(self, new: Settings) -> ReloadPlan:
        plan = plan_reload(self.settings, new)
        for inbox in (*plan.added, *plan.changed):  # what can fail comes first: then nothing has changed yet
            inbox.path.mkdir(parents=True, exist_ok=True)
            inbox.outbox.mkdir(parents=True, exist_ok=True)
        for inbox in (*plan.removed, *plan.changed):
            self.watcher.unwatch(inbox.path)
        for inbox in plan.removed:
            self.intake.forget_inbox(inbox.path)
            self._inboxes.pop(str(inbox.path), None)
        for inbox in (*plan.added, *plan.changed):
            self._inboxes[str(inbox.path)] = inbox  # a changed one is replaced in place, never missing
            mode = self.watcher.watch(inbox)
            log.info("inbox", inbox=str(inbox.path), outbox=str(inbox.outbox), polling=mode.polling, reason=mode.reason)
        self.settings = replace(self.settings, inboxes=new.inboxes, hooks=new.hooks)
        self.leases.add_inboxes(new.inboxes)  # a removed inbox's files in hand must not look abandoned
        if plan.added or plan.changed:
            self.intake.scan_all()
        self.hook_worker.wake.set()
        return plan

    def intake_tick(self) -> None:
        """One pass of the intake loop: the ledger heartbeat, the intake, then routing what it claimed."""
        self._beat("intake")
        self._reloads.apply_pending()
        if self._wall() >= self._next_heartbeat:
            self.ledger.heartbeat(self._host, os.getpid(), self._started_at)
            self._next_heartbeat = self._wall() + HEARTBEAT_SECONDS
        self.intake.tick()
        self.router.route_pending()

    def _intake_loop(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.intake_tick()
            except TransientError as e:
                log.warning("intake_retry", error=str(e))
            except Exception:  # the intake loop must survive anything one file throws at it
                log.exception("intake_error")

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            self._beat("worker")
            row = self.worker.next_row()
            if row is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self._stop.is_set():
                return
            try:
                self.worker.process(row)
            except Exception:
                log.exception("worker_error", file=row.rel_path)
                self.worker.retry_later(row)

    def _cloud_tick(self) -> None:
        self._beat("cloud")
        try:
            self.cloud.tick()
        except Exception:  # the scheduler must keep ticking whatever one pass throws
            log.exception("cloud_error")

    def _lease_loop(self) -> None:
        while True:
            self._beat("lease")
            try:
                self.leases.renew()
                for taken in self.leases.check():
                    # straight to the intake: on a share no event tells us about the file we just moved
                    self.intake.on_path(taken.inbox, taken.path)
                    self.out.note_reclaimed(taken)
                self._sweep_again_at = sweep_when_due(self._sweep_again_at, self.settings.inboxes, self._wall())
            except Exception:  # the lease must keep being renewed whatever one pass throws
                log.exception("lease_error")
            if self._stop.wait(self.leases.renew_every):
                return

    # -- health (for the systemd watchdog and STATUS=) ---------------------------------------------------

    def health_limits(self) -> dict[str, float]:
        """How old each thread's heartbeat may get before the daemon counts as wedged.

        Generous on purpose: a restart costs the file in hand. The worker beats between inference batches,
        the cloud tick once per poll (an upload of a large file holds it), the lease loop every lease/6.
        """
        return {
            "intake": 120.0,
            "worker": 600.0,
            "cloud": max(600.0, 4 * self.settings.cloud.poll_interval),
            "lease": max(30.0, self.settings.daemon.lease_seconds / 2),
            # the hook loop itself never waits for a hook (attempts run on threads of their own)
            "hooks": 120.0,
        }

    def stale(self) -> list[str]:
        """Components whose heartbeat is too old ("watcher" when an observer thread died)."""
        problems = stale_components(self.heartbeats, self._clock(), self.health_limits())
        if not self.watcher.alive():
            problems.append("watcher")
        return problems

    def status_line(self) -> str:
        return status_of(self.ledger, self.cloud, self.stale())


def sweep_leftovers(inboxes: Iterable[InboxSettings], now: float) -> None:
    """Remove the temporaries of writes cut short (a crash of this or another host) from outboxes and claim
    folders, once older than ``TEMPORARY_MAX_AGE``. A younger one may be another host's write in progress, so
    the daemon sweeps at start and once more when what was left just before the start has aged."""
    for inbox in inboxes:
        for folder in (inbox.outbox, intake.state_dir(inbox.path)):
            swept = sweep_temporaries(folder, older_than=now - TEMPORARY_MAX_AGE)
            if swept:
                log.info("temporaries_removed", folder=str(folder), count=swept)


def sweep_when_due(due: float | None, inboxes: Iterable[InboxSettings], now: float) -> float | None:
    """``sweep_leftovers`` once ``due`` has come; what is due next (None: nothing more)."""
    if due is None or now < due:
        return due
    sweep_leftovers(inboxes, now)
    return None


def status_of(ledger: Ledger, cloud: CloudRoute, stale: list[str]) -> str:
    """systemd's STATUS= line: what waits, runs and is in the cloud, the budget left, what is stale."""
    counts = ledger.counts()
    caps = cloud.terms.caps(None)
    left = None
    if caps.daily_usd is not None or caps.monthly_usd is not None:
        totals = ledger.budget_totals(cloud.tz)
        room = [
            cap - period.committed_usd
            for cap, period in ((caps.daily_usd, totals.day), (caps.monthly_usd, totals.month))
            if cap is not None
        ]
        left = max(min(room), Decimal(0))
    return status_line(
        waiting=counts.get(State.CLAIMED.value, 0) + counts.get(State.STABLE.value, 0),
        running=counts.get(State.RUNNING.value, 0),
        cloud_files=counts.get(State.QUEUED.value, 0) + counts.get(State.SUBMITTED.value, 0),
        cloud_jobs=len(ledger.open_jobs()),
        budget_left=left,
        stale=stale,
    )
