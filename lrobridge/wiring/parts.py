"""The lazily built parts of a bridge process: each piece is made from
:class:`~lrobridge.config.Settings` the first time something needs it, so importing a module
that defines a bridge opens no file and no connection (the store opens when the app or the
watcher is made, the Pub/Sub client on the first publish).

:class:`Parts` builds the main pieces (store, dispatcher, Watch resource, waiters, Operations
facade, producer kit, outbox relay, API authentication, Pub/Sub publishers, sources, push and
watch endpoints, watcher, and the :class:`~lrobridge.adapters.web.app.AppParts` the Flask app
serves); :class:`WebhookParts` the webhook feature's (its store beside the main store, SSRF
guard, pinned sender, delivery worker, service and sink). Nothing here starts a thread or a
server: :mod:`lrobridge.wiring.runtime` runs them.

How webhook deliveries progress (``LROBRIDGE_WEBHOOK_DELIVERY``; delivery never relies on CPU
after an HTTP response has been sent):

``background`` (``auto`` outside Cloud Run: ``lrobridge dev``, ``lrobridge serve`` on a VM):
    a worker thread per process drains continuously; a push that writes deliveries wakes it,
    so the first attempt starts at once. It starts with
    :meth:`lrobridge.wiring.runtime.Runtime.start_webhook_worker` (``lrobridge dev`` and
    ``lrobridge serve`` call it) or, in any other WSGI server, with the
    first request the process serves.
``request`` (``auto`` on Cloud Run, where ``K_SERVICE`` is set):
    no thread. The push request that wrote deliveries makes their first attempt itself, after
    the records are committed and before it answers (so within its own CPU allocation); every
    later attempt is made by ``POST /v1/deliveries:drain``, which Cloud Scheduler calls every
    minute with a Google ID token and which runs due deliveries for a bounded time inside the
    request.

Either way the records are the truth: a crash, a kill or a scale-down loses nothing, and a
delivery whose attempt was cut off is sent again once its lease runs out.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal

from lrobridge.config import Settings, firestore_database
from lrobridge.core import paging
from lrobridge.core.access import ApiAuth
from lrobridge.core.recent import RecentCompletions
from lrobridge.core.status import summary
from lrobridge.delivery.dispatch import Dispatcher, Subscription
from lrobridge.delivery.push import PushEndpoint, TokenVerifier
from lrobridge.delivery.relay import OutboxRelay
from lrobridge.errors import BridgeError, FailedPrecondition
from lrobridge.operations.producer import Producer
from lrobridge.operations.service import OperationsFacade
from lrobridge.operations.waiters import CompletionHub
from lrobridge.ports import (
    AsyncOperationsSource,
    BatchPublisher,
    OperationsSource,
    Publisher,
    Store,
    TaskQueue,
)
from lrobridge.storage import QuarantineLimits, open_store
from lrobridge.watching.poller import Watcher
from lrobridge.watching.pubsub_mode import PubSubWatchScheduler, RedeliveryPolicy, WatchHandler
from lrobridge.watching.resource import WatchService
from lrobridge.watching.tasks_mode import TaskTimer, TaskWatchHandler
from lrobridge.webhooks.model import WebhookStore
from lrobridge.webhooks.retry_tasks import RetryTaskHandler, RetryTasks
from lrobridge.webhooks.service import WebhookService
from lrobridge.webhooks.sink import WebhookSink
from lrobridge.webhooks.ssrf import Guard, Resolver
from lrobridge.webhooks.worker import DeliveryWorker, DrainCounts, Sender

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from flask import Blueprint

    from lrobridge.adapters.web.app import AppParts

DeliveryMode = Literal["background", "request"]


def page_tokens(settings: Settings) -> paging.PageTokens:
    """Signs and checks the page tokens of every listing (``LROBRIDGE_PAGE_TOKEN_KEY``)."""
    return paging.tokens_for(settings.page_token_key, lifetime=settings.page_token_lifetime)


def delivery_mode(settings: Settings) -> DeliveryMode:
    if settings.webhook_delivery == "auto":
        return "request" if settings.cloud_run_service else "background"
    return "request" if settings.webhook_delivery == "request" else "background"


def store_path(store_url: str) -> str:
    """The SQLite path of an ``LROBRIDGE_STORE`` URL (``:memory:`` for an in-memory store)."""
    if store_url.startswith("sqlite:///"):
        return store_url.removeprefix("sqlite:///")
    return ":memory:"


def open_webhook_store(settings: Settings, *, path: str | None = None) -> WebhookStore:
    """The webhook store beside the main store: on ``path`` (a SQLite file) when given, else
    where ``LROBRIDGE_STORE`` says (its SQLite file, or its Firestore database)."""
    if path is None and settings.store_url.startswith("firestore://"):
        from lrobridge.storage.firestore.webhooks import FirestoreWebhookStore

        return FirestoreWebhookStore(
            project=settings.project, database=firestore_database(settings.store_url)
        )
    from lrobridge.storage.sqlite.webhooks import SqliteWebhookStore

    return SqliteWebhookStore(path if path is not None else store_path(settings.store_url))


class WebhookParts:
    """The webhook feature's parts, built lazily: store, SSRF guard, sender, delivery worker,
    service and the sink the dispatcher calls (tests pass their own store, sender, resolver,
    clock or delivery mode)."""

    def __init__(
        self,
        settings: Settings,
        *,
        path: str | None = None,
        store: WebhookStore | None = None,
        sender: Sender | None = None,
        resolver: Resolver | None = None,
        mode: DeliveryMode | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_retry: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.mode: DeliveryMode = mode or delivery_mode(settings)
        # Hears each planned retry (a Cloud Task at its time: lrobridge.webhooks.retry_tasks).
        self._on_retry = on_retry
        self._path = path
        self._store = store
        self._sender = sender
        self._resolver = resolver
        self._clock = clock
        self._rng = rng
        self._lock = threading.RLock()
        self._guard: Guard | None = None
        self._worker: DeliveryWorker | None = None
        self._service: WebhookService | None = None
        self._sink: WebhookSink | None = None
        self._hooks: list[Callable[[Sequence[str]], None]] = []
        # Set when deliveries are due now: wakes the background worker (wiring.runtime).
        self.due = threading.Event()

    @property
    def store(self) -> WebhookStore:
        with self._lock:
            if self._store is None:
                self._store = open_webhook_store(self.settings, path=self._path)
            return self._store

    @property
    def guard(self) -> Guard:
        with self._lock:
            if self._guard is None:
                resolver = self._resolver
                if resolver is None:
                    from lrobridge.adapters.webhook_sender import SystemResolver

                    resolver = SystemResolver()
                self._guard = Guard(resolver, self.settings.webhook_allow_networks)
            return self._guard

    @property
    def sender(self) -> Sender:
        with self._lock:
            if self._sender is None:
                from lrobridge.adapters.webhook_sender import PinnedSender

                self._sender = PinnedSender(concurrency=self.settings.webhook_concurrency)
            return self._sender

    @property
    def worker(self) -> DeliveryWorker:
        with self._lock:
            if self._worker is None:
                self._worker = DeliveryWorker(
                    self.store,
                    self.sender,
                    self.guard,
                    timeout=self.settings.webhook_timeout,
                    concurrency=self.settings.webhook_concurrency,
                    clock=self._clock,
                    rng=self._rng,
                    on_retry=self._on_retry,
                )
            return self._worker

    @property
    def on_retry(self) -> Callable[[str, int, float], None] | None:
        return self._on_retry

    @on_retry.setter
    def on_retry(self, hook: Callable[[str, int, float], None] | None) -> None:
        with self._lock:
            self._on_retry = hook
            if self._worker is not None:
                self._worker.on_retry = hook

    @property
    def service(self) -> WebhookService:
        with self._lock:
            if self._service is None:
                self._service = WebhookService(
                    self.store,
                    self.guard,
                    worker=self.worker,
                    clock=self._clock,
                    on_requeued=self._pending,
                    page_tokens=page_tokens(self.settings),
                )
            return self._service

    @property
    def sink(self) -> WebhookSink:
        with self._lock:
            if self._sink is None:
                self._sink = WebhookSink(self.store, clock=self._clock, on_created=self._pending)
            return self._sink

    def add_pending_hook(self, hook: Callable[[Sequence[str]], None]) -> None:
        """In ``request`` mode, ``hook`` hears of deliveries made due now (the Flask views
        collect them to attempt before the response is sent)."""
        if hook not in self._hooks:
            self._hooks.append(hook)

    def _pending(self, delivery_ids: Sequence[str]) -> None:
        if self.mode == "background":
            self.due.set()
            return
        for hook in self._hooks:
            hook(delivery_ids)

    def deliver_now(self, delivery_ids: Sequence[str]) -> DrainCounts:
        """Attempt these deliveries (those still due) within this call."""
        return self.worker.run_due(budget=self.settings.webhook_timeout, only=list(delivery_ids))

    def clock(self) -> float:
        return self._clock()

    def close(self) -> None:
        """Close what was built (the worker thread, if any, is stopped by the runtime first)."""
        with self._lock:
            if self._worker is not None:
                self._worker.close()
            if self._sender is not None:
                self._sender.close()
            if self._store is not None:
                self._store.close()


class Parts:
    """Every part of one bridge, each built on first use from the settings (or the part a
    caller passed in: tests give their own store, publishers, sources and webhook parts)."""

    def __init__(
        self,
        settings: Settings,
        *,
        subscriptions: list[Subscription],
        blueprints: list[Blueprint],
        store: Store | None = None,
        publisher: Publisher | None = None,
        sources: Callable[[str], OperationsSource] | None = None,
        watch_publisher: Publisher | None = None,
        webhooks: WebhookParts | None = None,
        task_queue: TaskQueue | None = None,
        on_create_produced: Callable[[], None] = lambda: None,
        drain_outbox: Callable[[float], int] | None = None,
        start_webhook_worker: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.blueprints = blueprints
        self._store = store
        self._publisher = publisher
        self._watch_publisher = watch_publisher
        self._sources = sources
        self._webhooks = webhooks
        self._task_queue = task_queue
        self._task_timer: TaskTimer | None = None
        self._task_handler: TaskWatchHandler | None = None
        self._retry_task_handler: RetryTaskHandler | None = None
        self._on_create_produced = on_create_produced
        self._drain_outbox = drain_outbox
        self._start_webhook_worker = start_webhook_worker
        self._lock = threading.RLock()
        self.registry: object | None = None  # the source registry, once sources are opened
        self._dispatcher: Dispatcher | None = None
        self._watch_service: WatchService | None = None
        self._watch_handler: WatchHandler | None = None
        self._hub: CompletionHub | None = None
        self._facade: OperationsFacade | None = None
        self._producer: Producer | None = None
        self._relay: OutboxRelay | None = None
        self._cancel_hook: Callable[[str], None] | None = None
        self.watcher: Watcher | None = None  # once create_watcher() made it
        self.recent = RecentCompletions()  # what the status page shows as recent completions
        self.observed: list[object] = []  # the stores the metrics' gauges read (forgotten at close)

    # -- built so far (what close() must close) -------------------------------------------

    @property
    def built_store(self) -> Store | None:
        return self._store

    @property
    def built_hub(self) -> CompletionHub | None:
        return self._hub

    @property
    def built_webhooks(self) -> WebhookParts | None:
        return self._webhooks

    @property
    def built_publishers(self) -> tuple[Publisher, ...]:
        return tuple(p for p in (self._publisher, self._watch_publisher) if p is not None)

    @property
    def built_relays(self) -> tuple[OutboxRelay, ...]:
        """The outbox relays made so far (the producer's and drainer's, the watcher's)."""
        watcher_relay = self.watcher.relay if self.watcher is not None else None
        return tuple(r for r in (self._relay, watcher_relay) if r is not None)

    @property
    def built_task_queue(self) -> TaskQueue | None:
        return self._task_queue

    # -- parts -----------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = open_store(
                    self.settings.store_url,
                    project=self.settings.project,
                    quarantine_limits=QuarantineLimits(
                        max_age=self.settings.quarantine_max_age,
                        max_bytes=self.settings.quarantine_max_bytes,
                    ),
                )
                path = getattr(self._store, "path", None)
                where = f"SQLite file {path}" if isinstance(path, str) else "Firestore"
                log.info("store: %s (LROBRIDGE_STORE=%s)", where, self.settings.store_url)
            return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is None:
                self._recover_leases()
                self._dispatcher = Dispatcher(self.store)
                self._dispatcher.subscriptions = self.subscriptions
                self._dispatcher.sinks.append(self.webhooks.sink)
            return self._dispatcher

    def _recover_leases(self) -> None:
        """At start-up of a serving process: take back the claims of processes that died
        (SQLite: those of this machine; Firestore's simply expire), so the callbacks a killed
        process was running run again at the next redelivery, not ten minutes later."""
        try:
            recovered = self.store.recover(now=time.time())
        except BridgeError as exc:  # the store is down now: claims are checked again per push
            log.warning("could not take back the leases of dead processes: %s", exc.message)
            return
        if recovered:
            log.info("took back %d lease(s) of processes that died", recovered)

    @property
    def watches(self) -> WatchService:
        with self._lock:
            if self._watch_service is None:
                scheduler = None
                if self.settings.watch_mode == "pubsub":
                    self.settings.require_project("LROBRIDGE_WATCH_MODE=pubsub")
                    scheduler = PubSubWatchScheduler(
                        lambda: self.watch_publisher, operations=self.store
                    )
                self._watch_service = WatchService(
                    self.store,
                    on_created=self.wake_watcher,
                    scheduler=scheduler,
                    credential_hosts=self.settings.credential_hosts,
                    timer=self.task_timer if self.settings.watch_mode == "tasks" else None,
                    page_tokens=page_tokens(self.settings),
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
        with self._lock:
            if self._facade is None:
                self._facade = OperationsFacade(
                    self.store,
                    sources=self.source,
                    hub=self.hub,
                    rpc_timeout=self.settings.rpc_timeout,
                    produced_cancel=lambda name: self.producer.request_cancel(name),
                    on_poll_soon=self.wake_watcher,
                    watch_hooks=self.task_timer if self.settings.watch_mode == "tasks" else None,
                    max_wait=self.settings.wait_max,
                    page_tokens=page_tokens(self.settings),
                )
            return self._facade

    def set_cancel_hook(self, hook: Callable[[str], None]) -> None:
        with self._lock:
            self._cancel_hook = hook
            if self._producer is not None:
                self._producer.on_cancel(hook)

    @property
    def producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self.settings.require_project("the producer")
                self._producer = Producer(
                    self.store,
                    self.outbox_relay,
                    self.hub,
                    source=self.settings.bridge_url or "lrobridge://local",
                    payload_format=self.settings.payload_format,
                    progress_interval=self.settings.progress_interval,
                    on_create=self._on_create_produced,
                )
                if self._cancel_hook is not None:
                    self._producer.on_cancel(self._cancel_hook)
            return self._producer

    @property
    def outbox_relay(self) -> OutboxRelay:
        with self._lock:
            if self._relay is None:
                self._relay = OutboxRelay(self.store, self.lazy_publisher())
            return self._relay

    def lazy_publisher(self) -> Publisher:
        return _LazyPublisher(lambda: self.publisher)

    @property
    def api_auth(self) -> ApiAuth:
        if not self.settings.api_service_accounts:
            return ApiAuth(self.settings)
        self.settings.check_api_auth()
        from lrobridge.adapters.id_tokens import ApiTokenVerifier

        verifier = ApiTokenVerifier(
            service_accounts=self.settings.api_service_accounts,
            audience=self.settings.api_audience,
            public_url=self.settings.public_url,
            certs_url=self.settings.push_certs_url,
            # Behind Cloud Run's IAM check, ID tokens arrive with their signature removed.
            platform_verified=self.settings.push_auth == "cloudrun",
        )
        return ApiAuth(self.settings, id_tokens=verifier)

    @property
    def webhooks(self) -> WebhookParts:
        with self._lock:
            if self._webhooks is None:
                path = getattr(self._store, "path", None)
                self._webhooks = WebhookParts(
                    self.settings, path=path if isinstance(path, str) else None
                )
            if self.settings.tasks_webhook_queue and self._webhooks.on_retry is None:
                self._webhooks.on_retry = RetryTasks(
                    _LazyTaskQueue(lambda: self.task_queue),
                    base_url=self.settings.tasks_url,
                    queue=self.settings.tasks_webhook_queue,
                ).planned
            return self._webhooks

    @property
    def publisher(self) -> Publisher:
        with self._lock:
            if self._publisher is None:
                from lrobridge.adapters.pubsub import PubSubPublisher

                self._publisher = PubSubPublisher(self.settings.topic_path)
            return self._publisher

    @property
    def watch_publisher(self) -> Publisher:
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
                self.registry = registry
                self._sources = registry.get
        return self._sources(url)

    def async_source(self, url: str) -> AsyncOperationsSource:
        """A new asyncio source for ``url`` (the watcher opens one per URL on its loop), under
        the same URL and credential-host rules as :meth:`source`."""
        from lrobridge.adapters.sources import open_async_source

        return open_async_source(
            url,
            credential_hosts=self.settings.credential_hosts,
            max_concurrency=self.settings.watcher_concurrency,
        )

    def push_verifier(self) -> TokenVerifier | None:
        if self.settings.push_auth == "none":
            return None
        self.settings.check_push_auth()
        from lrobridge.adapters.push_auth import PushTokenVerifier

        return PushTokenVerifier(
            audience=self.settings.push_audiences,
            service_account=self.settings.push_service_account,
            certs_url=self.settings.push_certs_url,
            platform_verified=self.settings.push_auth == "cloudrun",
        )

    def push_endpoint(self) -> PushEndpoint:
        return PushEndpoint(
            dispatcher=self.dispatcher,
            ledger=self.store,
            verifier=self.push_verifier(),
            on_event=self.hub.notify,
            recent=self.recent,
        )

    # -- telemetry and the status page ---------------------------------------------------

    def start_telemetry(self) -> bool:
        """Turn OpenTelemetry on as the environment asks (once per process: see
        :mod:`lrobridge.telemetry.setup`) and report this bridge's stores in the gauges."""
        from lrobridge.telemetry import metrics, setup

        asked = {"LROBRIDGE_METRICS": self.settings.metrics} if self.settings.metrics else {}
        on = setup.configure({**os.environ, **asked})
        with self._lock:
            if metrics.enabled() and not self.observed:
                self.observed = [self.store, self.webhooks.store]
                metrics.observe(store=self.store, webhooks=self.webhooks.store)
        return on

    def status(self) -> dict[str, Any]:
        """The status page's summary (``GET /v1/status``)."""
        return summary(self.store, self.recent.latest(), now=time.time())

    def watch_endpoint(self) -> WatchHandler:
        with self._lock:
            if self._watch_handler is None:
                settings = self.settings
                self._watch_handler = WatchHandler(
                    sources=self.source,
                    # Lazy: a request is authenticated before any Pub/Sub client is made.
                    completions=self.lazy_publisher(),
                    watches=_LazyPublisher(lambda: self.watch_publisher),
                    ledger=self.store,
                    verifier=self.push_verifier(),
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

    # -- Cloud Tasks (lrobridge.watching.tasks_mode, lrobridge.webhooks.retry_tasks) ----------

    @property
    def task_queue(self) -> TaskQueue:
        """Cloud Tasks (or its emulator, LROBRIDGE_TASKS_EMULATOR_HOST); no client until used."""
        with self._lock:
            if self._task_queue is None:
                self.settings.check_tasks()
                from lrobridge.adapters.cloud_tasks import CloudTasksQueue

                self._task_queue = CloudTasksQueue(self.settings)
            return self._task_queue

    @property
    def task_timer(self) -> TaskTimer:
        """One Cloud Task per ACTIVE watch (LROBRIDGE_WATCH_MODE=tasks)."""
        with self._lock:
            if self._task_timer is None:
                settings = self.settings
                self._task_timer = TaskTimer(
                    _LazyTaskQueue(lambda: self.task_queue),
                    self.store,
                    base_url=settings.tasks_url,
                    queue=settings.tasks_queue,
                    source_queues=dict(settings.tasks_source_queues),
                    sweep_after=settings.tasks_sweep_after,
                )
            return self._task_timer

    def tasks_verifier(self) -> TokenVerifier | None:
        """Verifies the OIDC token of task requests against the configured service account
        and audience (never the request URL)."""
        settings = self.settings
        if settings.push_auth == "none":
            return None
        settings.check_tasks()
        from lrobridge.adapters.push_auth import PushTokenVerifier

        return PushTokenVerifier(
            audience=settings.tasks_token_audience,
            service_account=settings.tasks_service_account,
            certs_url=settings.push_certs_url,
            platform_verified=settings.push_auth == "cloudrun",
        )

    def task_watch_endpoint(self) -> TaskWatchHandler:
        """The handler of POST /tasks/watch."""
        with self._lock:
            if self._task_handler is None:
                if self.settings.watch_mode != "tasks":
                    raise FailedPrecondition(
                        "POST /tasks/watch serves LROBRIDGE_WATCH_MODE=tasks; this bridge runs "
                        f"{self.settings.watch_mode!r}"
                    )
                # A killed process's completions are taken back (SQLite knows its dead local
                # processes; Firestore's leases expire): the retried task publishes them.
                self.store.recover(now=time.time())
                self._task_handler = TaskWatchHandler(
                    store=self.store,
                    timer=self.task_timer,
                    sources=self.source,
                    relay=self.outbox_relay,
                    verifier=self.tasks_verifier(),
                    audience=self.settings.tasks_token_audience,
                    payload_format=self.settings.payload_format,
                    rpc_timeout=self.settings.rpc_timeout,
                    on_completion=self.hub.notify,
                )
            return self._task_handler

    def webhook_task_endpoint(self) -> RetryTaskHandler:
        """The handler of POST /tasks/webhook (one planned webhook retry)."""
        with self._lock:
            if self._retry_task_handler is None:
                webhooks = self.webhooks
                self._retry_task_handler = RetryTaskHandler(
                    store=webhooks.store,
                    worker=webhooks.worker,
                    verifier=self.tasks_verifier(),
                    audience=self.settings.tasks_token_audience,
                    clock=webhooks.clock,
                )
            return self._retry_task_handler

    def sweep_watch_tasks(self) -> int:
        """Reschedule watches whose task was lost (tasks mode; run by the scheduled drain)."""
        if self.settings.watch_mode != "tasks":
            return 0
        return self.task_timer.sweep()

    def create_watcher(self) -> Watcher:
        self.start_telemetry()
        with self._lock:
            if self.watcher is None:
                self.settings.require_project("the watcher")
                self.watcher = Watcher(
                    store=self.store,
                    sources=self.source,
                    publisher=self.lazy_publisher(),
                    settings=self.settings,
                    on_completion=self.hub.notify,
                    async_sources=self.async_source,
                )
            return self.watcher

    def wake_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.wake()

    def app_parts(self) -> AppParts:
        """The few parts the Flask app's views use (push endpoint, Watch resource, API
        authentication, Operations facade, quarantine, webhooks, blueprints)."""
        from lrobridge.adapters.web.app import AppParts
        from lrobridge.adapters.web.webhooks import WebhookViews
        from lrobridge.telemetry import setup as telemetry_setup

        self.start_telemetry()

        if self.settings.watch_mode == "tasks" or self.settings.tasks_webhook_queue:
            self.settings.check_tasks()  # fail at start-up, not at the first watch
        drain = self._drain_outbox or (lambda settle: self.outbox_relay.drain(settle=settle))
        return AppParts(
            push=self.push_endpoint(),
            watches=self.watches,
            api_auth=self.api_auth,
            watch_endpoint=self.watch_endpoint,
            ledger=self.store,
            facade=self.facade,
            webhooks=WebhookViews(
                parts=lambda: self.webhooks,
                start_worker=self._start_webhook_worker,
                drain_outbox=drain,
                sweep_watch_tasks=(
                    self.sweep_watch_tasks if self.settings.watch_mode == "tasks" else None
                ),
            ),
            blueprints=tuple(self.blueprints),
            status=self.status,
            serve_metrics=self.settings.metrics == "prometheus"
            or telemetry_setup.prometheus_enabled(),
            metrics_need_auth=self.settings.metrics_auth == "api",
            trusted_proxies=self.settings.trusted_proxies,
            task_watch_endpoint=self.task_watch_endpoint,
            webhook_task_endpoint=self.webhook_task_endpoint,
        )


class _LazyPublisher:
    """A Publisher that creates the Pub/Sub client on the first publish, not before."""

    def __init__(self, factory: Callable[[], Publisher]) -> None:
        self._factory = factory

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        return self._factory().publish(data, attributes, ordering_key)

    def publish_batch(
        self, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[Future[str]]:
        publisher = self._factory()
        if isinstance(publisher, BatchPublisher):
            return publisher.publish_batch(messages)
        return [_one_by_one(publisher, data, attributes) for data, attributes in messages]

    def open(self) -> None:
        """Create the real publisher now (:class:`~lrobridge.ports.OpensAhead`)."""
        self._factory()

    def close(self) -> None:
        """The runtime closes the real publisher."""


def _one_by_one(publisher: Publisher, data: bytes, attributes: Mapping[str, str]) -> Future[str]:
    """A message of a batch for a publisher that takes one at a time; a refusal is its future's."""
    try:
        return publisher.publish(data, dict(attributes), "")
    except Exception as exc:
        failed: Future[str] = Future()
        failed.set_exception(exc)
        return failed


class _LazyTaskQueue:
    """A TaskQueue that creates the Cloud Tasks client on first use (after authentication)."""

    def __init__(self, factory: Callable[[], TaskQueue]) -> None:
        self._factory = factory

    def create(self, queue: str, name: str, *, url: str, body: bytes, schedule_time: float) -> bool:
        return self._factory().create(queue, name, url=url, body=body, schedule_time=schedule_time)

    def delete(self, queue: str, name: str) -> bool:
        return self._factory().delete(queue, name)

    def close(self) -> None:
        """The runtime closes the real queue."""
