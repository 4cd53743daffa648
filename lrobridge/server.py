"""The HTTP server of ``lrobridge serve`` and the container: waitress around a bridge's Flask app.

Why waitress: its event loop reads every request whole (headers and body, at most
:data:`~lrobridge.config.MAX_REQUEST_BYTES`) before one of the app threads runs it. A client that
sends slowly or stalls holds a socket on the event loop, never a thread, so ``/healthz`` and
pushes are answered while hundreds of them are open (at most ``connection_limit`` connections;
one silent for ``channel_timeout`` seconds is closed). A threaded server that hands the socket to
a thread first (gunicorn's gthread worker) is stopped by as many slow clients as it has threads.

What the server answers itself, in the google.rpc.Status JSON form the app uses (never a
traceback, and nothing reaches the app or the quarantine):

* 400: malformed chunked encoding; a body that ends (the client closed its side) before the
  length its ``Content-Length`` announced, or before its last chunk;
* 413: a body over the limit, chunked or not (never cut and passed on);
* 431: headers over waitress's limit; 501: a transfer coding other than chunked.

Lifecycle (what the gunicorn hooks used to do): :meth:`Server.serve` starts the webhook worker, the
outbox drainer when no in-process watcher runs, and with ``run_watcher`` the watcher (poller
mode), then serves until :meth:`Server.stop` (``lrobridge serve`` calls it on SIGTERM/SIGINT).
Stopping closes the listening socket at once, lets the requests in flight finish for up to
``graceful_timeout`` seconds (pushes complete and are acknowledged; keep it below Cloud Run's
10 s between SIGTERM and SIGKILL), then stops the watcher and closes the bridge, which flushes
its publishers. Forwarded headers are left to the app (``LROBRIDGE_TRUSTED_PROXIES``, werkzeug's
ProxyFix), so waitress's own proxy-header handling is off.

An entry point beside :mod:`lrobridge.wsgi` (it imports waitress and the bridge).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask
from waitress.utilities import BadRequest, RequestEntityTooLarge

from lrobridge.config import MAX_REQUEST_BYTES
from lrobridge.errors import Code

if TYPE_CHECKING:
    from flask import Flask

    from lrobridge.bridge import Bridge

log = logging.getLogger(__name__)

WATCHER_JOIN_TIMEOUT = 1.0
_LOOP_TIMEOUT = 0.2  # how often the event loop looks at the stop flag (a signal only sets it)

_DISCONNECTED = frozenset(
    {
        errno.ECONNRESET,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EBADF,
    }
)
_STATUS_BY_HTTP = {
    400: Code.INVALID_ARGUMENT,
    413: Code.INVALID_ARGUMENT,
    431: Code.INVALID_ARGUMENT,
    501: Code.UNIMPLEMENTED,
}


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """How ``lrobridge serve`` listens; the defaults are the container's."""

    host: str = "0.0.0.0"
    port: int = 8080
    threads: int = 8
    connection_limit: int = 1000
    channel_timeout: float = 60.0
    graceful_timeout: float = 8.0


class _StatusErrorTask(ErrorTask):
    """waitress's error answer, in the google.rpc.Status JSON form."""

    def execute(self) -> None:
        error: Any = cast(Any, self.request).error
        if isinstance(error, RequestEntityTooLarge):
            message = f"request body is larger than {MAX_REQUEST_BYTES} bytes"
        else:
            message = f"{error.reason}: {error.body}"
        code = _STATUS_BY_HTTP.get(error.code, Code.INTERNAL)
        body = json.dumps(
            {
                "error": {
                    "code": error.code,
                    "message": message,
                    "status": code.name,
                    "details": [],
                }
            }
        ).encode()
        self.status = f"{error.code} {error.reason}"
        cast(list[tuple[str, str]], self.response_headers).append(
            ("Content-Type", "application/json")
        )
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """One connection: waitress's, answering a body cut short by the client with a 400."""

    error_task_class = _StatusErrorTask

    _cut_short = False  # the client closed its side with a request body incomplete

    def recv(self, buffer_size: int) -> bytes:
        channel: Any = self  # waitress's stubs do not name the attributes used here
        pending: Any = channel.request
        if pending is None or not pending.headers_finished or pending.completed:
            return super().recv(buffer_size)
        try:
            data: bytes = channel.socket.recv(buffer_size)
        except OSError as exc:
            if exc.errno in _DISCONNECTED:
                self.handle_close()
                return b""
            raise
        if data:
            return data
        # End of stream in the middle of a body: answer 400 instead of closing silently.
        if pending.chunked:
            reason = "the chunked request body ended before its last chunk"
        else:
            reason = (
                f"the request body ended after {pending.body_bytes_received} of the "
                f"{pending.content_length} bytes its Content-Length announced"
            )
        pending.error = BadRequest(reason)
        pending.completed = True
        with channel.requests_lock:
            channel.requests.append(pending)
            channel.request = None
        self._cut_short = True
        if len(channel.requests) == 1:
            channel.server.add_task(channel)
        return b""

    def handle_read(self) -> None:
        super().handle_read()
        if self._cut_short:
            cast(Any, self).connected = True  # the answer can still be sent; then it closes


