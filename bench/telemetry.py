"""Benchmark: what telemetry costs, off and on, against the code without it (same run).

Two workloads, each run in a fresh subprocess per round so no variant inherits another's
providers or warm caches:

* **push ingest**: completion pushes POSTed through the real Flask app (werkzeug's test client,
  so no socket noise) to ``/pubsub/push``, SQLite store in a temporary folder, one callback
  registered (each push claims and finishes it in the ledger: the real per-push work);
  figure: pushes per second.
* **poll**: the watcher's ``poll`` of pending operations from an in-memory source (a store
  transaction per poll, no network); figure: process CPU microseconds per poll.

Variants, interleaved round by round:

* ``baseline``: the code without telemetry, exported from git (``--baseline-ref``, default the
  commit before telemetry landed) into a temporary folder;
* ``off``: this tree, telemetry off (the default: no OTEL_* variable set);
* ``tracing``: this tree with the SDK on: ``TracerProvider`` + ``BatchSpanProcessor`` with an
  exporter that drops the spans, Flask instrumented (what OTLP export costs in-process, minus
  the network);
* ``tracing+metrics``: the same plus a ``MeterProvider`` recording every metric.

Targets: ``off`` costs nothing measurable against ``baseline``; ``tracing`` loses at most 10%
of push-ingest throughput against ``off``. Medians of the rounds are printed with each round's
figures; the machine is shared, so spread between rounds is noise, not signal.

    python bench/telemetry.py            # about two minutes on 2 cores
    python bench/telemetry.py --quick    # about half a minute
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("baseline", "off", "tracing", "tracing+metrics")
# The last commit before telemetry landed ("Layout by role"); its watcher is the thread-pool
# engine, so only the push figures compare with it, the poll figures compare off and on.
BASELINE_REF = "8d47587"


# -- the worker (runs in a subprocess) -------------------------------------------------------


def _push_body(name: str) -> dict[str, Any]:
    import base64
    import datetime

    from google.longrunning import operations_proto_pb2 as operations_pb2

    from lrobridge.core import codec

    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=True))
    data, payload_format = codec.encode_payload(snapshot, "binary")
    source = "grpc://127.0.0.1:9"
    attributes = codec.completion_attributes(
        snapshot,
        outcome="succeeded",
        source=source,
        event_id=codec.event_id(source, name, "succeeded"),
        payload_format=payload_format,
        time=datetime.datetime.now(datetime.UTC),
    )
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": name,
            "publishTime": "2030-01-01T00:00:00Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }


def _telemetry(variant: str) -> None:
    if variant in ("baseline", "off"):
        return
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from lrobridge.telemetry import setup

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Dropping()))
    meter_provider = None
    if variant == "tracing+metrics":
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    setup.use_for_tests(tracer_provider, meter_provider)


def worker_push(variant: str, count: int, folder: str) -> dict[str, float]:
    import dataclasses

    from lrobridge import Bridge
    from lrobridge.config import Settings
    from lrobridge.storage.sqlite.store import SqliteStore

    _telemetry(variant)
    settings = dataclasses.replace(Settings(), push_auth="none", project="p")
    bridge = Bridge(settings, store=SqliteStore(os.path.join(folder, "push.db")))
    bridge.on_complete(name="noop")(lambda event: None)
    client = bridge.create_app().test_client()
    bodies = [json.dumps(_push_body(f"operations/{variant}-{i}")) for i in range(count + 50)]
    headers = {"Content-Type": "application/json"}
    for body in bodies[:50]:  # warm-up
        assert client.post("/pubsub/push", data=body, headers=headers).status_code == 204
    started, cpu = time.perf_counter(), time.process_time()
    for body in bodies[50:]:
        assert client.post("/pubsub/push", data=body, headers=headers).status_code == 204
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    bridge.close()
    return {"pushes_per_second": count / elapsed, "cpu_us_per_push": used / count * 1e6}


def worker_poll(variant: str, count: int, folder: str) -> dict[str, float]:
    import dataclasses
    from concurrent.futures import Future

    from google.longrunning import operations_proto_pb2 as operations_pb2

    from lrobridge.config import Settings
    from lrobridge.core import codec
    from lrobridge.core.backoff import Backoff
    from lrobridge.storage.sqlite.store import SqliteStore
    from lrobridge.watching.poller import Watcher

    _telemetry(variant)

    class Source:
        url = "grpc://bench:1"

        def get_operation(self, name: str, *, timeout: float) -> codec.Snapshot:
            return codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=False))

        def wait_operation(self, name: str, *, wait: float, timeout: float) -> codec.Snapshot:
            return self.get_operation(name, timeout=timeout)

        def close(self) -> None:
            pass

    class Publisher:
        def publish(self, data: bytes, attributes: dict[str, str], key: str) -> Future[str]:
            future: Future[str] = Future()
            future.set_result("1")
            return future

        def close(self) -> None:
            pass

    store = SqliteStore(os.path.join(folder, "poll.db"))
    source = Source()
    settings = dataclasses.replace(Settings(), long_poll_slots=0)
    watcher = Watcher(
        store=store,
        sources=lambda url: source,  # type: ignore[arg-type,return-value]
        publisher=Publisher(),
        settings=settings,
        clock=lambda: 0.0,
    )
    for i in range(count):
        store.create_watch(
            source=Source.url,
            operation=f"operations/p{i}",
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=0.0,
        )
    watches = store.claim_due_polls(now=0.0, limit=count, lease=60.0)
    legacy = getattr(watcher, "_poll_safely", None)  # the thread-pool engine of the baseline
    if legacy is not None:
        for watch in watches[:50]:  # warm-up
            legacy(watch)
        cpu = time.process_time()
        for watch in watches[50:]:
            legacy(watch)
        used = time.process_time() - cpu
    else:
        # The asyncio engine: one poll after another on one loop (where it opens the span).
        import asyncio

        async def poll_all(batch: list[Any]) -> None:
            for watch in batch:
                await watcher._poll_once(watch)

        asyncio.run(poll_all(watches[:50]))
        cpu = time.process_time()
        asyncio.run(poll_all(watches[50:]))
        used = time.process_time() - cpu
    store.close()
    return {"cpu_us_per_poll": used / (len(watches) - 50) * 1e6}


# -- the driver ------------------------------------------------------------------------------


def export_baseline(ref: str, into: pathlib.Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "lrobridge"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def run_worker(variant: str, workload: str, count: int, baseline: pathlib.Path) -> dict[str, float]:
    code_root = baseline if variant == "baseline" else ROOT
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{code_root}{os.pathsep}{ROOT / 'bench'}"
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, sys, telemetry as t; "
                f"print(json.dumps(t.worker_{workload}({variant!r}, {count}, {folder!r})))",
            ],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    if out.returncode != 0:
        raise SystemExit(f"{variant} {workload} worker failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and pushes")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument(
        "--baseline-ref",
        default=BASELINE_REF,
        help="git ref without telemetry (default: the commit before it landed)",
    )
    parser.add_argument("--only", choices=("push", "poll"), help="one workload only")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    pushes, polls = (300, 300) if args.quick else (800, 800)
    load = os.getloadavg()
    print(f"telemetry bench: {rounds} rounds, {pushes} pushes and {polls} polls per worker")
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} "
          "CPUs (shared machine: figures are medians of interleaved rounds)")  # fmt: skip
    with tempfile.TemporaryDirectory() as exported:
        baseline = pathlib.Path(exported)
        export_baseline(args.baseline_ref, baseline)
        figures: dict[tuple[str, str], list[float]] = {}  # (figure, variant) -> rounds
        for number in range(rounds):
            line = []
            for workload, count in (("push", pushes), ("poll", polls)):
                if args.only and workload != args.only:
                    continue
                for variant in VARIANTS:
                    result = run_worker(variant, workload, count, baseline)
                    for figure, value in result.items():
                        figures.setdefault((figure, variant), []).append(value)
                    shown = ", ".join(f"{v:.0f}" for v in result.values())
                    line.append(f"{workload}/{variant} {shown}")
            print(f"round {number + 1}: " + ", ".join(line), flush=True)
    median = {key: statistics.median(values) for key, values in figures.items()}
    print()
    if args.only != "poll":
        report_push(median, figures)
    if args.only != "push":
        report_poll(median, figures)
    return 0


def _table(
    title: str,
    figure: str,
    unit: str,
    median: dict[tuple[str, str], float],
    figures: dict[tuple[str, str], list[float]],
) -> None:
    print(title)
    base = median[(figure, "baseline")]
    for variant in VARIANTS:
        value, spread = median[(figure, variant)], figures[(figure, variant)]
        print(f"  {variant:16s} {value:9.1f} {unit}  x{value / base:.3f} of baseline"
              f"  (rounds {min(spread):.1f}-{max(spread):.1f})")  # fmt: skip


def report_push(
    median: dict[tuple[str, str], float], figures: dict[tuple[str, str], list[float]]
) -> None:
    _table("push ingest, pushes/s (higher is better):", "pushes_per_second", "/s", median, figures)
    _table("push ingest, CPU µs per push (lower is better; the noise-robust figure):",
           "cpu_us_per_push", "µs", median, figures)  # fmt: skip
    off, on = median[("pushes_per_second", "off")], median[("pushes_per_second", "tracing")]
    cpu_off, cpu_on = median[("cpu_us_per_push", "off")], median[("cpu_us_per_push", "tracing")]
    print(f"  tracing on vs off: {100 * (1 - on / off):+.1f}% pushes/s lost; "
          f"{100 * (1 - cpu_off / cpu_on):+.1f}% by CPU per push (target <= 10%)")  # fmt: skip
    base = median[("cpu_us_per_push", "baseline")]
    print(f"  off vs baseline: {100 * (cpu_off / base - 1):+.1f}% CPU per push")


def report_poll(
    median: dict[tuple[str, str], float], figures: dict[tuple[str, str], list[float]]
) -> None:
    _table("poll, CPU µs per poll (lower is better):", "cpu_us_per_poll", "µs", median, figures)


if __name__ == "__main__":
    sys.exit(main())
