"""How many pending operations one watcher process holds, what it costs and how soon it tells
a completion, on three kinds of Operations server, against the baseline users have today: one
google-api-core ``Operation`` future per operation. One run measures every side:

    python bench/watch_capacity.py                       # 100,000 watches, 10,000 futures
    python bench/watch_capacity.py --ops 5000 --baseline-ops 2000 --window 60
    python bench/watch_capacity.py --quick               # a smoke run of a few hundred (~1 min)

Each side gets a fresh Operations server in a process of its own (tests/support/
operations_servers.py, ``grpc.aio``, so 100,000 held waits are coroutines; its CPU is not
counted): ``--ops`` operations that complete at evenly spread moments over ``--window``
seconds, the first LEAD seconds after the side starts. Server kinds (``--kinds``):

* ``get``: GetOperation only (WaitOperation and ListOperations answer UNIMPLEMENTED);
* ``wait``: GetOperation and WaitOperation (ListOperations UNIMPLEMENTED);
* ``list``: GetOperation and ListOperations with the ``done = true`` filter (no Wait).

lrobridge side: ``python -m lrobridge.cli watcher`` as a child process (``--watchers`` N: N of
them sharing the store by lease; CPU and RSS are their sums), its watches registered
beforehand in a SQLite store in a temporary folder, completions published to a Pub/Sub emulator
this script starts on 127.0.0.1. A subscriber in this process pulls them; the detection lag of
an operation is the moment its completion reached Pub/Sub (the message's publish time) minus
the moment the server completed it.

Baseline: a child process with ``operation.from_gapic(...)`` futures over one
``operations_v1.OperationsClient`` channel and ``add_done_callback`` on each, which starts a
polling thread per operation (api-core's default polling: 1 s, x1.5, at most 20 s), against a
``get`` server; its lag is callback time minus completion time. ``--baseline-ops`` (10,000 by
default) is what this machine's thread limit allows; fewer start if threads run out.

Per side: CPU share of one core (CPU seconds / the child's life), CPU ms per operation, peak
RSS and KiB per operation (``os.wait4``), polls per second (Get + Wait + List calls the server
answered / the child's life), lag p50/p99 of the completions seen, and the ratios against the
baseline. ``late p99``: how far behind its own schedule a side told a completion, the p99 of
lag minus the current backoff delay at the completion (from the side's start, upper-bounded
for jitter; the futures' own polling backoff for the baseline): at most ~0 when every poll is
on time, whatever the backoff; the Get-only target is "lag <= backoff + 1 s". The ``wait`` side
also prints how many completions were answered by a held long poll (the server records each
operation that completed while its WaitOperation was held) and the lag p50/p99 in ms of just
those ("held lag"): the all-watch lag mixes in the watches that had no long-poll slot and were
polled with Get. A held lag is split in two: the server's share (completed to answered, as the
server saw it just before its answer was serialised; the server shares this machine's cores
with the watcher) and the bridge's (answered to in Pub/Sub, the answer's trip included). Every
side stops by itself: once every completion was seen, or ``--window`` + LEAD + ``--grace``
seconds after it started. Nothing here asserts a time.

The emulator (a JVM) is warmed up with 3,000 one-message Publish requests before the first
side, so its start-up does not land on that side's first completions. ``--dump DIR`` writes,
per side, every completion's (seconds after the side started, lag, answered by a held long
poll, the server's share of that lag or null) to ``DIR/KIND.json``, to see which part of a run
a tail comes from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARENT = "projects/bench/locations/l"
KINDS = ("get", "wait", "list")
PROJECT = "bench-capacity"
FIGURES = (
    "CPU share",
    "CPU ms/op",
    "peak RSS MiB",
    "KiB/op",
    "polls/s",
    "lag p50 s",
    "lag p99 s",
    "late p99 s",
)


def _allowed_lag(
    since_start: float,
    *,
    initial: float = 1.0,
    multiplier: float = 1.5,
    maximum: float = 60.0,
    draw: tuple[float, float] = (0.8, 1.2),
) -> float:
    """The longest a poller may take to see a completion that happens ``since_start`` seconds
    after it started, were every poll on time: the current delay of its backoff (each delay
    drawn from ``draw`` times the base), upper-bounded: the soonest the schedule can have reached
    that attempt, and the largest draw. The defaults are lrobridge's default backoff; the
    api-core futures sleep uniform(0, d) with d from 1 s, x1.5, at most 20 s."""
    low, high = draw
    attempt, t = 0, 0.0
    while True:
        base = min(maximum, initial * multiplier**attempt)
        t += base * low
        if t >= since_start or base >= maximum:
            return min(maximum, base * high)
        attempt += 1


def _done_times(ops: int, start: float, window: float) -> list[float]:
    return [start + window * (i + 0.5) / ops for i in range(ops)]


def _name(prefix: str, i: int) -> str:
    return f"{PARENT}/operations/{prefix}-{i:06d}"


def _index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


# -- child: the Operations server ---------------------------------------------------------------


def run_server(args: argparse.Namespace) -> None:
    from tests.support.operations_servers import FakeOperations, aio_grpc_operations_server

    backend = FakeOperations(clock=time.time, max_wait=30.0)
    backend.wait_unimplemented = args.kind != "wait"
    backend.list_unimplemented = args.kind != "list"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with aio_grpc_operations_server(backend) as url:
        print(url, flush=True)
        command, start = sys.stdin.readline().split()
        assert command == "START"
        names = [_name(args.prefix, i) for i in range(args.ops)]
        backend.add_many(names, _done_times(args.ops, float(start), args.window))
        print("READY", flush=True)
        while not stop.wait(0.5):
            pass
        calls = {m: backend.calls(m) for m in ("GetOperation", "WaitOperation", "ListOperations")}
        print(json.dumps(calls), flush=True)
        # The operations whose WaitOperation was held when they completed (answered by it), and
        # when the server answered each.
        print(json.dumps(backend.held_answered_at), flush=True)


# -- child: the baseline --------------------------------------------------------------------------


def run_baseline(args: argparse.Namespace) -> None:
    import grpc
    from google.api_core import operation, operations_v1
    from google.longrunning import operations_proto_pb2 as operations_pb2
    from google.protobuf import empty_pb2

    channel = grpc.insecure_channel(args.target)
    client = operations_v1.OperationsClient(channel)
    seen: dict[int, float] = {}
    lock = threading.Lock()
    all_seen = threading.Event()
    started = 0

    def callback_for(i: int):  # type: ignore[no-untyped-def]
        def on_done(future: object) -> None:
            with lock:
                seen[i] = time.time()
                if len(seen) == started:
                    all_seen.set()

        return on_done

    futures = []
    for i in range(args.ops):
        op = operations_pb2.Operation(name=_name("baseline", i))
        future = operation.from_gapic(op, client, empty_pb2.Empty)
        try:
            future.add_done_callback(callback_for(i))
        except RuntimeError:  # "can't start new thread": the machine's limit
            break
        futures.append(future)
        started += 1
    print(json.dumps({"started": started}), flush=True)
    all_seen.wait(timeout=args.deadline)
    with lock:
        result = {str(k): v for k, v in seen.items()}
    print(json.dumps({"seen": result}), flush=True)
    os._exit(0)  # the polling threads are not daemons; the measurement is over


# -- parent --------------------------------------------------------------------------------------


def _wait4(process: subprocess.Popen[str]) -> tuple[float, float]:
    """CPU seconds and peak RSS (MiB) of a finished child."""
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Server:
    """An Operations server child: started empty, given its operations by :meth:`start`."""

    def __init__(self, kind: str, ops: int, prefix: str, window: float) -> None:
        args = ["--kind", kind, "--ops", str(ops), "--prefix", prefix, "--window", str(window)]
        self.process = subprocess.Popen(
            [sys.executable, __file__, "_server", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("grpc://127.0.0.1:"):
            raise SystemExit(f"the {kind} server did not start")

    def start(self, lead: float) -> float:
        """The operations complete from ``lead`` seconds on; returns that moment."""
        start = time.time() + lead
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"START {start}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "READY"
        return start

    def stop(self) -> tuple[dict[str, int], dict[str, float]]:
        """The calls answered per method, and the operations that completed while their
        WaitOperation was held, each with the moment the server answered it."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        calls: dict[str, int] = json.loads(self.process.stdout.readline())
        held: dict[str, float] = json.loads(self.process.stdout.readline())
        self.process.wait(timeout=30)
        return calls, held