class Server:
    """Serves one bridge's Flask app with waitress until :meth:`stop` (see the module doc)."""

    def __init__(
        self,
        bridge: Bridge,
        app: Flask,
        options: ServerOptions = ServerOptions(),
        *,
        run_watcher: bool = False,
    ) -> None:
        self._bridge = bridge
        self._options = options
        self._run_watcher = run_watcher
        self._stopping = threading.Event()
        self._server: Any = create_server(
            app,
            host=options.host,
            port=options.port,
            threads=options.threads,
            connection_limit=options.connection_limit,
            channel_timeout=options.channel_timeout,
            # waitress refuses a body of max_request_body_size bytes or more; the app accepts
            # MAX_REQUEST_BYTES itself.
            max_request_body_size=MAX_REQUEST_BYTES + 1,
            clear_untrusted_proxy_headers=False,
            asyncore_use_poll=True,
            expose_tracebacks=False,
            ident="lrobridge",
        )
        for listener in self._listeners():
            listener.channel_class = _Channel
        self._watcher: tuple[Any, threading.Thread] | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one when ``options.port`` is 0)."""
        return int(self._listeners()[0].effective_port)

    def _map(self) -> dict[int, Any]:
        server = self._server
        return server._map if isinstance(server, BaseWSGIServer) else server.map  # type: ignore[no-any-return,attr-defined]

    def _listeners(self) -> list[Any]:
        return [d for d in self._map().values() if isinstance(d, BaseWSGIServer)]

    def stop(self) -> None:
        """Ask :meth:`serve` to stop (safe from a signal handler: it only sets a flag)."""
        self._stopping.set()

    def serve(self) -> None:
        """Start the background parts, serve until :meth:`stop`, then shut down cleanly."""
        self._start_background()
        options = self._options
        log.info(
            "serving on http://%s:%d (%d threads, at most %d connections)",
            options.host,
            self.port,
            options.threads,
            options.connection_limit,
        )
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=_LOOP_TIMEOUT, map=self._map(), use_poll=True, count=1)
            self._drain()
        finally:
            self._stop_background()

    def _drain(self) -> None:
        """Stop accepting, let the requests in flight finish (bounded), close everything."""
        for listener in self._listeners():
            listener.close()
        deadline = time.monotonic() + self._options.graceful_timeout
        while self._in_flight() and time.monotonic() < deadline:
            wasyncore.loop(timeout=0.05, map=self._map(), use_poll=True, count=1)
        left = self._in_flight()
        if left:
            log.warning("%d requests still running after the graceful timeout", left)
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self._map())
        log.info("server stopped")

    def _in_flight(self) -> int:
        """Connections with a request read whole and not yet fully answered."""
        return sum(
            1
            for channel in self._map().values()
            if isinstance(channel, HTTPChannel) and (channel.requests or channel.total_outbufs_len)
        )

    def _start_background(self) -> None:
        bridge = self._bridge
        bridge.start_webhook_worker()
        poller = bridge.settings.watch_mode == "poller"
        if not (self._run_watcher and poller):
            bridge.start_outbox_drainer()  # without a watcher, something must republish
        if not self._run_watcher:
            return
        if not poller:
            log.info("watch mode %s: no in-process watcher", bridge.settings.watch_mode)
            return
        watcher = bridge.create_watcher()
        thread = threading.Thread(target=watcher.run, name="lrobridge-watcher", daemon=True)
        thread.start()
        self._watcher = (watcher, thread)

    def _stop_background(self) -> None:
        if self._watcher is not None:
            watcher, thread = self._watcher
            watcher.stop()
            thread.join(WATCHER_JOIN_TIMEOUT)
            self._watcher = None
        self._bridge.close()
