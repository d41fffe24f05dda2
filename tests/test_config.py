"""Reading diarist.toml into frozen settings, and refusing bad configs by key and file (diarist.daemon.config)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diarist.daemon import config as cfg
from diarist.daemon.config import (
    BUNDLED_PIPELINE,
    OnSuccess,
    Settings,
    SpeakerCounts,
    default_ledger_path,
    load_settings,
    parse_settings,
)
from diarist.handlers.errors import ConfigError
from diarist.policies.flavor import Task
from diarist.policies.route import RouteSetting

ENV = {"DIARIST_HOST_ID": "test-host", "XDG_STATE_HOME": "/state"}
INBOX = '[[inbox]]\npath = "in"\noutbox = "out"\n'

FULL_CONFIG = """
[daemon]
ledger = "state/ledger.db"
host_id = "nas-1"
rescan_interval = 30
log_format = "json"
log_level = "debug"
telemetry = true

[models]
pipeline = "./pipelines/mine"
device = "cuda:1"
clustering_threshold = 0.6
segmentation_batch_size = 8
embedding_batch_size = 16

[[inbox]]
path = "inbox"
outbox = "/srv/results"
recursive = false
polling = true
poll_interval = 2.5
stability_seconds = 0
ignore = ["*draft*", "archive/*"]
task = "full"
min_speakers = 2
max_speakers = 4
on_success = "keep"
user = "alice"
route = "cloud"

