"""Making one hook delivery: run a program (no shell, a time limit, a clean environment) or POST a signed
JSON document. Either answers with an ``Attempt``; nothing here raises for a hook's own failure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from diarist.policies.hooks import KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

#: how much of a program's output (or an answer's body) goes into the log
OUTPUT_LIMIT = 2000
#: what a hook program inherits from the daemon's environment; never its tokens
INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")


@dataclass(frozen=True)
class Attempt:
    ok: bool
    #: what happened, for the log and ``diarist status`` ("exit 0", "HTTP 503", "timed out after 30 s")
    detail: str
    output: str = ""


def run_program(argv: Sequence[str], variables: Mapping[str, str], timeout: float) -> Attempt:
    env = {k: v for k in INHERITED if (v := os.environ.get(k)) is not None}
    env.update(variables)
    try:
        # a session of its own: at the time limit the program and whatever it started are killed together
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        return Attempt(False, f"cannot run {argv[0]}: {e.strerror}")
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return Attempt(False, f"timed out after {timeout:g} s", out.decode("utf-8", "replace")[-OUTPUT_LIMIT:])
    output = out.decode("utf-8", "replace")[-OUTPUT_LIMIT:]
    return Attempt(proc.returncode == 0, f"exit {proc.returncode}", output)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST would arrive as a GET without its body: a 3xx is a failed attempt, not a delivery."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, *, secret: str, key: str, timeout: float, now: float | None = None) -> Attempt:
    timestamp = int(time.time() if now is None else now)
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "diarist-webhook/1",
            KEY_HEADER: key,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            text = answer.read(OUTPUT_LIMIT).decode("utf-8", "replace")
            return Attempt(200 <= answer.status < 300, f"HTTP {answer.status}", text)
    except urllib.error.HTTPError as e:
        return Attempt(False, f"HTTP {e.code}", e.read(OUTPUT_LIMIT).decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return Attempt(False, f"no answer: {reason}")
