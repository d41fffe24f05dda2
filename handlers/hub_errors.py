"""Turn what the Hugging Face Hub answers into diarist's errors, and retry the answers worth retrying.

The one place where ``huggingface_hub`` / ``httpx2`` exceptions become a ``CloudError`` (the user must act:
token, plan, access, a missing repo or namespace) or a ``CloudTransientError`` (rate limit, 5xx, network: try
again later). Cloud code calls the Hub through :func:`call_hub` and never inspects HTTP errors itself.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx2
import structlog
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    JobNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import parse_ratelimit_headers

from diarist.handlers.errors import CloudError, CloudTransientError, DiaristError

__all__ = ["call_hub", "describe_hub_error"]

T = TypeVar("T")
log = structlog.get_logger("diarist")

TOKENS_URL = "https://huggingface.co/settings/tokens"
TOKEN_HINT = (
    "set HF_TOKEN in the daemon's environment, e.g. Environment=HF_TOKEN=... or EnvironmentFile= in the systemd "
    f"unit; create a token with write access and the Jobs permission at {TOKENS_URL}"
)
PLAN_HINT = (
    "see https://huggingface.co/pricing and https://huggingface.co/settings/billing; "
    'or set HF_JOBS_ENABLED=false, or route = "local", to process files on this machine'
)

# Only the server's own words are searched: URLs and reason phrases would match "pro" or "payment" by accident.
_PLAN_WORDS = re.compile(r"credit|payment|billing|subscri|\bplan\b|\bpro (?:user|plan|account)", re.I)
_PRO = re.compile(r"\bPRO\b")  # upper case only: a lowercase "pro" is usually part of a name ('pro-audio')
_GATED_WORDS = re.compile(r"gated|access to model", re.I)
_NAMED_NAMESPACE = re.compile(r"namespace '([^']+)'")
_NAMED_MODEL = re.compile(r"access to model ([\w.-]+/[\w-]+(?:\.[\w-]+)*)", re.I)
# A server message can echo what it was sent; a token must never reach a log or an .error.json.
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{6,}")
# Transport errors that retrying cannot fix: a malformed endpoint or a client-side protocol bug.
_PERMANENT_TRANSPORT = (httpx2.UnsupportedProtocol, httpx2.LocalProtocolError)


def describe_hub_error(
    exc: BaseException, *, action: str, namespace: str | None = None, repo_id: str | None = None
) -> DiaristError:
    """Map one failed Hub call to the error a user can act on; never raises.

    ``action`` completes "could not ..."; ``namespace`` and ``repo_id`` name what the call was about, so the
    message can say which namespace or model page is meant. A ``DiaristError`` is returned unchanged.
    """
    if isinstance(exc, DiaristError):
        return exc
    fail = f"could not {action}"
    if isinstance(exc, OfflineModeIsEnabled):
        return CloudError(
            f"{fail}: huggingface_hub is in offline mode.", hint="unset HF_HUB_OFFLINE in the daemon's environment"
        )
    if isinstance(exc, LocalTokenNotFoundError):
        return CloudError(f"{fail}: no Hugging Face token is configured.", hint=TOKEN_HINT)
    if isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError) and not isinstance(
        exc, _PERMANENT_TRANSPORT
    ):
        return CloudTransientError(f"{fail}: the Hub is unreachable ({_exc_text(exc)}); retrying later.")

    response = exc.response if isinstance(exc, HfHubHTTPError | httpx2.HTTPStatusError) else None
    if response is None:
        return CloudError(f"{fail}: unexpected {_exc_text(exc)}.")

    status = response.status_code
    server = _server_message(exc, response)
    said = _said(status, server, response.headers)
    repo = repo_id or getattr(exc, "repo_id", None)

    if isinstance(exc, GatedRepoError) or (status == 403 and server and _GATED_WORDS.search(server)):
        model = repo or _first(_NAMED_MODEL, server)
        page = f"https://huggingface.co/{model}" if model else "the model's Hugging Face page"
        return CloudError(
            f"{fail}: {model or 'the model'} is gated and this account has not been granted access {said}.",
            hint=f"open {page} with the token's account and accept the conditions",
            status=status,
        )
    if status == 401:
        if isinstance(exc, RepositoryNotFoundError) and repo:
            what = f"{repo} was not found, or the token is missing or cannot read it"
        else:
            what = "the Hub rejected the token: it is missing, invalid or expired"
        return CloudError(f"{fail}: {what} {said}.", hint=TOKEN_HINT, status=status)
    if status == 402 or (400 <= status < 500 and status not in (408, 429) and _mentions_plan(server)):
        return CloudError(
            f"{fail}: Hugging Face Jobs need a PRO/Team/Enterprise plan or prepaid credits {said}.",
            hint=PLAN_HINT,
            status=status,
        )
    if status == 403:
        ns = namespace or _first(_NAMED_NAMESPACE, server)
        where = f"the namespace '{ns}'" if ns else "this namespace"
        return CloudError(
            f"{fail}: the token has no permission to use {where} {said}.",
            hint=f"use a token of a member of {ns or 'the namespace'}, or a fine-grained token whose scopes give "
            f"write access to its repos and Jobs, from {TOKENS_URL}",
            status=status,
        )
    if status == 404:
        return _not_found(exc, fail, said, namespace, repo)
    if status == 429:
        wait = _retry_after(response.headers)
        when = f"in {wait:.0f} s" if wait is not None else "later"
        return CloudTransientError(
            f"{fail}: the Hub is rate-limiting this account {said}; retrying {when}.", status=status, retry_after=wait
        )
    if status == 408 or status >= 500:
        return CloudTransientError(f"{fail}: the Hub answered with an error {said}; retrying later.", status=status)
    return CloudError(f"{fail}: the Hub refused the request {said}.", status=status)


def call_hub(
    fn: Callable[..., T],
    *args: Any,
    action: str,
    namespace: str | None = None,
    repo_id: str | None = None,
    attempts: int = 5,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> T:
    """Return ``fn(*args, **kwargs)``, retrying transient Hub failures up to ``attempts`` calls in all.

    Waits ``base_delay * 2**n`` between calls, or the server's ``Retry-After`` when longer, never more than
    ``max_delay``. Raises the mapped ``CloudError`` at once for answers retrying cannot fix, the last
    ``CloudTransientError`` when the attempts run out (both chained from the Hub's exception); a
    ``DiaristError`` from ``fn`` passes through. ``namespace`` and ``repo_id`` only describe the call for the
    messages and are NOT forwarded to ``fn``: bind ``fn``'s own (``namespace=`` of ``run_job``) with a lambda.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except DiaristError:
            raise
        except Exception as exc:
            error = describe_hub_error(exc, action=action, namespace=namespace, repo_id=repo_id)
            if not isinstance(error, CloudTransientError) or attempt == attempts - 1:
                raise error from exc
            delay = min(max_delay, max(base_delay * 2**attempt, error.retry_after or 0.0))
            log.warning("hub_retry", action=action, attempt=attempt + 1, delay=delay, status=error.status)
            sleep(delay)
    raise AssertionError("unreachable")  # the loop either returns or raises


def _not_found(exc: BaseException, fail: str, said: str, namespace: str | None, repo: str | None) -> CloudError:
    if isinstance(exc, JobNotFoundError):
        job = getattr(exc, "job_id", None) or "the job"
        where = f" in namespace '{namespace}'" if namespace else ""
        return CloudError(f"{fail}: job {job} no longer exists on the Hub{where} {said}.", status=404)
    if isinstance(exc, RevisionNotFoundError | RemoteEntryNotFoundError):
        return CloudError(f"{fail}: the file or revision is not in {repo or 'the repository'} {said}.", status=404)
    if isinstance(exc, RepositoryNotFoundError) or repo:
        return CloudError(
            f"{fail}: the repository {repo or 'named in the request'} does not exist {said}.",
            hint="check the repo id, and that the token's account can see it",
            status=404,
        )
    where = f"the namespace '{namespace}'" if namespace else "the namespace or resource"
    return CloudError(
        f"{fail}: {where} does not exist on the Hub {said}.",
        hint="the namespace must be your user name or an organization you belong to",
        status=404,
    )


def _server_message(exc: BaseException, response: httpx2.Response) -> str | None:
    text = getattr(exc, "server_message", None) or response.headers.get("X-Error-Message")
    if not text:
        return None
    text = _TOKEN.sub("hf_***", " ".join(str(text).split())).rstrip(".")
    return text if len(text) <= 300 else text[:297] + "..."


def _said(status: int, server: str | None, headers: Mapping[str, str]) -> str:
    """``(HTTP 402: <the server's words>; request id <id>)``: what to quote when asking Hugging Face for help."""
    parts = [f"HTTP {status}: {server}" if server else f"HTTP {status}"]
    if request_id := headers.get("X-Request-Id"):
        parts.append(f"request id {request_id}")
    return "(" + "; ".join(parts) + ")"


def _mentions_plan(server: str | None) -> bool:
    return bool(server and (_PLAN_WORDS.search(server) or _PRO.search(server)))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date), else from an exhausted ``RateLimit``."""
    value = headers.get("Retry-After")
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None and when.tzinfo is None:  # "-0000" means UTC but parses as naive
                when = when.replace(tzinfo=datetime.UTC)
            seconds = when.timestamp() - time.time() if when is not None else math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    info = parse_ratelimit_headers(headers)
    if info is not None and info.remaining == 0:
        return float(info.reset_in_seconds)
    return None


def _first(pattern: re.Pattern[str], text: str | None) -> str | None:
    match = pattern.search(text or "")
    return match.group(1) if match else None


def _exc_text(exc: BaseException) -> str:
    text = _TOKEN.sub("hf_***", " ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
