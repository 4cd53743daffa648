"""Webhook and API-token settings (lrobridge.config) and the delivery mode they select."""

from __future__ import annotations

import re

import pytest

from lrobridge.config import Settings
from lrobridge.errors import ConfigError
from lrobridge.wiring.parts import delivery_mode, store_path


def test_webhook_defaults_follow_the_documented_contract() -> None:
    s = Settings.from_env({})
    assert s.webhook_timeout == 15.0
    assert s.webhook_concurrency == 16
    assert s.webhook_delivery == "auto"
    assert s.api_service_accounts == frozenset() and s.api_audience == ""


def test_auto_delivery_means_request_mode_on_cloud_run_and_a_thread_elsewhere() -> None:
    assert delivery_mode(Settings.from_env({})) == "background"
    assert delivery_mode(Settings.from_env({"K_SERVICE": "lrobridge"})) == "request"
    env = {"K_SERVICE": "lrobridge", "LROBRIDGE_WEBHOOK_DELIVERY": "background"}
    assert delivery_mode(Settings.from_env(env)) == "background"
    assert delivery_mode(Settings.from_env({"LROBRIDGE_WEBHOOK_DELIVERY": "request"})) == "request"


def test_service_accounts_are_a_lower_cased_comma_separated_list() -> None:
    env = {"LROBRIDGE_API_SERVICE_ACCOUNTS": " Sched@p.iam.gserviceaccount.com, ,b@p.iam.x "}
    assert Settings.from_env(env).api_service_accounts == frozenset(
        {"sched@p.iam.gserviceaccount.com", "b@p.iam.x"}
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LROBRIDGE_WEBHOOK_TIMEOUT": "0s"},
            "LROBRIDGE_WEBHOOK_TIMEOUT='0s' must be between 0.1s and 600s",
        ),
        ({"LROBRIDGE_WEBHOOK_CONCURRENCY": "0"}, "LROBRIDGE_WEBHOOK_CONCURRENCY='0' must be"),
        ({"LROBRIDGE_WEBHOOK_DELIVERY": "later"}, "auto, background, request"),
        ({"LROBRIDGE_API_SERVICE_ACCOUNTS": "scheduler"}, "not a service account email"),
    ],
)
def test_bad_webhook_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_the_webhook_store_uses_the_main_stores_sqlite_file() -> None:
    assert store_path("sqlite:///var/lrobridge.db") == "var/lrobridge.db"
    assert store_path("sqlite:////abs/path.db") == "/abs/path.db"
    assert store_path("sqlite://:memory:") == ":memory:"
