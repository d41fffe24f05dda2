"""Tests for tests/hub_emulator.py, driven through the real huggingface_hub client (never patched)."""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationDelete, HfApi, JobHardware, hf_hub_download
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    JobNotFoundError,
)

try:
    from hub_emulator import HubEmulator, git_blob_sha1, translate_command
except ImportError:  # tests/ imported as a package
    from tests.hub_emulator import HubEmulator, git_blob_sha1, translate_command

EMULATOR_PATH = Path(__file__).with_name("hub_emulator.py")
TOKEN = "hf_test"
NS = "alice"
PY = sys.executable


# ----------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def emu():
    with HubEmulator(token=TOKEN, namespace=NS, kill_grace=0.5) as emulator:
        yield emulator


@pytest.fixture
def api(emu):
    return HfApi(endpoint=emu.url, token=TOKEN)


def wait_stage(api: HfApi, job_id: str, stages: tuple[str, ...], timeout: float = 60.0):
    """Poll inspect_job until the job reaches one of ``stages``. The jobs do real work here (a fresh
    interpreter importing huggingface_hub with a cold cache, uploads): on a loaded machine that takes many
    seconds, so the default only bounds a hang."""
    deadline = time.monotonic() + timeout
    while True:
        job = api.inspect_job(job_id=job_id, namespace=NS)
        if job.status.stage in stages:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status.stage}"
        time.sleep(0.05)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def raw(url: str, method: str = "GET", body: bytes | None = None, token: str | None = TOKEN):
    """Plain urllib request: (status, headers, body) without raising on HTTP errors."""
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def run_python(api: HfApi, code: str, **kwargs):
    return api.run_job(image="python:3.12", command=["python", "-c", code], namespace=NS, **kwargs)


# ----------------------------------------------------------------------------------------------------
# translate_command
# ----------------------------------------------------------------------------------------------------
class TestTranslateCommand:
    def test_python_names_map_to_interpreter(self):
        """python, python3, python3.X and absolute python paths become the local interpreter."""
        for name in ("python", "python3", "python3.12", "/usr/local/bin/python3"):
            assert translate_command("python:3.12", [name, "-c", "x"], python="/py") == ["/py", "-c", "x"]

    def test_uv_run_script_drops_uv_options(self):
        """`uv run --with dep --python 3.12 script.py args` becomes `[python, script.py, args]`."""
        cmd = ["uv", "run", "--with", "numpy", "--python", "3.12", "-q", "job.py", "--n", "3"]
        assert translate_command("ghcr.io/astral-sh/uv:python3.12-bookworm", cmd, python="/py") == [
            "/py",
            "job.py",
            "--n",
            "3",
        ]

    def test_uv_run_python_command(self):
        """`uv run --with=x python -c code` becomes `[python, -c, code]`."""
        assert translate_command("img", ["uv", "run", "--with=x", "python", "-c", "1"], python="/py") == [
            "/py",
            "-c",
            "1",
        ]

    def test_uv_run_url_uses_fetch_script(self):
        """A script URL is materialised through fetch_script and run with the interpreter."""
        argv = translate_command(
            "img", ["uv", "run", "https://h/x.py", "a"], python="/py", fetch_script=lambda url: "/tmp/x.py"
        )
        assert argv == ["/py", "/tmp/x.py", "a"]
        with pytest.raises(ValueError):
            translate_command("img", ["uv", "run", "https://h/x.py"], python="/py")

    def test_other_commands_unchanged(self):
        """Non-python commands run as-is; `uv run tool` runs the tool; empty commands are rejected."""
        assert translate_command("ubuntu", ["bash", "-c", "echo hi"], python="/py") == [
            "bash",
            "-c",
            "echo hi",
        ]
        assert translate_command("img", ["uv", "run", "lighteval", "--x"], python="/py") == [
            "lighteval",
            "--x",
        ]
        with pytest.raises(ValueError):
            translate_command("img", [], python="/py")


