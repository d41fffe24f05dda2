"""Runs last (the name sorts last): looks through everything the suite's tests left behind.

Every log, ledger, result, status and error document that the daemons, CLIs and cloud jobs of this run wrote
lies under pytest's base temporary folder. None may contain the Hugging Face token the cloud tests use, and
nothing in an outbox may be writable by everyone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import SUITE_TOKEN


def produced(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and not p.is_symlink()]


def test_no_file_the_suite_produced_holds_the_token(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    files = [p for p in produced(base) if not p.is_relative_to(base / "test_no_file_the_suite_produce0")]
    logs = [p for p in files if p.suffix == ".log"]
    if not logs:
        pytest.skip("no daemon ran in this session (run the whole suite): nothing to look through")
    needle = SUITE_TOKEN.encode()
    leaked = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if needle in data:
            leaked.append(str(path.relative_to(base)))
    assert leaked == [], f"the token is written in: {leaked}"
    kinds = {p.suffix for p in files}
    assert {".log", ".json", ".rttm", ".db"} <= kinds, f"expected the suite's logs, ledgers and results: {kinds}"


def test_outboxes_hold_no_world_writable_file(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    outboxes = [p for p in base.rglob("out*") if p.is_dir() and p.name in ("outbox", "out")]
    if not outboxes:
        pytest.skip("no outbox was written in this session (run the whole suite)")
    loose = []
    for outbox in outboxes:
        for path in [outbox, *outbox.rglob("*")]:
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & stat.S_IWOTH:
                loose.append(f"{path.relative_to(base)} ({stat.filemode(mode)})")
    assert loose == [], loose
