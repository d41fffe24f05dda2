"""Output names a network share can store (pure).

SMB shares (and Windows clients of NFS shares) cannot store ``< > : " \\ | ? *``, control characters,
names ending in a dot or a space, or device names such as ``CON`` and ``NUL``. An input that was fine on a
Linux inbox can therefore not be mirrored into an outbox on such a share as is. Every output name goes
through :func:`storable`, on every filesystem, so a result's name does not depend on where the outbox lives;
the JSON document keeps the original name.
"""

from __future__ import annotations

import re
from pathlib import Path

_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)
# Room left for " (99).status.json" on shares that limit a name to 255 bytes.
_MAX_BYTES = 220


def printable(name: str) -> str:
    """``name`` as text: bytes that were not UTF-8 (Python's surrogate escapes) are shown as ``\\xe9``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_text(name: str) -> bool:
    """Whether ``name`` came from valid UTF-8 bytes (otherwise it cannot go into JSON, SQLite or a log as is)."""
    return printable(name) == name


def storable(component: str) -> str:
    """One path component made storable on SMB/NFS/local alike; never empty."""
    name = _FORBIDDEN.sub("_", printable(component)).rstrip(" .")
    if name.split(".", 1)[0].upper() in _DEVICES:
        name = "_" + name
    encoded = name.encode("utf-8")
    if len(encoded) > _MAX_BYTES:
        name = encoded[:_MAX_BYTES].decode("utf-8", "ignore").rstrip(" .")
    return name or "_"


def output_stem(rel_path: str) -> str:
    """``sub/dir/meeting.m4a`` -> ``sub/dir/meeting``, each component storable (``/``-separated)."""
    parts = rel_path.split("/")
    name = parts[-1]
    dot = name.rfind(".")
    stem = name[:dot] if dot > 0 else name
    return "/".join([*(storable(p) for p in parts[:-1]), storable(stem)])


def numbered(stem: str, n: int) -> str:
    """The n-th alternative for a stem that is taken by another input: ``meeting (2)``."""
    return stem if n <= 1 else f"{stem} ({n})"


def within(root: Path, rel_path: str) -> Path:
    """``root / rel_path``, refusing any relative path that would lead out of ``root`` (``..``, absolute):
    relative paths come from the watcher, the ledger and other hosts' files, and none may steer a write."""
    parts = rel_path.split("/")
    if rel_path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"refusing a path that is not plainly inside {root}: {rel_path!r}")
    return root.joinpath(*parts)
