"""Callbacks from push messages: filters, exactly-once per callback, quarantine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.rpc import status_pb2

from lrobridge.core import codec
from lrobridge.delivery.dispatch import CompletionEvent, Dispatcher, Subscription, Verdict
from lrobridge.delivery.envelope import PushMessage
from lrobridge.errors import InvalidArgument
from lrobridge.storage.sqlite.store import SqliteStore


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


def _message(op: operations_pb2.Operation, **attributes: str) -> PushMessage:
    snapshot = codec.snapshot_from_proto(op)
    outcome = snapshot.outcome() or "expired"
    attrs = {
        "operation": op.name,
        "outcome": outcome,
        "event_id": codec.event_id("grpc://h:1", op.name, outcome),
        "source": "grpc://h:1",
        "payload_format": "binary",
    }
    attrs.update(attributes)
    return PushMessage(
        data=op.SerializeToString(),
        attributes=attrs,
        message_id="m1",
        publish_time="",
        subscription="",
        delivery_attempt=None,
        ordering_key=op.name,
    )


DONE = operations_pb2.Operation(name="projects/p/operations/a", done=True)
FAILED = operations_pb2.Operation(
    name="projects/p/operations/b", done=True, error=status_pb2.Status(code=9, message="no")
)


def test_a_redelivered_message_does_not_run_a_callback_that_already_succeeded(
    store: SqliteStore,
) -> None:
    calls: list[CompletionEvent] = []
    d = Dispatcher(store)
    d.add(Subscription("cb", calls.append))
    first = d.handle(_message(DONE), raw_body=b"", headers={})
    second = d.handle(_message(DONE), raw_body=b"", headers={})
    assert first.verdict is Verdict.ACK and first.ran == ("cb",)
    assert second.verdict is Verdict.ACK and second.already_done == ("cb",)
    assert len(calls) == 1
    assert calls[0].operation == DONE and calls[0].outcome == "succeeded"


def test_only_the_callbacks_that_failed_run_again_on_redelivery(store: SqliteStore) -> None:
    good: list[str] = []
    attempts: list[int] = []

    def flaky(event: CompletionEvent) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("database down")

    d = Dispatcher(store)
    d.add(Subscription("good", lambda e: good.append(e.name)))
    d.add(Subscription("flaky", flaky))
    first = d.handle(_message(DONE), raw_body=b"", headers={})
    assert first.verdict is Verdict.RETRY
    assert first.failed == {"flaky": "RuntimeError: database down"}
    second = d.handle(_message(DONE), raw_body=b"", headers={})
    assert second.verdict is Verdict.ACK and second.ran == ("flaky",)
    assert good == [DONE.name] and len(attempts) == 2


def test_filters_select_by_operation_glob_outcome_and_metadata_type(store: SqliteStore) -> None:
    seen: dict[str, list[str]] = {"failed": [], "glob": [], "all": []}
    d = Dispatcher(store)
    d.add(
        Subscription(
            "failed", lambda e: seen["failed"].append(e.name), outcomes=frozenset({"failed"})
        )
    )
    d.add(
        Subscription(
            "glob", lambda e: seen["glob"].append(e.name), operation="projects/*/operations/a"
        )
    )
    d.add(Subscription("all", lambda e: seen["all"].append(e.name)))
    d.add(
        Subscription(
            "meta", lambda e: seen.setdefault("meta", []).append(e.name), metadata_type="t/x"
        )
    )
    d.handle(_message(DONE), raw_body=b"", headers={})
    d.handle(_message(FAILED), raw_body=b"", headers={})
    assert seen["failed"] == [FAILED.name]
    assert seen["glob"] == [DONE.name]
    assert seen["all"] == [DONE.name, FAILED.name]
    assert "meta" not in seen


def test_a_message_that_is_not_an_operation_is_quarantined_and_acked(store: SqliteStore) -> None:
    d = Dispatcher(store)
    d.add(Subscription("cb", lambda e: None))
    bad = PushMessage(b"\xff\xff\xff", {"payload_format": "binary"}, "m", "", "", None, "")
    result = d.handle(bad, raw_body=b"raw", headers={"x": "y"})
    assert result.verdict is Verdict.QUARANTINED
    [kept] = store.list_quarantine(limit=5)
    assert kept.body == b"raw" and "not a binary google.longrunning.Operation" in kept.reason


def test_an_operation_attribute_that_contradicts_the_data_is_quarantined(
    store: SqliteStore,
) -> None:
    d = Dispatcher(store)
    result = d.handle(_message(DONE, operation="operations/other"), raw_body=b"", headers={})
    assert result.verdict is Verdict.QUARANTINED and "does not match" in result.reason


def test_messages_without_lrobridge_attributes_get_a_derived_outcome_and_event_id(
    store: SqliteStore,
) -> None:
    events: list[CompletionEvent] = []
    d = Dispatcher(store)
    d.add(Subscription("cb", events.append))
    plain = PushMessage(FAILED.SerializeToString(), {}, "m", "", "", None, "")
    assert d.handle(plain, raw_body=b"", headers={}).verdict is Verdict.ACK
    assert events[0].outcome == "failed" and events[0].event_id


def test_unknown_outcome_filters_are_refused_when_registering() -> None:
    with pytest.raises(InvalidArgument, match="unknown outcome 'done'"):
        Subscription("cb", lambda e: None, outcomes=frozenset({"done"}))


def test_two_callbacks_with_one_name_are_refused(store: SqliteStore) -> None:
    d = Dispatcher(store)
    d.add(Subscription("cb", lambda e: None))
    with pytest.raises(InvalidArgument, match="already registered"):
        d.add(Subscription("cb", lambda e: None))


class _Sink:
    def __init__(self, fail_times: int = 0) -> None:
        self.name = "sink"
        self.accepted: list[str] = []
        self.fail_times = fail_times

    def accept(self, event: CompletionEvent) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise OSError("disk full")
        self.accepted.append(event.event_id)


def test_a_sink_takes_each_event_before_callbacks_and_a_failing_sink_nacks_without_callbacks(
    store: SqliteStore,
) -> None:
    calls: list[CompletionEvent] = []
    sink = _Sink(fail_times=1)
    d = Dispatcher(store)
    d.sinks.append(sink)
    d.add(Subscription("cb", calls.append))
    first = d.handle(_message(DONE), raw_body=b"", headers={})
    assert first.verdict is Verdict.RETRY
    assert "sink" in first.failed and "disk full" in first.failed["sink"]
    assert calls == []
    second = d.handle(_message(DONE), raw_body=b"", headers={})
    assert second.verdict is Verdict.ACK
    assert sink.accepted == [second.event_id]
    assert [c.event_id for c in calls] == [second.event_id]


def test_the_ledger_forgets_succeeded_runs_once_no_redelivery_can_come(
    store: SqliteStore,
) -> None:
    now = [1_000_000.0]
    d = Dispatcher(store, clock=lambda: now[0])
    d.add(Subscription("cb", lambda event: None))
    d.handle(_message(DONE), raw_body=b"", headers={})
    assert (
        store.claim_callback(_message(DONE).attributes["event_id"], "cb", now=now[0], lease=1)
        == "done"
    )
    now[0] += 9 * 86400  # past the retention; the next dispatch prunes
    d.handle(_message(FAILED), raw_body=b"", headers={})
    assert (
        store.claim_callback(_message(DONE).attributes["event_id"], "cb", now=now[0], lease=1)
        == "run"
    )
