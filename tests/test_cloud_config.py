"""The ``[cloud]`` table and the ``HF_JOBS_*`` environment (diarist.daemon.config, CloudSettings)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from diarist.daemon.config import CloudSettings, parse_settings
from diarist.handlers.errors import ConfigError
from diarist.policies.flavor import Priority

FILE = "/etc/diarist/diarist.toml"

EVERY_KEY: dict[str, Any] = {
    "enabled": False,
    "namespace": "acme",
    "staging_repo": "acme/scratch",
    "flavor": "t4-small",
    "priority": "speed",
    "image": "ghcr.io/acme/diarist:1",
    "fallback": False,
    "max_concurrent": 5,
    "min_file_size": 1024,
    "prefer_cloud": True,
    "poll_interval": 2.5,
    "batch_window": 30,
    "batch_max_files": 4,
    "batch_max_audio_seconds": 7200,
    "scheduling_timeout": 120,
    "keep_staged": True,
    "endpoint": "http://127.0.0.1:8080/",
    "daily_budget": 0.5,
    "monthly_budget": 10,
    "timezone": "Europe/Berlin",
    "startup_seconds": 30,
    "min_job_timeout": 120,
    "price_ttl": 600,
}


def cloud(table: dict[str, Any] | None = None, **env: str) -> CloudSettings:
    data = {"cloud": table} if table is not None else {}
    return parse_settings(data, file=FILE, env={"DIARIST_HOST_ID": "test-host", **env}).cloud


def config_error(table: dict[str, Any] | None = None, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cloud(table, **env)
    return info.value


class TestDefaults:
    def test_no_table_gives_the_defaults(self) -> None:
        """Without a [cloud] table or HF_JOBS_* variables the cloud route runs on its documented defaults."""
        s = cloud()
        assert s == CloudSettings()
        assert s.enabled and s.fallback and not s.prefer_cloud and not s.keep_staged
        assert s.namespace is None and s.endpoint is None
        assert s.staging_repo == "{namespace}/diarist-staging"
        assert s.flavor == "a10g-small" and s.priority is Priority.BALANCED
        assert s.max_concurrent == 3 and s.min_file_size == 10 * 1024 * 1024
        assert (s.batch_window, s.batch_max_files, s.batch_max_audio_seconds) == (10.0, 8, 4 * 3600.0)
        assert s.scheduling_timeout == 900.0 and s.poll_interval == 15.0

    def test_empty_table_gives_the_defaults(self) -> None:
        """An empty [cloud] table is the same as none."""
        assert cloud({}) == CloudSettings()


class TestEveryKey:
    def test_every_key_is_read(self) -> None:
        """Each key of the table lands in its field, converted (enum, float, trailing slash)."""
        assert cloud(EVERY_KEY) == CloudSettings(
            enabled=False,
            namespace="acme",
            staging_repo="acme/scratch",
            flavor="t4-small",
            priority=Priority.SPEED,
            image="ghcr.io/acme/diarist:1",
            fallback=False,
            max_concurrent=5,
            min_file_size=1024,
            prefer_cloud=True,
            poll_interval=2.5,
            batch_window=30.0,
            batch_max_files=4,
            batch_max_audio_seconds=7200.0,
            scheduling_timeout=120.0,
            keep_staged=True,
            endpoint="http://127.0.0.1:8080",
            daily_budget=Decimal("0.5"),
            monthly_budget=Decimal("10"),
            timezone="Europe/Berlin",
            startup_seconds=30.0,
            min_job_timeout=120,
            price_ttl=600.0,
        )

    def test_every_field_has_a_key(self) -> None:
        """The test above covers every CloudSettings field (a new field needs a key and a test)."""
        assert set(EVERY_KEY) == set(CloudSettings.__dataclass_fields__)

    def test_flavor_auto_is_accepted(self) -> None:
        """``flavor = "auto"`` lets the priority policy choose per file."""
        assert cloud({"flavor": "auto"}).flavor == "auto"

    @pytest.mark.parametrize("flavor", ["h100", "a10g-smal", "gpu"])
    def test_a_flavor_the_jobs_api_does_not_know_is_refused_with_the_valid_list(self, flavor: str) -> None:
        """A typo or a retired name fails at start, naming the valid flavors, not at the first job's 400."""
        message = str(config_error({"flavor": flavor}))
        assert f"'{flavor}' is not a Hugging Face Jobs hardware flavor" in message
        assert "a10g-small" in message and "l40sx1" in message and "h200" in message and "auto" in message

    def test_staging_repo_may_use_the_namespace_placeholder(self) -> None:
        """The placeholder is kept for the Hub handle to fill in once the namespace is known."""
        assert cloud({"staging_repo": "{namespace}/other"}).staging_repo == "{namespace}/other"


