"""The process runtime of a bridge: the threads and servers its parts run on, and closing it.

:class:`Runtime` owns what a process runs beside its requests: the outbox drainer thread (a
process without a watcher republishes what failed to publish), the webhook delivery worker
thread (``background`` delivery mode, see :mod:`lrobridge.wiring.parts`), the gRPC server, and
:meth:`Runtime.close`, which stops them and closes every part that was built. Each thread is
per process: started again after ``fork`` (a pre-forking WSGI server), never shared across one.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from lrobridge.wiring.parts import Parts

if TYPE_CHECKING:
    from lrobridge.adapters.grpc_server import GrpcServer

log = logging.getLogger(__name__)

# How often a process without a watcher republishes outbox entries that failed to publish.
OUTBOX_DRAIN_INTERVAL = 5.0


class Runtime:
    """Runs a bridge's parts in this process: drainer and webhook threads, gRPC, close."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._drainer: threading.Thread | None = None
        self._drainer_pid = 0
        self._webhook_thread: threading.Thread | None = None
        self._webhook_pid = 0
        self._webhook_stop = threading.Event()
        self._closed = False
        self._grpc: GrpcServer | None = None

    # -- outbox ----------------------------------------------------------------------------

    def drain_outbox(self, settle: float = 0.0) -> int:
        """Republish every outbox entry that is due (left by a failure or a dead process);
        ``settle`` seconds at most are spent waiting for Pub/Sub's answers."""
        return self.parts.outbox_relay.drain(settle=settle)

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

    # -- webhook deliveries ------------------------------------------------------------------

    def start_webhook_worker(self) -> bool:
        """Start this process's webhook delivery thread (``background`` mode only); True if
        one runs now. Safe to call often and after ``fork``: each process gets its own."""
        webhooks = self.parts.webhooks
        if webhooks.mode != "background" or self._closed:
            return False
        with self._lock:
            pid = os.getpid()
            thread = self._webhook_thread
            if thread is not None and self._webhook_pid == pid and thread.is_alive():
                return True
            worker = webhooks.worker
            self._webhook_stop.clear()
            self._webhook_thread = threading.Thread(
                target=worker.run_forever,
                args=(self._webhook_stop, webhooks.due),
                name="lrobridge-webhook-worker",
                daemon=True,
            )
            self._webhook_pid = pid
            self._webhook_thread.start()
            log.info(
                "webhook delivery worker started (pid %d, concurrency %d)",
                pid,
                worker.concurrency,
            )
            return True

    def _stop_webhook_worker(self) -> None:
        with self._lock:
            self._webhook_stop.set()
            webhooks = self.parts.built_webhooks
            if webhooks is not None:
                webhooks.due.set()
            thread, self._webhook_thread = self._webhook_thread, None
        if thread is not None and self._webhook_pid == os.getpid():
            thread.join(timeout=self.parts.settings.webhook_timeout + 5)

    # -- gRPC --------------------------------------------------------------------------------

    def start_grpc(self, port: int | None = None, host: str = "0.0.0.0") -> int:
        """Serve Operations and WatchService over gRPC (``LROBRIDGE_GRPC_PORT`` by default);
        returns the bound port."""
        from lrobridge.adapters.grpc_server import GrpcServer

        chosen = self.parts.settings.grpc_port if port is None else port
        if chosen is None:
            raise ValueError("no gRPC port: set LROBRIDGE_GRPC_PORT or pass port=")
        with self._lock:
            if self._grpc is None:
                self._grpc = GrpcServer(
                    facade=self.parts.facade,
                    watches=self.parts.watches,
                    auth=self.parts.api_auth,
                    host=host,
                    port=chosen,
                )
                self._grpc.start()
            assert self._grpc.port is not None
            return self._grpc.port

    # -- close -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the threads and servers, then close every part that was built."""
        self._closing.set()
        with self._lock:
            self._closed = True
        self._stop_webhook_worker()
        parts = self.parts
        with self._lock:
            if self._grpc is not None:
                self._grpc.stop()
            if parts.watcher is not None:
                parts.watcher.stop()
            webhooks = parts.built_webhooks
            if webhooks is not None:
                webhooks.close()
            hub = parts.built_hub
            if hub is not None:
                hub.close()
            for publisher in parts.built_publishers:
                publisher.close()
            # Closing a publisher waited for Pub/Sub's answers; settle them before the store
            # closes (what is not settled is published again after its lease, never lost).
            for relay in parts.built_relays:
                relay.flush()
            task_queue = parts.built_task_queue
            if task_queue is not None:
                task_queue.close()
            close_registry = getattr(parts.registry, "close", None)
            if close_registry is not None:
                close_registry()
            store = parts.built_store
            if store is not None:
                store.close()
