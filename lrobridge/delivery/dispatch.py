"""Runs subscribers' callbacks for completion messages, each once per completion event.

The push endpoint hands every decoded Pub/Sub message to :meth:`Dispatcher.handle`:

* a message that cannot be a completion (data not an Operation, bad attributes) is quarantined
  whole in the store with its reason and acknowledged, so it can never loop;
* otherwise every :class:`EventSink` (durable hand-offs such as webhook deliveries) takes the
  event first, then every subscription whose filters match is run unless the ledger says it
  already succeeded for this ``event_id``; a sink or callback that raises is recorded as failed
  and the message is nacked, so Pub/Sub redelivers it and only what failed runs again.

A callback may be an ``async def`` (or return any awaitable): it is awaited to its end on the
process's callback loop (:mod:`lrobridge.delivery.coroutines`) under the same rules.

That is once per event as long as callbacks return; a callback whose process dies while it runs,
or that outlives :data:`CALLBACK_LEASE_SECONDS`, runs again (at least once, never lost). A run
that finishes after its claim was taken over has its result refused by the ledger (its fencing
rule), and the refusal is logged here.

Pure module: no Flask, no Pub/Sub client.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.core import codec
from lrobridge.core.globs import compile_glob, glob_matches
from lrobridge.delivery.coroutines import run_coroutine
from lrobridge.delivery.envelope import PushMessage
from lrobridge.errors import InvalidArgument
from lrobridge.ports import EventLedger

log = logging.getLogger(__name__)

# Longest a callback may run before a redelivery may run it again (Pub/Sub's max ack deadline).
CALLBACK_LEASE_SECONDS = 600.0
# How long the ledger remembers a callback that succeeded: past any redelivery (a
# subscription keeps unacknowledged messages at most 7 days).
CALLBACK_RUN_RETENTION_SECONDS = 8 * 86400.0
PRUNE_INTERVAL_SECONDS = 3600.0
EVENT_TYPES = codec.EVENT_TYPES


@dataclasses.dataclass(frozen=True)
class CompletionEvent:
    """What a callback receives: the Operation as published and the message's attributes."""

    snapshot: codec.Snapshot
    outcome: str
    event_id: str
    source: str
    attributes: Mapping[str, str]
    message_id: str = ""
    delivery_attempt: int | None = None

    @property
    def operation(self) -> operations_pb2.Operation:
        """The google.longrunning.Operation, exactly as the source returned it."""
        return self.snapshot.operation

    @property
    def name(self) -> str:
        return self.snapshot.name

    def operation_json(self) -> dict[str, Any] | None:
        """The Operation in its JSON form (None if it holds an Any of a type unknown here)."""
        return codec.operation_json(self.snapshot)


Callback = Callable[[CompletionEvent], object]


@dataclasses.dataclass(frozen=True)
class Subscription:
    """A callback and the filters that select the events it gets."""

    name: str
    callback: Callback
    operation: str | None = None
    outcomes: frozenset[str] | None = None
    metadata_type: str | None = None

    def __post_init__(self) -> None:
        if self.operation is not None:
            compile_glob(self.operation)
        for outcome in self.outcomes or ():
            if outcome not in EVENT_TYPES:
                raise InvalidArgument(
                    f"subscription {self.name!r}: unknown outcome {outcome!r}; "
                    f"use one of {', '.join(EVENT_TYPES)}"
                )

    def matches(self, event: CompletionEvent) -> bool:
        if self.outcomes is None and event.outcome == "progress":
            return False  # progress events only reach callbacks that ask for them
        if self.outcomes is not None and event.outcome not in self.outcomes:
            return False
        if self.operation is not None and not glob_matches(self.operation, event.name):
            return False
        return self.metadata_type is None or self.metadata_type == event.snapshot.metadata_type


def add_subscription(subscriptions: list[Subscription], subscription: Subscription) -> None:
    """Append ``subscription``; its name must be new (the ledger remembers runs by name)."""
    if any(s.name == subscription.name for s in subscriptions):
        raise InvalidArgument(f"a callback named {subscription.name!r} is already registered")
    subscriptions.append(subscription)


class EventSink(Protocol):
    """Something that must durably take every event before the push is acknowledged.

    ``accept`` is called for every decoded event (progress events included; a sink filters
    for itself) before any callback runs. It must be idempotent per ``event.event_id`` (a
    redelivery calls it again) and return only once what it took is committed; raising makes
    the message be redelivered.
    """

    @property
    def name(self) -> str: ...

    def accept(self, event: CompletionEvent) -> None: ...


class Verdict(enum.Enum):
    """What the push endpoint answers Pub/Sub after dispatching an event."""

    ACK = "ack"  # everything that matched has run successfully (now or before)
    QUARANTINED = "quarantined"  # unprocessable: kept in the store, acked
    RETRY = "retry"  # a callback failed or is running elsewhere: nack for redelivery


@dataclasses.dataclass(frozen=True)
class DispatchResult:
    """How dispatching one event went: the verdict and which callbacks ran."""

    verdict: Verdict
    event_id: str = ""
    operation: str = ""
    ran: tuple[str, ...] = ()
    already_done: tuple[str, ...] = ()
    failed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    busy: tuple[str, ...] = ()
    reason: str = ""
    quarantine_id: int | None = None


