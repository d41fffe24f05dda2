"""Read the TOML file and the environment once, into frozen settings passed down as arguments.

Lookup order for the file: ``--config``, else ``/etc/diarist/diarist.toml``, else ``./diarist.toml``.
Every problem is a ``ConfigError`` that names the file and the key (the CLI exits 2 on it).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from diarist.handlers.engine_settings import BUNDLED_ASR, EngineSettings, TranscriptionSettings, unheard_language
from diarist.handlers.errors import ConfigError
from diarist.policies.flavor import Priority, Task
from diarist.policies.formats import parse_formats
from diarist.policies.hooks import HOOK_EVENTS
from diarist.policies.identify import DEFAULT_THRESHOLD
from diarist.policies.intake import NAS_FOLDERS
from diarist.policies.listen import Listen, ListenError, parse_listen
from diarist.policies.pricing import unknown_flavor
from diarist.policies.request import InboxDefaults, ModelIds
from diarist.policies.route import RouteSetting
from diarist.policies.sidecar import language_problem

DEFAULT_CONFIG_PATHS = (Path("/etc/diarist/diarist.toml"), Path("diarist.toml"))
BUNDLED_PIPELINE = "bundled"


class OnSuccess(str, Enum):
    ARCHIVE = "archive"
    DELETE = "delete"
    KEEP = "keep"


@dataclass(frozen=True)
class SpeakerCounts:
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def as_kwargs(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class InboxSettings:
    path: Path
    outbox: Path
    recursive: bool = True
    polling: bool | str = "auto"
    poll_interval: float = 5.0
    stability_seconds: float = 5.0
    ignore: tuple[str, ...] = ()
    #: folders never looked into (NAS recycle bins, thumbnails, snapshots, sync state)
    ignore_folders: tuple[str, ...] = NAS_FOLDERS
    task: Task = Task.DIARIZATION
    speakers: SpeakerCounts = field(default_factory=SpeakerCounts)
    on_success: OnSuccess = OnSuccess.ARCHIVE
    user: str | None = None
    route: RouteSetting = RouteSetting.AUTO
    #: the spoken language (task transcribe); the [transcription] language unless the inbox says
    language: str = "en"
    #: result formats beyond RTTM and JSON
    formats: tuple[str, ...] = ()
    #: put names on known voices (``[identify]``, ``diarist voices``); false opts this inbox out
    identify: bool = True

    def defaults(self) -> InboxDefaults:
        """What this inbox asks of a file whose sidecar does not say (``policies.request.question``)."""
        return InboxDefaults(
            task=self.task,
            speakers=self.speakers.as_kwargs(),
            user=self.user,
            language=self.language,
            formats=self.formats,
        )


@dataclass(frozen=True)
class ModelSettings:
    #: "bundled" (offline default), a Hub pipeline id, or a local pipeline directory
    pipeline: str = BUNDLED_PIPELINE
    device: str = "auto"
    #: clustering distance threshold for the bundled pipeline (None: the tuned default)
    clustering_threshold: float | None = None
    #: None: the engine's choice (8 chunks in ONNX Runtime on a CPU, where larger batches only cost memory; 32
    #: on a GPU and in pyannote's own pipeline)
    segmentation_batch_size: int | None = None
    embedding_batch_size: int = 32
    #: diarist's own pipeline for the bundled models (handlers/diarize.py, ONNX Runtime on a CPU); false:
    #: pyannote's own ``SpeakerDiarization`` with the same weights (slower; the benchmarks' baseline)
    fast: bool = True

    def engine(self) -> EngineSettings:
        return EngineSettings(
            pipeline=self.pipeline,
            device=self.device,
            clustering_threshold=self.clustering_threshold,
            segmentation_batch_size=self.segmentation_batch_size,
            embedding_batch_size=self.embedding_batch_size,
            fast=self.fast,
        )

    def for_cloud(self) -> EngineSettings:
        """What a cloud job loads: these settings on the job's device ("auto" picks its GPU; a daemon pinned
        to cpu here still wants the cloud GPU)."""
        return dataclasses.replace(self.engine(), device="auto")


@dataclass(frozen=True)
class DaemonSettings:
    ledger: Path
    host_id: str
    rescan_interval: float = 60.0
    log_format: str = "auto"
    log_level: str = "info"
    #: pyannote.audio's usage telemetry; off unless the user opts in
    telemetry: bool = False
    #: several hosts on one share: a host whose heartbeat on the share has not changed for this long is
    #: presumed dead and its claimed files go back into the inbox
    lease_seconds: float = 60.0
    #: on SIGTERM the file in hand gets this long to finish before it goes back into the inbox
    #: (keep it below the unit's TimeoutStopSec)
    stop_timeout: float = 240.0
    #: a file held up by a fault diarist can wait out (outbox not writable, a full disk, the ledger locked,
    #: FFmpeg missing) is tried again after this long
    retry_interval: float = 30.0
    #: how many claimed files may wait for this host's local engine; further stable files stay in the
    #: inbox, where another host on the share can take them (claiming a whole burst would leave the
    #: other hosts idle while this one works through it alone)
    claim_ahead: int = 4


@dataclass(frozen=True)
class CloudSettings:
    """Hugging Face Jobs. The ``HF_JOBS_*`` environment variables override the ``[cloud]`` table."""

    enabled: bool = True
    #: Jobs and the staging repo live here; None: the token's own user (one whoami at start)
    namespace: str | None = None
    #: dataset repo for inputs, code and results; "{namespace}" is filled in
    staging_repo: str = "{namespace}/diarist-staging"
    #: a Jobs hardware flavor, or "auto" to let the priority policy choose per file
    flavor: str = "a10g-small"
    priority: Priority = Priority.BALANCED
    image: str = "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime"
    fallback: bool = True
    max_concurrent: int = 3
    min_file_size: int = 10 * 1024 * 1024
    prefer_cloud: bool = False
    poll_interval: float = 15.0
    batch_window: float = 10.0
    batch_max_files: int = 8
    batch_max_audio_seconds: float = 4 * 3600.0
    #: a job still SCHEDULING after this long is cancelled (no capacity) and its files fall back
    scheduling_timeout: float = 900.0
    keep_staged: bool = False
    #: Hub API endpoint; None: $HF_ENDPOINT, else https://huggingface.co
    endpoint: str | None = None
    #: spending caps in USD (None: no cap); checked with every job's worst case before it is started
    daily_budget: Decimal | None = None
    monthly_budget: Decimal | None = None
    #: budget days and months begin at midnight here
    timezone: str = "UTC"
    #: container start + model download before the first audio second (billed; used in estimates and timeouts)
    startup_seconds: float = 120.0
    #: shortest timeout a job is submitted with
    min_job_timeout: int = 600
    #: how long the Hub's price list is trusted before it is read again
    price_ttl: float = 3600.0


@dataclass(frozen=True)
class UserSettings:
    """``[users.<name>]``: the seed's per-user preferences (a file's user comes from its inbox or sidecar)."""

    prefer_cloud: bool | None = None
    priority_processing: bool = False
    #: USD per budget month for this user's cloud jobs
    cost_limit: Decimal | None = None


@dataclass(frozen=True)
class IdentifySettings:
    """``[identify]``: names on known voices (enrolled with ``diarist voices add``)."""

    #: "names": RTTM and exports label a matched speaker by name; "generic": SPEAKER_xx (the JSON says both)
    labels: str = "names"
    #: cosine similarity a speaker needs to get a name (calibrated on the dev set: README, Known voices)
    threshold: float = DEFAULT_THRESHOLD


@dataclass(frozen=True)
class ApiSettings:
    """``[api]``: the HTTP API, metrics and dashboard (off unless ``listen`` is set)."""

    listen: Listen | None = None
    #: bearer tokens (``token_file``, one per line, or the ``diarist-api-token`` systemd credential)
    tokens: tuple[str, ...] = field(default=(), repr=False)
    #: the largest upload accepted, in bytes
    max_upload_bytes: int = 2 * 1024**3
    #: the inbox uploads enter (default: the first configured)
    inbox: Path | None = None


@dataclass(frozen=True)
class HookSettings:
    """``[[hook]]``: a program to run or a URL to POST to when a file reaches one of the ``on`` events."""

    name: str
    on: tuple[str, ...] = ("done", "failed")
    #: only files of this inbox / this user (None: all)
    inbox: Path | None = None
    user: str | None = None
    exec: tuple[str, ...] | None = None
    url: str | None = None
    #: HMAC-SHA256 key for ``url`` hooks (``secret_file`` or the ``diarist-webhook-secret`` credential)
    secret: str | None = field(default=None, repr=False)
    #: seconds one attempt may take
    timeout: float = 30.0
    #: seconds after the event when a delivery that keeps failing is given up
    give_up_after: float = 86400.0


@dataclass(frozen=True)
class Settings:
    daemon: DaemonSettings
    models: ModelSettings
    inboxes: tuple[InboxSettings, ...]
    cloud: CloudSettings = field(default_factory=CloudSettings)
    users: Mapping[str, UserSettings] = field(default_factory=dict)
    source: Path | None = None
    hf_token: str | None = field(default=None, repr=False)
    transcription: TranscriptionSettings = field(default_factory=TranscriptionSettings)
    identify: IdentifySettings = field(default_factory=IdentifySettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    hooks: tuple[HookSettings, ...] = ()

    def model_ids(self) -> ModelIds:
        """What a stored answer depends on (part of its reuse key)."""
        return ModelIds(self.models.pipeline, self.transcription.model)


def default_ledger_path(env: Mapping[str, str]) -> Path:
    # systemd's StateDirectory= sets STATE_DIRECTORY; otherwise the XDG state dir. Never on the share:
    # SQLite's locking is unreliable over SMB/NFS.
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0]) / "ledger.db"
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path(env.get("HOME", "/tmp")) / ".local/state"
    return base / "diarist" / "ledger.db"


class _Reader:
    """Typed access to one TOML table that reports the dotted key and the file on every error."""

    def __init__(self, table: Mapping[str, Any], prefix: str, file: str, allowed: set[str]):
        self.table, self.prefix, self.file = table, prefix, file
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
                key=self.key(unknown[0]),
                file=file,
            )

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, key=self.key(name), file=self.file)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if name not in self.table:
            if required:
                raise self.fail(name, "is required")
            return default
        value = self.table[name]
        # bool is an int in Python; a number where a flag is expected (or vice versa) is a typo
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(name, f"expected {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(name, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        value = float(self.get(name, (int, float), default))
        if value < minimum:
            raise self.fail(name, f"must be >= {minimum}, got {value}")
        return value

    def choice(self, name: str, enum: type[Enum], default: Enum) -> Any:
        raw = self.get(name, str, default.value)
        try:
            return enum(raw)
        except ValueError:
            options = ", ".join(repr(m.value) for m in enum)  # type: ignore[attr-defined]
            raise self.fail(name, f"must be one of {options}, got {raw!r}") from None

    def count(self, name: str) -> int | None:
        value = self.get(name, int)
        if value is not None and value < 1:
            raise self.fail(name, f"must be a positive integer, got {value}")
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if kinds == (int,):
        return "an integer"
    names = {
        int: "a number",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def _path(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return (p if p.is_absolute() else base / p).resolve()


def _speakers(r: _Reader) -> SpeakerCounts:
    counts = SpeakerCounts(r.count("num_speakers"), r.count("min_speakers"), r.count("max_speakers"))
    if counts.min_speakers and counts.max_speakers and counts.min_speakers > counts.max_speakers:
        raise r.fail("min_speakers", f"is larger than max_speakers ({counts.min_speakers} > {counts.max_speakers})")
    return counts


_INBOX_KEYS = {
    "path",
    "outbox",
    "recursive",
    "polling",
    "poll_interval",
    "stability_seconds",
    "ignore",
    "ignore_folders",
    "task",
    "num_speakers",
    "min_speakers",
    "max_speakers",
    "on_success",
    "user",
    "route",
    "language",
    "formats",
    "identify",
}


def _inbox(table: Any, index: int, file: str, base: Path, transcription: TranscriptionSettings) -> InboxSettings:
    prefix = f"inbox[{index}]"
    if not isinstance(table, dict):
        raise ConfigError("each [[inbox]] must be a table", key=prefix, file=file)
    r = _Reader(table, prefix, file, _INBOX_KEYS)
    polling = r.get("polling", (bool, str), "auto")
    if polling not in (True, False, "auto"):
        raise r.fail("polling", f'must be "auto", true or false, got {polling!r}')
    ignore = r.get("ignore", list, [])
    if not all(isinstance(p, str) for p in ignore):
        raise r.fail("ignore", "must be a list of glob patterns (strings)")
    ignore_folders = r.get("ignore_folders", list, list(NAS_FOLDERS))
    if not all(isinstance(p, str) and p and "/" not in p for p in ignore_folders):
        raise r.fail("ignore_folders", "must be a list of folder names (no slashes)")
    path = _path(r.get("path", str, required=True), base)
    outbox = _path(r.get("outbox", str, required=True), base)
    if outbox == path or path in outbox.parents:
        raise r.fail("outbox", f"must not be inside the inbox {path} (results would be picked up as input)")
    language = _language(r, transcription)
    formats, problem = parse_formats(r.get("formats", list, []))
    if problem:
        raise r.fail("formats", problem)
    return InboxSettings(
        path=path,
        outbox=outbox,
        recursive=r.get("recursive", bool, True),
        polling=polling,
        poll_interval=r.number("poll_interval", 5.0, minimum=0.1),
        stability_seconds=r.number("stability_seconds", 5.0),
        ignore=tuple(ignore),
        ignore_folders=tuple(ignore_folders),
        task=r.choice("task", Task, Task.DIARIZATION),
        speakers=_speakers(r),
        on_success=r.choice("on_success", OnSuccess, OnSuccess.ARCHIVE),
        user=r.get("user", str),
        route=r.choice("route", RouteSetting, RouteSetting.AUTO),
        language=language,
        formats=formats,
        identify=r.get("identify", bool, True),
    )


def _language(r: _Reader, transcription: TranscriptionSettings) -> str:
    """A language code, one the configured recogniser hears (found at start, not on the first file)."""
    language = r.get("language", str, transcription.language)
    problem = language_problem(language)
    if problem:
        raise r.fail("language", problem)
    if not transcription.hears(language):
        message, hint = unheard_language(language)
        raise ConfigError(message, key=r.key("language"), file=r.file, hint=hint)
    return language


def _model_source(r: _Reader, name: str, default: str, base: Path) -> str:
    """A model key: a name or Hub id as given, a path made absolute against the config's folder."""
    value = r.get(name, str, default)
    return str(_path(value, base)) if value.startswith(("/", "./", "../", "~")) else value


