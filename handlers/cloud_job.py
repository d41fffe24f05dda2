"""What runs inside a Hugging Face Job: diarize every input of one batch with the local engine's code.

Started by ``cloud_bootstrap`` from the wheel the daemon staged. Reads the batch manifest from the staging
dataset repo, runs ``diarize_file`` (the function the local route uses) on each input with the daemon's model
settings, and uploads ``result.json`` + ``result.rttm`` (or ``error.json`` for an input that cannot be
processed) under ``jobs/<JOB_ID>/<sha256>/`` one input at a time, so a job that dies half way still returns
what it finished. Exit codes: 0 every input answered (results or per-input errors), 3 the model could not be
loaded, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _say(message: str) -> None:
    print(f"diarist job: {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diarist-job")
    parser.add_argument("repo")
    parser.add_argument("manifest")
    parser.add_argument("--wheel", default=None, help="name of the wheel this code came from (for the record)")
    args = parser.parse_args(argv)

    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

    from diarist.handlers import results
    from diarist.handlers.asr import Transcribers
    from diarist.handlers.cloud_manifest import CLOUD_BACKEND, Manifest, result_folder
    from diarist.handlers.engine import LocalEngine
    from diarist.handlers.errors import DiaristError, ModelError
    from diarist.handlers.local import diarize_file
    from diarist.policies.flavor import Task

    token = os.environ.get("HF_TOKEN")
    job_id = os.environ.get("JOB_ID", "local")
    api = HfApi(token=token)
    work = Path(tempfile.mkdtemp(prefix="diarist-inputs-"))
    try:
        manifest = Manifest.from_json(
            json.loads(
                Path(
                    hf_hub_download(args.repo, args.manifest, repo_type="dataset", token=token, local_dir=work)
                ).read_text()
            )
        )
    except ValueError as e:
        _say(str(e))
        return 1
    import diarist.handlers

    code_from = str(Path(diarist.handlers.__file__).parent)
    _say(f"running diarist code from {code_from} ({args.wheel or 'installed package'})")
    engine = LocalEngine.from_settings(manifest.models, token=token, telemetry=manifest.telemetry)
    try:
        engine.load()
    except ModelError as e:
        _say(f"model error: {e}")
        return 3
    _say(f"models loaded in {engine.load_seconds:.1f} s on {engine.info.device}")
    # speech recognition loads on the first transcribe input (most batches never need it)
    transcribers = Transcribers(manifest.transcription, token=token)

    for n, item in enumerate(manifest.items, 1):
        sha = item.sha256
        folder = result_folder(job_id, sha)
        # the Hub keeps job logs beyond diarist's reach: they name a file by its content hash, never its name
        _say(f"[{n}/{len(manifest.items)}] input {sha[:12]}")
        started = time.monotonic()
        try:
            local = Path(hf_hub_download(args.repo, item.input, repo_type="dataset", token=token, local_dir=work))
            doc = diarize_file(
                local,
                engine=engine,
                name=item.name,
                relative_path=item.relative_path,
                sha256=sha,
                task=Task(item.task),
                speakers=item.speakers,
                route=item.route,
                transcribers=transcribers,
                language=item.language,
                backend={
                    "backend": CLOUD_BACKEND,
                    "job_id": job_id,
                    "flavor": manifest.flavor,
                    "code": {"wheel": args.wheel, "loaded_from": code_from},
                },
            )
            files = {
                f"{folder}/result.json": results.dumps(doc),
                f"{folder}/result.rttm": results.rttm_of(doc).encode(),
            }
            _say(f"  {len(doc['speakers'])} speakers in {time.monotonic() - started:.1f} s")
        except DiaristError as e:  # this input cannot be processed; the others still can
            error = {"kind": e.kind, "message": e.message, "hint": e.hint}
            files = {f"{folder}/error.json": json.dumps(error, indent=2).encode()}
            _say(f"  failed: {e}")
        api.create_commit(
            args.repo,
            repo_type="dataset",
            operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()],
            commit_message=f"diarist job {job_id}: {item.name}",
        )
    _say("all inputs answered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
