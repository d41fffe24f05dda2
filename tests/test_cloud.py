"""The cloud route end to end: a real daemon, the real huggingface_hub client, the loopback Hub emulator
executing each job for real (the shipped wheel runs pyannote in a subprocess), real folders and SQLite.

Fault tests run the daemon in-process with the session's warm engine (fallbacks then cost one local run);
the crash test runs ``diarist run`` as a subprocess and SIGKILLs it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from diarist.daemon.charts import number_text
from diarist.daemon.config import parse_settings
from diarist.daemon.ledger import Ledger, State
from diarist.daemon.service import Daemon
from diarist.handlers.results import parse_rttm, validate_result

from conftest import SUITE_TOKEN, copy, cut, ledger_state, noon_timezone, wait_until
from hub_emulator import HubEmulator

pytestmark = pytest.mark.slow

TOKEN, NS = SUITE_TOKEN, "alice"
STAGING = f"{NS}/diarist-staging"


@pytest.fixture(scope="module")
def clips(sample: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five distinct 6 s slices of pyannote's sample, from 3 s on (it opens with silence): real speech."""
    folder = tmp_path_factory.mktemp("clips")
    return [cut(sample[0], folder / f"clip{n}.wav", 3 + n * 5, 6) for n in range(5)]


@pytest.fixture
def emu() -> Iterator[HubEmulator]:
    with HubEmulator(token=TOKEN, namespace=NS, kill_grace=0.5) as emulator:
        yield emulator


class CloudDaemon:
    def __init__(
        self,
        tmp_path: Path,
        emu: HubEmulator,
        engine: Any,
        cloud: dict[str, Any],
        token: str,
        models: dict[str, Any],
        inbox: dict[str, Any] | None = None,
    ):
        self.inbox, self.outbox = tmp_path / "inbox", tmp_path / "outbox"
        self.ledger_path = tmp_path / "state" / "ledger.db"
        settings = parse_settings(
            {
                "daemon": {"ledger": str(self.ledger_path), "host_id": "test-host", "rescan_interval": 2},
                "models": models,
                "cloud": {
                    "endpoint": emu.url,
                    "poll_interval": 0.3,
                    "batch_window": 1.0,
                    "scheduling_timeout": 60,
                    **cloud,
                },
                "inbox": [
                    {
                        "path": str(self.inbox),
                        "outbox": str(self.outbox),
                        "polling": False,
                        "stability_seconds": 0.5,
                        "route": "cloud",
                        **(inbox or {}),
                    }
                ],
            },
            env={"HF_TOKEN": token},
        )
        self.ledger = Ledger(self.ledger_path)
        self.daemon = Daemon(settings, engine=engine, ledger=self.ledger, tick=0.1)

    def result(self, name: str, timeout: float = 180) -> dict[str, Any]:
        path = self.outbox / (Path(name).stem + ".json")
        wait_until(path.exists, timeout, f"{path.name} in the outbox")
        return validate_result(json.loads(path.read_text()))

    def finished(self, name: str, timeout: float = 60) -> None:
        """Wait for ``name``'s end: its ledger row done, which comes after the input was archived."""
        ledger_state(self.ledger_path, name, timeout=timeout)

    def error(self, name: str, timeout: float = 180) -> dict[str, Any]:
        path = self.outbox / (Path(name).stem + ".error.json")
        wait_until(path.exists, timeout, f"{path.name} in the outbox")
        return json.loads(path.read_text())


@pytest.fixture
def cloud_daemon(tmp_path: Path, emu: HubEmulator, engine: Any) -> Iterator[Any]:
    made: list[CloudDaemon] = []

    def make(
        token: str = TOKEN, models: dict[str, Any] | None = None, inbox: dict[str, Any] | None = None, **cloud: Any
    ) -> CloudDaemon:
        # the daemon runs the session's warm engine locally; ``models`` only changes what the job is told to load
        d = CloudDaemon(tmp_path, emu, engine, cloud, token, models or {}, inbox)
        d.daemon.start()
        made.append(d)
        return d

    yield make
    for d in made:
        d.daemon.stop(timeout=60)


def no_live_jobs(emu: HubEmulator) -> bool:
    return all(j["status"]["stage"] not in ("RUNNING", "SCHEDULING") for j in emu.jobs.values())


