"""Wiring of the webhook feature, and how pending deliveries progress in each kind of process.

:class:`WebhookRuntime` builds the parts from :class:`~lrobridge.config.Settings` (lazily: no
file is opened and no thread started until something needs it): the store beside the main one
(:func:`open_webhook_store`: its SQLite file, or its Firestore database), the SSRF guard,
the pinned HTTP sender, the :class:`DeliveryWorker`, the :class:`WebhookService` and the
:class:`WebhookSink` the dispatcher calls.

Delivery never relies on CPU after an HTTP response has been sent. ``LROBRIDGE_WEBHOOK_DELIVERY``
chooses how deliveries progress:

``background`` (``auto`` outside Cloud Run: ``lrobridge dev``, ``lrobridge serve`` on a VM):
    a worker thread per process drains continuously; a push that writes deliveries wakes it,
    so the first attempt starts at once. It starts with :meth:`WebhookRuntime.start_worker`
    (``lrobridge dev`` and ``lrobridge serve`` call it) or, in any
    other WSGI server, with the first request the process serves.
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
from collections.abc import Callable, Sequence
from typing import Literal

from lrobridge.config import Settings, firestore_database
from lrobridge.webhooks.model import WebhookStore
from lrobridge.webhooks.service import WebhookService
from lrobridge.webhooks.sink import WebhookSink
from lrobridge.webhooks.ssrf import Guard, Resolver
from lrobridge.webhooks.worker import DeliveryWorker, DrainCounts, Sender

log = logging.getLogger(__name__)

DeliveryMode = Literal["background", "request"]


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


class WebhookRuntime:
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
    ) -> None:
        self.settings = settings
        self.mode: DeliveryMode = mode or delivery_mode(settings)
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
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_pid = 0
        self._closed = False

    # -- parts -------------------------------------------------------------------------------

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
                )
            return self._worker

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
                )
            return self._service

    @property
    def sink(self) -> WebhookSink:
        with self._lock:
            if self._sink is None:
                self._sink = WebhookSink(self.store, clock=self._clock, on_created=self._pending)
            return self._sink

    # -- progress ----------------------------------------------------------------------------

    def add_pending_hook(self, hook: Callable[[Sequence[str]], None]) -> None:
        """In ``request`` mode, ``hook`` hears of deliveries made due now (the Flask views
        collect them to attempt before the response is sent)."""
        if hook not in self._hooks:
            self._hooks.append(hook)

    def _pending(self, delivery_ids: Sequence[str]) -> None:
        if self.mode == "background":
            self.wake()
            return
        for hook in self._hooks:
            hook(delivery_ids)

    def deliver_now(self, delivery_ids: Sequence[str]) -> DrainCounts:
        """Attempt these deliveries (those still due) within this call."""
        return self.worker.run_due(budget=self.settings.webhook_timeout, only=list(delivery_ids))

    def clock(self) -> float:
        return self._clock()

    def wake(self) -> None:
        self._wake.set()

    def start_worker(self) -> bool:
        """Start this process's background worker thread (``background`` mode only); True if
        one runs now. Safe to call often and after ``fork``: each process gets its own."""
        if self.mode != "background" or self._closed:
            return False
        with self._lock:
            pid = os.getpid()
            if self._thread is not None and self._thread_pid == pid and self._thread.is_alive():
                return True
            worker = self.worker
            self._stop.clear()
            self._thread = threading.Thread(
                target=worker.run_forever,
                args=(self._stop, self._wake),
                name="lrobridge-webhook-worker",
                daemon=True,
            )
            self._thread_pid = pid
            self._thread.start()
            log.info(
                "webhook delivery worker started (pid %d, concurrency %d)",
                pid,
                worker.concurrency,
            )
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop.set()
            self._wake.set()
            thread, self._thread = self._thread, None
        if thread is not None and self._thread_pid == os.getpid():
            thread.join(timeout=self.settings.webhook_timeout + 5)
        with self._lock:
            if self._worker is not None:
                self._worker.close()
            if self._sender is not None:
                self._sender.close()
            if self._store is not None:
                self._store.close()