class _Completions:
    """A pull subscriber recording, per operation, when its completion reached Pub/Sub."""

    def __init__(self, subscription: str) -> None:
        from google.cloud import pubsub_v1

        self.published: dict[str, float] = {}
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._client = pubsub_v1.SubscriberClient()
        self._future = self._client.subscribe(
            subscription,
            self._on_message,
            flow_control=pubsub_v1.types.FlowControl(max_messages=5000),
        )

    def _on_message(self, message: Any) -> None:
        operation = message.attributes.get("operation", "")
        with self.changed:
            self.published.setdefault(operation, message.publish_time.timestamp())
            self.changed.notify_all()
        message.ack()

    def wait_for(self, count: int, deadline: float) -> None:
        with self.changed:
            while len(self.published) < count and time.time() < deadline:
                self.changed.wait(min(1.0, max(deadline - time.time(), 0.01)))

    def close(self) -> None:
        self._future.cancel()
        with contextlib.suppress(Exception):  # cancelled: the usual end of a streaming pull
            self._future.result(timeout=10)
        self._client.close()


def _register(store_path: pathlib.Path, url: str, ops: int, prefix: str) -> None:
    from lrobridge.core.backoff import Backoff
    from lrobridge.storage.sqlite.store import SqliteStore

    store = SqliteStore(str(store_path))
    now = time.time()
    for i in range(ops):
        store.create_watch(
            source=url,
            operation=_name(prefix, i),
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=now,
        )
    store.close()