def staged_leftovers(emu: HubEmulator) -> list[str]:
    """Anything of a batch retrievable from the Hub: at head, at any revision, or as a stored large file."""
    return emu.batch_leftovers(STAGING)


# -- the happy path ---------------------------------------------------------------------------------------


def test_batch_of_five_runs_as_one_job_with_five_results(cloud_daemon, emu: HubEmulator, clips: list[Path]) -> None:
    # the batch leaves when it is full, never on its window: the five files arriving over more than a window
    # (a slow copy, a busy machine) still make one job
    d = cloud_daemon(batch_max_files=len(clips), batch_window=600)
    for clip in clips:
        copy(clip, d.inbox / clip.name)
    docs = [d.result(c.name, timeout=300) for c in clips]
    for clip in clips:
        d.finished(clip.name)  # archived after its result is written

    assert len(emu.jobs) == 1, f"expected one batched job, got {len(emu.jobs)}"
    job = next(iter(emu.jobs.values()))
    assert job["labels"]["app"] == "diarist" and job["labels"]["host"] == "test-host"
    assert job["labels"]["files"] == "5"
    assert job["secrets"] == {"HF_TOKEN": "***"}, "the token travels as a secret"
    assert TOKEN not in json.dumps(job["environment"]) and TOKEN not in json.dumps(job["labels"])
    assert job["timeoutSeconds"] >= 600, "the timeout is derived, never the Hub's 30 min default for long files"
    logs = "\n".join(emu.job_logs(job["id"]))
    assert "running diarist code from" in logs and "diarist-0.1.0-py3-none-any.whl" in logs

    for clip, doc in zip(clips, docs, strict=True):
        assert doc["engine"]["backend"] == "hf-jobs"
        assert doc["engine"]["job_id"] == job["id"]
        assert doc["engine"]["job_url"].endswith(f"/jobs/{NS}/{job['id']}")
        assert doc["engine"]["flavor"] == "a10g-small"
        assert doc["engine"]["running_seconds"] is not None
        assert doc["route"]["decision"] == "cloud" and "the inbox is set to cloud" in doc["route"]["reason"]
        assert doc["source"]["name"] == clip.name
        assert doc["segments"], f"{clip.name}: no speech found"
        _, segments = parse_rttm((d.outbox / f"{clip.stem}.rttm").read_text())
        assert len(segments) == len(doc["segments"])
        assert (d.inbox / ".diarist" / "done" / clip.name).is_file(), "archived only after the result landed"

    wait_until(lambda: not staged_leftovers(emu), 20, "staged inputs and results deleted from the Hub")
    jobs = d.ledger.jobs()
    assert len(jobs) == 1 and jobs[0].state.value == "collected" and jobs[0].cost_usd is not None


# -- faults -------------------------------------------------------------------------------------------------


def test_job_error_falls_back_to_local_and_says_why(cloud_daemon, emu: HubEmulator, clips: list[Path]) -> None:
    emu.add_fault(job="error", message="no capacity in this region")
    d = cloud_daemon()
    copy(clips[0], d.inbox / "a.wav")
    doc = d.result("a.wav")
    assert doc["engine"]["backend"] == "pyannote-local"
    fallback = doc["route"]["fallback"]
    assert fallback["from"] == "hf-jobs" and fallback["job_id"] in emu.jobs
    assert "ERROR" in fallback["reason"] and "no capacity in this region" in fallback["reason"]
    assert doc["route"]["reason"].startswith("local: fallback from the cloud route")
    assert no_live_jobs(emu)
    wait_until(lambda: not staged_leftovers(emu), 20, "staged files cleaned after a failed job")


def test_job_stuck_in_scheduling_is_cancelled_then_falls_back(cloud_daemon, emu: HubEmulator, clips) -> None:
    emu.add_fault(job="stay_scheduling")
    d = cloud_daemon(scheduling_timeout=2)
    copy(clips[1], d.inbox / "b.wav")
    doc = d.result("b.wav")
    assert doc["engine"]["backend"] == "pyannote-local"
    assert "waited" in doc["route"]["fallback"]["reason"] and "no capacity" in doc["route"]["fallback"]["reason"]
    (job,) = emu.jobs.values()
    assert job["status"]["stage"] == "CANCELED", "a job we gave up on is cancelled on the Hub"


