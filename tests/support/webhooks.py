"""Test parts for webhooks: a real HTTP receiver on loopback, a manual clock, a map resolver,
and push bodies carrying completed Operations.

:class:`Receiver` is an ``http.server.ThreadingHTTPServer`` on 127.0.0.x, port 0 (or a port
given), in a thread. Each request is recorded (headers, body, arrival time) and verified with
the ``standardwebhooks`` package against the secrets the test gives it, as a real receiver
would; the answer comes from :attr:`Receiver.respond` (status, headers, body), which tests swap
to make the receiver fail, redirect, block or answer slowly. Use it as a context manager.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import http.server
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import standardwebhooks
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.adapters.webhook_sender import SystemResolver
from lrobridge.core import codec
from lrobridge.errors import Unavailable
from lrobridge.webhooks.ssrf import IPAddress


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    time: float
    verified: bool  # the signature verified with one of the receiver's secrets
    payload: Any = None

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


Answer = tuple[int, dict[str, str], bytes]


def ok(_: Received) -> Answer:
    return 200, {}, b"ok"


class Receiver:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        secrets: list[str] | None = None,
        respond: Callable[[Received], Answer] = ok,
    ) -> None:
        self.host = host
        self.port = port
        self.secrets = list(secrets or [])
        self.respond = respond
        self.received: list[Received] = []
        self.answered: list[tuple[Received, int]] = []
        self._lock = threading.Condition()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def __enter__(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                got = Received(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    time=time.time(),
                    verified=False,
                )
                for secret in receiver.secrets:
                    try:
                        got.payload = standardwebhooks.Webhook(secret).verify(body, got.headers)
                    except standardwebhooks.WebhookVerificationError:
                        continue
                    got.verified = True
                    break
                with receiver._lock:
                    receiver.received.append(got)
                    receiver._lock.notify_all()
                status, headers, answer = receiver.respond(got)
                # Noted before it is sent: a test that saw the sender get its answer must find
                # it here, not race this thread for it.
                entry = (got, status)
                with receiver._lock:
                    receiver.answered.append(entry)
                    receiver._lock.notify_all()
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    with receiver._lock:  # the sender gave up: it never saw this answer
                        receiver.answered.remove(entry)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def wait_for(self, count: int, *, timeout: float = 20.0, answered: bool = True) -> None:
        """Wait until ``count`` requests were received (and answered, by default)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.answered if answered else self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    have = len(self.answered if answered else self.received)
                    raise AssertionError(f"receiver got {have} of {count} requests")
                self._lock.wait(left)

    def successes(self) -> list[Received]:
        with self._lock:
            return [r for r, status in self.answered if 200 <= status < 300]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ManualClock:
    """A clock that starts at the real time and moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MapResolver:
    """Names from a dict (changeable mid-test, for DNS rebinding), others from the system
    resolver (tests only give it names that /etc/hosts or numeric parsing answers)."""

    def __init__(self, names: dict[str, list[str]] | None = None) -> None:
        self.names = dict(names or {})
        self.lookups: list[str] = []
        self._system = SystemResolver()

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """An empty list in ``names`` fails like a name that does not exist."""
        self.lookups.append(host)
        if host in self.names:
            if not self.names[host]:
                raise Unavailable(f"cannot resolve {host!r}: no such name (test resolver)")
            return [ipaddress.ip_address(a) for a in self.names[host]]
        return self._system.resolve(host, port)


def completed(name: str, outcome: str = "succeeded") -> operations_pb2.Operation:
    op = operations_pb2.Operation(name=name, done=True)
    if outcome == "failed":
        op.error.code = 13
        op.error.message = "boom"
    elif outcome == "cancelled":
        op.error.code = 1
    return op


def push_body(
    name: str, outcome: str = "succeeded", *, source: str = "grpc://127.0.0.1:9", attempt: int = 1
) -> dict[str, Any]:
    """A wrapped push envelope of the completion message the watcher would publish."""
    snapshot = codec.snapshot_from_proto(completed(name, outcome))
    data, payload_format = codec.encode_payload(snapshot, "binary")
    attributes = codec.completion_attributes(
        snapshot,
        outcome=outcome,  # type: ignore[arg-type]
        source=source,
        event_id=codec.event_id(source, name, outcome),  # type: ignore[arg-type]
        payload_format=payload_format,
        time=datetime.datetime.now(datetime.UTC),
    )
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": f"m-{attempt}-{name}",
            "publishTime": "2026-01-01T00:00:00Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }


def push_bytes(name: str, outcome: str = "succeeded") -> bytes:
    return json.dumps(push_body(name, outcome)).encode()


def wait_until(check: Callable[[], bool], *, timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


class LiveServer:
    """A WSGI app served by werkzeug on 127.0.0.1, port 0, in a thread (a context manager)."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
