"""Firestore calls are retried by the bridge's own google-api-core Retry values: passed per call
(``retry=``) where the client has the argument, the transport's default where it has none
(transactions). Transient errors are injected on the wire by a proxy in front of the emulator,
so the real client, its transport and the emulator do everything else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as api_exceptions
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import Completion, PendingMessage, WatchState
from lrobridge.errors import Unavailable
from lrobridge.storage.firestore.client import FirestoreDatabase, Retries
from lrobridge.storage.firestore.store import FirestoreStore
from tests.support.grpc_faults import FaultyProxy

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
