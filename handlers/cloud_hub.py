"""The daemon's handle on the Hub: one client, one namespace, one private staging dataset repo.

Every call goes through ``call_hub``, so each Hub answer is mapped once to an error a user can act on and
busy or unreachable answers are retried with capped backoff. ``namespace=`` is always passed to the Jobs
API: without it the client asks whoami first, on every call.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoFile
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RemoteEntryNotFoundError

from diarist.handlers.errors import CloudError, CloudTransientError
from diarist.handlers.hub_errors import call_hub, describe_hub_error
from diarist.policies.pricing import FlavorPrice, PriceUnit

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_TYPE = "dataset"


@dataclass(frozen=True)
class JobSnapshot:
    """One ``inspect_job`` answer, reduced to what the poller decides on."""

    job_id: str
    stage: str
    message: str | None
    url: str
    scheduling_seconds: float | None
    running_seconds: float | None
    labels: dict[str, str] = field(default_factory=dict)
    flavor: str | None = None
    created_at: float | None = None


def _snapshot(info: Any) -> JobSnapshot:
    durations = info.durations
    return JobSnapshot(
        job_id=info.id,
        stage=str(info.status.stage),
        message=info.status.message,
        url=info.url,
        scheduling_seconds=getattr(durations, "scheduling_secs", None) if durations else None,
        running_seconds=getattr(durations, "running_secs", None) if durations else None,
        labels=dict(info.labels or {}),
        flavor=str(info.flavor) if info.flavor else None,
        created_at=info.created_at.timestamp() if info.created_at else None,
    )


class Hub:
    """A connected namespace. ``sleep`` is injected so tests of retries do not wait for real."""

    def __init__(
        self,
        *,
        token: str,
        namespace: str | None = None,
        staging_repo: str = "{namespace}/diarist-staging",
        endpoint: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = 5,
    ):
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token
        self.api = HfApi(endpoint=self.endpoint, token=token)
        self._sleep = sleep
        self._attempts = attempts
        self.namespace = namespace or self._call(self.api.whoami, action="check the Hugging Face token")["name"]
        self.repo = staging_repo.format(namespace=self.namespace)
        self._repo_ready = False

    def _call(self, fn: Callable[[], Any], *, action: str, attempts: int | None = None) -> Any:
        return call_hub(
            fn,
            action=action,
            namespace=getattr(self, "namespace", None),
            repo_id=getattr(self, "repo", None),
            attempts=attempts or self._attempts,
            sleep=self._sleep,
        )

    # -- staging repo ------------------------------------------------------------------------------

    def ensure_repo(self) -> None:
        if self._repo_ready:
            return
        self._call(
            lambda: self.api.create_repo(self.repo, repo_type=REPO_TYPE, private=True, exist_ok=True),
            action=f"create the private staging dataset {self.repo}",
        )
        self._repo_ready = True

    def exists(self, path: str) -> bool:
        return bool(
            self._call(
                lambda: self.api.file_exists(self.repo, path, repo_type=REPO_TYPE),
                action=f"look for {path} in {self.repo}",
            )
        )

    def upload(self, files: dict[str, bytes | Path], message: str, *, parent: str | None = None) -> None:
        """One commit with every file (bytes or a local path); with ``parent``, refused (412) if the head moved on."""
        self.ensure_repo()
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()]
        self._call(
            lambda: self.api.create_commit(
                self.repo, repo_type=REPO_TYPE, operations=ops, commit_message=message, parent_commit=parent
            ),
            action=f"upload {len(ops)} file(s) to {self.repo}",
        )

    def read(self, path: str, *, revision: str | None = None) -> bytes | None:
        """A staged file's bytes, or None when it does not exist."""
        # a private temp dir, not the HF cache: results are read once, and a service may have no home
        with tempfile.TemporaryDirectory(prefix="diarist-fetch-") as tmp:
            try:
                local = self._call(
                    lambda: self.api.hf_hub_download(
                        self.repo, path, repo_type=REPO_TYPE, local_dir=tmp, revision=revision
                    ),
                    action=f"download {path} from {self.repo}",
                )
            except Exception as e:  # the mapped error keeps the client's as its cause
                cause = e.__cause__
                if isinstance(cause, LocalEntryNotFoundError):  # the Hub did not answer: not "missing"
                    raise CloudTransientError(f"could not download {path} from {self.repo}: {cause}") from cause
                if isinstance(cause, EntryNotFoundError | RemoteEntryNotFoundError):
                    return None
                raise
            return Path(local).read_bytes()

    def delete(self, paths: Iterable[str], folders: Iterable[str], message: str, *, parent: str | None = None) -> None:
        """One commit deleting ``paths`` and ``folders``; with ``parent``, refused (412) if the head moved on."""
        ops = [CommitOperationDelete(path_in_repo=p) for p in paths]
        ops += [CommitOperationDelete(path_in_repo=f.rstrip("/") + "/", is_folder=True) for f in folders]
        if not ops:
            return
        self._call(
            lambda: self.api.create_commit(
                self.repo, repo_type=REPO_TYPE, operations=ops, commit_message=message, parent_commit=parent
            ),
            action=f"delete staged files from {self.repo}",
        )

    def head(self) -> tuple[str, dict[str, str | None]]:
        """The head commit, and each file it holds with its large-file (LFS) sha256, None for small files."""
        sha = self._call(
            lambda: self.api.repo_info(self.repo, repo_type=REPO_TYPE).sha, action=f"read the head of {self.repo}"
        )
        tree = self._call(
            lambda: list(self.api.list_repo_tree(self.repo, repo_type=REPO_TYPE, recursive=True, revision=sha)),
            action=f"list files of {self.repo}",
        )
        return sha, {f.path: (f.lfs.sha256 if f.lfs else None) for f in tree if isinstance(f, RepoFile)}

    def on_head(self, commit: Callable[[str, dict[str, str | None]], T], *, attempts: int = 3) -> T:
        """Run ``commit(head, files)`` (a commit bound to that head) and return what it returns; when another
        commit landed in between (412), read the head again and retry, up to ``attempts`` times in all."""
        for attempt in range(attempts):
            head, files = self.head()
            try:
                return commit(head, files)
            except CloudError as e:
                if e.status != 412 or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")  # the loop either returns or raises

    def forget(self, large_files: set[str], *, keep: set[str]) -> None:
        """Make what was deleted unretrievable: squash the history to the head's one commit, and permanently
        delete the stored large files (by sha256) in ``large_files`` that are not in ``keep``."""
        self._call(
            lambda: self.api.super_squash_history(
                self.repo, repo_type=REPO_TYPE, commit_message="diarist: drop the history of deleted staged files"
            ),
            action=f"squash the history of {self.repo}",
        )
        doomed = large_files - keep
        if not doomed:
            return
        stored = self._call(
            lambda: [f for f in self.api.list_lfs_files(self.repo, repo_type=REPO_TYPE) if f.file_oid in doomed],
            action=f"list the large files stored in {self.repo}",
        )
        if stored:
            self._call(
                lambda: self.api.permanently_delete_lfs_files(self.repo, stored, repo_type=REPO_TYPE),
                action=f"permanently delete staged audio from {self.repo}",
            )

    def list_files(self) -> list[str]:
        return list(
            self._call(
                lambda: self.api.list_repo_files(self.repo, repo_type=REPO_TYPE), action=f"list files of {self.repo}"
            )
        )

    # -- jobs --------------------------------------------------------------------------------------

    def run_job(self, **kwargs: Any) -> JobSnapshot:
        # never retried here: a lost answer may hide a started job; the caller finds it by its labels
        info = self._call(
            lambda: self.api.run_job(namespace=self.namespace, **kwargs),
            action="start a Hugging Face Job",
            attempts=1,
        )
        return _snapshot(info)

    def inspect(self, job_id: str) -> JobSnapshot:
        info = self._call(
            lambda: self.api.inspect_job(job_id=job_id, namespace=self.namespace), action=f"check cloud job {job_id}"
        )
        return _snapshot(info)

    def cancel(self, job_id: str) -> None:
        self._call(
            lambda: self.api.cancel_job(job_id=job_id, namespace=self.namespace), action=f"cancel cloud job {job_id}"
        )

    def find(self, labels: dict[str, str]) -> list[JobSnapshot]:
        infos = self._call(
            lambda: list(self.api.list_jobs(labels=labels, namespace=self.namespace)),
            action="list diarist's cloud jobs",
        )
        return [_snapshot(i) for i in infos]

    def logs(self, job_id: str, *, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """Log lines; with ``follow`` they stream until the job ends. Errors are mapped on the first line."""
        stream = self._call(
            lambda: self.api.fetch_job_logs(job_id=job_id, namespace=self.namespace, follow=follow, tail=tail),
            action=f"fetch the logs of cloud job {job_id}",
        )
        try:
            yield from stream
        except Exception as e:  # the stream fails while it is read, after call_hub has returned
            action = f"stream the logs of cloud job {job_id}"
            raise describe_hub_error(e, action=action, namespace=self.namespace) from e

    def last_lines(self, job_id: str, n: int = 20) -> list[str]:
        """The end of a finished job's log; never raises (it decorates an error that is already being reported)."""
        try:
            return list(self.logs(job_id, tail=n))[-n:]
        except Exception as e:  # noqa: BLE001 - see docstring
            return [f"(logs unavailable: {e})"]

    def prices(self) -> list[FlavorPrice]:
        """The Hub's current price list (per ``unit_label``, usually a minute)."""
        hardware = self._call(lambda: list(self.api.list_jobs_hardware()), action="list Jobs hardware and prices")
        prices = []
        for h in hardware:
            try:
                unit = PriceUnit(h.unit_label)
            except ValueError:  # a unit we cannot convert: better no price than a wrong one
                continue
            cost = Decimal(h.unit_cost_micro_usd) / 1_000_000
            prices.append(FlavorPrice(h.name, cost, unit, accelerator=h.accelerator is not None))
        return prices
