"""SIGKILL ``diarist run`` again and again while it works through 50 files: nothing lost, nothing done twice.

Kills land at named crash points (``handlers/crashpoints.py``: right after a claim, during inference, between
the stored result and its files, between the RTTM and the JSON, after the result and after the archive
move) and at random moments (stability wait, decoding, anywhere). Meanwhile another thread reads every result
and error document in the outbox the moment it appears: each must parse whole, at every instant.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from diarist.daemon.config import parse_settings
from diarist.daemon.ledger import Ledger
from diarist.daemon.service import TEMPORARY_MAX_AGE, Daemon
from diarist.handlers.results import parse_rttm, validate_result

from audiogen import slices
from conftest import Poller, copy, daemon_config, done_counts, ledger_rows, wait_until

FILES = 50
# (crash point, pass) for the planned kills; random kills go between them
PLANNED = [
    "claimed:2",
    "inference:1",
    "result_stored:2",
    "result_rttm:2",
    "result_written:3",
    "archived:2",
    "claimed:4",
    "inference:3",
    "result_rttm:5",
    "archived:4",
]


class OutboxReader(Poller):
    """Reads every visible result file as soon as it exists and records any that is not whole."""

    interval = 0.01

    def __init__(self, outbox: Path):
        super().__init__()
        self.outbox, self.torn, self.read = outbox, [], 0

    def poll(self) -> None:
        for path in list(self.outbox.rglob("*")) if self.outbox.exists() else []:
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                text = path.read_text()
            except FileNotFoundError:  # replaced or removed between listing and reading: fine
                continue
            try:
                if path.name.endswith(".rttm"):
                    parse_rttm(text)
                    if text and not text.endswith("\n"):
                        raise ValueError("no final newline")
                else:
                    doc = json.loads(text)
                    if path.suffixes == [".json"]:
                        validate_result(doc)
                self.read += 1
            except Exception as e:  # noqa: BLE001 - any parse failure is a torn file
                self.torn.append(f"{path.name}: {e}")


@pytest.mark.slow
def test_fifty_files_survive_repeated_sigkills(tmp_path, sample, daemon_factory):
    config, inbox, outbox, db = daemon_config(tmp_path)
    clips = slices(sample[0], tmp_path / "src", FILES, 3.0)
    rng = random.Random(7)
    waves = [clips[i : i + 5] for i in range(0, FILES, 5)]
    kills = {"planned": 0, "random": 0}
    logs: list[str] = []

    with OutboxReader(outbox) as reader:
        for n, point in enumerate(PLANNED):
            for clip in waves[n] if n < len(waves) else []:
                copy(clip, inbox / clip.name)
            d = daemon_factory(config, env={"DIARIST_CRASH_AT": point})
            try:
                d.start()
            except AssertionError:  # died at its crash point before it said ready (work starts before that)
                pass
            # it dies at its crash point or, when that is never reached, is killed after a while
            try:
                code = d.proc.wait(90)
            except subprocess.TimeoutExpired:
                code = d.stop(signal.SIGKILL)
            assert code == -signal.SIGKILL, d.text()[-2000:]
            kills["planned"] += 1
            logs.append(d.text())

            # then a run without a plan, killed at a random moment: often mid-stability, mid-decode or idle
            r = daemon_factory(config).start()
            threading.Event().wait(rng.uniform(0.2, 4.0))
            assert r.stop(signal.SIGKILL) == -signal.SIGKILL
            kills["random"] += 1
            logs.append(r.text())

        final = daemon_factory(config).start()
        for clip in clips:
            wait_until(lambda c=clip: (outbox / f"{c.stem}.json").exists(), 300, f"{clip.stem}.json")
        # a write the last kill cut short may be younger than the start's sweep takes (another host's write in
        # progress looks the same); the daemon sweeps once more when it has aged
        wait_until(lambda: not [p for p in outbox.rglob(".*") if p.is_file()], 120, "temporaries swept")
        assert final.stop() == 0
        logs.append(final.text())

    assert kills["planned"] == len(PLANNED) and kills["random"] >= 10
    assert reader.torn == [], reader.torn
    assert reader.read > FILES, "the reader saw the outbox while it was written"

    for clip in clips:
        doc = validate_result(json.loads((outbox / f"{clip.stem}.json").read_text()))
        assert doc["source"]["name"] == clip.name
        _uri, segments = parse_rttm((outbox / f"{clip.stem}.rttm").read_text())
        assert len(segments) == len(doc["segments"])
        archived = list((inbox / ".diarist" / "done").glob(f"{clip.stem}*.wav"))
        assert [p.name for p in archived] == [clip.name], archived
        assert archived[0].read_bytes() == clip.read_bytes()
    assert not list(inbox.glob("*.wav")), "every input left the inbox"
    processing = inbox / ".diarist" / "processing"
    assert not processing.exists() or not [p for p in processing.rglob("*") if p.is_file()]
    assert sorted(p.name for p in outbox.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{c.stem}.json" for c in clips] + [f"{c.stem}.rttm" for c in clips]
    ), "only whole results: no status, error or duplicate documents left"
    leftovers = [p for p in outbox.rglob(".*") if p.is_file()]
    assert leftovers == [], f"temporary files left in the outbox: {leftovers}"

    # the ledger: one file row done per input, done once; inference repeated only where a kill cut it short
    rows = ledger_rows(db)
    assert sorted(r["rel_path"] for r in rows if r["state"] == "done") == sorted(c.name for c in clips)
    assert all(r["state"] == "done" for r in rows), [r for r in rows if r["state"] != "done"]
    assert all(count == 1 for count in done_counts(db).values()), done_counts(db)
    # One worker thread: a process has at most one inference in flight, so each SIGKILL (planned or random)
    # repeats at most one. A planned kill at a non-inference point cuts one short too when it lands while the
    # worker is mid-inference on another file (``claimed:4`` fires in the intake thread), and so does the
    # SIGKILL of a planned run whose point is never reached.
    assert all(r["inference_runs"] >= 1 for r in rows)
    assert sum(r["inference_runs"] for r in rows) <= FILES + kills["planned"] + kills["random"]
    text = "\n".join(logs)
    for clip in clips:
        assert text.count(f'"file": "{clip.name}"') >= 1
        dones = [line for line in text.splitlines() if '"event": "done"' in line and f'"{clip.name}"' in line]
        assert len(dones) <= 1, dones


def test_a_write_cut_short_just_before_a_start_is_swept_once_it_has_aged(tmp_path: Path) -> None:
    """The start's sweep leaves temporaries younger than ``TEMPORARY_MAX_AGE`` (they may be another host's write
    in progress); one left by a crash just before the start is removed once it has aged, without a restart."""
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    outbox.mkdir()
    young = outbox / ".talk.json.x1y2z3.diarist-tmp"
    young.write_text('{"partial')
    old = outbox / ".call.json.a1b2c3.diarist-tmp"
    old.write_text('{"partial')
    os.utime(old, (time.time() - TEMPORARY_MAX_AGE - 5,) * 2)
    settings = parse_settings(
        {
            "daemon": {"ledger": str(tmp_path / "l.db"), "host_id": "h1", "lease_seconds": 2.0},
            "inbox": [{"path": str(inbox), "outbox": str(outbox), "polling": True}],
        },
        env={},
    )
    now = [time.time()]
    daemon = Daemon(settings, engine=None, ledger=Ledger(settings.daemon.ledger), wall=lambda: now[0])  # type: ignore[arg-type]
    daemon.start()
    try:
        assert not old.exists() and young.exists()  # the start's sweep
        time.sleep(1.0)  # several lease passes: still too young
        assert young.exists()
        now[0] += TEMPORARY_MAX_AGE
        wait_until(lambda: not young.exists(), 10, "the aged temporary swept")
    finally:
        daemon.stop(timeout=10)
