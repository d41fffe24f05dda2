"""Several hosts on one share: this host's heartbeat on each inbox, and taking back a dead host's claims.

Layout inside each inbox (see ``policies/leases.py`` for why tokens, not timestamps)::

    .diarist/hosts/<host-id>.json        rewritten in place every lease/6 s with a new token
    .diarist/processing/<host-id>/...    that host's claims

A claim is a rename into the claimer's own folder, so no two hosts ever hold one file. When a host's
token stops changing for a whole lease, any other host moves its claims back into the inbox (each file
by one rename, so of several hosts doing it at once each file moves once), where the normal intake
claims them again.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from diarist.daemon.config import InboxSettings
from diarist.handlers import intake
from diarist.policies.leases import Sighting, expired, observe
from diarist.policies.sidecar import SIDECAR_SUFFIX

log = structlog.get_logger("diarist")

#: renewals per lease: a host must miss this many before the others act
RENEWALS_PER_LEASE = 6


def hosts_dir(inbox: Path) -> Path:
    return intake.state_dir(inbox) / "hosts"


@dataclass(frozen=True)
class Reclaimed:
    inbox: InboxSettings
    host: str
    #: where the file is now, back in the inbox
    path: Path


class ShareLeases:
    """Renew this host's heartbeat in every inbox; ``check`` returns the files taken back from dead hosts.

    Time is injected: ``clock`` (monotonic) measures leases, ``wall`` only labels the heartbeat for people.
    """

    def __init__(
        self,
        inboxes: Sequence[InboxSettings],
        host: str,
        lease_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self._inboxes = list(inboxes)
        self.host = host
        self.lease = lease_seconds
        self._clock = clock
        self._wall = wall
        self._instance = uuid.uuid4().hex
        self._seq = 0
        self._sightings: dict[Path, dict[str, Sighting]] = {}
        self._warned_twin = 0.0

    @property
    def renew_every(self) -> float:
        return self.lease / RENEWALS_PER_LEASE

    def add_inboxes(self, inboxes: Sequence[InboxSettings]) -> None:
        """After a reload: inboxes added; none is dropped until the next start (files claimed there before the
        reload stay leased). A new list, swapped in whole: the lease thread may be walking the old one."""
        known = {i.path for i in self._inboxes}
        self._inboxes = [*self._inboxes, *(i for i in inboxes if i.path not in known)]

    def renew(self) -> None:
        """Write a new token into every inbox; a share that refuses is logged, the others still get theirs."""
        self._seq += 1
        doc = {
            "host": self.host,
            "machine": socket.gethostname(),
            "pid": os.getpid(),
            "instance": self._instance,
            "seq": self._seq,
            "at": datetime.fromtimestamp(self._wall(), UTC).isoformat(timespec="seconds"),
            "lease_seconds": self.lease,
        }
        data = json.dumps(doc) + "\n"
        for inbox in self._inboxes:
            path = hosts_dir(inbox.path) / f"{self.host}.json"
            try:
                self._check_twin(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                # in place, not write-and-rename: NFS clients revalidate an open file's data (close-to-open)
                # but may keep resolving a name to the old inode for a minute after a rename
                with open(path, "w", encoding="utf-8") as f:
                    f.write(data)
            except OSError as e:
                log.warning("lease_renew_failed", inbox=str(inbox.path), error=str(e))

    def _check_twin(self, path: Path) -> None:
        """Someone else writing our heartbeat means two daemons share one host id: both would resume each
        other's claims. Say so loudly (once a minute); refusing to run would stop the other host too."""
        try:
            theirs = json.loads(path.read_text(encoding="utf-8")).get("instance")
        except (OSError, ValueError, AttributeError):
            return
        if self._seq > 1 and theirs not in (None, self._instance) and self._clock() - self._warned_twin > 60:
            self._warned_twin = self._clock()
            log.error(
                "host_id_in_use",
                host=self.host,
                heartbeat=str(path),
                hint="two daemons use this host id; give each host its own [daemon] host_id (or DIARIST_HOST_ID)",
            )

    def check(self) -> list[Reclaimed]:
        """Read every other host's heartbeat; move the claims of those whose lease expired back to the inbox."""
        moved: list[Reclaimed] = []
        now = self._clock()
        for inbox in self._inboxes:
            readings = self._readings(inbox.path)
            seen = observe(self._sightings.get(inbox.path, {}), readings, now)
            self._sightings[inbox.path] = seen
            for host in expired(seen, now, self.lease, me=self.host):
                moved.extend(self._take_back(inbox, host))
        return moved

    def _readings(self, inbox: Path) -> dict[str, str | None]:
        readings: dict[str, str | None] = {}
        try:
            for entry in os.scandir(intake.state_dir(inbox) / "processing"):
                if entry.is_dir(follow_symlinks=False):
                    readings[entry.name] = None
        except OSError:
            pass
        try:
            for entry in os.scandir(hosts_dir(inbox)):
                if entry.name.endswith(".json"):
                    try:
                        readings[entry.name[:-5]] = Path(entry.path).read_text(encoding="utf-8")
                    except OSError:
                        readings[entry.name[:-5]] = None
        except OSError:
            pass
        return readings

    def _take_back(self, inbox: InboxSettings, host: str) -> list[Reclaimed]:
        folder = intake.processing_dir(inbox.path, host)
        moved = []
        for root, _dirs, files in os.walk(folder):
            for name in files:
                if name.endswith(SIDECAR_SUFFIX):
                    continue  # travels with its audio below
                source = Path(root) / name
                rel = source.relative_to(folder)
                # first a rename into our own folder, which only one of several hosts doing this wins; only
                # then the no-clobber move into the inbox (a crash in between: we adopt it at our next start)
                mine = intake.unique_path(intake.processing_dir(inbox.path, self.host) / rel)
                if not intake.claim(source, mine):
                    continue  # another host took it back first
                my_sidecar = mine.with_name(mine.name + SIDECAR_SUFFIX)
                has_sidecar = intake.claim(source.with_name(name + SIDECAR_SUFFIX), my_sidecar)
                back = intake.move_no_clobber(mine, inbox.path / rel)
                if has_sidecar:
                    intake.move_no_clobber(my_sidecar, back.with_name(back.name + SIDECAR_SUFFIX))
                log.warning("reclaimed", file=rel.as_posix(), inbox=str(inbox.path), dead_host=host, to=str(back))
                moved.append(Reclaimed(inbox, host, back))
        return moved
