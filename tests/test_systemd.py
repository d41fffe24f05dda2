"""The systemd unit: systemd's own tools accept it, it stays locked down, and install-service writes what it should."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from diarist.daemon import config as cfg
from diarist.daemon.install import (
    CONFIG_SKELETON,
    TEMPLATES,
    render_env_file,
    render_unit,
    sandbox_warnings,
    systemd_word,
    writable_paths,
)
from diarist.handlers.errors import ConfigError

DIARIST = Path(sys.executable).parent / "diarist"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    not ANALYZE, reason="systemd-analyze is missing (scripts/setup.sh installs the systemd package)"
)
UNIT = Path("etc/systemd/system/diarist.service")


def install(root: Path, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DIARIST), "install-service", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
    )


def write_config(root: Path, inboxes: list[tuple[Path, Path]]) -> Path:
    path = root / "etc/diarist/diarist.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tables = "".join(f'[[inbox]]\npath = "{inbox}"\noutbox = "{outbox}"\n\n' for inbox, outbox in inboxes)
    path.write_text(tables)
    return path


def verify(unit: Path) -> list[str]:
    """systemd-analyze verify's complaints about this unit.

    verify also loads the units this one depends on (network-online.target, multi-user.target, ...) and warns
    about any of the host's own unit files it dislikes; those are not ours to fix, so only lines that name
    diarist.service count.
    """
    result = subprocess.run(
        [ANALYZE, "verify", "--recursive-errors=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 or ours, result.stderr
    return ours


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.fixture
def inboxes(tmp_path: Path) -> list[tuple[Path, Path]]:
    folders = [
        (tmp_path / "shares/sales in", tmp_path / "shares/sales out"),
        (tmp_path / "shares/calls/in", tmp_path / "shares/calls/out"),
    ]
    for pair in folders:
        for folder in pair:
            folder.mkdir(parents=True)
    return folders


class TestUnit:
    @needs_analyze
    def test_verify_accepts_the_installed_unit(self, tmp_path: Path, inboxes: list[tuple[Path, Path]]):
        """The unit install-service writes (the real diarist script, an inbox with a space) passes verify."""
        root = tmp_path / "root"
        write_config(root, inboxes)
        assert install(root).returncode == 0
        assert verify(root / UNIT) == []

    @needs_analyze
    def test_verify_reads_odd_paths_back(self, tmp_path: Path):
        """Paths with spaces, quotes, %, backslashes and colons survive systemd's parser; unquoted, they would not."""
        odd = tmp_path / "bin dir"
        odd.mkdir()
        (odd / "diarist").symlink_to(DIARIST)
        writable = [
            Path("/srv/sales in"),
            Path("/srv/100% done"),
            Path('/srv/say "hi"'),
            Path("/srv/it's"),
            Path("/srv/back\\slash"),
            Path("/home/alice/a:b c"),
        ]
        template = (TEMPLATES / "diarist.service").read_text()
        text = render_unit(template, diarist=odd / "diarist", config=Path("/etc/di arist/$x.toml"), writable=writable)
        unit = tmp_path / "diarist.service"
        unit.write_text(text)
        assert verify(unit) == []
        assert 'BindPaths="/home/alice/a\\:b c"' in text and "ProtectHome=tmpfs" in text

        unit.write_text(text.replace('"/srv/sales in"', "/srv/sales in"))
        assert any("not absolute" in line for line in verify(unit))

    @needs_analyze
    @pytest.mark.parametrize("home", [False, True], ids=["srv", "home"])
    def test_exposure_at_most_3(self, tmp_path: Path, home: bool):
        """systemd-analyze security rates the unit 3.0 or better, with or without inboxes under /home (one
        unit whether [api] is on or off: its sockets, credential and runtime folder are always there)."""
        writable = [Path("/srv/in"), Path("/home/alice/out") if home else Path("/srv/out")]
        template = (TEMPLATES / "diarist.service").read_text()
        unit = tmp_path / "diarist.service"
        unit.write_text(
            render_unit(template, diarist=DIARIST, config=Path("/etc/diarist/diarist.toml"), writable=writable)
        )
        assert exposure(unit) <= 3.0

    def test_no_placeholder_left(self):
        """Rendering fills every placeholder and drops the settings that would be empty."""
        template = (TEMPLATES / "diarist.service").read_text()
        text = render_unit(template, diarist=DIARIST, config=Path("/etc/diarist/diarist.toml"), writable=[])
        assert not re.search(r"@[A-Z_]+@", text)
        assert not re.search(r"^(ReadWritePaths|BindPaths|RequiresMountsFor)=", text, re.M)
        assert "ProtectHome=yes" in text

    def test_stop_timeout_fits_the_drain(self):
        """TimeoutStopSec= is longer than the daemon's default stop_timeout, so the drain is never SIGKILLed."""
        template = (TEMPLATES / "diarist.service").read_text()
        timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", template, re.M).group(1))
        assert timeout > cfg.DaemonSettings(ledger=Path("x"), host_id="h").stop_timeout


