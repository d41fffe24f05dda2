"""Shared fixtures: pyannote's sample, generated conversations, one warm engine, a daemon subprocess."""

from __future__ import annotations

import json
import os
import re

# The loopback Hub emulator stores large files by the Git LFS protocol; the Xet protocol the client prefers lives
# in hf_xet's own storage service, which no loopback server can stand in for. Read by huggingface_hub at import
# time, so it is set before anything imports it; daemons and jobs started by the tests inherit it.
os.environ["HF_HUB_DISABLE_XET"] = "1"
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import settings as hypothesis_settings

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

import audiogen  # noqa: E402

# Property tests here write and fsync real SQLite files: on a loaded machine one example can take longer than
# Hypothesis's 200 ms default deadline without anything being wrong, so time is not part of their verdict.
# Loaded here, before the test modules are imported, so that their own ``@settings(...)`` inherit it.
hypothesis_settings.register_profile("diarist", deadline=None)
hypothesis_settings.load_profile("diarist")


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


#: real meeting clips and single-speaker voices kept in the project (README there: sources, licenses)
DEV_AUDIO = Path(__file__).resolve().parent / "data" / "dev-audio"


@pytest.fixture(scope="session")
def sample() -> tuple[Path, Path]:
    """pyannote's bundled real recording (2 speakers, 30 s) and its reference RTTM."""
    from diarist.daemon.cli import sample_audio

    return sample_audio()


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated espeak-ng conversations with reference RTTMs, made once per session."""
    folder = tmp_path_factory.mktemp("audio")
    specs = {"conv3": (3, 30, 1), "conv2": (2, 20, 7), "conv2b": (2, 14, 11), "short": (2, 8, 5)}
    for name, (speakers, seconds, seed) in specs.items():
        turns = audiogen.conversation(folder / f"{name}.wav", speakers, seconds, seed)
        audiogen.write_rttm(turns, name, folder / f"{name}.rttm")
    return folder


@pytest.fixture(scope="session")
def engine():
    from diarist.handlers.engine import LocalEngine

    e = LocalEngine()
    e.load()
    return e


def cut(src: Path, dst: Path, start: float, seconds: float) -> Path:
    """``seconds`` of ``src`` from ``start``: distinct real speech from one recording."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", str(start), "-t", str(seconds), "-i", str(src), str(dst)]
    subprocess.run(cmd, check=True)
    return dst


def to_format(src: Path, dst: Path) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), str(dst)], check=True)
    return dst


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll an external effect (a file another process writes) until it holds, or fail saying what."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Poller:
    """Calls ``poll()`` every ``interval`` seconds on a background thread, for as long as the ``with`` lasts,
    and once more as it ends: watches an effect of another process (files appearing, memory) while the test
    drives it."""

    interval = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self):  # noqa: ANN204 - the subclass
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._stop.set()
        self._thread.join()
        # A last sample taken now, after what the ``with`` waited for: without it the newest sample may predate
        # that moment by up to one interval, and a test reading "the sample at the end" finds none.
        try:
            self.poll()
        except Exception as e:
            if exc is None:
                raise
            # the body's own failure is the one to report; this one only rides along with it
            exc.add_note(f"and the final {type(self).__name__}.poll() raised {e!r}")


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a ``diarist run`` log (``log_format = "json"``). The log may still be written
    to: a last line without its newline is taken only if it is already a whole JSON document (a line being
    written is not an event yet; it is read whole by the next call)."""
    # under journald each line starts with its syslog priority, <3> to <7> (daemon/logs.py): not part of it
    lines = [re.sub(r"^<[0-7]>(?=\{)", "", line) for line in text.split("\n")]
    last = lines.pop()  # "" when the text ends with a newline
    events = [json.loads(line) for line in lines if line.startswith("{")]
    if last.startswith("{"):
        try:
            events.append(json.loads(last))
        except json.JSONDecodeError:
            pass
    return events


def finished(daemon: DaemonProcess, name: str, *, timeout: float, event: str = "done") -> dict[str, Any]:
    """Wait until a ``diarist run`` subprocess logs ``event`` (``done``, ``failed``, ``refused``) for the
    input ``name`` (its path relative to the inbox) and return that event. The log line is the last step of
    a file's end: outputs written, status document removed, the input archived (or put back for
    ``on_success = "keep"``), the ledger updated; a result JSON appearing is only the first of them."""

    def logged() -> dict[str, Any] | None:
        return next((e for e in log_events(daemon.text()) if e.get("event") == event and e.get("file") == name), None)

    return wait_until(logged, timeout, f"the {event!r} event for {name}")  # type: ignore[return-value]


def ledger_state(db: Path, name: str, *, timeout: float, state: str = "done") -> dict[str, Any]:
    """Wait until the ledger row of the input ``name`` (relative to its inbox) is in ``state``, and return
    it: the equivalent of :func:`finished` for a daemon run in-process (no log to read). ``done`` and
    ``failed`` are recorded after the outputs are written and the input is moved on."""

    def row() -> dict[str, Any] | None:
        if not db.exists():  # sqlite3.connect would create an empty file in the daemon's place
            return None
        return next((r for r in ledger_rows(db) if r["rel_path"] == name and r["state"] == state), None)

    return wait_until(row, timeout, f"{name} {state} in the ledger")  # type: ignore[return-value]


def noon_timezone(now: float | None = None) -> str:
    """A fixed-offset zone (``Etc/GMT±N``, no DST) where it is between 11:30 and 12:30 at ``now`` (default:
    this moment): a test whose budget day runs on the real wall clock then has at least 11 hours before that
    day ends, and a daily cap cannot reset in the middle of it."""
    at = time.gmtime(time.time() if now is None else now)
    offset = (12 if at.tm_min < 30 else 11) - at.tm_hour  # -12 .. +12 hours from UTC
    # the POSIX sign convention of the Etc zones: Etc/GMT-5 is five hours ahead of UTC
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def done_counts(db: Path) -> dict[str, int]:
    """How many times each input (by relative path) reached ``done`` in a ledger's event history."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "select f.rel_path, count(*) from events e join files f on f.id = e.file_id "
            "where e.state = 'done' group by f.rel_path"
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


