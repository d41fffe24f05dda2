"""What a configuration reload (SIGHUP, ``systemctl reload``) changes: inboxes and hooks take effect at
once; other sections need a restart, and the log says which."""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from diarist.daemon.config import InboxSettings, Settings

#: sections read once at start (models loaded, sockets bound, clocks set): changing them needs a restart
RESTART_SECTIONS = ("daemon", "models", "cloud", "users", "transcription", "identify", "api")


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[InboxSettings, ...]
    removed: tuple[InboxSettings, ...]
    #: same folder, other settings: watched again with the new ones
    changed: tuple[InboxSettings, ...]
    hooks_changed: bool
    restart_needed: tuple[str, ...]

    def summary(self) -> dict[str, object]:
        return {
            "added": [str(i.path) for i in self.added],
            "removed": [str(i.path) for i in self.removed],
            "changed": [str(i.path) for i in self.changed],
            "hooks_changed": self.hooks_changed,
            "restart_needed": list(self.restart_needed),
        }


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    before = {i.path: i for i in old.inboxes}
    after = {i.path: i for i in new.inboxes}
    return ReloadPlan(
        added=tuple(i for p, i in after.items() if p not in before),
        removed=tuple(i for p, i in before.items() if p not in after),
        changed=tuple(i for p, i in after.items() if p in before and before[p] != i),
        hooks_changed=old.hooks != new.hooks,
        restart_needed=tuple(s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)),
    )


class Reloads:
    """Reload requests from any thread (the signal handler's), applied by ``apply_pending`` on the one thread
    that may change what the daemon watches (its intake thread)."""

    def __init__(self, apply: Callable[[Settings], ReloadPlan]):
        self._apply = apply
        self._pending: queue.SimpleQueue[tuple[Settings, Future[ReloadPlan]]] = queue.SimpleQueue()

    def request(self, settings: Settings, timeout: float = 60.0) -> ReloadPlan:
        done: Future[ReloadPlan] = Future()
        self._pending.put((settings, done))
        try:
            return done.result(timeout)
        except TimeoutError:
            done.cancel()  # not applied later behind the caller's back (unless it has begun: then it finishes)
            raise

    def apply_pending(self) -> None:
        while True:
            try:
                settings, done = self._pending.get_nowait()
            except queue.Empty:
                return
            if not done.set_running_or_notify_cancel():
                continue  # the requester gave up waiting and said so
            try:
                done.set_result(self._apply(settings))
            except Exception as e:  # the requester logs it; the old configuration stays
                done.set_exception(e)