def test_payment_required_falls_back_with_the_plan_hint(cloud_daemon, emu: HubEmulator, clips) -> None:
    emu.add_fault(route="jobs.create", status=402, message="Jobs need a PRO subscription or credits", times=-1)
    d = cloud_daemon()
    copy(clips[2], d.inbox / "c.wav")
    doc = d.result("c.wav")
    assert doc["engine"]["backend"] == "pyannote-local"
    reason = doc["route"]["fallback"]["reason"]
    assert "402" in reason and "pricing" in reason
    assert not emu.jobs


def test_invalid_token_routes_local_naming_hf_token(cloud_daemon, emu: HubEmulator, clips) -> None:
    d = cloud_daemon(token="hf_wrong_token_123")
    copy(clips[3], d.inbox / "d.wav")
    doc = d.result("d.wav")
    assert doc["engine"]["backend"] == "pyannote-local"
    reason = doc["route"]["reason"]
    assert "HF_TOKEN" in reason and "hf_wrong_token_123" not in json.dumps(doc)
    assert not emu.jobs


def test_job_failure_without_fallback_writes_error_json_with_log_tail(cloud_daemon, emu: HubEmulator, clips) -> None:
    # the job cannot load its model (what a gated or missing pipeline does in the cloud): exit 3, ERROR
    d = cloud_daemon(fallback=False, models={"pipeline": "/nonexistent/pipeline"})
    copy(clips[4], d.inbox / "e.wav")
    err = d.error("e.wav", timeout=240)
    assert err["kind"] == "cloud"
    assert "ERROR" in err["error"] and "exit code 3" in err["error"]
    tail = err["details"]["log_tail"]
    assert any("diarist job: model error" in line and "/nonexistent/pipeline" in line for line in tail), tail
    assert "fallback" in err["what_to_do"]
    assert (d.inbox / ".diarist" / "failed" / "e.wav").is_file(), "the input is kept, never lost"
    assert not (d.outbox / "e.json").exists()
    assert no_live_jobs(emu)
    wait_until(lambda: not staged_leftovers(emu), 20, "staged files cleaned after a failed job")


def test_results_a_job_uploaded_before_it_failed_are_kept(cloud_daemon, emu: HubEmulator, clips) -> None:
    emu.add_fault(job="error_after_run", message="node lost")
    d = cloud_daemon(fallback=False)
    copy(clips[3], d.inbox / "h.wav")
    doc = d.result("h.wav")
    assert doc["engine"]["backend"] == "hf-jobs"
    # the job is settled once all its files are handled, just after this result was written
    wait_until(lambda: d.ledger.jobs()[0].state.value == "failed", 20, "the failed job settled")
    (job,) = d.ledger.jobs()
    assert "node lost" in (job.message or "")


def test_a_job_that_cannot_start_leaves_no_audio_on_the_hub(cloud_daemon, emu: HubEmulator, clips) -> None:
    emu.add_fault(route="jobs.create", status=402, times=-1)
    d = cloud_daemon(fallback=False)
    copy(clips[2], d.inbox / "i.wav")
    err = d.error("i.wav")
    assert "402" in err["error"]
    wait_until(lambda: not staged_leftovers(emu), 20, "the staged input deleted after the refused start")


def test_transient_hub_trouble_is_retried_not_fallen_back(cloud_daemon, emu: HubEmulator, clips) -> None:
    emu.add_fault(route="jobs.create", reset=True)  # the answer is lost: was the job started? (it was not)
    emu.add_fault(route="jobs.inspect", status=503, times=3)
    emu.add_fault(route="jobs.inspect", status=429, retry_after=1)
    d = cloud_daemon()
    copy(clips[0], d.inbox / "f.wav")
    doc = d.result("f.wav", timeout=240)
    assert doc["engine"]["backend"] == "hf-jobs"
    assert len(emu.jobs) == 1, "the lost start is found by its batch label or started once, never twice"


def settled(d: CloudDaemon, emu: HubEmulator) -> None:
    """Afterwards: no job left running on the Hub, nothing staged left behind, every reservation closed."""
    wait_until(lambda: no_live_jobs(emu), 60, "no job left running on the Hub")
    wait_until(lambda: not staged_leftovers(emu), 60, "no staged input or result left on the Hub")
    wait_until(lambda: not d.ledger.open_jobs(), 60, "every budget reservation settled or released")
    assert all(j.cost_usd is not None for j in d.ledger.jobs())


