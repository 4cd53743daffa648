"""The one poll decision's table of cases (lrobridge.core.poll.decide), which every watch mode
executes: the poller through its store, the Pub/Sub-driven mode through acks and nacks."""

from __future__ import annotations

import dataclasses
import random

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.rpc import status_pb2

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.poll import PollDecision, Step, decide, next_poll_time
from lrobridge.core.records import WatchRecord, WatchState
from lrobridge.errors import (
    BridgeError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

NAME = "projects/p/operations/op1"
NOW = 1_000.0


class _NoJitter(Backoff):
    """The watch's backoff without its jitter, so the table can state exact times."""

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return self.base_delay(attempt)


BACKOFF = _NoJitter(initial_delay=2.0, multiplier=2.0, max_delay=8.0)  # 2, 4, 8, 8, ...


def _watch(*, attempt: int = 1, expire_time: float | None = None) -> WatchRecord:
    return WatchRecord(
        id="w1",
        source="grpc://example:1",
        operation=NAME,
        state=WatchState.ACTIVE,
        create_time=0.0,
        update_time=0.0,
        polls=attempt,
        attempt=attempt,
        next_poll=NOW,
        expire_time=expire_time,
        backoff=BACKOFF,
    )


def _pending() -> codec.Snapshot:
    return codec.Snapshot(operation=operations_pb2.Operation(name=NAME, done=False))


def _succeeded() -> codec.Snapshot:
    return codec.Snapshot(operation=operations_pb2.Operation(name=NAME, done=True))


def _cancelled() -> codec.Snapshot:
    error = status_pb2.Status(code=1, message="cancelled")
    return codec.Snapshot(operation=operations_pb2.Operation(name=NAME, done=True, error=error))


PAST = NOW - 1.0
LATER = NOW + 100.0

# (case, watch, observed, held, deleted) -> (step, outcome, next_poll, attempt, error kept)
CASES: list[tuple[str, WatchRecord, object, bool, bool, Step, str | None, float | None, int]] = [
    ("deleted before polling", _watch(), None, False, True, Step.STOP, None, None, 0),
    ("deleted after polling", _watch(), _succeeded(), False, True, Step.STOP, None, None, 0),
    ("not found", _watch(), NotFound("gone"), False, False, Step.COMPLETE, "not_found", None, 0),
    (
        "not found past deadline",
        _watch(expire_time=PAST),
        NotFound("x"),
        False,
        False,
        Step.COMPLETE,
        "not_found",
        None,
        0,
    ),
    (
        "transient",
        _watch(attempt=1),
        Unavailable("down"),
        False,
        False,
        Step.PENDING,
        None,
        NOW + 4.0,
        2,
    ),
    (
        "transient past deadline",
        _watch(expire_time=PAST),
        Unavailable("down"),
        False,
        False,
        Step.COMPLETE,
        "expired",
        None,
        0,
    ),
    ("permanent", _watch(), PermissionDenied("no"), False, False, Step.FAIL, None, None, 0),
    ("bad argument", _watch(), InvalidArgument("bad"), False, False, Step.FAIL, None, None, 0),
    ("succeeded", _watch(), _succeeded(), False, False, Step.COMPLETE, "succeeded", None, 0),
    (
        "done past deadline keeps its outcome",
        _watch(expire_time=PAST),
        _cancelled(),
        False,
        False,
        Step.COMPLETE,
        "cancelled",
        None,
        0,
    ),
    (
        "pending past deadline",
        _watch(expire_time=PAST),
        _pending(),
        False,
        False,
        Step.COMPLETE,
        "expired",
        None,
        0,
    ),
    (
        "pending, long poll held",
        _watch(attempt=3),
        _pending(),
        True,
        False,
        Step.PENDING,
        None,
        NOW,
        3,
    ),
    ("pending", _watch(attempt=0), _pending(), False, False, Step.PENDING, None, NOW + 2.0, 1),
    (
        "pending, backoff capped",
        _watch(attempt=9),
        _pending(),
        False,
        False,
        Step.PENDING,
        None,
        NOW + 8.0,
        10,
    ),
    (
        "pending, next poll capped at the deadline",
        _watch(attempt=9, expire_time=NOW + 3.0),
        _pending(),
        False,
        False,
        Step.PENDING,
        None,
        NOW + 3.0,
        10,
    ),
]


@pytest.mark.parametrize(
    ("watch", "observed", "held", "deleted", "step", "outcome", "next_poll", "attempt"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_poll_decision_table(
    watch: WatchRecord,
    observed: codec.Snapshot | BridgeError | None,
    held: bool,
    deleted: bool,
    step: Step,
    outcome: str | None,
    next_poll: float | None,
    attempt: int,
) -> None:
    decision = decide(watch, observed, now=NOW, held=held, deleted=deleted)
    assert (decision.step, decision.outcome) == (step, outcome)
    if step is Step.PENDING:
        assert decision.next_poll == pytest.approx(next_poll)
        assert decision.attempt == attempt
    else:
        assert decision.next_poll is None


def test_an_error_is_kept_and_the_poll_counts_as_unanswered() -> None:
    error = Unavailable("connection refused")
    decision = decide(_watch(), error, now=NOW)
    assert decision.error is error and not decision.polled
    assert decision.snapshot is None and "connection refused" in decision.reason


def test_an_expiry_while_the_source_fails_leaves_the_snapshot_to_the_caller() -> None:
    decision = decide(_watch(expire_time=PAST), Unavailable("down"), now=NOW)
    # None: the mode publishes the last state it saw (its store, or an empty operation).
    assert decision.snapshot is None and decision.error is not None
    assert "deadline" in decision.reason and "down" in decision.reason


def test_a_completion_carries_what_was_observed() -> None:
    observed = _cancelled()
    decision = decide(_watch(), observed, now=NOW)
    assert decision.snapshot is observed and decision.polled


def test_not_found_publishes_an_empty_done_operation_of_that_name() -> None:
    decision = decide(_watch(), NotFound("gone"), now=NOW)
    assert decision.snapshot is not None and decision.snapshot.name == NAME


def test_a_pending_poll_keeps_the_snapshot_for_the_store() -> None:
    observed = _pending()
    decision = decide(_watch(), observed, now=NOW)
    assert decision.snapshot is observed and decision.polled and decision.error is None


def test_the_next_poll_time_follows_the_backoff_step() -> None:
    watch = dataclasses.replace(_watch(), attempt=2)
    assert next_poll_time(watch, NOW) == pytest.approx(NOW + 8.0)


def test_the_decision_is_a_value() -> None:
    decision = decide(_watch(), _pending(), now=NOW)
    assert isinstance(decision, PollDecision)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.step = Step.FAIL  # type: ignore[misc]
