"""Settings from the environment (lrobridge.config)."""

from __future__ import annotations

import pathlib
import re

import pytest

from lrobridge.config import ENVIRONMENT, Settings, firestore_database, parse_duration
from lrobridge.errors import ConfigError

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_match_the_documented_contract() -> None:
    s = Settings.from_env({"XDG_STATE_HOME": "/state"})
    assert s.topic == "lro-completed"
    assert s.push_auth == "oidc"
    assert s.payload_format == "binary"
    assert s.grpc_port is None
    assert s.store_url == "sqlite:////state/lrobridge/lrobridge.db"
    assert s.webhook_allow_networks == ()
    assert s.api_auth == "key" and s.api_keys == frozenset()


def test_the_serverless_watch_settings_default_to_the_poller_and_pubsubs_retry_defaults() -> None:
    s = Settings.from_env({"GOOGLE_CLOUD_PROJECT": "p"})
    assert (s.watch_mode, s.watch_topic, s.watch_subscription) == (
        "poller",
        "lro-watch",
        "lro-watch-push",
    )
    assert (s.watch_min_backoff, s.watch_max_backoff, s.watch_max_deliveries) == (10, 600, 100)
    assert s.watch_topic_path == "projects/p/topics/lro-watch"
    env = {"LROBRIDGE_WATCH_MODE": "PubSub", "LROBRIDGE_WATCH_MIN_BACKOFF": "2s"}
    assert Settings.from_env(env).watch_mode == "pubsub"
    assert Settings.from_env(env).watch_min_backoff == 2.0


def test_lrobridge_project_wins_over_google_cloud_project() -> None:
    env = {"GOOGLE_CLOUD_PROJECT": "a", "LROBRIDGE_PROJECT": "b"}
    assert Settings.from_env(env).topic_path == "projects/b/topics/lro-completed"
    assert Settings.from_env({"GOOGLE_CLOUD_PROJECT": "a"}).project == "a"


def test_topic_path_without_a_project_says_which_variable_to_set() -> None:
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        _ = Settings.from_env({}).topic_path


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "http"}, "PORT='http' is not an integer"),
        ({"PORT": "70000"}, "not a port number"),
        (
            {"LROBRIDGE_PUSH_AUTH": "maybe"},
            "LROBRIDGE_PUSH_AUTH='maybe' is not one of: oidc, cloudrun, none",
        ),
        ({"LROBRIDGE_WATCH_MODE": "cron"}, "LROBRIDGE_WATCH_MODE='cron' is not one of"),
        ({"LROBRIDGE_WATCH_MIN_BACKOFF": "0s"}, "must be 1s-600s"),
        ({"LROBRIDGE_WATCH_MAX_BACKOFF": "5s"}, "between LROBRIDGE_WATCH_MIN_BACKOFF (10s)"),
        ({"LROBRIDGE_WATCH_MAX_DELIVERIES": "200"}, "outside 5-100"),
        ({"LROBRIDGE_PAYLOAD_FORMAT": "xml"}, "LROBRIDGE_PAYLOAD_FORMAT"),
        ({"LROBRIDGE_LONG_POLL_TIMEOUT": "10ms"}, "must be between 1s and 600s"),
        ({"LROBRIDGE_WAIT_MAX": "1e308"}, "must be between 1s and 3600s"),
        ({"LROBRIDGE_RPC_TIMEOUT": "99999d"}, "must be between 0.1s and 600s"),
        ({"LROBRIDGE_API_KEY": "k€y"}, "printable ASCII"),
        ({"LROBRIDGE_CREDENTIAL_HOSTS": "bad host!"}, "LROBRIDGE_CREDENTIAL_HOSTS"),
        ({"LROBRIDGE_TOPIC": "x"}, "not a Pub/Sub resource id"),
        ({"LROBRIDGE_TOPIC": "goog-topic"}, "not starting with goog"),
        ({"LROBRIDGE_STORE": "postgres://x"}, "LROBRIDGE_STORE='postgres://x' is not a store URL"),
        ({"LROBRIDGE_STORE": "firestore:///db"}, "'/db' is not a Firestore database id"),
        ({"LROBRIDGE_STORE": "firestore://My-DB"}, "4-63 lowercase letters, digits or hyphens"),
        ({"LROBRIDGE_STORE": "firestore://db"}, "LROBRIDGE_STORE='firestore://db'"),
        ({"LROBRIDGE_STORE": "firestore://1abc"}, "starting with a letter"),
        ({"LROBRIDGE_STORE": "firestore://abcd-"}, "ending with a letter or digit"),
        ({"LROBRIDGE_STORE": "firestore://" + "a" * 64}, "not a Firestore database id"),
        (
            {"LROBRIDGE_STORE": "firestore://abcdef12-3456-7890-abcd-ef1234567890"},
            "not a Firestore database id",
        ),
        ({"LROBRIDGE_WEBHOOK_ALLOW_NETWORKS": "10.0.0.0/8,nope"}, "'nope' is not a CIDR"),
        ({"LROBRIDGE_WATCHER_CONCURRENCY": "0"}, "must be at least 1"),
        ({"LROBRIDGE_RPC_TIMEOUT": "0s"}, "must be between 0.1s and 600s"),
        ({"LROBRIDGE_LONG_POLL_TIMEOUT": "soon"}, "is not a duration"),
        ({"LROBRIDGE_LOG_LEVEL": "LOUD"}, "LROBRIDGE_LOG_LEVEL"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("firestore://", "(default)"),
        ("firestore://(default)", "(default)"),
        ("firestore://lrobridge", "lrobridge"),
        ("firestore://a1-b", "a1-b"),
        ("firestore://" + "a" * 63, "a" * 63),
    ],
)
def test_firestore_store_urls_name_a_database_or_the_default_one(url: str, database: str) -> None:
    assert Settings.from_env({"LROBRIDGE_STORE": url}).store_url == url
    assert firestore_database(url) == database


