"""What one listed operation of a ListOperations sweep costs the watcher, in GetOperation calls:
the figure behind ``lrobridge.core.sweep.OPERATIONS_PER_CALL`` (a sweep may run only as often as
it costs no more than the single polls it replaces).

    python bench/sweep_cost.py                    # 20,000 operations, 3 rounds
    python bench/sweep_cost.py --ops 5000 --rounds 5

A ``grpc.aio`` Operations server (tests/support/operations_servers.py) runs on a thread of this
process with ``--ops`` done operations under one parent. On the watcher's own asyncio source
(``lrobridge.adapters.sources.open_async_source``), each round measures the CPU time of the
event loop's thread for

* the baseline: GetOperation of 5,000 of them, 64 in flight (what single polls cost);
* a sweep: every page (1,000 per page) of ``ListOperations(parent, "done = true")``, each
  listed operation looked up in the watched names and the snapshot of each watched one read,
  as a filtered ``Watcher._sweep`` does (``--watched-every N``: one in N is watched);

and prints CPU µs per Get call, per listed operation, and their ratio (listed operations per
Get call's CPU). Medians of the rounds. The server's CPU is on another thread and not counted.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lrobridge.adapters.sources import open_async_source  # noqa: E402
from lrobridge.core import sweep  # noqa: E402
from lrobridge.core.codec import ListingPage  # noqa: E402
from tests.support.operations_servers import (  # noqa: E402
    FakeOperations,
    aio_grpc_operations_server,
)

PARENT = "projects/bench/locations/l"
GETS = 5000


async def measure(url: str, names: list[str], rounds: int, every: int) -> list[tuple[float, float]]:
    source = open_async_source(url)
    watched = {name: str(i) for i, name in enumerate(names) if i % every == 0}
    slots = asyncio.Semaphore(64)

    async def get(name: str) -> None:
        async with slots:
            await source.get_operation(name, timeout=30)

    figures = []
    try:
        await get(names[0])  # the channel is up
        for _ in range(rounds):
            cpu = time.thread_time()
            await asyncio.gather(*(get(name) for name in names[:GETS]))
            per_get = (time.thread_time() - cpu) / GETS
            cpu, token, listed = time.thread_time(), "", 0
            while True:
                snapshots, token = await source.list_operations(
                    PARENT,
                    filter=sweep.DONE_FILTER,
                    page_size=sweep.PAGE_SIZE,
                    page_token=token,
                    timeout=30,
                )
                page = ListingPage.of(snapshots)
                listed += len(page)
                for index, _ in sweep.watched_on_page(page.names, watched):
                    if not page[index].done:
                        raise SystemExit(f"{page.names[index]} is listed as done but is not")
                if not token:
                    break
            per_listed = (time.thread_time() - cpu) / max(listed, 1)
            figures.append((per_get, per_listed))
            print(
                f"  round {len(figures)}: Get {1e6 * per_get:7.1f} us/call, listed "
                f"{1e6 * per_listed:5.2f} us/op, ratio {per_get / per_listed:6.1f}",
                flush=True,
            )
    finally:
        await source.aclose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--watched-every", type=int, default=1, help="1: every listed operation is watched"
    )
    args = parser.parse_args()
    names = [f"{PARENT}/operations/op-{i:06d}" for i in range(max(args.ops, GETS))]
    backend = FakeOperations(clock=time.time, max_wait=30.0)
    backend.add_many(names, [0.0] * len(names))  # all done: the sweep lists every one
    print(f"sweep_cost: {len(names)} done operations, {args.rounds} round(s)", flush=True)
    with aio_grpc_operations_server(backend) as url:
        figures = asyncio.run(measure(url, names, args.rounds, args.watched_every))
    per_get = statistics.median(f[0] for f in figures)
    per_listed = statistics.median(f[1] for f in figures)
    print(
        f"\nmedian: Get {1e6 * per_get:.1f} us/call, listed {1e6 * per_listed:.2f} us/op: one "
        f"Get costs {per_get / per_listed:.0f} listed operations "
        f"(lrobridge.core.sweep.OPERATIONS_PER_CALL = {sweep.OPERATIONS_PER_CALL})"
    )


if __name__ == "__main__":
    main()
