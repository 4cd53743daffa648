"""The status page in a real headless Chromium over a real bridge: it asks for the API key,
shows the watches and a completion with its trace, the webhook's health and a dead letter, and
replays the dead letter with its button. Screenshots are kept in ``test-artifacts/``."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from collections.abc import Iterator

import pytest
import requests

from lrobridge.config import parse_networks
from tests.support.browser import Browser, chromium_path
from tests.support.operations_servers import FakeOperations
from tests.support.stack import EventLog, LocalStack, stack_settings
from tests.support.telemetry import Recorded, recorded  # noqa: F401  (fixture)
from tests.support.webhooks import Answer, Received, Receiver

pytestmark = pytest.mark.integration

KEY = "status-page-key"
ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def browser() -> Iterator[Browser]:
    binary = chromium_path()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs Debian's package")
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    with Browser(binary) as b:
        yield b


@pytest.fixture
def stack(
    pubsub_project: str,
    tmp_path: pathlib.Path,
    events: EventLog,
    recorded: Recorded,  # noqa: F811  (tracing on: completions show their trace)
) -> Iterator[LocalStack]:
    settings = stack_settings(
        pubsub_project,
        tmp_path / "bridge.db",
        api_auth="key",
        api_keys=frozenset({KEY}),
        webhook_allow_networks=parse_networks("127.0.0.0/8", "test"),
        webhook_delivery="background",
    )
    stack = LocalStack(settings)
    stack.bridge.on_complete(name="record")(events)
    with stack:
        stack.bridge.start_webhook_worker()
        yield stack


class GoneOnce:
    """Answers 410 the first time (the bridge disables the webhook and dead-letters the
    delivery), 200 afterwards."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, received: Received) -> Answer:
        self.calls += 1
        return (410, {}, b"gone") if self.calls == 1 else (200, {}, b"ok")


def text(browser: Browser, element: str) -> str:
    return str(browser.evaluate(f"document.getElementById({json.dumps(element)}).innerText"))


def keep(path: pathlib.Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def test_the_status_page_shows_a_watch_its_completion_and_replays_a_dead_letter(
    stack: LocalStack,
    backend: FakeOperations,
    grpc_url: str,
    events: EventLog,
    browser: Browser,
    tmp_path: pathlib.Path,
    recorded: Recorded,  # noqa: F811
) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with Receiver(respond=GoneOnce()) as receiver:
        created = requests.post(
            f"{stack.base_url}/v1/webhooks",
            json={"url": receiver.url, "description": "status page test"},
            headers=auth,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        webhook = created.json()["name"]
        backend.add("projects/p/operations/still-running")  # never completes
        stack.bridge.watch("projects/p/operations/still-running", source=grpc_url)
        backend.add("projects/p/operations/done-soon", done_after=0.3)
        stack.bridge.watch("projects/p/operations/done-soon", source=grpc_url)
        events.wait_count(1)
        receiver.wait_for(1)  # answered 410: dead letter, webhook disabled

        # The page holds no data: without the key it asks for one; /v1 still refuses.
        browser.navigate(f"{stack.base_url}/status")
        browser.wait_for("!document.getElementById('login').hidden")
        assert "credential" in text(browser, "login")
        browser.evaluate(
            f"document.getElementById('key').value = {json.dumps(KEY)};"
            "document.getElementById('login').requestSubmit(); true"
        )
        browser.wait_for("document.getElementById('dead').querySelector('button') !== null")
        assert "projects/p/operations/still-running" in text(browser, "slowest")
        completions = text(browser, "completions")
        assert "projects/p/operations/done-soon" in completions and "succeeded" in completions
        [trace_id] = re.findall(r"\b[0-9a-f]{32}\b", completions)
        assert any(f"{s.context.trace_id:032x}" == trace_id for s in recorded.finished())
        assert "disabled" in text(browser, "webhooks")
        assert "done-soon" in text(browser, "dead")
        keep(browser.screenshot(tmp_path / "status-page-dead-letter.png"))

        enabled = requests.post(f"{stack.base_url}/v1/{webhook}:enable", headers=auth, timeout=10)
        assert enabled.status_code == 200, enabled.text
        browser.evaluate("document.getElementById('dead').querySelector('button').click(); true")
        receiver.wait_for(2)
        assert [status for _, status in receiver.answered] == [410, 200]
        browser.wait_for("document.getElementById('dead').innerText.includes('no dead letter')")
        assert "healthy" in text(browser, "webhooks")
        assert "SUCCEEDED" in text(browser, "deliveries")
        keep(browser.screenshot(tmp_path / "status-page-replayed.png"))
    assert requests.get(f"{stack.base_url}/v1/status", timeout=10).status_code == 401
