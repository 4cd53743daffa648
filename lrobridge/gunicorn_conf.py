"""Gunicorn hooks of the container: ``gunicorn -c python:lrobridge.gunicorn_conf APP``.

Owns what runs around the WSGI app in a gunicorn worker (an adapter: it imports gunicorn):

* logs in Cloud Logging's JSON form when ``LROBRIDGE_LOG_FORMAT=json`` (gunicorn's own lines
  included) with trace correlation (:mod:`lrobridge.logs`); no access log, since Cloud Run
  writes a request log of its own;
* a container that publishes (poller mode with its watcher, or the Pub/Sub-driven mode) refuses
  to start without a Google Cloud project (:func:`on_starting`, in the master);
* ``LROBRIDGE_WATCH_MODE=poller``: the in-process watcher, on a thread of the worker (on Cloud
  Run this needs instance-based billing, CPU always allocated, and min instances 1), unless
  ``run_watcher`` is False (``lrobridge serve`` without ``--watcher``);
* the webhook worker thread when webhook delivery runs in the background;
* SIGTERM: gunicorn stops accepting, lets the requests in flight finish for up to
  ``--graceful-timeout`` (pushes complete and are acknowledged), then :func:`worker_exit`
  stops the watcher and closes the bridge, which flushes its publishers. Keep the graceful
  timeout below Cloud Run's 10 s between SIGTERM and SIGKILL (the Dockerfile uses 8 s). A poll
  cut short is safe: the store's leases and outbox resume it on the next start.

The server settings (bind to ``$PORT``, workers, threads, ``--timeout 0``) are on the
Dockerfile's command line, where Cloud Run's conventions are visible.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from gunicorn import glogging

from lrobridge.bridge import BRIDGE_EXTENSION, Bridge
from lrobridge.config import Settings
from lrobridge.errors import ConfigError
from lrobridge.logs import CloudLoggingFormatter, configure_logging

log = logging.getLogger("lrobridge.gunicorn")

WATCHER_JOIN_TIMEOUT = 1.0

accesslog = None
# `lrobridge serve` sets this from its --watcher flag; the container always runs the watcher
# in poller mode (one process does everything).
run_watcher = True


class Logger(glogging.Logger):
    """gunicorn's logger, writing JSON lines when LROBRIDGE_LOG_FORMAT=json."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        settings = Settings.from_env()
        if settings.log_format == "json":
            formatter = CloudLoggingFormatter(settings.project)
            for handler in self.error_log.handlers:
                handler.setFormatter(formatter)


logger_class = Logger

_running: dict[str, Any] = {}


def on_starting(server: Any) -> None:
    """In the master, before any worker: a container that will publish (its watcher in poller
    mode, or the Pub/Sub-driven mode) refuses to start without a project, in one line."""
    settings = Settings.from_env()
    if (run_watcher and settings.watch_mode == "poller") or settings.watch_mode == "pubsub":
        try:
            settings.require_project("the container's watcher")
        except ConfigError as exc:
            print(f"lrobridge: error: {exc.message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None


def post_fork(server: Any, worker: Any) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, project=settings.project)


def post_worker_init(worker: Any) -> None:
    bridge = getattr(worker.wsgi, "extensions", {}).get(BRIDGE_EXTENSION)
    if not isinstance(bridge, Bridge):
        log.warning("the WSGI app was not made by Bridge.create_app(); no watcher, no clean-up")
        return
    _running["bridge"] = bridge
    bridge.start_webhook_worker()
    if not run_watcher or bridge.settings.watch_mode != "poller":
        bridge.start_outbox_drainer()  # without a watcher, something must republish
    if not run_watcher:
        return
    if bridge.settings.watch_mode != "poller":
        log.info("watch mode %s: no in-process watcher", bridge.settings.watch_mode)
        return
    watcher = bridge.create_watcher()
    thread = threading.Thread(target=watcher.run, name="lrobridge-watcher", daemon=True)
    thread.start()
    _running["watcher"] = (watcher, thread)


def worker_exit(server: Any, worker: Any) -> None:
    running = _running.pop("watcher", None)
    if running is not None:
        watcher, thread = running
        watcher.stop()
        thread.join(WATCHER_JOIN_TIMEOUT)
    bridge = _running.pop("bridge", None)
    if bridge is not None:
        bridge.close()
    log.info("worker %s stopped", getattr(worker, "pid", "?"))
