"""How a file's stay ends, as seen on the share: results written and the input moved on, a failure explained,
an unfinished file given back, and the status sidecar that says what is going on meanwhile.

Shared by the local worker, the cloud route, the intake and the lease loop, so every route ends the same way.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from diarist.daemon.config import IdentifySettings, InboxSettings, OnSuccess
from diarist.daemon.hooks import HookPlanner
from diarist.daemon.leases import Reclaimed
from diarist.daemon.ledger import FileRow, Ledger, State
from diarist.daemon.ledger_hooks import PlannedDelivery
from diarist.daemon.voices import VoiceBook
from diarist.handlers import intake
from diarist.handlers.crashpoints import crash_point
from diarist.handlers.engine import LOCAL_BACKEND
from diarist.handlers.errors import DiaristError, TransientError
from diarist.handlers.identity import centroid_model, identify
from diarist.handlers.outbox import reserve_stem
from diarist.handlers.results import (
    OutputPaths,
    atomic_write,
    dumps,
    error_document,
    iso,
    remove_quietly,
    status_document,
    write_result,
)
from diarist.policies.names import output_stem, printable
from diarist.policies.request import question
from diarist.policies.sidecar import SIDECAR_SUFFIX

log = structlog.get_logger("diarist")


def signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def companion(audio_path: Path) -> Path:
    """Where a claimed file's sidecar travels: beside it, named after it."""
    return audio_path.with_name(audio_path.name + SIDECAR_SUFFIX)


def follow(audio_from: Path, audio_to: Path, move: Callable[[Path, Path], object] = intake.claim) -> None:
    """Move the sidecar of ``audio_from``, if it has one, next to ``audio_to``. A name too long to have a
    sidecar at all (``lexists`` is False on any error) is not an error."""
    sidecar = companion(audio_from)
    if os.path.lexists(sidecar):
        move(sidecar, companion(audio_to))


def stem_of(row: FileRow) -> str:
    """Where this file's outputs go in its outbox (chosen at claim time; rows from older ledgers: its name)."""
    return row.out_name or output_stem(row.rel_path)


def named(doc: dict[str, Any], ledger: Ledger, settings: IdentifySettings) -> dict[str, Any]:
    """``doc`` with names on its known voices, from the voiceprints enrolled now. Done as the result is
    written, never stored: the ledger keeps the name-free inference result, so a reused or re-delivered result
    is named with the voiceprints of the day (enrolling a voice never makes inference run again)."""
    model = centroid_model(doc)
    prints = VoiceBook(ledger).vectors(model) if model else {}
    if not prints:
        return doc
    return identify(doc, prints, threshold=settings.threshold, labels=settings.labels)


class FileOutcomes(Protocol):
    """How a file's stay ends: what the local worker and the cloud route report to. The daemon's
    ``Outcomes`` writes to the share; ``diarist submit`` without a daemon writes beside the inputs."""

    def deliveries(
        self, event: str, row: FileRow, inbox: InboxSettings | None = None, **details: Any
    ) -> list[PlannedDelivery]: ...

    def finish(self, row: FileRow, doc: dict[str, Any]) -> None: ...

    def fail(self, row: FileRow, error: DiaristError, details: dict[str, Any] | None = None) -> None: ...

    def fall_back(self, row: FileRow, reason: str, info: dict[str, Any]) -> None: ...

    def release(self, row: FileRow, reason: str) -> None: ...

    def status(
        self,
        row: FileRow,
        state: str,
        *,
        progress: float | None = None,
        step: str | None = None,
        note: str | None = None,
        engine: str = LOCAL_BACKEND,
    ) -> None: ...


