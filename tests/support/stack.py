"""A whole bridge on loopback for integration tests and benchmarks.

:class:`LocalStack` wires real parts: the Pub/Sub emulator the session started (topic and push
subscription of a project of its own), a :class:`lrobridge.Bridge` on a SQLite file, its Flask
app on a real threaded HTTP server on 127.0.0.1 port 0 (the push endpoint Pub/Sub calls), the
watcher on a thread, and optionally the gRPC facade. Callbacks registered on ``stack.bridge``
before :meth:`LocalStack.start` run when the push arrives; :class:`EventLog` collects events and
lets a test wait for them without sleeping blindly.
"""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from lrobridge import Bridge, CompletionEvent
from lrobridge.adapters.pubsub import PubSubAdmin
from lrobridge.config import Settings


class EventLog:
    """Thread-safe list of callback events with waiting helpers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[CompletionEvent] = []

    def __call__(self, event: CompletionEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[CompletionEvent]], bool], timeout: float = 60.0
    ) -> list[CompletionEvent]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), timeout=timeout):
                raise AssertionError(
                    f"timed out after {timeout}s; events so far: "
                    f"{[(e.name, e.outcome) for e in self.events]}"
                )
            return list(self.events)

    def wait_count(self, n: int, timeout: float = 60.0) -> list[CompletionEvent]:
        return self.wait_for(lambda events: len(events) >= n, timeout)

    def names(self) -> list[str]:
        with self._cond:
            return [e.name for e in self.events]


def stack_settings(project: str, store_path: pathlib.Path, **overrides: Any) -> Settings:
    """Settings for a local stack: no auth (loopback only), quick polls."""
    base = dataclasses.replace(
        Settings(),
        project=project,
        store_url=f"sqlite:///{store_path}",
        push_auth="none",
        api_auth="none",
        long_poll_timeout=2.0,
        rpc_timeout=5.0,
        progress_interval=0.0,
    )
    return dataclasses.replace(base, **overrides)


class LocalStack:
    def __init__(
        self, settings: Settings, *, run_watcher: bool = True, bridge: Bridge | None = None
    ) -> None:
        self.settings = settings
        self.bridge = bridge or Bridge(settings)
        self.run_watcher = run_watcher
        self._server: BaseWSGIServer | None = None
        self._threads: list[threading.Thread] = []
        self.push_url = ""
        self.base_url = ""

    def start(self, *, push: bool = True) -> LocalStack:
        app = self.bridge.create_app()
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        port = self._server.server_port
        self.base_url = f"http://127.0.0.1:{port}"
        self.push_url = f"{self.base_url}/pubsub/push"
        self._spawn(self._server.serve_forever, "http")
        if push:
            with PubSubAdmin() as admin:
                topic = self.settings.topic_path
                admin.ensure_topic(topic)
                admin.ensure_push_subscription(
                    f"projects/{self.settings.project}/subscriptions/{self.settings.subscription}",
                    topic,
                    self.push_url,
                    oidc_service_account=None,
                    audience=None,
                    min_backoff=1.0,
                    max_backoff=2.0,
                )
        if self.run_watcher:
            self._spawn(self.bridge.create_watcher().run, "watcher")
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"stack-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self.run_watcher:
            self.bridge.create_watcher().stop()
        for thread in self._threads:
            thread.join(timeout=30)
        self.bridge.close()

    def __enter__(self) -> LocalStack:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until true (AssertionError after ``timeout``)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)
