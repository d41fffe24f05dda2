"""`diarist status` and `diarist doctor` as real subprocesses on a real ledger and real folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from diarist.daemon.ledger import Ledger, State


def diarist(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diarist.daemon.cli", *args], capture_output=True, text=True, timeout=120
    )


def config(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    path = tmp_path / "diarist.toml"
    path.write_text(
        f'[daemon]\nledger = "{tmp_path}/ledger.db"\n\n'
        f'[[inbox]]\npath = "{tmp_path}/in"\noutbox = "{tmp_path}/out"\npolling = "auto"\n'
    )
    return path


class TestStatus:
    def test_lists_files_and_counts(self, tmp_path):
        """status prints per-state counts and each recent file with its state and error."""
        cfg = config(tmp_path)
        ledger = Ledger(tmp_path / "ledger.db")
        ok = ledger.discover(str(tmp_path / "in"), "talk.wav")
        ledger.transition(ok, State.DONE)
        bad = ledger.discover(str(tmp_path / "in"), "bad.wav")
        ledger.transition(bad, State.FAILED, error="not a readable audio file")
        proc = diarist("status", "--config", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert "done 1" in proc.stdout and "failed 1" in proc.stdout
        assert "talk.wav" in proc.stdout and "not a readable audio file" in proc.stdout
        data = json.loads(diarist("status", "--config", str(cfg), "--json").stdout)
        assert data["counts"] == {"done": 1, "failed": 1}

    def test_without_ledger_says_so(self, tmp_path):
        """status before the daemon ever ran explains there is no ledger yet (exit 0)."""
        proc = diarist("status", "--config", str(config(tmp_path)))
        assert proc.returncode == 0 and "no ledger" in proc.stdout


class TestDoctor:
    def test_reports_tools_models_and_watch_mode(self, tmp_path):
        """doctor checks ffmpeg, the bundled models, folders, and prints the watch mode per inbox."""
        proc = diarist("doctor", "--config", str(config(tmp_path)))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[ok] ffmpeg" in proc.stdout and "bundled offline models" in proc.stdout
        assert "[ok] asr      UsefulSensors/moonshine-base" in proc.stdout
        assert "native events" in proc.stdout or "polling" in proc.stdout

    def test_reports_the_api_address_never_its_token(self, tmp_path):
        """With [api] on, doctor says where it listens, how far it reaches and how many tokens guard it."""
        cfg = config(tmp_path)
        secret = "doctor-test-token-0a1b2c3d4e5f"
        (tmp_path / "tokens").write_text(secret + "\n")
        cfg.write_text(cfg.read_text() + f'\n[api]\nlisten = "0.0.0.0:0"\ntoken_file = "{tmp_path / "tokens"}"\n')
        proc = diarist("doctor", "--config", str(cfg))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[ok] api      http://0.0.0.0:0 (beyond this machine, 1 token(s))" in proc.stdout
        assert secret not in proc.stdout + proc.stderr

    def test_missing_inbox_fails(self, tmp_path):
        """doctor exits 1 and marks FAIL when an inbox folder is missing."""
        cfg = config(tmp_path)
        (tmp_path / "in").rmdir()
        proc = diarist("doctor", "--config", str(cfg))
        assert proc.returncode == 1 and "[FAIL] inbox" in proc.stdout


class TestUnknownFlavor:
    def test_run_refuses_to_start_and_names_the_valid_flavors(self, tmp_path):
        """`diarist run` with a flavor the Jobs API does not list exits 2 before watching anything."""
        cfg = config(tmp_path)
        cfg.write_text(cfg.read_text() + '\n[cloud]\nflavor = "h100"\n')
        proc = diarist("run", "--config", str(cfg))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "'h100' is not a Hugging Face Jobs hardware flavor" in proc.stderr
        assert "valid flavors: cpu-basic" in proc.stderr and "h200" in proc.stderr
        assert not (tmp_path / "ledger.db").exists()
