"""Webhooks across real processes: ``lrobridge serve`` killed with SIGKILL mid-delivery and
restarted loses nothing, and the ``lrobridge webhooks`` CLI against a live bridge."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.storage.sqlite.webhooks import SqliteWebhookStore
from lrobridge.webhooks.model import DeliveryState
from tests.support.serve import Serve
from tests.support.webhooks import (
    Answer,
    LiveServer,
    Received,
    Receiver,
    free_port,
    push_body,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_a_bridge_killed_during_delivery_loses_nothing_after_a_restart(
    tmp_path: pathlib.Path,
) -> None:
    db = tmp_path / "bridge.db"
    env = {
        **os.environ,
        "LROBRIDGE_STORE": f"sqlite:///{db}",
        "LROBRIDGE_PUSH_AUTH": "none",
        "LROBRIDGE_API_AUTH": "none",
        "LROBRIDGE_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "LROBRIDGE_WEBHOOK_TIMEOUT": "3s",
        "LROBRIDGE_WEBHOOK_DELIVERY": "auto",
        "GOOGLE_CLOUD_PROJECT": "p",
        "LROBRIDGE_LOG_LEVEL": "WARNING",
    }
    env.pop("K_SERVICE", None)
    hold = threading.Event()

    def respond(_: Received) -> Answer:
        hold.wait(20)  # the bridge is killed while it waits for these answers
        return 200, {}, b"ok"

    events = [f"operations/kill-{i}" for i in range(10)]
    with Receiver(respond=respond) as receiver:
        bridge = Serve(env, free_port(), tmp_path / "serve.log")
        try:
            created = requests.post(
                f"{bridge.url}/v1/webhooks", json={"url": receiver.url}, timeout=10
            )
            assert created.status_code == 201, created.text
            receiver.secrets.append(created.json()["secret"])
            for name in events:
                pushed = requests.post(
                    f"{bridge.url}/pubsub/push", json=push_body(name), timeout=10
                )
                assert pushed.status_code == 204  # acked: from here on it must not be lost
            receiver.wait_for(1, answered=False, timeout=10)  # deliveries are in flight
            bridge.kill()
        finally:
            bridge.stop()
        in_flight = {r.webhook_id for r in receiver.received}
        hold.set()
        store = SqliteWebhookStore(str(db))
        try:
            listed, _ = store.list_deliveries(webhook_id=None, state=None, after="", limit=100)
            assert len(listed) == 10
            assert all(d.state is DeliveryState.PENDING for d in listed)
        finally:
            store.close()
        restarted = Serve(env, free_port(), tmp_path / "serve2.log")
        try:

            def states() -> list[str]:
                deliveries = requests.get(
                    f"{restarted.url}/v1/deliveries?pageSize=100", timeout=10
                ).json()["deliveries"]
                return [d["state"] for d in deliveries]

            # The receiver also answered the killed bridge's requests once released, so only
            # the restarted bridge's own records say when it is done.
            wait_until(lambda: states() == ["SUCCEEDED"] * 10, timeout=40)
        finally:
            restarted.stop()
        successes = receiver.successes()
        delivered = {r.payload["data"]["operation"]["name"] for r in successes}
        assert delivered == set(events)
        assert all(r.verified for r in successes)
        # only what was in flight at the kill may arrive twice, with the same webhook-id
        ids = [r.webhook_id for r in successes]
        assert {i for i in ids if ids.count(i) > 1} <= in_flight
        assert in_flight, "the kill happened before any delivery started"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrobridge.cli", "webhooks", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def live_bridge(tmp_path: pathlib.Path) -> Iterator[tuple[str, Bridge]]:
    settings = dataclasses.replace(
        Settings(),
        push_auth="none",
        api_keys=frozenset({"cli-key"}),
        project="p",
        store_url=f"sqlite:///{tmp_path / 'bridge.db'}",
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        webhook_delivery="request",
    )
    bridge = Bridge(settings)
    with LiveServer(bridge.create_app()) as server:
        yield server.url, bridge
    bridge.close()


def test_the_cli_adds_lists_shows_the_log_and_removes_webhooks(
    live_bridge: tuple[str, Bridge],
) -> None:
    url, _ = live_bridge
    env = {**os.environ, "LROBRIDGE_URL": url, "LROBRIDGE_API_KEY": "cli-key"}
    with Receiver(respond=lambda _: (202, {}, b"thanks, got it")) as receiver:
        added = _cli(
            "add",
            receiver.url,
            "--operation",
            "projects/*/operations/*",
            "--outcome",
            "failed",
            "--outcome",
            "cancelled",
            "--description",
            "pager",
            env=env,
        )
        assert added.returncode == 0, added.stderr
        webhook: dict[str, Any] = json.loads(added.stdout)
        assert webhook["secret"].startswith("whsec_") and "shown only now" in added.stderr
        assert webhook["outcomes"] == ["cancelled", "failed"]
        listed = json.loads(_cli("list", "--format", "json", env=env).stdout)["webhooks"]
        assert [w["name"] for w in listed] == [webhook["name"]] and "secret" not in listed[0]
        receiver.secrets.append(webhook["secret"])
        pushed = requests.post(
            f"{url}/pubsub/push", json=push_body("projects/p/operations/o", "failed"), timeout=10
        )
        assert pushed.status_code == 204
        assert [r.verified for r in receiver.received] == [True]
        log = _cli("deliveries", webhook["name"], env=env)
        assert log.returncode == 0, log.stderr
        header, row, attempt = log.stdout.splitlines()
        assert header.split()[:3] == ["NAME", "STATE", "EVENT"]
        assert "SUCCEEDED" in row and "operation.failed" in row
        assert attempt.startswith("  #1 ") and " 202 " in attempt
        assert "thanks, got it" in attempt and attempt.split()[3].endswith("s")
        as_json = json.loads(_cli("deliveries", "--json", "--state", "succeeded", env=env).stdout)
        assert as_json["deliveries"][0]["attempts"][0]["statusCode"] == 202
        delivery = as_json["deliveries"][0]["name"]
        retried = json.loads(_cli("retry", delivery, env=env).stdout)
        assert retried["name"] == delivery and retried["state"] == "PENDING"  # requeued
        assert len(receiver.received) == 2  # and sent before the command returned
        again = json.loads(_cli("deliveries", "--json", env=env).stdout)["deliveries"][0]
        assert again["state"] == "SUCCEEDED" and again["attemptCount"] == 2
        assert (
            json.loads(_cli("replay", webhook["name"], "--since", "1h", env=env).stdout)["requeued"]
            == 0
        )  # nothing is dead
        rotated = json.loads(
            _cli("rotate-secret", webhook["name"], "--overlap", "1h", env=env).stdout
        )
        assert rotated["secret"] != webhook["secret"] and "previousSecretExpireTime" in rotated
        assert json.loads(_cli("enable", webhook["name"], env=env).stdout)["state"] == "ENABLED"
        drained = json.loads(_cli("drain", "--max-time", "5s", env=env).stdout)
        assert drained["attempted"] == 0 and drained["pending"] == 0
        removed = _cli("rm", webhook["name"], env=env)
        assert removed.returncode == 0 and removed.stdout.strip() == f"deleted {webhook['name']}"
        assert json.loads(_cli("list", "--format", "json", env=env).stdout)["webhooks"] == []
        assert _cli("list", env=env).stdout == "no webhooks\n"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The root logger's handlers and level as they were (the CLI's main() sets its own)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_list_command_prints_a_table_by_default_and_the_apis_json_on_request(
    live_bridge: tuple[str, Bridge],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    root_logging: None,
) -> None:
    from lrobridge.cli.main import main

    url, _ = live_bridge
    monkeypatch.setenv("LROBRIDGE_URL", url)
    monkeypatch.setenv("LROBRIDGE_API_KEY", "cli-key")
    auth = {"Authorization": "Bearer cli-key"}
    watch = requests.post(
        f"{url}/v1/watches",
        json={"operation": "projects/p/operations/listed", "source": "grpc://127.0.0.1:1"},
        headers=auth,
        timeout=10,
    ).json()
    assert main(["webhooks", "add", "http://127.0.0.1:9999/hook"]) == 0
    assert requests.post(f"{url}/pubsub/push", data=b"not json", timeout=10).status_code == 200
    commands = {
        ("watches", "list"): ("watches", ["NAME", "STATE", "POLLS"], watch["name"]),
        ("quarantine", "list"): ("messages", ["ID", "RECEIVED", "REASON"], "not JSON"),
        ("webhooks", "list"): ("webhooks", ["NAME", "STATE", "URL"], "http://127.0.0.1:9999/hook"),
        ("webhooks", "deliveries"): ("deliveries", ["NAME", "STATE", "EVENT"], None),
    }
    capsys.readouterr()
    for (group, verb), (key, headers, shown) in commands.items():
        assert main([group, verb]) == 0
        table = capsys.readouterr().out
        lines = table.splitlines()
        if shown is None:
            assert lines == [f"no {key}"]
        else:
            assert lines[0].split()[:3] == headers and shown in table, table
        assert main([group, verb, "--format", "json"]) == 0
        listing = json.loads(capsys.readouterr().out)
        path = group if verb == "list" else verb
        api = requests.get(f"{url}/v1/{path}", headers=auth, timeout=10).json()
        assert listing == api and key in listing


def test_the_cli_reports_refusals_in_one_line_without_a_traceback(
    live_bridge: tuple[str, Bridge],
) -> None:
    url, _ = live_bridge
    env = {**os.environ, "LROBRIDGE_URL": url, "LROBRIDGE_API_KEY": "cli-key"}
    refused = _cli("add", "https://169.254.169.254/latest/meta-data/", env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("lrobridge: error: 400 from ")
    assert "link-local" in refused.stderr and "Traceback" not in refused.stderr
    missing = _cli("rm", "nothere", env=env)
    assert missing.returncode == 1 and "404" in missing.stderr
    bad_flag = _cli("add", "https://x.example/", "--outcome", "exploded", env=env)
    assert bad_flag.returncode == 2 and "invalid choice" in bad_flag.stderr
    wrong_key = _cli("list", env={**env, "LROBRIDGE_API_KEY": "nope"})
    assert wrong_key.returncode == 1 and "401" in wrong_key.stderr
