"""Firestore calls are retried by the bridge's own google-api-core Retry values: passed per call
(``retry=``) where the client has the argument, the transport's default where it has none
(transactions); a batch committed in chunks that fails part-way says what it committed, and
the watcher publishes that at once. Transient errors are injected on the wire by a proxy in
front of the emulator, so the real client, its transport and the emulator do everything else."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as api_exceptions
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.config import Settings
from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import Completion, PendingMessage, WatchState
from lrobridge.errors import PartialCommit, Unavailable, Unimplemented
from lrobridge.storage.firestore import store as firestore_store
from lrobridge.storage.firestore.client import FirestoreDatabase, Retries
from lrobridge.storage.firestore.store import FirestoreStore
from lrobridge.watching.poller import Watcher
from tests.support.grpc_faults import FaultyProxy
from tests.support.stack import wait_until

pytestmark = pytest.mark.integration

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
ABORTED = grpc.StatusCode.ABORTED


@pytest.fixture
def proxy(firestore_emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    with FaultyProxy(firestore_emulator) as proxy:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", proxy.address)
        yield proxy


def _database(retried: list[Exception], deadline: float = 30.0) -> FirestoreDatabase:
    return FirestoreDatabase(
        project=f"test-{uuid.uuid4().hex[:10]}",
        retries=Retries.bounded(deadline, on_error=retried.append),
        timeout=deadline,
    )


def test_every_kind_of_call_rides_out_transient_errors_with_the_configured_retry(
    proxy: FaultyProxy,
) -> None:
    retried: list[Exception] = []
    db = _database(retried)
    try:
        docs = db.collection("retry")
        ref = docs.document("a")

        proxy.fail("Commit", times=2, code=UNAVAILABLE)  # WriteBatch.commit(retry=)
        db.write_batches("write", [lambda batch: batch.set(ref, {"n": 1})])
        proxy.fail("BatchGetDocuments", times=2, code=UNAVAILABLE)  # DocumentReference.get
        assert db.read("read", ref).to_dict() == {"n": 1}
        proxy.fail("BatchGetDocuments", times=2, code=UNAVAILABLE)  # Client.get_all
        assert [s.exists for s in db.read_many("read many", [ref, docs.document("b")])] == [
            True,
            False,
        ]
        proxy.fail("RunQuery", times=2, code=UNAVAILABLE)  # Query.stream(retry=)
        assert [d.id for d in db.query("query", docs)] == ["a"]
        proxy.fail("RunAggregationQuery", times=2, code=UNAVAILABLE)  # AggregationQuery.get
        assert db.count("count", docs) == 1
        proxy.fail("BatchWrite", times=2, code=UNAVAILABLE)  # BulkWriteBatch.commit(retry=)
        (seen,) = db.query("query", docs)
        assert [d.id for d in db.claim("claim", [seen], lambda _: {"n": 2})] == ["a"]

        assert proxy.failed == {
            "Commit": 2,
            "BatchGetDocuments": 4,
            "RunQuery": 2,
            "RunAggregationQuery": 2,
            "BatchWrite": 2,
        }
        assert len(retried) == 12
        assert all(isinstance(e, api_exceptions.ServiceUnavailable) for e in retried)
    finally:
        db.close()


def test_a_transaction_gets_the_configured_policy_for_begin_and_commit_and_its_reads(
    proxy: FaultyProxy,
) -> None:
    """BeginTransaction and Commit of a transaction take no retry argument: the policy is the
    transport's default there; the read inside passes it per call, as the stores' reads do."""
    retried: list[Exception] = []
    db = _database(retried)
    try:
        ref = db.collection("retry").document("t")

        def body(tx: Any) -> int:
            current = ref.get(transaction=tx, **db.reads)
            n = int(current.get("n")) + 1 if current.exists else 1
            tx.set(ref, {"n": n})
            return n

        proxy.fail("BeginTransaction", times=1, code=UNAVAILABLE)
        assert db.transact("count up", body) == 1
        proxy.fail("BatchGetDocuments", times=1, code=UNAVAILABLE)
        proxy.fail("Commit", times=1, code=UNAVAILABLE)
        assert db.transact("count up", body) == 2
        assert proxy.failed == {"BeginTransaction": 1, "BatchGetDocuments": 1, "Commit": 1}
        assert len(retried) == 3
    finally:
        db.close()


def test_past_its_deadline_the_retry_gives_up_and_the_store_says_unavailable(
    proxy: FaultyProxy,
) -> None:
    retried: list[Exception] = []
    db = _database(retried, deadline=1.0)
    try:
        proxy.fail("RunQuery", times=10_000, code=UNAVAILABLE)
        with pytest.raises(Unavailable, match="gave up after retrying"):
            db.query("list things", db.collection("retry"))
        assert retried and proxy.failed["RunQuery"] == len(retried)  # each one seen, then given up
    finally:
        db.close()


def test_a_batch_that_conflicts_on_a_read_runs_again_and_writes_each_completion_once(
    proxy: FaultyProxy,
) -> None:
    """A batched transaction whose read is aborted (a lock another instance held) is run again
    whole: the completions' outbox entries are the ones chosen before, each written once, and
    a batched settle aborted the same way settles each entry once."""
    store = FirestoreStore(project=f"test-{uuid.uuid4().hex[:10]}")
    try:
        names = [f"operations/{i}" for i in range(3)]
        watch_ids = [
            store.create_watch(
                source="grpc://127.0.0.1:1",
                operation=name,
                expire_time=None,
                backoff=Backoff(),
                progress=False,
                now=100.0,
            )[0].id
            for name in names
        ]
        batch = []
        for name, watch_id in zip(names, watch_ids, strict=True):
            snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=True))
            message = PendingMessage(data=name.encode(), attributes={}, ordering_key="")
            batch.append((watch_id, Completion("succeeded", f"e-{name}", snapshot, message)))
        begun = proxy.calls["BeginTransaction"]
        proxy.fail("BatchGetDocuments", times=1, code=ABORTED)
        entry_ids = store.record_completions(batch, now=200.0)
        assert proxy.failed["BatchGetDocuments"] == 1 and None not in entry_ids
        assert proxy.calls["BeginTransaction"] == begun + 2  # run again, once
        due = store.claim_due_publishes(now=1000.0, limit=10, lease=30.0)
        assert sorted((e.id, e.watch_id) for e in due) == sorted(
            zip(entry_ids, watch_ids, strict=True)
        )
        proxy.fail("BatchGetDocuments", times=1, code=ABORTED)
        store.mark_published_many([e.id for e in due], now=1001.0)
        assert proxy.failed["BatchGetDocuments"] == 2 and store.outbox_size() == 0
        assert store.count_by_state()[WatchState.COMPLETED] == 3
    finally:
        store.close()


class _Done:
    """A source whose every operation is done."""

    url = "grpc://127.0.0.1:1"

    def get_operation(self, name: str, *, timeout: float) -> codec.Snapshot:
        return codec.snapshot_from_proto(operations_pb2.Operation(name=name, done=True))

    def wait_operation(self, name: str, *, wait: float, timeout: float) -> codec.Snapshot:
        return self.get_operation(name, timeout=timeout)

    def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[list[codec.Snapshot], str]:
        raise Unimplemented("polled one by one")


class _Recording:
    """A publisher that takes every message (from the watcher's publish thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published: list[dict[str, str]] = []

    def publish(self, data: bytes, attributes: dict[str, str], key: str) -> Future[str]:
        with self.lock:
            self.published.append(dict(attributes))
        future: Future[str] = Future()
        future.set_result("1")
        return future

    def close(self) -> None:
        pass


class _WholeGroups(FirestoreStore):
    """The Firestore store, refusing a group of completions (as an outage would) until it holds
    every one of ``expected``, so the test knows which chunk of which group the wire fault
    meets; each call's watch ids, and what was announced when it came, are noted."""

    def __init__(self, *, expected: int, announced: list[str], **options: Any) -> None:
        super().__init__(**options)
        self.expected = expected
        self.announced = announced
        self.calls: list[tuple[list[str], int]] = []
        self.recorded = threading.Event()

    def record_completions(
        self, completions: Sequence[tuple[str, Completion]], *, now: float
    ) -> list[int | None]:
        if len(completions) < self.expected and not self.calls:
            raise Unavailable("not every completion is in the group yet")
        self.calls.append(([watch_id for watch_id, _ in completions], len(self.announced)))
        entry_ids = super().record_completions(completions, now=now)
        self.recorded.set()
        return entry_ids


@pytest.mark.timeout(120)
def test_when_a_later_chunk_of_completions_fails_the_committed_ones_are_published_at_once(
    proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group of 10 completions commits in chunks of 4; the second chunk's Commit fails. The
    first 4 are announced (waiters, stats) and published at once by the watcher, with no drain
    (the clock stands still, so their leased outbox entries never come due); only the other 6
    are recorded again, and every completion is published once, with its one event id."""
    monkeypatch.setattr(firestore_store, "COMPLETIONS_PER_COMMIT", 4)
    announced: list[str] = []
    store = _WholeGroups(expected=10, announced=announced, project=f"test-{uuid.uuid4().hex[:10]}")
    publisher = _Recording()
    now = 1000.0
    try:
        names = [f"projects/p/operations/chunked-{i}" for i in range(10)]
        for name in names:
            store.create_watch(
                source=_Done.url,
                operation=name,
                expire_time=None,
                backoff=Backoff(),
                progress=False,
                now=now,
            )
        # The first Commit from here on (chunk 1 of the whole group) goes through; the next
        # (chunk 2) ends DEADLINE_EXCEEDED, which a commit is never retried on: Unavailable.
        proxy.fail("Commit", times=1, code=grpc.StatusCode.DEADLINE_EXCEEDED, after=1)
        watcher = Watcher(
            store=store,
            sources=lambda url: _Done(),  # type: ignore[arg-type,return-value]
            publisher=publisher,
            settings=dataclasses.replace(Settings(), long_poll_slots=0),
            clock=lambda: now,
            on_completion=announced.append,
        )
        runner = threading.Thread(target=watcher.run)
        runner.start()
        try:
            wait_until(lambda: len(store.calls) >= 2 and store.recorded.is_set(), what="retry")
        finally:
            watcher.stop()
            runner.join(timeout=60)
        assert not runner.is_alive()

        assert proxy.failed["Commit"] == 1
        (group, before), (rest, announced_before_rest) = store.calls
        assert len(group) == 10 and before == 0
        assert rest == group[4:]  # only what did not commit is recorded again
        assert announced_before_rest == 4  # the committed chunk was told before the retry
        assert sorted(announced) == sorted(names)  # each completion announced once
        assert watcher.stats.completions == 10
        by_operation: dict[str, set[str]] = {}
        for attributes in publisher.published:
            by_operation.setdefault(attributes["operation"], set()).add(attributes["event_id"])
        assert len(publisher.published) == 10  # each once, none left to a drain
        assert by_operation == {
            name: {codec.event_id(_Done.url, name, "succeeded")} for name in names
        }
        assert store.outbox_size() == 0
        assert store.count_by_state()[WatchState.COMPLETED] == 10
    finally:
        store.close()


def test_a_chunked_settle_that_fails_part_way_says_which_entries_it_settled(
    proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settles commit 2 per transaction here; the second Commit fails: the error carries the
    ids of the first chunk, which are gone from the outbox, and the rest is still there."""
    monkeypatch.setattr(firestore_store, "SETTLES_PER_COMMIT", 2)
    store = FirestoreStore(project=f"test-{uuid.uuid4().hex[:10]}")
    try:
        entry_ids = [
            store.enqueue(
                PendingMessage(data=b"x", attributes={}, ordering_key=""),
                event_id=f"e-{i}",
                operation=f"operations/{i}",
                now=100.0,
            )
            for i in range(4)
        ]
        proxy.fail("Commit", times=1, code=grpc.StatusCode.DEADLINE_EXCEEDED, after=1)
        with pytest.raises(PartialCommit) as raised:
            store.mark_published_many(entry_ids, now=101.0)
        assert raised.value.committed == entry_ids[:2]
        assert isinstance(raised.value.error, Unavailable)
        due = store.claim_due_publishes(now=1e9, limit=10, lease=30.0)
        assert sorted(e.id for e in due) == sorted(entry_ids[2:])
    finally:
        store.close()