# ----------------------------------------------------------------------------------------------------
# whoami / auth
# ----------------------------------------------------------------------------------------------------
class TestWhoami:
    def test_valid_token(self, api):
        """whoami returns the configured namespace for the configured token."""
        me = api.whoami()
        assert me["name"] == NS and me["type"] == "user" and me["auth"]["accessToken"]["role"] == "write"

    def test_invalid_token_is_401(self, emu):
        """An unknown token makes the client raise a 401 HfHubHTTPError."""
        with pytest.raises(HfHubHTTPError) as info:
            HfApi(endpoint=emu.url, token="hf_wrong").whoami()
        assert info.value.response.status_code == 401

    def test_missing_token_answer_shape(self, emu):
        """Without Authorization the Hub-style 401 carries X-Error-Code and a JSON error."""
        status, headers, body = raw(f"{emu.url}/api/whoami-v2", token=None)
        assert status == 401 and headers["X-Error-Code"] and "error" in json.loads(body)


# ----------------------------------------------------------------------------------------------------
# Repos
# ----------------------------------------------------------------------------------------------------
class TestRepos:
    def test_private_dataset_upload_download_delete(self, emu, api, tmp_path):
        """Create a private dataset, upload, download identical bytes, delete, and see it gone."""
        repo_id = f"{NS}/private-data"
        url = api.create_repo(repo_id, repo_type="dataset", private=True)
        assert url.repo_id == repo_id and url.repo_type == "dataset"
        assert api.repo_info(repo_id, repo_type="dataset").private is True
        payload = b"\x00" + os.urandom(4095)  # binary: the Hub stores it as a large file (LFS)
        api.upload_file(path_or_fileobj=payload, path_in_repo="dir/blob.bin", repo_id=repo_id, repo_type="dataset")
        assert "dir/blob.bin" in api.list_repo_files(repo_id, repo_type="dataset")
        assert emu.lfs_names(repo_id) == {hashlib.sha256(payload).hexdigest(): "dir/blob.bin"}
        path = hf_hub_download(
            repo_id, "dir/blob.bin", repo_type="dataset", endpoint=emu.url, token=TOKEN, cache_dir=tmp_path
        )
        assert Path(path).read_bytes() == payload == emu.repo_files(repo_id)["dir/blob.bin"]
        assert api.file_exists(repo_id, "dir/blob.bin", repo_type="dataset")
        api.delete_file("dir/blob.bin", repo_id=repo_id, repo_type="dataset")
        assert not api.file_exists(repo_id, "dir/blob.bin", repo_type="dataset")
        assert "dir/blob.bin" not in emu.repo_files(repo_id)
        with pytest.raises(EntryNotFoundError):
            hf_hub_download(
                repo_id,
                "dir/blob.bin",
                repo_type="dataset",
                endpoint=emu.url,
                token=TOKEN,
                cache_dir=tmp_path,
            )

    def test_private_repo_hidden_without_token(self, emu, api):
        """Anonymous access to a private repo is a RepoNotFound error."""
        api.create_repo(f"{NS}/secret", repo_type="dataset", private=True)
        api.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=f"{NS}/secret", repo_type="dataset")
        assert not api.file_exists(f"{NS}/secret", "a.txt", repo_type="dataset", token=False)
        status, headers, _ = raw(f"{emu.url}/datasets/{NS}/secret/resolve/main/a.txt", token=None)
        assert status == 401 and headers["X-Error-Code"] == "RepoNotFound"

    def test_create_existing_repo(self, api):
        """Creating an existing repo is a 409 unless exist_ok=True."""
        api.create_repo(f"{NS}/dup", repo_type="dataset")
        with pytest.raises(HfHubHTTPError) as info:
            api.create_repo(f"{NS}/dup", repo_type="dataset")
        assert info.value.response.status_code == 409
        assert api.create_repo(f"{NS}/dup", repo_type="dataset", exist_ok=True).repo_id == f"{NS}/dup"

    def test_delete_folder(self, emu, api):
        """A deletedFolder commit operation removes every file below the folder."""
        emu.add_repo(f"{NS}/tree", files={"d/a.txt": b"a", "d/e/b.txt": b"b", "keep.txt": b"k"})
        api.create_commit(
            f"{NS}/tree",
            [CommitOperationDelete(path_in_repo="d/", is_folder=True)],
            commit_message="rm d",
            repo_type="dataset",
        )
        assert set(emu.repo_files(f"{NS}/tree")) == {".gitattributes", "keep.txt"}

    def test_resolve_headers(self, emu, api):
        """HEAD /resolve answers ETag (git blob sha1), X-Repo-Commit and Content-Length."""
        emu.add_repo(f"{NS}/h", files={"f.txt": b"hello"})
        status, headers, _ = raw(f"{emu.url}/datasets/{NS}/h/resolve/main/f.txt", method="HEAD")
        assert status == 200
        assert headers["ETag"] == f'"{git_blob_sha1(b"hello")}"'
        assert headers["X-Repo-Commit"] == api.repo_info(f"{NS}/h", repo_type="dataset").sha
        assert headers["Content-Length"] == "5"

    def test_identical_upload_skips_commit(self, emu, api):
        """preupload returns the remote oid so the client skips committing unchanged content."""
        emu.add_repo(f"{NS}/same", files={"f.txt": b"same"})
        api.upload_file(path_or_fileobj=b"same", path_in_repo="f.txt", repo_id=f"{NS}/same", repo_type="dataset")
        assert [r for r in emu.requests if r["route"] == "commit"] == []


