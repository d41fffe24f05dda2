"""Named places where the reliability suite kills diarist, to prove that a crash there loses nothing, or holds
it, to act on it (a signal, a fault) at a known moment rather than by timing.

``DIARIST_CRASH_AT=name`` (or ``name:n``, the n-th pass) makes the process SIGKILL itself at ``crash_point(name)``:
no cleanup, no ``finally``, exactly like the OOM killer or a power cut.

``DIARIST_HOLD_AT=name:flagfile`` makes ``hold_point(name)`` block while ``flagfile`` exists (or until the
caller's ``until()`` holds). On arrival it creates ``flagfile.held``, so a test knows the process is there.

The variables are read once at import; they are never set in production, where a crash or hold point costs one
dict lookup.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

ENV = "DIARIST_CRASH_AT"
HOLD_ENV = "DIARIST_HOLD_AT"
#: how often a held point looks at its flag file (and ``until``)
HOLD_POLL = 0.05


def _plan(text: str) -> dict[str, int]:
    plan = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, n = item.partition(":")
        plan[name] = int(n or 1)
    return plan


def _holds(text: str) -> dict[str, Path]:
    holds = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, flag = item.partition(":")
        if not flag:
            raise ValueError(f"{HOLD_ENV}: {item!r} names no flag file (name:flagfile)")
        holds[name] = Path(flag)
    return holds


_PLAN = _plan(os.environ.get(ENV, ""))
_PASSES: dict[str, int] = {}
_HOLDS = _holds(os.environ.get(HOLD_ENV, ""))


def crash_point(name: str) -> None:
    if name not in _PLAN:
        return
    _PASSES[name] = _PASSES.get(name, 0) + 1
    if _PASSES[name] >= _PLAN[name]:
        os.kill(os.getpid(), signal.SIGKILL)


def hold_point(name: str, until: Callable[[], bool] | None = None) -> None:
    """Block here while this point's flag file exists, or until ``until()`` is true (a test removes the flag,
    or the process reaches the state the test waits for, such as stopping)."""
    flag = _HOLDS.get(name)
    if flag is None:
        return
    if not flag.exists():
        return
    flag.with_name(flag.name + ".held").touch()
    while flag.exists() and not (until is not None and until()):
        time.sleep(HOLD_POLL)
