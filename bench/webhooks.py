"""Benchmark: webhook deliveries per second and push-to-webhook latency, against a bare loop.

Everything runs on loopback in this process, bounded in count and time:

* a receiver (``http.server``, threaded) on 127.0.0.1 that records when each request arrived;
* the bridge's Flask app served by werkzeug on 127.0.0.1, ``background`` delivery mode (the
  worker thread ``lrobridge dev`` runs), SQLite store in a temporary folder;
* for 1, 10 and 100 registered endpoints, completion pushes are POSTed to ``/pubsub/push``
  (4 client threads); each push writes one delivery per endpoint, committed before the 204,
  and the worker signs and sends them.

Figures: deliveries per second (all deliveries / time from the first push sent to the last
webhook received) and p50/p99 of the time from a push being sent to the bridge to each of its
webhooks arriving at the receiver (the push travels over loopback, so "sent" is within a
fraction of a millisecond of "received by the bridge"), for a burst (latency includes the
queue it builds) and for pushes sent one at a time (latency without a queue).

Baseline in the same run, with the same HTTP client (``PinnedSender``, urllib3 pinned to the
address) and the same bodies and signed headers: a bare loop posting them one after another,
and the same posts from a thread pool as wide as the bridge's worker (LROBRIDGE_WEBHOOK_
CONCURRENCY). Ratios compare the bridge with each.

    python bench/webhooks.py            # about a minute on 2 cores
    python bench/webhooks.py --quick    # a few seconds, smaller counts
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import dataclasses
import datetime
import http.server
import ipaddress
import json
import logging
import pathlib
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from google.longrunning import operations_proto_pb2 as operations_pb2  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from lrobridge import Bridge  # noqa: E402
from lrobridge.adapters.webhook_sender import PinnedSender  # noqa: E402
from lrobridge.config import Settings  # noqa: E402
from lrobridge.core import codec  # noqa: E402
from lrobridge.webhooks.signing import generate_secret, signed_headers  # noqa: E402
from lrobridge.webhooks.ssrf import Guard  # noqa: E402
from lrobridge.webhooks.worker import SendRequest  # noqa: E402
from lrobridge.wiring.parts import WebhookParts  # noqa: E402

SCENARIOS = {1: 400, 10: 60, 100: 12}  # endpoints -> events (deliveries = product)
QUICK = {1: 60, 10: 10, 100: 3}
PACED = 20  # events pushed one at a time per scenario (QUICK: 5)
SCENARIO_TIME_LIMIT = 120.0
PUSH_THREADS = 4


class Arrivals:
    """Records the arrival time of each webhook request by (path, webhook-id)."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], float] = {}
        self.duplicates = 0
        self.lock = threading.Condition()

    def add(self, key: tuple[str, str], when: float) -> None:
        with self.lock:
            if key in self.times:
                self.duplicates += 1
            else:
                self.times[key] = when
            self.lock.notify_all()

    def wait_for(self, count: int, deadline: float) -> bool:
        with self.lock:
            while len(self.times) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True

    def reset(self) -> None:
        with self.lock:
            self.times.clear()
            self.duplicates = 0


def start_receiver(arrivals: Arrivals) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            arrivals.add((self.path, self.headers.get("webhook-id", "")), time.perf_counter())
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # the default backlog of 5 drops bursts of new connections

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def push_envelope(name: str) -> dict[str, Any]:
    op = operations_pb2.Operation(name=name, done=True)
    snapshot = codec.snapshot_from_proto(op)
    data, payload_format = codec.encode_payload(snapshot, "binary")
    attributes = codec.completion_attributes(
        snapshot,
        outcome="succeeded",
        source="grpc://bench:1",
        event_id=codec.event_id("grpc://bench:1", name, "succeeded"),
        payload_format=payload_format,
        time=datetime.datetime.now(datetime.UTC),
    )
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": name,
        },
        "subscription": "projects/bench/subscriptions/push",
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclasses.dataclass
class Result:
    endpoints: int
    deliveries: int
    received: int
    seconds: float
    latencies: list[float]
    duplicates: int

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else float("nan")