# ----------------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------------
JOB_SCRIPT = """
import hashlib, os
from huggingface_hub import HfApi
print("hello from job", flush=True)
print("greeting=" + os.environ["GREETING"])
print("token-sha=" + hashlib.sha256(os.environ["HF_TOKEN"].encode()).hexdigest()[:12])
print("host-hf-var=" + str("HF_EMU_SENTINEL" in os.environ))
HfApi().upload_file(
    path_or_fileobj=(os.environ["JOB_ID"] + " " + os.environ["GREETING"]).encode(),
    path_in_repo="out/result.txt", repo_id="alice/results", repo_type="dataset",
)
print("uploaded to " + os.environ["HF_ENDPOINT"])
"""


class TestJobs:
    def test_run_job_env_secret_upload_and_logs(self, emu, api, monkeypatch):
        """A job gets env + secrets, uploads through HF_ENDPOINT/HF_TOKEN, completes, and logs its prints."""
        monkeypatch.setenv("HF_EMU_SENTINEL", "1")  # host HF_* variables must not leak into jobs
        api.create_repo(f"{NS}/results", repo_type="dataset", private=True)
        job = run_python(api, JOB_SCRIPT, env={"GREETING": "hi"}, secrets={"HF_TOKEN": TOKEN}, labels={"t": "1"})
        assert job.status.stage == "SCHEDULING"
        assert job.environment == {"GREETING": "hi"}
        assert TOKEN not in json.dumps(job.environment) and TOKEN not in json.dumps(job.secrets)
        done = wait_stage(api, job.id, ("COMPLETED", "ERROR"))
        logs = list(api.fetch_job_logs(job_id=job.id, namespace=NS))
        assert done.status.stage == "COMPLETED", logs
        assert done.started_at and done.finished_at and done.labels["t"] == "1"
        token_sha = hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
        assert logs[:4] == ["hello from job", "greeting=hi", f"token-sha={token_sha}", "host-hf-var=False"]
        assert f"uploaded to {emu.url}" in logs and not any(TOKEN in line for line in logs)
        assert emu.repo_files(f"{NS}/results")["out/result.txt"] == f"{job.id} hi".encode()

    def test_nonzero_exit_is_error(self, api):
        """A non-zero exit code ends the job in ERROR with the code in the message."""
        job = run_python(api, "import sys; print('bye'); sys.exit(3)")
        done = wait_stage(api, job.id, ("COMPLETED", "ERROR"))
        assert done.status.stage == "ERROR" and "3" in done.status.message

    def test_timeout_is_error(self, emu, api):
        """A job running past its timeout is killed and ends in ERROR with a timeout message."""
        job = run_python(api, "import time; time.sleep(30)", timeout=1)
        done = wait_stage(api, job.id, ("COMPLETED", "ERROR"), timeout=10)
        assert done.status.stage == "ERROR" and "timed out" in done.status.message
        assert not pid_alive(emu.jobs[job.id]["emulator"]["pid"])

    def test_list_jobs_label_and_stage_filters(self, api):
        """list_jobs filters by labels (label=k=v) and by stage (stage=X)."""
        job_a = run_python(api, "print('a')", labels={"team": "a"})
        job_b = run_python(api, "print('b')", labels={"team": "b"})
        for job in (job_a, job_b):
            wait_stage(api, job.id, ("COMPLETED",))
        assert [j.id for j in api.list_jobs(labels={"team": "a"}, namespace=NS)] == [job_a.id]
        assert {j.id for j in api.list_jobs(status="COMPLETED", namespace=NS)} == {job_a.id, job_b.id}
        assert list(api.list_jobs(status=["RUNNING", "SCHEDULING"], namespace=NS)) == []

    def test_cancel_kills_process_group(self, emu, api):
        """Canceling a running job marks it CANCELED and kills its process and its children."""
        code = (
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('child', child.pid, flush=True)\n"
            "time.sleep(60)\n"
        )
        job = run_python(api, code)
        wait_until(lambda: any(line.startswith("child") for line in emu.job_logs(job.id)), what="child pid")
        pid = emu.jobs[job.id]["emulator"]["pid"]
        child = int(next(line for line in emu.job_logs(job.id) if line.startswith("child")).split()[1])
        assert pid_alive(pid) and pid_alive(child)
        api.cancel_job(job_id=job.id, namespace=NS)
        assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "CANCELED"
        wait_until(lambda: not pid_alive(pid) and not pid_alive(child), timeout=5, what="process exit")

    @pytest.mark.filterwarnings("ignore")
    def test_run_uv_job_with_emulator_script_url(self, emu, api):
        """run_uv_job with a script URL served by the emulator runs it with the local interpreter."""
        emu.add_repo(f"{NS}/scripts", files={"hello.py": "import sys\nprint('uv-args', sys.argv[1:])\n"})
        url = f"{emu.url}/datasets/{NS}/scripts/resolve/main/hello.py"
        job = api.run_uv_job(url, script_args=["--n", "3"], dependencies=["numpy"], python="3.12", namespace=NS)
        assert job.command == ["uv", "run", "--with", "numpy", "--python", "3.12", url, "--n", "3"]
        assert wait_stage(api, job.id, ("COMPLETED", "ERROR")).status.stage == "COMPLETED"
        assert "uv-args ['--n', '3']" in emu.job_logs(job.id)

    def test_unknown_flavor_and_job(self, api):
        """An unknown flavor is a 400 BadRequestError; an unknown job id is a JobNotFoundError."""
        with pytest.raises(BadRequestError):
            run_python(api, "print(1)", flavor="tpu-v9")
        with pytest.raises(JobNotFoundError):
            api.inspect_job(job_id="0" * 24, namespace=NS)

    def test_stop_kills_running_jobs(self):
        """Stopping the emulator kills the process group of every running job."""
        with HubEmulator(token=TOKEN, namespace=NS) as emulator:
            job = run_python(HfApi(endpoint=emulator.url, token=TOKEN), "import time; time.sleep(60)")
            snapshot = emulator.wait_job(job.id, stages=("RUNNING",))
        assert not pid_alive(snapshot["emulator"]["pid"])


