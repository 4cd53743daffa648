"""``Bridge``: the object a user's module creates: callbacks, blueprints, ``watch()``, the app.

```python
from lrobridge import Bridge
bridge = Bridge()
@bridge.on_complete(operation="projects/*/operations/*", outcome="failed")
def on_failed(event): ...
app = bridge.create_app()
```

The bridge is what a user registers things on; it builds nothing itself. Its parts (store,
dispatcher, Watch resource, Operations facade, producer kit, waiters, ...) are made lazily by
:class:`lrobridge.wiring.parts.Parts`, so importing a module that defines a bridge opens no
file and no connection; what runs in the process (drainer and webhook threads, the gRPC server,
close) is :class:`lrobridge.wiring.runtime.Runtime`'s. The properties and ``run`` methods here
delegate to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from lrobridge.config import Settings
from lrobridge.core.access import ApiAuth
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import WatchRecord
from lrobridge.delivery.dispatch import CompletionEvent, Dispatcher, Subscription, add_subscription
from lrobridge.delivery.push import PushEndpoint
from lrobridge.delivery.relay import OutboxRelay
from lrobridge.operations.producer import Producer
from lrobridge.operations.service import OperationsFacade
from lrobridge.operations.waiters import CompletionHub
from lrobridge.ports import OperationsSource, Publisher, Store, TaskQueue
from lrobridge.watching.poller import Watcher
from lrobridge.watching.pubsub_mode import WatchHandler
from lrobridge.watching.resource import WatchService
from lrobridge.watching.tasks_mode import TaskWatchHandler
from lrobridge.webhooks.retry_tasks import RetryTaskHandler
from lrobridge.webhooks.service import WebhookService
from lrobridge.wiring.parts import Parts, WebhookParts
from lrobridge.wiring.runtime import OUTBOX_DRAIN_INTERVAL, Runtime

if TYPE_CHECKING:
    from flask import Blueprint, Flask

F = TypeVar("F", bound=Callable[[CompletionEvent], object])
C = TypeVar("C", bound=Callable[[str], None])
BRIDGE_EXTENSION = "lrobridge.bridge"  # where create_app leaves the bridge (lrobridge serve)


class Bridge:
    """The user's bridge: register callbacks, cancel hooks and blueprints on it, watch
    operations, and make the Flask app or the watcher; one per service process."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        publisher: Publisher | None = None,
        sources: Callable[[str], OperationsSource] | None = None,
        watch_publisher: Publisher | None = None,
        webhooks: WebhookParts | None = None,
        task_queue: TaskQueue | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.subscriptions: list[Subscription] = []
        self.blueprints: list[Blueprint] = []
        self.parts = Parts(
            self.settings,
            subscriptions=self.subscriptions,
            blueprints=self.blueprints,
            store=store,
            publisher=publisher,
            sources=sources,
            watch_publisher=watch_publisher,
            webhooks=webhooks,
            task_queue=task_queue,
            on_create_produced=lambda: self.start_outbox_drainer(),
            drain_outbox=lambda settle: self.drain_outbox(settle=settle),
            start_webhook_worker=lambda: self.runtime.start_webhook_worker(),
        )
        self.runtime = Runtime(self.parts)

    # -- callbacks -------------------------------------------------------------------------

    def on_complete(
        self,
        operation: str | None = None,
        outcome: str | Iterable[str] | None = None,
        *,
        metadata_type: str | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register a callback for completion events; every filter is optional.

        ``operation`` is a resource-name glob (``*`` one segment, ``**`` any), ``outcome`` one
        or several of succeeded, failed, cancelled, expired, not_found (and ``progress`` for
        progress events), ``metadata_type`` a type URL. The callback runs once per
        completion; if it raises, the message is redelivered and it runs again. An ``async def``
        callback is awaited to its end (on the process's callback loop) under the same rules.
        """

        def register(func: F) -> F:
            outcomes = None
            if outcome is not None:
                outcomes = frozenset([outcome] if isinstance(outcome, str) else outcome)
            subscription = Subscription(
                name=name or f"{func.__module__}.{func.__qualname__}",
                callback=func,
                operation=operation,
                outcomes=outcomes,
                metadata_type=metadata_type,
            )
            add_subscription(self.subscriptions, subscription)
            return func

        return register

    def on_cancel(self, hook: C) -> C:
        """Register what CancelOperation of an operation this service produced calls (with the
        operation name); without one, cancelling a produced operation is UNIMPLEMENTED."""
        self.parts.set_cancel_hook(hook)
        return hook

    # -- parts (built by wiring.parts on first use) -------------------------------------------

    @property
    def store(self) -> Store:
        return self.parts.store

    @property
    def dispatcher(self) -> Dispatcher:
        return self.parts.dispatcher

    @property
    def watches(self) -> WatchService:
        return self.parts.watches

    @property
    def hub(self) -> CompletionHub:
        return self.parts.hub

    @property
    def facade(self) -> OperationsFacade:
        """The Operations interface over every tracked operation."""
        return self.parts.facade

    @property
    def producer(self) -> Producer:
        """The producer kit: operations this service creates and completes itself."""
        return self.parts.producer

    @property
    def outbox_relay(self) -> OutboxRelay:
        """Publishes outbox entries of this process (produced operations) and settles them."""
        return self.parts.outbox_relay

    @property
    def api_auth(self) -> ApiAuth:
        return self.parts.api_auth

    @property
    def webhook_runtime(self) -> WebhookParts:
        """Webhook parts: store beside the main store, worker, sink (lrobridge.webhooks)."""
        return self.parts.webhooks

    @property
    def webhooks(self) -> WebhookService:
        """Register webhooks, read their delivery log, retry, replay, drain (README Webhooks)."""
        return self.parts.webhooks.service

    @property
    def publisher(self) -> Publisher:
        return self.parts.publisher

    @property
    def watch_publisher(self) -> Publisher:
        """Publishes watch messages to LROBRIDGE_WATCH_TOPIC (serverless watch mode)."""
        return self.parts.watch_publisher

    def source(self, url: str) -> OperationsSource:
        return self.parts.source(url)

    def push_endpoint(self) -> PushEndpoint:
        return self.parts.push_endpoint()

    def watch_endpoint(self) -> WatchHandler:
        """The handler of POST /pubsub/watch (its Pub/Sub clients are made on first publish)."""
        return self.parts.watch_endpoint()

    @property
    def task_queue(self) -> TaskQueue:
        """Cloud Tasks (tasks watch mode, webhook retries as tasks)."""
        return self.parts.task_queue

    def task_watch_endpoint(self) -> TaskWatchHandler:
        """The handler of POST /tasks/watch (LROBRIDGE_WATCH_MODE=tasks)."""
        return self.parts.task_watch_endpoint()

    def webhook_task_endpoint(self) -> RetryTaskHandler:
        """The handler of POST /tasks/webhook (a webhook retry at its planned time)."""
        return self.parts.webhook_task_endpoint()

    def sweep_watch_tasks(self) -> int:
        """Reschedule watches whose Cloud Task was lost (tasks mode; the scheduled drain)."""
        return self.parts.sweep_watch_tasks()

    def add_blueprint(self, blueprint: Blueprint) -> None:
        """Serve the routes of your own service (e.g. methods that return Operations) in the
        bridge's app, under ``lrobridge dev``, ``lrobridge serve`` and the container alike."""
        self.blueprints.append(blueprint)

    def create_app(self) -> Flask:
        """The Flask app: push endpoint, Watch API, Operations facade, webhooks, health and the
        added blueprints (what `lrobridge serve` or any WSGI server serves)."""
        from lrobridge.adapters.web.app import create_app

        app = create_app(self.parts.app_parts())
        app.extensions[BRIDGE_EXTENSION] = self  # `lrobridge serve --app module:app` finds it
        return app

    def create_watcher(self) -> Watcher:
        return self.parts.create_watcher()

    # -- running (wiring.runtime) ------------------------------------------------------------

    def drain_outbox(self, settle: float = 0.0) -> int:
        """Republish every outbox entry that is due (left by a failure or a dead process);
        ``settle`` seconds at most are spent waiting for Pub/Sub's answers."""
        return self.runtime.drain_outbox(settle=settle)

    def start_outbox_drainer(self, interval: float = OUTBOX_DRAIN_INTERVAL) -> None:
        """Drain the outbox every ``interval`` seconds on a thread of this process."""
        self.runtime.start_outbox_drainer(interval)

    def start_webhook_worker(self) -> bool:
        """Start this process's webhook delivery thread (``background`` mode); True if one runs."""
        return self.runtime.start_webhook_worker()

    def start_grpc(self, port: int | None = None, host: str = "0.0.0.0") -> int:
        """Serve Operations and WatchService over gRPC (``LROBRIDGE_GRPC_PORT`` by default);
        returns the bound port."""
        return self.runtime.start_grpc(port, host)

    # -- Python API ------------------------------------------------------------------------

    def watch(
        self,
        operation: str,
        *,
        source: str,
        deadline: float | None = None,
        backoff: Backoff | None = None,
        progress: bool = False,
    ) -> WatchRecord:
        """Register a watch (or get the existing one for the same source and operation)."""
        record, _ = self.watches.create(
            operation=operation,
            source=source,
            deadline=deadline,
            backoff=backoff,
            progress=progress,
        )
        return record

    def close(self) -> None:
        self.runtime.close()