def _device(r: _Reader) -> str:
    device = r.get("device", str, "auto")
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise r.fail("device", f'must be "auto", "cpu" or "cuda[:N]", got {device!r}')
    return device


def _identify(table: Any, file: str) -> IdentifySettings:
    r = _Reader(table, "identify", file, {"labels", "threshold"})
    labels = r.get("labels", str, "names")
    if labels not in ("names", "generic"):
        raise r.fail("labels", f'must be "names" or "generic", got {labels!r}')
    threshold = r.number("threshold", DEFAULT_THRESHOLD, minimum=0.0)
    if threshold > 1.0:
        raise r.fail("threshold", f"is a cosine similarity: at most 1.0, got {threshold}")
    return IdentifySettings(labels=labels, threshold=threshold)


#: a token shorter than this is guessable; ``openssl rand -hex 32`` makes a good one
MIN_TOKEN_LENGTH = 16
API_CREDENTIAL = "diarist-api-token"


def _api(table: Any, file: str, base: Path, env: Mapping[str, str]) -> ApiSettings:
    r = _Reader(table, "api", file, {"listen", "token_file", "max_upload_mb", "inbox"})
    listen_text = r.get("listen", str)
    try:
        listen = parse_listen(listen_text) if listen_text else None
    except ListenError as e:
        raise r.fail("listen", str(e)) from None
    token_file = r.get("token_file", str)
    if token_file:
        path = _path(token_file, base)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(
                f"cannot read the API token file: {e.strerror}",
                key="api.token_file",
                file=file,
                hint="create it with one token per line (e.g. openssl rand -hex 32 > FILE; chmod 600 FILE)",
            ) from e
    else:
        text = credential(API_CREDENTIAL, env) or ""
    tokens = tuple(t for t in (line.strip() for line in text.splitlines()) if t and not t.startswith("#"))
    short = [t for t in tokens if len(t) < MIN_TOKEN_LENGTH]
    if short:
        raise r.fail("token_file", f"a token has {len(short[0])} characters; at least {MIN_TOKEN_LENGTH} are needed")
    if listen is not None and not listen.loopback and not tokens:
        raise ConfigError(
            f"the API would listen on {listen_text}, beyond this machine, with no token",
            key="api.listen",
            file=file,
            hint=f"set [api] token_file (or the systemd credential {API_CREDENTIAL}), or listen on 127.0.0.1",
        )
    inbox = r.get("inbox", str)
    return ApiSettings(
        listen=listen,
        tokens=tokens,
        max_upload_bytes=int(r.number("max_upload_mb", 2048.0, minimum=0.001) * 1024**2),
        inbox=_path(inbox, base) if inbox else None,
    )