@pytest.mark.parametrize(
    ("fault", "when"),
    [
        ({"route": "commit"}, "mid-upload: the staging commit is cut off"),
        ({"route": "jobs.inspect"}, "mid-poll: the job is being watched"),
        ({"route": "resolve", "path": "/result.json"}, "mid-download: the result is being fetched"),
        ({"route": "commit", "body": "clean up after"}, "mid-clean-up: the staged files are being deleted"),
    ],
    ids=["upload", "poll", "download", "cleanup"],
)
def test_the_hub_dying_mid_way_loses_nothing(cloud_daemon, emu: HubEmulator, clips, fault: dict, when: str) -> None:
    """The emulator goes off the network for 3 s at one step (connections refused, as when the Hub dies),
    then comes back with its state: the file still lands once, through the one job it was given."""
    # The job's own requests must not meet the outage: its process starts only once the daemon's poll has been
    # answered (after the outage, when that poll set it off), and never while the emulator is down.
    emu.add_fault(job="slow", start_delay=0.0, after_inspect=True)
    emu.add_fault(**fault, down=3.0)
    d = cloud_daemon()
    copy(clips[3], d.inbox / "m.wav")
    doc = d.result("m.wav", timeout=240)
    wait_until(lambda: emu.outages == 1, 30, f"the outage {when}")  # the clean-up comes after the result
    assert doc["engine"]["backend"] == "hf-jobs", f"{when}: a short outage is waited out, not fallen back"
    assert len(emu.jobs) == 1, f"{when}: started once"
    assert not (d.outbox / "m.error.json").exists()
    settled(d, emu)
    [row] = d.ledger.recent()
    assert row["state"] == "done"
    assert sum(1 for e in d.ledger.events(row["id"]) if e["state"] == "done") == 1


# -- crash and restart --------------------------------------------------------------------------------------


def subprocess_config(tmp_path: Path, batch_window: float, batch_max_files: int = 8) -> tuple[Path, Path, Path, Path]:
    """A ``diarist run`` config routing its one inbox to the cloud: (config, inbox, outbox, state dir)."""
    inbox, outbox, state = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"
    inbox.mkdir()
    config = tmp_path / "diarist.toml"
    config.write_text(
        f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "crash-host"\nlog_format = "json"\n\n'
        f"[cloud]\npoll_interval = 0.5\nbatch_window = {batch_window:g}\nbatch_max_files = {batch_max_files}\n\n"
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\npolling = false\nstability_seconds = 0.5\n'
        f'route = "cloud"\n'
    )
    return config, inbox, outbox, state


def test_daemon_killed_while_the_job_runs_resumes_and_lands_once(
    tmp_path: Path, emu: HubEmulator, daemon_factory, sample: tuple[Path, Path]
) -> None:
    emu.add_fault(job="slow", start_delay=0.0, finish_delay=6.0)
    config, inbox, outbox, state = subprocess_config(tmp_path, batch_window=0)
    env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": emu.url}
    first = daemon_factory(config, env).start()
    copy(sample[0], inbox / "meeting.wav")
    wait_until(lambda: any(j["status"]["stage"] == "RUNNING" for j in emu.jobs.values()), 120, "the job running")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert not (outbox / "meeting.json").exists()

    second = daemon_factory(config, env).start()
    wait_until((outbox / "meeting.json").exists, 240, "the result after the restart")
    doc = validate_result(json.loads((outbox / "meeting.json").read_text()))
    assert second.stop() == 0
    assert doc["engine"]["backend"] == "hf-jobs"
    assert len(emu.jobs) == 1, "the restarted daemon resumed the job instead of submitting again"
    ledger = Ledger(state / "ledger.db")
    rows = ledger.recent()
    assert [r["state"] for r in rows] == ["done"]
    assert sum(1 for e in ledger.events(rows[0]["id"]) if e["state"] == "done") == 1
    assert '"event": "resumed"' in second.text()