[[inbox]]
path = "/data/calls"
outbox = "calls-out"
num_speakers = 2
"""


def write(folder: Path, text: str, name: str = "diarist.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=ENV)
    return info.value


class TestLoadSettings:
    def test_every_key_is_read(self, tmp_path: Path) -> None:
        """Every [daemon], [models] and [[inbox]] key lands in the frozen settings."""
        s = load_settings(write(tmp_path, FULL_CONFIG), env={**ENV, "HF_TOKEN": "hf_x"})
        assert s.source == tmp_path / "diarist.toml"
        assert s.hf_token == "hf_x"
        d = s.daemon
        assert (d.ledger, d.host_id, d.rescan_interval) == (tmp_path / "state/ledger.db", "nas-1", 30.0)
        assert (d.log_format, d.log_level, d.telemetry) == ("json", "debug", True)
        m = s.models
        assert m.pipeline == str(tmp_path / "pipelines/mine")
        assert (m.device, m.clustering_threshold) == ("cuda:1", 0.6)
        assert (m.segmentation_batch_size, m.embedding_batch_size) == (8, 16)
        first, second = s.inboxes
        assert (first.path, first.outbox) == (tmp_path / "inbox", Path("/srv/results"))
        assert (first.recursive, first.polling, first.poll_interval, first.stability_seconds) == (False, True, 2.5, 0)
        assert first.ignore == ("*draft*", "archive/*")
        assert first.task is Task.FULL
        assert first.speakers == SpeakerCounts(min_speakers=2, max_speakers=4)
        assert first.speakers.as_kwargs() == {"min_speakers": 2, "max_speakers": 4}
        assert (first.on_success, first.user, first.route) == (OnSuccess.KEEP, "alice", RouteSetting.CLOUD)
        assert (second.path, second.outbox) == (Path("/data/calls"), tmp_path / "calls-out")
        assert second.speakers.as_kwargs() == {"num_speakers": 2}

    def test_inbox_defaults(self, tmp_path: Path) -> None:
        """An inbox with only path and outbox gets the documented defaults."""
        (inbox,) = load_settings(write(tmp_path, INBOX), env=ENV).inboxes
        assert (inbox.recursive, inbox.polling, inbox.poll_interval, inbox.stability_seconds) == (True, "auto", 5, 5)
        assert (inbox.ignore, inbox.task, inbox.speakers) == ((), Task.DIARIZATION, SpeakerCounts())
        assert (inbox.on_success, inbox.user, inbox.route) == (OnSuccess.ARCHIVE, None, RouteSetting.AUTO)

    def test_daemon_and_model_defaults(self) -> None:
        """An empty document is valid: bundled offline models, auto device, no inboxes, telemetry off."""
        s = parse_settings({}, env=ENV)
        assert s.inboxes == () and s.source is None and s.hf_token is None
        assert (s.models.pipeline, s.models.device, s.models.clustering_threshold) == (BUNDLED_PIPELINE, "auto", None)
        assert (s.daemon.host_id, s.daemon.rescan_interval, s.daemon.telemetry) == ("test-host", 60.0, False)
        assert (s.daemon.log_format, s.daemon.log_level) == ("auto", "info")

    @pytest.mark.parametrize(("toml", "expected"), [('"auto"', "auto"), ("true", True), ("false", False)])
    def test_polling_values(self, tmp_path: Path, toml: str, expected: bool | str) -> None:
        """polling accepts "auto", true and false as they are."""
        (inbox,) = load_settings(write(tmp_path, INBOX + f"polling = {toml}\n"), env=ENV).inboxes
        assert inbox.polling == expected

    def test_relative_paths_resolve_against_config_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Relative inbox, outbox and ledger paths are relative to the config file, not the working folder."""
        path = write(tmp_path / "etc", INBOX + '[daemon]\nledger = "../var/ledger.db"\n')
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        s = load_settings(path, env=ENV)
        assert (s.inboxes[0].path, s.inboxes[0].outbox) == (tmp_path / "etc/in", tmp_path / "etc/out")
        assert s.daemon.ledger == tmp_path / "var/ledger.db"

    def test_hub_pipeline_id_is_not_a_path(self) -> None:
        """A Hub id such as org/name is kept as it is, not resolved as a folder."""
        s = parse_settings({"models": {"pipeline": "pyannote/speaker-diarization-community-1"}}, env=ENV)
        assert s.models.pipeline == "pyannote/speaker-diarization-community-1"

    def test_settings_are_frozen(self) -> None:
        """Settings cannot be changed after loading."""
        s = parse_settings({}, env=ENV)
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.daemon = s.daemon  # type: ignore[misc]

    def test_token_not_in_repr(self) -> None:
        """HF_TOKEN is read from the environment but never shown in a repr (logs)."""
        s = parse_settings({}, env={**ENV, "HF_TOKEN": "hf_secret"})
        assert s.hf_token == "hf_secret" and "hf_secret" not in repr(s)

    def test_no_config_file_gives_defaults(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --config and with no default file present, the defaults apply (and no inbox)."""
        monkeypatch.setattr(cfg, "DEFAULT_CONFIG_PATHS", (tmp_path / "etc.toml", tmp_path / "local.toml"))
        assert load_settings(None, env=ENV).inboxes == ()

    def test_first_existing_default_file_is_used(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --config, the first of the default locations that exists is read."""
        local = write(tmp_path, INBOX, "local.toml")
        monkeypatch.setattr(cfg, "DEFAULT_CONFIG_PATHS", (tmp_path / "etc.toml", local))
        s = load_settings(None, env=ENV)
        assert s.source == local and len(s.inboxes) == 1


class TestDefaultLedgerPath:
    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({"STATE_DIRECTORY": "/var/lib/diarist"}, "/var/lib/diarist/ledger.db"),
            ({"STATE_DIRECTORY": "/var/lib/diarist:/var/lib/other"}, "/var/lib/diarist/ledger.db"),
            ({"STATE_DIRECTORY": "/var/lib/diarist", "XDG_STATE_HOME": "/x"}, "/var/lib/diarist/ledger.db"),
            ({"XDG_STATE_HOME": "/x", "HOME": "/home/u"}, "/x/diarist/ledger.db"),
            ({"HOME": "/home/u"}, "/home/u/.local/state/diarist/ledger.db"),
            (
                {"STATE_DIRECTORY": "", "XDG_STATE_HOME": "", "HOME": "/home/u"},
                "/home/u/.local/state/diarist/ledger.db",
            ),
        ],
    )
    def test_lookup_order(self, env: dict[str, str], expected: str) -> None:
        """systemd's STATE_DIRECTORY (first entry) wins, then XDG_STATE_HOME, then ~/.local/state."""
        assert default_ledger_path(env) == Path(expected)

    def test_used_when_no_ledger_key(self) -> None:
        """Without [daemon] ledger the settings use the environment's state folder."""
        s = parse_settings({}, env={"STATE_DIRECTORY": "/var/lib/diarist"})
        assert s.daemon.ledger == Path("/var/lib/diarist/ledger.db")

    def test_ledger_key_wins(self, tmp_path: Path) -> None:
        """An explicit [daemon] ledger overrides the environment."""
        s = parse_settings({"daemon": {"ledger": "l.db"}}, base=tmp_path, env={"STATE_DIRECTORY": "/var/lib/d"})
        assert s.daemon.ledger == tmp_path / "l.db"