class TestRendering:
    def test_words_that_need_no_quotes_stay_plain(self):
        """An ordinary path is written as is."""
        assert systemd_word("/srv/recordings/in") == "/srv/recordings/in"

    def test_specifiers_and_variables_are_escaped(self):
        """% becomes %% everywhere; $ becomes $$ in ExecStart= only."""
        assert systemd_word("/srv/5%") == "/srv/5%%"
        assert systemd_word("/srv/$x") == "/srv/$x"
        assert systemd_word("/srv/$x", exec_arg=True) == "/srv/$$x"

    def test_a_path_with_both_quotes_is_refused(self):
        """A path with both kinds of quote (or a control character) cannot be written: ConfigError."""
        with pytest.raises(ConfigError):
            systemd_word("/srv/\"a\" 'b'")
        with pytest.raises(ConfigError):
            systemd_word("/srv/a\nb")

    def test_writable_paths_are_the_topmost_folders(self):
        """Inboxes, outboxes and a ledger folder outside /var/lib/diarist; nested folders are covered by parents."""
        data = {
            "daemon": {"ledger": "/srv/state/ledger.db"},
            "inbox": [
                {"path": "/srv/rec/in", "outbox": "/srv/rec/out"},
                {"path": "/srv/rec/in/team", "outbox": "/mnt/share/out"},
            ],
        }
        settings = cfg.parse_settings(data, env={})
        assert writable_paths(settings) == (
            Path("/mnt/share/out"),
            Path("/srv/rec/in"),
            Path("/srv/rec/out"),
            Path("/srv/state"),
        )

    def test_default_ledger_needs_no_extra_path(self):
        """With the unit's STATE_DIRECTORY the ledger is /var/lib/diarist/ledger.db, inside StateDirectory=."""
        settings = cfg.parse_settings({}, env={"STATE_DIRECTORY": "/var/lib/diarist"})
        assert settings.daemon.ledger == Path("/var/lib/diarist/ledger.db")
        assert writable_paths(settings) == ()

    def test_sandbox_warnings(self):
        """diarist itself under /home, or a folder under /tmp (PrivateTmp=), is reported; /opt and /srv are fine."""
        assert sandbox_warnings(software=[Path("/opt/diarist/.venv/bin/diarist")], writable=[Path("/srv/in")]) == []
        warnings = sandbox_warnings(software=[Path("/home/bob/.venv/bin/diarist")], writable=[Path("/var/tmp/in")])
        assert len(warnings) == 2 and "ProtectHome=" in warnings[0] and "PrivateTmp=" in warnings[1]

    def test_env_file_names_every_variable(self):
        """The environment skeleton lists every HF_JOBS_* override, HF_ENDPOINT and DIARIST_HOST_ID, all commented."""
        text = render_env_file()
        for name in [*cfg._CLOUD_ENV, "HF_ENDPOINT", "DIARIST_HOST_ID"]:
            assert f"\n#{name}=" in text
        assert all(line == "" or line.startswith("#") for line in text.splitlines())

    def test_config_skeleton_is_valid(self):
        """The config skeleton parses and has no inbox yet."""
        settings = cfg.parse_settings(tomllib.loads(CONFIG_SKELETON), env={})
        assert settings.inboxes == ()


