"""The intake: watch events and rescans -> ``discovered`` -> unchanged for ``stability_seconds`` -> renamed
into ``.diarist/processing/<host>/`` (the claim) -> hashed -> ``claimed``; and, at start, recovery of what a
previous run left half-way. What diarist will not read (links, names that are not text, bad sidecars) is
turned away with an ``.error.json``."""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import structlog
from structlog.contextvars import bound_contextvars

from diarist.daemon.config import InboxSettings, OnSuccess
from diarist.daemon.ledger import Ledger, State
from diarist.daemon.outcomes import Outcomes, companion, signature
from diarist.daemon.watcher import scan
from diarist.handlers import intake
from diarist.handlers.crashpoints import crash_point
from diarist.handlers.errors import PermanentFileError
from diarist.handlers.outbox import reserve_stem
from diarist.handlers.results import OutputPaths
from diarist.policies.intake import ignore_reason
from diarist.policies.names import is_text, printable
from diarist.policies.sidecar import SIDECAR_SUFFIX, FileRequest, SidecarError, parse_sidecar_text, sidecar_names

log = structlog.get_logger("diarist")


def read_sidecar(path: Path) -> tuple[Path | None, FileRequest | None, PermanentFileError | None]:
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


#: where uploads sit among an inbox's files (their rel_path) and so their outputs in the outbox
UPLOADS_FOLDER = "uploads"


def fresh_name(outbox: Path, name: str, limit: int = 1000) -> str:
    """``name``, or ``name (2).ext`` ..., whose outputs are not in the outbox yet: each upload gets results of
    its own (a dropped file of the same name replaces its predecessor's; an upload is fetched by id, and
    must never answer with another's)."""
    stem, ext = os.path.splitext(name)
    for n in range(1, limit):
        candidate = name if n == 1 else f"{stem} ({n}){ext}"
        paths = OutputPaths.for_input(outbox, candidate)
        if not any(p.exists() for p in (paths.json, paths.rttm, paths.status, paths.error)):
            return candidate
    raise FileExistsError(f"more than {limit} results named like {name} in {outbox}")


@dataclass(frozen=True)
class Upload:
    """A recording received whole through the API, waiting in ``staged`` (this host's uploads folder)."""

    inbox: InboxSettings
    staged: Path
    #: its file name as the outputs will carry it (checked: one plain name, text, an audio extension)
    name: str
    request: FileRequest | None
    sha256: str
    size: int


class Intake:
    """Owns the events queue, the stability tracker and the ids of files not yet claimed."""

    def __init__(
        self,
        inboxes: Mapping[str, InboxSettings],
        *,
        ledger: Ledger,
        outcomes: Outcomes,
        host: str,
        rescan_interval: float,
        clock: Callable[[], float],
        beat: Callable[[], None] = lambda: None,
        claimed: Callable[[], None] = lambda: None,
        room: Callable[[], int] | None = None,
    ):
        self._inboxes = inboxes
        self.ledger = ledger
        self.out = outcomes
        self._host = host
        self._rescan = rescan_interval
        self._clock = clock
        self._beat = beat
        #: a file was claimed: the worker may have something to do
        self._claimed = claimed
        #: how many more files this host should claim now (None: no limit)
        self._room = room
        self.events: queue.SimpleQueue[tuple[InboxSettings, Path]] = queue.SimpleQueue()
        self._uploads: queue.SimpleQueue[tuple[Upload, Future[int]]] = queue.SimpleQueue()
        self.tracker = intake.StabilityTracker(clock=clock)
        self.file_ids: dict[Path, int] = {}
        self._next_scan = clock() + rescan_interval

    def on_path(self, inbox: InboxSettings, path: Path) -> None:
        self.events.put((inbox, path))

    def scan_all(self) -> None:
        for inbox in self._inboxes.values():
            for path in scan(inbox):
                self.events.put((inbox, path))

    def tick(self) -> None:
        """Uploads, new events, stability checks, claims, a rescan when due."""
        self._admit_uploads()
        if self._clock() >= self._next_scan:
            self.scan_all()
            self._next_scan = self._clock() + self._rescan
        self._drain_events()
        limit = None if self._room is None else max(self._room(), 0)
        for path in self.tracker.poll(self._stability_for, limit):
            file_id = self.file_ids.get(path)
            try:
                self._take(path)
            except Exception:  # one file's surprise must not stop the others (nor mark them vanished)
                log.exception("take_error", file=printable(str(path)))
                if file_id is not None and os.path.lexists(path):
                    self.file_ids[path] = file_id  # still in the inbox: try again after another stable wait
                    self.tracker.observe(path)
        self._forget_vanished()

    def forget_inbox(self, folder: Path) -> None:
        """An inbox removed by a reload: stop tracking its files (their rows stay discovered; the inbox,
        added again, finds them)."""
        for path in [p for p in self.file_ids if p.is_relative_to(folder)]:
            self.file_ids.pop(path)
            self.tracker.forget(path)

    def _inbox_of(self, path: Path) -> InboxSettings | None:
        for inbox in self._inboxes.values():
            if path.is_relative_to(inbox.path):
                return inbox
        return None

    def _stability_for(self, path: Path) -> float:
        inbox = self._inbox_of(path)
        return inbox.stability_seconds if inbox else 5.0

    def _drain_events(self) -> None:
        while True:
            try:
                queued, path = self.events.get_nowait()
            except queue.Empty:
                return
            inbox = self._inboxes.get(str(queued.path))  # as configured now (a reload may have changed it)
            if inbox is None:
                continue
            rel = path.relative_to(inbox.path).as_posix() if path.is_relative_to(inbox.path) else None
            if rel is None or ignore_reason(rel, inbox.ignore, inbox.ignore_folders) is not None:
                continue
            if path in self.tracker:
                self.tracker.observe(path)
                continue
            if path.is_symlink():
                self._refuse(inbox, path, rel, symlink_refused())
                continue
            if not path.is_file():
                continue
            if not is_text(rel):
                self._refuse(inbox, path, rel, name_refused(path.name))
                continue
            if inbox.on_success is OnSuccess.KEEP and self.ledger.is_kept(str(inbox.path), signature(path)):
                continue
            if path not in self.file_ids:
                self.file_ids[path] = self.ledger.discover(str(inbox.path), rel)
                log.info("discovered", file=rel, inbox=str(inbox.path))
            self.tracker.observe(path)

    def _refuse(self, inbox: InboxSettings, path: Path, rel: str, error: PermanentFileError) -> None:
        """Turn away what diarist will not take; it is claimed like any file (one host acts), then moved
        into failed/ untouched with the reason beside it and in the outbox."""
        target = intake.unique_path(intake.processing_dir(inbox.path, self._host) / rel)
        if not intake.claim(path, target):
            return
        with bound_contextvars(file=printable(rel)):
            self.out.refuse(inbox, target, rel, error)

    def _forget_vanished(self) -> None:
        """Files removed (or renamed away) before they were complete: close their ledger rows."""
        for path in [p for p in self.file_ids if p not in self.tracker]:
            file_id = self.file_ids.pop(path)
            self.ledger.transition(file_id, State.FAILED, error="removed from the inbox before it was complete")
            log.info("vanished", file=str(path))

    def _take(self, path: Path) -> None:
        """A stable file: record where it goes, rename it there (the claim), hash it, queue it.

        Claim before hashing: of several hosts watching one share only the winner of the rename reads the
        whole file.
        """
        inbox = self._inbox_of(path)
        file_id = self.file_ids.pop(path, None)
        if inbox is None or file_id is None:
            return
        rel = path.relative_to(inbox.path).as_posix()
        sidecar, request, problem = read_sidecar(path)
        target = intake.unique_path(intake.processing_dir(inbox.path, self._host) / rel)
        # record the destination first: a crash between this and the rename is resolved by recover()
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
        with bound_contextvars(file=rel):
            try:
                sha = self.hash(target)
            except PermissionError as e:
                self.ledger.transition(file_id, State.CLAIMED, size=target.stat().st_size, out_name=stem)
                self.out.fail(self.ledger.get(file_id), unreadable(e))
                return
            self.ledger.transition(file_id, State.CLAIMED, sha256=sha, size=target.stat().st_size, out_name=stem)
            log.info("claimed", sha=sha[:12], sidecar=sidecar.name if sidecar else None, outputs=stem)
            if problem is not None:
                with bound_contextvars(sha=sha[:12]):
                    self.out.fail(self.ledger.get(file_id), problem)
                return
        self._queued(file_id)

    def _queued(self, file_id: int) -> None:
        self.out.status(self.ledger.get(file_id), "queued", progress=0.0)
        self._claimed()

    # -- uploads (the HTTP API) ----------------------------------------------------------------------

    def admit(self, upload: Upload) -> Future[int]:
        """Hand a complete upload to the intake thread, which claims it like a dropped file (one thread
        reserves output names, so an upload and a dropped file never get the same stem). The future gives
        its ledger id."""
        done: Future[int] = Future()
        self._uploads.put((upload, done))
        return done

    def _admit_uploads(self) -> None:
        while True:
            try:
                upload, done = self._uploads.get_nowait()
            except queue.Empty:
                return
            # Admitted even when the API stopped waiting (it told the client the upload is kept): a staged
            # upload is never dropped. The future only carries the answer, if anyone still wants it.
            wanted = done.set_running_or_notify_cancel()
            try:
                file_id = self._admit(upload)
            except Exception as e:  # the API answers with it; the intake goes on
                log.exception("upload_not_admitted", file=upload.name)
                if wanted:
                    done.set_exception(e)
                continue
            if wanted:
                done.set_result(file_id)

    def _admit(self, upload: Upload) -> int:
        """Into this host's processing folder at once: an upload is complete when it arrives (no stability
        wait) and was never in the shared inbox (no other host can race for it)."""
        inbox = upload.inbox
        # under uploads/: a file dropped into the inbox under the same name is another input, with outputs of
        # its own (outputs are owned by their input's path)
        name = fresh_name(inbox.outbox, f"{UPLOADS_FOLDER}/{upload.name}")
        target = intake.unique_path(intake.processing_dir(inbox.path, self._host) / name)
        stem = reserve_stem(inbox.outbox, name)
        params = json.dumps(upload.request.to_json()) if upload.request else None
        # the row (with its options) first, as for a dropped file: a crash before the rename leaves a stable
        # row and a staged file that the next start removes; never a claimed file without its options
        file_id = self.ledger.admit(
            str(inbox.path),
            name,
            detail="uploaded through the API",
            claim_path=str(target),
            params=params,
            sha256=upload.sha256,
            size=upload.size,
            out_name=stem,
        )
        if not intake.claim(upload.staged, target):
            self.ledger.transition(file_id, State.FAILED, error="the staged upload vanished before it was claimed")
            raise FileNotFoundError(f"the staged upload {upload.staged} vanished before it was claimed")
        self.ledger.transition(file_id, State.CLAIMED, detail="uploaded through the API")
        log.info("claimed", file=name, sha=upload.sha256[:12], outputs=stem, uploaded=True)
        self._queued(file_id)
        return file_id

    def hash(self, path: Path) -> str:
        # a large file on a slow share takes a while: keep the intake heartbeat (and so the watchdog) fresh
        return intake.sha256_of(path, on_block=self._beat)

    def recover(self) -> None:
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
                    sha256=row.sha256 or self.hash(claimed),
                    size=claimed.stat().st_size,
                    out_name=stem,
                )
        known = {r.claim_path for r in self.ledger.unfinished()}
        for inbox in self._inboxes.values():
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
                    sha256=self.hash(path),
                    size=path.stat().st_size,
                    claim_path=str(path),
                    out_name=reserve_stem(inbox.outbox, rel),
                    detail="adopted from processing/",
                )
        for row in self.ledger.unfinished():
            if row.state is not State.STABLE:
                log.info("resumed", file=row.rel_path, state=row.state.value, job=row.batch_id)
