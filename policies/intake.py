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

#: folders that NAS systems, file servers and sync tools keep inside shared folders (thumbnails, recycle bins,
#: snapshots, resource forks, sync state): nothing in them is a recording someone dropped. Matched by name,
#: case-insensitively, at any depth; ``[[inbox]] ignore_folders`` replaces the list.
NAS_FOLDERS = (
    "@eaDir",  # Synology thumbnails and metadata
    "#recycle",  # Synology / QNAP recycle bin
    "#snapshot",  # Synology snapshots
    "$RECYCLE.BIN",  # Windows (SMB) recycle bin
    ".snapshot",  # NetApp, some NFS servers
    "__MACOSX",  # resource forks unpacked from a macOS zip
    ".stfolder",  # Syncthing
    ".sync",  # Resilio Sync
    ".@__thumb",  # QNAP thumbnails
    "@Recycle",  # QNAP recycle bin
    "System Volume Information",  # Windows
)


def ignore_reason(
    rel_path: str, extra_patterns: Sequence[str] = (), folders: Sequence[str] = NAS_FOLDERS
) -> str | None:
    """Return why ``rel_path`` (relative to the inbox, ``/``-separated) is not a candidate, or None.

    Hidden folders (including diarist's own ``.diarist``) and the system ``folders`` exclude everything below
    them.
    """
    parts = rel_path.split("/")
    system = {f.casefold() for f in folders}
    for folder in parts[:-1]:
        if folder.casefold() in system:
            return f"inside system folder {folder!r}"
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