@pytest.mark.parametrize("point", ["cloud_submit", "cloud_poll:2", "cloud_collect"])
def test_daemon_killed_at_a_cloud_step_resumes_and_lands_once(
    tmp_path: Path, emu: HubEmulator, daemon_factory, clips, point: str
) -> None:
    """SIGKILL right after the Hub accepted the job, between two polls, and after the first result of a
    batch was delivered: the restart resumes the same job and every file lands once."""
    # one job for both files, deterministically: it leaves once both are queued (full), never on its window
    config, inbox, outbox, state = subprocess_config(tmp_path, batch_window=600, batch_max_files=2)
    env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": emu.url}
    first = daemon_factory(config, {**env, "DIARIST_CRASH_AT": point}).start()
    for clip in clips[:2]:
        copy(clip, inbox / clip.name)
    assert first.proc.wait(180) == -signal.SIGKILL, first.text()[-2000:]

    second = daemon_factory(config, env).start()
    for clip in clips[:2]:
        wait_until((outbox / f"{clip.stem}.json").exists, 240, f"{clip.stem}.json after the restart")
    assert second.stop() == 0
    assert len(emu.jobs) == 1, "the restarted daemon resumed the job instead of submitting again"
    for clip in clips[:2]:
        doc = validate_result(json.loads((outbox / f"{clip.stem}.json").read_text()))
        assert doc["engine"]["backend"] == "hf-jobs"
    ledger = Ledger(state / "ledger.db")
    rows = ledger.recent()
    assert sorted(r["state"] for r in rows) == ["done", "done"]
    for r in rows:
        assert sum(1 for e in ledger.events(r["id"]) if e["state"] == "done") == 1
    wait_until(lambda: no_live_jobs(emu) and not staged_leftovers(emu), 30, "the Hub left clean")
    assert not ledger.open_jobs()


@pytest.mark.parametrize(
    ("token", "cloud", "why"),
    [
        ("", {}, "no Hugging Face token is configured"),
        (TOKEN, {"enabled": False}, "cloud processing is disabled in the configuration"),
    ],
)
def test_cloud_unavailable_sends_files_local_with_the_reason(
    cloud_daemon, emu: HubEmulator, clips, token: str, cloud: dict, why: str
) -> None:
    d = cloud_daemon(token=token, **cloud)
    copy(clips[1], d.inbox / "g.wav")
    doc = d.result("g.wav")
    assert doc["engine"]["backend"] == "pyannote-local"
    assert why in doc["route"]["reason"]
    assert not emu.jobs and not emu.requests, "nothing was sent to the Hub"


# -- budgets ------------------------------------------------------------------------------------------------

BUDGET = {
    "daily_budget": 0.05,
    # a10g-small at $1.00/h is $0.016667 a minute on the Hub's list: with a 30 s start-up a job of up to 10 min of
    # audio gets a 2 min timeout, so its worst case is $0.033334: one fits under $0.05, two do not. The 30 s
    # leaves the estimate (30 s + 600 s / 40x = 45 s, doubled: 90 s) room below the 2-minute line, so what the
    # first job teaches the throughput table cannot push the next file's worst case to 3 minutes ($0.050001,
    # over the cap on its own: such a file would never wait, it would go local)
    "startup_seconds": 30,
    "min_job_timeout": 60,
}


@pytest.fixture
def budget_tz() -> str:
    """The budget day's zone: fixed-offset, noon now, so that no budget day ends (and no daily cap resets)
    while the test runs on the real wall clock."""
    return noon_timezone()


def count_cloud_passes(d: CloudDaemon) -> Callable[[], int]:
    """From now on, count the in-process daemon's completed cloud scheduler passes (its scheduler calls
    ``cloud.tick`` through the attribute, so the wrapper sees every later pass)."""
    done = [0]
    tick = d.daemon.cloud.tick

    def counted() -> None:
        try:
            tick()
        finally:
            done[0] += 1

    d.daemon.cloud.tick = counted  # type: ignore[method-assign]
    return lambda: done[0]


def status_documents(outbox: Path) -> list[dict[str, Any]]:
    """The status documents in ``outbox`` now. One may be removed between the listing and its reading (its
    file's job settled): it is no longer there, so it is not counted."""
    docs = []
    for path in outbox.glob("*.status.json"):
        try:
            docs.append(json.loads(path.read_text()))
        except FileNotFoundError:
            continue
    return docs


