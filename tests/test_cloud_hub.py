"""The daemon's Hub handle, the submitter and the result fetcher, against the loopback Hub emulator with the
real huggingface_hub client, nothing patched (diarist.handlers.cloud_hub, .cloud_submit, .cloud_fetch)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from diarist.handlers import cloud_fetch
from diarist.handlers.cloud_hub import Hub, JobSnapshot
from diarist.handlers.cloud_manifest import MANIFEST_SCHEMA, result_folder
from diarist.handlers.cloud_submit import (
    BOOTSTRAP,
    JobItem,
    JobSpec,
    Submitter,
    input_path,
    job_labels,
    label_value,
    manifest_path,
    wheel_path,
)
from diarist.handlers.engine import Segment
from diarist.handlers.engine_settings import EngineSettings
from diarist.handlers.errors import CloudError, CloudTransientError
from diarist.handlers.results import SourceFacts, build_result, dumps
from diarist.policies.pricing import FlavorPrice, PriceUnit

from conftest import SUITE_TOKEN
from hub_emulator import HubEmulator

TOKEN, NS = SUITE_TOKEN, "alice"
STAGING = f"{NS}/diarist-staging"


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def emu() -> Iterator[HubEmulator]:
    with HubEmulator(token=TOKEN, namespace=NS, kill_grace=0.2) as emulator:
        yield emulator


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def hub(emu: HubEmulator, sleep: RecordingSleep) -> Hub:
    return Hub(token=TOKEN, namespace=NS, endpoint=emu.url, sleep=sleep)


def routes(emu: HubEmulator, route: str) -> list[dict[str, Any]]:
    return [r for r in emu.requests if r["route"] == route]


def repo_state(emu: HubEmulator, repo_id: str = STAGING) -> dict[str, Any]:
    return next(r for r in emu.state()["repos"] if r["id"] == repo_id)


def audio_file(folder: Path, name: str, content: bytes) -> tuple[Path, str]:
    path = folder / name
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def spec_for(items: list[tuple[Path, str]], batch_id: str = "b-0001", **overrides: Any) -> JobSpec:
    kwargs: dict[str, Any] = {
        "batch_id": batch_id,
        "host": "nas 1.local",
        "flavor": "a10g-small",
        "timeout_seconds": 1234,
        "image": "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime",
        "models": EngineSettings(pipeline="bundled", device="auto"),
        "items": tuple(
            JobItem(
                sha256=sha,
                local_path=path,
                name=path.name,
                relative_path=f"team/{path.name}",
                task="diarization",
                speakers={"num_speakers": 2},
                route={"decision": "cloud", "reason": "test"},
            )
            for path, sha in items
        ),
    }
    kwargs.update(overrides)
    return JobSpec(**kwargs)


def result_doc(sha: str) -> dict[str, Any]:
    segs = (Segment(0.0, 1.5, "SPEAKER_00"), Segment(1.5, 3.0, "SPEAKER_01"))
    return build_result(
        source=SourceFacts("a.wav", "a.wav", sha, 10, 3.0, 16000, 1),
        task="diarization",
        engine={"backend": "hf-jobs", "device": "cuda"},
        route={"decision": "cloud", "reason": "test"},
        timings={"total_seconds": 1.0},
        segments=segs,
        exclusive_segments=segs,
        vad=None,
        overlap=None,
    )


# -- the Hub handle ----------------------------------------------------------------------------------------


class TestHubConnect:
    def test_namespace_from_whoami(self, emu: HubEmulator) -> None:
        """Without a namespace the token's own user is asked once, and names the staging repo."""
        hub = Hub(token=TOKEN, endpoint=emu.url + "/")
        assert hub.namespace == NS
        assert hub.repo == STAGING
        assert hub.endpoint == emu.url
        assert len(routes(emu, "whoami")) == 1

    def test_given_namespace_skips_whoami(self, emu: HubEmulator) -> None:
        """A configured namespace costs no request; the staging repo template is filled with it."""
        hub = Hub(token=TOKEN, namespace=NS, staging_repo="{namespace}/scratch", endpoint=emu.url)
        assert hub.repo == f"{NS}/scratch"
        assert emu.requests == []

    def test_bad_token_is_a_cloud_error(self, emu: HubEmulator) -> None:
        """A token the Hub rejects fails at connect with a permanent, actionable error."""
        with pytest.raises(CloudError) as info:
            Hub(token="hf_wrongWRONGwrong123", endpoint=emu.url)
        assert info.value.status == 401
        assert "check the Hugging Face token" in str(info.value)


