"""Taking a file in: wait until it is complete, claim it by atomic rename, hash it, move it when done."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from diarist.policies.intake import STATE_DIR_NAME
from diarist.policies.names import numbered, within

#: the longest file name (in bytes) ext4, XFS, Btrfs, NTFS and SMB shares take
NAME_MAX_BYTES = 255


@dataclass
class _Seen:
    # size and mtime alone miss changes on shares with coarse mtimes (2 s on FAT/SMB1, whole seconds on
    # some NFS servers); the inode changes when a file is renamed into place, the ctime on every write
    signature: tuple[int, int, int, int]
    since: float


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StabilityTracker:
    """A file is complete once its size, mtime, ctime and inode stay unchanged for ``seconds``; any change
    (growing, shrinking when overwritten, replaced by a rename) re-arms it.

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
        if old is None or old.signature != signature(st):
            self._seen[path] = _Seen(signature(st), now)

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def poll(self, seconds: Callable[[Path], float], limit: int | None = None) -> list[Path]:
        """Re-stat every tracked file; return (and stop tracking) those unchanged for their ``seconds(path)``,
        oldest first, at most ``limit`` of them (the others stay tracked, and stable, for a later poll)."""
        stable: list[Path] = []
        for path in list(self._seen):
            self.observe(path)
            seen = self._seen.get(path)
            if limit is not None and len(stable) >= limit:
                continue
            if seen is not None and self._clock() - seen.since >= seconds(path):
                stable.append(path)
                del self._seen[path]
        return stable


def sha256_of(path: Path, chunk: int = 1 << 20, on_block: Callable[[], None] | None = None) -> str:
    """Hex SHA-256 of the file; ``on_block`` is called every 64 MiB (a heartbeat on slow shares)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        n = 0
        while block := f.read(chunk):
            h.update(block)
            n += 1
            if on_block is not None and n % 64 == 0:
                on_block()
    return h.hexdigest()


def state_dir(inbox: Path) -> Path:
    return inbox / STATE_DIR_NAME


def uploads_dir(inbox: Path, host_id: str) -> Path:
    # beside processing/ (one filesystem, so admitting an upload is a rename), one folder per host
    return state_dir(inbox) / "uploads" / host_id


def processing_dir(inbox: Path, host_id: str) -> Path:
    # one folder per host: several daemons may watch one share (each only resumes its own claims)
    return state_dir(inbox) / "processing" / host_id


def _names(path: Path) -> Iterator[Path]:
    """``path``, then ``name (2).ext``, ``name (3).ext`` ..."""
    for n in range(1, 10_000):
        yield path.with_name(numbered(path.stem, n) + path.suffix)


def unique_path(path: Path) -> Path:
    """``path`` or, if taken, ``name (2).ext``, ``name (3).ext`` ... so nothing is ever overwritten."""
    for candidate in _names(path):
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"too many files named like {path}")


def claim(source: Path, target: Path) -> bool:
    """Move ``source`` to ``target`` atomically; False when someone else took it first (or it vanished).

    ``target`` must be a fresh name in a folder only this host writes to (its processing folder). Of several
    hosts renaming one file, exactly one succeeds: that is the whole cross-host claim protocol.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        # NFS: a retransmitted rename whose first attempt succeeded answers ENOENT; the file is ours anyway
        return target.exists() and not source.exists()
    return True


# link() refused by the filesystem (SMB without hard links, FAT, some FUSE): fall back to a placeholder
_NO_LINK = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EXDEV, errno.EINVAL}
)


def move_no_clobber(source: Path, target: Path) -> Path:
    """Move ``source`` to ``target``, or ``target (2)`` ... if taken, never replacing an existing file.

    ``os.rename`` silently replaces its target, so two hosts archiving a same-named file at once would lose
    one. A hard link fails when the name exists; where links are refused an exclusively created placeholder
    reserves the name and the rename then replaces only that. Returns the final path.

    Not exclusive on ``source``: only move files from a folder this host alone writes to.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for candidate in _names(target):
        try:
            os.link(source, candidate, follow_symlinks=False)  # a refused symlink moves as the link itself
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            if not _reserve(candidate):
                continue
            try:
                os.replace(source, candidate)
            except BaseException:
                candidate.unlink(missing_ok=True)
                raise
            return candidate
        os.unlink(source)
        return candidate
    raise FileExistsError(f"too many files named like {target}")


def _reserve(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def beside(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` appended to its name (``x.wav`` -> ``x.wav.error.json``), the name cut short
    where the whole would pass the 255 bytes most filesystems allow."""
    room = NAME_MAX_BYTES - len(suffix.encode())
    name = os.fsencode(path.name)
    if len(name) > room:
        name = name[:room].decode("utf-8", "ignore").encode()  # never cut a character in half
    return path.with_name(os.fsdecode(name) + suffix)


def move_aside(source: Path, inbox: Path, bucket: str, rel_path: str) -> Path:
    """Move a claimed input into ``<inbox>/.diarist/<bucket>/<rel_path>`` (renamed if taken); returns the target."""
    return move_no_clobber(source, within(state_dir(inbox) / bucket, rel_path))