WEBHOOK_CREDENTIAL = "diarist-webhook-secret"


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL, got {url!r}"
    if parts.username or parts.password:
        return "must not carry a user or password (the log would show them); the signature authenticates"
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return f"has a port that is not a number: {parts.netloc!r}"
    return None


def _hooks(tables: list[Any], file: str, base: Path, env: Mapping[str, str]) -> tuple[HookSettings, ...]:
    hooks = []
    for index, table in enumerate(tables):
        prefix = f"hook[{index}]"
        if not isinstance(table, dict):
            raise ConfigError("each [[hook]] must be a table", key=prefix, file=file)
        allowed = {"name", "on", "inbox", "user", "exec", "url", "secret_file", "timeout", "give_up_after"}
        r = _Reader(table, prefix, file, allowed)
        name = r.get("name", str, f"hook-{index + 1}")
        on = r.get("on", list, ["done", "failed"])
        unknown = [e for e in on if e not in HOOK_EVENTS]
        if unknown or not on:
            raise r.fail("on", f"events are {', '.join(HOOK_EVENTS)}; got {unknown or on!r}")
        command, url = r.get("exec", list), r.get("url", str)
        if (command is None) == (url is None):
            raise r.fail("exec", 'give exactly one of exec = ["/path/program", "arg", ...] or url = "https://..."')
        if command is not None and not (command and all(isinstance(a, str) for a in command)):
            raise r.fail("exec", "must be a non-empty list of strings: the program and its arguments (no shell)")
        if command is not None and not Path(command[0]).is_absolute():
            raise r.fail(
                "exec", f"the program must be an absolute path (the service's PATH is short), got {command[0]!r}"
            )
        if url is not None:
            problem = _url_problem(url)
            if problem:
                raise r.fail("url", problem)
        secret = None
        if url is not None:
            secret_file = r.get("secret_file", str)
            if secret_file:
                try:
                    secret = _path(secret_file, base).read_text(encoding="utf-8").strip() or None
                except OSError as e:
                    raise r.fail("secret_file", f"cannot read it: {e.strerror}") from e
            else:
                secret = credential(WEBHOOK_CREDENTIAL, env)
            if not secret or len(secret) < MIN_TOKEN_LENGTH:
                raise r.fail(
                    "secret_file",
                    f"a webhook is signed: give it a secret of at least {MIN_TOKEN_LENGTH} characters "
                    f"(secret_file, or the systemd credential {WEBHOOK_CREDENTIAL})",
                )
        inbox = r.get("inbox", str)
        hooks.append(
            HookSettings(
                name=name,
                on=tuple(dict.fromkeys(on)),
                inbox=_path(inbox, base) if inbox else None,
                user=r.get("user", str),
                exec=tuple(command) if command is not None else None,
                url=url,
                secret=secret,
                timeout=r.number("timeout", 30.0, minimum=0.1),
                give_up_after=r.number("give_up_after", 86400.0, minimum=1.0),
            )
        )
    if len(tables) > 1 and any(isinstance(t, dict) and "name" not in t for t in tables):
        raise ConfigError(
            "with more than one [[hook]], each needs a name",
            key="hook",
            file=file,
            hint='name = "...": deliveries waiting in the ledger find their hook by it, whatever the order',
        )
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ConfigError("two [[hook]] tables have the same name", key="hook", file=file, hint="name each hook once")
    return tuple(hooks)