class TestStagingRepo:
    def test_ensure_repo_creates_a_private_dataset_once(self, hub: Hub, emu: HubEmulator) -> None:
        """The staging repo is a PRIVATE dataset; a second call costs nothing."""
        hub.ensure_repo()
        hub.ensure_repo()
        state = repo_state(emu)
        assert state["type"] == "dataset" and state["private"] is True
        assert len(routes(emu, "repos.create")) == 1

    def test_ensure_repo_accepts_an_existing_repo(self, hub: Hub, emu: HubEmulator) -> None:
        """A repo left by an earlier run (or another host) is reused, files and all."""
        emu.add_repo(STAGING, private=True, files={"code/x/old.whl": b"old"})
        hub.ensure_repo()
        assert emu.repo_files(STAGING)["code/x/old.whl"] == b"old"

    def test_upload_read_exists_list_delete_round_trip(self, hub: Hub, emu: HubEmulator, tmp_path: Path) -> None:
        """Bytes and local files go up in one commit and come back; deleting files and folders removes them."""
        local = tmp_path / "input.wav"
        local.write_bytes(b"RIFF....WAVE")
        hub.upload({"a/b.json": b'{"x": 1}', "a/c/d.txt": b"deep", "inputs/x.wav": local}, "stage")
        assert len(routes(emu, "commit")) == 1

        assert hub.read("a/b.json") == b'{"x": 1}'
        assert hub.read("inputs/x.wav") == b"RIFF....WAVE"
        assert hub.exists("a/c/d.txt") and not hub.exists("a/nope.txt")
        assert set(hub.list_files()) == {".gitattributes", "a/b.json", "a/c/d.txt", "inputs/x.wav"}

        hub.delete(["inputs/x.wav"], ["a"], "clean")
        assert hub.list_files() == [".gitattributes"]
        assert not hub.exists("inputs/x.wav")

    def test_read_missing_path_is_none(self, hub: Hub) -> None:
        """A file that is not there reads as None, not an error."""
        hub.ensure_repo()
        assert hub.read("jobs/j/none/result.json") is None

    def test_read_from_a_missing_repo_is_an_error(self, hub: Hub) -> None:
        """A missing repo is not a missing file: it is reported."""
        with pytest.raises(CloudError) as info:
            hub.read("anything.json")
        assert info.value.status in (401, 404)

    def test_delete_of_nothing_sends_nothing(self, hub: Hub, emu: HubEmulator) -> None:
        """No paths, no folders: no (empty) commit."""
        hub.delete([], [], "nothing")
        assert emu.requests == []