class TestInstallService:
    def test_writes_files_with_modes(self, tmp_path: Path):
        """A first run writes the unit, sysusers snippet, config, env file and an empty token, modes exact."""
        result = install(tmp_path, umask=0o077)  # a strict umask must not make /etc/diarist unreadable
        assert result.returncode == 0, result.stderr
        modes = {
            "etc/systemd/system/diarist.service": 0o644,
            "etc/sysusers.d/diarist.conf": 0o644,
            "etc/diarist/diarist.toml": 0o644,
            "etc/diarist/diarist.env": 0o640,
            "etc/diarist/credentials/hf_token": 0o600,
            "etc/diarist/credentials/api-token": 0o600,
            "etc/diarist/credentials/webhook-secret": 0o600,
            "etc/diarist/credentials": 0o700,
            "etc/diarist": 0o755,
            "etc/systemd/system": 0o755,
        }
        for name, mode in modes.items():
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
        assert (tmp_path / "etc/diarist/credentials/hf_token").read_text() == ""
        assert (tmp_path / "etc/diarist/credentials/api-token").read_text() == ""
        assert "systemctl enable --now diarist" in result.stdout
        assert "no [[inbox]]" in result.stdout

    def test_second_run_keeps_config_and_updates_unit(self, tmp_path: Path, inboxes: list[tuple[Path, Path]]):
        """A second run never overwrites config, env file or tokens, and the unit gets the config's folders."""
        root = tmp_path / "root"
        assert install(root).returncode == 0
        config = write_config(root, inboxes)
        env = root / "etc/diarist/diarist.env"
        env.write_text("HF_JOBS_ENABLED=false\n")
        (root / "etc/diarist/credentials/hf_token").write_text("hf_secret\n")
        (root / "etc/diarist/credentials/api-token").write_text("api-secret-0123456789\n")
        mine = config.read_text()

        result = install(root)
        assert result.returncode == 0, result.stderr
        assert config.read_text() == mine
        assert env.read_text() == "HF_JOBS_ENABLED=false\n"
        assert (root / "etc/diarist/credentials/hf_token").read_text() == "hf_secret\n"
        assert (root / "etc/diarist/credentials/api-token").read_text() == "api-secret-0123456789\n"
        assert result.stdout.count("(exists; never overwritten)") == 5

        unit = (root / UNIT).read_text()
        folders = [folder for pair in inboxes for folder in pair]
        words = " ".join(f'"{p}"' if " " in str(p) else str(p) for p in sorted(folders))
        assert f"\nReadWritePaths={words}\n" in unit
        assert f"\nRequiresMountsFor={words}\n" in unit
        assert f"\nExecStart={DIARIST} --config /etc/diarist/diarist.toml run\n" in unit
        assert "chown -R diarist:diarist" in result.stdout

    def test_sysusers_snippet_is_valid(self, tmp_path: Path):
        """systemd-sysusers accepts the installed snippet and would create the diarist user."""
        sysusers = shutil.which("systemd-sysusers")
        if not sysusers:
            pytest.skip("systemd-sysusers is missing (scripts/setup.sh installs the systemd package)")
        assert install(tmp_path).returncode == 0
        result = subprocess.run(
            [sysusers, f"--root={tmp_path}", "--dry-run"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "Creating user 'diarist'" in result.stdout + result.stderr

    def test_dry_run_writes_nothing(self, tmp_path: Path, inboxes: list[tuple[Path, Path]]):
        """--dry-run prints every file it would write and leaves the root folder as it was."""
        root = tmp_path / "root"
        config = write_config(root, inboxes)
        before = sorted(root.rglob("*"))
        result = install(root, "--dry-run")
        assert result.returncode == 0, result.stderr
        assert sorted(root.rglob("*")) == before
        assert f"--- would keep {config} (exists)" in result.stdout
        assert f"--- would write {root / UNIT} (mode 0644)" in result.stdout
        assert "ReadWritePaths=" in result.stdout

    def test_unwritable_root_is_a_clear_error(self, tmp_path: Path):
        """A root it cannot write into ends with exit 2 and one message, no traceback."""
        root = tmp_path / "not-a-folder"
        root.write_text("")
        result = install(root)
        assert result.returncode == 2
        assert "cannot write" in result.stderr and "Traceback" not in result.stderr

    def test_bad_config_is_a_config_error(self, tmp_path: Path):
        """An invalid config stops install-service with exit 2 and the key, before anything is written."""
        config = tmp_path / "etc/diarist/diarist.toml"
        config.parent.mkdir(parents=True)
        config.write_text('[[inbox]]\npath = "/srv/in"\n')
        result = install(tmp_path)
        assert result.returncode == 2
        assert "outbox" in result.stderr
        assert not (tmp_path / UNIT).exists()


def test_help_names_the_command():
    """`diarist --help` lists install-service."""
    result = subprocess.run([str(DIARIST), "--help"], capture_output=True, text=True, timeout=60, env=os.environ)
    assert "install-service" in result.stdout
