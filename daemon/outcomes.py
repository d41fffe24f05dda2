"""How a file's stay ends, as seen on the share: results written and the input moved on, a failure explained,
an unfinished file given back, and the status sidecar that says what is going on meanwhile.

Shared by the local worker, the cloud callbacks and the lease loop, so every route ends the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from diarist.daemon.config import InboxSettings, OnSuccess
from diarist.daemon.leases import Reclaimed
from diarist.daemon.ledger import FileRow, Ledger, State
from diarist.handlers import intake
from diarist.handlers.crashpoints import crash_point
from diarist.handlers.engine import LOCAL_BACKEND
from diarist.handlers.errors import DiaristError
from diarist.handlers.outbox import reserve_stem
from diarist.handlers.results import (
    OutputPaths,
    atomic_write,
    dumps,
    error_document,
    remove_quietly,
    status_document,
    write_result,
)
from diarist.policies.names import output_stem, printable
from diarist.policies.sidecar import SIDECAR_SUFFIX

log = structlog.get_logger("diarist")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


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


class Outcomes:
    """Writes what people on the share see; ``wall`` stamps the documents (injected for tests)."""

    def __init__(self, ledger: Ledger, host: str, wall: Callable[[], float]):
        self.ledger = ledger
        self._host = host
        self._wall = wall

    def finish(self, row: FileRow, inbox: InboxSettings, claimed: Path, doc: dict[str, Any], bound: Any) -> None:
        paths = OutputPaths.for_stem(inbox.outbox, stem_of(row))
        write_result(paths, doc)
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
            # "keep": back where the user put it; the ledger remembers its size and mtime so it is not retaken
            target = intake.move_no_clobber(claimed, inbox.path / row.rel_path)
            follow(claimed, target)
            moved = str(target)
            self.ledger.set_fields(row.id, kept_signature=signature(target))
        crash_point("archived")
        self.ledger.transition(row.id, State.DONE, detail=json.dumps({"moved_to": moved, "rttm": str(paths.rttm)}))
        bound.info(
            "done",
            speakers=len(doc["speakers"]),
            seconds=doc["timings"].get("total_seconds"),
            reused=bool(doc.get("reused")),
        )

    def fail(
        self,
        row: FileRow,
        inbox: InboxSettings,
        claimed: Path,
        error: DiaristError,
        bound: Any,
        details: dict[str, Any] | None = None,
    ) -> None:
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
            bound.warning("error_document_not_written", path=str(paths.error), error=str(e))
        self.ledger.transition(row.id, State.FAILED, error=str(error))
        bound.warning("failed", error=str(error), moved_to=str(moved))

    def refuse(self, inbox: InboxSettings, claimed: Path, rel: str, error: DiaristError, bound: Any) -> None:
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
        self.ledger.transition(file_id, State.FAILED, error=str(error))
        bound.warning("refused", error=str(error), moved_to=printable(str(moved)))

    def release(self, row: FileRow, inbox: InboxSettings, claimed: Path, reason: str, bound: Any) -> None:
        """Give an unfinished file back: into the inbox (with its sidecar), where the next start takes it."""
        back = intake.move_no_clobber(claimed, inbox.path / row.rel_path)
        follow(claimed, back, intake.move_no_clobber)
        self.ledger.transition(row.id, State.RELEASED, detail=json.dumps({"moved_to": str(back), "reason": reason}))
        self.status(inbox, row, "waiting", progress=None, step=None, note=f"{reason}; it is back in the inbox")
        bound.warning("released", reason=reason, moved_to=str(back))

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
        inbox: InboxSettings,
        row: FileRow,
        state: str,
        *,
        progress: float | None,
        step: str | None,
        note: str | None = None,
        engine: str = LOCAL_BACKEND,
    ) -> None:
        path = OutputPaths.for_stem(inbox.outbox, stem_of(row)).status
        self._write_status(path, row.rel_path, state, progress=progress, step=step, note=note, engine=engine)

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
