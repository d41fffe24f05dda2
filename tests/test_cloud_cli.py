"""Acceptance for the cloud route: the standalone emulator (`python tests/hub_emulator.py`), `diarist run` with
``HF_ENDPOINT`` pointing at it and ``route = "cloud"``, and the cloud commands run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import HfApi

from diarist.handlers.results import validate_result

from conftest import SUITE_TOKEN, copy, cut, finished, wait_until

pytestmark = pytest.mark.slow

TOKEN, NS = SUITE_TOKEN, "alice"
EMULATOR = Path(__file__).with_name("hub_emulator.py")


class Emulator:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EMULATOR), "--port", "0", "--token", TOKEN, "--namespace", NS, "--kill-grace", "0.5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_emulator/state", timeout=10) as r:
            return json.load(r)

    def jobs(self) -> dict[str, Any]:
        return {j["id"]: j for j in self.state()["jobs"]}

    def staged(self) -> list[str]:
        repos = [r for r in self.state()["repos"] if r["id"] == f"{NS}/diarist-staging"]
        # at any revision, or as a stored large file: deleted at head is not gone from the Hub
        history = [p for r in repos for p in r["history_paths"] if p.startswith(("inputs/", "jobs/", "batches/"))]
        return history + [n for r in repos for n in r["lfs"].values() if not n.startswith("code/")]

    def fault(self, spec: dict[str, Any]) -> None:
        req = urllib.request.Request(f"{self.url}/_emulator/faults", data=json.dumps(spec).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        self.proc.terminate()
        assert self.proc.wait(30) == 0


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def clips(sample: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cli-clips")
    return [cut(sample[0], folder / f"talk{n}.wav", 4 + n * 7, 7) for n in range(3)]


def diarist(config: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


def test_standalone_emulator_run_jobs_logs_follow_cancel(
    tmp_path: Path, emulator: Emulator, daemon_factory, clips: list[Path]
) -> None:
    inbox, outbox, state = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"
    inbox.mkdir()
    config = tmp_path / "diarist.toml"
    config.write_text(
        f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "cli-host"\nlog_format = "json"\n\n'
        "[cloud]\npoll_interval = 0.5\nbatch_window = 0\n\n"
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\nstability_seconds = 0.5\n'
        'route = "cloud"\nuser = "sales"\n'
    )
    env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": emulator.url}
    daemon = daemon_factory(config, env).start()

    # 1. a dropped file comes back from an executed job; `logs --follow` streams it live until it ends
    emulator.fault({"job": "slow", "finish_delay": 2.0})
    copy(clips[0], inbox / "talk0.wav")
    job_id = wait_until(lambda: next(iter(emulator.jobs()), None), 60, "a job on the emulator")
    follow = subprocess.Popen(
        [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), "logs", job_id, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    out, err = follow.communicate(timeout=180)
    assert follow.returncode == 0, err
    assert "diarist job: models loaded" in out and "diarist job: all inputs answered" in out
    wait_until((outbox / "talk0.json").exists, 120, "talk0.json")
    doc = validate_result(json.loads((outbox / "talk0.json").read_text()))
    assert doc["engine"]["backend"] == "hf-jobs" and doc["engine"]["job_id"] == job_id
    wait_until(lambda: not emulator.staged(), 30, "staged files deleted")

    # 2. `jobs` lists it with stage, flavor, age, cost and URL; --user filters
    listed = diarist(config, env, "jobs", "--all", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["job_id"] == job_id and row["stage"] == "COMPLETED" and row["files"] == ["talk0.wav"]
    assert row["flavor"] == "a10g-small" and row["url"].endswith(job_id) and row["cost_usd"] is not None
    assert json.loads(diarist(config, env, "jobs", "--all", "--json", "--user", "nobody").stdout) == []
    human = diarist(config, env, "jobs", "--all")
    assert job_id in human.stdout and "COMPLETED" in human.stdout and "$" in human.stdout
    logs = diarist(config, env, "logs", job_id)
    assert logs.returncode == 0 and "all inputs answered" in logs.stdout

    # 3. `cancel` stops a job on the Hub; the file falls back to local, and its JSON says why
    emulator.fault({"job": "stay_scheduling"})
    copy(clips[1], inbox / "talk1.wav")
    second = wait_until(lambda: next((j for j in emulator.jobs() if j != job_id), None), 60, "a second job")
    in_flight = json.loads(diarist(config, env, "jobs", "--json").stdout)
    assert [r["job_id"] for r in in_flight] == [second]
    cancel = diarist(config, env, "cancel", second)
    assert cancel.returncode == 0, cancel.stderr
    assert "canceled" in cancel.stdout and "processed locally" in cancel.stdout
    assert emulator.jobs()[second]["status"]["stage"] == "CANCELED"
    wait_until((outbox / "talk1.json").exists, 120, "talk1.json after the cancel")
    doc = validate_result(json.loads((outbox / "talk1.json").read_text()))
    assert doc["engine"]["backend"] == "pyannote-local"
    assert "canceled by the user" in doc["route"]["fallback"]["reason"]

    # 4. a job labelled app=diarist that this ledger does not know is an orphan, and can be cancelled
    api = HfApi(endpoint=emulator.url, token=TOKEN)
    orphan = api.run_job(
        image="python:3.12",
        command=["python", "-c", "import time; time.sleep(60)"],
        labels={"app": "diarist", "host": "elsewhere"},
        namespace=NS,
    )
    assert orphan.id not in diarist(config, env, "jobs", "--orphans").stdout, "another host's job is its business"
    listed = diarist(config, env, "jobs", "--orphans", "--all-hosts")
    assert orphan.id in listed.stdout and job_id not in listed.stdout and "--cancel-orphans" in listed.stdout
    cancelled = diarist(config, env, "jobs", "--orphans", "--all-hosts", "--cancel-orphans")
    assert cancelled.returncode == 0 and "canceled" in cancelled.stdout
    wait_until(lambda: emulator.jobs()[orphan.id]["status"]["stage"] == "CANCELED", 10, "orphan cancelled")

    # 5. `submit --local` queues through the running daemon's inbox with a sidecar that beats route = "cloud"
    before = len(emulator.jobs())
    submitted = diarist(config, env, "submit", "--local", str(clips[2]))
    assert submitted.returncode == 0, submitted.stderr
    assert "cli-host" in submitted.stdout
    # the sidecar moves with its file after the result is written: wait for the file's end, not its JSON
    finished(daemon, "talk2.wav", timeout=120)
    doc = validate_result(json.loads((outbox / "talk2.json").read_text()))
    assert doc["engine"]["backend"] == "pyannote-local"
    assert "sidecar asks for local" in doc["route"]["reason"]
    assert len(emulator.jobs()) == before
    assert (inbox / ".diarist" / "done" / "talk2.wav.diarist.json").is_file(), "the sidecar is archived with it"
    assert daemon.stop() == 0


def test_submit_cloud_without_a_daemon_runs_one_job_and_waits(
    tmp_path: Path, emulator: Emulator, clips: list[Path]
) -> None:
    config = tmp_path / "diarist.toml"
    config.write_text(f'[daemon]\nledger = "{tmp_path}/ledger.db"\n')
    env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": emulator.url}
    out = tmp_path / "results"
    started = time.monotonic()
    run = diarist(
        config, env, "submit", "--cloud", "--flavor", "t4-small", str(clips[0]), "--out", str(out), timeout=240
    )
    assert run.returncode == 0, run.stderr
    doc = validate_result(json.loads((out / "talk0.json").read_text()))
    assert doc["engine"]["backend"] == "hf-jobs" and doc["engine"]["flavor"] == "t4-small"
    (job,) = emulator.jobs().values()
    assert job["flavor"] == "t4-small" and job["status"]["stage"] == "COMPLETED"
    assert "cloud job" in run.stderr and time.monotonic() - started < 240


def test_cloud_commands_without_a_token_say_how_to_set_one(tmp_path: Path) -> None:
    config = tmp_path / "diarist.toml"
    config.write_text(f'[daemon]\nledger = "{tmp_path}/ledger.db"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    result = subprocess.run(
        [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), "logs", "abc"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "HF_TOKEN" in result.stderr and "huggingface.co/settings/tokens" in result.stderr


def test_doctor_checks_the_token_against_the_hub(tmp_path: Path, emulator: Emulator) -> None:
    config = tmp_path / "diarist.toml"
    config.write_text(f'[daemon]\nledger = "{tmp_path}/ledger.db"\n')
    good = diarist(config, {"HF_TOKEN": TOKEN, "HF_ENDPOINT": emulator.url}, "doctor")
    assert f"[ok] cloud    Hugging Face Jobs in {NS} at {emulator.url}" in good.stdout, good.stdout
    bad = diarist(config, {"HF_TOKEN": "hf_expired_token", "HF_ENDPOINT": emulator.url}, "doctor")
    assert bad.returncode == 1
    assert "[FAIL] cloud" in bad.stdout and "HF_TOKEN" in bad.stdout and "hf_expired_token" not in bad.stdout