def run_bridge(
    endpoints: int, events: int, paced: int, receiver_port: int, arrivals: Arrivals
) -> tuple[Result, Result]:
    """The burst (pushes from 4 threads as fast as they go) and then ``paced`` pushes one at
    a time, each waiting for all its webhooks: latency without a queue."""
    folder = tempfile.mkdtemp(prefix="lrobridge-bench-")
    settings = dataclasses.replace(
        Settings(),
        push_auth="none",
        api_auth="none",
        project="bench",
        store_url=f"sqlite:///{folder}/bridge.db",
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    bridge = Bridge(settings, webhooks=WebhookParts(settings, mode="background"))
    server = make_server("127.0.0.1", 0, bridge.create_app(), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    for i in range(endpoints):
        bridge.webhooks.create(f"http://127.0.0.1:{receiver_port}/e{i}")
    bridge.start_webhook_worker()
    arrivals.reset()
    names = [f"operations/bench-{endpoints}-{i}" for i in range(events)]
    bodies = {n: json.dumps(push_envelope(n)).encode() for n in names}
    sent: dict[str, float] = {}
    session_local = threading.local()

    def push(name: str) -> None:
        session = getattr(session_local, "session", None)
        if session is None:
            session = session_local.session = requests.Session()
        sent[codec.event_id("grpc://bench:1", name, "succeeded")] = time.perf_counter()
        response = session.post(
            f"{base}/pubsub/push",
            data=bodies[name],
            headers={"content-type": "application/json"},
            timeout=30,
        )
        if response.status_code != 204:
            raise RuntimeError(f"push answered {response.status_code}: {response.text[:200]}")

    expected = endpoints * events
    started = time.perf_counter()
    deadline = time.monotonic() + SCENARIO_TIME_LIMIT
    with concurrent.futures.ThreadPoolExecutor(PUSH_THREADS) as pool:
        list(pool.map(push, names))
    arrivals.wait_for(expected, deadline)
    with arrivals.lock:
        times = dict(arrivals.times)
        duplicates = arrivals.duplicates
    finished = max(times.values()) if times else time.perf_counter()
    latencies = [when - sent[msg_id.removeprefix("msg_")] for (_, msg_id), when in times.items()]
    burst = Result(endpoints, expected, len(times), finished - started, latencies, duplicates)

    arrivals.reset()
    paced_names = [f"operations/paced-{endpoints}-{i}" for i in range(paced)]
    bodies.update({n: json.dumps(push_envelope(n)).encode() for n in paced_names})
    started = time.perf_counter()
    for count, name in enumerate(paced_names, start=1):
        push(name)
        if not arrivals.wait_for(count * endpoints, deadline):
            break
    with arrivals.lock:
        times = dict(arrivals.times)
        duplicates = arrivals.duplicates
    finished = max(times.values()) if times else time.perf_counter()
    latencies = [when - sent[msg_id.removeprefix("msg_")] for (_, msg_id), when in times.items()]
    one_by_one = Result(
        endpoints, paced * endpoints, len(times), finished - started, latencies, duplicates
    )
    server.shutdown()
    bridge.close()
    return burst, one_by_one


def run_baseline(
    endpoints: int, events: int, receiver_port: int, arrivals: Arrivals, threads: int
) -> Result:
    """The same bodies and signed headers, posted with the same client, no bridge."""
    guard = Guard(_LoopbackResolver(), (ipaddress.ip_network("127.0.0.0/8"),))
    sender = PinnedSender(concurrency=max(threads, 1))
    secret = generate_secret()
    jobs = []
    for i in range(events):
        name = f"operations/base-{endpoints}-{threads}-{i}"
        event_id = codec.event_id("grpc://bench:1", name, "succeeded")
        body = json.dumps({"type": "operation.succeeded", "data": {"eventId": event_id}}).encode()
        for e in range(endpoints):
            pinned = guard.pin(f"http://127.0.0.1:{receiver_port}/e{e}")
            jobs.append((pinned, f"msg_{event_id}", body))
    arrivals.reset()
    sent: dict[tuple[str, str], float] = {}

    def post(job: tuple[Any, str, bytes]) -> None:
        pinned, msg_id, body = job
        headers = signed_headers([secret], msg_id=msg_id, timestamp=int(time.time()), body=body)
        sent[(pinned.target.request_target, msg_id)] = time.perf_counter()
        result = sender.send(SendRequest(pinned, headers, body, 15.0))
        if result.status_code != 204:
            raise RuntimeError(f"receiver answered {result.status_code} {result.error}")

    started = time.perf_counter()
    if threads <= 1:
        for job in jobs:
            post(job)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, jobs))
    arrivals.wait_for(len(jobs), time.monotonic() + SCENARIO_TIME_LIMIT)
    with arrivals.lock:
        times = dict(arrivals.times)
        duplicates = arrivals.duplicates
    finished = max(times.values()) if times else time.perf_counter()
    latencies = [when - sent[key] for key, when in times.items()]
    sender.close()
    return Result(endpoints, len(jobs), len(times), finished - started, latencies, duplicates)


class _LoopbackResolver:
    def resolve(self, host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address(host)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    args = parser.parse_args()
    scenarios = QUICK if args.quick else SCENARIOS
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    concurrency = Settings.from_env().webhook_concurrency
    arrivals = Arrivals()
    receiver, port = start_receiver(arrivals)
    print(
        f"lrobridge webhook benchmark: loopback receiver :{port}, worker concurrency "
        f"{concurrency}, {PUSH_THREADS} push threads"
    )
    header = (
        f"{'endpoints':>9} {'deliveries':>10} {'what':<22} {'deliv/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'bridge/what':>11}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for endpoints, events in scenarios.items():
        bridge, paced = run_bridge(endpoints, events, 5 if args.quick else PACED, port, arrivals)
        loop = run_baseline(endpoints, events, port, arrivals, threads=1)
        pool = run_baseline(endpoints, events, port, arrivals, threads=concurrency)
        for label, result in (
            ("bridge, burst", bridge),
            ("bridge, one push a time", paced),
            ("bare loop", loop),
            (f"bare pool x{concurrency}", pool),
        ):
            ratio = "" if result in (bridge, paced) else f"{bridge.rate / result.rate:10.2f}x"
            p50 = percentile(result.latencies, 0.50) * 1000
            p99 = percentile(result.latencies, 0.99) * 1000
            print(
                f"{endpoints:>9} {result.deliveries:>10} {label:<22} {result.rate:>9.0f} "
                f"{p50:>8.1f} {p99:>8.1f} {ratio:>11}"
            )
            if result.received != result.deliveries or result.duplicates:
                ok = False
                print(
                    f"          !! {label}: received {result.received} of {result.deliveries}"
                    f", {result.duplicates} duplicates"
                )
    receiver.shutdown()
    receiver.server_close()
    print(
        "latency: bridge rows from the push being sent to the webhook arriving; bare rows from "
        "the post being sent\nbridge/what: the bridge's burst deliveries per second divided by "
        "the baseline's"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
