#!/usr/bin/env python3
"""Soak: drop recordings into a real ``diarist run`` for a chosen time while killing it again and again.

Not part of the test command (``make soak MINUTES=30``). For ``--minutes`` it keeps dropping short clips of
real speech at random moments, lets each daemon run for a random while and SIGKILLs it (every third run at
one of the named crash points of ``handlers/crashpoints.py``, the others at a random moment), then starts
another. At the end one last daemon finishes everything and the script prints the counts:

    files 412  kills 37  results 412  duplicates 0  lost 0  failed 0  (31.0 min)

``duplicates``: inputs with more than one result, or done more than once in the ledger. ``lost``: inputs
with no result, or not archived, or changed. Exit status 1 when either is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

from audiogen import slices  # noqa: E402
from conftest import done_counts  # noqa: E402

POINTS = ("claimed", "inference", "result_stored", "result_rttm", "result_written", "archived")


def sample_wav() -> Path:
    from diarist.daemon.cli import sample_audio

    return sample_audio()[0]


class Run:
    def __init__(self, config: Path, log: Path, env: dict[str, str]):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), "run"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def counts(inbox: Path, outbox: Path, db: Path, dropped: dict[str, bytes]) -> dict[str, int]:
    done_twice = sum(1 for n in done_counts(db).values() if n > 1)
    results = [p for p in outbox.glob("*.json") if not p.name.endswith((".status.json", ".error.json"))]
    per_input: dict[str, int] = {}
    for p in results:
        name = json.loads(p.read_text())["source"]["name"]
        per_input[name] = per_input.get(name, 0) + 1
    lost = 0
    for name, data in dropped.items():
        archived = inbox / ".diarist" / "done" / name
        if per_input.get(name, 0) == 0 or not archived.exists() or archived.read_bytes() != data:
            lost += 1
    return {
        "files": len(dropped),
        "results": len(results),
        "duplicates": sum(1 for n in per_input.values() if n > 1) + done_twice,
        "lost": lost,
        "failed": len(list(outbox.glob("*.error.json"))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep dropping and killing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="diarist-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    inbox, outbox, state = work / "inbox", work / "outbox", work / "state"
    inbox.mkdir(exist_ok=True)
    config = work / "diarist.toml"
    config.write_text(
        f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "soak"\nrescan_interval = 3\nlog_format = "json"\n'
        f"retry_interval = 2\n\n"
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\nstability_seconds = 1.0\n'
    )
    pool = slices(sample_wav(), work / "pool", 400, 3.0, first=20, hop=0.05)
    dropped: dict[str, bytes] = {}
    kills, runs, started = 0, 0, time.monotonic()
    deadline = started + args.minutes * 60
    while time.monotonic() < deadline and len(dropped) < len(pool):
        runs += 1
        env = {"DIARIST_CRASH_AT": f"{rng.choice(POINTS)}:{rng.randint(1, 3)}"} if runs % 3 == 0 else {}
        run = Run(config, work / "daemon.log", env)
        until = time.monotonic() + rng.uniform(5, 40)
        while time.monotonic() < min(until, deadline) and run.proc.poll() is None and len(dropped) < len(pool):
            clip = pool[len(dropped)]
            data = clip.read_bytes()
            tmp = inbox / f".{clip.name}.part"
            shutil.copyfile(clip, tmp)
            os.replace(tmp, inbox / clip.name)
            dropped[clip.name] = data
            time.sleep(rng.uniform(0.0, 2.0))
        run.kill()
        kills += 1
        print(
            f"  run {runs}: killed{' at ' + env['DIARIST_CRASH_AT'] if env else ''}; {len(dropped)} dropped", flush=True
        )

    final = Run(config, work / "daemon.log", {})
    finish_by = time.monotonic() + 600 + 2 * len(dropped)
    while time.monotonic() < finish_by:
        have = {p.stem for p in outbox.glob("*.json")} if outbox.exists() else set()
        if all(Path(n).stem in have for n in dropped):
            break
        time.sleep(1)
    final.proc.send_signal(signal.SIGTERM)
    final.proc.wait(300)
    final.log.close()

    c = counts(inbox, outbox, state / "ledger.db", dropped)
    minutes = (time.monotonic() - started) / 60
    print(
        f"files {c['files']}  kills {kills}  results {c['results']}  duplicates {c['duplicates']}  "
        f"lost {c['lost']}  failed {c['failed']}  ({minutes:.1f} min; {work})"
    )
    return 1 if c["duplicates"] or c["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