class CommitMonitor:
    """Samples the day's committed spending (settled + reserved) from its own ledger connection."""

    def __init__(self, path: Path, tz: str) -> None:
        from zoneinfo import ZoneInfo

        self.path, self.tz, self.peak = path, ZoneInfo(tz), Decimal(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ledger = Ledger(self.path)
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, ledger.budget_totals(self.tz).day.committed_usd)

    def stop(self) -> Decimal:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_twenty_ten_minute_recordings_wait_for_the_budget_with_fallback_off(
    cloud_daemon, emu: HubEmulator, sample: tuple[Path, Path], tmp_path: Path, budget_tz: str
) -> None:
    recordings = []
    for n in range(20):  # 10 minutes each: a stretch of the sample, then silence; distinct content
        dst = tmp_path / "src" / f"rec{n:02d}.flac"
        dst.parent.mkdir(exist_ok=True)
        audio = f"atrim=start={n}:duration=8,adelay={n * 10}:all=1,apad=whole_dur=600"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(sample[0]), "-af", audio, str(dst)], check=True)
        recordings.append(dst)
    # one file per job: with the 30 s start-up two 10-minute files would share one 2-minute job
    d = cloud_daemon(fallback=False, inbox={"task": "vad"}, batch_max_files=1, timezone=budget_tz, **BUDGET)
    monitor = CommitMonitor(d.ledger_path, budget_tz)
    for rec in recordings:
        copy(rec, d.inbox / rec.name)

    def settled_and_waiting() -> bool:
        jobs = d.ledger.jobs()
        deferred = [doc for doc in status_documents(d.outbox) if doc["state"] == "deferred"]
        return bool(jobs) and not d.ledger.open_jobs() and len(deferred) == 19

    wait_until(settled_and_waiting, 400, "one job settled and nineteen files deferred")
    passes = count_cloud_passes(d)
    # more scheduler passes, each of which could have sent a file out: nothing else may go out
    wait_until(lambda: passes() >= 6, 60, "six more cloud scheduler passes")
    peak = monitor.stop()

    assert peak <= Decimal("0.05"), f"committed {peak} > the $0.05 cap"
    assert len(emu.jobs) == 1 and len(d.ledger.jobs()) == 1
    (job,) = d.ledger.jobs()
    assert Decimal(job.reserve_usd) == Decimal("0.033334") and Decimal(job.cost_usd) <= Decimal(job.reserve_usd)
    # VAD of 10 min of audio on this CPU (the emulator runs jobs here, not on an A10G) takes 60-130 s against a
    # 120 s timeout: the job may complete or be stopped by the Hub; either way it settled within its reservation
    if job.state.value == "collected":
        (done,) = [p for p in d.outbox.glob("rec*.json") if p.suffixes == [".json"]]
        doc = validate_result(json.loads(done.read_text()))
        assert doc["engine"]["backend"] == "hf-jobs" and doc["task"] == "vad" and doc["vad"]
        assert "within budget" in doc["route"]["reason"]
    else:
        (failed,) = list(d.outbox.glob("rec*.error.json"))
        assert "timed out" in json.loads(failed.read_text())["error"]
    for status in d.outbox.glob("*.status.json"):
        st = json.loads(status.read_text())
        assert st["state"] == "deferred" and "daily" in st["note"] and "next budget day" in st["note"], st
    queued = d.ledger.in_state(State.QUEUED)
    assert len(queued) == 19 and all(Path(r.claim_path).is_file() for r in queued), "waiting, never dropped"

    # `diarist status` says why they wait; `diarist usage` and its HTML report work on the settled job
    config = tmp_path / "usage.toml"
    config.write_text(f'[daemon]\nledger = "{d.ledger_path}"\n[cloud]\ndaily_budget = 0.05\ntimezone = "{budget_tz}"\n')
    status = subprocess.run(
        [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), "status", "--limit", "30"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert status.count(" deferred ") == 19 and "budget: daily_usd" in status, status
    cli = [sys.executable, "-m", "diarist.daemon.cli", "--config", str(config), "usage"]
    out = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True, check=True).stdout)
    assert out["total"]["jobs"] == 1 and Decimal(out["total"]["spent"]) == Decimal(job.cost_usd)
    assert abs(out["total"]["cloud_hours"] - 600 / 3600) < 0.01
    assert Decimal(out["caps"]["daily_left"]) == Decimal("0.05") - Decimal(job.cost_usd)
    table = subprocess.run([*cli, "--by", "flavor"], capture_output=True, text=True, check=True).stdout
    assert "a10g-small" in table and "of $0.05" in table
    report = tmp_path / "usage.html"
    subprocess.run([*cli, "--report", str(report)], check=True, capture_output=True)
    page = ReportParser()
    page.feed(report.read_text())
    # each chart has its values written on it and a y axis; the daily cap is a line on today's meter and on
    # the per-day chart (the month has no cap here)
    assert page.svgs >= 6 and page.bars >= 1 and page.cap_lines == 2
    assert number_text(float(job.cost_usd)) in page.values, page.values
    assert "0.05" in page.ticks and "cap 0.05 USD (" in page.text
    embedded = json.loads(page.data)
    assert Decimal(embedded["by_day"]["total"]["spent"]) == Decimal(job.cost_usd)