# ----------------------------------------------------------------------------------------------------
# Job logs (SSE)
# ----------------------------------------------------------------------------------------------------
class TestJobLogs:
    def test_follow_streams_until_job_ends(self, api):
        """fetch_job_logs(follow=True) yields lines as they come and returns once the job is over."""
        job = run_python(api, "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.2)")
        started = time.monotonic()
        lines = list(api.fetch_job_logs(job_id=job.id, namespace=NS, follow=True))
        assert lines == ["line 0", "line 1", "line 2"]
        assert time.monotonic() - started < 8
        assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "COMPLETED"

    def test_tail_and_sse_format(self, emu, api):
        """tail=N returns the last N events; raw SSE lines are `data: {"data", "timestamp"}`."""
        job = run_python(api, "print('one'); print('two')")
        wait_stage(api, job.id, ("COMPLETED",))
        assert list(api.fetch_job_logs(job_id=job.id, namespace=NS, tail=1)) == ["two"]
        status, headers, body = raw(f"{emu.url}/api/jobs/{NS}/{job.id}/logs")
        events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
        assert status == 200 and headers["Content-Type"] == "text/event-stream"
        assert events[0]["data"].startswith("===== Job started") and [e["data"] for e in events[1:]] == [
            "one",
            "two",
        ]
        assert all(e["timestamp"].endswith("Z") for e in events)


# ----------------------------------------------------------------------------------------------------
# Hardware
# ----------------------------------------------------------------------------------------------------
class TestHardware:
    def test_prices_and_specs(self, api):
        """list_jobs_hardware parses per-minute prices matching realistic hourly rates."""
        hardware = {h.name: h for h in api.list_jobs_hardware()}
        required = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "a10g-small", "a10g-large"}
        assert required | {"a100-large", "l40sx1", "h200"} <= set(hardware)
        # the real Hub's names only: the client's JobHardware enum is kept in sync with the Hub API
        assert set(hardware) <= {h.value for h in JobHardware}
        a10g = hardware["a10g-small"]
        assert a10g.unit_label == "minute" and a10g.unit_cost_usd * 60 == pytest.approx(1.0, rel=1e-3)
        assert a10g.unit_cost_micro_usd == 16667 and a10g.accelerator.model == "A10G"
        assert hardware["cpu-basic"].accelerator is None and hardware["t4-small"].accelerator.vram == "16 GB"


# ----------------------------------------------------------------------------------------------------
# HTTP fault knobs
# ----------------------------------------------------------------------------------------------------
class TestHttpFaults:
    def test_status_fault_counts_down(self, emu, api):
        """A 402 on jobs.create fails exactly `times` requests with X-Error-Code, then clears."""
        emu.add_fault(route="jobs.create", status=402, times=2, message="Add a payment method")
        for _ in range(2):
            with pytest.raises(HfHubHTTPError) as info:
                run_python(api, "print(1)")
            assert info.value.response.status_code == 402
            assert info.value.response.headers["X-Error-Code"] == "EmulatedFault"
            assert "Add a payment method" in str(info.value)
        assert run_python(api, "print(1)").id and emu.faults == []

    def test_429_carries_retry_after(self, emu, api):
        """A 429 fault sends Retry-After, visible on the client's error response."""
        emu.add_fault(route="hardware", status=429, retry_after=7)
        with pytest.raises(HfHubHTTPError) as info:
            api.list_jobs_hardware()
        assert info.value.response.status_code == 429 and info.value.response.headers["Retry-After"] == "7"

    def test_429_is_retried_by_backoff_routes(self, emu, api):
        """preupload goes through http_backoff, so a 429 with Retry-After: 0 is retried and succeeds."""
        emu.add_repo(f"{NS}/r")
        emu.add_fault(route="preupload", status=429, retry_after=0)
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=f"{NS}/r", repo_type="dataset")
        assert [r["status"] for r in emu.requests if r["route"] == "preupload"] == [429, 200]

    def test_connection_reset(self, emu, api):
        """A reset fault closes the socket without an answer: the client gets a transport error."""
        emu.add_fault(route="whoami", reset=True)
        with pytest.raises(httpx2.TransportError):
            api.whoami()
        assert api.whoami()["name"] == NS
        assert [r["status"] for r in emu.requests if r["route"] == "whoami"] == [0, 200]

    def test_commit_and_resolve_faults(self, emu, api):
        """Faults on commit and resolve surface as HfHubHTTPError with the chosen status."""
        emu.add_repo(f"{NS}/c", files={"a.txt": b"a"})
        emu.add_fault(route="commit", status=500)
        with pytest.raises(HfHubHTTPError) as info:
            api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id=f"{NS}/c", repo_type="dataset")
        assert info.value.response.status_code == 500 and "b.txt" not in emu.repo_files(f"{NS}/c")
        emu.add_fault(route="resolve", status=503)
        with pytest.raises(HfHubHTTPError) as info:
            api.file_exists(f"{NS}/c", "a.txt", repo_type="dataset")
        assert info.value.response.status_code == 503

    def test_delay_slows_route(self, emu, api):
        """A delay-only fault answers normally, just later."""
        emu.add_fault(route="hardware", delay=0.3)
        started = time.monotonic()
        assert api.list_jobs_hardware()
        assert time.monotonic() - started >= 0.3

    def test_invalid_fault_rejected(self, emu):
        """Unknown routes, modes or empty faults are rejected."""
        for spec in ({"route": "nope", "status": 500}, {"route": "whoami"}, {"job": "explode"}):
            with pytest.raises(ValueError):
                emu.add_fault(spec)


