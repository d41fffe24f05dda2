"""Taking a file in: wait until it is complete, hash it, claim it by atomic rename, move it when done."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diarist.policies.intake import STATE_DIR_NAME


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class StabilityTracker:
    """A file is complete once its size and mtime stay unchanged for ``seconds``; any change re-arms it.

    The clock is injected so tests advance time instead of sleeping. Files are never given up on: a copy
    that stalls for an hour is still picked up when it finishes.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}

    def __contains__(self, path: Path) -> bool:
        return path in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, path: Path) -> None:
        """Start (or keep) tracking ``path``; a change since the last look re-arms its timer."""
        try:
            st = path.stat()
        except FileNotFoundError:
            self._seen.pop(path, None)
            return
        now = self._clock()
        old = self._seen.get(path)
        if old is None or (old.size, old.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def poll(self, seconds: Callable[[Path], float]) -> list[Path]:
        """Re-stat every tracked file; return (and stop tracking) those unchanged for their ``seconds(path)``."""
        stable = []
        for path in list(self._seen):
            self.observe(path)
            seen = self._seen.get(path)
            if seen is not None and self._clock() - seen.since >= seconds(path):
                stable.append(path)
                del self._seen[path]
        return stable


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_dir(inbox: Path) -> Path:
    return inbox / STATE_DIR_NAME


def processing_dir(inbox: Path, host_id: str) -> Path:
    # one folder per host: several daemons may watch one share (each only resumes its own claims)
    return state_dir(inbox) / "processing" / host_id


def unique_path(path: Path) -> Path:
    """``path`` or, if taken, ``name (2).ext``, ``name (3).ext`` ... so nothing is ever overwritten."""
    if not path.exists():
        return path
    for n in range(2, 10_000):
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"too many files named like {path}")


def claim(source: Path, target: Path) -> bool:
    """Move ``source`` to ``target`` atomically; False when someone else took it first (or it vanished)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False
    return True


def move_aside(source: Path, inbox: Path, bucket: str, rel_path: str) -> Path:
    """Move a claimed input into ``<inbox>/.diarist/<bucket>/<rel_path>`` (renamed if taken); returns the target."""
    target = unique_path(state_dir(inbox) / bucket / rel_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)
    return target
