#!/usr/bin/env python3
"""Loopback emulator of the Hugging Face Hub endpoints that ``huggingface_hub`` 2.4 uses for Jobs and repos.

Stdlib only. Jobs are executed for real as local subprocesses (see :func:`translate_command`), repos live in
memory, and fault knobs let tests make any route fail, reset the connection, or make jobs misbehave.

Python::

    with HubEmulator(token="hf_test", namespace="alice") as emu:
        api = HfApi(endpoint=emu.url, token="hf_test")
        emu.add_fault(route="jobs.create", status=402)

Standalone::

    python tests/hub_emulator.py --port 0 --token hf_test --namespace alice   # prints the URL when ready

See docs/hub_emulator.md for the route list, the fault format and what is translated.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Route names usable in HTTP faults ("*" matches every route).
ROUTES = (
    "whoami",
    "hardware",
    "jobs.create",
    "jobs.list",
    "jobs.inspect",
    "jobs.cancel",
    "jobs.logs",
    "repos.create",
    "repos.delete",
    "repos.info",
    "preupload",
    "commit",
    "resolve",
    "tree",
    "commits",
    "super_squash",
    "lfs.batch",
    "lfs.upload",
    "lfs.list",
    "lfs.delete",
)
# Job fault modes: see HubEmulator.add_fault.
JOB_FAULT_MODES = ("error", "error_after_run", "stay_scheduling", "slow")
TERMINAL_STAGES = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
REPO_TYPES = ("model", "dataset", "space")
# where diarist stages a batch's inputs, its manifest and the job's results
BATCH_PREFIXES = ("inputs/", "batches/", "jobs/")

# name, pretty name, cpu, ram, ephemeral storage, accelerator (model, quantity, vram) or None, USD per hour.
# The Hub bills Jobs per minute: the client's JobHardwareInfo reads unitCostUSD/unitCostMicroUSD per unitLabel
# ("minute"), so the hourly price below is divided by 60 on the wire.
HARDWARE: tuple[tuple[str, str, str, str, str, tuple[str, str, str] | None, float], ...] = (
    ("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", "50 GB", None, 0.01),
    ("cpu-upgrade", "CPU Upgrade", "8 vCPU", "32 GB", "50 GB", None, 0.03),
    ("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", "50 GB", ("T4", "1", "16 GB"), 0.40),
    ("t4-medium", "Nvidia T4 - medium", "8 vCPU", "30 GB", "100 GB", ("T4", "1", "16 GB"), 0.60),
    ("l4x1", "1x Nvidia L4", "8 vCPU", "30 GB", "400 GB", ("L4", "1", "24 GB"), 0.80),
    ("l4x4", "4x Nvidia L4", "48 vCPU", "186 GB", "3200 GB", ("L4", "4", "96 GB"), 3.80),
    ("l40sx1", "1x Nvidia L40S", "8 vCPU", "62 GB", "380 GB", ("L40S", "1", "48 GB"), 1.80),
    ("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", "110 GB", ("A10G", "1", "24 GB"), 1.00),
    ("a10g-large", "Nvidia A10G - large", "12 vCPU", "46 GB", "200 GB", ("A10G", "1", "24 GB"), 1.50),
    ("a10g-largex2", "2x Nvidia A10G - large", "24 vCPU", "92 GB", "1000 GB", ("A10G", "2", "48 GB"), 3.00),
    ("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", "1000 GB", ("A100", "1", "80 GB"), 2.50),
    ("h200", "Nvidia H200", "23 vCPU", "256 GB", "3000 GB", ("H200", "1", "141 GB"), 5.00),
)
HOURLY_PRICE_USD = {row[0]: row[6] for row in HARDWARE}

_ACCEL_KEYS = ("type", "model", "quantity", "vram", "manufacturer")
_PYTHON_NAME = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")
# `uv run` options that take a value (the next argv item) -- everything else starting with "-" is a flag.
_UV_VALUE_OPTIONS = frozenset(
    {
        "--with",
        "-w",
        "--with-requirements",
        "--with-editable",
        "--python",
        "-p",
        "--index",
        "--index-url",
        "--extra-index-url",
        "--default-index",
        "--find-links",
        "-f",
        "--env-file",
        "--project",
        "--directory",
        "--group",
        "--extra",
        "--constraints",
        "--overrides",
        "--package",
    }
)
_HF_ENV_PREFIXES = ("HF_", "HUGGING_FACE_", "HUGGINGFACE_")


# ----------------------------------------------------------------------------------------------------
# Command translation (container image / uv launcher -> local interpreter)
# ----------------------------------------------------------------------------------------------------
def translate_command(
    image: str | None,
    command: list[str],
    *,
    python: str = sys.executable,
    fetch_script: Callable[[str], str] | None = None,
) -> list[str]:
    """Map a Job's container command to a local argv. The image is recorded but ignored: no container runs.

    Rules (first match wins):

    * ``uv run [uv options] TARGET ARGS...`` (what ``run_uv_job`` sends): uv options are dropped (``--with``
      dependencies must already be importable by ``python``; ``--python 3.12`` is ignored). Then:
      ``TARGET`` is an ``http(s)://`` URL -> ``[python, fetch_script(URL), ARGS...]`` (the emulator downloads
      it, from its own memory when the URL points back at the emulator); ``TARGET`` ends in ``.py`` ->
      ``[python, TARGET, ARGS...]``; ``TARGET`` is ``python``/``python3``/``python3.X`` ->
      ``[python, ARGS...]``; anything else -> ``[TARGET, ARGS...]``.
    * ``python``/``python3``/``python3.X`` (optionally with a directory, e.g. ``/usr/bin/python3``) ->
      ``[python, ARGS...]``.
    * anything else (``bash -c ...``, ``echo``) runs unchanged on the host.
    """
    argv = [str(part) for part in command]
    if not argv:
        raise ValueError("the job has an empty command")
    if argv[0] == "uv" and len(argv) > 1 and argv[1] == "run":
        i = 2
        while i < len(argv) and argv[i].startswith("-"):
            option = argv[i]
            if option == "--":
                i += 1
                break
            i += 2 if option in _UV_VALUE_OPTIONS else 1  # "--with=x" style needs no extra skip
        if i >= len(argv):
            raise ValueError(f"`uv run` without a script or command: {argv}")
        target, rest = argv[i], argv[i + 1 :]
        if target.startswith(("http://", "https://")):
            if fetch_script is None:
                raise ValueError(f"cannot fetch script URL {target!r} without fetch_script")
            return [python, fetch_script(target), *rest]
        if target.endswith(".py"):
            return [python, target, *rest]
        if _PYTHON_NAME.match(target):
            return [python, *rest]
        return [target, *rest]
    if _PYTHON_NAME.match(argv[0]):
        return [python, *argv[1:]]
    return argv


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub uses as ETag / oid of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: float
    files: dict[str, bytes] = field(default_factory=dict)
    sha: str = ""
    history: dict[str, dict[str, bytes]] = field(default_factory=dict)
    #: commit sha -> (title, time), for the commits listing
    commits: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: large-file storage, apart from git as on the Hub: sha256 -> {"data", "filename", "pushedAt"}. A file
    #: committed as ``lfsFile`` points here; squashing history leaves these in place, only an explicit
    #: permanent deletion removes them
    lfs: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_modified: float = 0.0

    def url_prefix(self) -> str:
        return {"model": "", "dataset": "datasets/", "space": "spaces/"}[self.repo_type]


@dataclass
class _Job:
    id: str
    namespace: str
    spec: dict[str, Any]
    secrets: dict[str, str]
    fault: dict[str, Any] | None
    created_at: float
    stage: str = "SCHEDULING"
    message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    logs: list[dict[str, str]] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    pid: int | None = None
    exit_code: int | None = None
    argv: list[str] | None = None
    workdir: str | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    #: set once an inspect of this job has been answered (the ``after_inspect`` job fault waits for it)
    inspected: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: Any
    body: bytes
    params: dict[str, str]
    handler: _Handler

    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as exc:
            raise _HttpError(400, f"Invalid JSON body: {exc}", "BadRequest") from exc


@dataclass
class _Reply:
    status: int = 200
    body: Any = None  # bytes, or anything JSON-serialisable
    headers: dict[str, str] = field(default_factory=dict)
    head_only: bool = False


_REPO_API = r"/api/(?P<rtype>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_RESOLVE = r"^/(?P<prefix>datasets/|spaces/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"
_LFS_BATCH = r"^/(?P<prefix>datasets/|spaces/)?(?P<ns>[^/]+)/(?P<name>[^/]+)\.git/info/lfs/objects/batch"
# where the emulator's LFS batch answer tells the client to PUT a large file (the Hub hands out S3 URLs)
_LFS_UPLOAD = r"^/_lfs/(?P<rtype>model|dataset|space)/(?P<ns>[^/]+)/(?P<name>[^/]+)/(?P<oid>[0-9a-f]{64})"
# the Hub stores a file as LFS when it is binary or large (its .gitattributes rules aside)
LFS_THRESHOLD_BYTES = 10 * 1024 * 1024
_PATTERNS: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (method, route, re.compile(pattern + r"/?$"))
    for method, route, pattern in (
        ("GET", "whoami", r"^/api/whoami-v2"),
        ("GET", "hardware", r"^/api/jobs/hardware"),
        ("POST", "jobs.create", r"^/api/jobs/(?P<ns>[^/]+)"),
        ("GET", "jobs.list", r"^/api/jobs/(?P<ns>[^/]+)"),
        ("GET", "jobs.inspect", r"^/api/jobs/(?P<ns>[^/]+)/(?P<job>[^/]+)"),
        ("POST", "jobs.cancel", r"^/api/jobs/(?P<ns>[^/]+)/(?P<job>[^/]+)/cancel"),
        ("GET", "jobs.logs", r"^/api/jobs/(?P<ns>[^/]+)/(?P<job>[^/]+)/logs"),
        ("POST", "repos.create", r"^/api/repos/create"),
        ("DELETE", "repos.delete", r"^/api/repos/delete"),
        ("POST", "preupload", "^" + _REPO_API + r"/preupload/(?P<rev>[^/]+)"),
        ("POST", "commit", "^" + _REPO_API + r"/commit/(?P<rev>[^/]+)"),
        ("GET", "tree", "^" + _REPO_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+?))?"),
        ("GET", "commits", "^" + _REPO_API + r"/commits/(?P<rev>[^/]+)"),
        ("POST", "super_squash", "^" + _REPO_API + r"/super-squash/(?P<rev>[^/]+)"),
        ("GET", "lfs.list", "^" + _REPO_API + r"/lfs-files"),
        ("POST", "lfs.delete", "^" + _REPO_API + r"/lfs-files/batch"),
        ("POST", "lfs.batch", _LFS_BATCH),
        ("PUT", "lfs.upload", _LFS_UPLOAD),
        ("GET", "repos.info", "^" + _REPO_API + r"(?:/revision/(?P<rev>[^/]+))?"),
        ("GET", "resolve", _RESOLVE),
        ("HEAD", "resolve", _RESOLVE),
    )
)


def classify(method: str, path: str) -> tuple[str | None, dict[str, str]]:
    """Return ``(route name, path params)`` for a request, or ``(None, {})`` for unknown endpoints."""
    for pat_method, route, pattern in _PATTERNS:
        if pat_method != method:
            continue
        match = pattern.match(path)
        if match:
            params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items() if v is not None}
            return route, params
    return None, {}


# ----------------------------------------------------------------------------------------------------
# HTTP plumbing
# ----------------------------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # lets :meth:`HubEmulator.outage` hold the port with a second, non-listening socket while this one is closed
    allow_reuse_port = True
    request_queue_size = 128
    emulator: HubEmulator

    def handle_error(self, request, client_address):  # noqa: D401 - silence disconnects from clients
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "HubEmulator/1.0"
    _status: int = 0
    _record: dict[str, Any] | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.emulator.verbose:
            sys.stderr.write(f"[hub-emulator] {self.address_string()} {format % args}\n")

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        if self._record is not None:  # recorded before the client can see the answer
            self._record["status"] = code
        super().send_response(code, message)

    def do_GET(self) -> None:  # noqa: N802
        self.server.emulator._dispatch(self, "GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.emulator._dispatch(self, "HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self.server.emulator._dispatch(self, "POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.server.emulator._dispatch(self, "PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.emulator._dispatch(self, "DELETE")

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reset_connection(self) -> None:
        """Close the socket with an RST and without any answer."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        self.connection.close()

    def write_reply(self, reply: _Reply) -> None:
        body = reply.body
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode()
            reply.headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.send_response(reply.status)
        headers = {"X-Request-Id": uuid.uuid4().hex, **reply.headers}
        headers.setdefault("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if payload and not reply.head_only and self.command != "HEAD":
            self.wfile.write(payload)


def _error_reply(err: _HttpError) -> _Reply:
    headers = {"X-Error-Message": err.message, **err.headers}
    if err.code:
        headers["X-Error-Code"] = err.code
    return _Reply(err.status, {"error": err.message, **err.extra}, headers)


# ----------------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------------
class HubEmulator:
    """In-memory Hub on loopback. ``start()``/``stop()`` or use as a context manager; ``url`` once started."""

    def __init__(
        self,
        port: int = 0,
        token: str = "hf_test",
        namespace: str = "alice",
        *,
        host: str = "127.0.0.1",
        orgs: list[str] | tuple[str, ...] = (),
        python: str = sys.executable,
        scheduling_delay: float = 0.0,
        keepalive: float = 15.0,
        kill_grace: float = 1.0,
        time_scale: float = 1.0,
        faults: list[dict[str, Any]] | None = None,
        verbose: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.token, self.namespace, self.orgs = token, namespace, list(orgs)
        self.python = python
        self.scheduling_delay = scheduling_delay
        self.keepalive = keepalive
        self.kill_grace = kill_grace
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        #: seconds on this machine per second of Hub hardware: jobs run here, on a CPU that may be much slower
        #: than the flavor they asked for. A job's ``timeoutSeconds`` is enforced after ``timeoutSeconds *
        #: time_scale`` real seconds and its reported durations are real seconds / ``time_scale``, so what the
        #: Hub bills never exceeds the timeout, as on the real Hub. 1.0: Hub time is real time.
        self.time_scale = time_scale
        self.verbose = verbose
        #: clear while :meth:`outage` has the emulator off the network: no job process starts meanwhile
        self._up = threading.Event()
        self._up.set()
        self._cond = threading.Condition(threading.RLock())
        self._jobs: dict[str, _Job] = {}
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._http_faults: list[dict[str, Any]] = []
        self._job_faults: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._root: str | None = None
        self._counter = 0
        #: how many times :meth:`outage` took the emulator down
        self.outages = 0
        for spec in faults or []:
            self.add_fault(spec)

    # ---- lifecycle ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("HubEmulator is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> HubEmulator:
        self._stopping = False
        self._root = tempfile.mkdtemp(prefix="hub-emulator-")
        self._server = _Server((self.host, self.port), _Handler)
        self._server.emulator = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="hub-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Kill every job's process group, end log streams, close the server and delete job workdirs."""
        with self._cond:
            self._stopping = True
            jobs = list(self._jobs.values())
            self._cond.notify_all()
        for job in jobs:
            job.cancel_event.set()
            self._kill_job_process(job, grace=0.0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._root:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def outage(self, seconds: float) -> None:
        """The Hub dies and comes back: the listening socket is closed (connections are refused) for
        ``seconds``, then the emulator listens on the same port again. Jobs keep running and repos and jobs
        are kept, as on the real Hub after an outage; a job's own requests meanwhile fail like the daemon's,
        but no job process starts while the Hub is down (a scheduled job starts once it is back).

        The port stays ours throughout: a second socket bound to it (SO_REUSEPORT, not listening, so a
        connection attempt is refused as with no socket at all) holds it until the new listener has it."""
        with self._cond:
            server = self._server
            if server is None or self._stopping:
                return
            port = server.server_address[1]
            self.outages += 1
            self._up.clear()
        holder = socket.socket(server.socket.family, socket.SOCK_STREAM)
        try:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            holder.bind((self.host, port))
            server.shutdown()
            server.server_close()
            time.sleep(seconds)
            with self._cond:
                if self._stopping:
                    return
                self._server = _Server((self.host, port), _Handler)
                self._server.emulator = self
                self._thread = threading.Thread(
                    target=self._server.serve_forever, args=(0.05,), name="hub-emulator", daemon=True
                )
                self._thread.start()
        finally:
            holder.close()
            self._up.set()

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- public inspection API ------------------------------------------------------------------------
    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        """Snapshot: job id -> public JobInfo JSON plus an ``emulator`` dict (pid, exit_code, argv, logs)."""
        with self._cond:
            return {job.id: self._job_state(job) for job in self._jobs.values()}

    def job_logs(self, job_id: str) -> list[str]:
        with self._cond:
            return [event["data"] for event in self._jobs[job_id].logs]

    def wait_job(self, job_id: str, stages: tuple[str, ...] = TERMINAL_STAGES, timeout: float = 10.0) -> dict:
        """Block until the job reaches one of ``stages``; return its snapshot (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs[job_id].stage not in stages:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"job {job_id} still {self._jobs[job_id].stage}")
                self._cond.wait(remaining)
            return self._job_state(self._jobs[job_id])

    def repo_files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        """Current files of a repo at its head (path -> bytes); KeyError if the repo does not exist."""
        with self._cond:
            return dict(self._repos[(repo_type, repo_id)].files)

    def add_repo(
        self,
        repo_id: str,
        *,
        repo_type: str = "dataset",
        private: bool = False,
        files: dict[str, bytes | str] | None = None,
    ) -> None:
        """Create (or overwrite files of) a repo directly, e.g. to seed scripts or inputs."""
        with self._cond:
            repo = self._repos.get((repo_type, repo_id)) or self._new_repo(repo_type, repo_id, private)
            new_files = dict(repo.files)
            for path, data in (files or {}).items():
                new_files[path] = data.encode() if isinstance(data, str) else data
            self._commit_files(repo, new_files)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Requests seen so far: method, path, route, status (0 when the connection was reset)."""
        with self._cond:
            return [dict(r) for r in self._requests]

    # ---- faults ---------------------------------------------------------------------------------------
    def add_fault(self, spec: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Register one fault; same format as ``POST /_emulator/faults``.

        HTTP fault: ``{"route": "jobs.create", "status": 402, "times": 1, "retry_after": 5, "message": "...",
        "code": "X-Error-Code value", "reset": false, "delay": 0.0, "down": 0.0, "path": ""}``. ``route`` is
        one of :data:`ROUTES` or ``"*"``; ``path`` and ``body``, when given, must occur in the request path and
        body (a commit's summary, say); at least one
        of ``status`` / ``reset`` / ``delay`` / ``down`` is required; ``delay`` sleeps before answering (alone
        it only slows the route down); ``down`` resets the request and takes the whole emulator off the
        network for that many seconds (:meth:`outage`). ``times`` defaults to 1; ``-1`` (or ``null``) means
        forever.

        Job fault (applies to the next ``times`` created jobs, optionally only those whose labels include
        ``labels``): ``{"job": "error", "message": "..."}`` (ERROR without running),
        ``{"job": "error_after_run", "message": "..."}`` (runs, then ERROR whatever the exit code),
        ``{"job": "stay_scheduling"}`` (SCHEDULING until canceled), ``{"job": "slow", "start_delay": 2.0,
        "finish_delay": 1.0}`` (extra seconds in SCHEDULING / in RUNNING after the process exits; with
        ``"after_inspect": true`` it also stays SCHEDULING until an inspect of it has been answered, so that
        its process starts after whatever the client's first poll set off).
        """
        spec = {**(spec or {}), **kwargs}
        times = spec.get("times", 1)
        times = -1 if times is None else int(times)
        if times == 0 or times < -1:
            raise ValueError("times must be a positive integer or -1 (forever)")
        spec["times"] = times
        if "job" in spec:
            if spec["job"] not in JOB_FAULT_MODES:
                raise ValueError(f"unknown job fault {spec['job']!r}; expected one of {JOB_FAULT_MODES}")
            unknown = set(spec) - {"job", "times", "message", "start_delay", "finish_delay", "after_inspect", "labels"}
            if unknown:
                raise ValueError(f"unknown job fault keys: {sorted(unknown)}")
            if spec["job"] == "slow":
                spec.setdefault("start_delay", 2.0)
                spec.setdefault("finish_delay", 0.0)
            with self._cond:
                self._job_faults.append(spec)
            return dict(spec)
        route = spec.get("route")
        if route != "*" and route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {ROUTES} or '*'")
        unknown = set(spec) - {
            "route",
            "status",
            "times",
            "retry_after",
            "message",
            "code",
            "reset",
            "delay",
            "down",
            "path",
            "body",
        }
        if unknown:
            raise ValueError(f"unknown HTTP fault keys: {sorted(unknown)}")
        if spec.get("status") is None and not any(spec.get(k) for k in ("reset", "delay", "down")):
            raise ValueError("an HTTP fault needs 'status', 'reset', 'delay' or 'down'")
        with self._cond:
            self._http_faults.append(spec)
        return dict(spec)

    def clear_faults(self) -> None:
        with self._cond:
            self._http_faults.clear()
            self._job_faults.clear()

    @property
    def faults(self) -> list[dict[str, Any]]:
        """Active faults (with the remaining ``times``)."""
        with self._cond:
            return [dict(f) for f in self._http_faults + self._job_faults]

    @staticmethod
    def _matches(fault: dict[str, Any], route: str | None, path: str, body: bytes) -> bool:
        return (
            fault["route"] in ("*", route) and fault.get("path", "") in path and fault.get("body", "").encode() in body
        )

    def _consume(self, faults: list[dict[str, Any]], predicate: Callable[[dict], bool]) -> dict | None:
        for fault in faults:
            if predicate(fault):
                if fault["times"] > 0:
                    fault["times"] -= 1
                    if fault["times"] == 0:
                        faults.remove(fault)
                return dict(fault)
        return None

    # ---- state ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What ``GET /_emulator/state`` returns."""
        with self._cond:
            return {
                "url": self.url,
                "namespace": self.namespace,
                "orgs": list(self.orgs),
                "jobs": [self._job_state(job) for job in self._jobs.values()],
                "repos": [
                    {
                        "type": repo.repo_type,
                        "id": repo.repo_id,
                        "private": repo.private,
                        "sha": repo.sha,
                        "files": {path: len(data) for path, data in sorted(repo.files.items())},
                        "history_paths": sorted({p for files in repo.history.values() for p in files}),
                        "lfs": {oid: stored.get("filename", "") for oid, stored in repo.lfs.items()},
                    }
                    for repo in self._repos.values()
                ],
                "faults": self.faults,
                "requests": self.requests,
            }

    def _job_state(self, job: _Job) -> dict[str, Any]:
        info = self._job_json(job)
        info["emulator"] = {
            "pid": job.pid,
            "exit_code": job.exit_code,
            "argv": job.argv,
            "workdir": job.workdir,
            "fault": job.fault,
            "logs": [event["data"] for event in job.logs],
        }
        return info

    # ---- dispatch -------------------------------------------------------------------------------------
    def _dispatch(self, handler: _Handler, method: str) -> None:
        split = urllib.parse.urlsplit(handler.path)
        path = split.path
        query = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
        try:
            body = handler.read_body() if method in ("POST", "PUT", "DELETE") else b""
        except (OSError, ValueError):
            handler.close_connection = True
            return
        if path.startswith("/_emulator/"):
            reply = self._control(method, path, body)
            handler.write_reply(reply)
            return
        route, params = classify(method, path)
        with self._cond:
            fault = self._consume(self._http_faults, lambda f: self._matches(f, route, path, body))
        record = {"method": method, "path": path, "route": route, "status": 0}
        handler._record = record
        with self._cond:
            self._requests.append(record)
            del self._requests[:-1000]
        try:
            if fault and fault.get("delay"):
                time.sleep(float(fault["delay"]))
            if fault and fault.get("down"):
                handler.reset_connection()
                threading.Thread(target=self.outage, args=(float(fault["down"]),), daemon=True).start()
                return
            if fault and fault.get("reset"):
                handler.reset_connection()
                return
            if fault and fault.get("status") is not None:
                status = int(fault["status"])
                headers = {}
                if fault.get("retry_after") is not None:
                    headers["Retry-After"] = str(fault["retry_after"])
                message = fault.get("message") or f"Emulated fault: HTTP {status} on route {route}"
                err = _HttpError(status, message, fault.get("code", "EmulatedFault"), headers)
                handler.write_reply(_error_reply(err))
                return
            request = _Request(method, path, query, handler.headers, body, params, handler)
            try:
                if route is None:
                    raise _HttpError(404, "Sorry, we can't find the page you are looking for.", "NotFound")
                self._check_token(request)
                reply = getattr(self, "_route_" + route.replace(".", "_"))(request)
            except _HttpError as err:
                reply = _error_reply(err)
            except (ConnectionError, BrokenPipeError):
                raise
            except Exception as exc:  # noqa: BLE001 - an emulator bug must not look like a network failure
                traceback.print_exc()
                reply = _error_reply(_HttpError(500, f"hub emulator internal error: {exc!r}", "InternalError"))
            if reply is not None:  # None: the route already streamed its answer
                handler.write_reply(reply)
        except (ConnectionError, BrokenPipeError):
            handler.close_connection = True

    def _control(self, method: str, path: str, body: bytes) -> _Reply:
        try:
            if path.rstrip("/") == "/_emulator/state" and method == "GET":
                return _Reply(200, self.state())
            if path.rstrip("/") == "/_emulator/faults":
                if method == "GET":
                    return _Reply(200, {"faults": self.faults})
                if method == "DELETE":
                    self.clear_faults()
                    return _Reply(200, {"faults": []})
                if method == "POST":
                    data = json.loads(body or b"[]")
                    if isinstance(data, dict) and data.get("clear"):
                        self.clear_faults()
                        data = data.get("faults", [])
                    for spec in [data] if isinstance(data, dict) else data:
                        self.add_fault(spec)
                    return _Reply(200, {"faults": self.faults})
        except (ValueError, TypeError) as exc:
            return _error_reply(_HttpError(400, str(exc), "BadRequest"))
        return _error_reply(_HttpError(404, f"unknown control endpoint {method} {path}", "NotFound"))

    # ---- auth -----------------------------------------------------------------------------------------
    def _check_token(self, req: _Request) -> None:
        """An unknown token is rejected everywhere; a missing one only where auth is required."""
        if req.token is not None and req.token != self.token:
            raise _HttpError(401, "Invalid credentials in Authorization header", "Unauthorized")

    def _require_auth(self, req: _Request) -> None:
        if req.token != self.token:
            raise _HttpError(401, "Invalid credentials in Authorization header", "Unauthorized")

    def _require_namespace(self, ns: str) -> None:
        if ns != self.namespace and ns not in self.orgs:
            raise _HttpError(403, f"You don't have the rights to use the namespace '{ns}'", "Forbidden")

    def _user_id(self, name: str) -> str:
        return hashlib.sha1(name.encode()).hexdigest()[:24]

    # ---- routes: account / hardware -------------------------------------------------------------------
    def _route_whoami(self, req: _Request) -> _Reply:
        self._require_auth(req)
        return _Reply(
            200,
            {
                "type": "user",
                "id": self._user_id(self.namespace),
                "name": self.namespace,
                "fullname": self.namespace.title(),
                "email": f"{self.namespace}@example.invalid",
                "emailVerified": True,
                "canPay": True,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [{"type": "org", "name": org, "fullname": org, "id": self._user_id(org)} for org in self.orgs],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "hub-emulator", "role": "write", "createdAt": _iso(0)},
                },
            },
        )

    def _route_hardware(self, req: _Request) -> _Reply:
        entries = []
        for name, pretty, cpu, ram, storage, accel, per_hour in HARDWARE:
            per_minute = per_hour / 60
            entries.append(
                {
                    "name": name,
                    "prettyName": pretty,
                    "cpu": cpu,
                    "ram": ram,
                    "ephemeralStorage": storage,
                    "accelerator": None
                    if accel is None
                    else dict(zip(_ACCEL_KEYS, ("gpu", *accel, "Nvidia"), strict=True)),
                    "unitCostMicroUSD": round(per_minute * 1_000_000),
                    "unitCostUSD": round(per_minute, 6),
                    "unitLabel": "minute",
                }
            )
        return _Reply(200, entries)

    # ---- routes: jobs ---------------------------------------------------------------------------------
    def _get_job(self, req: _Request) -> _Job:
        self._require_auth(req)
        job = self._jobs.get(req.params["job"])
        if job is None or job.namespace != req.params["ns"]:
            raise _HttpError(404, f"Job {req.params['job']} not found", "JobNotFound")
        return job

    def _job_json(self, job: _Job) -> dict[str, Any]:
        now = time.time()
        end = job.finished_at or now
        spec = job.spec
        info: dict[str, Any] = {
            "id": job.id,
            "createdAt": _iso(job.created_at),
            "startedAt": _iso(job.started_at),
            "finishedAt": _iso(job.finished_at),
            "command": spec.get("command"),
            "arguments": spec.get("arguments", []),
            "environment": dict(spec.get("environment") or {}),
            # Secret values never leave the emulator: names only, values masked.
            "secrets": {name: "***" for name in job.secrets},
            "flavor": spec.get("flavor"),
            "labels": dict(spec.get("labels") or {}) or None,
            "status": {"stage": job.stage, "message": job.message},
            "durations": {  # Hub seconds: see time_scale
                "schedulingSecs": self._hub_secs((job.started_at or end) - job.created_at) if job.started_at else None,
                "runningSecs": self._hub_secs(end - job.started_at) if job.started_at else None,
                "totalSecs": self._hub_secs(end - job.created_at),
            },
            "owner": {"id": self._user_id(job.namespace), "name": job.namespace, "type": "user"},
            "initiator": {"type": "user", "id": self._user_id(self.namespace), "name": self.namespace},
        }
        if "spaceId" in spec:
            info["spaceId"] = spec["spaceId"]
        else:
            info["dockerImage"] = spec.get("dockerImage")
        for key in ("timeoutSeconds", "volumes", "expose", "network"):
            if key in spec:
                info[key] = spec[key]
        if "attempts" in spec:
            info["retry"] = max(int(spec["attempts"]) - 1, 0)
        return info

    def _hub_secs(self, real_seconds: float) -> int:
        return int(real_seconds / self.time_scale)

    def _route_jobs_create(self, req: _Request) -> _Reply:
        self._require_auth(req)
        ns = req.params["ns"]
        self._require_namespace(ns)
        spec = req.json()
        command = spec.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise _HttpError(400, "command must be a non-empty list of strings", "BadRequest")
        if not spec.get("dockerImage") and not spec.get("spaceId"):
            raise _HttpError(400, "dockerImage or spaceId is required", "BadRequest")
        flavor = spec.get("flavor") or "cpu-basic"
        if flavor not in HOURLY_PRICE_USD:
            expected = ", ".join(HOURLY_PRICE_USD)
            raise _HttpError(400, f"Invalid flavor '{flavor}': expected one of {expected}", "BadRequest")
        spec["flavor"] = flavor
        spec["environment"] = {str(k): str(v) for k, v in (spec.get("environment") or {}).items()}
        secrets = {str(k): str(v) for k, v in (spec.pop("secrets", None) or {}).items()}
        labels = spec.get("labels") or {}
        with self._cond:
            self._counter += 1
            job_id = hashlib.sha1(f"{time.time_ns()}-{self._counter}".encode()).hexdigest()[:24]
            fault = self._consume(
                self._job_faults,
                lambda f: all(labels.get(k) == v for k, v in (f.get("labels") or {}).items()),
            )
            job = _Job(job_id, ns, spec, secrets, fault, created_at=time.time())
            self._jobs[job_id] = job
            info = self._job_json(job)
        threading.Thread(target=self._run_job, args=(job,), name=f"job-{job_id}", daemon=True).start()
        return _Reply(200, info)

    def _route_jobs_list(self, req: _Request) -> _Reply:
        self._require_auth(req)
        ns = req.params["ns"]
        self._require_namespace(ns)
        stages = {v.upper() for k, v in req.query if k == "stage"}
        label_filters = [v for k, v in req.query if k == "label"]
        with self._cond:
            jobs = sorted(
                (j for j in self._jobs.values() if j.namespace == ns),
                key=lambda j: j.created_at,
                reverse=True,
            )
            result = []
            for job in jobs:
                if stages and job.stage not in stages:
                    continue
                labels = job.spec.get("labels") or {}
                ok = True
                for flt in label_filters:
                    key, sep, value = flt.partition("=")
                    ok = ok and (labels.get(key) == value if sep else key in labels)
                if ok:
                    result.append(self._job_json(job))
        return _Reply(200, result)

    def _route_jobs_inspect(self, req: _Request) -> _Reply:
        with self._cond:
            job = self._get_job(req)
            job.inspected.set()
            return _Reply(200, self._job_json(job))

    def _route_jobs_cancel(self, req: _Request) -> _Reply:
        with self._cond:
            job = self._get_job(req)
            if job.stage not in TERMINAL_STAGES:
                self._finish(job, "CANCELED", "Job canceled by user")
            job.cancel_event.set()
        self._kill_job_process(job, grace=self.kill_grace)
        with self._cond:
            return _Reply(200, self._job_json(job))

    def _route_jobs_logs(self, req: _Request) -> _Reply | None:
        with self._cond:
            job = self._get_job(req)
            tail = dict(req.query).get("tail")
            idx = max(len(job.logs) - int(tail), 0) if tail and tail.isdigit() else 0
        handler = req.handler
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("X-Request-Id", uuid.uuid4().hex)
        handler.end_headers()
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda i=idx: i < len(job.logs) or job.stage in TERMINAL_STAGES or self._stopping,
                    timeout=self.keepalive,
                )
                batch = job.logs[idx:]
                idx += len(batch)
                done = job.stage in TERMINAL_STAGES or self._stopping
            chunk = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in batch)
            if not batch and not done:
                chunk = b": keep-alive\n\n"
            if chunk:
                handler.wfile.write(chunk)
            if done:
                return None

    # ---- job execution --------------------------------------------------------------------------------
    def _log(self, job: _Job, line: str) -> None:
        with self._cond:
            job.logs.append({"data": line, "timestamp": _iso(time.time())})
            self._cond.notify_all()

    def _finish(self, job: _Job, stage: str, message: str | None) -> None:
        with self._cond:
            if job.stage in TERMINAL_STAGES:
                return
            job.stage, job.message, job.finished_at = stage, message, time.time()
            self._cond.notify_all()

    def _job_env(self, job: _Job) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_HF_ENV_PREFIXES)}
        env["PATH"] = os.path.dirname(self.python) + os.pathsep + env.get("PATH", "")
        env["HF_HOME"] = os.path.join(job.workdir or ".", ".cache", "huggingface")
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        env["HF_HUB_DISABLE_XET"] = "1"  # large files travel by the LFS protocol the emulator speaks
        env["PYTHONUNBUFFERED"] = "1"
        env.update(job.spec.get("environment") or {})
        env.update(job.secrets)
        env["HF_ENDPOINT"] = self.url
        env["JOB_ID"] = job.id
        return env

    def _fetch_script(self, url: str, workdir: str) -> str:
        name = os.path.basename(urllib.parse.urlsplit(url).path) or "script.py"
        data = None
        if url.startswith(self.url + "/"):
            route, params = classify("GET", urllib.parse.urlsplit(url).path)
            if route == "resolve":
                rtype = {"datasets/": "dataset", "spaces/": "space"}.get(params.get("prefix", ""), "model")
                with self._cond:
                    repo = self._repos.get((rtype, f"{params['ns']}/{params['name']}"))
                    files = self._files_at(repo, params["rev"]) if repo else None
                    data = files.get(params["path"]) if files else None
                if data is None:
                    raise ValueError(f"script not found in the emulator: {url}")
        if data is None:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - test helper
                data = resp.read()
        dest = os.path.join(workdir, name)
        with open(dest, "wb") as fh:
            fh.write(data)
        return dest

    def _run_job(self, job: _Job) -> None:
        fault = job.fault or {}
        mode = fault.get("job")
        try:
            if mode == "stay_scheduling":
                job.cancel_event.wait()
                return
            delay = self.scheduling_delay + (float(fault.get("start_delay", 0)) if mode == "slow" else 0.0)
            if job.cancel_event.wait(delay) or self._stopping:
                return
            if mode == "slow" and fault.get("after_inspect"):
                while not job.inspected.wait(0.05):
                    if job.cancel_event.is_set() or self._stopping:
                        return
            while not self._up.wait(0.05):  # the Hub is down (outage): nothing gets scheduled
                if job.cancel_event.is_set() or self._stopping:
                    return
            if mode == "error":
                self._finish(job, "ERROR", fault.get("message") or "Emulated failure before the job started")
                return
            workdir = tempfile.mkdtemp(prefix=f"job-{job.id}-", dir=self._root)
            job.workdir = workdir
            try:
                argv = translate_command(
                    job.spec.get("dockerImage") or job.spec.get("spaceId"),
                    list(job.spec["command"]) + list(job.spec.get("arguments") or []),
                    python=self.python,
                    fetch_script=lambda url: self._fetch_script(url, workdir),
                )
            except Exception as exc:  # noqa: BLE001 - any failure becomes the job's ERROR message
                self._finish(job, "ERROR", f"Could not prepare the job command: {exc}")
                return
            with self._cond:
                if job.stage in TERMINAL_STAGES or self._stopping:
                    return
                job.argv = argv
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=workdir,
                        env=self._job_env(job),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                except OSError as exc:
                    self._finish(job, "ERROR", f"Could not start the job command {argv[0]!r}: {exc}")
                    return
                job.proc, job.pid = proc, proc.pid
                job.stage, job.started_at = "RUNNING", time.time()
                self._log(job, f"===== Job started at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} =====")
            reader = threading.Thread(target=self._pump_output, args=(job, proc), daemon=True)
            reader.start()
            timeout = job.spec.get("timeoutSeconds")
            timed_out = False
            try:
                proc.wait(timeout=float(timeout) * self.time_scale if timeout else None)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.kill_grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait()
            # A container dies with its main process: so do the leftovers of the process group.
            self._signal_group(proc, signal.SIGKILL)
            reader.join(timeout=5)
            job.exit_code = proc.returncode
            job.done_event.set()
            with self._cond:
                self._cond.notify_all()
            if mode == "slow" and float(fault.get("finish_delay", 0)) > 0:
                job.cancel_event.wait(float(fault["finish_delay"]))
            rc = proc.returncode
            if timed_out:
                self._finish(job, "ERROR", f"Job timed out after {timeout} seconds")
            elif mode == "error_after_run":
                message = fault.get("message") or f"Emulated failure after the job ran (exit code {rc})"
                self._finish(job, "ERROR", message)
            elif rc == 0:
                self._finish(job, "COMPLETED", None)
            else:
                self._finish(job, "ERROR", f"Job failed with exit code {rc}")
        finally:
            job.done_event.set()
            with self._cond:
                self._cond.notify_all()

    def _pump_output(self, job: _Job, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self._log(job, raw.decode("utf-8", "replace").rstrip("\r\n"))
        proc.stdout.close()

    @staticmethod
    def _signal_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_job_process(self, job: _Job, grace: float) -> None:
        """SIGTERM the job's process group, SIGKILL after ``grace`` seconds, wait until it is reaped."""
        proc = job.proc
        if proc is None or job.done_event.is_set():
            return
        self._signal_group(proc, signal.SIGTERM)
        if not job.done_event.wait(grace):
            self._signal_group(proc, signal.SIGKILL)
            job.done_event.wait(5)

    # ---- routes: repos --------------------------------------------------------------------------------
    def _new_repo(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=time.time())
        self._repos[(repo_type, repo_id)] = repo
        self._commit_files(repo, {".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n"})
        return repo

    def _commit_files(self, repo: _Repo, files: dict[str, bytes], title: str = "Update files") -> str:
        self._counter += 1
        sha = hashlib.sha1(f"{repo.repo_id}-{repo.sha}-{time.time_ns()}-{self._counter}".encode()).hexdigest()
        repo.files, repo.sha, repo.last_modified = files, sha, time.time()
        repo.history[sha] = files
        repo.commits[sha] = (title, repo.last_modified)
        return sha

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{repo.url_prefix()}{repo.repo_id}"

    def _get_repo(self, req: _Request, rtype: str, ns: str, name: str, *, write: bool = False) -> _Repo:
        repo = self._repos.get((rtype, f"{ns}/{name}"))
        authed = req.token == self.token and (ns == self.namespace or ns in self.orgs)
        if repo is None or (repo.private and not authed):
            status = 401 if repo is not None and req.token is None else 404
            raise _HttpError(status, "Repository not found", "RepoNotFound")
        if write and not authed:
            raise _HttpError(403, "You don't have the rights to write to this repository", "Forbidden")
        return repo

    @staticmethod
    def _rtype(req: _Request) -> str:
        return req.params["rtype"][:-1]

    def _files_at(self, repo: _Repo, rev: str) -> dict[str, bytes]:
        if rev == "main" or rev == repo.sha:
            return repo.files
        if rev in repo.history:
            return repo.history[rev]
        raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound", {"X-Repo-Commit": repo.sha})

    def _route_repos_create(self, req: _Request) -> _Reply:
        self._require_auth(req)
        payload = req.json()
        name, ns = payload.get("name"), payload.get("organization") or self.namespace
        rtype = payload.get("type") or "model"
        if not name or rtype not in REPO_TYPES:
            raise _HttpError(400, "Invalid repo name or type", "BadRequest")
        self._require_namespace(ns)
        visibility = payload.get("visibility")
        private = bool(payload.get("private")) if visibility is None else visibility in ("private", "protected")
        with self._cond:
            if (rtype, f"{ns}/{name}") in self._repos:
                # The Hub's 409 carries the repo url: create_repo(exist_ok=True) reads it.
                existing = self._repos[(rtype, f"{ns}/{name}")]
                url = self._repo_url(existing)
                raise _HttpError(409, f"You already created this {rtype} repo", "RepoExists", extra={"url": url})
            repo = self._new_repo(rtype, f"{ns}/{name}", private)
            return _Reply(200, {"url": self._repo_url(repo), "name": repo.repo_id, "id": repo.sha[:24]})

    def _route_repos_delete(self, req: _Request) -> _Reply:
        self._require_auth(req)
        payload = req.json()
        ns = payload.get("organization") or self.namespace
        key = (payload.get("type") or "model", f"{ns}/{payload.get('name')}")
        with self._cond:
            if key not in self._repos:
                raise _HttpError(404, "Repository not found", "RepoNotFound")
            del self._repos[key]
        return _Reply(200, None)

    def _route_repos_info(self, req: _Request) -> _Reply:
        with self._cond:
            repo = self._get_repo(req, self._rtype(req), req.params["ns"], req.params["name"])
            rev = req.params.get("rev", "main")
            files = self._files_at(repo, rev)
            sha = repo.sha if rev == "main" else rev
            return _Reply(
                200,
                {
                    "id": repo.repo_id,
                    "_id": repo.sha[:24],
                    "author": repo.repo_id.split("/")[0],
                    "sha": sha,
                    "private": repo.private,
                    "gated": False,
                    "disabled": False,
                    "createdAt": _iso(repo.created_at),
                    "lastModified": _iso(repo.last_modified),
                    "tags": [],
                    "siblings": [{"rfilename": path} for path in sorted(files)],
                },
            )

    def _route_preupload(self, req: _Request) -> _Reply:
        payload = req.json()
        with self._cond:
            repo = self._get_repo(req, self._rtype(req), req.params["ns"], req.params["name"], write=True)
            files = self._files_at(repo, req.params["rev"])
            answer = []
            for item in payload.get("files") or []:
                existing = files.get(item.get("path"))
                answer.append(
                    {
                        "path": item.get("path"),
                        "uploadMode": "lfs" if _is_large(item) else "regular",
                        "shouldIgnore": False,
                        "oid": _oid(repo, existing) if existing is not None else None,
                    }
                )
            return _Reply(200, {"files": answer, "commitOid": repo.sha})

    def _route_commit(self, req: _Request) -> _Reply:
        try:
            lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        except ValueError as exc:
            raise _HttpError(400, f"Invalid ndjson payload: {exc}", "BadRequest") from exc
        if dict(req.query).get("create_pr"):
            raise _HttpError(400, "create_pr is not supported by the hub emulator", "BadRequest")
        with self._cond:
            repo = self._get_repo(req, self._rtype(req), req.params["ns"], req.params["name"], write=True)
            if req.params["rev"] != "main":
                raise _HttpError(404, f"Invalid rev id: {req.params['rev']}", "RevisionNotFound")
            files = dict(repo.files)
            title = "Update files"
            for item in lines:
                key, value = item.get("key"), item.get("value") or {}
                if key == "header":
                    title = value.get("summary") or title
                    parent = value.get("parentCommit")
                    if parent and parent != repo.sha:
                        message = "A commit has happened since. Please refresh and try again."
                        raise _HttpError(412, message, "Conflict")
                elif key == "file":
                    content = value.get("content", "")
                    is_b64 = value.get("encoding") == "base64"
                    files[value["path"]] = base64.b64decode(content) if is_b64 else content.encode()
                elif key == "lfsFile":
                    stored = repo.lfs.get(value.get("oid") or "")
                    if stored is None:
                        raise _HttpError(422, f"LFS object {value.get('oid')} was not uploaded", "BadRequest")
                    stored.setdefault("filename", value["path"])
                    files[value["path"]] = stored["data"]
                elif key == "deletedFile":
                    if value.get("path") not in files:
                        raise _HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value.get("path", "").rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise _HttpError(404, "A folder with this name doesn't exist", "EntryNotFound")
                    for path in doomed:
                        del files[path]
                else:
                    message = f"Operation {key!r} is not supported by the hub emulator"
                    raise _HttpError(400, message, "BadRequest")
            sha = self._commit_files(repo, files, title)
            return _Reply(
                200,
                {
                    "success": True,
                    "commitOid": sha,
                    "commitUrl": f"{self._repo_url(repo)}/commit/{sha}",
                    "hookOutput": "",
                    "pullRequestUrl": None,
                },
            )

    def _route_tree(self, req: _Request) -> _Reply:
        recursive = dict(req.query).get("recursive", "").lower() in ("1", "true")
        with self._cond:
            repo = self._get_repo(req, self._rtype(req), req.params["ns"], req.params["name"])
            files = self._files_at(repo, req.params["rev"])
            base = req.params.get("path", "").strip("/")
            prefix = base + "/" if base else ""
            entries: dict[str, dict[str, Any]] = {}
            for path, data in sorted(files.items()):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix) :].split("/")
                dirs = rest[:-1] if recursive else rest[:-1][:1]
                for depth in range(len(dirs)):
                    dpath = prefix + "/".join(rest[: depth + 1])
                    oid = git_blob_sha1(dpath.encode())
                    entries.setdefault(dpath, {"type": "directory", "oid": oid, "path": dpath})
                if recursive or len(rest) == 1:
                    oid = git_blob_sha1(data)
                    entries[path] = {"type": "file", "oid": oid, "size": len(data), "path": path}
                    sha256 = hashlib.sha256(data).hexdigest()
                    if sha256 in repo.lfs:
                        entries[path]["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
            if base and not entries:
                raise _HttpError(404, f"{base} does not exist on main", "EntryNotFound")
            return _Reply(200, list(entries.values()))

    def _route_resolve(self, req: _Request) -> _Reply:
        rtype = {"datasets/": "dataset", "spaces/": "space"}.get(req.params.get("prefix", ""), "model")
        with self._cond:
            repo = self._get_repo(req, rtype, req.params["ns"], req.params["name"])
            files = self._files_at(repo, req.params["rev"])
            commit = repo.sha if req.params["rev"] == "main" else req.params["rev"]
            data = files.get(req.params["path"])
        if data is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit})
        headers = {
            "ETag": f'"{git_blob_sha1(data)}"',
            "X-Repo-Commit": commit,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        status = 200
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("Range") or "")
        if rng and req.method == "GET":
            start = int(rng.group(1))
            end = int(rng.group(2)) if rng.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(len(data))
        return _Reply(status, data, headers, head_only=req.method == "HEAD")

    # ---- routes: history and large files -------------------------------------------------------------
    def _route_commits(self, req: _Request) -> _Reply:
        with self._cond:
            repo = self._get_repo(req, self._rtype(req), req.params["ns"], req.params["name"])
            self._files_at(repo, req.params["rev"])  # 404 for an unknown revision
            author = [{"user": repo.repo_id.split("/")[0], "avatar": None}]
            listing = [
                {"id": sha, "title": title, "message": "", "date": _iso(when), "authors": author}
                for sha, (title, when) in sorted(repo.commits.items(), key=lambda c: c[1][1], reverse=True)
            ]
        return _Reply(200, listing)

    def _route_super_squash(self, req: _Request) -> _Reply:
        payload = req.json() if req.body else {}
        with self._cond:
            repo = self._get_repo(req, self._rtype(req), req.params["ns"], req.params["name"], write=True)
            if req.params["rev"] != "main":
                raise _HttpError(404, f"Invalid rev id: {req.params['rev']}", "RevisionNotFound")
            # one commit holding the head's tree; every earlier revision is gone (large files are not)
            repo.history.clear()
            repo.commits.clear()
            sha = self._commit_files(repo, dict(repo.files), payload.get("message") or "Super-squash")
        return _Reply(200, {"commitId": sha})

    def _route_lfs_batch(self, req: _Request) -> _Reply:
        rtype = {"datasets/": "dataset", "spaces/": "space"}.get(req.params.get("prefix", ""), "model")
        payload = req.json()
        with self._cond:
            repo = self._get_repo(req, rtype, req.params["ns"], req.params["name"], write=True)
            objects = []
            for obj in payload.get("objects") or []:
                oid, size = str(obj.get("oid")), int(obj.get("size") or 0)
                answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo.lfs:  # no actions: the client skips what the Hub already stores
                    href = f"{self.url}/_lfs/{rtype}/{repo.repo_id}/{oid}"
                    answer["actions"] = {"upload": {"href": href}}
                objects.append(answer)
        return _Reply(200, {"transfer": "basic", "objects": objects})

    def _route_lfs_upload(self, req: _Request) -> _Reply:
        oid = req.params["oid"]
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise _HttpError(400, "uploaded content does not match its sha256", "BadRequest")
        with self._cond:
            repo = self._repos.get((req.params["rtype"], f"{req.params['ns']}/{req.params['name']}"))
            if repo is None:
                raise _HttpError(404, "Repository not found", "RepoNotFound")
            repo.lfs.setdefault(oid, {"data": req.body, "pushedAt": time.time()})
        return _Reply(200, None)

    def _route_lfs_list(self, req: _Request) -> _Reply:
        with self._cond:
            repo = self._get_repo(req, self._rtype(req), req.params["ns"], req.params["name"], write=True)
            listing = [
                {
                    "fileOid": oid,
                    "oid": git_blob_sha1(oid.encode()),
                    "filename": stored.get("filename", ""),
                    "pushedAt": _iso(stored["pushedAt"]),
                    "ref": "main",
                    "size": len(stored["data"]),
                }
                for oid, stored in repo.lfs.items()
            ]
        return _Reply(200, listing)

    def _route_lfs_delete(self, req: _Request) -> _Reply:
        deletions = (req.json() or {}).get("deletions") or {}
        shas = set(deletions.get("sha") or [])
        with self._cond:
            repo = self._get_repo(req, self._rtype(req), req.params["ns"], req.params["name"], write=True)
            doomed = {oid: repo.lfs.pop(oid)["data"] for oid in shas if oid in repo.lfs}
            if deletions.get("rewriteHistory"):
                # every revision forgets the files that pointed at the deleted objects
                gone = set(doomed.values())
                for files in repo.history.values():
                    for path in [p for p, data in files.items() if data in gone]:
                        del files[path]
        return _Reply(200, None)

    # ---- what a test asks of the stored state ----------------------------------------------------------
    def traces(self, repo_id: str, needles: list[bytes], repo_type: str = "dataset") -> list[str]:
        """Where any of ``needles`` still lies in a repo: ``rev <sha>:<path>`` for any revision, ``lfs <oid>``
        for the large-file store. Empty when nothing of them is retrievable."""
        found = []
        with self._cond:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return []
            for sha, files in repo.history.items():
                found += [f"rev {sha}:{p}" for p, data in files.items() if any(n in data for n in needles)]
            found += [f"lfs {oid}" for oid, s in repo.lfs.items() if any(n in s["data"] for n in needles)]
        return found

    def lfs_names(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        """The large files a repo stores: sha256 -> the path it was first committed under."""
        with self._cond:
            repo = self._repos.get((repo_type, repo_id))
            return {} if repo is None else {oid: s.get("filename", "") for oid, s in repo.lfs.items()}

    def batch_leftovers(self, repo_id: str, repo_type: str = "dataset") -> list[str]:
        """What of diarist's batches is still retrievable from a staging repo, at any revision: staged inputs,
        manifests, results (by path), and stored large files other than the code wheel."""
        history = [p for p in self.paths_ever(repo_id, repo_type) if p.startswith(BATCH_PREFIXES)]
        stored = [f"large file {n}" for n in self.lfs_names(repo_id, repo_type).values() if not n.startswith("code/")]
        return sorted(history) + sorted(stored)

    def paths_ever(self, repo_id: str, repo_type: str = "dataset") -> set[str]:
        """Every path any retrievable revision of a repo holds."""
        with self._cond:
            repo = self._repos.get((repo_type, repo_id))
            return set() if repo is None else {p for files in repo.history.values() for p in files}


def _oid(repo: _Repo, data: bytes) -> str:
    """A file's id as preupload reports it: the sha256 for a large file, the git blob sha1 otherwise."""
    sha256 = hashlib.sha256(data).hexdigest()
    return sha256 if sha256 in repo.lfs else git_blob_sha1(data)


def _is_large(item: dict[str, Any]) -> bool:
    """The Hub's call for a preuploaded file: large or binary content goes to LFS."""
    try:
        sample = base64.b64decode(item.get("sample") or "")
    except ValueError:
        sample = b""
    return int(item.get("size") or 0) >= LFS_THRESHOLD_BYTES or b"\x00" in sample


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub_emulator.py",
        description="Loopback Hugging Face Hub emulator (Jobs + repos) for tests. Prints its URL on stdout "
        "when ready, serves until SIGTERM/SIGINT, then kills every job's process group.",
        epilog='Fault JSON examples: \'{"route": "jobs.create", "status": 402, "times": 2}\', '
        '\'{"route": "whoami", "status": 429, "retry_after": 5}\', '
        '\'{"route": "jobs.inspect", "reset": true}\', '
        '\'{"job": "error", "message": "boom"}\', \'{"job": "stay_scheduling"}\', '
        '\'{"job": "slow", "start_delay": 2, "finish_delay": 1}\'. Routes: ' + ", ".join(ROUTES) + ", *. "
        "At runtime: POST/GET/DELETE /_emulator/faults, GET /_emulator/state.",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 = pick a free one; default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--token", default="hf_test", help="the only valid user token (default hf_test)")
    parser.add_argument("--namespace", default="alice", help="user name returned by whoami (default alice)")
    parser.add_argument("--org", action="append", default=[], help="extra namespace (org) of the user; repeatable")
    parser.add_argument("--python", default=sys.executable, help="interpreter that replaces python/uv in job commands")
    parser.add_argument("--scheduling-delay", type=float, default=0.0, help="seconds each job stays SCHEDULING")
    parser.add_argument("--keepalive", type=float, default=15.0, help="seconds between SSE keep-alives")
    parser.add_argument(
        "--kill-grace", type=float, default=1.0, help="seconds between SIGTERM and SIGKILL on cancel/timeout"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="seconds here per second of Hub hardware: timeouts are enforced that much later, durations "
        "reported that much shorter (default 1)",
    )
    parser.add_argument("--fault", action="append", default=[], help="fault as JSON (repeatable), see below")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    emulator = HubEmulator(
        port=args.port,
        token=args.token,
        namespace=args.namespace,
        host=args.host,
        orgs=args.org,
        python=args.python,
        scheduling_delay=args.scheduling_delay,
        keepalive=args.keepalive,
        kill_grace=args.kill_grace,
        time_scale=args.time_scale,
        faults=[json.loads(spec) for spec in args.fault],
        verbose=args.verbose,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    emulator.start()
    print(emulator.url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