# ----------------------------------------------------------------------------------------------------
# Job fault knobs
# ----------------------------------------------------------------------------------------------------
class TestJobFaults:
    def test_error_before_run(self, emu, api):
        """An `error` job fault ends the job in ERROR without running it; label-scoped faults skip others."""
        emu.add_fault(job="error", message="no capacity", labels={"kind": "x"})
        spared = run_python(api, "print('ran')")
        failed = run_python(api, "print('ran')", labels={"kind": "x"})
        done = wait_stage(api, failed.id, ("COMPLETED", "ERROR"))
        assert done.status.stage == "ERROR" and done.status.message == "no capacity"
        assert emu.jobs[failed.id]["emulator"]["pid"] is None and emu.job_logs(failed.id) == []
        assert wait_stage(api, spared.id, ("COMPLETED", "ERROR")).status.stage == "COMPLETED"

    def test_error_after_run(self, emu, api):
        """An `error_after_run` job fault runs the command, then ends in ERROR."""
        emu.add_fault(job="error_after_run", message="node lost")
        job = run_python(api, "print('ran')")
        done = wait_stage(api, job.id, ("COMPLETED", "ERROR"))
        assert done.status.stage == "ERROR" and done.status.message == "node lost"
        assert "ran" in emu.job_logs(job.id) and emu.jobs[job.id]["emulator"]["exit_code"] == 0

    def test_stay_scheduling(self, emu, api):
        """A `stay_scheduling` job never starts until canceled."""
        emu.add_fault(job="stay_scheduling")
        job = run_python(api, "print('ran')")
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "SCHEDULING"
            time.sleep(0.05)
        assert [j.id for j in api.list_jobs(status="SCHEDULING", namespace=NS)] == [job.id]
        api.cancel_job(job_id=job.id, namespace=NS)
        assert wait_stage(api, job.id, ("CANCELED",)).started_at is None

    def test_slow_job(self, emu, api):
        """A `slow` job waits start_delay in SCHEDULING and finish_delay in RUNNING after exiting."""
        # 3 s in SCHEDULING: the inspect right after the create must come within it, even on a loaded machine
        emu.add_fault(job="slow", start_delay=3.0, finish_delay=0.3)
        job = run_python(api, "print('ran')")
        assert api.inspect_job(job_id=job.id, namespace=NS).status.stage == "SCHEDULING"
        done = wait_stage(api, job.id, ("COMPLETED", "ERROR"))
        assert done.status.stage == "COMPLETED"
        assert (done.started_at - done.created_at).total_seconds() >= 2.95
        assert (done.finished_at - done.started_at).total_seconds() >= 0.25