class TestEnvironment:
    @pytest.mark.parametrize(
        ("var", "raw", "table", "field", "expected"),
        [
            ("HF_JOBS_ENABLED", "false", {"enabled": True}, "enabled", False),
            ("HF_JOBS_ENABLED", "yes", {"enabled": False}, "enabled", True),
            ("HF_JOBS_FALLBACK", "false", {"fallback": True}, "fallback", False),
            ("HF_JOBS_FALLBACK", "0", {"fallback": True}, "fallback", False),
            ("HF_JOBS_FALLBACK", "no", {"fallback": True}, "fallback", False),
            ("HF_JOBS_FALLBACK", "OFF", {"fallback": True}, "fallback", False),
            ("HF_JOBS_FALLBACK", "True", {"fallback": False}, "fallback", True),
            ("HF_JOBS_MAX_CONCURRENT", "7", {"max_concurrent": 2}, "max_concurrent", 7),
            ("HF_JOBS_MAX_CONCURRENT", "0", {"max_concurrent": 2}, "max_concurrent", 0),
            ("HF_JOBS_MIN_FILE_SIZE", "1048576", {"min_file_size": 5}, "min_file_size", 1048576),
            ("HF_JOBS_PREFER_CLOUD", "1", {"prefer_cloud": False}, "prefer_cloud", True),
            ("HF_JOBS_FLAVOR", "t4-medium", {"flavor": "a10g-large"}, "flavor", "t4-medium"),
            ("HF_JOBS_NAMESPACE", "acme", {"namespace": "alice"}, "namespace", "acme"),
            ("HF_JOBS_POLL_INTERVAL", "2.5", {"poll_interval": 60}, "poll_interval", 2.5),
        ],
    )
    def test_variables_beat_the_table(self, var: str, raw: str, table: dict, field: str, expected: Any) -> None:
        """Each HF_JOBS_* variable overrides its [cloud] key."""
        assert getattr(cloud(table, **{var: raw}), field) == expected

    def test_variables_apply_without_a_table(self) -> None:
        """The variables alone configure the cloud route (how the seed service was configured)."""
        s = cloud(HF_JOBS_ENABLED="0", HF_JOBS_MAX_CONCURRENT="1", HF_JOBS_FLAVOR="l4x1")
        assert (s.enabled, s.max_concurrent, s.flavor) == (False, 1, "l4x1")

    def test_empty_variable_is_ignored(self) -> None:
        """An empty variable (``Environment=HF_JOBS_FLAVOR=``) leaves the table's value."""
        assert cloud({"flavor": "t4-small"}, HF_JOBS_FLAVOR="").flavor == "t4-small"

    def test_hf_endpoint_is_used_when_endpoint_is_unset(self) -> None:
        """$HF_ENDPOINT (the client's own variable) gives the endpoint, without a trailing slash."""
        assert cloud(HF_ENDPOINT="https://hub.example.org/").endpoint == "https://hub.example.org"

    def test_endpoint_key_beats_hf_endpoint(self) -> None:
        """An explicit ``endpoint`` wins over $HF_ENDPOINT."""
        s = cloud({"endpoint": "http://127.0.0.1:9/"}, HF_ENDPOINT="https://hub.example.org")
        assert s.endpoint == "http://127.0.0.1:9"

    def test_hf_token_is_read_but_not_part_of_cloud_settings(self) -> None:
        """The token lives on Settings (hidden from repr), never in the cloud table."""
        s = parse_settings({}, env={"DIARIST_HOST_ID": "h", "HF_TOKEN": "hf_secret"})
        assert s.hf_token == "hf_secret"
        assert "hf_secret" not in repr(s.cloud)


