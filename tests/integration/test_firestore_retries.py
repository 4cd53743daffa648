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

from lrobridge.errors import Unavailable
from lrobridge.storage.firestore.client import FirestoreDatabase, Retries
from tests.support.grpc_faults import FaultyProxy

pytestmark = pytest.mark.integration

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


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