class DaemonProcess:
    """``diarist run`` as a real subprocess, with its log captured to a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()):
        self.config, self.log, self.prefix = config, log, prefix
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "diarist.daemon.cli", "--config", str(self.config), "run"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        wait_until(lambda: '"event": "ready"' in self.text() or self.proc.poll() is not None, 120, "daemon ready")
        assert self.proc.poll() is None, f"daemon exited early:\n{self.text()[-3000:]}"
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log.close()
        return code


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def make(config: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> DaemonProcess:
        d = DaemonProcess(config, tmp_path / f"daemon-{len(made)}.log", env, prefix)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc and d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait()


def daemon_config(
    tmp_path: Path, daemon: dict[str, object] | None = None, **inbox_extra: object
) -> tuple[Path, Path, Path, Path]:
    """A one-inbox ``diarist run`` config under ``tmp_path``: (config, inbox, outbox, ledger). ``daemon``
    adds keys to ``[daemon]``, keyword arguments to the ``[[inbox]]`` (or replace its ``polling = false``,
    ``stability_seconds = 1.5``)."""
    inbox, outbox, state = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state"
    inbox_keys = {"polling": False, "stability_seconds": 1.5, **inbox_extra}
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in inbox_keys.items())
    daemon_keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (daemon or {}).items())
    config = tmp_path / "diarist.toml"
    config.write_text(
        f'[daemon]\nledger = "{state}/ledger.db"\nhost_id = "test-host"\nrescan_interval = 3\nlog_format = "json"\n'
        f"{daemon_keys}\n"
        f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\n{extra}'
    )
    inbox.mkdir()
    return config, inbox, outbox, state / "ledger.db"


#: the Hugging Face token every cloud test uses: distinctive, so that test_zz_exposure can look for it in
#: everything the suite leaves behind
SUITE_TOKEN = "hf_diaristSuiteSecret7Qx2Lm9Vb4Np"


#: run a command as root without the capabilities that let root read and write any file, so that file
#: permissions apply to it (tests of unreadable inputs and read-only outboxes)
WITHOUT_DAC = (
    ("setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search")
    if os.geteuid() == 0
    else ()
)


def reference(rttm: Path) -> Any:
    """A reference RTTM as a pyannote Annotation."""
    from pyannote.database.util import load_rttm

    return next(iter(load_rttm(str(rttm)).values()))


def annotation(segments: Any, uri: str) -> Any:
    """Engine segments as a pyannote Annotation."""
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=uri)
    for s in segments:
        ann[Segment(s.start, s.end)] = s.speaker
    return ann


def der(ref: Any, segments: Any) -> float:
    """Diarization error rate of engine segments against a reference (collar 0, overlap scored)."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    return DiarizationErrorRate(collar=0.0, skip_overlap=False)(ref, annotation(segments, ref.uri))


def ledger_rows(db: Path) -> list[dict]:
    """Every file row of a ledger, read with plain sqlite3 (as another process sees it)."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from files order by id")]
    finally:
        conn.close()


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst
