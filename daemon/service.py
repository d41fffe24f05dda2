"""The daemon: intake loop (events, scans, stability, claims) and one local worker, both driven by the ledger.

Flow of one file (see docs/architecture.md): event or scan -> ``discovered`` -> unchanged for
``stability_seconds`` -> hashed, ``stable`` -> renamed into ``.diarist/processing/<host>/`` -> ``claimed``
-> worker: ``running`` -> result stored in the ledger -> RTTM + JSON written atomically -> input archived
-> ``done``. Bad input -> ``.diarist/failed/`` + ``.error.json`` -> ``failed``.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from diarist.daemon.config import InboxSettings, OnSuccess, Settings
from diarist.daemon.ledger import FileRow, Ledger, State
from diarist.daemon.watcher import InboxWatcher, scan
from diarist.handlers import intake
from diarist.handlers.engine import LOCAL_BACKEND, LocalEngine
from diarist.handlers.errors import DiaristError, PermanentFileError, TransientError
from diarist.handlers.local import diarize_file
from diarist.handlers.results import (
    OutputPaths,
    atomic_write,
    dumps,
    error_document,
    remove_quietly,
    status_document,
    write_result,
)
from diarist.policies.budget import BudgetCaps, BudgetTotals
from diarist.policies.intake import ignore_reason
from diarist.policies.route import CloudState, FileFacts, decide_route

log = structlog.get_logger("diarist")

TRANSIENT_RETRY_SECONDS = 30.0
STATUS_MIN_INTERVAL = 1.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def result_key(sha256: str, inbox: InboxSettings, model: str) -> str:
    """Same content + same question + same model = same answer: the cache key for reuse."""
    params = json.dumps({"task": inbox.task.value, **inbox.speakers.as_kwargs(), "model": model}, sort_keys=True)
    return f"{sha256}:{params}"


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
        self._recover()
        self.watcher.start()
        self._scan_all()
        self._threads = [
            threading.Thread(target=self._intake_loop, name="diarist-intake", daemon=True),
            threading.Thread(target=self._worker_loop, name="diarist-worker", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting files; the worker finishes the file in hand (or leaves it claimed for the next start)."""
        self._stop.set()
        self._wake.set()
        self.watcher.stop()
        for t in self._threads:
            t.join(timeout)

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

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
        if self._clock() >= self._next_scan:
            self._scan_all()
            self._next_scan = self._clock() + self.settings.daemon.rescan_interval
        self._drain_events()
        for path in self._tracker.poll(self._stability_for):
            self._take(path)
        self._forget_vanished()

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
            if path.is_symlink() or not path.is_file():
                continue
            if inbox.on_success is OnSuccess.KEEP and self.ledger.is_kept(str(inbox.path), rel, _signature(path)):
                continue
            if path not in self._file_ids:
                self._file_ids[path] = self.ledger.discover(str(inbox.path), rel)
                log.info("discovered", file=rel, inbox=str(inbox.path))
            self._tracker.observe(path)

    def _forget_vanished(self) -> None:
        """Files removed (or renamed away) before they were complete: close their ledger rows."""
        for path in [p for p in self._file_ids if p not in self._tracker]:
            file_id = self._file_ids.pop(path)
            self.ledger.transition(file_id, State.FAILED, error="removed from the inbox before it was complete")
            log.info("vanished", file=str(path))

    def _take(self, path: Path) -> None:
        """A stable file: hash it, record where it goes, rename it there, queue it."""
        inbox = self._inbox_of(path)
        file_id = self._file_ids.pop(path, None)
        if inbox is None or file_id is None:
            return
        rel = path.relative_to(inbox.path).as_posix()
        try:
            sha = intake.sha256_of(path)
            size = path.stat().st_size
        except FileNotFoundError:
            self.ledger.transition(file_id, State.FAILED, error="file vanished before it could be claimed")
            log.warning("vanished", file=rel)
            return
        target = intake.unique_path(intake.processing_dir(inbox.path, self._host) / rel)
        # record the destination first: a crash between this and the rename is resolved by _recover
        self.ledger.transition(file_id, State.STABLE, sha256=sha, size=size, claim_path=str(target))
        if not intake.claim(path, target):
            self.ledger.transition(file_id, State.FAILED, error="file vanished before it could be claimed")
            log.warning("claim_lost", file=rel)
            return
        self.ledger.transition(file_id, State.CLAIMED)
        log.info("claimed", file=rel, sha=sha[:12])
        self._write_status(inbox, rel, "queued", progress=0.0, step=None)
        self._wake.set()

    def _recover(self) -> None:
        """Resume from the ledger and the processing folder after a restart or crash."""
        for row in self.ledger.pending_stable():
            if row.claim_path and Path(row.claim_path).exists():
                self.ledger.transition(row.id, State.CLAIMED, detail="recovered after restart")
        known = {r.claim_path for r in self.ledger.active()}
        for inbox in self.settings.inboxes:
            folder = intake.processing_dir(inbox.path, self._host)
            if not folder.is_dir():
                continue
            for path in scan(InboxSettings(path=folder, outbox=inbox.outbox)):
                if str(path) in known:
                    continue
                # claimed by a previous run whose ledger row is gone (new ledger, or crash before commit)
                rel = path.relative_to(folder).as_posix()
                file_id = self.ledger.discover(str(inbox.path), rel)
                self.ledger.transition(
                    file_id,
                    State.CLAIMED,
                    sha256=intake.sha256_of(path),
                    size=path.stat().st_size,
                    claim_path=str(path),
                    detail="adopted from processing/",
                )
        for row in self.ledger.active():
            log.info("resumed", file=row.rel_path, state=row.state.value)

    # -- worker ------------------------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            self.heartbeats["worker"] = self._clock()
            row = self._next_row()
            if row is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self.process(row)
            except Exception:
                log.exception("worker_error", file=row.rel_path)
                self._retry_at[row.id] = self._clock() + TRANSIENT_RETRY_SECONDS

    def _next_row(self) -> FileRow | None:
        now = self._clock()
        for row in self.ledger.active():
            if self._retry_at.get(row.id, 0.0) <= now:
                return row
        return None

    def process(self, row: FileRow) -> None:
        """Take one claimed file to ``done`` or ``failed`` (or leave it claimed on a transient error)."""
        inbox = self._inboxes.get(row.inbox)
        bound = log.bind(file=row.rel_path, sha=(row.sha256 or "")[:12], route="local")
        if inbox is None:
            bound.warning("inbox_not_configured", inbox=row.inbox)
            self._retry_at[row.id] = self._clock() + TRANSIENT_RETRY_SECONDS
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
            self._finish(row, inbox, claimed, doc, bound)
        except TransientError as e:
            bound.warning("transient_error", error=str(e), retry_in=TRANSIENT_RETRY_SECONDS)
            self._write_status(inbox, row.rel_path, "waiting", progress=None, step=None, note=str(e))
            self._retry_at[row.id] = self._clock() + TRANSIENT_RETRY_SECONDS
        except DiaristError as e:  # permanent for this file (bad input, model failure on it)
            self._fail(row, inbox, claimed, e, bound)
        except Exception as e:  # an engine crash on odd input must not take the daemon down
            bound.exception("engine_crash")
            self._fail(
                row,
                inbox,
                claimed,
                PermanentFileError(
                    f"processing crashed: {type(e).__name__}: {e}",
                    hint="the file may be corrupt or unusual; re-export it as WAV and drop it again, or report a bug",
                ),
                bound,
            )

    def _result_for(self, row: FileRow, inbox: InboxSettings, claimed: Path, bound: Any) -> dict[str, Any]:
        assert row.sha256
        key = result_key(row.sha256, inbox, self.settings.models.pipeline)
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
        route = self._route(row, inbox)
        self.ledger.transition(row.id, State.RUNNING, route=route["decision"], route_reason=route["reason"])
        self._write_status(inbox, row.rel_path, "running", progress=0.0, step="decoding")
        bound.info("running", reason=route["reason"])
        last = [0.0]

        def progress(step: str, fraction: float) -> None:
            now = self._clock()
            self.heartbeats["worker"] = now
            if now - last[0] >= STATUS_MIN_INTERVAL:
                last[0] = now
                self._write_status(inbox, row.rel_path, "running", progress=fraction, step=step)

        doc = diarize_file(
            claimed,
            engine=self.engine,
            name=Path(row.rel_path).name,
            relative_path=row.rel_path,
            sha256=row.sha256,
            task=inbox.task,
            speakers=inbox.speakers.as_kwargs(),
            route=route,
            progress=progress,
        )
        if inbox.user:
            doc["user"] = inbox.user
        self.ledger.store_result(row.id, key, row.sha256, doc)
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

    def _route(self, row: FileRow, inbox: InboxSettings) -> dict[str, Any]:
        cloud = CloudState(
            enabled=False,
            has_token=bool(self.settings.hf_token),
            unavailable_reason="the cloud route is not enabled in this version",
        )
        decision = decide_route(
            FileFacts(size_bytes=row.size or 0, duration_seconds=0.0, task=inbox.task),
            cloud=cloud,
            caps=BudgetCaps(),
            totals=BudgetTotals(),
            inbox_route=inbox.route,
        )
        return {"decision": decision.route.value, "reason": decision.reason}

    def _finish(self, row: FileRow, inbox: InboxSettings, claimed: Path, doc: dict[str, Any], bound: Any) -> None:
        paths = OutputPaths.for_input(inbox.outbox, row.rel_path)
        write_result(paths, doc)
        # only now, with the result safely on disk, does the input leave the processing folder
        if inbox.on_success is OnSuccess.ARCHIVE:
            moved = str(intake.move_aside(claimed, inbox.path, "done", row.rel_path))
        elif inbox.on_success is OnSuccess.DELETE:
            claimed.unlink()
            moved = None
        else:
            # "keep": back where the user put it; the ledger remembers its size and mtime so it is not retaken
            target = intake.unique_path(inbox.path / row.rel_path)
            os.rename(claimed, target)
            moved = str(target)
            self.ledger.set_fields(row.id, kept_signature=_signature(target))
        self.ledger.transition(row.id, State.DONE, detail=json.dumps({"moved_to": moved, "rttm": str(paths.rttm)}))
        bound.info(
            "done",
            speakers=len(doc["speakers"]),
            seconds=doc["timings"].get("total_seconds"),
            reused=bool(doc.get("reused")),
        )

    def _fail(self, row: FileRow, inbox: InboxSettings, claimed: Path, error: DiaristError, bound: Any) -> None:
        moved = intake.move_aside(claimed, inbox.path, "failed", row.rel_path)
        doc = error_document(
            file=row.rel_path,
            kind=error.kind,
            message=error.message,
            hint=error.hint,
            moved_to=str(moved),
            at=_iso(self._wall()),
            sha256=row.sha256,
        )
        paths = OutputPaths.for_input(inbox.outbox, row.rel_path)
        atomic_write(paths.error, dumps(doc))
        atomic_write(moved.with_name(moved.name + ".error.json"), dumps(doc))
        remove_quietly(paths.status)
        self.ledger.transition(row.id, State.FAILED, error=str(error))
        bound.warning("failed", error=str(error), moved_to=str(moved))

    def _write_status(
        self,
        inbox: InboxSettings,
        rel: str,
        state: str,
        *,
        progress: float | None,
        step: str | None,
        note: str | None = None,
    ) -> None:
        doc = status_document(
            file=rel,
            state=state,
            engine=LOCAL_BACKEND,
            progress=progress,
            step=step,
            updated_at=_iso(self._wall()),
            host=self._host,
            note=note,
        )
        try:
            atomic_write(OutputPaths.for_input(inbox.outbox, rel).status, dumps(doc))
        except OSError as e:  # a status sidecar is a courtesy; never fail a file over it
            log.warning("status_write_failed", file=rel, error=str(e))