BAD_CONFIGS: list[tuple[str, str, str]] = [
    # (what is wrong, TOML, the key the error names)
    ("unknown top-level key", "colour = 1\n", "colour"),
    ("unknown daemon key", "[daemon]\nledgr = 'x'\n", "daemon.ledgr"),
    ("unknown models key", "[models]\ndevise = 'cpu'\n", "models.devise"),
    ("unknown inbox key", INBOX + "recursiv = true\n", "inbox[0].recursiv"),
    ("daemon is not a table", "daemon = 5\n", "daemon"),
    ("models is not a table", "models = 'bundled'\n", "models"),
    ("inbox is not a list", "inbox = 5\n", "inbox"),
    ("inbox entry is not a table", "inbox = [1]\n", "inbox[0]"),
    ("string where number expected", "[daemon]\nrescan_interval = '60'\n", "daemon.rescan_interval"),
    ("number where flag expected", "[daemon]\ntelemetry = 1\n", "daemon.telemetry"),
    ("rescan interval too short", "[daemon]\nrescan_interval = 0.5\n", "daemon.rescan_interval"),
    ("bad log format", "[daemon]\nlog_format = 'xml'\n", "daemon.log_format"),
    ("host id not a string", "[daemon]\nhost_id = 7\n", "daemon.host_id"),
    ("bad device", "[models]\ndevice = 'gpu'\n", "models.device"),
    ("flag as threshold", "[models]\nclustering_threshold = true\n", "models.clustering_threshold"),
    ("zero batch size", "[models]\nsegmentation_batch_size = 0\n", "models.segmentation_batch_size"),
    ("pipeline not a string", "[models]\npipeline = 1\n", "models.pipeline"),
    ("missing path", '[[inbox]]\noutbox = "out"\n', "inbox[0].path"),
    ("missing outbox", '[[inbox]]\npath = "in"\n', "inbox[0].outbox"),
    ("path not a string", '[[inbox]]\npath = 3\noutbox = "out"\n', "inbox[0].path"),
    ("outbox inside inbox", '[[inbox]]\npath = "in"\noutbox = "in/results"\n', "inbox[0].outbox"),
    ("outbox is the inbox", '[[inbox]]\npath = "in"\noutbox = "./in"\n', "inbox[0].outbox"),
    ("bool as poll interval", INBOX + "poll_interval = true\n", "inbox[0].poll_interval"),
    ("poll interval too short", INBOX + "poll_interval = 0.05\n", "inbox[0].poll_interval"),
    ("bool as stability seconds", INBOX + "stability_seconds = false\n", "inbox[0].stability_seconds"),
    ("negative stability seconds", INBOX + "stability_seconds = -1\n", "inbox[0].stability_seconds"),
    ("string as recursive", INBOX + "recursive = 'yes'\n", "inbox[0].recursive"),
    ("bad polling string", INBOX + "polling = 'sometimes'\n", "inbox[0].polling"),
    ("number as polling", INBOX + "polling = 1\n", "inbox[0].polling"),
    ("ignore not a list", INBOX + "ignore = '*.tmp'\n", "inbox[0].ignore"),
    ("ignore with a number", INBOX + "ignore = ['*.tmp', 1]\n", "inbox[0].ignore"),
    ("bad task", INBOX + "task = 'translate'\n", "inbox[0].task"),
    ("bad language", INBOX + "language = 'English'\n", "inbox[0].language"),
    ("language the bundled recogniser does not hear", INBOX + "language = 'de'\n", "inbox[0].language"),
    ("bad transcription default language", "[transcription]\nlanguage = 'fr'\n", "transcription.language"),
    ("unknown transcription key", "[transcription]\nmodle = 'x'\n", "transcription.modle"),
    ("unknown export format", INBOX + "formats = ['srt', 'docx']\n", "inbox[0].formats"),
    ("formats not a list", INBOX + "formats = 'srt'\n", "inbox[0].formats"),
    ("identify not a flag", INBOX + "identify = 'yes'\n", "inbox[0].identify"),
    ("bad identify labels", "[identify]\nlabels = 'nicknames'\n", "identify.labels"),
    ("identify threshold above 1", "[identify]\nthreshold = 2\n", "identify.threshold"),
    ("bad on_success", INBOX + "on_success = 'shred'\n", "inbox[0].on_success"),
    ("bad route", INBOX + "route = 'moon'\n", "inbox[0].route"),
    ("user not a string", INBOX + "user = 5\n", "inbox[0].user"),
    ("bool as speaker count", INBOX + "num_speakers = true\n", "inbox[0].num_speakers"),
    ("fraction as speaker count", INBOX + "num_speakers = 2.5\n", "inbox[0].num_speakers"),
    ("zero speakers", INBOX + "num_speakers = 0\n", "inbox[0].num_speakers"),
    ("negative min speakers", INBOX + "min_speakers = -1\n", "inbox[0].min_speakers"),
    ("zero max speakers", INBOX + "max_speakers = 0\n", "inbox[0].max_speakers"),
    ("min above max", INBOX + "min_speakers = 5\nmax_speakers = 2\n", "inbox[0].min_speakers"),
    ("error in the second inbox", INBOX + '[[inbox]]\npath = "in2"\noutbox = "out2"\ntask = "x"\n', "inbox[1].task"),
]