def test_over_budget_files_fall_back_to_local_and_say_why(
    cloud_daemon, emu: HubEmulator, sample: tuple[Path, Path], tmp_path: Path, budget_tz: str
) -> None:
    (tmp_path / "src").mkdir()
    clips = [cut(sample[0], tmp_path / "src" / f"short{n:02d}.wav", 3 + n * 1.2, 4) for n in range(20)]
    # The admitted job runs here, on the two cores that the nineteen local runs share, not on an A10G: its 120 s
    # Hub timeout is not about this machine's speed. Emulated Hub time runs at a quarter of real time (the
    # timeout is enforced after 480 s, the billed time is real / 4, so the budget arithmetic is unchanged).
    emu.time_scale = 4.0
    # The admitted job holds its reservation while the other nineteen are routed: it waits 30 s to be scheduled
    # (the engine diarizes a clip in under half a second, so a job that started at once could end, billed $0,
    # before the last files were routed, and free the budget for a second job, which is right but not this test)
    emu.scheduling_delay = 30.0
    # one file per job keeps the admitted job short while nineteen local runs share the CPU with it
    d = cloud_daemon(batch_max_files=1, timezone=budget_tz, **BUDGET)
    monitor = CommitMonitor(d.ledger_path, budget_tz)
    for clip in clips:
        copy(clip, d.inbox / clip.name)
    # the admitted job may run for its whole scaled timeout (480 s) after the batch window, upload and start
    wait_until(lambda: all((d.outbox / f"{c.stem}.json").exists() for c in clips), 600, "the twenty results")
    docs = [d.result(c.name) for c in clips]
    wait_until(lambda: not d.ledger.open_jobs(), 60, "the cloud job settled")
    peak = monitor.stop()

    assert peak <= Decimal("0.05"), f"committed {peak} > the $0.05 cap"
    cloud = [x for x in docs if x["engine"]["backend"] == "hf-jobs"]
    local = [x for x in docs if x["engine"]["backend"] == "pyannote-local"]
    assert len(cloud) == 1 and len(local) == 19, [x["route"]["reason"] for x in docs]
    assert len({x["engine"]["job_id"] for x in cloud}) == len(emu.jobs)
    for x in local:
        # refused when routed (a reservation already holds the headroom) or when the batch was reserved
        reason = x["route"]["reason"]
        assert reason.startswith("local:") and "daily_usd $0.05 would be exceeded" in reason, reason
        if "fallback" in x["route"]:
            assert x["route"]["fallback"]["from"] == "budget" and x["route"]["fallback"]["cap"] == "daily_usd"


class ReportParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svgs = self.bars = self.cap_lines = 0
        self.data = self.text = ""
        self.values: list[str] = []
        self.ticks: list[str] = []
        self._in_data = False
        self._text_class: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.svgs += tag == "svg"
        self.bars += tag == "rect" and a.get("class") == "bar"
        self.cap_lines += tag == "line" and a.get("class") == "cap"
        self._in_data = tag == "script" and a.get("id") == "usage-data"
        self._text_class = a.get("class") if tag == "text" else None

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data += data
        self.text += data
        if self._text_class == "value":
            self.values.append(data)
        elif self._text_class == "tick":
            self.ticks.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_data = False
