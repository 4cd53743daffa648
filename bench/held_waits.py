"""What a held WaitOperation long poll costs in memory: the watcher's asyncio gRPC source
(``AsyncGrpcSource``, long polls on a pool of channels of their own) holding N waits at once
against the ``grpc.aio`` fake server, measured against the same source holding none in the
same run:

    python bench/held_waits.py                    # 1,000 and 5,000 held
    python bench/held_waits.py --held 1000,5000,10000
    python bench/held_waits.py --per-channel 100000   # every wait on one channel, to compare

The server runs in a child process (tests/support/operations_servers.py, operations that never
complete, so every wait is held until its ``--wait`` ends). This process opens one source, makes
one GetOperation (the baseline: main channel up, nothing held), then for each count holds that
many WaitOperation calls, waits until the server holds them all, and reads its own resident
set (VmRSS) and the server's. It prints, per count: the client's RSS growth over the baseline in
MiB and in KiB per held wait, the long-poll channels opened, and the server's KiB per held wait.
The waits are cancelled between counts; RSS rarely shrinks, so each count's figure is its peak
growth since the baseline. Nothing here asserts a figure; the machine may be shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lrobridge.adapters.sources.grpc_aio_source import DEFAULT_WAITS_PER_CHANNEL  # noqa: E402

PARENT = "projects/bench/locations/l"


def _rss_kib(pid: int | str = "self") -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run_server(args: argparse.Namespace) -> None:
    from tests.support.operations_servers import FakeOperations, aio_grpc_operations_server

    backend = FakeOperations(clock=time.time, max_wait=600.0)
    names = [f"{PARENT}/operations/held-{i:06d}" for i in range(args.ops)]
    backend.add_many(names, [None] * len(names))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with aio_grpc_operations_server(backend) as url:
        print(url, flush=True)
        while not stop.wait(0.05):
            print(json.dumps({"held": backend.waits_held}), flush=True)
            sys.stdin.readline()


async def measure(
    url: str, server: subprocess.Popen[str], counts: list[int], wait: float, per_channel: int
) -> None:
    from lrobridge.adapters.sources.grpc_aio_source import (
        AsyncGrpcSource,
        insecure_aio_channel_factory,
    )

    assert server.stdin is not None and server.stdout is not None

    def server_held() -> int:
        server.stdin.write("\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
        return int(json.loads(server.stdout.readline())["held"])  # type: ignore[union-attr]

    factory = insecure_aio_channel_factory(url.removeprefix("grpc://"))
    source = AsyncGrpcSource(url, factory, waits_per_channel=per_channel)
    await source.get_operation(f"{PARENT}/operations/held-000000", timeout=10.0)
    await asyncio.sleep(0.5)
    base, server_base = _rss_kib(), _rss_kib(server.pid)
    print(f"baseline (0 held): client {base / 1024:.1f} MiB, server {server_base / 1024:.1f} MiB")
    header = "held", "client +MiB", "client KiB/wait", "channels", "server KiB/wait", "s to hold"
    print(" ".join(f"{h:>16}" for h in header))
    for count in counts:
        began = time.monotonic()
        tasks = [
            asyncio.ensure_future(
                source.wait_operation(
                    f"{PARENT}/operations/held-{i:06d}", wait=wait, timeout=wait + 10
                )
            )
            for i in range(count)
        ]
        while server_held() < count:
            failed = [t for t in tasks if t.done()]
            if failed:
                raise SystemExit(f"{len(failed)} waits ended early: {failed[0].exception()!r}")
            await asyncio.sleep(0.2)
        took = time.monotonic() - began
        await asyncio.sleep(0.5)
        grown = _rss_kib() - base
        server_grown = _rss_kib(server.pid) - server_base
        row = (
            f"{count:16d} {grown / 1024:16.1f} {grown / count:16.2f} {source.wait_channels:16d} "
            f"{server_grown / count:16.2f} {took:16.1f}"
        )
        print(row, flush=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while server_held() > 0:
            await asyncio.sleep(0.2)
    await source.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", default="", help=argparse.SUPPRESS)
    parser.add_argument("--held", default="1000,5000", help="counts of held waits, comma-separated")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds each wait asks for")
    parser.add_argument(
        "--per-channel", type=int, default=DEFAULT_WAITS_PER_CHANNEL, help="waits per channel"
    )
    parser.add_argument("--ops", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "_server":
        return run_server(args)
    counts = [int(c) for c in args.held.split(",") if c.strip()]
    server = subprocess.Popen(
        [sys.executable, __file__, "_server", "--ops", str(max(counts))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    server.stdout.readline()  # the first held count, before any request
    print(
        f"held_waits: {','.join(map(str, counts))} held WaitOperation calls against {url}, "
        f"at most {args.per_channel} per long-poll channel"
    )
    try:
        asyncio.run(measure(url, server, counts, args.wait, args.per_channel))
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