def _transcription(table: Any, file: str, base: Path) -> TranscriptionSettings:
    t = _Reader(table, "transcription", file, {"model", "language", "device"})
    settings = TranscriptionSettings(model=_model_source(t, "model", BUNDLED_ASR, base), device=_device(t))
    return dataclasses.replace(settings, language=_language(t, settings))


_CLOUD_ENV = {
    # env var -> [cloud] key; the seed service was configured by these names
    "HF_JOBS_ENABLED": "enabled",
    "HF_JOBS_NAMESPACE": "namespace",
    "HF_JOBS_FLAVOR": "flavor",
    "HF_JOBS_FALLBACK": "fallback",
    "HF_JOBS_MAX_CONCURRENT": "max_concurrent",
    "HF_JOBS_MIN_FILE_SIZE": "min_file_size",
    "HF_JOBS_PREFER_CLOUD": "prefer_cloud",
    "HF_JOBS_POLL_INTERVAL": "poll_interval",
    "HF_JOBS_DAILY_BUDGET": "daily_budget",
    "HF_JOBS_MONTHLY_BUDGET": "monthly_budget",
}
_CLOUD_KEYS = {f.name for f in fields(CloudSettings)}
_ENV_KINDS: dict[str, type] = {"daily_budget": float, "monthly_budget": float}


