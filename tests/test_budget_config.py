"""Budget configuration: the new ``[cloud]`` keys, their ``HF_JOBS_*`` overrides, and ``[users.<name>]`` tables."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from diarist.daemon.config import CloudSettings, Settings, UserSettings, parse_settings
from diarist.handlers.errors import ConfigError

FILE = "test.toml"


def parse(data: dict[str, Any], **env: str) -> Settings:
    return parse_settings(data, file=FILE, env={"DIARIST_HOST_ID": "test-host", **env})


def cloud(table: dict[str, Any] | None = None, **env: str) -> CloudSettings:
    return parse({"cloud": table} if table is not None else {}, **env).cloud


class TestDefaults:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("daily_budget", None),
            ("monthly_budget", None),
            ("timezone", "UTC"),
            ("startup_seconds", 120.0),
            ("min_job_timeout", 600),
            ("price_ttl", 3600.0),
        ],
    )
    def test_default(self, name: str, expected: Any):
        """Without a [cloud] table every budget key has its documented default (no caps)."""
        assert getattr(cloud(), name) == expected

    def test_no_users(self):
        assert parse({}).users == {}


class TestFileValues:
    @pytest.mark.parametrize(
        ("name", "value", "expected"),
        [
            ("daily_budget", 5, Decimal("5")),
            ("daily_budget", 2.5, Decimal("2.5")),
            ("daily_budget", 0, Decimal("0")),
            ("monthly_budget", 49.99, Decimal("49.99")),
            ("timezone", "Europe/Berlin", "Europe/Berlin"),
            ("startup_seconds", 45, 45.0),
            ("min_job_timeout", 60, 60),
            ("price_ttl", 0, 0.0),
        ],
    )
    def test_value(self, name: str, value: Any, expected: Any):
        got = getattr(cloud({name: value}), name)
        assert got == expected
        assert type(got) is type(expected)


class TestEnvironment:
    @pytest.mark.parametrize(
        ("var", "name", "raw", "expected"),
        [
            ("HF_JOBS_DAILY_BUDGET", "daily_budget", "12.5", Decimal("12.5")),
            ("HF_JOBS_DAILY_BUDGET", "daily_budget", "0", Decimal("0")),
            ("HF_JOBS_MONTHLY_BUDGET", "monthly_budget", "100", Decimal("100")),
            ("HF_JOBS_MONTHLY_BUDGET", "monthly_budget", "0.10", Decimal("0.1")),
        ],
    )
    def test_env_overrides_file(self, var: str, name: str, raw: str, expected: Decimal):
        got = getattr(cloud({name: 999}, **{var: raw}), name)
        assert isinstance(got, Decimal)
        assert got == expected

    def test_empty_env_is_ignored(self):
        assert cloud({"daily_budget": 3}, HF_JOBS_DAILY_BUDGET="").daily_budget == Decimal("3")

    @pytest.mark.parametrize("raw", ["lots", "-1"])
    def test_bad_env_names_the_variable(self, raw: str):
        with pytest.raises(ConfigError) as e:
            cloud(HF_JOBS_MONTHLY_BUDGET=raw)
        assert e.value.key == "HF_JOBS_MONTHLY_BUDGET"
        assert e.value.file == "environment"


class TestRefused:
    @pytest.mark.parametrize(
        ("table", "key"),
        [
            ({"daily_budget": -1}, "cloud.daily_budget"),
            ({"monthly_budget": -0.01}, "cloud.monthly_budget"),
            ({"daily_budget": "5"}, "cloud.daily_budget"),
            ({"daily_budget": True}, "cloud.daily_budget"),
            ({"timezone": "Mars/Olympus"}, "cloud.timezone"),
            ({"timezone": ""}, "cloud.timezone"),
            ({"min_job_timeout": 59}, "cloud.min_job_timeout"),
            ({"min_job_timeout": 0}, "cloud.min_job_timeout"),
            ({"min_job_timeout": 600.5}, "cloud.min_job_timeout"),
            ({"startup_seconds": -1}, "cloud.startup_seconds"),
            ({"price_ttl": -5}, "cloud.price_ttl"),
        ],
    )
    def test_bad_value_names_the_key(self, table: dict[str, Any], key: str):
        with pytest.raises(ConfigError) as e:
            cloud(table)
        assert e.value.key == key
        assert e.value.file == FILE
        assert key in str(e.value)


class TestUsers:
    def test_user_table(self):
        users = parse({"users": {"bob": {"prefer_cloud": True, "priority_processing": True, "cost_limit": 20.5}}}).users
        assert users == {"bob": UserSettings(prefer_cloud=True, priority_processing=True, cost_limit=Decimal("20.5"))}
        assert isinstance(users["bob"].cost_limit, Decimal)

    def test_user_defaults(self):
        assert parse({"users": {"bob": {}}}).users["bob"] == UserSettings(None, False, None)

    def test_several_users(self):
        users = parse({"users": {"bob": {"cost_limit": 0}, "sales-team": {"prefer_cloud": False}}}).users
        assert users["bob"].cost_limit == Decimal("0")
        assert users["sales-team"].prefer_cloud is False

    @pytest.mark.parametrize(
        ("users", "key"),
        [
            ({"bob": {"budget": 5}}, "users.bob.budget"),
            ({"bob": {"cost_limit": -1}}, "users.bob.cost_limit"),
            ({"bob": {"cost_limit": "10"}}, "users.bob.cost_limit"),
            ({"bob": {"prefer_cloud": "yes"}}, "users.bob.prefer_cloud"),
            ({"bob": "x"}, "users.bob"),
            ("x", "users"),
            (["bob"], "users"),
        ],
    )
    def test_refused(self, users: Any, key: str):
        with pytest.raises(ConfigError) as e:
            parse({"users": users})
        assert e.value.key == key
        assert e.value.file == FILE
