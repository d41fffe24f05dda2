"""Staged recordings must not stay on the Hub: delete what a finished batch staged, and when the Hub cannot
be reached, owe it (the ledger's ``cleanups`` table) and retry on every tick until it is done."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from diarist.daemon.ledger import JobRow, Ledger
from diarist.handlers import cloud_fetch
from diarist.handlers.cloud_hub import Hub
from diarist.handlers.errors import DiaristError

log = structlog.get_logger("diarist.cloud")


class StagedCleanup:
    def __init__(self, ledger: Ledger, hub: Callable[[], Hub], *, keep_staged: bool):
        self.ledger = ledger
        self._hub = hub
        self._keep = keep_staged

    def after(self, job: JobRow) -> None:
        """The batch is over (collected, given up, or never started): remove what it put on the Hub."""
        if self._keep:
            return
        self._delete(job.batch_id, job.job_id, job.staged_paths)

    def _delete(self, batch_id: str, job_id: str | None, staged: list[str]) -> bool:
        # an input another open batch still needs stays (same content dropped twice, in two batches)
        needed: set[str] = set()
        for other in self.ledger.open_jobs():
            if other.batch_id != batch_id:
                needed.update(other.staged_paths)
        try:
            cloud_fetch.cleanup(self._hub(), job_id, [p for p in staged if p not in needed])
        except DiaristError as e:
            log.warning("cleanup_failed", job=job_id, error=str(e), retry=True)
            self.ledger.owe_cleanup(batch_id, job_id, staged)
            return False
        return True

    def retry(self) -> None:
        for owed in self.ledger.pending_cleanups():
            if not self._delete(owed.batch_id, owed.job_id, owed.staged):
                return  # the Hub is still out of reach: the next tick tries again
            self.ledger.cleanup_done(owed.batch_id)
            log.info("cleanup_done", job=owed.job_id)