def _env_value(name: str, raw: str, kind: type, file: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"expected true or false, got {raw!r}", key=name, file="environment")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"expected a number, got {raw!r}", key=name, file="environment") from None
    return raw


def _cloud(table: Any, file: str, env: Mapping[str, str]) -> CloudSettings:
    _Reader(table, "cloud", file, _CLOUD_KEYS)  # unknown keys are reported against the file, before env merges
    defaults = CloudSettings()
    merged = dict(table)
    for var, key in _CLOUD_ENV.items():
        if env.get(var):
            kind = _ENV_KINDS.get(key) or (type(getattr(defaults, key)) if getattr(defaults, key) is not None else str)
            merged[key] = _env_value(var, env[var], kind, file)
    from_env = {key: var for var, key in _CLOUD_ENV.items() if env.get(var)}
    try:
        return _cloud_settings(_Reader(merged, "cloud", file, _CLOUD_KEYS), env, defaults)
    except ConfigError as e:
        name = (e.key or "").removeprefix("cloud.")
        if name in from_env:  # the bad value came from the environment: say so, not the file
            raise ConfigError(e.detail, key=from_env[name], file="environment") from None
        raise


def _whole(r: _Reader, name: str, default: int, minimum: int) -> int:
    value = r.get(name, int, default)
    if value < minimum:
        raise r.fail(name, f"must be an integer >= {minimum}, got {value}")
    return int(value)


