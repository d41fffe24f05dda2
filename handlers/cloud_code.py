"""Ship diarist's own code to a cloud job: a wheel built from the modules this process is running.

The job installs (or just imports) this wheel, so the cloud route runs the very engine code of the local
route, never a second copy of the pipeline in a script. The wheel is built from the imported packages rather
than from a source tree, so it works the same for an editable checkout and for an installed package, and its
bytes are deterministic (fixed timestamps, sorted entries): the same code always stages under the same path.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("diarist.daemon", "diarist.handlers", "diarist.policies")
DIST = "diarist"
_EPOCH = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Wheel:
    filename: str
    data: bytes
    sha256: str


def _version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _requirements() -> list[str]:
    try:
        reqs = importlib.metadata.requires(DIST) or []
    except importlib.metadata.PackageNotFoundError:
        reqs = []
    # extras (tests, linters) never run in a job
    return [r for r in reqs if "extra ==" not in r]


def _module_files() -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        for root in module.__path__:
            base = Path(root)
            for path in sorted(base.rglob("*.py")):
                if "__pycache__" in path.parts:
                    continue
                arcname = "/".join((*package.split("."), *path.relative_to(base).parts))
                files.append((arcname, path.read_bytes()))
    return sorted(files)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel() -> Wheel:
    """A ``py3-none-any`` wheel of the running diarist packages with their runtime requirements."""
    version = _version()
    info = f"{DIST}-{version}.dist-info"
    metadata = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {DIST}", f"Version: {version}"]
        + [f"Requires-Dist: {r}" for r in _requirements()]
    )
    entries = _module_files()
    entries.append((f"{info}/METADATA", (metadata + "\n").encode()))
    entries.append(
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: diarist\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    )
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries) + f"{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zi = zipfile.ZipInfo(name, date_time=_EPOCH)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, data)
    data = buf.getvalue()
    return Wheel(f"{DIST}-{version}-py3-none-any.whl", data, hashlib.sha256(data).hexdigest())
