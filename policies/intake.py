"""Which files in an inbox are candidates for processing (pure: names in, decision out)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".mp3",
        ".m4a",
        ".aac",
        ".ogg",
        ".oga",
        ".opus",
        ".webm",
        ".mp4",
        ".mka",
        ".wma",
        ".aif",
        ".aiff",
        ".amr",
        ".3gp",
        ".mov",
        ".mkv",
    }
)

# Files that office suites, browsers, macOS, Windows and sync tools leave beside real files.
SYSTEM_PATTERNS = (
    ".*",
    "._*",
    "~$*",
    ".~lock.*",
    "*.part",
    "*.partial",
    "*.tmp",
    "*.temp",
    "*.crdownload",
    "*.download",
    "*.swp",
    "Thumbs.db",
    "desktop.ini",
    "*.diarist.json",
)

#: diarist's own folder inside each inbox (claims, archive, failures)
STATE_DIR_NAME = ".diarist"


def ignore_reason(rel_path: str, extra_patterns: Sequence[str] = ()) -> str | None:
    """Return why ``rel_path`` (relative to the inbox, ``/``-separated) is not a candidate, or None.

    Hidden folders (including diarist's own ``.diarist``) exclude everything below them.
    """
    parts = rel_path.split("/")
    for folder in parts[:-1]:
        if folder.startswith("."):
            return f"inside hidden folder {folder!r}"
    name = parts[-1]
    for pattern in SYSTEM_PATTERNS:
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatch(name.lower(), pattern.lower()):
            return f"temporary or system file ({pattern})"
    for pattern in extra_patterns:
        if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel_path, pattern):
            return f"matches ignore pattern {pattern!r}"
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot > 0 else ""
    if ext not in AUDIO_EXTENSIONS:
        return f"not an audio extension ({ext or 'none'})"
    return None