def _cloud_settings(r: _Reader, env: Mapping[str, str], defaults: CloudSettings) -> CloudSettings:
    endpoint = r.get("endpoint", str) or env.get("HF_ENDPOINT") or None
    staging = r.get("staging_repo", str, defaults.staging_repo)
    if staging.count("/") != 1:
        raise r.fail("staging_repo", f'must be "namespace/name" (may use {{namespace}}), got {staging!r}')
    flavor = r.get("flavor", str, defaults.flavor)
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", flavor):
        raise r.fail("flavor", f'must be a Jobs hardware flavor such as "a10g-small", or "auto"; got {flavor!r}')
    if flavor != "auto" and (why := unknown_flavor(flavor)):
        raise r.fail("flavor", f'{why}; or "auto"')
    return CloudSettings(
        enabled=r.get("enabled", bool, defaults.enabled),
        namespace=r.get("namespace", str),
        staging_repo=staging,
        flavor=flavor,
        priority=r.choice("priority", Priority, defaults.priority),
        image=r.get("image", str, defaults.image),
        fallback=r.get("fallback", bool, defaults.fallback),
        max_concurrent=_whole(r, "max_concurrent", defaults.max_concurrent, 0),
        min_file_size=_whole(r, "min_file_size", defaults.min_file_size, 0),
        prefer_cloud=r.get("prefer_cloud", bool, defaults.prefer_cloud),
        poll_interval=r.number("poll_interval", defaults.poll_interval, minimum=0.1),
        batch_window=r.number("batch_window", defaults.batch_window),
        batch_max_files=_whole(r, "batch_max_files", defaults.batch_max_files, 1),
        batch_max_audio_seconds=r.number("batch_max_audio_seconds", defaults.batch_max_audio_seconds, minimum=1),
        scheduling_timeout=r.number("scheduling_timeout", defaults.scheduling_timeout, minimum=1),
        keep_staged=r.get("keep_staged", bool, defaults.keep_staged),
        endpoint=endpoint.rstrip("/") if endpoint else None,
        daily_budget=_money(r, "daily_budget"),
        monthly_budget=_money(r, "monthly_budget"),
        timezone=_timezone(r),
        startup_seconds=r.number("startup_seconds", defaults.startup_seconds),
        min_job_timeout=_whole(r, "min_job_timeout", defaults.min_job_timeout, 60),
        price_ttl=r.number("price_ttl", defaults.price_ttl),
    )


