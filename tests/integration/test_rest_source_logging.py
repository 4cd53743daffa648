"""An unreachable REST source costs one log line per failed poll, not one per connection retry."""

from __future__ import annotations

import logging
import time

import pytest

from lrobridge.adapters.sources import open_source
from lrobridge.cli.emulator import free_port
from lrobridge.config import Settings
from lrobridge.core.backoff import Backoff
from lrobridge.errors import Unavailable
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.watching.poller import Watcher

NAME = "projects/p/operations/op1"


class _NoPublisher:
    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> object:
        raise AssertionError("nothing completes in this test")

    def close(self) -> None:
        pass


def test_a_failed_poll_of_a_closed_port_logs_exactly_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    source = open_source(url, credential_hosts=())
    store = SqliteStore(":memory:")
    watcher = Watcher(
        store=store,
        sources=lambda _: source,
        publisher=_NoPublisher(),  # type: ignore[arg-type]
        settings=Settings(rpc_timeout=5.0),
    )
    watch, _ = store.create_watch(
        source=url,
        operation=NAME,
        expire_time=None,
        backoff=Backoff(1.0, 2.0, 10.0),
        progress=False,
        now=time.time(),
    )
    try:
        with caplog.at_level(logging.DEBUG):
            watcher.poll(watch)
        after = store.get_watch(watch.id)
    finally:
        source.close()
        store.close()
    assert after is not None and "Max retries exceeded" in after.last_error_message
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["lrobridge.watching.poller"], [
        r.getMessage() for r in warnings
    ]
    assert "retrying" in warnings[0].getMessage()


def test_connection_retries_still_happen_and_the_error_says_what_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    source = open_source(url, credential_hosts=())
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(Unavailable) as raised:
            source.get_operation(NAME, timeout=5.0)
    finally:
        source.close()
    assert "Max retries exceeded" in raised.value.message  # urllib3 tried more than once
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
