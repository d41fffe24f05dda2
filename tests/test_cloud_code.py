"""The code a cloud job runs: the wheel of the running packages and the stdlib-only bootstrap
(diarist.handlers.cloud_code, diarist.handlers.cloud_bootstrap)."""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import io
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from diarist.handlers import cloud_bootstrap, cloud_code
from diarist.handlers.cloud_code import PACKAGES, Wheel, build_wheel

BOOTSTRAP = Path(cloud_bootstrap.__file__)


@pytest.fixture(scope="module")
def wheel() -> Wheel:
    return build_wheel()


@pytest.fixture(scope="module")
def entries(wheel: Wheel) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(wheel.data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def dist_info(wheel: Wheel) -> str:
    return wheel.filename.removesuffix("-py3-none-any.whl") + ".dist-info"


def source_files() -> dict[str, Path]:
    """Every .py of the three packages as the running process sees them, by archive name."""
    found = {}
    for package in PACKAGES:
        for root in importlib.import_module(package).__path__:
            for path in Path(root).rglob("*.py"):
                if "__pycache__" not in path.parts:
                    found["/".join((*package.split("."), *path.relative_to(root).parts))] = path
    return found


class TestBuildWheel:
    def test_bytes_are_deterministic(self, wheel: Wheel) -> None:
        """The same code gives the same bytes and sha256, so it stages under the same path."""
        again = build_wheel()
        assert again.data == wheel.data
        assert again.sha256 == wheel.sha256 == hashlib.sha256(wheel.data).hexdigest()

    def test_filename(self, wheel: Wheel) -> None:
        """A pure-Python wheel named after the installed distribution's version."""
        assert wheel.filename == f"diarist-{cloud_code._version()}-py3-none-any.whl"
        assert wheel.filename.startswith("diarist-") and wheel.filename.endswith("-py3-none-any.whl")

    def test_contains_every_module_of_the_three_packages(self, wheel: Wheel, entries: dict[str, bytes]) -> None:
        """Each .py of diarist.daemon, .handlers and .policies is in the wheel, byte for byte."""
        sources = source_files()
        assert {"diarist/daemon/cli.py", "diarist/handlers/cloud_job.py", "diarist/policies/jobs.py"} <= set(sources)
        for name, path in sources.items():
            assert entries.get(name) == path.read_bytes(), f"{name} missing or different"
        code = {n for n in entries if not n.startswith(dist_info(wheel) + "/")}
        assert code == set(sources), "the wheel holds exactly the packages' modules"

    def test_contains_dist_info(self, wheel: Wheel, entries: dict[str, bytes]) -> None:
        """METADATA, WHEEL and RECORD are there; WHEEL says purelib, py3-none-any."""
        info = dist_info(wheel)
        assert {f"{info}/METADATA", f"{info}/WHEEL", f"{info}/RECORD"} <= set(entries)
        wheel_file = entries[f"{info}/WHEEL"].decode()
        assert "Root-Is-Purelib: true" in wheel_file and "Tag: py3-none-any" in wheel_file

    def test_entries_are_sorted_and_timestamped_at_the_epoch(self, wheel: Wheel) -> None:
        """Fixed timestamps and order are what make the bytes reproducible."""
        with zipfile.ZipFile(io.BytesIO(wheel.data)) as zf:
            infos = zf.infolist()
        assert {i.date_time for i in infos} == {(2020, 1, 1, 0, 0, 0)}
        code = [i.filename for i in infos if ".dist-info/" not in i.filename]
        assert code == sorted(code)

    def test_record_hashes_match_the_contents(self, wheel: Wheel, entries: dict[str, bytes]) -> None:
        """RECORD lists every other entry with its urlsafe-base64 sha256 and size, and itself without."""
        info = dist_info(wheel)
        rows = [line.split(",") for line in entries[f"{info}/RECORD"].decode().splitlines()]
        recorded = {name: (digest, size) for name, digest, size in rows}
        assert set(recorded) == set(entries)
        assert recorded.pop(f"{info}/RECORD") == ("", "")
        for name, (digest, size) in recorded.items():
            data = entries[name]
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}", name
            assert int(size) == len(data), name

    def test_metadata_requires_the_runtime_stack_only(self, wheel: Wheel, entries: dict[str, bytes]) -> None:
        """Requires-Dist has the pinned pyannote.audio and no extras (tests and linters never run in a job)."""
        meta = Parser().parsestr(entries[f"{dist_info(wheel)}/METADATA"].decode())
        assert meta["Name"] == "diarist"
        assert meta["Version"] == cloud_code._version()
        requires = meta.get_all("Requires-Dist") or []
        assert "pyannote.audio==4.0.7" in requires
        assert not [r for r in requires if "extra ==" in r]
        assert not [r for r in requires if r.split(";")[0].strip().startswith(("pytest", "ruff", "hypothesis"))]

    def test_wheel_installs_and_its_code_is_imported(self, wheel: Wheel, tmp_path: Path) -> None:
        """pip installs the wheel; with its target first on sys.path, the job module comes from it."""
        whl = tmp_path / wheel.filename
        whl.write_bytes(wheel.data)
        target = tmp_path / "site"
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", target, whl],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pip.returncode == 0, pip.stderr
        assert (target / "diarist" / "handlers" / "cloud_job.py").is_file()
        assert (target / f"{dist_info(wheel)}" / "RECORD").is_file()

        script = (
            "import sys; sys.path.insert(0, sys.argv[1]); import diarist.handlers.cloud_job as m; print(m.__file__)"
        )
        run = subprocess.run(
            [sys.executable, "-c", script, str(target)], cwd=target, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        assert Path(run.stdout.strip()).resolve() == (target / "diarist" / "handlers" / "cloud_job.py").resolve()


def _imported_modules(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the bootstrap runs as python -c: no relative imports"
            found.append((node.module or "", node))
    return found


class TestBootstrap:
    def test_imports_only_the_standard_library(self) -> None:
        """The bootstrap runs before anything is installed: stdlib only, apart from the hand-over to the job."""
        tree = ast.parse(BOOTSTRAP.read_text(encoding="utf-8"))
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        lazy = {id(n) for n in ast.walk(main) if isinstance(n, ast.ImportFrom) and n.module == "diarist.handlers"}
        assert len(lazy) == 1, "main hands over with one lazy 'from diarist.handlers import cloud_job'"
        outside = []
        for name, node in _imported_modules(tree):
            if id(node) in lazy:
                assert [a.name for a in node.names] == ["cloud_job"]
                continue
            if name.split(".")[0] not in sys.stdlib_module_names:
                outside.append(name)
        assert outside == []

    def test_job_hand_over_is_inside_main(self) -> None:
        """No diarist import at module level: the wheel is only on sys.path once main has put it there."""
        tree = ast.parse(BOOTSTRAP.read_text(encoding="utf-8"))
        top_level = [
            name
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name, _ in _imported_modules(node)
        ]
        assert not [n for n in top_level if n.split(".")[0] == "diarist"]

    def test_bootstrap_compiles_as_a_command_line_script(self) -> None:
        """The file's text is sent as ``python -c``: it must compile on its own."""
        compile(BOOTSTRAP.read_text(encoding="utf-8"), "<string>", "exec")