class Outcomes:
    """Writes what people on the share see; ``wall`` stamps the documents (injected for tests). Log lines
    carry the file's context bound by the caller (``structlog.contextvars``)."""

    def __init__(
        self,
        ledger: Ledger,
        host: str,
        wall: Callable[[], float],
        inboxes: Mapping[str, InboxSettings],
        wake: threading.Event | None = None,
        identify: IdentifySettings | None = None,
        hooks: HookPlanner | None = None,
        hooks_wake: threading.Event | None = None,
    ):
        self.ledger = ledger
        self._identify = identify or IdentifySettings()
        self._host = host
        self._wall = wall
        self._inboxes = inboxes
        #: set when a file is handed (back) to the local worker
        self._wake = wake or threading.Event()
        self._hooks = hooks
        #: set when hook deliveries were added
        self._hooks_wake = hooks_wake or threading.Event()

    def deliveries(
        self, event: str, row: FileRow, inbox: InboxSettings | None = None, **details: Any
    ) -> list[PlannedDelivery]:
        """The hook deliveries ``event`` owes, to be recorded with the event itself (``ledger.transition``)."""
        inbox = inbox or self._inboxes.get(row.inbox)
        if self._hooks is None or inbox is None:
            return []
        user = question(row.request(), inbox.defaults()).user
        paths = OutputPaths.for_stem(inbox.outbox, stem_of(row))
        planned = self._hooks.plan(event, row, user=user, paths=paths, **details)
        if planned:
            self._hooks_wake.set()  # the hook worker looks now (or, before the commit, at its next poll)
        return planned

    def inbox_of(self, row: FileRow) -> InboxSettings:
        inbox = self._inboxes.get(row.inbox)
        if inbox is None:  # keeps the file (and a cloud job's results on the Hub) until it is configured again
            raise TransientError(
                f"{row.rel_path} belongs to inbox {row.inbox}, which is no longer configured",
                hint="add the inbox back to the configuration to receive its results",
            )
        return inbox

    def finish(self, row: FileRow, doc: dict[str, Any]) -> None:
        inbox = self.inbox_of(row)
        claimed = Path(row.claim_path or "")
        paths = OutputPaths.for_stem(inbox.outbox, stem_of(row))
        if inbox.identify:
            doc = named(doc, self.ledger, self._identify)
        write_result(paths, doc, question(row.request(), inbox.defaults()).formats)
        crash_point("result_written")
        # only now, with the result safely on disk, does the input leave the processing folder
        if not claimed.is_file():  # moved on by a run that crashed before it could record so
            moved = None
        elif inbox.on_success is OnSuccess.ARCHIVE:
            moved = str(intake.move_aside(claimed, inbox.path, "done", row.rel_path))
            follow(claimed, Path(moved))
        elif inbox.on_success is OnSuccess.DELETE:
            claimed.unlink()
            if os.path.lexists(companion(claimed)):
                remove_quietly(companion(claimed))
            moved = None
        else:
            # "keep": back where the user put it. The ledger learns its size and mtime (a move keeps both) before
            # the move, so the intake, which may see it reappear at once, never takes it for a new file
            self.ledger.set_fields(row.id, kept_signature=signature(claimed))
            target = intake.move_no_clobber(claimed, inbox.path / row.rel_path)
            follow(claimed, target)
            moved = str(target)
        crash_point("archived")
        self.ledger.transition(
            row.id,
            State.DONE,
            detail=json.dumps({"moved_to": moved, "rttm": str(paths.rttm)}),
            deliveries=self.deliveries("done", row, inbox, doc=doc),
        )
        log.info(
            "done",
            speakers=len(doc["speakers"]),
            seconds=doc["timings"].get("total_seconds"),
            reused=bool(doc.get("reused")),
        )

    def fail(self, row: FileRow, error: DiaristError, details: dict[str, Any] | None = None) -> None:
        inbox = self.inbox_of(row)
        claimed = Path(row.claim_path or "")
        moved = intake.move_aside(claimed, inbox.path, "failed", row.rel_path) if claimed.is_file() else None
        if moved:
            follow(claimed, moved)
        doc = error_document(
            file=row.rel_path,
            kind=error.kind,
            message=error.message,
            hint=error.hint,
            moved_to=str(moved) if moved else None,
            at=iso(self._wall()),
            sha256=row.sha256,
            details=details,
        )
        paths = OutputPaths.for_stem(inbox.outbox, stem_of(row))
        if moved:
            atomic_write(intake.beside(moved, ".error.json"), dumps(doc))
        try:
            atomic_write(paths.error, dumps(doc))
            remove_quietly(paths.status)
        except OSError as e:  # outbox not writable or full: the explanation beside the failed file must do
            log.warning("error_document_not_written", path=str(paths.error), error=str(e))
        problem = {"kind": error.kind, "message": error.message, "hint": error.hint}
        self.ledger.transition(
            row.id, State.FAILED, error=str(error), deliveries=self.deliveries("failed", row, inbox, error=problem)
        )
        log.warning("failed", error=str(error), moved_to=str(moved))

    def fall_back(self, row: FileRow, reason: str, info: dict[str, Any]) -> None:
        """A cloud-bound file goes to the local worker after all (the reason says why)."""
        self.ledger.transition(
            row.id, State.CLAIMED, route="local", route_reason=reason, fallback=json.dumps(info), detail=reason
        )
        self.status(row, "queued", note=reason)
        log.warning("fallback", file=row.rel_path, reason=reason)
        self._wake.set()

    def refuse(self, inbox: InboxSettings, claimed: Path, rel: str, error: DiaristError) -> None:
        """An entry diarist will not read (a symlink, a name that is not text), claimed by this host: into
        failed/ as it is, explained beside it and in the outbox, and a failed ledger row under its printable
        name so that ``diarist status`` lists it too."""
        shown = printable(rel)
        moved = intake.move_aside(claimed, inbox.path, "failed", rel)
        doc = error_document(
            file=shown,
            kind=error.kind,
            message=error.message,
            hint=error.hint,
            moved_to=printable(str(moved)),
            at=iso(self._wall()),
        )
        atomic_write(OutputPaths.for_stem(inbox.outbox, reserve_stem(inbox.outbox, shown)).error, dumps(doc))
        atomic_write(intake.beside(moved, ".error.json"), dumps(doc))
        file_id = self.ledger.discover(str(inbox.path), shown)
        problem = {"kind": error.kind, "message": error.message, "hint": error.hint}
        planned = self.deliveries("failed", self.ledger.get(file_id), inbox, error=problem)
        self.ledger.transition(file_id, State.FAILED, error=str(error), deliveries=planned)
        log.warning("refused", error=str(error), moved_to=printable(str(moved)))

    def release(self, row: FileRow, reason: str) -> None:
        """Give an unfinished file back: into the inbox (with its sidecar), where the next start takes it."""
        inbox = self.inbox_of(row)
        claimed = Path(row.claim_path or "")
        back = intake.move_no_clobber(claimed, inbox.path / row.rel_path)
        follow(claimed, back, intake.move_no_clobber)
        self.ledger.transition(row.id, State.RELEASED, detail=json.dumps({"moved_to": str(back), "reason": reason}))
        self.status(row, "waiting", note=f"{reason}; it is back in the inbox")
        log.warning("released", reason=reason, moved_to=str(back))

    def note_reclaimed(self, taken: Reclaimed) -> None:
        """The dead host's status sidecar said "running there": say what happens now instead."""
        rel = taken.path.relative_to(taken.inbox.path).as_posix()
        self._write_status(
            OutputPaths.for_stem(taken.inbox.outbox, reserve_stem(taken.inbox.outbox, rel)).status,
            rel,
            "waiting",
            progress=None,
            step=None,
            note=f"host {taken.host} stopped renewing its lease; the file is back in the inbox to be taken again",
            engine=LOCAL_BACKEND,
        )

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
        inbox = self._inboxes.get(row.inbox)
        if inbox is None:
            return
        path = OutputPaths.for_stem(inbox.outbox, stem_of(row)).status
        self._write_status(path, row.rel_path, state, progress=progress, step=step, note=note, engine=engine)
        if state in ("waiting", "deferred"):  # not state changes of their own: told once per file
            self.ledger.add_deliveries_once(row.id, state, self.deliveries(state, row, inbox, note=note))

    def _write_status(
        self,
        path: Path,
        rel: str,
        state: str,
        *,
        progress: float | None,
        step: str | None,
        note: str | None,
        engine: str,
    ) -> None:
        doc = status_document(
            file=rel,
            state=state,
            engine=engine,
            progress=progress,
            step=step,
            updated_at=iso(self._wall()),
            host=self._host,
            note=note,
        )
        try:
            atomic_write(path, dumps(doc))
        except OSError as e:  # a status sidecar is a courtesy; never fail a file over it
            log.warning("status_write_failed", file=rel, error=str(e))
