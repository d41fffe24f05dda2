"""Watching inbox folders: native events or polling per inbox, plus full scans (startup and periodic).

Events only say "look at this path"; deciding whether a file is complete is the stability tracker's job.
On shares, events are lost or never raised for writes from other hosts, so periodic scans are the safety net.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from diarist.daemon.config import InboxSettings
from diarist.policies.intake import STATE_DIR_NAME
from diarist.policies.watchmode import WatchMode, choose_watch_mode, parse_mounts

OnPath = Callable[[InboxSettings, Path], None]


def read_mounts() -> str:
    try:
        return Path("/proc/self/mounts").read_text()
    except OSError:
        return ""


def watch_mode(inbox: InboxSettings, mounts_text: str | None = None) -> WatchMode:
    mounts = parse_mounts(read_mounts() if mounts_text is None else mounts_text)
    return choose_watch_mode(str(inbox.path), inbox.polling, mounts)


def scan(inbox: InboxSettings) -> Iterator[Path]:
    """Every regular file and symlink under the inbox (top level only unless recursive), skipping hidden
    folders. Symlinked folders are never entered. By name, so that a backlog is claimed in a predictable
    order (a host claims only a few files ahead)."""
    folded = {f.casefold() for f in inbox.ignore_folders}  # NAS recycle bins, snapshots: never walked
    stack = [inbox.path]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                skipped = entry.name.startswith(".") or entry.name.casefold() in folded
                if inbox.recursive and not skipped and entry.name != STATE_DIR_NAME:
                    stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) or entry.is_symlink():  # links: to be refused
                yield Path(entry.path)


class _Handler(FileSystemEventHandler):
    def __init__(self, inbox: InboxSettings, on_path: OnPath):
        self._inbox = inbox
        self._on_path = on_path

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write", "deleted"):
            return
        raw = event.dest_path if event.event_type == "moved" else event.src_path
        path = Path(os.fsdecode(raw))
        if event.is_directory:
            # a folder moved or copied in as a whole raises no event per file inside it
            ignored = path.name.startswith(".") or path.name.casefold() in {
                f.casefold() for f in self._inbox.ignore_folders
            }
            if self._inbox.recursive and event.event_type in ("created", "moved") and not ignored:
                for file in scan(dataclasses.replace(self._inbox, path=path)):
                    self._on_path(self._inbox, file)
            return
        self._on_path(self._inbox, path)


class InboxWatcher:
    """One observer per polling inbox (each has its own interval) and one shared native observer. Inboxes
    may be added and removed while it runs (a configuration reload)."""

    def __init__(self, inboxes: tuple[InboxSettings, ...], on_path: OnPath, mounts_text: str | None = None):
        self._inboxes = list(inboxes)
        self._on_path = on_path
        self._mounts_text = mounts_text
        self.modes = {inbox.path: watch_mode(inbox, mounts_text) for inbox in inboxes}
        self._native: BaseObserver | None = None
        self._polling: dict[Path, BaseObserver] = {}
        self._native_watches: dict[Path, ObservedWatch] = {}

    def start(self) -> None:
        for inbox in self._inboxes:
            self._schedule(inbox)

    def _schedule(self, inbox: InboxSettings) -> None:
        inbox.path.mkdir(parents=True, exist_ok=True)
        handler = _Handler(inbox, self._on_path)
        if self.modes[inbox.path].polling:
            observer: BaseObserver = PollingObserver(timeout=inbox.poll_interval)
            observer.schedule(handler, str(inbox.path), recursive=inbox.recursive)
            observer.daemon = True
            observer.start()
            self._polling[inbox.path] = observer
            return
        if self._native is None:
            self._native = Observer()
            self._native.daemon = True
            self._native.start()
        self._native_watches[inbox.path] = self._native.schedule(handler, str(inbox.path), recursive=inbox.recursive)

    def watch(self, inbox: InboxSettings) -> WatchMode:
        """Start watching an inbox added while running."""
        self.modes[inbox.path] = mode = watch_mode(inbox, self._mounts_text)
        self._schedule(inbox)
        return mode

    def unwatch(self, path: Path) -> None:
        """Stop watching an inbox removed while running."""
        polling = self._polling.pop(path, None)
        if polling is not None:
            polling.stop()
            polling.join(timeout=5)
        watch = self._native_watches.pop(path, None)
        if watch is not None and self._native is not None:
            self._native.unschedule(watch)
        self.modes.pop(path, None)

    def alive(self) -> bool:
        observers = [*self._polling.values(), *([self._native] if self._native else [])]
        return all(o.is_alive() for o in observers)

    def stop(self) -> None:
        observers = [*self._polling.values(), *([self._native] if self._native else [])]
        for observer in observers:
            observer.stop()
        for observer in observers:
            observer.join(timeout=5)
        self._polling.clear()
        self._native_watches.clear()
        self._native = None
