"""Making one hook delivery: run a program (no shell, a time limit, a clean environment) or POST a signed
JSON document. Either answers with an ``Attempt``; nothing here raises for a hook's own failure."""

from __future__ import annotations

import os
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
        proc = subprocess.run(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            text=True,
            errors="replace",
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-OUTPUT_LIMIT:]
        return Attempt(
            False, f"timed out after {timeout:g} s", out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        )
    except OSError as e:
        return Attempt(False, f"cannot run {argv[0]}: {e.strerror}")
    output = (proc.stdout + proc.stderr)[-OUTPUT_LIMIT:]
    return Attempt(proc.returncode == 0, f"exit {proc.returncode}", output)


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
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - the configured URL
            text = answer.read(OUTPUT_LIMIT).decode("utf-8", "replace")
            return Attempt(200 <= answer.status < 300, f"HTTP {answer.status}", text)
    except urllib.error.HTTPError as e:
        return Attempt(False, f"HTTP {e.code}", e.read(OUTPUT_LIMIT).decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return Attempt(False, f"no answer: {reason}")
