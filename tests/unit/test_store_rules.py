"""The storage rulebook's guards, as plain values (no backend): the one fencing rule, the
transitions of a watch and of a tracked operation (tombstone and revival), callback-run claims.
The backends executing these rules run the contract tests in test_store.py."""

from __future__ import annotations

from typing import Any

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import Completion, PendingMessage, WatchState
from lrobridge.storage import rules


def _watch(**changes: Any) -> dict[str, Any]:
    watch = rules.new_watch(
        "w1",
        source="grpc://127.0.0.1:1",
        operation="operations/1",
        expire_time=None,
        backoff=Backoff(),
        progress=False,
        now=10.0,
    )
    return {**watch, **changes}


def _pending(watch: dict[str, Any] | None, held: object | None) -> dict[str, Any] | None:
    return rules.record_pending(
        watch,
        held,
        now=20.0,
        next_poll=30.0,
        attempt=1,
        polled=True,
        error_code=0,
        error_message="",
    )


def _done() -> Completion:
    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name="operations/1", done=True))
    return Completion("succeeded", "e1", snapshot, PendingMessage(b"", {}, ""))


@pytest.mark.parametrize(
    ("current", "held", "holds"),
    [
        ("", None, True),  # a write that took no lease is not fenced
        ("host:1#a", None, True),
        ("host:1#a", "host:1#a", True),  # still ours
        ("host:2#b", "host:1#a", False),  # taken over by another claimer
        ("", "host:1#a", False),  # taken over, then released by the other claimer
        (3, 3, True),  # callback runs: the attempts count is the token
        (4, 3, False),
    ],
)
def test_a_write_under_a_lease_goes_through_only_while_the_row_carries_its_token(
    current: object, held: object | None, holds: bool
) -> None:
    assert rules.lease_holds(current, held) is holds


def test_a_claim_stamps_a_fresh_token_naming_the_process() -> None:
    first, second = rules.lease_token("host:7"), rules.lease_token("host:7")
    assert first != second
    assert rules.lease_process(first) == rules.lease_process(second) == "host:7"
    assert rules.lease_process("host:7") == "host:7"  # a token written before tokens had ids


def test_only_an_active_watch_whose_lease_is_still_ours_is_rescheduled() -> None:
    claimed = _watch(lease_owner="host:1#a", polls=2)
    changes = _pending(claimed, "host:1#a")
    assert changes is not None
    assert (changes["next_poll"], changes["polls"], changes["lease_owner"]) == (30.0, 3, "")
    assert _pending(claimed, "host:2#b") is None  # fenced
    assert _pending(_watch(state=int(WatchState.PUBLISHING)), None) is None
    assert _pending(None, None) is None  # deleted meanwhile


def test_a_completion_moves_an_active_watch_to_publishing_and_a_failure_to_failed() -> None:
    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name="operations/1", done=True))
    completion = Completion("succeeded", "e1", snapshot, PendingMessage(b"", {}, "k"))
    done = rules.record_completion(_watch(polls=4), None, completion, now=20.0)
    assert done is not None
    assert (done["state"], done["outcome"], done["polls"]) == (
        WatchState.PUBLISHING,
        "succeeded",
        5,
    )
    failed = rules.record_failure(_watch(), None, code=7, message="denied", now=20.0)
    assert failed is not None and failed["state"] == WatchState.FAILED
    assert (
        rules.record_completion(_watch(state=int(WatchState.FAILED)), None, completion, now=1)
        is None
    )
    assert rules.settle_watch(_watch(state=int(WatchState.PUBLISHING)))
    assert not rules.settle_watch(_watch(state=int(WatchState.FAILED)))


def test_a_tombstone_is_left_once_and_only_tracking_again_revives_it() -> None:
    live = rules.new_operation("operations/1", source="s", origin="watch", now=1.0)
    tombstone = rules.tombstone(live)
    assert tombstone == {"outcome": codec.DELETED, "done": False, "data": None, "error_code": None}
    dead = {**live, **tombstone}
    assert rules.is_tombstone(dead) and rules.tombstone(dead) is None
    assert not rules.running(dead)  # settled: waiters stop waiting
    running = codec.snapshot_from_proto(operations_pb2.Operation(name="operations/1"))
    assert rules.record_observation(dead, running, source="s", outcome="", now=2.0) is None
    assert rules.track(live, "operations/1", source="s", now=2.0) is None  # live: kept
    revived = rules.track(dead, "operations/1", source="s", now=3.0)
    assert revived is not None and revived.create and revived.fields["outcome"] == ""


def test_a_callback_runs_once_and_an_expired_run_may_be_claimed_again() -> None:
    result, first = rules.claim_callback(None, "e", "cb", now=10.0, lease=5.0)
    assert result == "run" and first is not None and first.create
    running = first.fields
    assert rules.claim_callback(running, "e", "cb", now=12.0, lease=5.0) == ("busy", None)
    result, again = rules.claim_callback(running, "e", "cb", now=16.0, lease=5.0)
    assert result == "run" and again is not None and again.fields["attempts"] == 2
    succeeded = {**running, "state": "succeeded"}
    assert rules.claim_callback(succeeded, "e", "cb", now=99.0, lease=5.0) == ("done", None)
    assert rules.finish_callback({**running, "attempts": 2}, 1, ok=True, error="", now=17.0) is None


def test_a_batch_sees_each_row_as_written_and_folds_its_writes_into_one_per_row() -> None:
    watch = _watch()
    rows = rules.BatchRows({"w1": watch, "w2": None})
    assert rows.get("w1") == watch and rows.get("w2") is None and rows.get("w3") is None
    first = rules.record_completion(rows.get("w1"), None, _done(), now=20.0)
    assert first is not None
    rows.write("w1", first)
    assert rows.get("w1") == {**watch, **first}
    assert rules.record_completion(rows.get("w1"), None, _done(), now=21.0) is None  # ended
    rows.write("w1", rules.record_completion(rows.get("w1"), None, _done(), now=21.0))
    rows.write("w2", rules.Put({"name": "w2", "outcome": ""}, create=True))
    rows.write("w2", {"outcome": "succeeded"})  # created, then changed: still one creation
    assert rows.puts() == {
        "w1": rules.Put(first),
        "w2": rules.Put({"name": "w2", "outcome": "succeeded"}, create=True),
    }
    assert rows.get("w2") == {"name": "w2", "outcome": "succeeded"}
