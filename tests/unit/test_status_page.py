"""The status page's routes: a static shell anyone may load (it holds no data), its summary
behind the /v1 credentials, and the summary's content (lrobridge.core.status)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.core.backoff import Backoff
from lrobridge.core.recent import RecentCompletion, RecentCompletions
from lrobridge.core.status import summary
from lrobridge.storage.sqlite.store import SqliteStore
from tests.support.webhooks import push_body

KEY = "k"


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    settings = dataclasses.replace(
        Settings(), push_auth="none", api_keys=frozenset({KEY}), project="p"
    )
    b = Bridge(settings, store=SqliteStore(":memory:"))
    yield b
    b.close()


@pytest.fixture
def client(bridge: Bridge) -> FlaskClient:
    return bridge.create_app().test_client()


def test_the_page_is_a_static_shell_with_a_strict_content_security_policy(
    client: FlaskClient,
) -> None:
    page = client.get("/status")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert b'<script src="/status/status.js"' in page.data and b"<script>" not in page.data
    script = client.get("/status/status.js")
    assert script.status_code == 200 and b"textContent" in script.data
    assert b"innerHTML" not in script.data  # values never become markup
    assert client.get("/status/other.js").status_code == 404


def test_the_summary_needs_the_same_credentials_as_the_rest_of_v1(client: FlaskClient) -> None:
    assert client.get("/v1/status").status_code == 401
    wrong = client.get("/v1/status", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401  # as for /v1/watches
    ok = client.get("/v1/status", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert ok.get_json()["watches"]["byState"] == {
        "ACTIVE": 0,
        "PUBLISHING": 0,
        "COMPLETED": 0,
        "FAILED": 0,
    }


def test_a_push_appears_among_the_recent_completions(bridge: Bridge, client: FlaskClient) -> None:
    assert client.post("/pubsub/push", json=push_body("operations/seen")).status_code == 204
    body = client.get("/v1/status", headers={"Authorization": f"Bearer {KEY}"}).get_json()
    [completion] = body["recentCompletions"]
    assert completion["operation"] == "operations/seen"
    assert (completion["outcome"], completion["push"]) == ("succeeded", "ack")
    assert completion["traceId"] == ""  # tracing is off


def test_the_summary_lists_the_slowest_and_the_failing_watches_and_the_outbox() -> None:
    store = SqliteStore(":memory:")
    try:
        for i, created in enumerate((300.0, 100.0, 200.0)):
            store.create_watch(
                source="grpc://s:1",
                operation=f"operations/w{i}",
                expire_time=None,
                backoff=Backoff(),
                progress=False,
                now=created,
            )
        [erring, *_] = store.list_watches(after="", limit=1)[0]
        store.record_pending(
            erring.id,
            now=400.0,
            next_poll=500.0,
            attempt=1,
            polled=False,
            error_code=14,
            error_message="unavailable",
        )
        recent = RecentCompletions(keep=2)
        for n in range(3):
            recent.add(
                RecentCompletion(float(n), f"operations/c{n}", "failed", "e", "s", "ack", "")
            )
        result = summary(store, recent.latest(), now=1000.0)
    finally:
        store.close()
    slowest = [w["operation"] for w in result["watches"]["slowest"]]
    assert slowest == ["operations/w1", "operations/w2", "operations/w0"]
    [failing] = result["watches"]["failing"]
    assert failing["lastError"] == {"code": 14, "message": "unavailable"}
    assert result["watches"]["slowest"][0]["ageSeconds"] == 900.0
    assert [c["operation"] for c in result["recentCompletions"]] == [
        "operations/c2",
        "operations/c1",
    ]
    assert result["outbox"] == {"backlog": 0, "oldestAgeSeconds": 0}
