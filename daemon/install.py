"""``diarist install-service``: render the systemd unit and its companions, and write them below a root folder.

Rendering is pure (paths and settings in, text out). Writing goes below ``root``: ``/`` on a real host, a
temporary folder in tests or a packaging step. Files a person edits (config, environment file, token) are
created only when missing; the unit and the sysusers snippet are diarist's own and are rewritten each time, so
running it again after changing the inboxes updates the unit's ``ReadWritePaths=``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from diarist.daemon import config as cfg
from diarist.handlers.errors import ConfigError

#: templates shipped in the source tree (the supported install is a checkout plus scripts/setup.sh)
TEMPLATES = Path(__file__).resolve().parent.parent / "systemd"
DEFAULT_CONFIG = Path("/etc/diarist/diarist.toml")
UNIT_PATH = Path("/etc/systemd/system/diarist.service")
SYSUSERS_PATH = Path("/etc/sysusers.d/diarist.conf")
ENV_PATH = Path("/etc/diarist/diarist.env")
TOKEN_PATH = Path("/etc/diarist/credentials/hf_token")
#: bearer tokens for the HTTP API ([api] listen), one per line; empty: none (the API then only listens locally)
API_TOKEN_PATH = Path("/etc/diarist/credentials/api-token")
#: the key that signs webhooks ([[hook]] url); empty: none
WEBHOOK_SECRET_PATH = Path("/etc/diarist/credentials/webhook-secret")
#: the unit's StateDirectory=; the daemon sees it as $STATE_DIRECTORY
STATE_DIRECTORY = Path("/var/lib/diarist")
#: what ProtectHome= hides
HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))
#: what PrivateTmp= replaces with the service's own folders
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))

RENDERED_HEADER = """\
# diarist as a hardened system service, rendered by `diarist install-service` from diarist's systemd/diarist.service.
# After changing the inboxes in the config, run install-service again rather than editing this file; local
# additions belong in a drop-in (`systemctl edit diarist`), which install-service never touches.
"""

CONFIG_SKELETON = """\
# diarist's configuration for the service (every key: docs/diarist.example.toml in diarist's source).
# Written once by `diarist install-service`, which never overwrites it. After adding or changing an [[inbox]],
# run `diarist install-service` again: the unit may write only to the inboxes and outboxes named here.

[daemon]
# ledger: by default /var/lib/diarist/ledger.db (the unit's StateDirectory=); never on a network share

[models]
pipeline = "bundled"   # the offline default; a Hub pipeline id needs a token in /etc/diarist/credentials/hf_token
device = "auto"        # CUDA when available, else CPU

# [[inbox]]
# path = "/srv/recordings/in"
# outbox = "/srv/recordings/out"
"""


@dataclass(frozen=True)
class PlannedFile:
    #: where it goes on the target system (absolute; written below the root folder)
    path: Path
    text: str
    mode: int
    #: a person's file: created when missing, never overwritten
    keep_existing: bool = False
    #: mode for the folder when it has to be created
    dir_mode: int = 0o755


@dataclass(frozen=True)
class InstallPlan:
    files: tuple[PlannedFile, ...]
    config: Path
    #: inboxes, outboxes and a ledger folder outside the state directory: the daemon must write there
    writable: tuple[Path, ...]


# -- rendering (pure) -----------------------------------------------------------------------------------


def systemd_word(value: str, *, exec_arg: bool = False, separators: str = "") -> str:
    r"""``value`` as one word of a unit-file setting, so that systemd reads back exactly ``value``.

    systemd splits settings at whitespace outside quotes, takes a backslash as an escape, expands ``%``
    specifiers and, in ``ExecStart=``, ``$VARIABLES``; ``separators`` are further characters to escape (``:``
    in ``BindPaths=``). Only escapes that every such setting accepts are used (``\\``, ``\:``, ``%%``, ``$$``):
    a quote character is never escaped, the other kind of quote encloses the word instead. Raises
    ``ConfigError`` for what a unit cannot carry: control characters, or both kinds of quote in one path.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or ('"' in value and "'" in value):
        raise ConfigError(
            f"{value!r} cannot be named in a systemd unit (control characters, or both kinds of quote)",
            hint="rename the folder",
        )
    word = value.replace("\\", "\\\\").replace("%", "%%")
    if exec_arg:
        word = word.replace("$", "$$")
    for ch in separators:
        word = word.replace(ch, "\\" + ch)
    if not re.search(r"[\s'\"\\]", value):
        return word
    quote = "'" if '"' in value else '"'
    return f"{quote}{word}{quote}"


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def topmost(paths: Iterable[Path]) -> tuple[Path, ...]:
    """The paths without duplicates and without those inside another one (that one already covers them)."""
    unique = sorted(set(paths))
    return tuple(p for p in unique if not any(other != p and _under(p, other) for other in unique))


