"""The local route: take one claimed file to a result with this machine's engine (or a stored result), and
hand it to the ``FileOutcomes``. The daemon's worker thread, ``diarist process`` and ``diarist submit``
without a daemon all run files through ``LocalRunner.process``."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from diarist.daemon.config import InboxSettings, Settings
from diarist.daemon.ledger import FileRow, Ledger, State
from diarist.daemon.outcomes import FileOutcomes
from diarist.handlers.asr import Transcribers
from diarist.handlers.crashpoints import crash_point, hold_point
from diarist.handlers.engine import LocalEngine
from diarist.handlers.engine_settings import TranscriptionSettings
from diarist.handlers.errors import DiaristError, PermanentFileError, TransientError
from diarist.handlers.local import diarize_file
from diarist.policies.health import should_release
from diarist.policies.request import ModelIds, Question, question

log = structlog.get_logger("diarist")

STATUS_MIN_INTERVAL = 1.0


def storage_fault(e: OSError | sqlite3.Error, outbox: Path) -> TransientError:
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
        hint=f"make {outbox} and the inbox's .diarist folder writable for the account diarist runs as "
        f"(uid {os.geteuid()}) and check that their disk has space; the file waits and is finished automatically",
    )


def build_engine(settings: Settings) -> LocalEngine:
    """The one place a ``LocalEngine`` is built from the configuration (the daemon, ``process``, ``submit``)."""
    return LocalEngine.from_settings(
        settings.models.engine(), token=settings.hf_token, telemetry=settings.daemon.telemetry
    )


class Released(Exception):
    """Raised from the progress hook to abandon inference when stopping (not an error of the file)."""


class LocalRunner:
    """Runs claimed files on the local engine. ``deadline`` (from the daemon's stop) releases a file that
    would not finish in time; ``beat`` is called between inference steps (the watchdog's heartbeat)."""

    def __init__(
        self,
        *,
        engine: Callable[[], LocalEngine],
        ledger: Ledger,
        outcomes: FileOutcomes,
        inboxes: Mapping[str, InboxSettings],
        model_ids: ModelIds,
        retry_interval: float,
        clock: Callable[[], float] = time.monotonic,
        beat: Callable[[], None] = lambda: None,
        progress_every: float = STATUS_MIN_INTERVAL,
        scope: Callable[[str], bool] = lambda inbox: True,
        fatal: tuple[type[Exception], ...] = (),
        transcribers: Transcribers | None = None,
    ):
        self._engine = engine
        #: speech recognition for task transcribe (None: the bundled recogniser, loaded on first use)
        self.transcribers = transcribers or Transcribers(TranscriptionSettings())
        self.ledger = ledger
        self.out = outcomes
        self._inboxes = inboxes
        self.model_ids = model_ids
        self._retry_interval = retry_interval
        self._clock = clock
        self._beat = beat
        self._progress_every = progress_every
        self._scope = scope
        #: errors that end the whole run instead of failing the file (``diarist process``: a model error)
        self._fatal = fatal
        self._retry_at: dict[int, float] = {}
        #: set by the daemon's stop(): the file in hand must be finished by then, or it goes back
        self.deadline: float | None = None

    def next_row(self) -> FileRow | None:
        now = self._clock()
        for row in self.ledger.local_queue():
            if self._scope(row.inbox) and self._retry_at.get(row.id, 0.0) <= now:
                return row
        return None

    def retry_later(self, row: FileRow) -> None:
        self._retry_at[row.id] = self._clock() + self._retry_interval

    def process(self, row: FileRow) -> None:
        """Take one claimed file to ``done`` or ``failed`` (or leave it claimed on a transient error)."""
        with bound_contextvars(file=row.rel_path, sha=(row.sha256 or "")[:12], route="local"):
            self._process(row)

    def _process(self, row: FileRow) -> None:
        inbox = self._inboxes.get(row.inbox)
        if inbox is None:
            log.warning("inbox_not_configured", inbox=row.inbox)
            self.retry_later(row)
            return
        claimed = Path(row.claim_path or "")
        if not claimed.is_file():
            # the end a crash kept from being recorded: recorded now, with the hook deliveries it owes
            if row.result_key:
                done = self.out.deliveries("done", row, inbox, doc=self.ledger.result(row.result_key)[1])
                self.ledger.transition(
                    row.id, State.DONE, detail="outputs were written before a restart", deliveries=done
                )
            else:
                error = "the claimed input vanished from .diarist/processing"
                failed = self.out.deliveries("failed", row, inbox, error={"kind": "bad-input", "message": error})
                self.ledger.transition(row.id, State.FAILED, error=error, deliveries=failed)
            return
        try:
            doc = self._result_for(row, question(row.request(), inbox.defaults()), claimed)
            self.out.finish(row, doc)
        except self._fatal:
            raise
        except Released as e:
            self.out.release(row, str(e))
        except TransientError as e:
            self._wait(row, e)
        except (OSError, sqlite3.Error) as e:  # diarist's own writes, not the file: a fault that can clear
            self._wait(row, storage_fault(e, inbox.outbox))
        except DiaristError as e:  # permanent for this file (bad input, model failure on it)
            self.out.fail(row, e)
        except Exception as e:  # an engine crash on odd input must not take the daemon down
            log.exception("engine_crash")
            self.out.fail(
                row,
                PermanentFileError(
                    f"processing crashed: {type(e).__name__}: {e}",
                    hint="the file may be corrupt or unusual; re-export it as WAV and drop it again, or report a bug",
                ),
            )

    def _wait(self, row: FileRow, e: TransientError) -> None:
        log.warning("transient_error", error=str(e), retry_in=self._retry_interval)
        self.out.status(row, "waiting", note=str(e))
        self.retry_later(row)

    def _result_for(self, row: FileRow, asked: Question, claimed: Path) -> dict[str, Any]:
        assert row.sha256
        key = asked.result_key(row.sha256, self.model_ids)
        if row.result_key:  # inference finished before a crash: never run it twice
            stored = self.ledger.result(row.result_key)
            if stored:
                log.info("result_recovered")
                return self._adapt(stored, row)
        cached = self.ledger.result(key)
        if cached:
            self.ledger.set_fields(row.id, result_key=key, reused_from=cached[0])
            log.info("result_reused", original_file_id=cached[0])
            return self._adapt(cached, row)
        route: dict[str, Any] = {"decision": "local", "reason": row.route_reason or "local"}
        if row.fallback:
            route["fallback"] = json.loads(row.fallback)
        self.ledger.transition(row.id, State.RUNNING)
        self.out.status(row, "running", progress=0.0, step="decoding")
        log.info("running", reason=route["reason"])
        doc = diarize_file(
            claimed,
            engine=self._engine(),
            name=Path(row.rel_path).name,
            relative_path=row.rel_path,
            sha256=row.sha256,
            task=asked.task,
            speakers=asked.speakers,
            route=route,
            progress=self._progress_hook(row),
            transcribers=self.transcribers,
            language=asked.language,
        )
        if asked.user:
            doc["user"] = asked.user
        self.ledger.store_result(row.id, key, row.sha256, doc)
        crash_point("result_stored")
        return doc

    def _progress_hook(self, row: FileRow) -> Callable[[str, float], None]:
        started = self._clock()
        last = [0.0]

        def progress(step: str, fraction: float) -> None:
            if step == "embeddings":
                crash_point("inference")
                # test-only (DIARIST_HOLD_AT): wait here mid-inference until the flag goes or stop() begins
                hold_point("inference", until=lambda: self.deadline is not None)
            now = self._clock()
            self._beat()
            if self.deadline is not None and should_release(
                elapsed=now - started, fraction=fraction, time_left=self.deadline - now
            ):
                raise Released(f"diarist stopped before {row.rel_path} could finish")
            if now - last[0] >= self._progress_every:
                last[0] = now
                self.out.status(row, "running", progress=fraction, step=step)

        return progress

    def _adapt(self, stored: tuple[int, dict[str, Any]], row: FileRow) -> dict[str, Any]:
        """A stored result, relabelled for this file (and marked as reused when it came from another)."""
        original_id, doc = stored
        doc = json.loads(json.dumps(doc))
        if original_id != row.id:
            earlier = doc["source"]["relative_path"]
            doc["reused"] = {
                "from_file": earlier,
                "from_ledger_id": original_id,
                "reason": "identical content was already processed with the same settings",
            }
            # this file ran nowhere: the earlier run's route (a cloud job, an old fallback) is not this file's
            doc["route"] = {
                "decision": "reused",
                "reason": f"identical content was already processed as {earlier}; its result is reused, nothing ran",
                "original": doc["route"],
            }
            doc["source"]["name"] = Path(row.rel_path).name
            doc["source"]["relative_path"] = row.rel_path
        return doc
