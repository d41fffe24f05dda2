"""Named places where the reliability suite kills diarist, to prove that a crash there loses nothing.

``DIARIST_CRASH_AT=name`` (or ``name:n``, the n-th pass) makes the process SIGKILL itself at ``crash_point(name)``:
no cleanup, no ``finally``, exactly like the OOM killer or a power cut. The variable is read once at import; it
is never set in production, where a crash point costs one set lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DIARIST_CRASH_AT"


def _plan(text: str) -> dict[str, int]:
    plan = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, n = item.partition(":")
        plan[name] = int(n or 1)
    return plan


_PLAN = _plan(os.environ.get(ENV, ""))
_PASSES: dict[str, int] = {}


def crash_point(name: str) -> None:
    if name not in _PLAN:
        return
    _PASSES[name] = _PASSES.get(name, 0) + 1
    if _PASSES[name] >= _PLAN[name]:
        os.kill(os.getpid(), signal.SIGKILL)