def writable_paths(settings: cfg.Settings, state_directory: Path = STATE_DIRECTORY) -> tuple[Path, ...]:
    """Every folder the daemon writes outside its state directory: inboxes, outboxes, a ledger folder elsewhere.

    SQLite writes ``-wal`` and ``-shm`` files beside the ledger, so its whole folder must be writable.
    """
    paths = [p for inbox in settings.inboxes for p in (inbox.path, inbox.outbox)]
    if not _under(settings.daemon.ledger.parent, state_directory):
        paths.append(settings.daemon.ledger.parent)
    return topmost(paths)


def render_unit(template: str, *, diarist: Path, config: Path, writable: Sequence[Path]) -> str:
    """The unit with every ``@NAME@`` filled in; a setting whose placeholder renders empty is left out.

    Folders under /home, /root or /run/user go to ``BindPaths=`` with ``ProtectHome=tmpfs``: with
    ``ProtectHome=yes`` systemd hides them whatever ``ReadWritePaths=`` says.
    """
    hidden = [p for p in writable if any(_under(p, home) for home in HOME_DIRS)]
    visible = [p for p in writable if p not in hidden]
    values = {
        "DIARIST": systemd_word(str(diarist), exec_arg=True),
        "CONFIG": systemd_word(str(config), exec_arg=True),
        "READ_WRITE_PATHS": " ".join(systemd_word(str(p)) for p in visible),
        "BIND_PATHS": " ".join(systemd_word(str(p), separators=":") for p in hidden),
        "PROTECT_HOME": "tmpfs" if hidden else "yes",
        "REQUIRES_MOUNTS_FOR": " ".join(systemd_word(str(p)) for p in writable),
    }
    body = template.splitlines()
    while body and body[0].startswith("#"):
        body.pop(0)  # the template's own header explains placeholders that are gone now
    lines = RENDERED_HEADER.splitlines()
    for line in body:
        rendered = re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], line)
        if rendered != line and rendered.endswith("="):
            continue
        lines.append(rendered)
    return "\n".join(lines) + "\n"


