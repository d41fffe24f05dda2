"""Two daemons (different host ids, separate ledgers) on one inbox: exactly once, and a dead host's claims
are finished by the other after its lease expires."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from audiogen import slices
from conftest import ledger_rows, log_events, wait_until

# Long enough that a live host is never taken for dead: on a loaded machine (torch in two daemons, fsyncs on
# two cores) a heartbeat can stall for seconds, and a 3 s lease let the other host take a live host's claims.
# 20 s (renewed every 20/6 s) tolerates a stall of over 16 s; it only delays the takeover after the SIGKILL,
# which the 600 s wait for the last results covers many times over.
LEASE = 20.0


def write_config(tmp_path: Path, host: str, inbox: Path, outbox: Path) -> tuple[Path, Path]:
    ledger = tmp_path / host / "ledger.db"
    config = tmp_path / f"{host}.toml"
    config.write_text(
        f'[daemon]\nledger = "{ledger}"\nhost_id = "{host}"\nlog_format = "json"\nrescan_interval = 2\n'
        f"lease_seconds = {LEASE}\n"
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\nstability_seconds = 1\n'
        "[cloud]\nenabled = false\n"
    )
    return config, ledger


def drop(files: list[Path], inbox: Path) -> None:
    """All at once: each complete before it appears (written aside, renamed in)."""
    for f in files:
        tmp = inbox / (f.name + ".part")
        tmp.write_bytes(f.read_bytes())
    for f in files:
        os.rename(inbox / (f.name + ".part"), inbox / f.name)


def done_rows(ledger: Path) -> list[dict]:
    return [r for r in ledger_rows(ledger) if r["state"] == "done"]


def events(text: str, name: str) -> list[dict]:
    return [e for e in log_events(text) if e["event"] == name]


def results(outbox: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in outbox.glob("clip*.json") if ".status" not in p.name}


@pytest.mark.slow
class TestTwoHostsOneInbox:
    def test_exactly_once_and_takeover_after_lease_expiry(self, tmp_path, sample, daemon_factory):
        """100 files to two hosts: 100 results, each processed once; then one host dies mid-round and the
        other finishes its claims once the lease has expired."""
        inbox, outbox = tmp_path / "share/inbox", tmp_path / "share/outbox"
        inbox.mkdir(parents=True)
        (config_a, ledger_a), (config_b, ledger_b) = (write_config(tmp_path, h, inbox, outbox) for h in ("a", "b"))
        a, b = daemon_factory(config_a).start(), daemon_factory(config_b).start()

        drop(slices(sample[0], tmp_path / "round1", 100, 2.0), inbox)
        wait_until(lambda: len(results(outbox)) == 100, 600, "100 results")
        wait_until(lambda: len(done_rows(ledger_a)) + len(done_rows(ledger_b)) == 100, 60, "100 done rows")
        rows_a, rows_b = done_rows(ledger_a), done_rows(ledger_b)
        shas_a, shas_b = {r["sha256"] for r in rows_a}, {r["sha256"] for r in rows_b}
        assert rows_a and rows_b, "both hosts took part"
        assert not shas_a & shas_b, "a file was processed by both hosts"
        assert len(shas_a | shas_b) == 100
        assert all(r["inference_runs"] == 1 for r in rows_a + rows_b)
        assert len(events(a.text(), "running")) + len(events(b.text(), "running")) == 100
        assert {d["source"]["relative_path"] for d in results(outbox).values()} == {
            f"clip{i:03}.wav" for i in range(100)
        }

        # round two: host a dies (SIGKILL, no goodbye) holding claims; b takes them back and finishes them
        # b is paused (SIGSTOP, well within its lease) while the files arrive, so that a certainly wins some
        # claims: racing, b could win every one while a's worker has the CPU, and a would die holding none
        held = inbox / ".diarist/processing/a"
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            drop(slices(sample[0], tmp_path / "round2", 40, 2.0, first=100), inbox)
            wait_until(lambda: len(list(held.glob("*.wav"))) >= 3, 120, "host a holding claims")
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        a.stop(signal.SIGKILL)
        stranded = {p.name for p in held.glob("*.wav")}
        assert stranded
        wait_until(lambda: len(results(outbox)) == 140, 600, "140 results")
        assert b.stop() == 0

        assert list(held.glob("*.wav")) == []
        reclaimed = {Path(e["to"]).name for e in events(b.text(), "reclaimed")}
        assert stranded <= reclaimed
        assert all(e["dead_host"] == "a" for e in events(b.text(), "reclaimed"))
        # every input archived exactly once, none left behind, one result each
        archived = sorted(p.name for p in (inbox / ".diarist/done").iterdir())
        assert archived == [f"clip{i:03}.wav" for i in range(140)]
        assert not [p for p in inbox.iterdir() if p.is_file()]
        assert len(results(outbox)) == 140 and not list(outbox.glob("*(2)*"))
