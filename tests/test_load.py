"""Load: 1,000 small recordings dropped at once across five inboxes into a real ``diarist run``.

Every one is processed exactly once (one result each, one ``done`` in the ledger and in the log), the
watcher sees them all within seconds, and the daemon's memory stays flat while it works through them: its
resident size once the first tenth is done and at the end differ by less than 150 MB. The numbers are
printed (``pytest -s``) and written to ``load-report.txt`` in the test's folder.

The 1,000 files are 200 distinct one-second recordings, each dropped once into every inbox under its own
name: 200 run the models, 800 reuse a result (the path a team's shared inbox takes for re-dropped copies).
That keeps the test near four minutes on two cores; 1,000 distinct files take about twelve (measured: 1.4
files/s, RSS 1017 -> 1018 MB), which the soak script (``make soak``) covers instead.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from diarist.handlers.results import validate_result

from audiogen import slices
from conftest import Poller, ledger_rows, wait_until

FILES, INBOXES, SECONDS = 1000, 5, 1.0
DISTINCT = FILES // INBOXES


class RssSampler(Poller):
    """Samples a process's resident size every 0.25 s, with how many results existed at that moment."""

    interval = 0.25

    def __init__(self, pid: int, count):
        super().__init__()
        self.pid, self.count, self.samples = pid, count, []

    def _rss_mb(self) -> float | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        kb = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:"))
        return kb / 1024

    def poll(self) -> None:
        rss = self._rss_mb()
        if rss is not None:
            self.samples.append((self.count(), rss))

    def at(self, done: int) -> float:
        """The resident size when ``done`` results existed (the first sample at or past it)."""
        return next(rss for n, rss in self.samples if n >= done)


@pytest.mark.slow
def test_thousand_files_across_five_inboxes_each_done_once(tmp_path, sample, daemon_factory):
    state = tmp_path / "state"
    pairs = [(tmp_path / f"inbox{k}", tmp_path / f"outbox{k}") for k in range(INBOXES)]
    text = f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "load-host"\nrescan_interval = 5\nlog_format = "json"\n'
    for inbox, outbox in pairs:
        inbox.mkdir()
        text += f'\n[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\nstability_seconds = 1.5\n'
    config = tmp_path / "diarist.toml"
    config.write_text(text)
    # distinct one-second slices of real speech, 110 ms apart from 4.4 s on (the sample opens with silence)
    distinct = slices(sample[0], tmp_path / "src", DISTINCT, SECONDS, first=40, hop=0.11)
    placed: dict[str, tuple[Path, Path]] = {}
    made: list[Path] = []
    for k, pair in enumerate(pairs):
        for clip in distinct:
            copy = clip.with_name(f"{k}-{clip.name}")
            shutil.copyfile(clip, copy)
            placed[copy.name] = pair
            made.append(copy)

    d = daemon_factory(config).start()

    def results() -> int:
        return sum(
            1
            for _, outbox in pairs
            if outbox.exists()
            for p in os.scandir(outbox)
            if p.name.endswith(".json") and not p.name.endswith((".status.json", ".error.json"))
        )

    with RssSampler(d.proc.pid, results) as rss:
        dropped = time.monotonic()
        for clip in made:  # a rename per file: all 1,000 appear within a fraction of a second
            os.rename(clip, placed[clip.name][0] / clip.name)
        wait_until(lambda: d.text().count('"event": "discovered"') >= FILES, 120, "every file discovered")
        seen_after = time.monotonic() - dropped
        wait_until(lambda: results() >= FILES, 1500, f"{FILES} results", interval=1.0)
        wall = time.monotonic() - dropped
    assert d.stop() == 0

    for name, (inbox, outbox) in placed.items():
        stem = Path(name).stem
        doc = validate_result(json.loads((outbox / f"{stem}.json").read_text()))
        assert doc["source"]["name"] == name and (outbox / f"{stem}.rttm").exists()
        assert (inbox / ".diarist" / "done" / name).exists()
    for inbox, outbox in pairs:
        assert not list(inbox.glob("*.wav")), "every input left its inbox"
        assert sorted(p.name for p in outbox.iterdir()) == sorted(
            f"{Path(n).stem}{ext}" for n, (_, o) in placed.items() if o == outbox for ext in (".json", ".rttm")
        ), "nothing but one result per input"
    rows = ledger_rows(state / "ledger.db")
    assert len(rows) == FILES and all(r["state"] == "done" for r in rows)
    runs: dict[str, int] = {}
    for r in rows:
        runs[r["sha256"]] = runs.get(r["sha256"], 0) + r["inference_runs"]
    assert len(runs) == DISTINCT and set(runs.values()) == {1}, "each recording's models ran exactly once"
    dones = [line for line in d.text().splitlines() if '"event": "done"' in line]
    assert sorted(json.loads(line)["file"] for line in dones) == sorted(placed), "each done once in the log"

    start, end = rss.at(FILES // 10), rss.at(FILES)
    peak = max(r for _, r in rss.samples)
    report = (
        f"load: {FILES} files x {SECONDS:g} s across {INBOXES} inboxes\n"
        f"  all discovered after {seen_after:.1f} s; all done after {wall:.0f} s ({FILES / wall:.1f} files/s)\n"
        f"  daemon RSS: {start:.0f} MB at {FILES // 10} done, {end:.0f} MB at {FILES}, peak {peak:.0f} MB\n"
    )
    (tmp_path / "load-report.txt").write_text(report)
    print("\n" + report)
    assert end - start < 150, f"memory grew with the number of files processed:\n{report}"