class TestJobs:
    def run(self, hub: Hub, **labels: str) -> JobSnapshot:
        return hub.run_job(image="python:3.12", command=["python", "-c", "print(1)"], flavor="t4-small", labels=labels)

    def test_run_inspect_cancel(self, hub: Hub, emu: HubEmulator) -> None:
        """A started job is inspected into a JobSnapshot and can be cancelled."""
        emu.add_fault(job="stay_scheduling")
        started = self.run(hub, app="diarist", batch="b1")
        snap = hub.inspect(started.job_id)
        assert snap.job_id == started.job_id
        assert snap.stage == "SCHEDULING"
        assert snap.flavor == "t4-small"
        assert {"app": "diarist", "batch": "b1"}.items() <= snap.labels.items()  # the client adds "name"
        assert snap.url.endswith(f"/jobs/{NS}/{started.job_id}")
        assert snap.created_at is not None and snap.running_seconds is None
        hub.cancel(started.job_id)
        assert emu.wait_job(started.job_id)["status"]["stage"] == "CANCELED"
        assert hub.inspect(started.job_id).stage == "CANCELED"

    def test_find_filters_by_labels(self, hub: Hub, emu: HubEmulator) -> None:
        """find() returns only the jobs whose labels include all the given ones."""
        emu.add_fault(job="stay_scheduling", times=3)
        mine = self.run(hub, app="diarist", batch="b1")
        self.run(hub, app="diarist", batch="b2")
        self.run(hub, app="other", batch="b1")
        assert [s.job_id for s in hub.find({"app": "diarist", "batch": "b1"})] == [mine.job_id]
        assert len(hub.find({"app": "diarist"})) == 2
        assert hub.find({"app": "nobody"}) == []

    def test_prices_convert_the_hardware_list(self, hub: Hub) -> None:
        """The Hub's per-minute prices become FlavorPrice in micro-dollars; GPU flavors are accelerators."""
        prices = {p.name: p for p in hub.prices()}
        assert prices["a10g-small"] == FlavorPrice("a10g-small", Decimal("0.016667"), PriceUnit.MINUTE, True)
        assert prices["a10g-small"].unit_cost_usd * 60 == pytest.approx(Decimal("1.00"), abs=Decimal("0.0001"))
        assert prices["cpu-basic"].accelerator is False
        assert prices["h200"].unit_label is PriceUnit.MINUTE
        assert len(prices) == 12

    def test_transient_inspect_is_retried_with_backoff(self, hub: Hub, emu: HubEmulator, sleep: RecordingSleep) -> None:
        """A 503 on inspect is retried after 1 s, then 2 s (injected sleep, nothing waits for real)."""
        emu.add_fault(job="stay_scheduling")
        job = self.run(hub)
        emu.add_fault(route="jobs.inspect", status=503, times=2)
        assert hub.inspect(job.job_id).stage == "SCHEDULING"
        assert sleep.calls == [1.0, 2.0]
        assert [r["status"] for r in routes(emu, "jobs.inspect")] == [503, 503, 200]

    def test_transient_inspect_gives_up_after_the_attempts(self, emu: HubEmulator, sleep: RecordingSleep) -> None:
        """When every attempt fails the last transient error is raised, still transient."""
        hub = Hub(token=TOKEN, namespace=NS, endpoint=emu.url, sleep=sleep, attempts=3)
        emu.add_fault(route="jobs.inspect", status=503, times=-1)
        with pytest.raises(CloudTransientError):
            hub.inspect("0123456789abcdef")
        assert len(routes(emu, "jobs.inspect")) == 3
        assert sleep.calls == [1.0, 2.0]

    def test_run_job_is_never_retried(self, hub: Hub, emu: HubEmulator, sleep: RecordingSleep) -> None:
        """A 503 on create is not retried: the lost answer may hide a started job (found later by labels)."""
        emu.add_fault(route="jobs.create", status=503)
        with pytest.raises(CloudTransientError):
            self.run(hub, app="diarist")
        assert len(routes(emu, "jobs.create")) == 1
        assert sleep.calls == []
        assert emu.jobs == {}


# -- the submitter -----------------------------------------------------------------------------------------


class TestHelpers:
    def test_input_path_keeps_a_sane_extension(self) -> None:
        """Inputs are content-addressed; only a short alphanumeric extension survives, lower-cased."""
        assert input_path("ab" * 32, "Meeting.M4A") == f"inputs/{'ab' * 32}.m4a"
        assert input_path("ab" * 32, "noext") == f"inputs/{'ab' * 32}"
        assert input_path("ab" * 32, "odd.we ird") == f"inputs/{'ab' * 32}"

    def test_label_value_is_a_short_identifier(self) -> None:
        """Label values keep [A-Za-z0-9._-] and at most 63 characters."""
        assert label_value("nas 1.local/x") == "nas-1.local-x"
        assert len(label_value("h" * 100)) == 63
        assert label_value("") == "-"


class TestSubmitterStage:
    def test_stage_uploads_wheel_inputs_and_manifest(self, hub: Hub, emu: HubEmulator, tmp_path: Path) -> None:
        """One commit holds the wheel, each input and the manifest; the batch owns inputs and manifest."""
        a, b = audio_file(tmp_path, "a.wav", b"AAAA"), audio_file(tmp_path, "b.mp3", b"BBBB")
        sub = Submitter(hub)
        spec = spec_for([a, b])
        owned = sub.stage(spec)

        files = emu.repo_files(STAGING)
        code = wheel_path(sub.wheel)
        assert code == f"code/{sub.wheel.sha256[:16]}/{sub.wheel.filename}"
        assert files[code] == sub.wheel.data
        assert files[input_path(a[1], "a.wav")] == b"AAAA"
        assert files[input_path(b[1], "b.mp3")] == b"BBBB"
        assert owned == sorted([manifest_path("b-0001"), input_path(a[1], "a.wav"), input_path(b[1], "b.mp3")])
        assert repo_state(emu)["private"] is True
        assert len(routes(emu, "commit")) == 1

        doc = json.loads(files[manifest_path("b-0001")])
        assert doc["schema"] == MANIFEST_SCHEMA and doc["batch"] == "b-0001" and doc["flavor"] == "a10g-small"
        assert [i["input"] for i in doc["items"]] == [input_path(a[1], "a.wav"), input_path(b[1], "b.mp3")]
        assert doc["items"][0]["relative_path"] == "team/a.wav"
        assert doc["items"][0]["speakers"] == {"num_speakers": 2}

    def test_same_content_twice_is_uploaded_once(self, hub: Hub, emu: HubEmulator, tmp_path: Path) -> None:
        """Two files with the same content in one batch share one staged input."""
        a = audio_file(tmp_path, "a.wav", b"SAME")
        b = audio_file(tmp_path, "b.wav", b"SAME")
        owned = Submitter(hub).stage(spec_for([a, b]))
        assert owned == [manifest_path("b-0001"), input_path(a[1], "a.wav")]

    def test_restaging_uploads_no_input_or_wheel_again(self, hub: Hub, emu: HubEmulator, tmp_path: Path) -> None:
        """What is already staged (content-addressed) is not sent again: a retry or a new batch is cheap."""
        path, sha = audio_file(tmp_path, "a.wav", b"ORIGINAL")
        sub = Submitter(hub)
        sub.stage(spec_for([(path, sha)]))
        commits = len(routes(emu, "commit"))

        # the same spec again: everything is there, so no commit at all
        sub.stage(spec_for([(path, sha)]))
        assert len(routes(emu, "commit")) == commits

        # mark the staged copies, change the local file behind the same sha: a re-upload would show
        emu.add_repo(STAGING, files={input_path(sha, "a.wav"): b"MARK-INPUT", wheel_path(sub.wheel): b"MARK-WHEEL"})
        path.write_bytes(b"CHANGED")
        sub.stage(spec_for([(path, sha)], batch_id="b-0002"))
        files = emu.repo_files(STAGING)
        assert len(routes(emu, "commit")) == commits + 1, "one commit, for the new manifest"
        assert files[input_path(sha, "a.wav")] == b"MARK-INPUT"
        assert files[wheel_path(sub.wheel)] == b"MARK-WHEEL"
        assert manifest_path("b-0002") in files

    def test_wheel_is_built_once_per_submitter(self, hub: Hub) -> None:
        """The wheel property caches its build."""
        sub = Submitter(hub)
        assert sub.wheel is sub.wheel


