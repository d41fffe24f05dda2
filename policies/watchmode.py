"""Native filesystem events or polling, per inbox (pure: the mount table is passed in)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# inotify sees only changes made by this kernel: writes from other hosts on a share never raise events.
NETWORK_FS_TYPES = frozenset({"cifs", "smb", "smb2", "smb3", "smbfs", "nfs", "nfs4", "9p", "afs", "ceph", "glusterfs"})


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str


@dataclass(frozen=True)
class WatchMode:
    polling: bool
    fstype: str
    mount_point: str
    reason: str


def parse_mounts(text: str) -> list[Mount]:
    """Parse /proc/self/mounts (octal escapes such as ``\\040`` for spaces are decoded)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            # the kernel escapes space, tab, newline and backslash as \ooo octal; other bytes are UTF-8
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
            mounts.append(Mount(point, fields[2]))
    return mounts


def mount_for(path: str, mounts: Iterable[Mount]) -> Mount:
    """The mount holding ``path``: the longest matching mount point (later mounts shadow earlier ones)."""
    best = Mount("/", "unknown")
    for m in mounts:
        prefix = m.point.rstrip("/") + "/"
        if (path == m.point or path.startswith(prefix) or m.point == "/") and len(m.point) >= len(best.point):
            best = m
    return best


def is_network_fs(fstype: str) -> bool:
    return fstype in NETWORK_FS_TYPES or fstype.startswith("fuse")


def choose_watch_mode(path: str, setting: bool | str, mounts: Iterable[Mount]) -> WatchMode:
    """Decide polling for an inbox at absolute ``path`` given its ``polling`` setting (True, False, "auto")."""
    m = mount_for(path, mounts)
    if setting is True:
        return WatchMode(True, m.fstype, m.point, "polling = true in config")
    if setting is False:
        return WatchMode(False, m.fstype, m.point, "polling = false in config")
    if is_network_fs(m.fstype):
        return WatchMode(True, m.fstype, m.point, f"{m.fstype} at {m.point} is a network filesystem")
    return WatchMode(False, m.fstype, m.point, f"{m.fstype} at {m.point} is local: native events")
