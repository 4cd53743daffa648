"""How many pending operations one watcher process holds, and what it costs, against the
baseline users have today: one google-api-core ``Operation`` future per operation.

    python bench/watch_capacity.py                 # 10,000 operations each side (~6 minutes)
    python bench/watch_capacity.py --ops 2000 --window 30

Both sides watch the same kind of load, one after the other, on a gRPC Operations server in a
process of its own (tests/support/operations_servers.py): ``--ops`` operations that complete at
evenly spread moments over ``--window`` seconds after the start.

* lrobridge: ``lrobridge watcher`` in a child process, watches registered in its SQLite store,
  completions published to the Pub/Sub emulator (started here).
* baseline: a child process with ``operation.from_gapic(...)`` futures over one
  ``operations_v1.OperationsClient`` channel and ``add_done_callback`` on each, which is a
  polling thread per operation (api-core's default polling: 1 s, x1.5, at most 20 s).

Per side it prints CPU seconds and peak RSS of the child (``os.wait4``), polls per second
(GetOperation + WaitOperation calls the server answered, over the time until the last
completion was seen), and the detection lag (moment seen - moment the operation completed)
p50/p99, then the per-operation ratios. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARENT = "projects/bench/locations/l"
# Both sides start watching, then the operations begin to complete LEAD seconds later.
LEAD = 5.0


def _done_times(ops: int, start: float, window: float) -> list[float]:
    return [start + 2.0 + window * (i + 0.5) / ops for i in range(ops)]


def _name(prefix: str, i: int) -> str:
    return f"{PARENT}/operations/{prefix}-{i:06d}"


# -- child: the Operations server ---------------------------------------------------------------


def run_server(args: argparse.Namespace) -> None:
    from tests.support.operations_servers import FakeOperations, grpc_operations_server

    backend = FakeOperations(clock=time.time, max_wait=30.0)
    names = [_name(args.prefix, i) for i in range(args.ops)]
    for name in names:
        backend.add(name)  # pending until START says when each one completes
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with grpc_operations_server(backend, max_workers=512) as url:
        print(url, flush=True)
        command, start = sys.stdin.readline().split()
        assert command == "START"
        for name, done_at in zip(
            names, _done_times(args.ops, float(start), args.window), strict=True
        ):
            backend.add(name, done_at=done_at)
        while not stop.wait(0.5):
            pass
        calls = {m: backend.calls(m) for m in ("GetOperation", "WaitOperation", "ListOperations")}
        print(json.dumps(calls), flush=True)


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
    all_seen.wait(timeout=args.window + 300)
    print(
        json.dumps({"started": started, "seen": {str(k): v for k, v in seen.items()}}), flush=True
    )
    os._exit(0)  # the polling threads are not daemons; the measurement is over


# -- parent --------------------------------------------------------------------------------------


def _wait4(process: subprocess.Popen[str]) -> tuple[float, float]:
    """CPU seconds and peak RSS (MiB) of a finished child."""
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _server(ops: int, prefix: str, window: float) -> tuple[subprocess.Popen[str], str]:
    args = ["--ops", str(ops), "--prefix", prefix, "--window", str(window)]
    process = subprocess.Popen(
        [sys.executable, __file__, "_server", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def _start(server: subprocess.Popen[str]) -> float:
    """Tell the server when the operations complete: from LEAD seconds on."""
    start = time.time() + LEAD
    assert server.stdin is not None
    server.stdin.write(f"START {start}\n")
    server.stdin.flush()
    return start


def _stop_server(process: subprocess.Popen[str]) -> dict[str, int]:
    process.send_signal(signal.SIGTERM)
    assert process.stdout is not None
    calls = json.loads(process.stdout.readline())
    process.wait(timeout=30)
    return calls  # type: ignore[no-any-return]


def measure_bridge(ops: int, window: float, emulator_host: str) -> dict[str, float]:
    from lrobridge.adapters.pubsub import PubSubAdmin
    from lrobridge.core.backoff import Backoff
    from lrobridge.storage.sqlite.store import SqliteStore

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="lrobridge-bench-"))
    store_path = workdir / "bench.db"
    server, url = _server(ops, "bridge", window)
    store = SqliteStore(str(store_path))
    for i in range(ops):
        store.create_watch(
            source=url,
            operation=_name("bridge", i),
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=time.time(),
        )
    project = "bench"
    env = {
        **os.environ,
        "PUBSUB_EMULATOR_HOST": emulator_host,
        "GOOGLE_CLOUD_PROJECT": project,
        "LROBRIDGE_STORE": f"sqlite:///{store_path}",
        "LROBRIDGE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    with PubSubAdmin() as admin:
        admin.ensure_topic(f"projects/{project}/topics/lro-completed")
    began = time.time()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "lrobridge.cli.main", "watcher"], env=env, text=True
    )
    start = _start(server)
    deadline = time.time() + window + 300
    while time.time() < deadline:
        done = store._read("SELECT COUNT(*) FROM watches WHERE state = 3")[0][0]
        if done >= ops:
            break
        time.sleep(0.5)
    last_seen = time.time()
    watcher.send_signal(signal.SIGTERM)
    cpu, rss = _wait4(watcher)  # type: ignore[arg-type]
    calls = _stop_server(server)
    done_at = _done_times(ops, start, window)
    rows = store._read("SELECT name, update_time FROM operations WHERE done = 1")
    lags = [t - done_at[int(name.rsplit("-", 1)[1])] for name, t in rows]
    polls = store._read("SELECT SUM(polls) FROM watches")[0][0] or 0
    store.close()
    return {
        "ops": ops,
        "seen": len(rows),
        "cpu_s": cpu,
        "rss_mib": rss,
        "polls_per_s": (calls["GetOperation"] + calls["WaitOperation"]) / (last_seen - began),
        "polls_total": polls,
        "lag_p50": _percentile(lags, 0.5),
        "lag_p99": _percentile(lags, 0.99),
    }


def measure_baseline(ops: int, window: float) -> dict[str, float]:
    server, url = _server(ops, "baseline", window)
    began = time.time()
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "_baseline",
            "--ops",
            str(ops),
            "--target",
            url.removeprefix("grpc://"),
            "--window",
            str(window),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    start = _start(server)
    assert child.stdout is not None
    result = json.loads(child.stdout.readline())
    last_seen = time.time()
    cpu, rss = _wait4(child)  # type: ignore[arg-type]
    calls = _stop_server(server)
    done_at = _done_times(ops, start, window)
    seen = {int(k): v for k, v in result["seen"].items()}
    lags = [t - done_at[i] for i, t in seen.items()]
    return {
        "ops": result["started"],
        "seen": len(seen),
        "cpu_s": cpu,
        "rss_mib": rss,
        "polls_per_s": calls["GetOperation"] / (last_seen - began),
        "polls_total": calls["GetOperation"],
        "lag_p50": _percentile(lags, 0.5) if lags else float("nan"),
        "lag_p99": _percentile(lags, 0.99) if lags else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="role")
    server = sub.add_parser("_server")
    server.add_argument("--ops", type=int, required=True)
    server.add_argument("--prefix", required=True)
    server.add_argument("--window", type=float, required=True)
    baseline = sub.add_parser("_baseline")
    baseline.add_argument("--ops", type=int, required=True)
    baseline.add_argument("--target", required=True)
    baseline.add_argument("--window", type=float, required=True)
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--baseline-ops", type=int, default=None, help="default: --ops")
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    if args.role == "_server":
        return run_server(args)
    if args.role == "_baseline":
        return run_baseline(args)

    from lrobridge.cli.emulator import PubSubEmulator

    print(f"watch_capacity: {args.ops} operations completing over {args.window:.0f}s", flush=True)
    with PubSubEmulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host_port
        bridge = measure_bridge(args.ops, args.window, emulator.host_port)
    base = measure_baseline(args.baseline_ops or args.ops, args.window)
    print()
    print(
        f"{'':10} {'ops':>6} {'seen':>6} {'CPU s':>7} {'CPU ms/op':>10} {'peak RSS MiB':>13} "
        f"{'KiB/op':>7} {'polls/s':>8} {'lag p50 s':>10} {'lag p99 s':>10}"
    )
    for label, row in (("lrobridge", bridge), ("baseline", base)):
        print(
            f"{label:10} {row['ops']:6.0f} {row['seen']:6.0f} {row['cpu_s']:7.1f} "
            f"{1000 * row['cpu_s'] / row['ops']:10.2f} {row['rss_mib']:13.1f} "
            f"{1024 * row['rss_mib'] / row['ops']:7.1f} {row['polls_per_s']:8.1f} "
            f"{row['lag_p50']:10.2f} {row['lag_p99']:10.2f}"
        )
    cpu_ratio = (base["cpu_s"] / base["ops"]) / (bridge["cpu_s"] / bridge["ops"])
    rss_ratio = (base["rss_mib"] / base["ops"]) / (bridge["rss_mib"] / bridge["ops"])
    print(f"\nper operation, baseline / lrobridge: CPU x{cpu_ratio:.1f}, peak RSS x{rss_ratio:.1f}")
    print(f"median lag: lrobridge {bridge['lag_p50']:.2f}s vs baseline {base['lag_p50']:.2f}s")


if __name__ == "__main__":
    main()
