"""The daemon: intake loop (events, scans, stability, claims) and one local worker, both driven by the ledger.

Flow of one file (see docs/architecture.md): event or scan -> ``discovered`` -> unchanged for
``stability_seconds`` -> hashed, ``stable`` -> renamed into ``.diarist/processing/<host>/`` -> ``claimed``
-> worker: ``running`` -> result stored in the ledger -> RTTM + JSON written atomically -> input archived
-> ``done``. Bad input -> ``.diarist/failed/`` + ``.error.json`` -> ``failed``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from diarist.daemon.cloud import CloudCallbacks, CloudRoute
from diarist.daemon.config import InboxSettings, OnSuccess, Settings
from diarist.daemon.leases import ShareLeases
from diarist.daemon.ledger import FileRow, Ledger, State
from diarist.daemon.outcomes import Outcomes, companion, signature
from diarist.daemon.watcher import InboxWatcher, scan
from diarist.handlers import audio, intake
from diarist.handlers.cloud_job import CLOUD_BACKEND
from diarist.handlers.cloud_submit import JobItem
from diarist.handlers.crashpoints import crash_point, hold_point
from diarist.handlers.engine import LocalEngine
from diarist.handlers.errors import DiaristError, PermanentFileError, TransientError
from diarist.handlers.local import diarize_file
from diarist.handlers.outbox import reserve_stem
from diarist.handlers.results import sweep_temporaries
from diarist.policies.flavor import Task
from diarist.policies.health import should_release, stale_components, status_line
from diarist.policies.intake import ignore_reason
from diarist.policies.names import is_text, printable
from diarist.policies.route import FileFacts, Route, RouteSettings, UserPrefs, decide_route
from diarist.policies.sidecar import SIDECAR_SUFFIX, FileRequest, SidecarError, parse_sidecar_text, sidecar_names

log = structlog.get_logger("diarist")

STATUS_MIN_INTERVAL = 1.0
# How often a running daemon records itself in the ledger; the CLI treats 3x this as "alive".
HEARTBEAT_SECONDS = 5.0
#: a temporary this old is left over from a crash, not another host's write in progress
TEMPORARY_MAX_AGE = 60.0


def _read_sidecar(path: Path) -> tuple[Path | None, FileRequest | None, PermanentFileError | None]:
    """The sidecar next to ``path`` (if any), its request, or the error that fails the file."""
    for name in sidecar_names(path.name):
        candidate = path.with_name(name)
        try:
            if not candidate.is_file():
                continue
        except OSError:  # e.g. the audio's name is so long that its sidecar's could not exist
            continue
        try:
            return candidate, parse_sidecar_text(candidate.read_text(encoding="utf-8")), None
        except (SidecarError, UnicodeDecodeError) as e:
            error = PermanentFileError(
                f"its sidecar {name} is invalid: {e}",
                hint="fix the sidecar (see README: per-file settings) and drop the audio and the sidecar again",
            )
            return candidate, None, error
        except OSError:
            return None, None, None
    return None, None, None


def symlink_refused() -> PermanentFileError:
    return PermanentFileError(
        "it is a symbolic link, and diarist does not follow links (one could point at any file on this machine)",
        hint="copy the recording itself into the inbox",
    )


def name_refused(name: str) -> PermanentFileError:
    return PermanentFileError(
        f"its name is not valid UTF-8 ({printable(name)}), so it cannot be written into results, logs or the "
        "ledger as it is",
        hint="rename it using plain letters (on a share, check the client's character set) and drop it again",
    )


def unreadable(e: OSError) -> PermanentFileError:
    return PermanentFileError(
        f"diarist is not allowed to read it ({e.strerror})",
        hint=f"give the account diarist runs as (uid {os.geteuid()}) read access to the file, or drop a copy "
        "it can read",
    )


def storage_fault(e: OSError | sqlite3.Error, inbox: InboxSettings) -> TransientError:
    """A write diarist could not make (outbox or archive not writable, a full disk, the ledger unusable):
    nothing is wrong with the file, so it waits in processing/ and is retried; its finished result stays in
    the ledger, so inference is not run again."""
    if isinstance(e, sqlite3.Error):
        return TransientError(
            f"the ledger could not be written ({e})",
            hint="free space on the state directory's disk or stop the process that holds the ledger; "
            "diarist retries by itself",
        )
    where = f" ({e.filename})" if e.filename else ""
    return TransientError(
        f"diarist could not write its output{where}: {e.strerror or e}",
        hint=f"make {inbox.outbox} and the inbox's .diarist folder writable for the account diarist runs as "
        f"(uid {os.geteuid()}) and check that their disk has space; the file waits and is finished automatically",
    )


def _request(row: FileRow) -> FileRequest:
    return FileRequest.from_json(json.loads(row.params)) if row.params else FileRequest()


def result_key(sha256: str, task: Task, speakers: dict[str, int], model: str) -> str:
    """Same content + same question + same model = same answer: the cache key for reuse."""
    params = json.dumps({"task": task.value, **speakers, "model": model}, sort_keys=True)
    return f"{sha256}:{params}"


class _Released(Exception):
    """Raised from the progress hook to abandon inference when stopping (not an error of the file)."""


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
    ):
        self.settings = settings
        self.engine = engine
        self.ledger = ledger
        self._clock = clock
        self._wall = wall
        self._tick = tick
        self._host = settings.daemon.host_id
        self._inboxes = {str(i.path): i for i in settings.inboxes}
        self._events: queue.SimpleQueue[tuple[InboxSettings, Path]] = queue.SimpleQueue()
        self._tracker = intake.StabilityTracker(clock=clock)
        self._file_ids: dict[Path, int] = {}
        self._retry_at: dict[int, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.watcher = InboxWatcher(settings.inboxes, self._on_path)
        self.heartbeats: dict[str, float] = {}
        self._next_scan = clock() + settings.daemon.rescan_interval
        self.cloud = CloudRoute(
            settings.cloud,
            settings.models,
            ledger=ledger,
            host=self._host,
            token=settings.hf_token,
            callbacks=CloudCallbacks(
                finish=self._cloud_finish,
                fail=self._cloud_fail,
                fall_back=self._fall_back,
                status=self._cloud_status,
                item=self._job_item,
                user_of=self._user_of,
            ),
            wall=wall,
            telemetry=settings.daemon.telemetry,
            users=settings.users,
        )
        self._scheduler: BackgroundScheduler | None = None
        self._started_at = wall()
        self._next_heartbeat = 0.0
        self.out = Outcomes(ledger, self._host, wall)
        self.leases = ShareLeases(settings.inboxes, self._host, settings.daemon.lease_seconds, clock=clock, wall=wall)
        #: set by stop(): the file in hand must be finished by then, or it goes back into the inbox
        self._deadline: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        for inbox in self.settings.inboxes:
            inbox.path.mkdir(parents=True, exist_ok=True)
            inbox.outbox.mkdir(parents=True, exist_ok=True)
            log.info(
                "inbox",
                inbox=str(inbox.path),
                outbox=str(inbox.outbox),
                polling=self.watcher.modes[inbox.path].polling,
                reason=self.watcher.modes[inbox.path].reason,
            )
        # a restart within the lease keeps our claims: renew before anything else
        self.leases.renew()
        self._recover()
        for inbox in self.settings.inboxes:
            for folder in (inbox.outbox, intake.state_dir(inbox.path)):
                swept = sweep_temporaries(folder, older_than=self._wall() - TEMPORARY_MAX_AGE)
                if swept:
                    log.info("temporaries_removed", folder=str(folder), count=swept)
        self.watcher.start()
        self._scan_all()
        self._threads = [
            threading.Thread(target=self._intake_loop, name="diarist-intake", daemon=True),
            threading.Thread(target=self._worker_loop, name="diarist-worker", daemon=True),
            threading.Thread(target=self._lease_loop, name="diarist-lease", daemon=True),
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

    def _cloud_tick(self) -> None:
        self.heartbeats["cloud"] = self._clock()
        try:
            self.cloud.tick()
        except Exception:  # the scheduler must keep ticking whatever one pass throws
            log.exception("cloud_error")

    def _lease_loop(self) -> None:
        while True:
            self.heartbeats["lease"] = self._clock()
            try:
                self.leases.renew()
                for taken in self.leases.check():
                    # straight to the intake: on a share no event tells us about the file we just moved
                    self._events.put((taken.inbox, taken.path))
                    self.out.note_reclaimed(taken)
            except Exception:  # the lease must keep being renewed whatever one pass throws
                log.exception("lease_error")
            if self._stop.wait(self.leases.renew_every):
                return

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting files; cloud jobs keep running (the ledger resumes them at the next start).

        The file in hand gets ``[daemon] stop_timeout`` to finish; one that will not make it goes back into
        the inbox. ``timeout`` bounds how long to wait for the threads after that.
        """
        self._deadline = self._clock() + self.settings.daemon.stop_timeout
        self._stop.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.watcher.stop()
        for t in self._threads:
            t.join(timeout)

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

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
        }

    def stale(self) -> list[str]:
        """Components whose heartbeat is too old ("watcher" when an observer thread died)."""
        problems = stale_components(self.heartbeats, self._clock(), self.health_limits())
        if not self.watcher.alive():
            problems.append("watcher")
        return problems

    def status_line(self) -> str:
        counts = self.ledger.counts()
        caps = self.cloud.caps(None)
        left = None
        if caps.daily_usd is not None or caps.monthly_usd is not None:
            totals = self.ledger.budget_totals(self.cloud.tz)
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
            cloud_jobs=len(self.ledger.open_jobs()),
            budget_left=left,
            stale=self.stale(),
        )

    # -- intake ------------------------------------------------------------------------------------

    def _on_path(self, inbox: InboxSettings, path: Path) -> None:
        self._events.put((inbox, path))

    def _scan_all(self) -> None:
        for inbox in self.settings.inboxes:
            for path in scan(inbox):
                self._events.put((inbox, path))

    def intake_tick(self) -> None:
        """One pass of the intake loop: new events, stability checks, claims, a rescan when due."""
        self.heartbeats["intake"] = self._clock()
        if self._wall() >= self._next_heartbeat:
            self.ledger.heartbeat(self._host, os.getpid(), self._started_at)
            self._next_heartbeat = self._wall() + HEARTBEAT_SECONDS
        if self._clock() >= self._next_scan:
            self._scan_all()
            self._next_scan = self._clock() + self.settings.daemon.rescan_interval
        self._drain_events()
        for path in self._tracker.poll(self._stability_for):
            file_id = self._file_ids.get(path)
            try:
                self._take(path)
            except Exception:  # one file's surprise must not stop the others (nor mark them vanished)
                log.exception("take_error", file=printable(str(path)))
                if file_id is not None and os.path.lexists(path):
                    self._file_ids[path] = file_id  # still in the inbox: try again after another stable wait
                    self._tracker.observe(path)
        self._forget_vanished()
        self._route_pending()

    def _intake_loop(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.intake_tick()
            except TransientError as e:
                log.warning("intake_retry", error=str(e))
            except Exception:  # the intake loop must survive anything one file throws at it
                log.exception("intake_error")

    def _inbox_of(self, path: Path) -> InboxSettings | None:
        for inbox in self.settings.inboxes:
            if path.is_relative_to(inbox.path):
                return inbox
        return None

    def _stability_for(self, path: Path) -> float:
        inbox = self._inbox_of(path)
        return inbox.stability_seconds if inbox else 5.0

    def _drain_events(self) -> None:
        while True:
            try:
                inbox, path = self._events.get_nowait()
            except queue.Empty:
                return
            rel = path.relative_to(inbox.path).as_posix() if path.is_relative_to(inbox.path) else None
            if rel is None or ignore_reason(rel, inbox.ignore) is not None:
                continue
            if path in self._tracker:
                self._tracker.observe(path)
                continue
            if path.is_symlink():
                self._refuse(inbox, path, rel, symlink_refused())
                continue
            if not path.is_file():
                continue
            if not is_text(rel):
                self._refuse(inbox, path, rel, name_refused(path.name))
                continue
            if inbox.on_success is OnSuccess.KEEP and self.ledger.is_kept(str(inbox.path), rel, signature(path)):
                continue
            if path not in self._file_ids:
                self._file_ids[path] = self.ledger.discover(str(inbox.path), rel)
                log.info("discovered", file=rel, inbox=str(inbox.path))
            self._tracker.observe(path)

    def _refuse(self, inbox: InboxSettings, path: Path, rel: str, error: PermanentFileError) -> None:
        """Turn away what diarist will not take; it is claimed like any file (one host acts), then moved
        into failed/ untouched with the reason beside it and in the outbox."""
        target = intake.unique_path(intake.processing_dir(inbox.path, self._host) / rel)
        if not intake.claim(path, target):
            return
        self.out.refuse(inbox, target, rel, error, log.bind(file=printable(rel)))

    def _forget_vanished(self) -> None:
        """Files removed (or renamed away) before they were complete: close their ledger rows."""
        for path in [p for p in self._file_ids if p not in self._tracker]:
            file_id = self._file_ids.pop(path)
            self.ledger.transition(file_id, State.FAILED, error="removed from the inbox before it was complete")
            log.info("vanished", file=str(path))

    def _take(self, path: Path) -> None:
        """A stable file: record where it goes, rename it there (the claim), hash it, queue it.

        Claim before hashing: of several hosts watching one share only the winner of the rename reads the
        whole file.
        """
        inbox = self._inbox_of(path)
        file_id = self._file_ids.pop(path, None)
        if inbox is None or file_id is None:
            return
        rel = path.relative_to(inbox.path).as_posix()
        sidecar, request, problem = _read_sidecar(path)
        target = intake.unique_path(intake.processing_dir(inbox.path, self._host) / rel)
        # record the destination first: a crash between this and the rename is resolved by _recover
        params = json.dumps(request.to_json()) if request else None
        self.ledger.transition(file_id, State.STABLE, claim_path=str(target), params=params)
        if not intake.claim(path, target):
            # another host claimed it (or the user took it away): it was never ours
            self.ledger.forget(file_id)
            log.info("claimed_elsewhere", file=rel)
            return
        crash_point("claimed")
        if sidecar is not None:
            intake.claim(sidecar, companion(target))
        stem = reserve_stem(inbox.outbox, rel)
        try:
            sha = self._hash(target)
        except PermissionError as e:
            self.ledger.transition(file_id, State.CLAIMED, size=target.stat().st_size, out_name=stem)
            self.out.fail(self.ledger.get(file_id), inbox, target, unreadable(e), log.bind(file=rel))
            return
        self.ledger.transition(file_id, State.CLAIMED, sha256=sha, size=target.stat().st_size, out_name=stem)
        log.info("claimed", file=rel, sha=sha[:12], sidecar=sidecar.name if sidecar else None, outputs=stem)
        if problem is not None:
            self.out.fail(self.ledger.get(file_id), inbox, target, problem, log.bind(file=rel, sha=sha[:12]))
            return
        self.out.status(inbox, self.ledger.get(file_id), "queued", progress=0.0, step=None)
        self._wake.set()

    def _hash(self, path: Path) -> str:
        # a large file on a slow share takes a while: keep the intake heartbeat (and so the watchdog) fresh
        return intake.sha256_of(path, on_block=lambda: self.heartbeats.__setitem__("intake", self._clock()))

    def _recover(self) -> None:
        """Resume from the ledger and the processing folder after a restart or crash."""
        for row in self.ledger.pending_stable():
            claimed = Path(row.claim_path or "")
            if row.claim_path and claimed.is_file():
                inbox = self._inboxes.get(row.inbox)
                stem = row.out_name or (reserve_stem(inbox.outbox, row.rel_path) if inbox else None)
                self.ledger.transition(
                    row.id,
                    State.CLAIMED,
                    detail="recovered after restart",
                    sha256=row.sha256 or self._hash(claimed),
                    size=claimed.stat().st_size,
                    out_name=stem,
                )
        known = {r.claim_path for r in self.ledger.unfinished()}
        for inbox in self.settings.inboxes:
            folder = intake.processing_dir(inbox.path, self._host)
            if not folder.is_dir():
                continue
            for path in scan(InboxSettings(path=folder, outbox=inbox.outbox)):
                if str(path) in known:
                    continue
                # claimed by a previous run whose ledger row is gone (new ledger, or crash before commit)
                rel = path.relative_to(folder).as_posix()
                if rel.endswith(SIDECAR_SUFFIX):
                    continue  # travels with its audio
                file_id = self.ledger.discover(str(inbox.path), rel)
                self.ledger.transition(
                    file_id,
                    State.CLAIMED,
                    sha256=self._hash(path),
                    size=path.stat().st_size,
                    claim_path=str(path),
                    out_name=reserve_stem(inbox.outbox, rel),
                    detail="adopted from processing/",
                )
        for row in self.ledger.unfinished():
            if row.state is not State.STABLE:
                log.info("resumed", file=row.rel_path, state=row.state.value, job=row.batch_id)

    # -- worker ------------------------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            self.heartbeats["worker"] = self._clock()
            row = self._next_row()
            if row is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self._stop.is_set():
                return
            try:
                self.process(row)
            except Exception:
                log.exception("worker_error", file=row.rel_path)
                self._retry_later(row)

    def _next_row(self) -> FileRow | None:
        now = self._clock()
        for row in self.ledger.local_queue():
            if self._retry_at.get(row.id, 0.0) <= now:
                return row
        return None

    def process(self, row: FileRow) -> None:
        """Take one claimed file to ``done`` or ``failed`` (or leave it claimed on a transient error)."""
        inbox = self._inboxes.get(row.inbox)
        bound = log.bind(file=row.rel_path, sha=(row.sha256 or "")[:12], route="local")
        if inbox is None:
            bound.warning("inbox_not_configured", inbox=row.inbox)
            self._retry_later(row)
            return
        claimed = Path(row.claim_path or "")
        if not claimed.is_file():
            if row.result_key:
                self.ledger.transition(row.id, State.DONE, detail="outputs were written before a restart")
            else:
                self.ledger.transition(
                    row.id, State.FAILED, error="the claimed input vanished from .diarist/processing"
                )
            return
        try:
            doc = self._result_for(row, inbox, claimed, bound)
            self.out.finish(row, inbox, claimed, doc, bound)
        except _Released as e:
            self.out.release(row, inbox, claimed, str(e), bound)
        except TransientError as e:
            self._wait(row, inbox, e, bound)
        except (OSError, sqlite3.Error) as e:  # diarist's own writes, not the file: a fault that can clear
            self._wait(row, inbox, storage_fault(e, inbox), bound)
        except DiaristError as e:  # permanent for this file (bad input, model failure on it)
            self.out.fail(row, inbox, claimed, e, bound)
        except Exception as e:  # an engine crash on odd input must not take the daemon down
            bound.exception("engine_crash")
            self.out.fail(
                row,
                inbox,
                claimed,
                PermanentFileError(
                    f"processing crashed: {type(e).__name__}: {e}",
                    hint="the file may be corrupt or unusual; re-export it as WAV and drop it again, or report a bug",
                ),
                bound,
            )

    def _wait(self, row: FileRow, inbox: InboxSettings, e: TransientError, bound: Any) -> None:
        bound.warning("transient_error", error=str(e), retry_in=self.settings.daemon.retry_interval)
        self.out.status(inbox, row, "waiting", progress=None, step=None, note=str(e))
        self._retry_later(row)

    def _retry_later(self, row: FileRow) -> None:
        self._retry_at[row.id] = self._clock() + self.settings.daemon.retry_interval

    def _result_for(self, row: FileRow, inbox: InboxSettings, claimed: Path, bound: Any) -> dict[str, Any]:
        assert row.sha256
        task, speakers = self._question(row, inbox)
        key = result_key(row.sha256, task, speakers, self.settings.models.pipeline)
        if row.result_key:  # inference finished before a crash: never run it twice
            stored = self.ledger.result(row.result_key)
            if stored:
                bound.info("result_recovered")
                return self._adapt(stored, row)
        cached = self.ledger.result(key)
        if cached:
            self.ledger.set_fields(row.id, result_key=key, reused_from=cached[0])
            bound.info("result_reused", original_file_id=cached[0])
            return self._adapt(cached, row)
        route: dict[str, Any] = {"decision": "local", "reason": row.route_reason or "local"}
        if row.fallback:
            route["fallback"] = json.loads(row.fallback)
        self.ledger.transition(row.id, State.RUNNING)
        self.out.status(inbox, row, "running", progress=0.0, step="decoding")
        bound.info("running", reason=route["reason"])
        last = [0.0]

        started = self._clock()

        def progress(step: str, fraction: float) -> None:
            if step == "embeddings":
                crash_point("inference")
                # test-only (DIARIST_HOLD_AT): wait here mid-inference until the flag goes or stop() begins
                hold_point("inference", until=lambda: self._deadline is not None)
            now = self._clock()
            self.heartbeats["worker"] = now
            if self._deadline is not None and should_release(
                elapsed=now - started, fraction=fraction, time_left=self._deadline - now
            ):
                raise _Released(f"diarist stopped before {row.rel_path} could finish")
            if now - last[0] >= STATUS_MIN_INTERVAL:
                last[0] = now
                self.out.status(inbox, row, "running", progress=fraction, step=step)

        doc = diarize_file(
            claimed,
            engine=self.engine,
            name=Path(row.rel_path).name,
            relative_path=row.rel_path,
            sha256=row.sha256,
            task=task,
            speakers=speakers,
            route=route,
            progress=progress,
        )
        user = _request(row).user or inbox.user
        if user:
            doc["user"] = user
        self.ledger.store_result(row.id, key, row.sha256, doc)
        crash_point("result_stored")
        return doc

    def _adapt(self, stored: tuple[int, dict[str, Any]], row: FileRow) -> dict[str, Any]:
        """A stored result, relabelled for this file (and marked as reused when it came from another)."""
        original_id, doc = stored
        doc = json.loads(json.dumps(doc))
        if original_id != row.id:
            doc["reused"] = {
                "from_file": doc["source"]["relative_path"],
                "from_ledger_id": original_id,
                "reason": "identical content was already processed with the same settings",
            }
            doc["source"]["name"] = Path(row.rel_path).name
            doc["source"]["relative_path"] = row.rel_path
        return doc

    # -- routing -----------------------------------------------------------------------------------

    def _route_pending(self) -> None:
        for row in self.ledger.unrouted():
            inbox = self._inboxes.get(row.inbox)
            if inbox is None:
                continue
            try:
                self._route_file(row, inbox)
            except TransientError:
                raise
            except Exception as e:  # one odd file must not hold up routing for the others
                log.exception("route_error", file=row.rel_path)
                self.ledger.set_fields(row.id, route="local", route_reason=f"local: routing failed ({e})")
                self._wake.set()

    def _route_file(self, row: FileRow, inbox: InboxSettings) -> None:
        """Local or cloud, decided once per claimed file; the reason goes into the ledger and the result."""
        assert row.sha256
        task, speakers = self._question(row, inbox)
        if self.ledger.result(result_key(row.sha256, task, speakers, self.settings.models.pipeline)):
            self.ledger.set_fields(row.id, route="local", route_reason="local: identical content was already processed")
            self._wake.set()
            return
        try:
            duration = audio.probe(Path(row.claim_path or "")).duration or 0.0
        except DiaristError:
            # unreadable: the local worker fails it with the full .error.json (nothing to pay the cloud for)
            self.ledger.set_fields(row.id, route="local", route_reason="local: the file could not be probed")
            self._wake.set()
            return
        c = self.settings.cloud
        user = self._user_of(row)
        prefs = self.settings.users.get(user or "")
        override = _request(row).as_override()
        if c.flavor != "auto" and override.flavor is None and override.priority is None:
            override = dataclasses.replace(override, flavor=c.flavor)
        decision = decide_route(
            FileFacts(size_bytes=row.size or 0, duration_seconds=duration, task=task),
            cloud=self.cloud.state(),
            caps=self.cloud.caps(user),
            totals=self.ledger.budget_totals(self.cloud.tz, user),
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
            local_gpu=self.engine.has_gpu,
            prices=self.cloud.prices(),
            throughput=self.cloud.throughput(),
        )
        log.info("routed", file=row.rel_path, route=decision.route.value, reason=decision.reason)
        if decision.route is Route.LOCAL:
            self.ledger.set_fields(
                row.id, route="local", route_reason=decision.reason, duration=duration, task=task.value
            )
            self._wake.set()
            return
        self.ledger.transition(
            row.id,
            State.QUEUED,
            route="cloud",
            route_reason=decision.reason,
            duration=duration,
            task=task.value,
            flavor=decision.flavor,
            queued_at=self._wall(),
        )
        state = "deferred" if decision.route is Route.DEFERRED else "queued"
        self.out.status(inbox, row, state, progress=None, step=None, note=decision.reason, engine=CLOUD_BACKEND)

    def _question(self, row: FileRow, inbox: InboxSettings) -> tuple[Task, dict[str, int]]:
        """The task and speaker counts asked of this file: its sidecar's, else its inbox's."""
        request = _request(row)
        # speaker counts replace the inbox's as a whole: a sidecar min_speakers next to an inbox num_speakers
        # would otherwise ask for both
        speakers = request.speakers() or inbox.speakers.as_kwargs()
        return Task(request.task or inbox.task), speakers

    # -- cloud callbacks (called from the scheduler thread) ------------------------------------------

    def _user_of(self, row: FileRow) -> str | None:
        inbox = self._inboxes.get(row.inbox)
        return _request(row).user or (inbox.user if inbox else None)

    def _job_item(self, row: FileRow) -> JobItem:
        inbox = self._inboxes[row.inbox]
        task, speakers = self._question(row, inbox)
        assert row.sha256 and row.claim_path
        return JobItem(
            sha256=row.sha256,
            local_path=Path(row.claim_path),
            name=Path(row.rel_path).name,
            relative_path=row.rel_path,
            task=task.value,
            speakers=speakers,
            route={"decision": "cloud", "reason": row.route_reason, "flavor": row.flavor},
        )

    def _inbox_for_cloud(self, row: FileRow) -> InboxSettings:
        inbox = self._inboxes.get(row.inbox)
        if inbox is None:  # keeps the job open (and its results on the Hub) until the inbox is configured again
            raise TransientError(
                f"{row.rel_path} belongs to inbox {row.inbox}, which is no longer configured",
                hint="add the inbox back to the configuration to receive its results",
            )
        return inbox

    def _cloud_finish(self, row: FileRow, doc: dict[str, Any]) -> None:
        inbox = self._inbox_for_cloud(row)
        assert row.sha256
        task, speakers = self._question(row, inbox)
        user = _request(row).user or inbox.user
        if user:
            doc["user"] = user
        self.ledger.store_result(
            row.id, result_key(row.sha256, task, speakers, self.settings.models.pipeline), row.sha256, doc
        )
        bound = log.bind(file=row.rel_path, sha=row.sha256[:12], route="cloud", job=doc["engine"].get("job_id"))
        self.out.finish(row, inbox, Path(row.claim_path or ""), doc, bound)

    def _cloud_fail(self, row: FileRow, error: DiaristError, details: dict[str, Any] | None) -> None:
        inbox = self._inbox_for_cloud(row)
        bound = log.bind(file=row.rel_path, sha=(row.sha256 or "")[:12], route="cloud")
        self.out.fail(row, inbox, Path(row.claim_path or ""), error, bound, details)

    def _fall_back(self, row: FileRow, reason: str, info: dict[str, Any]) -> None:
        self.ledger.transition(
            row.id, State.CLAIMED, route="local", route_reason=reason, fallback=json.dumps(info), detail=reason
        )
        inbox = self._inboxes.get(row.inbox)
        if inbox is not None:
            self.out.status(inbox, row, "queued", progress=None, step=None, note=reason)
        log.warning("fallback", file=row.rel_path, reason=reason)
        self._wake.set()

    def _cloud_status(self, row: FileRow, state: str, note: str | None) -> None:
        inbox = self._inboxes.get(row.inbox)
        if inbox is not None:
            self.out.status(inbox, row, state, progress=None, step=None, note=note, engine=CLOUD_BACKEND)
