"""The bridge as an Operations server: request rates, and WaitOperation with 1,000 waiters
against the baseline of waiters that poll GetOperation every second.

    python bench/operations_api.py                     # ~2 minutes
    python bench/operations_api.py --waiters 300 --window 10

The facade runs in child processes on one SQLite store holding ``--ops`` produced operations
under one parent: the gRPC server (``Bridge.start_grpc``) and the REST app under waitress
(``lrobridge serve``, the production server). Load comes from this process.

1. Requests per second for ``--seconds`` each: GetOperation and ListOperations (page of 50)
   over gRPC (8 client threads) and REST (8 threads, one HTTP session each).
2. ``--waiters`` running operations, each with a caller; the operations complete at spread
   moments over ``--window`` seconds (completed by the producer kit inside the gRPC server's
   process, as a producing service would):
   * lrobridge: every caller makes one WaitOperation (timeout above the window) and returns
     when its operation completes;
   * baseline: every caller polls GetOperation once a second until it sees ``done``.
   Each side runs against a fresh server process; per side it prints the RPCs made, the
   server's CPU seconds (``os.wait4``) and the lag from completion to the caller's return,
   p50/p99, then the ratios. Callers are asyncio coroutines on one grpc.aio channel, so the
   client side costs the same for both. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARENT = "projects/bench/locations/l"


class _NullPublisher:
    """Completions are not what is measured here: acknowledge them at once."""

    def publish(self, data: bytes, attributes: dict[str, str], ordering_key: str) -> Future[str]:
        future: Future[str] = Future()
        future.set_result("0")
        return future

    def close(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- child: the gRPC facade with a producer -----------------------------------------------------


def run_grpc_server(args: argparse.Namespace) -> None:
    import dataclasses

    from lrobridge import Bridge
    from lrobridge.config import Settings

    settings = dataclasses.replace(
        Settings(),
        project="bench",
        store_url=f"sqlite:///{args.store}",
        api_auth="none",
        push_auth="none",
        wait_max=300.0,
    )
    bridge = Bridge(settings, publisher=_NullPublisher())
    port = bridge.start_grpc(port=args.port, host="127.0.0.1")
    print(port, flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "COMPLETE":
            window, names_file = float(rest[0]), pathlib.Path(rest[1])
            completed = _complete_over(bridge, json.loads(names_file.read_text()), window)
            print(json.dumps(completed), flush=True)
        elif command == "EXIT":
            break
    bridge.close()


def _complete_over(bridge: object, names: list[str], window: float) -> dict[str, float]:
    producer = bridge.producer  # type: ignore[attr-defined]
    start = time.time()
    done: dict[str, float] = {}
    for i, name in enumerate(names):
        due = start + window * (i + 0.5) / len(names)
        time.sleep(max(0.0, due - time.time()))
        producer.handle(name).succeed()
        done[name] = time.time()
    return done


# -- parent --------------------------------------------------------------------------------------


def _populate(store_path: pathlib.Path, ops: int, running: list[str]) -> None:
    from google.longrunning import operations_proto_pb2 as operations_pb2

    from lrobridge.core import codec
    from lrobridge.delivery import relay
    from lrobridge.storage.sqlite.store import SqliteStore

    store = SqliteStore(str(store_path))
    now = time.time()
    for i in range(ops):
        name = f"{PARENT}/operations/op-{i:06d}"
        store.create_produced_operation(
            codec.snapshot_from_proto(operations_pb2.Operation(name=name)), source="s", now=now
        )
        if i % 2:
            snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=True))
            done = relay.completion(
                snapshot, "succeeded", source="s", payload_format="binary", now=now
            )
            store.complete_produced_operation(done, now=now)
    for name in running:
        store.create_produced_operation(
            codec.snapshot_from_proto(operations_pb2.Operation(name=name)), source="s", now=now
        )
    store.close()


class _GrpcChild:
    def __init__(self, store: pathlib.Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "_grpc", "--store", str(store), "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "LROBRIDGE_LOG_LEVEL": "WARNING"},
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def command(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline()

    def stop(self) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write("EXIT\n")
        self.process.stdin.flush()
        _, _, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = 0
        return usage.ru_utime + usage.ru_stime


def _rate(call: object, seconds: float, threads: int) -> float:
    counts = [0] * threads
    end = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < end:
            call(i)  # type: ignore[operator]
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / seconds


def measure_rates(grpc_port: int, rest_port: int, seconds: float) -> dict[str, float]:
    import grpc
    import requests
    from google.longrunning import operations_grpc_pb2
    from google.longrunning import operations_proto_pb2 as operations_pb2

    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = operations_grpc_pb2.OperationsStub(channel)
    get = operations_pb2.GetOperationRequest(name=f"{PARENT}/operations/op-000001")
    lst = operations_pb2.ListOperationsRequest(name=PARENT, page_size=50)
    sessions = [requests.Session() for _ in range(8)]
    base = f"http://127.0.0.1:{rest_port}/v1"
    rates = {
        "grpc_get": _rate(lambda i: stub.GetOperation(get), seconds, 8),
        "grpc_list": _rate(lambda i: stub.ListOperations(lst), seconds, 8),
        "rest_get": _rate(
            lambda i: sessions[i].get(f"{base}/{PARENT}/operations/op-000001").raise_for_status(),
            seconds,
            8,
        ),
        "rest_list": _rate(
            lambda i: sessions[i].get(f"{base}/{PARENT}/operations?pageSize=50").raise_for_status(),
            seconds,
            8,
        ),
    }
    channel.close()
    return rates


async def _callers(port: int, names: list[str], mode: str, seen: dict[str, float]) -> int:
    import grpc
    from google.longrunning import operations_grpc_pb2
    from google.longrunning import operations_proto_pb2 as operations_pb2
    from google.protobuf import duration_pb2

    rpcs = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = operations_grpc_pb2.OperationsStub(channel)

        async def wait(name: str) -> None:
            nonlocal rpcs
            while True:
                rpcs += 1
                op = await stub.WaitOperation(
                    operations_pb2.WaitOperationRequest(
                        name=name, timeout=duration_pb2.Duration(seconds=240)
                    ),
                    timeout=250,
                )
                if op.done:
                    seen[name] = time.time()
                    return

        async def poll(name: str) -> None:
            nonlocal rpcs
            while True:
                rpcs += 1
                op = await stub.GetOperation(operations_pb2.GetOperationRequest(name=name))
                if op.done:
                    seen[name] = time.time()
                    return
                await asyncio.sleep(1.0)

        if mode == "none":
            return 0
        caller = wait if mode == "wait" else poll
        await asyncio.gather(*(caller(n) for n in names))
    return rpcs


def measure_waiters(
    store: pathlib.Path, names: list[str], window: float, mode: str
) -> dict[str, float]:
    child = _GrpcChild(store)
    seen: dict[str, float] = {}
    names_file = store.with_suffix(f".{mode}.json")
    names_file.write_text(json.dumps(names))
    result: dict[str, int] = {}

    def run_callers() -> None:
        result["rpcs"] = asyncio.run(_callers(child.port, names, mode, seen))

    callers = threading.Thread(target=run_callers)
    callers.start()
    time.sleep(2.0)  # every caller is waiting (or polling) before the first completion
    completed = json.loads(child.command(f"COMPLETE {window} {names_file}"))
    callers.join(timeout=window + 120)
    cpu = child.stop()
    lags = sorted(seen[n] - completed[n] for n in names if n in seen) or [float("nan")]
    return {
        "callers": len(names),
        "returned": len(seen),
        "rpcs": result.get("rpcs", 0),
        "server_cpu_s": cpu,
        "lag_p50_ms": 1000 * lags[len(lags) // 2],
        "lag_p99_ms": 1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))],
    }


def _fresh_store(workdir: pathlib.Path, label: str, ops: int, running: list[str]) -> pathlib.Path:
    path = workdir / f"{label}.db"
    _populate(path, ops, running)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="role")
    child = sub.add_parser("_grpc")
    child.add_argument("--store", required=True)
    child.add_argument("--port", type=int, default=0)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.role == "_grpc":
        return run_grpc_server(args)

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="lrobridge-bench-ops-"))
    print(f"operations_api: {args.ops} operations, {args.waiters} waiters over {args.window:.0f}s")

    store = _fresh_store(workdir, "rates", args.ops, [])
    grpc_child = _GrpcChild(store)
    rest_port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GOOGLE_CLOUD_PROJECT": "bench",
        "LROBRIDGE_STORE": f"sqlite:///{store}",
        "LROBRIDGE_API_AUTH": "none",
        "LROBRIDGE_PUSH_AUTH": "none",
        "LROBRIDGE_LOG_LEVEL": "WARNING",
    }
    rest = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lrobridge.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(rest_port),
        ],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import requests

    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{rest_port}/healthz", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    rates = measure_rates(grpc_child.port, rest_port, args.seconds)
    rest.send_signal(signal.SIGTERM)
    rest.wait(timeout=30)
    grpc_child.stop()
    print("\nrequests per second (8 client threads, same machine):")
    for key, value in rates.items():
        print(f"  {key:10} {value:8.0f}")

    rows = {}
    for mode in ("none", "wait", "poll"):
        names = [f"{PARENT}/operations/{mode}-{i:05d}" for i in range(args.waiters)]
        store = _fresh_store(workdir, mode, args.ops, names)
        rows[mode] = measure_waiters(store, names, args.window, mode)
    print(f"\n{args.waiters} callers, operations completing over {args.window:.0f}s:")
    header = ("returned", "RPCs", "server CPU s", "lag p50 ms", "lag p99 ms")
    print(
        f"  {'':28} "
        + " ".join(f"{h:>{w}}" for h, w in zip(header, (9, 7, 13, 11, 11), strict=True))
    )
    labels = (
        ("none", "no callers (the same work)"),
        ("wait", "lrobridge WaitOperation"),
        ("poll", "baseline GetOperation 1/s"),
    )
    for mode, label in labels:
        r = rows[mode]
        print(
            f"  {label:28} {r['returned']:9.0f} {r['rpcs']:7.0f} {r['server_cpu_s']:13.2f} "
            f"{r['lag_p50_ms']:11.0f} {r['lag_p99_ms']:11.0f}"
        )
    wait, poll, idle = rows["wait"], rows["poll"], rows["none"]
    # The server process also starts up and completes every operation; what the callers cost
    # is the CPU above the run without callers.
    wait_cpu = max(wait["server_cpu_s"] - idle["server_cpu_s"], 0.01)
    poll_cpu = max(poll["server_cpu_s"] - idle["server_cpu_s"], 0.01)
    print(f"\nserver CPU spent on the callers: lrobridge {wait_cpu:.2f}s, baseline {poll_cpu:.2f}s")
    print(
        f"baseline / lrobridge: RPCs x{poll['rpcs'] / wait['rpcs']:.1f}, "
        f"server CPU for the callers x{poll_cpu / wait_cpu:.1f}, "
        f"median lag x{poll['lag_p50_ms'] / max(wait['lag_p50_ms'], 0.001):.0f}"
    )


if __name__ == "__main__":
    main()