def _env_default(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_env_file(token_path: Path = TOKEN_PATH) -> str:
    """The environment file skeleton: every variable the daemon reads, commented out, with its default."""
    defaults = cfg.CloudSettings()
    # the config module's own table, so a new HF_JOBS_* variable shows up here without a second list
    cloud = [f"#{var}={_env_default(getattr(defaults, key))}" for var, key in cfg._CLOUD_ENV.items()]
    return "\n".join(
        [
            "# Environment for diarist.service: KEY=value lines; `systemctl restart diarist` after a change.",
            "# Written once by `diarist install-service`, which never overwrites it. Each line shows the default",
            "# (empty: not set). The Hugging Face token does not belong here: put it in",
            f"# {token_path} (the unit's LoadCredential=), which keeps it out of the environment.",
            "",
            "# [cloud] overrides (README: Cloud processing); a variable wins over the config file",
            *cloud,
            "# The Hub's address when [cloud] endpoint is not set",
            "#HF_ENDPOINT=https://huggingface.co",
            "# This host's id for claims on a shared inbox when [daemon] host_id is not set (default: the hostname)",
            "#DIARIST_HOST_ID=",
            "# Model cache (default: /var/cache/diarist/huggingface, below the unit's CacheDirectory=)",
            "#HF_HOME=/var/cache/diarist/huggingface",
            "",
        ]
    )


def plan_install(
    *, unit_template: str, sysusers: str, diarist: Path, config: Path, settings: cfg.Settings
) -> InstallPlan:
    """Every file install-service writes, with its mode, for the service to run ``diarist`` with ``config``."""
    writable = writable_paths(settings)
    unit = render_unit(unit_template, diarist=diarist, config=config, writable=writable)
    return InstallPlan(
        files=(
            PlannedFile(UNIT_PATH, unit, 0o644),
            PlannedFile(SYSUSERS_PATH, sysusers, 0o644),
            # read by the daemon itself (user diarist); it holds no secrets, the token is a credential
            PlannedFile(config, CONFIG_SKELETON, 0o644, keep_existing=True),
            # read by systemd (root) before it starts the daemon
            PlannedFile(ENV_PATH, render_env_file(), 0o640, keep_existing=True),
            # LoadCredential= fails the start when the file is missing; empty means "no token"
            PlannedFile(TOKEN_PATH, "", 0o600, keep_existing=True, dir_mode=0o700),
            PlannedFile(API_TOKEN_PATH, "", 0o600, keep_existing=True, dir_mode=0o700),
            PlannedFile(WEBHOOK_SECRET_PATH, "", 0o600, keep_existing=True, dir_mode=0o700),
        ),
        config=config,
        writable=writable,
    )


def next_steps(plan: InstallPlan, *, has_inboxes: bool, missing: Sequence[Path]) -> str:
    """What the administrator does after the files are written, as shell lines to copy."""
    q = shlex.quote
    lines = ["Next steps, as root:"]
    if not has_inboxes:
        lines.append(f"  # no [[inbox]] in {plan.config} yet: add one, then run `diarist install-service` again")
    lines.append("  systemd-sysusers                 # creates the diarist user and group")
    if missing:
        lines.append(f"  mkdir -p {' '.join(q(str(p)) for p in missing)}")
    if plan.writable:
        folders = " ".join(q(str(p)) for p in plan.writable)
        lines.append(f"  chown -R diarist:diarist {folders}")
        lines.append("  # (or keep the owners and make them group-writable for the diarist group; SMB/NFS shares:")
        lines.append("  #  set the mount's uid/gid or the server's permissions; README: Running as a service)")
    lines += [
        f"  $EDITOR {TOKEN_PATH}   # optional: a Hugging Face token (empty: none)",
        f"  openssl rand -hex 32 > {API_TOKEN_PATH}   # only for an [api] listening beyond this machine",
        "  systemctl daemon-reload",
        "  systemctl enable --now diarist",
        "  systemctl status diarist; journalctl -u diarist -f",
    ]
    return "\n".join(lines)


# -- writing ----------------------------------------------------------------------------------------------


def below(root: Path, path: Path) -> Path:
    return root / path.relative_to(path.anchor)


def _write(target: Path, item: PlannedFile) -> bool:
    """Write through a temporary file, so a half-written unit or config never lands. False: kept as it was."""
    # explicit modes, whatever the umask: user diarist must be able to reach /etc/diarist/diarist.toml
    for folder in reversed([p for p in (target.parent, *target.parent.parents) if not p.exists()]):
        folder.mkdir()
        folder.chmod(item.dir_mode if folder == target.parent else 0o755)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, item.mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), item.mode)  # exact, whatever the umask
            f.write(item.text)
            f.flush()
            os.fsync(f.fileno())
        if not item.keep_existing:
            os.replace(tmp, target)
            return True
        try:
            os.link(tmp, target)  # atomic and refuses to replace: a person's file stays untouched
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_plan(plan: InstallPlan, root: Path, *, dry_run: bool, out: TextIO) -> None:
    """Write the plan below ``root`` (or, with ``dry_run``, print it). Raises ``ConfigError`` when it cannot."""
    for item in plan.files:
        target = below(root, item.path)
        exists = target.exists()
        if dry_run:
            if item.keep_existing and exists:
                print(f"--- would keep {target} (exists)", file=out)
            else:
                print(f"--- would write {target} (mode {item.mode:04o})", file=out)
                out.write(item.text)
            continue
        try:
            wrote = _write(target, item)
        except OSError as e:
            raise ConfigError(
                f"cannot write {target}: {e.strerror}",
                hint="run it as root, e.g. sudo .venv/bin/diarist install-service, or pass --root DIR",
            ) from None
        print(f"{'wrote' if wrote else 'kept '} {target}{'' if wrote else ' (exists; never overwritten)'}", file=out)