def _money(r: _Reader, name: str) -> Decimal | None:
    value = r.get(name, (int, float))
    if value is None:
        return None
    if value < 0:
        raise r.fail(name, f"must be a dollar amount >= 0, got {value}")
    return Decimal(str(value))


def _timezone(r: _Reader) -> str:
    name = r.get("timezone", str, "UTC")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise r.fail("timezone", f'must be an IANA time zone such as "Europe/Berlin", got {name!r}') from None
    return name


def _users(table: Any, file: str) -> dict[str, UserSettings]:
    if not isinstance(table, dict):
        raise ConfigError("expected a table of [users.<name>] tables", key="users", file=file)
    users = {}
    for name, prefs in table.items():
        if not isinstance(prefs, dict):
            raise ConfigError("expected a table", key=f"users.{name}", file=file)
        r = _Reader(prefs, f"users.{name}", file, {"prefer_cloud", "priority_processing", "cost_limit"})
        users[name] = UserSettings(
            prefer_cloud=r.get("prefer_cloud", bool),
            priority_processing=r.get("priority_processing", bool, False),
            cost_limit=_money(r, "cost_limit"),
        )
    return users


def parse_settings(
    data: Mapping[str, Any], *, file: str = "<config>", base: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Validate a parsed TOML document. Raises ``ConfigError`` naming the key."""
    env = os.environ if env is None else env
    base = base or Path.cwd()
    top = _Reader(
        data, "", file, {"daemon", "models", "inbox", "cloud", "users", "transcription", "identify", "api", "hook"}
    )
    d = _Reader(
        top.get("daemon", dict, {}),
        "daemon",
        file,
        {
            "ledger",
            "host_id",
            "rescan_interval",
            "log_format",
            "log_level",
            "telemetry",
            "lease_seconds",
            "stop_timeout",
            "retry_interval",
            "claim_ahead",
        },
    )
    log_format = d.get("log_format", str, "auto")
    if log_format not in ("auto", "json", "console"):
        raise d.fail("log_format", f'must be "auto", "json" or "console", got {log_format!r}')
    ledger = d.get("ledger", str)
    daemon = DaemonSettings(
        ledger=_path(ledger, base) if ledger else default_ledger_path(env),
        host_id=d.get("host_id", str, env.get("DIARIST_HOST_ID") or socket.gethostname()),
        rescan_interval=d.number("rescan_interval", 60.0, minimum=1.0),
        log_format=log_format,
        log_level=d.get("log_level", str, "info"),
        telemetry=d.get("telemetry", bool, False),
        lease_seconds=d.number("lease_seconds", 60.0, minimum=2.0),
        stop_timeout=d.number("stop_timeout", 240.0, minimum=0.0),
        retry_interval=d.number("retry_interval", 30.0, minimum=1.0),
        claim_ahead=_whole(d, "claim_ahead", 4, 1),
    )
    m = _Reader(
        top.get("models", dict, {}),
        "models",
        file,
        {"pipeline", "device", "clustering_threshold", "segmentation_batch_size", "embedding_batch_size", "fast"},
    )
    pipeline = _model_source(m, "pipeline", BUNDLED_PIPELINE, base)
    device = _device(m)
    threshold = m.get("clustering_threshold", (int, float))
    # unset: the engine picks the batch that suits its runtime
    seg_batch = _whole(m, "segmentation_batch_size", 0, 1) if "segmentation_batch_size" in m.table else None
    models = ModelSettings(
        pipeline=pipeline,
        device=device,
        clustering_threshold=float(threshold) if threshold is not None else None,
        segmentation_batch_size=seg_batch,
        embedding_batch_size=int(m.number("embedding_batch_size", 32, minimum=1)),
        fast=m.get("fast", bool, True),
    )
    inboxes = top.get("inbox", list, [])
    transcription = _transcription(top.get("transcription", dict, {}), file, base)
    parsed = tuple(_inbox(t, i, file, base, transcription) for i, t in enumerate(inboxes))
    api = _api(top.get("api", dict, {}), file, base, env)
    if api.inbox is not None and api.inbox not in {i.path for i in parsed}:
        raise ConfigError(
            f"{api.inbox} is not a configured inbox", key="api.inbox", file=file, hint="use one of the [[inbox]] paths"
        )
    return Settings(
        daemon=daemon,
        models=models,
        transcription=transcription,
        identify=_identify(top.get("identify", dict, {}), file),
        inboxes=parsed,
        api=api,
        hooks=_hooks(top.get("hook", list, []), file, base, env),
        cloud=_cloud(top.get("cloud", dict, {}), file, env),
        users=_users(top.get("users", dict, {}), file),
        source=Path(file) if file != "<config>" else None,
        hf_token=env.get("HF_TOKEN") or credential("hf_token", env),
    )


def credential(name: str, env: Mapping[str, str]) -> str | None:
    """A systemd credential (``LoadCredential=NAME:PATH`` puts it in ``$CREDENTIALS_DIRECTORY``); empty is none."""
    folder = env.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    try:
        value = (Path(folder) / name).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the {name} credential: {e.strerror}", file=str(Path(folder) / name)) from e
    return value or None


def find_config(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist", hint="pass an existing file to --config")
        return explicit
    return next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load the config file (see module doc for the lookup order); no file gives defaults and no inboxes."""
    found = find_config(path)
    if found is None:
        return parse_settings({}, env=env)
    try:
        data = tomllib.loads(found.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", file=str(found)) from e
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=str(found)) from e
    return parse_settings(data, file=str(found), base=found.resolve().parent, env=env)