def _subscribed(name: str) -> tuple[str, _Completions]:
    """Topic ``name`` and a pull subscription of the same name, recording what arrives."""
    from lrobridge.adapters.pubsub import PubSubAdmin

    topic = f"projects/{PROJECT}/topics/{name}"
    subscription = f"projects/{PROJECT}/subscriptions/{name}"
    with PubSubAdmin() as admin:
        admin.ensure_topic(topic)
        admin.ensure_pull_subscription(subscription, topic, enable_message_ordering=False)
    return topic, _Completions(subscription)


def warm_emulator(messages: int = 3000) -> float:
    """Publish and pull ``messages`` through the emulator (a JVM) first, one per Publish
    request as a watcher sends prompt completions, so its compiling and sizing does not land
    on the first side measured (a Pub/Sub that has been up for a while does not do that);
    the seconds it took."""
    from lrobridge.adapters.pubsub import PubSubPublisher

    began = time.time()
    topic, pulled = _subscribed("warm-up")
    publisher = PubSubPublisher(topic)
    try:
        futures = [
            future
            for i in range(messages)
            for future in publisher.publish_batch([(b"{}", {"operation": f"warm-{i}"})])
        ]
        for future in futures:
            future.result(timeout=60)
        pulled.wait_for(messages, time.time() + 60)
    finally:
        publisher.close()
        pulled.close()
    return time.time() - began


