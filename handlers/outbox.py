"""Which output name an input gets, so that two inputs never write over each other's results.

``meeting.wav`` and ``meeting.mp3``, or ``Meeting.wav`` and ``meeting.wav`` on a case-insensitive share,
or ``a:b.wav`` and ``a_b.wav`` once made storable, would all land on one ``meeting.*`` / ``a_b.*``. The
outbox itself is the record of who owns a name (several hosts share it; their ledgers are separate): the
result, status and error documents each name their input, so a name is free when nothing is there or what
is there belongs to the same input (a re-drop replaces its own older result).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diarist.policies.names import numbered, output_stem

# the documents that carry the relative path of their input, and where
_OWNED = ((".json", ("source", "relative_path")), (".status.json", ("file",)), (".error.json", ("file",)))


def _owner(path: Path, keys: tuple[str, ...]) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        for key in keys:
            value = value[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not one of ours, or unreadable: somebody else's
    return value if isinstance(value, str) else None


def reserve_stem(outbox: Path, rel_path: str, *, limit: int = 1000) -> str:
    """The ``/``-separated stem (relative to ``outbox``) for ``rel_path``'s outputs: its own name if free.

    Names are compared case-insensitively whatever the filesystem, so the choice does not depend on it.
    """
    base = output_stem(rel_path)
    head, _, leaf = base.rpartition("/")
    folder = outbox / head if head else outbox
    try:
        present = {name.casefold(): name for name in os.listdir(folder)}
    except (FileNotFoundError, NotADirectoryError):
        present = {}
    for n in range(1, limit):
        candidate = numbered(leaf, n)
        owners = {
            _owner(folder / present[key], keys)
            for suffix, keys in _OWNED
            if (key := (candidate + suffix).casefold()) in present
        }
        if owners <= {rel_path}:
            return f"{head}/{candidate}" if head else candidate
    raise FileExistsError(f"more than {limit} inputs want outputs named like {base} in {folder}")
