"""How close to their scheduled time Cloud Tasks runs the bridge's polls and webhook retries, on
the ``gcloud-tasks-emulator`` package, against the emulator's own floor in the same run.

    python bench/tasks_schedule.py                    # ~2.5 minutes
    python bench/tasks_schedule.py --watches 10 --seconds 60

In this process: the emulator (lrobridge.cli.tasks_emulator), a gRPC Operations server whose
operations never complete (tests/support/operations_servers.py), and a bridge in
``LROBRIDGE_WATCH_MODE=tasks`` on a SQLite file, its Flask app on a threaded HTTP server on
127.0.0.1.

1. Watches: ``--watches`` watches per backoff class, each with a constant backoff (initial =
   maximum = D, multiplier 1; the +-20 % jitter stays), for D in 1 s, 5 s, 30 s, 60 s, 10 min
   and 1 h, registered over ``POST /v1/watches``. For ``--seconds`` seconds every poll that a
   task triggers records ``poll start - the time its task was scheduled for``
   (``TaskWatchHandler.stats.lateness``). Classes whose backoff exceeds the run have their
   first poll measured only (the first poll is scheduled at registration: its lateness is the
   same dispatch path, whatever D is); the run is not stretched to an hour. This is the scale
   down: lateness on the emulator does not depend on how far ahead a task was scheduled (it
   compares schedule_time with the clock every 0.1 s), so the long classes are measured at
   their first poll only.
2. Webhook retries: ``--deliveries`` completions pushed to /pubsub/push for one webhook whose
   receiver answers 500 to every first attempt and 200 after; each retry (planned 5 s +-20 %
   later) is a task, and ``RetryTaskHandler.lateness`` records ``attempt start - planned time``.
3. Baseline: the emulator's own lateness in the same run: tasks scheduled 1-5 s ahead to a bare
   HTTP handler that only records the arrival time (no bridge, no store). The bridge's lateness
   minus this floor is what the bridge adds. The drain-only webhook retry it replaces waits for
   the next minute's drain: lateness uniform in [0, 60 s) on paper (p50 30 s, p99 59.4 s).

Prints p50/p99 (and max, count) per class, then the ratios to the floor. Nothing asserts a time.
The machine is shared; the figures say how loaded it was (emulator floor).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import ipaddress
import json
import logging
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from lrobridge import Bridge  # noqa: E402
from lrobridge.cli.emulator import free_port  # noqa: E402
from lrobridge.cli.tasks_emulator import TasksEmulator  # noqa: E402
from lrobridge.config import Settings  # noqa: E402
from lrobridge.wiring.parts import WebhookParts  # noqa: E402
from tests.support.operations_servers import FakeOperations, grpc_operations_server  # noqa: E402
from tests.support.webhooks import Received, Receiver, push_body  # noqa: E402

PROJECT = "bench"
LOCATION = "local"
QUEUES = ("lro-watch", "lro-webhook-retry", "floor")
BACKOFFS = (1.0, 5.0, 30.0, 60.0, 600.0, 3600.0)


class _NullPublisher:
    """Nothing completes in this bench; a publish would be a bug in it."""

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        raise AssertionError("nothing should complete in this bench")

    def close(self) -> None:
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def line(label: str, values: list[float]) -> str:
    if not values:
        return f"{label:<28} no samples"
    return (
        f"{label:<28} n={len(values):<5} p50={percentile(values, 0.5) * 1000:7.1f} ms  "
        f"p99={percentile(values, 0.99) * 1000:7.1f} ms  max={max(values) * 1000:7.1f} ms"
    )


@dataclasses.dataclass
class Floor:
    """Arrival times at a bare HTTP handler, keyed by the task's id."""

    arrivals: dict[str, float] = dataclasses.field(default_factory=dict)


