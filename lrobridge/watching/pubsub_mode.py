"""Serverless watching: a watch is a Pub/Sub message; its subscription's retry policy is the timer.

``LROBRIDGE_WATCH_MODE=pubsub`` replaces the store-driven schedule of
:mod:`lrobridge.watching.poller`
for hosts that give no CPU between requests (Cloud Run with request-based billing):

1. registering a watch publishes a **watch message** to the watch topic (``LROBRIDGE_WATCH_TOPIC``)
   and stores nothing (:class:`PubSubWatchScheduler`);
2. the topic's push subscription delivers it to ``POST /pubsub/watch``, whose handler
   (:class:`WatchHandler`) polls the operation once (GetOperation);
3. done, not found, or past its deadline: the completion message is published exactly as the
   in-process watcher publishes it (:func:`lrobridge.delivery.relay.completion`, built from
   :func:`lrobridge.core.codec.encode_payload`, :func:`~lrobridge.core.codec.completion_attributes`
   and
   :func:`~lrobridge.core.codec.event_id`) and the watch message is acknowledged;
4. still pending, or the source failed transiently: the watch message is **nacked**, so Pub/Sub
   redelivers it after the retry policy's backoff (exponential, ``LROBRIDGE_WATCH_MIN_BACKOFF``
   .. ``LROBRIDGE_WATCH_MAX_BACKOFF``);
5. before a nack would exceed the dead-letter policy's delivery limit
   (``LROBRIDGE_WATCH_MAX_DELIVERIES``) or the message would grow older than
   :data:`REPUBLISH_AGE` (well inside the 7-day retention), the handler instead publishes the
   next watch message with the attempt count carried forward and acks the current one.

This module owns the watch message format (:func:`encode_watch` / :func:`decode_watch`), the
attempt counting (:meth:`RedeliveryPolicy.delivery_attempt`), the decision for one delivery
(:func:`decide`) and the two small services above, which reach Pub/Sub, sources and the
quarantine only through the seams in :mod:`lrobridge.ports`, :mod:`lrobridge.delivery.push` and
:mod:`lrobridge.storage`. Pure module: no Flask, gRPC, Pub/Sub client or HTTP client.

**The watch message** is the ``lrobridge.v1.Watch`` resource in its JSON form (the same form
``GET /v1/watches/{id}`` returns), with attribute ``ce-type`` = :data:`WATCH_EVENT_TYPE` and the
CloudEvents binding attributes, plus ``operation``, ``source`` and ``polls`` for filtering and
inspection (the data is authoritative). ``polls`` counts the deliveries of earlier messages of
the same watch; ``updateTime`` is when this message was published.

**Attempt counting** cannot rely on ``deliveryAttempt``: Pub/Sub sends it only when the
subscription has a dead-letter policy, and the emulator never sends it. Without it, the attempt
is bounded from the message's age: Pub/Sub waits at least the minimum backoff between two
deliveries, so a message ``age`` seconds old has been delivered at most
``1 + age // min_backoff`` times. The bound over-counts (the real backoff grows), so a message
may be republished earlier than needed, never later.

A malformed watch message is quarantined in the store and acknowledged, never redelivered.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from lrobridge.core import codec, poll
from lrobridge.core.backoff import Backoff
from lrobridge.core.names import validate_operation_name
from lrobridge.core.records import WatchRecord, WatchState
from lrobridge.core.source_url import parse_source_url
from lrobridge.delivery import relay
from lrobridge.delivery.envelope import PushMessage
from lrobridge.delivery.push import PushResponse, TokenVerifier, receive
from lrobridge.errors import (
    BridgeError,
    Code,
    FailedPrecondition,
    InvalidArgument,
    OtherTransientError,
    TransientError,
    classify_api_error,
)
from lrobridge.ports import EventLedger, OperationsSource, OperationStore, Publisher
from lrobridge.proto.v1 import watch_pb2
from lrobridge.telemetry import metrics, tracing
from lrobridge.watching.observation import get_observation
from lrobridge.watching.resource import watch_to_json

log = logging.getLogger(__name__)

WATCH_EVENT_TYPE = "lrobridge.watch.v1"
# A watch message older than this is republished rather than nacked again: Pub/Sub drops
# messages older than the subscription's retention (7 days by default, 10 minutes at least;
# the terraform module and `lrobridge pubsub init` keep the default).
REPUBLISH_AGE = 86400.0
# Longest wait for Pub/Sub to confirm a publish before the delivery is nacked instead.
PUBLISH_TIMEOUT = 30.0


# -- the watch message ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WatchMessage:
    """One watch as it travels on the watch topic."""

    operation: str
    source: str
    create_time: float
    publish_time: float  # when this message was published (``updateTime``)
    expire_time: float | None = None
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    polls: int = 0  # deliveries of the earlier messages of this watch
    progress: bool = False

    @property
    def watch_id(self) -> str:
        """The same id for the same (source, operation), however often it is registered."""
        digest = hashlib.sha256(f"{self.source}\n{self.operation}".encode()).hexdigest()
        return digest[:16]

    def record(self, *, polls: int | None = None) -> WatchRecord:
        """The Watch resource this message stands for (state ACTIVE)."""
        return WatchRecord(
            id=self.watch_id,
            source=self.source,
            operation=self.operation,
            state=WatchState.ACTIVE,
            create_time=self.create_time,
            update_time=self.publish_time,
            polls=self.polls if polls is None else polls,
            attempt=self.polls,
            next_poll=self.publish_time,
            expire_time=self.expire_time,
            backoff=self.backoff,
            progress=self.progress,
        )


def encode_watch(watch: WatchMessage) -> tuple[bytes, dict[str, str]]:
    """Data and attributes of a watch message."""
    body = watch_to_json(watch.record())
    body.pop("nextPollTime", None)  # Pub/Sub's retry policy decides that
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    attributes = {
        "ce-specversion": "1.0",
        "ce-type": WATCH_EVENT_TYPE,
        "ce-source": watch.source,
        "ce-id": f"{watch.watch_id}-{watch.polls}",
        "ce-subject": watch.operation,
        "ce-time": _rfc3339(watch.publish_time),
        codec.CONTENT_TYPE_ATTRIBUTE: codec.JSON_CONTENT_TYPE,
        "operation": watch.operation,
        "source": watch.source,
        "polls": str(watch.polls),
    }
    return data, attributes


def decode_watch(message: PushMessage) -> WatchMessage:
    """The watch a pushed message carries; InvalidArgument (quarantine it) when it is none."""
    event_type = message.attributes.get("ce-type")
    if event_type != WATCH_EVENT_TYPE:
        raise InvalidArgument(
            f"not a watch message: attribute ce-type is {event_type!r}, expected "
            f"{WATCH_EVENT_TYPE!r}"
        )
    try:
        body = json.loads(message.data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"watch message data is not JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgument("watch message data is JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidArgument("watch message data must be a JSON object (a Watch resource)")
    watch = watch_pb2.Watch()
    try:
        json_format.ParseDict(body, watch)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"watch message data is not a Watch resource: {exc}") from None
    if not watch.operation:
        raise InvalidArgument("watch message has no 'operation'")
    validate_operation_name(watch.operation)
    source = parse_source_url(watch.source)
    if watch.polls < 0:
        raise InvalidArgument(f"watch message 'polls' is negative ({watch.polls})")
    if not watch.HasField("create_time") or not watch.HasField("update_time"):
        raise InvalidArgument("watch message needs 'createTime' and 'updateTime'")
    backoff = Backoff()
    if watch.HasField("backoff"):
        backoff = Backoff(
            initial_delay=watch.backoff.initial_delay.ToNanoseconds() / 1e9,
            multiplier=watch.backoff.multiplier,
            max_delay=watch.backoff.max_delay.ToNanoseconds() / 1e9,
        )
    return WatchMessage(
        operation=watch.operation,
        source=source,
        create_time=watch.create_time.ToNanoseconds() / 1e9,
        publish_time=watch.update_time.ToNanoseconds() / 1e9,
        expire_time=(
            watch.expire_time.ToNanoseconds() / 1e9 if watch.HasField("expire_time") else None
        ),
        backoff=backoff,
        polls=int(watch.polls),
    )


def parse_publish_time(text: str) -> float | None:
    """Seconds since the epoch of a push message's ``publishTime`` (None if absent or bad)."""
    if not text:
        return None
    stamp = timestamp_pb2.Timestamp()
    try:
        stamp.FromJsonString(text)
    except ValueError:
        return None
    return float(stamp.ToNanoseconds() / 1e9)


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


