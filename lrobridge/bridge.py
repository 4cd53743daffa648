"""``Bridge``: the object a user's module creates; it wires configuration to the parts.

```python
from lrobridge import Bridge
bridge = Bridge()
@bridge.on_complete(operation="projects/*/operations/*", outcome="failed")
def on_failed(event): ...
app = bridge.create_app()
```

Parts are created lazily, so importing a module that defines a bridge opens no file and no
connection; the store opens when the app or watcher is created, the Pub/Sub client when the
first message is published.

Parts: ``store``, ``dispatcher`` (callbacks), ``watches`` (Watch resource), ``facade``
(Operations interface), ``producer`` (operations this service creates), ``hub`` (WaitOperation
waiters), ``create_watcher()``, ``create_app()`` (Flask), ``start_grpc()``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

from lrobridge.config import Settings
from lrobridge.core.access import ApiAuth
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import WatchRecord
from lrobridge.delivery.dispatch import CompletionEvent, Dispatcher, Subscription, add_subscription
from lrobridge.delivery.push import PushEndpoint, TokenVerifier
from lrobridge.delivery.relay import OutboxRelay
from lrobridge.operations.producer import Producer
from lrobridge.operations.service import OperationsFacade
from lrobridge.operations.waiters import CompletionHub
from lrobridge.ports import AsyncOperationsSource, OperationsSource, Publisher
from lrobridge.storage import Store, open_store
from lrobridge.watching.poller import Watcher
from lrobridge.watching.pubsub_mode import PubSubWatchScheduler, RedeliveryPolicy, WatchHandler
from lrobridge.watching.resource import WatchService
from lrobridge.webhooks.service import WebhookService
from lrobridge.wiring.webhooks import WebhookRuntime

if TYPE_CHECKING:
    from flask import Blueprint, Flask

    from lrobridge.adapters.grpc_server import GrpcServer

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[[CompletionEvent], object])
# How often a process without a watcher republishes outbox entries that failed to publish.
OUTBOX_DRAIN_INTERVAL = 5.0
C = TypeVar("C", bound=Callable[[str], None])


class Bridge:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        publisher: Publisher | None = None,
        sources: Callable[[str], OperationsSource] | None = None,
        watch_publisher: Publisher | None = None,
        webhooks: WebhookRuntime | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._store = store
        self._publisher = publisher
        self._watch_publisher = watch_publisher
        self._watch_handler: WatchHandler | None = None
        self._sources = sources
        self._registry: object | None = None
        self._lock = threading.RLock()
        self._dispatcher: Dispatcher | None = None
        self._watch_service: WatchService | None = None
        self._watcher: Watcher | None = None
        self._hub: CompletionHub | None = None
        self._facade: OperationsFacade | None = None
        self._producer: Producer | None = None
        self._grpc: GrpcServer | None = None
        self._webhooks = webhooks
        self.subscriptions: list[Subscription] = []
        self.blueprints: list[Blueprint] = []
        self._cancel_hook: Callable[[str], None] | None = None
        self._relay: OutboxRelay | None = None
        self._drainer: threading.Thread | None = None
        self._drainer_pid = 0
        self._closing = threading.Event()

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
        completion; if it raises, the message is redelivered and it runs again.
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
        self._cancel_hook = hook
        if self._producer is not None:
            self._producer.on_cancel(hook)
        return hook

    # -- parts -----------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings.store_url, project=self.settings.project)
            return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = Dispatcher(self.store)
                self._dispatcher.subscriptions = self.subscriptions
                self._dispatcher.sinks.append(self.webhook_runtime.sink)
            return self._dispatcher

    @property
    def watches(self) -> WatchService:
        with self._lock:
            if self._watch_service is None:
                scheduler = None
                if self.settings.watch_mode == "pubsub":
                    scheduler = PubSubWatchScheduler(
                        lambda: self.watch_publisher, operations=self.store
                    )
                self._watch_service = WatchService(
                    self.store,
                    on_created=self._wake_watcher,
                    scheduler=scheduler,
                    credential_hosts=self.settings.credential_hosts,
                )
            return self._watch_service

    @property
    def hub(self) -> CompletionHub:
        with self._lock:
            if self._hub is None:
                self._hub = CompletionHub(self.store)
            return self._hub

    @property
    def facade(self) -> OperationsFacade:
        """The Operations interface over every tracked operation."""
        with self._lock:
            if self._facade is None:
                self._facade = OperationsFacade(
                    self.store,
                    sources=self.source,
                    hub=self.hub,
                    rpc_timeout=self.settings.rpc_timeout,
                    produced_cancel=lambda name: self.producer.request_cancel(name),
                    on_poll_soon=self._wake_watcher,
                    max_wait=self.settings.wait_max,
                )
            return self._facade

    @property
    def producer(self) -> Producer:
        """The producer kit: operations this service creates and completes itself."""
        with self._lock:
            if self._producer is None:
                self._producer = Producer(
                    self.store,
                    self.outbox_relay,
                    self.hub,
                    source=self.settings.bridge_url or "lrobridge://local",
                    payload_format=self.settings.payload_format,
                    progress_interval=self.settings.progress_interval,
                    on_create=self.start_outbox_drainer,
                )
                if self._cancel_hook is not None:
                    self._producer.on_cancel(self._cancel_hook)
            return self._producer

    @property
    def outbox_relay(self) -> OutboxRelay:
        """Publishes outbox entries of this process (produced operations) and settles them."""
        with self._lock:
            if self._relay is None:
                self._relay = OutboxRelay(self.store, self._lazy_publisher())
            return self._relay

    def drain_outbox(self, settle: float = 0.0) -> int:
        """Republish every outbox entry that is due (left by a failure or a dead process);
        ``settle`` seconds at most are spent waiting for Pub/Sub's answers."""
        return self.outbox_relay.drain(settle=settle)

    def start_outbox_drainer(self, interval: float = OUTBOX_DRAIN_INTERVAL) -> None:
        """Drain the outbox every ``interval`` seconds on a thread of this process (one per
        process; a watcher drains it already)."""
        with self._lock:
            alive = self._drainer is not None and self._drainer.is_alive()
            if alive and self._drainer_pid == os.getpid():
                return
            self._drainer_pid = os.getpid()
            self._drainer = threading.Thread(
                target=self._drain_loop, args=(interval,), name="lrobridge-outbox", daemon=True
            )
            self._drainer.start()

    def _drain_loop(self, interval: float) -> None:
        while not self._closing.wait(interval):
            try:
                self.drain_outbox()
            except Exception:  # Pub/Sub or the store is down: the next round tries again
                log.warning("draining the outbox failed", exc_info=True)

    def _lazy_publisher(self) -> Publisher:
        return _LazyPublisher(lambda: self.publisher)

    @property
    def api_auth(self) -> ApiAuth:
        if not self.settings.api_service_accounts:
            return ApiAuth(self.settings)
        from lrobridge.adapters.id_tokens import ApiTokenVerifier

        verifier = ApiTokenVerifier(
            service_accounts=self.settings.api_service_accounts,
            audience=self.settings.api_audience,
            certs_url=self.settings.push_certs_url,
            # Behind Cloud Run's IAM check, ID tokens arrive with their signature removed.
            platform_verified=self.settings.push_auth == "cloudrun",
        )
        return ApiAuth(self.settings, id_tokens=verifier)

    @property
    def webhook_runtime(self) -> WebhookRuntime:
        """Webhook wiring: store beside the main store, worker, sink (lrobridge.webhooks)."""
        with self._lock:
            if self._webhooks is None:
                path = getattr(self._store, "path", None)
                self._webhooks = WebhookRuntime(
                    self.settings, path=path if isinstance(path, str) else None
                )
            return self._webhooks

    @property
    def webhooks(self) -> WebhookService:
        """Register webhooks, read their delivery log, retry, replay, drain (README Webhooks)."""
        return self.webhook_runtime.service

    @property
    def publisher(self) -> Publisher:
        with self._lock:
            if self._publisher is None:
                from lrobridge.adapters.pubsub import PubSubPublisher

                self._publisher = PubSubPublisher(self.settings.topic_path)
            return self._publisher

    @property
    def watch_publisher(self) -> Publisher:
        """Publishes watch messages to LROBRIDGE_WATCH_TOPIC (serverless watch mode)."""
        with self._lock:
            if self._watch_publisher is None:
                from lrobridge.adapters.pubsub import PubSubPublisher

                self._watch_publisher = PubSubPublisher(self.settings.watch_topic_path)
            return self._watch_publisher

    def source(self, url: str) -> OperationsSource:
        with self._lock:
            if self._sources is None:
                from lrobridge.adapters.sources import SourceRegistry, open_source

                hosts = self.settings.credential_hosts
                registry = SourceRegistry(lambda url: open_source(url, credential_hosts=hosts))
                self._registry = registry
                self._sources = registry.get
        return self._sources(url)

    def _push_verifier(self) -> TokenVerifier | None:
        if self.settings.push_auth == "none":
            return None
        self.settings.check_push_auth()
        from lrobridge.adapters.push_auth import PushTokenVerifier

        return PushTokenVerifier(
            audience=self.settings.push_audience,
            service_account=self.settings.push_service_account,
            certs_url=self.settings.push_certs_url,
            platform_verified=self.settings.push_auth == "cloudrun",
        )

    def push_endpoint(self) -> PushEndpoint:
        return PushEndpoint(
            dispatcher=self.dispatcher,
            ledger=self.store,
            verifier=self._push_verifier(),
            on_event=self.hub.notify,
        )

    def watch_endpoint(self) -> WatchHandler:
        """The handler of POST /pubsub/watch (its Pub/Sub clients are made on first publish)."""
        with self._lock:
            if self._watch_handler is None:
                settings = self.settings
                self._watch_handler = WatchHandler(
                    sources=self.source,
                    # Lazy: a request is authenticated before any Pub/Sub client is made.
                    completions=self._lazy_publisher(),
                    watches=_LazyPublisher(lambda: self.watch_publisher),
                    ledger=self.store,
                    verifier=self._push_verifier(),
                    operations=self.store,
                    on_completion=self.hub.notify,
                    policy=RedeliveryPolicy(
                        min_backoff=settings.watch_min_backoff,
                        max_deliveries=settings.watch_max_deliveries,
                    ),
                    payload_format=settings.payload_format,
                    rpc_timeout=settings.rpc_timeout,
                )
            return self._watch_handler

    def add_blueprint(self, blueprint: Blueprint) -> None:
        """Serve the routes of your own service (e.g. methods that return Operations) in the
        bridge's app, under ``lrobridge dev``, ``lrobridge serve`` and the container alike."""
        self.blueprints.append(blueprint)

    def create_app(self) -> Flask:
        """The Flask app: push endpoint, Watch API, Operations facade, webhooks, health and the
        added blueprints (the gunicorn target)."""
        from lrobridge.adapters.web.app import create_app

        return create_app(self)

    def create_watcher(self) -> Watcher:
        with self._lock:
            if self._watcher is None:
                from lrobridge.adapters.sources import open_async_source

                settings = self.settings

                def async_source(url: str) -> AsyncOperationsSource:
                    return open_async_source(
                        url,
                        credential_hosts=settings.credential_hosts,
                        max_concurrency=settings.watcher_concurrency,
                    )

                self._watcher = Watcher(
                    store=self.store,
                    sources=self.source,
                    publisher=self._lazy_publisher(),
                    settings=settings,
                    on_completion=self.hub.notify,
                    async_sources=async_source,
                )
            return self._watcher

    def start_grpc(self, port: int | None = None, host: str = "0.0.0.0") -> int:
        """Serve Operations and WatchService over gRPC (``LROBRIDGE_GRPC_PORT`` by default);
        returns the bound port."""
        from lrobridge.adapters.grpc_server import GrpcServer

        chosen = self.settings.grpc_port if port is None else port
        if chosen is None:
            raise ValueError("no gRPC port: set LROBRIDGE_GRPC_PORT or pass port=")
        with self._lock:
            if self._grpc is None:
                self._grpc = GrpcServer(
                    facade=self.facade,
                    watches=self.watches,
                    auth=self.api_auth,
                    host=host,
                    port=chosen,
                )
                self._grpc.start()
            assert self._grpc.port is not None
            return self._grpc.port

    def _wake_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.wake()

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
        self._closing.set()
        with self._lock:
            if self._grpc is not None:
                self._grpc.stop()
            if self._watcher is not None:
                self._watcher.stop()
            if self._webhooks is not None:
                self._webhooks.close()
            if self._hub is not None:
                self._hub.close()
            for publisher in (self._publisher, self._watch_publisher):
                if publisher is not None:
                    publisher.close()
            close_registry = getattr(self._registry, "close", None)
            if close_registry is not None:
                close_registry()
            if self._store is not None:
                self._store.close()


class _LazyPublisher:
    """A Publisher that creates the Pub/Sub client on the first publish, not before."""

    def __init__(self, factory: Callable[[], Publisher]) -> None:
        self._factory = factory

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        return self._factory().publish(data, attributes, ordering_key)

    def close(self) -> None:
        """The Bridge closes the real publisher."""