class TestSubmitterStart:
    def test_start_sends_labels_secret_timeout_flavor_and_bootstrap(
        self, hub: Hub, emu: HubEmulator, tmp_path: Path
    ) -> None:
        """The job carries diarist's labels, the token only as a secret, our timeout and the bootstrap command."""
        a, b = audio_file(tmp_path, "a.wav", b"AAAA"), audio_file(tmp_path, "b.wav", b"BBBB")
        spec = spec_for([a, b], flavor="t4-small", timeout_seconds=4321)
        sub = Submitter(hub)
        emu.add_fault(job="stay_scheduling")
        snap = sub.start(spec)
        try:
            job = emu.jobs[snap.job_id]
            assert snap.stage == "SCHEDULING"
            assert job["labels"] == {
                "app": "diarist",
                "sha": a[1][:40],
                "host": "nas-1.local",
                "batch": "b-0001",
                "files": "2",
                "name": "diarist-b-0001",
            }
            assert job_labels(spec) == {k: v for k, v in job["labels"].items() if k != "name"}
            assert job["secrets"] == {"HF_TOKEN": "***"}
            assert job["environment"] == {}
            assert TOKEN not in json.dumps({k: v for k, v in job.items() if k != "secrets"})
            assert job["timeoutSeconds"] == 4321
            assert job["flavor"] == "t4-small"
            assert job["dockerImage"] == spec.image
            assert job["command"] == [
                "python",
                "-c",
                BOOTSTRAP.read_text(encoding="utf-8"),
                STAGING,
                wheel_path(sub.wheel),
                manifest_path("b-0001"),
            ]
        finally:
            hub.cancel(snap.job_id)
        assert emu.wait_job(snap.job_id)["status"]["stage"] == "CANCELED"

    def test_bootstrap_runs_the_staged_wheel(self, hub: Hub, emu: HubEmulator, tmp_path: Path) -> None:
        """In the job, the bootstrap fetches the staged wheel with the secret token and hands over to its code."""
        sub = Submitter(hub)
        spec = spec_for([audio_file(tmp_path, "a.wav", b"AAAA")])
        sub.stage(spec)
        # a manifest this code refuses makes the job stop before any model is loaded
        emu.add_repo(STAGING, files={manifest_path(spec.batch_id): json.dumps({"schema": "diarist.job/0"})})
        snap = sub.start(spec)
        # the job is a fresh interpreter importing huggingface_hub and fetching the wheel: slow on a loaded machine
        job = emu.wait_job(snap.job_id, timeout=60)
        logs = "\n".join(job["emulator"]["logs"])
        assert f"diarist job: fetching {wheel_path(sub.wheel)}" in logs
        assert "installing the runtime stack" not in logs
        assert "unknown manifest schema 'diarist.job/0'" in logs, logs
        assert job["status"] == {"stage": "ERROR", "message": "Job failed with exit code 1"}


# -- the fetcher -------------------------------------------------------------------------------------------