class TestErrors:
    @pytest.mark.parametrize(
        ("table", "key", "words"),
        [
            ({"flavor": "A10G Small"}, "cloud.flavor", "Jobs hardware flavor"),
            ({"flavor": "-gpu"}, "cloud.flavor", "Jobs hardware flavor"),
            ({"flavor": 4}, "cloud.flavor", "expected a string"),
            ({"staging_repo": "diarist-staging"}, "cloud.staging_repo", "namespace/name"),
            ({"staging_repo": "a/b/c"}, "cloud.staging_repo", "namespace/name"),
            ({"enabled": 1}, "cloud.enabled", "expected true or false"),
            ({"fallback": "no"}, "cloud.fallback", "expected true or false"),
            ({"max_concurrent": -1}, "cloud.max_concurrent", "must be an integer >= 0"),
            ({"max_concurrent": "3"}, "cloud.max_concurrent", "expected an integer"),
            ({"max_concurrent": True}, "cloud.max_concurrent", "expected an integer"),
            ({"max_concurrent": 2.7}, "cloud.max_concurrent", "expected an integer"),
            ({"batch_max_files": 0}, "cloud.batch_max_files", "must be an integer >= 1"),
            ({"poll_interval": 0}, "cloud.poll_interval", "must be >= 0.1"),
            ({"scheduling_timeout": 0}, "cloud.scheduling_timeout", "must be >= 1"),
            ({"priority": "cheap"}, "cloud.priority", "'cost', 'balanced', 'speed'"),
            ({"namespace": 42}, "cloud.namespace", "expected a string"),
            ({"endpoint": 80}, "cloud.endpoint", "expected a string"),
        ],
    )
    def test_bad_values_name_the_key_and_the_file(self, table: dict, key: str, words: str) -> None:
        """A bad [cloud] value raises ConfigError naming the dotted key and the file."""
        err = config_error(table)
        assert (err.key, err.file) == (key, FILE)
        assert words in str(err) and f"at key '{key}'" in str(err) and FILE in str(err)

    def test_unknown_key_is_rejected(self) -> None:
        """A typo is refused, and the message lists the allowed keys."""
        err = config_error({"flavr": "t4-small"})
        assert (err.key, err.file) == ("cloud.flavr", FILE)
        assert "unknown key(s) flavr" in str(err) and "flavor" in str(err)

    def test_unknown_key_is_rejected_even_when_env_sets_the_real_one(self) -> None:
        """The table is checked before the environment is merged in."""
        assert config_error({"flavr": "x"}, HF_JOBS_FLAVOR="t4-small").key == "cloud.flavr"

    @pytest.mark.parametrize(
        ("var", "raw", "words"),
        [
            ("HF_JOBS_MAX_CONCURRENT", "lots", "expected a number"),
            ("HF_JOBS_MAX_CONCURRENT", "2.5", "expected a number"),
            ("HF_JOBS_MIN_FILE_SIZE", "10MB", "expected a number"),
            ("HF_JOBS_POLL_INTERVAL", "soon", "expected a number"),
            ("HF_JOBS_ENABLED", "maybe", "expected true or false"),
            ("HF_JOBS_FALLBACK", "nope", "expected true or false"),
            ("HF_JOBS_PREFER_CLOUD", "2", "expected true or false"),
        ],
    )
    def test_bad_variables_name_the_variable_and_the_environment(self, var: str, raw: str, words: str) -> None:
        """A variable that does not parse is reported by its own name, in "environment"."""
        err = config_error({}, **{var: raw})
        assert (err.key, err.file) == (var, "environment")
        assert words in str(err) and repr(raw) in str(err)

    def test_bad_flavor_from_the_environment_is_refused(self) -> None:
        """A malformed HF_JOBS_FLAVOR is refused, naming the variable and the environment (not the file)."""
        error = config_error(HF_JOBS_FLAVOR="A10G Small")
        assert error.key == "HF_JOBS_FLAVOR" and error.file == "environment"

    def test_cloud_must_be_a_table(self) -> None:
        """``cloud = "on"`` is not a table."""
        with pytest.raises(ConfigError) as info:
            parse_settings({"cloud": "on"}, file=FILE, env={})
        assert info.value.key == "cloud" and "expected a table" in str(info.value)
