"""What awaiting ``async def`` callbacks costs: dispatches per second of an async callback against
the baseline of the same callback written as a plain function, measured in the same run.

    PYTHONPATH=. python bench/async_callbacks.py     # a few seconds
    python bench/async_callbacks.py --events 5000 --threads 8 --rounds 5

Each round dispatches ``--events`` distinct completion events through one
:class:`~lrobridge.delivery.dispatch.Dispatcher` on a SQLite file (claim, run, finish: two
transactions per event), from ``--threads`` threads as the push endpoint's request threads
would, once with a plain callback and once with ``async def`` doing the same work (the async one
crosses to the process's callback loop and back). The rounds alternate the two sides; it prints
per-side median events/s and the ratio. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.core import codec
from lrobridge.delivery.dispatch import CompletionEvent, Dispatcher, Subscription
from lrobridge.storage.sqlite.store import SqliteStore


def _events(prefix: str, count: int) -> list[CompletionEvent]:
    events = []
    for i in range(count):
        name = f"projects/p/operations/{prefix}-{i}"
        snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=True))
        event_id = codec.event_id("grpc://h:1", name, "succeeded")
        events.append(CompletionEvent(snapshot, "succeeded", event_id, "grpc://h:1", {}))
    return events


def _round(store: SqliteStore, side: str, events: list[CompletionEvent], threads: int) -> float:
    seen: list[str] = []

    def plain(event: CompletionEvent) -> None:
        seen.append(event.name)

    async def awaited(event: CompletionEvent) -> None:
        seen.append(event.name)

    dispatcher = Dispatcher(store)
    dispatcher.add(Subscription(f"{side}-cb", plain if side == "sync" else awaited))
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(dispatcher.dispatch, events))
    elapsed = time.perf_counter() - started
    assert len(seen) == len(events)
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(os.path.join(folder, "bench.db"))
        for r in range(args.rounds):
            for side in ("sync", "async") if r % 2 == 0 else ("async", "sync"):
                events = _events(f"{side}-{r}", args.events)
                rates[side].append(_round(store, side, events, args.threads))
        store.close()
    print(
        f"{args.events} events x {args.rounds} rounds, {args.threads} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    for side, values in rates.items():
        print(
            f"  {side:5}  median {statistics.median(values):8.0f} events/s  "
            f"(min {min(values):.0f}, max {max(values):.0f})"
        )
    ratio = statistics.median(rates["async"]) / statistics.median(rates["sync"])
    print(f"  async / sync (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