class TestFetch:
    SHA = "cd" * 32
    JOB = "job0001"

    def put(self, hub: Hub, name: str, data: bytes, sha: str = SHA) -> None:
        hub.upload({f"{result_folder(self.JOB, sha)}/{name}": data}, f"job writes {name}")

    def test_result_document(self, hub: Hub) -> None:
        """A valid result.json comes back as the document."""
        doc = result_doc(self.SHA)
        self.put(hub, "result.json", dumps(doc))
        got = cloud_fetch.fetch_one(hub, self.JOB, self.SHA)
        assert got.doc == doc and got.error is None and not got.missing

    def test_error_document(self, hub: Hub) -> None:
        """A per-input error.json comes back as the error."""
        error = {"kind": "bad-input", "message": "not audio", "hint": "check the file"}
        self.put(hub, "error.json", json.dumps(error).encode())
        got = cloud_fetch.fetch_one(hub, self.JOB, self.SHA)
        assert got.error == error and got.doc is None and not got.missing

    def test_result_wins_over_error(self, hub: Hub) -> None:
        """When both exist, the result is used."""
        self.put(hub, "result.json", dumps(result_doc(self.SHA)))
        self.put(hub, "error.json", b'{"kind": "bad-input", "message": "x"}')
        assert cloud_fetch.fetch_one(hub, self.JOB, self.SHA).doc is not None

    def test_missing(self, hub: Hub) -> None:
        """Neither file: the input is missing from the job's answers."""
        hub.ensure_repo()
        self.put(hub, "result.json", dumps(result_doc("ef" * 32)), sha="ef" * 32)
        assert cloud_fetch.fetch_one(hub, self.JOB, self.SHA).missing

    @pytest.mark.parametrize(
        "data",
        [b"{not json", b'{"schema": "diarist.result/0"}', b"[]"],
        ids=["not-json", "wrong-schema", "not-an-object"],
    )
    def test_invalid_result_is_an_error_entry(self, hub: Hub, data: bytes) -> None:
        """A result.json that does not parse or validate is a cloud error for that input, not a crash."""
        self.put(hub, "result.json", data)
        got = cloud_fetch.fetch_one(hub, self.JOB, self.SHA)
        assert got.doc is None
        assert got.error is not None and got.error["kind"] == "cloud"
        assert got.error["message"].startswith("the job's result.json is invalid: ")

    @pytest.mark.parametrize("data", [b"{trunc", b'"just a string"'], ids=["not-json", "not-an-object"])
    def test_invalid_error_is_an_error_entry(self, hub: Hub, data: bytes) -> None:
        """An error.json that is not a JSON object is a cloud error for that input, not a crash."""
        self.put(hub, "error.json", data)
        got = cloud_fetch.fetch_one(hub, self.JOB, self.SHA)
        assert got.doc is None
        assert got.error is not None and got.error["kind"] == "cloud"
        assert got.error["message"].startswith("the job's error.json is invalid: ")

    def test_label_result_records_where_it_ran(self) -> None:
        """The daemon adds the job id, URL, flavor and running time to the engine block."""
        doc = result_doc(self.SHA)
        cloud_fetch.label_result(
            doc, job_id="j1", url="https://hub/jobs/alice/j1", flavor="t4-small", running_seconds=42
        )
        assert doc["engine"] == {
            "backend": "hf-jobs",
            "device": "cuda",
            "job_id": "j1",
            "job_url": "https://hub/jobs/alice/j1",
            "flavor": "t4-small",
            "running_seconds": 42,
        }


class TestCleanup:
    def test_deletes_staged_paths_and_the_job_folder_but_keeps_the_wheel(
        self, hub: Hub, emu: HubEmulator, tmp_path: Path
    ) -> None:
        """Inputs, manifest and jobs/<id>/ go; the code wheel and other batches' files stay."""
        sub = Submitter(hub)
        mine = audio_file(tmp_path, "a.wav", b"MINE")
        other = audio_file(tmp_path, "b.wav", b"OTHER")
        staged = sub.stage(spec_for([mine], batch_id="b-1"))
        sub.stage(spec_for([other], batch_id="b-2"))
        hub.upload(
            {
                f"{result_folder('j1', mine[1])}/result.json": b"{}",
                f"{result_folder('j1', mine[1])}/result.rttm": b"",
                f"{result_folder('j2', other[1])}/result.json": b"{}",
            },
            "results",
        )

        cloud_fetch.cleanup(hub, "j1", [*staged, "inputs/already-gone.wav"])

        assert sorted(emu.repo_files(STAGING)) == sorted(
            [
                ".gitattributes",
                wheel_path(sub.wheel),
                input_path(other[1], "b.wav"),
                manifest_path("b-2"),
                f"{result_folder('j2', other[1])}/result.json",
            ]
        )

    def test_unstarted_batch_without_results(self, hub: Hub, emu: HubEmulator, tmp_path: Path) -> None:
        """A batch that never got a job id (or whose job wrote nothing) deletes only its staged paths."""
        sub = Submitter(hub)
        staged = sub.stage(spec_for([audio_file(tmp_path, "a.wav", b"MINE")]))
        cloud_fetch.cleanup(hub, None, staged)
        cloud_fetch.cleanup(hub, "never-wrote", [])
        assert sorted(emu.repo_files(STAGING)) == [".gitattributes", wheel_path(sub.wheel)]