def measure_bridge(kind: str, args: argparse.Namespace, emulator_host: str) -> dict[str, float]:
    ops, window = args.ops, args.window
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"lrobridge-capacity-{kind}-"))
    store_path = workdir / "watches.db"
    server = _Server(kind, ops, kind, window)
    print(f"  {kind}: registering {ops} watches ...", flush=True)
    registering = time.time()
    _register(store_path, server.url, ops, kind)
    print(f"  {kind}: registered in {time.time() - registering:.0f}s", flush=True)
    _, completions = _subscribed(f"lro-{kind}")
    env = {
        **os.environ,
        "PUBSUB_EMULATOR_HOST": emulator_host,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "LROBRIDGE_TOPIC": f"lro-{kind}",
        "LROBRIDGE_STORE": f"sqlite:///{store_path}",
        "LROBRIDGE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    start = server.start(args.lead)
    began = time.time()
    watchers = [
        subprocess.Popen([sys.executable, "-m", "lrobridge.cli", "watcher"], env=env, text=True)
        for _ in range(args.watchers)
    ]
    print(
        f"  {kind}: {len(watchers)} watcher process(es) started, completions from "
        f"{args.lead:.0f}s on",
        flush=True,
    )
    completions.wait_for(ops, start + window + args.grace)
    for watcher in watchers:
        watcher.send_signal(signal.SIGTERM)
    usage = [_wait4(watcher) for watcher in watchers]  # type: ignore[arg-type]
    cpu, rss = sum(u[0] for u in usage), sum(u[1] for u in usage)
    life = time.time() - began
    calls, held = server.stop()
    completions.close()
    done_at = _done_times(ops, start, window)
    lags = [t - done_at[_index(name)] for name, t in completions.published.items() if name]
    late = [
        t - done_at[_index(name)] - _allowed_lag(done_at[_index(name)] - began)
        for name, t in completions.published.items()
        if name
    ]
    row = _row(ops, len(lags), cpu, rss, sum(calls.values()), life, lags, late)
    if args.dump:
        samples = [
            (
                done_at[_index(name)] - began,
                t - done_at[_index(name)],
                name in held,
                held[name] - done_at[_index(name)] if name in held else None,
            )
            for name, t in completions.published.items()
            if name
        ]
        path = pathlib.Path(args.dump) / f"{kind}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(sorted(samples)))
        print(
            f"  {kind}: (completed s after start, lag s, held, server's share s) per "
            f"completion in {path}"
        )
    if kind == "wait":
        published = completions.published
        answered = [(n, t) for n, t in held.items() if n in published]
        held_lags = [published[n] - done_at[_index(n)] for n, _ in answered]
        row["held"] = len(held_lags)
        row["held lag p50 ms"] = 1000 * _percentile(held_lags, 0.5)
        row["held lag p99 ms"] = 1000 * _percentile(held_lags, 0.99)
        # The two shares of a held lag: the server's (completed -> answered; the benchmark's
        # server shares this machine's cores) and the bridge's (answered -> in Pub/Sub).
        server_lags = [t - done_at[_index(n)] for n, t in answered]
        bridge_lags = [published[n] - t for n, t in answered]
        row["server share p99 ms"] = 1000 * _percentile(server_lags, 0.99)
        row["bridge share p50 ms"] = 1000 * _percentile(bridge_lags, 0.5)
        row["bridge share p99 ms"] = 1000 * _percentile(bridge_lags, 0.99)
    return row


def measure_baseline(args: argparse.Namespace) -> dict[str, float]:
    ops, window = args.baseline_ops, args.window
    server = _Server("get", ops, "baseline", window)
    deadline = args.lead + window + args.grace
    start = server.start(args.lead)
    began = time.time()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "_baseline",
            "--ops",
            str(ops),
            "--target",
            server.url.removeprefix("grpc://"),
            "--deadline",
            str(deadline),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    started = json.loads(child.stdout.readline())["started"]
    seen = {int(k): v for k, v in json.loads(child.stdout.readline())["seen"].items()}
    cpu, rss = _wait4(child)  # type: ignore[arg-type]
    life = time.time() - began
    calls, _ = server.stop()
    done_at = _done_times(ops, start, window)
    lags = [t - done_at[i] for i, t in seen.items()]
    late = [
        t - done_at[i] - _allowed_lag(done_at[i] - began, maximum=20.0, draw=(0.0, 1.0))
        for i, t in seen.items()
    ]
    return _row(started, len(seen), cpu, rss, sum(calls.values()), life, lags, late)


def _row(
    ops: int,
    seen: int,
    cpu: float,
    rss: float,
    calls: int,
    life: float,
    lags: list[float],
    late: list[float] | None = None,
) -> dict[str, float]:
    return {
        "ops": ops,
        "seen": seen,
        "CPU share": cpu / life,
        "CPU ms/op": 1000 * cpu / max(ops, 1),
        "peak RSS MiB": rss,
        "KiB/op": 1024 * rss / max(ops, 1),
        "polls/s": calls / life,
        "lag p50 s": _percentile(lags, 0.5),
        "lag p99 s": _percentile(lags, 0.99),
        "late p99 s": _percentile(late, 0.99) if late is not None else float("nan"),
    }


def report(rows: dict[str, dict[str, float]]) -> None:
    print()
    header = f"{'side':16} {'ops':>7} {'seen':>7} " + " ".join(f"{f:>12}" for f in FIGURES)
    print(header)
    for label, row in rows.items():
        print(
            f"{label:16} {row['ops']:7.0f} {row['seen']:7.0f} "
            + " ".join(f"{row[f]:12.2f}" for f in FIGURES)
        )
    for label, row in rows.items():
        if "held" in row:
            print(
                f"{label}: {row['held']:.0f} completions answered by a held long poll, "
                f"held lag p50 {row['held lag p50 ms']:.1f} ms, "
                f"p99 {row['held lag p99 ms']:.1f} ms; of which the server's (completed to "
                f"answered) p99 {row['server share p99 ms']:.1f} ms and the bridge's (answered "
                f"to Pub/Sub) p50 {row['bridge share p50 ms']:.1f} ms, "
                f"p99 {row['bridge share p99 ms']:.1f} ms"
            )
    base = rows["baseline"]
    print("\nratios, baseline / side (per operation; > 1 means the side is cheaper or sooner):")
    for label, row in rows.items():
        if label == "baseline":
            continue
        cpu = base["CPU ms/op"] / row["CPU ms/op"] if row["CPU ms/op"] else float("inf")
        rss = base["KiB/op"] / row["KiB/op"] if row["KiB/op"] else float("inf")
        p50 = base["lag p50 s"] / row["lag p50 s"] if row["lag p50 s"] else float("inf")
        p99 = base["lag p99 s"] / row["lag p99 s"] if row["lag p99 s"] else float("inf")
        print(
            f"{label:16} CPU/op x{cpu:.2f}   RSS/op x{rss:.2f}   "
            f"lag p50 x{p50:.2f}   lag p99 x{p99:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="role")
    server = sub.add_parser("_server")
    server.add_argument("--kind", choices=KINDS, required=True)
    server.add_argument("--ops", type=int, required=True)
    server.add_argument("--prefix", required=True)
    server.add_argument("--window", type=float, required=True)
    baseline = sub.add_parser("_baseline")
    baseline.add_argument("--ops", type=int, required=True)
    baseline.add_argument("--target", required=True)
    baseline.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--ops", type=int, default=100_000, help="watches per server kind")
    parser.add_argument("--baseline-ops", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=120.0, help="seconds of completions")
    parser.add_argument("--kinds", default=",".join(KINDS), help="of get,wait,list")
    parser.add_argument("--lead", type=float, default=10.0, help="seconds before the first")
    parser.add_argument(
        "--grace", type=float, default=120.0, help="seconds after the last before giving up"
    )
    parser.add_argument(
        "--watchers",
        type=int,
        default=1,
        help="watcher processes per side, sharing its SQLite store by lease (figures summed)",
    )
    parser.add_argument(
        "--dump", metavar="DIR", help="write each side's lag per completion to DIR/KIND.json"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few hundred")
    args = parser.parse_args()
    if args.role == "_server":
        return run_server(args)
    if args.role == "_baseline":
        return run_baseline(args)
    if args.quick:
        args.ops, args.baseline_ops, args.window, args.lead, args.grace = 100, 100, 3.0, 3.0, 15.0
    if args.watchers < 1:
        parser.error("--watchers: at least 1")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        parser.error(f"--kinds: choose among {','.join(KINDS)}")

    from lrobridge.cli.emulator import PubSubEmulator

    print(
        f"watch_capacity: {args.ops} watches per server kind ({','.join(kinds)}) on "
        f"{args.watchers} watcher process(es), {args.baseline_ops} api-core futures; "
        f"completions over {args.window:.0f}s",
        flush=True,
    )
    rows: dict[str, dict[str, float]] = {}
    with PubSubEmulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host_port
        print(f"  warmed the emulator up in {warm_emulator():.0f}s", flush=True)
        for kind in kinds:
            rows[f"lrobridge {kind}"] = measure_bridge(kind, args, emulator.host_port)
    print("  baseline: api-core futures ...", flush=True)
    rows["baseline"] = measure_baseline(args)
    report(rows)


if __name__ == "__main__":
    main()