# -- the command --------------------------------------------------------------------------------------------


def diarist_script() -> Path:
    """The ``diarist`` console script of the running Python environment, as the unit must run it."""
    beside = Path(sys.executable).parent / "diarist"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("diarist")
    if not found:
        raise ConfigError(
            f"no diarist script beside {sys.executable} or on PATH",
            hint="run install-service with the environment's own script, e.g. /opt/diarist/.venv/bin/diarist",
        )
    return Path(os.path.abspath(found))


def sandbox_warnings(*, software: Iterable[Path], writable: Iterable[Path]) -> list[str]:
    """What the unit's sandbox would hide from the service; each one keeps it from working."""
    warnings = [
        f"the service runs {p}, which ProtectHome= hides: install diarist outside /home and /root "
        "(e.g. /opt/diarist) and run install-service from there"
        for p in software
        if any(_under(p, home) for home in HOME_DIRS)
    ]
    warnings += [
        f"{p} is below {tmp}, which the service sees as its own empty folder (PrivateTmp=): use another folder"
        for p in writable
        for tmp in PRIVATE_TMP
        if _under(p, tmp)
    ]
    return warnings


def install_service(*, config: Path | None, root: Path, dry_run: bool, out: TextIO = sys.stdout) -> int:
    """Plan, write (or print) and say what to do next. Raises ``ConfigError`` (exit 2) on any problem."""
    config = Path(os.path.abspath(config or DEFAULT_CONFIG))
    script = diarist_script()
    try:
        unit_template = (TEMPLATES / "diarist.service").read_text(encoding="utf-8")
        sysusers = (TEMPLATES / "diarist.sysusers.conf").read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"cannot read the unit templates in {TEMPLATES}: {e.strerror}",
            hint="run install-service from a source checkout set up with scripts/setup.sh",
        ) from None
    # the environment the unit gives the daemon, so the ledger default is the one the service will use
    env = {"STATE_DIRECTORY": str(STATE_DIRECTORY)}
    on_disk = below(root, config)
    if on_disk.is_file():
        settings = cfg.load_settings(on_disk, env=env)
    else:
        settings = cfg.parse_settings(tomllib.loads(CONFIG_SKELETON), file=str(config), env=env)
    plan = plan_install(
        unit_template=unit_template, sysusers=sysusers, diarist=script, config=config, settings=settings
    )
    # warnings, not errors: a drop-in may relax the sandbox, and the files are still worth writing
    software = [script, Path(sys.executable).resolve(), Path(__file__).resolve()]
    for warning in sandbox_warnings(software=software, writable=plan.writable):
        print(f"diarist: warning: {warning}", file=sys.stderr)
    write_plan(plan, root, dry_run=dry_run, out=out)
    missing = [p for p in plan.writable if not below(root, p).exists()]
    print("", file=out)
    print(next_steps(plan, has_inboxes=bool(settings.inboxes), missing=missing), file=out)
    return 0