def test_oidc_push_auth_without_a_service_account_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="LROBRIDGE_PUSH_SERVICE_ACCOUNT"):
        Settings.from_env({}).check_push_auth()
    Settings.from_env({"LROBRIDGE_PUSH_AUTH": "none"}).check_push_auth()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("3600s", 3600.0),
    ],
)
def test_durations_accept_human_and_proto_json_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "-5s", "1h 30m", "inf"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_every_environment_variable_is_documented_in_the_readme_and_vice_versa() -> None:
    text = README.read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", text, flags=re.M))
    assert documented == set(ENVIRONMENT)


def test_tasks_settings_parse_queues_per_source_host_and_default_the_audience_to_the_url() -> None:
    settings = Settings.from_env(
        {
            "LROBRIDGE_WATCH_MODE": "tasks",
            "GOOGLE_CLOUD_PROJECT": "p",
            "LROBRIDGE_TASKS_LOCATION": "europe-west1",
            "LROBRIDGE_TASKS_SOURCE_QUEUES": "Ops.Example.com=lro-ops, slow.test=lro-slow",
            "LROBRIDGE_TASKS_URL": "https://bridge.run.app/",
            "LROBRIDGE_TASKS_SERVICE_ACCOUNT": "tasks@p.iam.gserviceaccount.com",
        }
    )
    assert settings.watch_mode == "tasks"
    assert settings.tasks_source_queues == (
        ("ops.example.com", "lro-ops"),
        ("slow.test", "lro-slow"),
    )
    assert settings.tasks_token_audience == "https://bridge.run.app"
    assert settings.queue_path("lro-ops") == "projects/p/locations/europe-west1/queues/lro-ops"
    settings.check_tasks()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LROBRIDGE_TASKS_QUEUE": "lro_watch"}, "not a Cloud Tasks queue id"),
        ({"LROBRIDGE_TASKS_SOURCE_QUEUES": "host-without-queue"}, "is not host=queue"),
        ({"LROBRIDGE_TASKS_SWEEP_AFTER": "10s"}, "LROBRIDGE_TASKS_SWEEP_AFTER"),
    ],
)
def test_bad_tasks_settings_are_refused_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "LROBRIDGE_TASKS_LOCATION"),
        ({"LROBRIDGE_TASKS_LOCATION": "l"}, "LROBRIDGE_TASKS_URL"),
        (
            {"LROBRIDGE_TASKS_LOCATION": "l", "LROBRIDGE_TASKS_URL": "https://b"},
            "LROBRIDGE_TASKS_SERVICE_ACCOUNT",
        ),
    ],
)
def test_tasks_mode_fails_early_without_what_it_needs(env: dict[str, str], message: str) -> None:
    settings = Settings.from_env({"GOOGLE_CLOUD_PROJECT": "p", **env})
    with pytest.raises(ConfigError, match=message):
        settings.check_tasks()
