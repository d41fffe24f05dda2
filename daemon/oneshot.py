"""``diarist process`` and ``diarist submit`` without a running daemon: the given files go through the same
rooms as a watched file (``Router``, ``LocalRunner``, ``CloudRoute`` with its job lifecycle), recorded in a
ledger under a key of their own, and the results are written beside each input (or into ``--out``) instead
of an outbox. Nothing waits: a file the daemon would defer or retry later fails here with the reason."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diarist.daemon.cloud import CloudRoute
from diarist.daemon.config import IdentifySettings, InboxSettings, Settings
from diarist.daemon.ledger import ONESHOT_PREFIX, FileRow, Ledger, State
from diarist.daemon.outcomes import named
from diarist.daemon.router import Router
from diarist.daemon.worker import LocalRunner, build_engine
from diarist.handlers.asr import Transcribers
from diarist.handlers.engine import LOCAL_BACKEND, LocalEngine
from diarist.handlers.errors import DiaristError, ModelError
from diarist.handlers.intake import sha256_of
from diarist.handlers.results import OutputPaths, foreign_outputs, write_result
from diarist.policies.route import RouteSetting
from diarist.policies.sidecar import FileRequest

POLL_SECONDS = 2.0
#: Hub trouble this long ends the wait for files not yet in a job (a daemon would wait on)
STALL_SECONDS = 120.0
EXIT_OK, EXIT_FAILED = 0, 1


def result_paths(out: Path | None, path: Path) -> OutputPaths:
    """Where a run writes the results of ``path``: in ``out``, else beside the input."""
    return OutputPaths.for_input((out or path.parent).resolve(), path.name)


class PrintedOutcomes:
    """``FileOutcomes`` for a run in a terminal: results beside the input (or in ``out``), errors on stderr.
    The input is never moved."""

    def __init__(
        self,
        ledger: Ledger,
        out: Path | None,
        *,
        progress: bool,
        voices: Ledger | None = None,
        identify: IdentifySettings | None = None,
    ):
        self.ledger = ledger
        #: the ledger that holds the enrolled voices (``process`` runs on a throwaway one)
        self._voices = voices
        self._identify = identify or IdentifySettings()
        self._out = out
        self._progress = progress and sys.stderr.isatty()
        self._bar_open = False

    def _path(self, row: FileRow) -> Path:
        return Path(row.claim_path or row.rel_path)

    def say(self, text: str) -> None:
        if self._bar_open:
            sys.stderr.write("\n")
            self._bar_open = False
        print(text, file=sys.stderr, flush=True)

    def deliveries(self, event: str, row: FileRow, inbox: Any = None, **details: Any) -> list[Any]:
        return []  # a run in a terminal answers there; hooks are the daemon's

    def finish(self, row: FileRow, doc: dict[str, Any]) -> None:
        path = self._path(row)
        paths = result_paths(self._out, path)
        if self._voices is not None:
            doc = named(doc, self._voices, self._identify)
        write_result(paths, doc, row.request().formats or ())
        self.ledger.transition(row.id, State.DONE, detail=json.dumps({"rttm": str(paths.rttm)}))
        if self._bar_open:
            sys.stderr.write("\n")
            self._bar_open = False
        print(
            f"{path} -> {paths.rttm} ({len(doc['speakers'])} speakers, {doc['source']['duration']:.1f} s audio "
            f"in {doc['timings']['total_seconds']:.1f} s, {doc['engine']['backend']})",
            flush=True,
        )

    def fail(self, row: FileRow, error: DiaristError, details: dict[str, Any] | None = None) -> None:
        self.ledger.transition(row.id, State.FAILED, error=str(error))
        self.say(f"diarist: {self._path(row)}: {error}")

    def fall_back(self, row: FileRow, reason: str, info: dict[str, Any]) -> None:
        self.ledger.transition(
            row.id, State.CLAIMED, route="local", route_reason=reason, fallback=json.dumps(info), detail=reason
        )
        self.say(f"diarist: {self._path(row)}: {reason}")

    def release(self, row: FileRow, reason: str) -> None:
        self.ledger.transition(row.id, State.RELEASED, detail=reason)
        self.say(f"diarist: {self._path(row)}: {reason}")

    def status(
        self,
        row: FileRow,
        state: str,
        *,
        progress: float | None = None,
        step: str | None = None,
        note: str | None = None,
        engine: str = LOCAL_BACKEND,
    ) -> None:
        if state in ("deferred", "waiting"):  # a daemon waits; a run in a terminal says why and stops
            self.ledger.transition(row.id, State.FAILED, error=note)
            self.say(f"diarist: {self._path(row)}: {note}")
        elif engine != LOCAL_BACKEND:  # the cloud route's steps: queued, submitted (with the job's URL), stages
            self.say(f"  {self._path(row).name}: {state}" + (f" ({note})" if note else ""))
        elif state == "running" and progress is not None and self._progress:
            width, name = 30, self._path(row).name
            filled = int(width * progress)
            bar = f"{'#' * filled}{'.' * (width - filled)}"
            sys.stderr.write(f"\r{name[:30]:30} [{bar}] {progress:5.0%} {step or '':12}")
            sys.stderr.flush()
            self._bar_open = True


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What the command line asked of every file: the sidecar a watched file could carry."""

    request: FileRequest
    #: the route reason when the command forces local processing (``process``, ``submit --local``)
    local_reason: str | None = None


