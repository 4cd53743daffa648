"""How fast completions reach the Pub/Sub topic through the bridge, against the raw publisher.

    python bench/publish_rate.py                  # 20,000 messages per side, 3 rounds
    python bench/publish_rate.py --messages 2000 --rounds 1

Everything runs against a Pub/Sub emulator this script starts on 127.0.0.1 (and stops), each
side on a topic of its own, with the same google-cloud-pubsub client batch settings
(``lrobridge.adapters.pubsub.DEFAULT_BATCH_SETTINGS``) and the same messages: completions built
by :func:`lrobridge.delivery.relay.completion` for completion-only watches.

* ``raw unordered``: ``PublisherClient.publish`` without ordering, every future awaited at the
  end: what the client library can do (the baseline).
* ``raw ordered, key/msg``: the same with message ordering on and the operation name as key of
  every message, which is what the bridge used to send: each message is a batch of its own.
* ``bridge, watcher path``: what the watcher does after a group commit of completions:
  ``OutboxRelay.publish_many`` of the leased outbox entries, ``FLUSH_BATCH`` at a time, through
  ``PubSubPublisher`` (ordering enabled on the client, as deployed; completions carry no key, so
  they go as shared Publish requests, ``publish_batch``), every entry settled in the SQLite store
  (dropped, watch COMPLETED) before it counts.
* ``bridge, drain path``: ``OutboxRelay.drain`` taking the same number of due entries back from
  the store (a restarted watcher's republish), claimed, published and settled.

The rate of a side is messages / (time from the first publish to the last acknowledgement, or
the last settlement for the bridge). Store set-up is not timed. Rounds alternate the sides; the
figures are the median of the rounds, and the ratios compare each side with the raw unordered
publisher of the same round. Nothing here asserts a rate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from google.cloud import pubsub_v1  # noqa: E402
from google.longrunning import operations_proto_pb2 as operations_pb2  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402

from lrobridge.adapters.pubsub import (  # noqa: E402
    DEFAULT_BATCH_SETTINGS,
    PubSubAdmin,
    PubSubPublisher,
)
from lrobridge.cli.emulator import PubSubEmulator  # noqa: E402
from lrobridge.core import codec  # noqa: E402
from lrobridge.core.backoff import Backoff  # noqa: E402
from lrobridge.core.records import OutboxEntry, PendingMessage  # noqa: E402
from lrobridge.delivery import relay  # noqa: E402
from lrobridge.storage.sqlite.store import SqliteStore  # noqa: E402
from lrobridge.watching.poller import FLUSH_BATCH  # noqa: E402

PROJECT = "bench-publish"
SOURCE = "grpc://127.0.0.1:9"
SIDES = ("raw unordered", "raw ordered, key/msg", "bridge, watcher path", "bridge, drain path")


def _operation(i: int) -> str:
    return f"projects/bench/locations/l/operations/op-{i:06d}"


def _completion(i: int) -> relay.Completion:
    op = operations_pb2.Operation(name=_operation(i), done=True)
    op.response.CopyFrom(
        any_pb2.Any(type_url="type.googleapis.com/bench.Result", value=b"\x08\x01" * 40)
    )
    return relay.completion(
        codec.snapshot_from_proto(op),
        "succeeded",
        source=SOURCE,
        payload_format="binary",
        now=time.time(),
    )


Timing = tuple[float, float]  # wall seconds, CPU seconds of this process (every thread)


def _raw(topic: str, messages: list[PendingMessage], *, ordered: bool) -> Timing:
    client = pubsub_v1.PublisherClient(
        batch_settings=DEFAULT_BATCH_SETTINGS,
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=ordered),
    )
    try:
        began, cpu = time.perf_counter(), time.process_time()
        futures = [
            client.publish(
                topic,
                m.data,
                ordering_key=m.attributes["operation"] if ordered else "",
                **m.attributes,
            )
            for m in messages
        ]
        concurrent.futures.wait(futures)
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        failed = sum(1 for f in futures if f.exception() is not None)
        if failed:
            raise SystemExit(f"{failed} raw publishes failed")
        return elapsed, cpu
    finally:
        client.stop()
        client.transport.close()


def _store_with_completions(
    folder: pathlib.Path, count: int
) -> tuple[SqliteStore, list[OutboxEntry]]:
    """A store holding ``count`` completed watches whose completions are in the outbox, leased
    to this process as ``record_completion`` leaves them."""
    store = SqliteStore(str(folder / "outbox.db"))
    entries = []
    for i in range(count):
        watch, _ = store.create_watch(
            source=SOURCE,
            operation=_operation(i),
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=time.time(),
        )
        done = _completion(i)
        entry_id = store.record_completion(watch.id, done, now=time.time())
        assert entry_id is not None
        entries.append(
            OutboxEntry(entry_id, done.event_id, watch.operation, watch.id, done.message, 0)
        )
    return store, entries


def _bridge(topic: str, count: int, *, drain: bool) -> Timing:
    with tempfile.TemporaryDirectory(prefix="lrobridge-publish-") as folder:
        store, entries = _store_with_completions(pathlib.Path(folder), count)
        # The drain path finds the entries due: its clock is past their publish lease.
        offset = 3600.0 if drain else 0.0
        publisher = PubSubPublisher(topic)
        relay_ = relay.OutboxRelay(store, publisher, clock=lambda: time.time() + offset)
        try:
            began, cpu = time.perf_counter(), time.process_time()
            if drain:
                relay_.drain(limit=count, settle=600.0)
            else:
                for start in range(0, len(entries), FLUSH_BATCH):
                    relay_.publish_many(entries[start : start + FLUSH_BATCH])
                relay_.flush(timeout=600.0)
            elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
            left = store.outbox_size()
            if left or relay_.errors or relay_.published != count:
                raise SystemExit(
                    f"bridge: {relay_.published} published, {relay_.errors} errors, "
                    f"{left} left in the outbox"
                )
            return elapsed, cpu
        finally:
            publisher.close()
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.messages
    messages = [_completion(i).message for i in range(n)]
    size = sum(
        len(m.data) + sum(len(k) + len(v) for k, v in m.attributes.items()) for m in messages
    )
    print(
        f"publish_rate: {n} completion messages per side (~{size / n:.0f} bytes each with "
        f"attributes), {args.rounds} round(s); batch settings {DEFAULT_BATCH_SETTINGS}",
        flush=True,
    )
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    cpus: dict[str, list[float]] = {side: [] for side in SIDES}
    ratios: dict[str, list[float]] = {side: [] for side in SIDES}
    with PubSubEmulator() as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host_port
        admin = PubSubAdmin()
        runs: dict[str, Callable[[str], Timing]] = {
            "raw unordered": lambda t: _raw(t, messages, ordered=False),
            "raw ordered, key/msg": lambda t: _raw(t, messages, ordered=True),
            "bridge, watcher path": lambda t: _bridge(t, n, drain=False),
            "bridge, drain path": lambda t: _bridge(t, n, drain=True),
        }
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else tuple(reversed(SIDES))
            this_round: dict[str, float] = {}
            for side in order:
                topic = f"projects/{PROJECT}/topics/r{r}-{SIDES.index(side)}"
                admin.ensure_topic(topic)
                elapsed, cpu = runs[side](topic)
                this_round[side] = n / elapsed
                cpus[side].append(1e6 * cpu / n)
                print(
                    f"  round {r + 1}: {side:22} {n / elapsed:9.0f} msg/s "
                    f"{1e6 * cpu / n:7.0f} us CPU/msg",
                    flush=True,
                )
            for side in SIDES:
                rates[side].append(this_round[side])
                ratios[side].append(this_round[side] / this_round["raw unordered"])
        admin.close()
    print()
    print(
        f"{'':22} {'median msg/s':>13} {'vs raw unordered':>17} {'client CPU us/msg':>18}"
        "   (ratio per round)"
    )
    for side in SIDES:
        per_round = ", ".join(f"{x:.2f}" for x in ratios[side])
        print(
            f"{side:22} {statistics.median(rates[side]):13.0f} "
            f"{statistics.median(ratios[side]):16.2f}x {statistics.median(cpus[side]):18.0f}"
            f"   ({per_round})"
        )


if __name__ == "__main__":
    main()