def floor_server(floor: Floor) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived = time.time()
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            floor.arrivals[json.loads(body)["id"]] = arrived
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watches", type=int, default=8, help="watches per backoff class")
    parser.add_argument("--seconds", type=float, default=90.0, help="watch phase length")
    parser.add_argument("--deliveries", type=int, default=20, help="webhook retries")
    parser.add_argument("--floor", type=int, default=60, help="bare tasks for the floor")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # The emulator has no DeleteTask: its gRPC server logs every call to it (the bridge copes).
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

    parent = f"projects/{PROJECT}/locations/{LOCATION}/queues"
    backend = FakeOperations()
    with (
        tempfile.TemporaryDirectory() as folder,
        TasksEmulator(port=free_port(), queues=[f"{parent}/{q}" for q in QUEUES]) as emulator,
        grpc_operations_server(backend) as source,
    ):
        port = free_port()
        settings = dataclasses.replace(
            Settings(),
            project=PROJECT,
            port=port,
            store_url=f"sqlite:///{folder}/bridge.db",
            push_auth="none",
            api_auth="none",
            watch_mode="tasks",
            tasks_location=LOCATION,
            tasks_url=f"http://127.0.0.1:{port}",
            tasks_emulator_host=emulator.host_port,
            tasks_webhook_queue=QUEUES[1],
            webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
            rpc_timeout=5.0,
        )
        bridge = Bridge(
            settings,
            publisher=_NullPublisher(),
            webhooks=WebhookParts(settings, mode="request"),
        )
        handler = bridge.task_watch_endpoint()
        handler.keep_lateness = True
        server = make_server("127.0.0.1", port, bridge.create_app(), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{port}"

        # -- 1. watches ---------------------------------------------------------------------
        by_class: dict[float, list[str]] = {}
        for backoff in BACKOFFS:
            for i in range(args.watches):
                name = f"projects/bench/operations/d{int(backoff)}-{i}"
                backend.add(name)
                response = requests.post(
                    f"{base}/v1/watches",
                    json={
                        "operation": name,
                        "source": source,
                        "backoff": {
                            "initialDelay": f"{backoff:g}s",
                            "maxDelay": f"{backoff:g}s",
                            "multiplier": 1,
                        },
                    },
                    timeout=30,
                )
                response.raise_for_status()
                by_class.setdefault(backoff, []).append(response.json()["name"].split("/")[1])
        print(
            f"watch phase: {args.watches} watches x {len(BACKOFFS)} backoff classes for "
            f"{args.seconds:g} s ...",
            flush=True,
        )
        time.sleep(args.seconds)
        watch_class = {wid: b for b, ids in by_class.items() for wid in ids}
        samples: dict[float, list[float]] = {b: [] for b in BACKOFFS}
        for wid, late in list(handler.stats.lateness):
            samples[watch_class[wid]].append(late)
        for backoff in BACKOFFS:  # stop polling before the webhook phase
            for wid in by_class[backoff]:
                requests.delete(f"{base}/v1/watches/{wid}", timeout=30)

        # -- 2. webhook retries -------------------------------------------------------------
        first_seen: set[str] = set()
        lock = threading.Lock()

        def respond(received: Received) -> tuple[int, dict[str, str], bytes]:
            with lock:
                if received.webhook_id not in first_seen:
                    first_seen.add(received.webhook_id)
                    return 500, {}, b""
            return 200, {}, b""

        with Receiver(respond=respond) as receiver:
            bridge.webhooks.create(receiver.url)
            for i in range(args.deliveries):
                body = push_body(f"projects/bench/operations/hook-{i}", attempt=i)
                requests.post(f"{base}/pubsub/push", json=body, timeout=30).raise_for_status()
            print(f"webhook phase: {args.deliveries} retries planned ~5 s ahead ...", flush=True)
            receiver.wait_for(2 * args.deliveries, timeout=120)
        retries = bridge.webhook_task_endpoint().lateness

        # -- 3. the emulator's own floor ----------------------------------------------------
        floor = Floor()
        bare = floor_server(floor)
        planned: dict[str, float] = {}
        queue = bridge.task_queue
        start = time.time()
        for i in range(args.floor):
            at = start + 1.0 + 4.0 * i / args.floor
            planned[str(i)] = at
            queue.create(
                QUEUES[2],
                f"floor-{i}",
                url=f"http://127.0.0.1:{bare.server_port}/",
                body=json.dumps({"id": str(i)}).encode(),
                schedule_time=at,
            )
        print(f"floor phase: {args.floor} bare tasks 1-5 s ahead ...", flush=True)
        deadline = time.monotonic() + 60
        while len(floor.arrivals) < args.floor and time.monotonic() < deadline:
            time.sleep(0.1)
        floor_lateness = [floor.arrivals[k] - planned[k] for k in floor.arrivals]
        bare.shutdown()
        server.shutdown()
        bridge.close()

    print("\nlateness = time the poll (or attempt) started - time its task was scheduled for")
    print(line("emulator floor (bare)", floor_lateness))
    for backoff in BACKOFFS:
        label = f"watch backoff {backoff:g}s"
        if backoff > args.seconds:
            label += " (1st poll)"
        print(line(label, samples[backoff]))
    every_poll = [v for values in samples.values() for v in values]
    print(line("watch polls, all classes", every_poll))
    print(line("webhook retry (5 s)", retries))
    print("drain-only webhook retry (on paper): p50 30000.0 ms, p99 59400.0 ms")
    floor_p50 = statistics.median(floor_lateness) if floor_lateness else float("nan")
    if every_poll and floor_lateness:
        print(
            f"\nratios to the floor: watch p50 {statistics.median(every_poll) / floor_p50:.2f}x, "
            f"p99 {percentile(every_poll, 0.99) / percentile(floor_lateness, 0.99):.2f}x"
        )
    if retries and floor_lateness:
        print(
            f"webhook retry p50 {statistics.median(retries) / floor_p50:.2f}x the floor; "
            f"{30.0 / statistics.median(retries):.0f}x sooner than the drain's p50"
        )


if __name__ == "__main__":
    main()