# -- decisions -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RedeliveryPolicy:
    """What the handler knows of the watch subscription (the settings that created it)."""

    min_backoff: float = 10.0
    max_deliveries: int = 100
    republish_age: float = REPUBLISH_AGE

    def delivery_attempt(
        self, delivery_attempt: int | None, *, publish_time: float, now: float
    ) -> int:
        """Which delivery of its message this is: Pub/Sub's count when it sent one, else the
        upper bound from the message's age (see the module docstring)."""
        if delivery_attempt is not None:
            return delivery_attempt
        age = max(0.0, now - publish_time)
        return 1 + int(age // self.min_backoff)

    def must_republish(self, attempt: int, *, age: float) -> bool:
        """Whether nacking would risk the dead-letter limit or the retention.

        Delivery ``max_deliveries`` is the last before dead-lettering; one more is kept in
        reserve for redeliveries that arrive sooner than the minimum backoff (the emulator's
        retry policy is loose)."""
        return attempt >= self.max_deliveries - 1 or age >= self.republish_age


class Action(enum.Enum):
    """What the Pub/Sub-driven mode does with one watch message after polling."""

    COMPLETE = "complete"  # publish the completion, then ack
    RETRY = "retry"  # nack: Pub/Sub redelivers after the retry policy's backoff
    REPUBLISH = "republish"  # publish the next watch message, then ack
    DROP = "drop"  # permanent error from the source: ack, publish nothing


@dataclasses.dataclass(frozen=True)
class Decision:
    """The action for one watch message, with why, and what to publish or record."""

    action: Action
    reason: str
    outcome: codec.Outcome | None = None
    snapshot: codec.Snapshot | None = None
    next_watch: WatchMessage | None = None
    error: BridgeError | None = None


def decide(
    watch: WatchMessage,
    observed: codec.Snapshot | BridgeError | None,
    *,
    attempt: int,
    now: float,
    policy: RedeliveryPolicy,
    publish_time: float | None = None,
    deleted: bool = False,
) -> Decision:
    """What to do with one delivery of ``watch`` after one poll that ``observed`` this.

    :func:`lrobridge.core.poll.decide` says what the poll means, as for every watch mode; this
    only maps its answer to Pub/Sub's terms: complete -> publish then ack, fail or stop -> ack,
    poll again -> nack (or republish, near the delivery limit or the retention).
    """
    verdict = poll.decide(watch.record(), observed, now=now, deleted=deleted)
    if verdict.step is poll.Step.COMPLETE:
        # An expiry while the source fails has no state of its own; the handler fills in the
        # last state seen.
        snapshot = verdict.snapshot or codec.Snapshot(
            operation=codec.empty_operation(watch.operation)
        )
        return Decision(
            Action.COMPLETE, verdict.reason, verdict.outcome, snapshot, error=verdict.error
        )
    if verdict.step is poll.Step.FAIL:
        return Decision(Action.DROP, verdict.reason, error=verdict.error)
    if verdict.step is poll.Step.STOP:
        return Decision(Action.DROP, verdict.reason)
    return _retry(watch, attempt, now, policy, publish_time, verdict.reason, verdict.error)


def _retry(
    watch: WatchMessage,
    attempt: int,
    now: float,
    policy: RedeliveryPolicy,
    publish_time: float | None,
    reason: str,
    error: BridgeError | None,
) -> Decision:
    age = max(0.0, now - (watch.publish_time if publish_time is None else publish_time))
    if policy.must_republish(attempt, age=age):
        following = dataclasses.replace(watch, polls=watch.polls + attempt, publish_time=now)
        return Decision(
            Action.REPUBLISH,
            f"{reason}; delivery {attempt} of a message {age:.0f}s old: republished",
            next_watch=following,
            error=error,
        )
    return Decision(Action.RETRY, reason, error=error)


# -- services ------------------------------------------------------------------------------


class PubSubWatchScheduler:
    """Registers watches as watch messages (a
    :class:`lrobridge.watching.resource.WatchScheduler`)."""

    def __init__(
        self,
        publisher: Callable[[], Publisher],
        *,
        operations: OperationStore | None = None,
        publish_timeout: float = PUBLISH_TIMEOUT,
    ) -> None:
        self._publisher = publisher  # called on first use: creating a client needs credentials
        self._operations = operations
        self._publish_timeout = publish_timeout

    def schedule(
        self,
        *,
        source: str,
        operation: str,
        expire_time: float | None,
        backoff: Backoff,
        progress: bool,
        now: float,
    ) -> WatchRecord:
        if progress:
            raise FailedPrecondition(
                "progress events need the in-process watcher (LROBRIDGE_WATCH_MODE=poller); "
                "Pub/Sub-driven watches publish completions only"
            )
        watch = WatchMessage(
            operation=operation,
            source=source,
            create_time=now,
            publish_time=now,
            expire_time=expire_time,
            backoff=backoff,
            progress=progress,
        )
        data, attributes = encode_watch(watch)
        if self._operations is not None:  # tracked first: a failed publish starts nothing
            self._operations.track_operation(operation, source=source, now=now)
        _publish(self._publisher(), data, attributes, "", self._publish_timeout)
        log.info("watch %s published for %s on %s", watch.watch_id, operation, source)
        return watch.record()


def _publish(
    publisher: Publisher, data: bytes, attributes: dict[str, str], key: str, timeout: float
) -> str:
    """Publish and wait for Pub/Sub's confirmation; every failure leaves as a BridgeError."""
    started = time.monotonic()
    with tracing.span("lrobridge.publish", kind=tracing.SpanKind.PRODUCER) as span:
        if span is not None:  # the message carries the publish span's context on
            attributes = dict(attributes)
            tracing.inject_message(attributes, span)
        try:
            message_id = publisher.publish(data, attributes, key).result(timeout=timeout)
        except BridgeError:
            metrics.publish_failed(time.monotonic() - started, next_step="retry")
            raise
        except Exception as exc:  # a future's TimeoutError, or a library error let through
            metrics.publish_failed(time.monotonic() - started, next_step="retry")
            raise classify_api_error(exc) from exc
    metrics.published(time.monotonic() - started)
    return message_id


STATUS_BY_ACTION = {
    Action.COMPLETE: 204,  # acked once the completion is published
    Action.REPUBLISH: 204,  # acked once the next watch message is published
    Action.DROP: 200,  # acked: the watch cannot succeed
    Action.RETRY: Code.ABORTED.http_status,  # nacked: "not yet" (409, not a server error)
}
UNAVAILABLE_STATUS = 503  # nacked: the source or Pub/Sub failed transiently


@dataclasses.dataclass
class WatchHandlerStats:
    """Counters for the dev stack's progress line (approximate under concurrency)."""

    polls: int = 0
    completions: int = 0
    retries: int = 0
    republished: int = 0
    dropped: int = 0
    quarantined: int = 0


class WatchHandler:
    """Handles one push of a watch message: ``handle(body, headers)`` -> status and body."""

    def __init__(
        self,
        *,
        sources: Callable[[str], OperationsSource],
        completions: Publisher,
        watches: Publisher,
        ledger: EventLedger,
        verifier: TokenVerifier | None,
        policy: RedeliveryPolicy,
        operations: OperationStore | None = None,
        on_completion: Callable[[str], None] | None = None,
        payload_format: codec.PayloadFormat = "binary",
        rpc_timeout: float = 30.0,
        publish_timeout: float = PUBLISH_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._operations = operations
        self._on_completion = on_completion
        self._sources = sources
        self._completions = completions
        self._watches = watches
        self._ledger = ledger
        self._verifier = verifier
        self._policy = policy
        self._payload_format = payload_format
        self._rpc_timeout = rpc_timeout
        self._publish_timeout = publish_timeout
        self._clock = clock
        self.stats = WatchHandlerStats()

    def handle(self, body: bytes, headers: Mapping[str, str]) -> PushResponse:
        received = receive(
            body,
            headers,
            verifier=self._verifier,
            ledger=self._ledger,
            decode=decode_watch,
            clock=self._clock,
            what="watch message",
        )
        if isinstance(received, PushResponse):
            if received.body and "quarantined" in received.body:
                self.stats.quarantined += 1
            return received
        watch = received.content
        # A poll driven by Pub/Sub: the root span of a completion's trace, like the poller's.
        with tracing.span(
            "lrobridge.poll",
            attributes={
                "lrobridge.watch": f"watches/{watch.watch_id}",
                "lrobridge.operation": watch.operation,
                "lrobridge.source": watch.source,
            },
            link_current=True,
        ):
            response = self._run(watch, received.message)
        metrics.push("watch message", "ack" if response.status < 300 else "retry")
        return response

    def _run(self, watch: WatchMessage, message: PushMessage) -> PushResponse:
        deleted = False
        if self._operations is not None:
            record = self._operations.get_operation(watch.operation)
            # DeleteOperation stopped this watch: no poll, acknowledge.
            deleted = record is not None and record.outcome == codec.DELETED
        observed = None if deleted else self._poll(watch)
        now = self._clock()
        publish_time = parse_publish_time(message.publish_time)
        if observed is not None:
            metrics.poll(watch.source, metrics.poll_result(observed))
        attempt = self._policy.delivery_attempt(
            message.delivery_attempt,
            publish_time=watch.publish_time if publish_time is None else publish_time,
            now=now,
        )
        decision = decide(
            watch,
            observed,
            attempt=attempt,
            now=now,
            policy=self._policy,
            publish_time=publish_time,
            deleted=deleted,
        )
        expired_unseen = decision.outcome == "expired" and isinstance(observed, BridgeError)
        if expired_unseen and self._operations is not None:
            record = self._operations.get_operation(watch.operation)
            if record is not None and record.data is not None:
                decision = dataclasses.replace(decision, snapshot=record.snapshot())
        fields = {
            "operation": watch.operation,
            "source": watch.source,
            "watch": watch.watch_id,
            "attempt": attempt,
            "polls": watch.polls + attempt,
            "action": decision.action.value,
        }
        if decision.action is Action.COMPLETE:
            # Last seen pending when this watch message was published.
            pending_seen = watch.publish_time if publish_time is None else publish_time
            metrics.detection_lag(now - pending_seen, source=watch.source)
        elif decision.action is Action.DROP and isinstance(observed, BridgeError):
            metrics.watch_failed(watch.source)
        try:
            self._observe(watch, observed, decision, now)
            body = self._act(watch, decision, now)
        except BridgeError as exc:
            log.warning(
                "%s on %s: could not %s (%s); Pub/Sub will redeliver",
                watch.operation,
                watch.source,
                decision.action.value,
                exc.message,
                extra={"json_fields": fields},
            )
            return PushResponse(UNAVAILABLE_STATUS, exc.to_status_json())
        status = STATUS_BY_ACTION[decision.action]
        if decision.action is Action.RETRY and isinstance(decision.error, TransientError):
            status = UNAVAILABLE_STATUS
        failed = decision.action is Action.DROP and decision.error is not None
        level = logging.ERROR if failed else logging.INFO
        if decision.action is Action.RETRY:
            level = logging.DEBUG
        log.log(
            level,
            "%s on %s: %s (%s)",
            watch.operation,
            watch.source,
            decision.action.value,
            decision.reason,
            extra={"json_fields": fields},
        )
        return PushResponse(status, body)

    def _poll(self, watch: WatchMessage) -> codec.Snapshot | BridgeError:
        self.stats.polls += 1
        return get_observation(
            self._sources, watch.source, watch.operation, timeout=self._rpc_timeout
        )

    def _observe(
        self,
        watch: WatchMessage,
        observed: codec.Snapshot | BridgeError | None,
        decision: Decision,
        now: float,
    ) -> None:
        """What the Operations facade serves: the latest state, the final one once it ended."""
        snapshot = decision.snapshot
        if snapshot is None and isinstance(observed, codec.Snapshot):
            snapshot = observed
        if self._operations is None or snapshot is None:
            return
        outcome = decision.outcome if decision.action is Action.COMPLETE else ""
        self._operations.record_observation(
            snapshot, source=watch.source, outcome=outcome or "", now=now
        )

    def _act(self, watch: WatchMessage, decision: Decision, now: float) -> dict[str, Any] | None:
        if decision.action is Action.COMPLETE:
            assert decision.snapshot is not None and decision.outcome is not None
            message = relay.completion(
                decision.snapshot,
                decision.outcome,
                source=watch.source,
                payload_format=self._payload_format,
                now=now,
            ).message
            _publish(
                self._completions,
                message.data,
                message.attributes,
                message.ordering_key,
                self._publish_timeout,
            )
            self.stats.completions += 1
            if self._on_completion is not None:
                self._on_completion(decision.snapshot.name)
            return None
        if decision.action is Action.REPUBLISH:
            assert decision.next_watch is not None
            data, attributes = encode_watch(decision.next_watch)
            _publish(self._watches, data, attributes, "", self._publish_timeout)
            self.stats.republished += 1
            return None
        if decision.action is Action.DROP:
            self.stats.dropped += 1
            if decision.error is None:  # deleted: nothing went wrong
                return None
            return {
                "dropped": watch.watch_id,
                "error": decision.error.to_status_json()["error"],
            }
        self.stats.retries += 1
        if isinstance(decision.error, TransientError):
            return decision.error.to_status_json()
        return OtherTransientError(
            f"operation {watch.operation!r} is not done; Pub/Sub redelivers this watch after "
            "the subscription's retry backoff",
            code=Code.ABORTED,
        ).to_status_json()
