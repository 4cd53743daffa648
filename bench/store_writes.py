"""What the store writes of completions cost, batched against one at a time, in the same run.

    python bench/store_writes.py                       # 5,000 completions, 3 rounds, SQLite
    python bench/store_writes.py --completions 1000 --rounds 5 --batch 200
    python bench/store_writes.py --firestore 300        # also 300 on a Firestore emulator

Each side of a round gets a fresh store holding N ACTIVE watches claimed (leased) by the store
object that then records them, as the watcher holds them when their completion is noticed; set
up is not timed. Timed, per side:

* ``batched``: ``record_completions`` per batch of ``--batch`` completions (the watcher's group
  commit), then ``mark_published_many`` of each batch's entry ids (the relay's settle once
  Pub/Sub acknowledged);
* ``one at a time``: ``record_completion`` then ``mark_published`` per completion (the baseline:
  a transaction each).

The completions are built by :func:`lrobridge.delivery.relay.completion` before the clock
starts. Figures per side: wall ms per completion (record, settle, both) and process CPU ms per
completion, the median of the rounds (rounds alternate which side goes first); the ratio is one
at a time over batched. Nothing here asserts a figure. The machine is shared: quote the spread
of the rounds printed with the medians.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from google.longrunning import operations_proto_pb2 as operations_pb2  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402

from lrobridge.cli.emulator import FirestoreEmulator  # noqa: E402
from lrobridge.core import codec  # noqa: E402
from lrobridge.core.backoff import Backoff  # noqa: E402
from lrobridge.delivery import relay  # noqa: E402
from lrobridge.storage import Completion, Store  # noqa: E402
from lrobridge.storage.firestore.store import FirestoreStore  # noqa: E402
from lrobridge.storage.sqlite.store import SqliteStore  # noqa: E402

SOURCE = "grpc://127.0.0.1:9"
SIDES = ("batched", "one at a time")
NOW = 1_000.0


def _operation(i: int) -> str:
    return f"projects/bench/locations/l/operations/op-{i:06d}"


def _completion(i: int) -> Completion:
    op = operations_pb2.Operation(name=_operation(i), done=True)
    op.response.CopyFrom(
        any_pb2.Any(type_url="type.googleapis.com/bench.Result", value=b"\x08\x01" * 40)
    )
    return relay.completion(
        codec.snapshot_from_proto(op), "succeeded", source=SOURCE, payload_format="binary", now=NOW
    )


def _prepare(store: Store, count: int) -> list[tuple[str, Completion]]:
    """``count`` watches registered and claimed by ``store``; their completions."""
    ids = [
        store.create_watch(
            source=SOURCE,
            operation=_operation(i),
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=NOW - 100.0,
        )[0].id
        for i in range(count)
    ]
    claimed: set[str] = set()
    while len(claimed) < count:
        got = store.claim_due_polls(now=NOW, limit=count, lease=3600.0)
        if not got:
            raise RuntimeError(f"only {len(claimed)} of {count} watches could be claimed")
        claimed.update(w.id for w in got)
    return [(watch_id, _completion(i)) for i, watch_id in enumerate(ids)]


def _batched(store: Store, work: list[tuple[str, Completion]], batch: int) -> list[list[int]]:
    written = []
    for start in range(0, len(work), batch):
        ids = store.record_completions(work[start : start + batch], now=NOW + 1.0)
        written.append([e for e in ids if e is not None])
    return written


def _settle_batched(store: Store, written: list[list[int]]) -> None:
    for ids in written:
        store.mark_published_many(ids, now=NOW + 2.0)


def _one_at_a_time(store: Store, work: list[tuple[str, Completion]], batch: int) -> list[list[int]]:
    del batch
    ids = [store.record_completion(w, c, now=NOW + 1.0) for w, c in work]
    return [[e for e in ids if e is not None]]


def _settle_one_at_a_time(store: Store, written: list[list[int]]) -> None:
    for entry_id in written[0]:
        store.mark_published(entry_id, now=NOW + 2.0)


PATHS: dict[str, tuple[Callable[..., list[list[int]]], Callable[[Store, list[list[int]]], None]]]
PATHS = {
    "batched": (_batched, _settle_batched),
    "one at a time": (_one_at_a_time, _settle_one_at_a_time),
}


def _side(open_store: Callable[[], Store], side: str, count: int, batch: int) -> dict[str, float]:
    store = open_store()
    try:
        work = _prepare(store, count)
        record, settle = PATHS[side]
        cpu0, t0 = time.process_time(), time.perf_counter()
        written = record(store, work, batch)
        t1 = time.perf_counter()
        settle(store, written)
        t2, cpu2 = time.perf_counter(), time.process_time()
        if sum(map(len, written)) != count or store.outbox_size() != 0:
            raise RuntimeError(f"{side}: not every completion was recorded and settled")
    finally:
        store.close()
    per = 1000.0 / count
    return {
        "record": (t1 - t0) * per,
        "settle": (t2 - t1) * per,
        "total": (t2 - t0) * per,
        "cpu": (cpu2 - cpu0) * per,
    }


def _run(
    label: str, opener: Callable[[int], Callable[[], Store]], args: argparse.Namespace, count: int
) -> None:
    figures: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for round_no in range(args.rounds):
        order = SIDES if round_no % 2 == 0 else SIDES[::-1]
        for side in order:
            figures[side].append(_side(opener(round_no), side, count, args.batch))
    print(f"\n{label}: {count} completions, batches of {args.batch}, {args.rounds} rounds")
    print(
        f"{'side':14} {'record ms/c':>12} {'settle ms/c':>12} {'total ms/c':>11} "
        f"{'cpu ms/c':>9}   total per round"
    )
    medians: dict[str, dict[str, float]] = {}
    for side in SIDES:
        medians[side] = {
            key: statistics.median(f[key] for f in figures[side])
            for key in ("record", "settle", "total", "cpu")
        }
        m = medians[side]
        spread = ", ".join(f"{f['total']:.3f}" for f in figures[side])
        print(
            f"{side:14} {m['record']:12.3f} {m['settle']:12.3f} {m['total']:11.3f} "
            f"{m['cpu']:9.3f}   [{spread}]"
        )
    base, new = medians["one at a time"], medians["batched"]
    print(
        "ratio one at a time / batched: "
        f"record {base['record'] / new['record']:.1f}x, "
        f"settle {base['settle'] / new['settle']:.1f}x, "
        f"total {base['total'] / new['total']:.1f}x, cpu {base['cpu'] / new['cpu']:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--completions", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500, help="completions per batched call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--firestore",
        type=int,
        default=0,
        metavar="N",
        help="also N completions on a Firestore emulator started here (0: SQLite only)",
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} (shared machine)")
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:

        def sqlite_opener(round_no: int) -> Callable[[], Store]:
            path = pathlib.Path(tmp) / f"store-{round_no}-{uuid.uuid4().hex[:6]}.db"
            return lambda: SqliteStore(str(path))

        _run("SQLite (WAL file)", sqlite_opener, args, args.completions)
    if args.firestore > 0:
        with FirestoreEmulator() as emulator:
            os.environ[FirestoreEmulator.env_var] = emulator.host_port

            def firestore_opener(round_no: int) -> Callable[[], Store]:
                project = f"bench-{round_no}-{uuid.uuid4().hex[:8]}"
                return lambda: FirestoreStore(project=project)

            _run("Firestore emulator", firestore_opener, args, args.firestore)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