def voices_ledger(settings: Settings, ledger: Ledger) -> Ledger | None:
    """The ledger that holds the enrolled voices, for naming speakers: this run's own, or the configured one
    when it exists and can be read (``process`` runs on a throwaway ledger; a daemon's ledger this account
    may not open costs the names, never the run)."""
    known = settings.daemon.ledger
    if ledger.path == known:
        return ledger
    if not known.exists():
        return None
    try:
        voices = Ledger(known)
        voices.db.execute("select 1 from voiceprints limit 1")
        return voices
    except (OSError, sqlite3.Error, DiaristError) as e:
        print(f"diarist: known voices not read from {known} ({e}); speakers keep their generic labels", file=sys.stderr)
        return None


def run_files(
    settings: Settings,
    files: list[Path],
    asked: RunRequest,
    *,
    ledger: Ledger,
    out: Path | None,
    engine: Callable[[], LocalEngine] | None = None,
    progress: bool = False,
    wall: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Process ``files`` now (local, or in cloud jobs when routed there) and return the exit code."""
    key = f"{ONESHOT_PREFIX}{uuid.uuid4().hex[:12]})"
    inbox = InboxSettings(
        path=Path(key),
        outbox=out or Path.cwd(),
        route=asked.request.route or RouteSetting.AUTO,
        language=settings.transcription.language,
    )
    inboxes = {key: inbox}

    def mine(inbox_key: str) -> bool:
        return inbox_key == key

    outcomes = PrintedOutcomes(
        ledger, out, progress=progress, voices=voices_ledger(settings, ledger), identify=settings.identify
    )
    loaded: list[LocalEngine] = []

    def local_engine() -> LocalEngine:
        if not loaded:
            e = engine() if engine else build_engine(settings)
            e.load()  # a model that cannot load ends the run (exit 2), not each file
            loaded.append(e)
        return loaded[0]

    cloud = CloudRoute(
        dataclasses.replace(settings.cloud, batch_window=0.0),  # nothing else will join the batch: go now
        settings.models.for_cloud(),
        ledger=ledger,
        host=settings.daemon.host_id,
        token=settings.hf_token,
        outcomes=outcomes,
        inboxes=inboxes,
        model_ids=settings.model_ids(),
        scope=mine,
        wall=wall,
        telemetry=settings.daemon.telemetry,
        users=settings.users,
        transcription=settings.transcription,
    )
    runner = LocalRunner(
        engine=local_engine,
        ledger=ledger,
        outcomes=outcomes,
        inboxes=inboxes,
        model_ids=settings.model_ids(),
        retry_interval=0.0,
        scope=mine,
        fatal=(ModelError,),
        transcribers=Transcribers(settings.transcription, token=settings.hf_token),
    )
    router = Router(
        settings,
        ledger=ledger,
        cloud=cloud,
        outcomes=outcomes,
        inboxes=inboxes,
        local_gpu=lambda: loaded[0].has_gpu if loaded else _gpu_here(settings.models.device),
        wall=wall,
    )
    refused = [p for p in files if not p.is_file()]
    for path in refused:
        print(f"diarist: {path}: no such file", file=sys.stderr)
    for path in [p for p in files if p not in refused]:
        foreign = foreign_outputs(result_paths(out, path), asked.request.formats or ())
        if foreign:
            refused.append(path)
            print(
                f"diarist: {path}: not processed: {', '.join(str(f) for f in foreign)} already "
                "exist and diarist did not write them (no diarist result beside them); pass --out DIR to "
                "write the results elsewhere, or move those files away",
                file=sys.stderr,
            )
    started = wall()
    ledger.heartbeat(key, os.getpid(), started)  # a daemon (or another run) reaps the jobs of runs gone silent
    rows = [_record(ledger, key, path, asked) for path in files if path not in refused]
    watch = _CloudWatch(cloud, outcomes, wall)
    try:
        with _sigterm_as_interrupt():
            router.route_pending([r for r in rows if r.route is None])
            for row in rows:
                now = ledger.get(row.id)
                if asked.local_reason is None and now.route == "local":
                    outcomes.say(f"  {Path(now.rel_path).name}: {now.route_reason}")
            while True:
                ledger.heartbeat(key, os.getpid(), started)
                while (row := runner.next_row()) is not None:
                    runner.process(row)
                if not cloud.queued() and not cloud.open_jobs() and not _submitted(ledger, key):
                    break
                cloud.tick()
                watch.after_tick()
                if runner.next_row() is None:
                    sleep(POLL_SECONDS)
    except BaseException as e:  # Ctrl-C, or a model that cannot load: no job may run on unwatched
        why = "interrupted by the user" if isinstance(e, KeyboardInterrupt) else f"the run failed: {e}"
        _abandon(cloud, why)
        raise
    finally:
        for row in ledger.unfinished():
            if row.inbox == key:
                ledger.transition(row.id, State.FAILED, error="the run ended before this file was finished")
    done = all(ledger.get(r.id).state is State.DONE for r in rows)
    return EXIT_OK if done and not refused else EXIT_FAILED


def _submitted(ledger: Ledger, key: str) -> bool:
    return any(r.inbox == key for r in ledger.in_state(State.SUBMITTED))


class _CloudWatch:
    """What a daemon would sit out, a run in a terminal does not: files no job slot will take now, and Hub
    trouble that outlasts ``STALL_SECONDS`` (or a job's deadline) end in a fallback or a failure with the
    reason. Hub trouble is shown as it changes."""

    def __init__(self, cloud: CloudRoute, outcomes: PrintedOutcomes, wall: Callable[[], float]):
        self.cloud = cloud
        self.out = outcomes
        self._wall = wall
        self._shown: str | None = None
        self._troubled_since: float | None = None

    def after_tick(self) -> None:
        trouble = self.cloud.trouble
        if trouble != self._shown and trouble:
            self.out.say(f"diarist: the Hub: {trouble} (retrying)")
        self._shown = trouble
        now = self._wall()
        self._troubled_since = (self._troubled_since or now) if trouble else None
        queued = self.cloud.queued()
        if queued and not trouble and not self.cloud.open_jobs():
            slots = self.cloud.settings.max_concurrent
            reason = f"every cloud job slot is taken by other jobs (max_concurrent = {slots})"
            for row in queued:
                self.cloud.jobs.end.give_up_file(row, None, reason, None, [])
        if self._troubled_since is None or now - self._troubled_since < STALL_SECONDS:
            return
        for row in queued:
            self.cloud.jobs.end.give_up_file(row, None, f"the Hub did not answer: {trouble}", None, [])
        for job in self.cloud.open_jobs():
            if job.deadline_at is not None and now > job.deadline_at:
                self.cloud.jobs.end.abandon(job, f"past its deadline while the Hub did not answer: {trouble}")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """``kill`` or a closed terminal ends the run like Ctrl-C: its cloud jobs are cancelled and settled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _gpu_here(device: str) -> bool:
    """Whether the local engine would run on a GPU, without loading it (routing asks before any file runs)."""
    if device == "cpu":
        return False
    import torch

    return bool(torch.cuda.is_available())


def _record(ledger: Ledger, key: str, path: Path, asked: RunRequest) -> FileRow:
    """The file as a claimed ledger row (claimed where it lies: a run never moves its inputs)."""
    file_id = ledger.discover(key, path.name)
    params = asked.request.to_json()
    ledger.transition(
        file_id,
        State.CLAIMED,
        sha256=sha256_of(path),
        size=path.stat().st_size,
        claim_path=str(path.resolve()),
        params=json.dumps(params) if params else None,
    )
    if asked.local_reason:
        ledger.set_fields(file_id, route="local", route_reason=asked.local_reason)
    return ledger.get(file_id)


def _abandon(cloud: CloudRoute, reason: str) -> None:
    """The run ends with cloud jobs open: cancel them on the Hub and settle them (no reservation, job slot or
    staged audio may outlive the run)."""
    for job in cloud.open_jobs():
        try:
            cloud.jobs.end.abandon(job, reason)
        except DiaristError as e:
            hint = f"diarist cancel {job.job_id}" if job.job_id else "a daemon on this ledger settles it"
            print(f"diarist: could not cancel cloud job {job.job_id or job.batch_id}: {e} ({hint})", file=sys.stderr)
