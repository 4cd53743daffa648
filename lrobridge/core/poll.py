"""The one poll decision: what one poll of a watch means, whatever mode runs the watch.

:func:`decide` maps (the watch, what the poll observed or the error it met, now) to a
:class:`PollDecision`. Every watch mode calls it and only executes the answer in its own way:
the in-process poller (:mod:`lrobridge.watching.poller`) writes the next poll time to its
store, the Pub/Sub-driven mode (:mod:`lrobridge.watching.pubsub_mode`) turns "poll again" into
a nack or a republish. The table of cases, in order:

========================================  ==========  =========================================
observed                                  step        details
========================================  ==========  =========================================
the operation was deleted (tombstone)     STOP        nothing is published
NOT_FOUND                                 COMPLETE    outcome ``not_found``
transient error, deadline passed          COMPLETE    outcome ``expired``, snapshot None: the
                                                      caller publishes the last state it saw
transient error                           PENDING     next poll after the backoff, step + 1
other error (permission, bad name, ...)   FAIL        the watch stops; nothing is published
done                                      COMPLETE    its outcome, even past the deadline
pending, deadline passed                  COMPLETE    outcome ``expired`` with this snapshot
pending, a long poll held its wait        PENDING     poll again now, same backoff step
pending                                   PENDING     next poll after the backoff, step + 1
========================================  ==========  =========================================

The next poll is never later than the watch's deadline, so an expiry is noticed on time.
Pure module: no I/O; the backoff's jitter is its only randomness.
"""

from __future__ import annotations

import dataclasses
import enum

from lrobridge.core import codec
from lrobridge.core.records import WatchRecord
from lrobridge.errors import BridgeError, NotFound, TransientError


class Step(enum.Enum):
    """What a watch does after one poll."""

    PENDING = "pending"  # not done: poll again at ``next_poll``
    COMPLETE = "complete"  # publish the completion with ``outcome``
    FAIL = "fail"  # the source refused for good: stop the watch, publish nothing
    STOP = "stop"  # the operation was deleted meanwhile: stop, publish nothing


@dataclasses.dataclass(frozen=True)
class PollDecision:
    """The answer of :func:`decide` for one poll (see the module's table)."""

    step: Step
    reason: str
    outcome: codec.Outcome | None = None
    # COMPLETE: what to publish (None: the last state the caller saw); PENDING: what was seen.
    snapshot: codec.Snapshot | None = None
    next_poll: float | None = None  # PENDING only
    attempt: int = 0  # PENDING: the backoff step of the next poll
    error: BridgeError | None = None  # the error the poll met, if any

    @property
    def polled(self) -> bool:
        """Whether the source answered (it did unless the poll met an error)."""
        return self.error is None


def decide(
    watch: WatchRecord,
    observed: codec.Snapshot | BridgeError | None,
    *,
    now: float,
    held: bool = False,
    deleted: bool = False,
) -> PollDecision:
    """What one poll of ``watch`` that ``observed`` this at ``now`` means.

    ``observed`` is None when the watch was found deleted before it was polled. ``held``: the
    poll was a long poll (WaitOperation) that the source held for most of its wait, so it
    spaced the polls itself. ``deleted``: DeleteOperation left a tombstone.
    """
    if deleted or observed is None:
        return PollDecision(Step.STOP, "the operation was deleted (DeleteOperation)")
    if isinstance(observed, NotFound):
        snapshot = codec.not_found_snapshot(watch.operation)
        return PollDecision(Step.COMPLETE, "the source does not know it", "not_found", snapshot)
    if isinstance(observed, TransientError):
        if past_deadline(watch, now):
            reason = f"past its deadline while the source fails ({observed.message})"
            return PollDecision(Step.COMPLETE, reason, "expired", None, error=observed)
        return _pending(watch, now, observed.message, None, observed)
    if isinstance(observed, BridgeError):
        return PollDecision(Step.FAIL, observed.message, error=observed)
    outcome = observed.outcome()
    if outcome is not None:
        return PollDecision(Step.COMPLETE, "done", outcome, observed)
    if past_deadline(watch, now):
        return PollDecision(Step.COMPLETE, "past its deadline", "expired", observed)
    if held:
        return PollDecision(
            Step.PENDING,
            "not done (the long poll spaced the polls)",
            snapshot=observed,
            next_poll=now,
            attempt=watch.attempt,
        )
    return _pending(watch, now, "not done", observed, None)


def past_deadline(watch: WatchRecord, now: float) -> bool:
    """Whether the watch's deadline (``expire_time``) has passed."""
    return watch.expire_time is not None and now >= watch.expire_time


def next_poll_time(watch: WatchRecord, now: float) -> float:
    """When to poll again after a pending poll or a transient error: the backoff's delay for
    the watch's step, never later than its deadline."""
    next_poll = now + watch.backoff.delay(watch.attempt)
    if watch.expire_time is not None:
        next_poll = min(next_poll, max(now, watch.expire_time))
    return next_poll


def _pending(
    watch: WatchRecord,
    now: float,
    reason: str,
    snapshot: codec.Snapshot | None,
    error: BridgeError | None,
) -> PollDecision:
    return PollDecision(
        Step.PENDING,
        reason,
        snapshot=snapshot,
        next_poll=next_poll_time(watch, now),
        attempt=watch.attempt + 1,
        error=error,
    )