def event_from_message(message: PushMessage) -> CompletionEvent:
    """The completion a push message carries; InvalidArgument when it carries none."""
    attributes = message.attributes
    snapshot = codec.decode_payload(message.data, attributes.get("payload_format", "binary"))
    declared = attributes.get("operation")
    if declared is not None and declared != snapshot.name:
        raise InvalidArgument(
            f"attribute operation={declared!r} does not match the Operation's name "
            f"{snapshot.name!r}"
        )
    outcome = attributes.get("outcome") or snapshot.outcome()
    if outcome is None:
        raise InvalidArgument(
            f"Operation {snapshot.name!r} is not done and the message has no outcome attribute"
        )
    if outcome not in EVENT_TYPES:
        raise InvalidArgument(f"unknown outcome attribute {outcome!r}")
    source = attributes.get("source", "")
    event_id = attributes.get("event_id") or codec.event_id(
        source,
        snapshot.name,
        outcome,  # type: ignore[arg-type]
    )
    return CompletionEvent(
        snapshot=snapshot,
        outcome=outcome,
        event_id=event_id,
        source=source,
        attributes=dict(attributes),
        message_id=message.message_id,
        delivery_attempt=message.delivery_attempt,
    )


class Dispatcher:
    """Runs the callbacks (and sinks, e.g. webhooks) an event matches, each once per event, recorded
    in the event ledger."""

    def __init__(
        self,
        ledger: EventLedger,
        *,
        clock: Callable[[], float] = time.time,
        lease: float = CALLBACK_LEASE_SECONDS,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._lease = lease
        self._next_prune = 0.0
        self.subscriptions: list[Subscription] = []
        self.sinks: list[EventSink] = []

    def add(self, subscription: Subscription) -> None:
        add_subscription(self.subscriptions, subscription)

    def _prune_now_and_then(self) -> None:
        now = self._clock()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL_SECONDS
        try:
            pruned = self._ledger.prune_callback_runs(
                older_than=now - CALLBACK_RUN_RETENTION_SECONDS
            )
        except Exception:  # housekeeping must never fail a push; the next hour tries again
            log.warning("forgetting old callback runs failed", exc_info=True)
            return
        if pruned:
            log.info("forgot %d callback runs older than 8 days", pruned)

    def handle(
        self, message: PushMessage, *, raw_body: bytes, headers: dict[str, str]
    ) -> DispatchResult:
        try:
            event = event_from_message(message)
        except InvalidArgument as exc:
            quarantine_id = self._ledger.quarantine(
                reason=exc.message, body=raw_body, headers=headers, now=self._clock()
            )
            log.warning(
                "quarantined message %s (quarantine id %d): %s",
                message.message_id or "?",
                quarantine_id,
                exc.message,
            )
            return DispatchResult(
                Verdict.QUARANTINED, reason=exc.message, quarantine_id=quarantine_id
            )
        return self.dispatch(event)

    def _finish(self, event: CompletionEvent, callback: str, *, ok: bool, error: str) -> None:
        recorded = self._ledger.finish_callback(
            event.event_id, callback, ok=ok, error=error, now=self._clock()
        )
        if not recorded:
            log.warning(
                "callback %s %s for %s (event %s) after its claim was taken over (its lease "
                "ended or its process was presumed dead); this result is not recorded, the run "
                "that took over records its own",
                callback,
                "succeeded" if ok else "failed",
                event.name,
                event.event_id,
            )

    def dispatch(self, event: CompletionEvent) -> DispatchResult:
        self._prune_now_and_then()
        ran: list[str] = []
        done: list[str] = []
        busy: list[str] = []
        failed: dict[str, str] = {}
        for sink in self.sinks:
            try:
                sink.accept(event)
            except Exception as exc:
                failed[sink.name] = f"{type(exc).__name__}: {exc}"
                log.exception("sink %s did not take event %s", sink.name, event.event_id)
        if failed:
            # Nothing runs until every sink holds the event: a redelivery retries them all.
            return DispatchResult(
                Verdict.RETRY, event_id=event.event_id, operation=event.name, failed=failed
            )
        for subscription in self.subscriptions:
            if not subscription.matches(event):
                continue
            claim = self._ledger.claim_callback(
                event.event_id, subscription.name, now=self._clock(), lease=self._lease
            )
            if claim == "done":
                done.append(subscription.name)
                continue
            if claim == "busy":
                busy.append(subscription.name)
                continue
            try:
                result = subscription.callback(event)
                if inspect.isawaitable(result):  # an async def callback: await it to its end
                    run_coroutine(result)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                failed[subscription.name] = error
                log.exception(
                    "callback %s failed for %s (event %s)",
                    subscription.name,
                    event.name,
                    event.event_id,
                )
                self._finish(event, subscription.name, ok=False, error=error)
                continue
            self._finish(event, subscription.name, ok=True, error="")
            ran.append(subscription.name)
        verdict = Verdict.RETRY if failed or busy else Verdict.ACK
        return DispatchResult(
            verdict,
            event_id=event.event_id,
            operation=event.name,
            ran=tuple(ran),
            already_done=tuple(done),
            failed=failed,
            busy=tuple(busy),
        )