# ----------------------------------------------------------------------------------------------------
# Control endpoints
# ----------------------------------------------------------------------------------------------------
class TestControlEndpoints:
    def test_faults_endpoint_and_state(self, emu, api):
        """POST/DELETE /_emulator/faults change faults at runtime; GET /_emulator/state reports everything."""
        status, _, body = raw(
            f"{emu.url}/_emulator/faults", "POST", json.dumps([{"route": "whoami", "status": 503}]).encode()
        )
        assert status == 200 and json.loads(body)["faults"][0]["route"] == "whoami"
        with pytest.raises(HfHubHTTPError) as info:
            api.whoami()
        assert info.value.response.status_code == 503
        emu.add_repo(f"{NS}/s", files={"a.txt": b"abc"})
        job = run_python(api, "print('state')")
        emu.wait_job(job.id)
        raw(f"{emu.url}/_emulator/faults", "POST", json.dumps({"job": "error"}).encode())
        state = json.loads(raw(f"{emu.url}/_emulator/state")[2])
        assert state["faults"] == [{"job": "error", "times": 1}]
        assert state["jobs"][0]["id"] == job.id and state["jobs"][0]["emulator"]["logs"][-1] == "state"
        repo = next(r for r in state["repos"] if r["id"] == f"{NS}/s")
        assert repo["files"]["a.txt"] == 3 and repo["type"] == "dataset"
        assert raw(f"{emu.url}/_emulator/faults", "DELETE")[0] == 200 and emu.faults == []
        bad = raw(f"{emu.url}/_emulator/faults", "POST", json.dumps({"route": "nope", "status": 1}).encode())
        assert bad[0] == 400


# ----------------------------------------------------------------------------------------------------
# Standalone CLI
# ----------------------------------------------------------------------------------------------------
@pytest.fixture
def cli_emulator():
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen([PY, str(EMULATOR_PATH), "--port", "0", *args], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=15), "emulator did not print its URL"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        return proc, url

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


class TestCli:
    def test_cli_serves_and_terminates(self, cli_emulator):
        """The CLI prints its URL, honours --token/--namespace/--fault, and exits 0 on SIGTERM."""
        proc, url = cli_emulator(
            "--token", "hf_cli", "--namespace", "bob", "--fault", '{"route": "hardware", "status": 503}'
        )
        api = HfApi(endpoint=url, token="hf_cli")
        assert api.whoami()["name"] == "bob"
        with pytest.raises(HfHubHTTPError) as info:
            api.list_jobs_hardware()
        assert info.value.response.status_code == 503
        proc.terminate()
        assert proc.wait(timeout=10) == 0

    def test_cli_stop_kills_jobs(self, cli_emulator):
        """Terminating the CLI emulator kills its running jobs."""
        proc, url = cli_emulator()
        api = HfApi(endpoint=url, token=TOKEN)
        job = run_python(api, "import time; print('up', flush=True); time.sleep(60)")
        wait_stage(api, job.id, ("RUNNING",))
        pid = json.loads(raw(f"{url}/_emulator/state")[2])["jobs"][0]["emulator"]["pid"]
        assert pid_alive(pid)
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        wait_until(lambda: not pid_alive(pid), timeout=5, what="job process exit")

    def test_cli_help(self):
        """--help documents the flags."""
        out = subprocess.run([PY, str(EMULATOR_PATH), "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0
        for flag in ("--port", "--token", "--namespace", "--python", "--fault", "--scheduling-delay"):
            assert flag in out.stdout