class TestConfigErrors:
    @pytest.mark.parametrize(("toml", "key"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
    def test_names_key_and_file(self, tmp_path: Path, toml: str, key: str) -> None:
        """Every invalid value raises ConfigError whose message names the dotted key and the file."""
        error = config_error(tmp_path, toml)
        assert error.key == key
        assert f"'{key}'" in str(error)
        assert str(tmp_path / "diarist.toml") in str(error)

    def test_unknown_key_lists_allowed_keys(self, tmp_path: Path) -> None:
        """An unknown key's message lists the keys that are allowed there."""
        message = str(config_error(tmp_path, INBOX + "recursiv = true\n"))
        assert "recursiv" in message and "recursive" in message and "stability_seconds" in message

    def test_choice_error_lists_options(self, tmp_path: Path) -> None:
        """A bad enum value's message lists the valid choices and repeats the bad value."""
        message = str(config_error(tmp_path, INBOX + "task = 'translate'\n"))
        assert all(t.value in message for t in Task) and "translate" in message

    def test_invalid_toml_names_file(self, tmp_path: Path) -> None:
        """A file that is not TOML raises ConfigError naming the file."""
        error = config_error(tmp_path, "[[inbox]\npath = \n")
        assert "not valid TOML" in str(error) and str(tmp_path / "diarist.toml") in str(error)

    def test_missing_config_file(self, tmp_path: Path) -> None:
        """--config pointing nowhere raises ConfigError naming the missing file."""
        missing = tmp_path / "nope.toml"
        with pytest.raises(ConfigError, match="does not exist") as info:
            load_settings(missing, env=ENV)
        assert str(missing) in str(info.value)

    def test_parse_settings_default_file_label(self) -> None:
        """parse_settings without a file names "<config>" in its errors."""
        with pytest.raises(ConfigError, match="<config>.*'colour'"):
            parse_settings({"colour": 1}, env=ENV)

    def test_is_a_settings_object(self, tmp_path: Path) -> None:
        """A good file gives a Settings object (sanity check for the error table's base inbox)."""
        assert isinstance(load_settings(write(tmp_path, INBOX), env=ENV), Settings)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(cwd), "XDG_STATE_HOME": str(cwd / "state"), "DIARIST_HOST_ID": "test"}
    env.pop("STATE_DIRECTORY", None)
    return subprocess.run(
        [sys.executable, "-m", "diarist.daemon.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class TestCommandLine:
    def test_run_with_bad_config_exits_2(self, tmp_path: Path) -> None:
        """diarist run with an invalid config exits 2 and names the key and the file on stderr."""
        write(tmp_path, INBOX + "task = 'translate'\n", "bad.toml")
        done = cli("run", "--config", "bad.toml", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "inbox[0].task" in done.stderr and "bad.toml" in done.stderr

    def test_run_with_missing_config_exits_2(self, tmp_path: Path) -> None:
        """diarist run --config with a missing file exits 2 and names the file."""
        done = cli("run", "--config", "absent.toml", cwd=tmp_path)
        assert done.returncode == 2 and "absent.toml" in done.stderr

    def test_process_missing_file_exits_1(self, tmp_path: Path) -> None:
        """diarist process on a file that does not exist says so and exits 1 (models load lazily: none here)."""
        write(tmp_path, "", "empty.toml")
        done = cli("process", "--config", "empty.toml", "missing.wav", cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert "missing.wav: no such file" in done.stderr