def binary_audio(tag: bytes) -> bytes:
    """Binary like real audio (the Hub stores it as a large file), and unique to its test."""
    return b"RIFF\x00\x10\x00\x00WAVEfmt " + tag + os.urandom(4096)


def batch_leftovers(emu: HubEmulator) -> list[str]:
    return emu.batch_leftovers(STAGING)


class TestNothingStaysOnTheHub:
    def test_no_revision_or_stored_large_file_keeps_any_byte(self, hub: Hub, emu: HubEmulator, tmp_path: Path) -> None:
        """After clean-up the inputs, manifest and results are in no revision and no stored large file."""
        sub = Submitter(hub)
        content = binary_audio(b"one")
        a = audio_file(tmp_path, "a.wav", content)
        staged = sub.stage(spec_for([a]))
        hub.upload({f"{result_folder('j1', a[1])}/result.json": b'{"speakers": 2}'}, "results")
        assert emu.lfs_names(STAGING)[a[1]] == input_path(a[1], "a.wav"), "staged as a large file, as on the Hub"
        assert emu.traces(STAGING, [content[20:]])

        cloud_fetch.cleanup(hub, "j1", staged)

        assert emu.traces(STAGING, [content[20:], b"team/a.wav"]) == []
        assert batch_leftovers(emu) == []
        # what the real client sees: one revision, and no large file but the code wheel
        assert len(hub.api.list_repo_commits(STAGING, repo_type="dataset")) == 1
        lfs = [f.filename for f in hub.api.list_lfs_files(STAGING, repo_type="dataset")]
        assert lfs == [wheel_path(sub.wheel)]

    def test_an_input_another_hosts_batch_needs_survives_until_that_batch_ends(
        self, emu: HubEmulator, tmp_path: Path
    ) -> None:
        """Two hosts, two ledgers, one staging repo: the same recording in a batch of each."""
        host_a, host_b = (Submitter(Hub(token=TOKEN, namespace=NS, endpoint=emu.url)) for _ in range(2))
        shared_audio, a_only_audio = binary_audio(b"shared"), binary_audio(b"a-only")
        shared = audio_file(tmp_path, "shared.wav", shared_audio)
        a_only = audio_file(tmp_path, "a-only.wav", a_only_audio)
        a_staged = host_a.stage(spec_for([shared, a_only], batch_id="a-1", host="a"))
        b_staged = host_b.stage(spec_for([shared], batch_id="b-1", host="b"))

        cloud_fetch.cleanup(host_a.hub, None, a_staged)
        assert host_b.hub.read(input_path(shared[1], "shared.wav")) == shared_audio, "b's job can still read it"
        assert emu.traces(STAGING, [a_only_audio[20:]]) == []

        cloud_fetch.cleanup(host_b.hub, None, b_staged)
        assert emu.traces(STAGING, [shared_audio[20:], a_only_audio[20:]]) == []
        assert batch_leftovers(emu) == []

    def test_a_commit_in_between_makes_clean_up_and_staging_decide_again(
        self, hub: Hub, emu: HubEmulator, tmp_path: Path
    ) -> None:
        """Both bind their commit to the head they read: a refused commit (412) is decided again, not lost."""
        sub = Submitter(hub)
        a = audio_file(tmp_path, "a.wav", binary_audio(b"race"))
        emu.add_fault(route="commit", status=412, times=1, message="A commit has happened since.")
        staged = sub.stage(spec_for([a]))
        assert manifest_path("b-0001") in emu.repo_files(STAGING)
        emu.add_fault(route="commit", status=412, times=1, message="A commit has happened since.")
        cloud_fetch.cleanup(hub, None, staged)
        assert [r["status"] for r in routes(emu, "commit")] == [412, 200, 412, 200]
        assert batch_leftovers(emu) == []
