"""One error tree for diarist, split by what the user (or the daemon) should do about it.

* ``TransientError``: try again later (network, locked database, full disk that may clear).
* ``PermanentFileError``: this input can never succeed as it is; it is moved aside with an ``.error.json``.
* ``ConfigError``: refuse to start and name the key and the file.
* ``ModelError``: the configured model cannot be loaded; says which model, why and how to fix it.

Every message is written for a person: what happened and what to do next.
"""

from __future__ import annotations


class DiaristError(Exception):
    """Root of every error diarist raises on purpose."""

    #: short machine-readable kind, written into ``.error.json``
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class TransientError(DiaristError):
    kind = "transient"


class RequestError(DiaristError):
    """A request to the HTTP API that diarist turns down; ``status`` is the HTTP status saying why."""

    kind = "request"

    def __init__(self, status: int, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class PermanentFileError(DiaristError):
    kind = "bad-input"


class ConfigError(DiaristError):
    kind = "config"

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None, hint: str | None = None):
        where = " ".join(p for p in (f"in {file}" if file else "", f"at key '{key}'" if key else "") if p)
        super().__init__(f"invalid configuration {where}: {message}" if where else message, hint=hint)
        self.detail = message
        self.key = key
        self.file = file


class ModelError(DiaristError):
    kind = "model"


class ToolMissingError(TransientError):
    """An external program (ffmpeg) is missing: nothing is wrong with the file, the machine needs fixing."""

    kind = "tool-missing"


class CloudError(DiaristError):
    """The Hub refused a cloud step for a reason retrying will not fix (token, credits, access, missing repo).

    ``status`` is the HTTP status behind it, when there was one. The cloud route is unusable until the user
    acts, so files fall back to local processing (or fail, with fallback off) with this message.
    """

    kind = "cloud"

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class CloudTransientError(TransientError):
    """The Hub is busy, rate-limiting or unreachable: retry later, after ``retry_after`` seconds when given."""

    kind = "cloud-transient"

    def __init__(
        self, message: str, *, hint: str | None = None, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message, hint=hint)
        self.status = status
        self.retry_after = retry_after
