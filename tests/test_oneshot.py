"""``diarist submit`` without a daemon runs the daemon's own rooms (Router, CloudRoute and its job lifecycle,
LocalRunner), in-process against the loopback Hub emulator with the real ``huggingface_hub`` client, a real
ledger and real files: the per-user cap, the learned throughput, the ``[cloud]`` timing settings and the
clean-up after a refused start all hold for it as they do for the daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from diarist.daemon.cloud_jobs import DEADLINE_GRACE_SECONDS
from diarist.daemon.cloud_terms import THROUGHPUT_KEY
from diarist.daemon.config import Settings, parse_settings
from diarist.daemon.ledger import JobState, Ledger, State
from diarist.daemon.oneshot import RunRequest, run_files
from diarist.handlers import audio
from diarist.handlers.results import validate_result
from diarist.policies.budget import BudgetCaps
from diarist.policies.flavor import DEFAULT_THROUGHPUT, job_timeout_for
from diarist.policies.route import RouteSetting
from diarist.policies.sidecar import FileRequest

from conftest import SUITE_TOKEN, cut, noon_timezone, wait_until
from hub_emulator import HubEmulator

pytestmark = pytest.mark.slow

TOKEN, NS = SUITE_TOKEN, "alice"
STAGING = f"{NS}/diarist-staging"
CLOUD = FileRequest(route=RouteSetting.CLOUD, flavor="t4-small", user="sales")


@pytest.fixture(scope="module")
def clip(sample: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cut(sample[0], tmp_path_factory.mktemp("oneshot") / "talk.wav", 3, 6)


@pytest.fixture
def emu() -> Iterator[HubEmulator]:
    with HubEmulator(token=TOKEN, namespace=NS, kill_grace=0.5) as emulator:
        yield emulator


def settings_for(tmp_path: Path, emu: HubEmulator, users: dict[str, Any] | None = None, **cloud: Any) -> Settings:
    return parse_settings(
        {
            "daemon": {"ledger": str(tmp_path / "state" / "ledger.db"), "host_id": "cli-host"},
            "cloud": {"endpoint": emu.url, "poll_interval": 0.3, "timezone": noon_timezone(), **cloud},
            "users": users or {},
        },
        env={"HF_TOKEN": TOKEN},
    )


def run(settings: Settings, clip: Path, out: Path, engine: Any, request: FileRequest = CLOUD) -> int:
    return run_files(
        settings,
        [clip],
        RunRequest(request),
        ledger=Ledger(settings.daemon.ledger),
        out=out,
        engine=lambda: engine,
        sleep=lambda s: time.sleep(min(s, 0.3)),
    )


def staged_leftovers(emu: HubEmulator) -> list[str]:
    """Anything of a batch retrievable from the Hub: at head, at any revision, or as a stored large file."""
    return emu.batch_leftovers(STAGING)


def spend(ledger: Ledger, settings: Settings, usd: str, user: str) -> None:
    """A settled job of ``user`` this month, as an earlier run (daemon or submit) leaves it."""
    ledger.reserve_job(
        "earlier",
        [],
        caps=BudgetCaps(),
        reserve_usd=Decimal(usd),
        tz=ZoneInfo(settings.cloud.timezone),
        user=user,
        namespace=NS,
        repo=STAGING,
        flavor="t4-small",
        timeout_seconds=600,
    )
    ledger.settle_job("earlier", state=JobState.COLLECTED, cost_usd=Decimal(usd))


@pytest.mark.parametrize("fallback", [False, True], ids=["fallback-off", "fallback-on"])
def test_the_per_user_cap_holds_for_submit_without_a_daemon(
    tmp_path: Path, emu: HubEmulator, clip: Path, engine: Any, capsys: pytest.CaptureFixture[str], fallback: bool
) -> None:
    """sales has spent $0.99 of a $1.00 monthly cost_limit: no job starts; with fallback off the run stops
    saying why (a terminal does not wait a month), with it on the file is processed here."""
    settings = settings_for(tmp_path, emu, users={"sales": {"cost_limit": 1.0}}, fallback=fallback)
    spend(Ledger(settings.daemon.ledger), settings, "0.99", "sales")
    code = run(settings, clip, tmp_path / "out", engine)
    err = capsys.readouterr().err
    assert not emu.jobs, "nothing may start over the user's cap"
    assert "cost_limit" in err
    if fallback:
        assert code == 0
        doc = validate_result(json.loads((tmp_path / "out" / "talk.json").read_text()))
        assert doc["engine"]["backend"] == "pyannote-local" and "cost_limit" in doc["route"]["reason"]
    else:
        assert code == 1 and not (tmp_path / "out" / "talk.json").exists()
        assert "deferred" in err and "next budget month" in err


def test_the_job_is_sized_from_the_learned_throughput_and_the_cloud_settings(
    tmp_path: Path, emu: HubEmulator, clip: Path, engine: Any
) -> None:
    """A throughput the daemon learned (slow t4s) and ``[cloud]`` startup/minimum set the job's timeout, the
    deadline adds ``scheduling_timeout`` and the grace, and the settled job teaches the table in turn."""
    settings = settings_for(tmp_path, emu, startup_seconds=30, min_job_timeout=60, scheduling_timeout=120)
    ledger = Ledger(settings.daemon.ledger)
    ledger.set_value(THROUGHPUT_KEY, {"t4-small": 0.02})
    duration = audio.probe(clip).duration or 0.0
    wanted = job_timeout_for(duration, 0.02, startup_seconds=30, min_seconds=60)
    assert wanted != job_timeout_for(duration, DEFAULT_THROUGHPUT["t4-small"]), "the test must tell them apart"

    assert run(settings, clip, tmp_path / "out", engine) == 0
    doc = validate_result(json.loads((tmp_path / "out" / "talk.json").read_text()))
    assert doc["engine"]["backend"] == "hf-jobs" and doc["engine"]["flavor"] == "t4-small"
    (job,) = emu.jobs.values()
    assert job["timeoutSeconds"] == wanted
    (row,) = ledger.jobs()
    assert row.state is JobState.COLLECTED and row.timeout_seconds == wanted and row.user == "sales"
    assert row.deadline_at is not None and row.submitted_at is not None
    assert row.deadline_at - row.submitted_at == pytest.approx(wanted + 120 + DEADLINE_GRACE_SECONDS)
    learned = ledger.get_value(THROUGHPUT_KEY)
    assert learned and learned[0]["t4-small"] != 0.02, "the settled job moves the learned throughput"
    assert not staged_leftovers(emu)


def test_a_job_left_scheduling_is_cancelled_after_the_configured_wait(
    tmp_path: Path, emu: HubEmulator, clip: Path, engine: Any
) -> None:
    """``[cloud] scheduling_timeout`` (2 s here) ends a job the Hub cannot place; fallback runs it here."""
    emu.add_fault(job="stay_scheduling")
    settings = settings_for(tmp_path, emu, scheduling_timeout=2)
    started = time.monotonic()
    assert run(settings, clip, tmp_path / "out", engine) == 0
    doc = validate_result(json.loads((tmp_path / "out" / "talk.json").read_text()))
    assert doc["engine"]["backend"] == "pyannote-local"
    assert "hardware" in doc["route"]["fallback"]["reason"]
    (job,) = emu.jobs.values()
    assert job["status"]["stage"] in ("CANCELED", "CANCELLED")
    assert time.monotonic() - started < 120
    assert not staged_leftovers(emu)


def test_a_refused_start_leaves_no_audio_on_the_hub_and_no_reservation(
    tmp_path: Path, emu: HubEmulator, clip: Path, engine: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    emu.add_fault(route="jobs.create", status=402, times=-1)
    settings = settings_for(tmp_path, emu, fallback=False)
    assert run(settings, clip, tmp_path / "out", engine) == 1
    assert "402" in capsys.readouterr().err
    assert not staged_leftovers(emu), "the staged input is deleted after the refused start"
    ledger = Ledger(settings.daemon.ledger)
    (row,) = ledger.jobs()
    assert row.state is JobState.FAILED and Decimal(row.cost_usd or "0") == 0
    assert not ledger.open_jobs()
    assert [r["state"] for r in ledger.recent()] == [State.FAILED.value]


def test_a_daemon_does_not_touch_a_submit_runs_files(tmp_path: Path, emu: HubEmulator, clip: Path, engine: Any) -> None:
    """The run's rows live in the daemon's ledger (budget, history) under a key no inbox has: a daemon's
    worker and cloud route leave them alone."""
    from diarist.daemon.service import Daemon

    settings = settings_for(tmp_path, emu)
    ledger = Ledger(settings.daemon.ledger)
    assert run(settings, clip, tmp_path / "out", engine, FileRequest(route=RouteSetting.LOCAL)) == 0
    daemon = Daemon(settings, engine=engine, ledger=ledger)
    (row,) = ledger.recent()
    assert row["state"] == State.DONE.value and row["inbox"].startswith("(run ")
    assert daemon.worker.next_row() is None and daemon.cloud.queued() == []


def test_the_job_of_a_killed_submit_run_is_cancelled_and_settled(
    tmp_path: Path, emu: HubEmulator, clip: Path, engine: Any
) -> None:
    """`diarist submit --cloud` SIGKILLed while its job waits for hardware: the next tick of a daemon on the
    same ledger (once the run's heartbeat is old) cancels the job, fails the file, settles the reservation
    and deletes the staged audio; nothing holds budget or a job slot."""
    from diarist.daemon.service import Daemon

    emu.add_fault(job="stay_scheduling")
    settings = settings_for(tmp_path, emu)
    config = tmp_path / "diarist.toml"
    config.write_text(f'[daemon]\nledger = "{settings.daemon.ledger}"\nhost_id = "cli-host"\n')
    env = {**os.environ, "HF_TOKEN": TOKEN, "HF_ENDPOINT": emu.url}
    cmd = [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), "submit", "--cloud", str(clip)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ledger = Ledger(settings.daemon.ledger)
        wait_until(lambda: [j for j in ledger.open_jobs() if j.job_id], 180, "the run's job started")
    finally:
        proc.kill()
        proc.wait(30)
    (job,) = ledger.open_jobs()
    assert emu.jobs[job.job_id]["status"]["stage"] == "SCHEDULING"
    ledger.db.execute("update hosts set heartbeat_at = heartbeat_at - 3600")  # the run has long been silent
    Daemon(settings, engine=engine, ledger=ledger).cloud.tick()
    assert not ledger.open_jobs()
    assert emu.jobs[job.job_id]["status"]["stage"] in ("CANCELED", "CANCELLED")
    (row,) = ledger.recent()
    assert row["state"] == State.FAILED.value and "ended before" in row["error"]
    assert not staged_leftovers(emu)


def test_a_run_never_overwrites_files_that_diarist_did_not_write(
    tmp_path: Path, clip: Path, engine: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Results go beside the input by default, where a person's reference ``talk.rttm`` may already lie (pyannote's
    own sample has one): the run refuses that file, says how to go on, and overwrites nothing."""
    talk = tmp_path / "talk.wav"
    talk.write_bytes(clip.read_bytes())
    reference = tmp_path / "talk.rttm"
    reference.write_text("SPEAKER talk 1 0.000 1.000 <NA> <NA> someone <NA> <NA>\n")
    settings = parse_settings({"daemon": {"ledger": str(tmp_path / "unused.db")}}, env={})

    def process(n: int, out: Path | None) -> int:
        asked = RunRequest(FileRequest(), local_reason="test")
        ledger = Ledger(tmp_path / f"run{n}.db")
        return run_files(settings, [talk], asked, ledger=ledger, out=out, engine=lambda: engine)

    assert process(1, None) == 1
    err = capsys.readouterr().err
    assert str(reference) in err and "--out DIR" in err
    assert reference.read_text() == "SPEAKER talk 1 0.000 1.000 <NA> <NA> someone <NA> <NA>\n"
    assert not (tmp_path / "talk.json").exists()

    assert process(2, tmp_path / "elsewhere") == 0  # --out: the results go there, the reference stays
    assert validate_result(json.loads((tmp_path / "elsewhere" / "talk.json").read_text()))
    assert reference.read_text().endswith("someone <NA> <NA>\n")

    reference.unlink()
    assert process(3, None) == 0
    earlier = json.loads((tmp_path / "talk.json").read_text())
    (tmp_path / "talk.json").write_text(json.dumps({**earlier, "marked": True}))
    assert process(4, None) == 0  # diarist's own result beside the input: running again replaces it
    assert "marked" not in json.loads((tmp_path / "talk.json").read_text())
    assert "someone" not in (tmp_path / "talk.rttm").read_text()
