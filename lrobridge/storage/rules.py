"""The main store's rulebook: every state transition stated once, as a guard and field changes.

Both backends (:mod:`lrobridge.storage.sqlite.store`, :mod:`lrobridge.storage.firestore.store`)
keep the same fields under the same names (a SQLite column is a Firestore field), so a rule
reads the current row or document as a plain mapping and answers with plain values: ``None``
when its guard refuses (nothing is written), else the fields to write. A backend only reads
what a rule needs and executes the answer inside its own transaction (``BEGIN IMMEDIATE`` on
SQLite, a read-write transaction on Firestore); it decides nothing itself. The mappers from a
row or document to the records the core passes around are here too, written once.

Leases and the fencing rule. A claim (a due poll, a due publish, a callback run) stamps the row
with a token: ``lease_owner`` (``host:pid#random``, one per claim) on watches and outbox
entries, the ``attempts`` count on callback runs, ``claim_token`` on webhook deliveries. The
store object that claimed remembers the token (:class:`LeaseBook`; a webhook
:class:`~lrobridge.webhooks.model.Claim` carries its own) and every write it makes under that
lease goes through :func:`lease_holds`: refused once the row carries another token, i.e. once
another process or instance took the lease over (after it expired), even if that one has since
released it. A write by a store object that took no lease (an API call, a test) is not fenced.

The tombstone. Deleting an operation through the Operations API leaves its row with the outcome
:data:`~lrobridge.core.codec.DELETED` (no data, no watch): a watch message still in flight
learns from it that it must stop, nothing but a new watch brings it back (:func:`track`), and
listings skip it.

Pure module: no sqlite3, no Firestore; plain values in, plain values out.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeGuard, TypeVar, cast

from lrobridge.config import QUARANTINE_MAX_AGE, QUARANTINE_MAX_BYTES
from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import (
    ClaimResult,
    Completion,
    OperationRecord,
    Origin,
    OutboxEntry,
    PendingMessage,
    PendingUpdate,
    QuarantinedMessage,
    WatchRecord,
    WatchState,
)
from lrobridge.errors import Code, FailedPrecondition, NotFound
from lrobridge.webhooks.filters import WebhookFilter
from lrobridge.webhooks.model import Attempt, Delivery, DeliveryState, Webhook, WebhookState

# Lease of an outbox entry written by a caller that publishes it at once; reclaimed if it dies.
PUBLISH_LEASE_SECONDS = 60.0
# The code a watch shows while its completion waits for Pub/Sub (UNAVAILABLE).
PUBLISHING_ERROR_CODE = int(Code.UNAVAILABLE)

Row = Mapping[str, Any]  # a row or a document as read: field name -> value
Fields = dict[str, Any]  # fields to write
K = TypeVar("K", bound=Hashable)  # the key of a row in a batch (a watch id, a name)

# The fields both backends keep, in the order the SQLite backend selects them.
WATCH_FIELDS = (
    "id",
    "source",
    "operation",
    "state",
    "create_time",
    "update_time",
    "polls",
    "attempt",
    "next_poll",
    "expire_time",
    "initial_delay",
    "multiplier",
    "max_delay",
    "progress",
    "outcome",
    "event_id",
    "last_error_code",
    "last_error_message",
    "lease_owner",
)
OPERATION_FIELDS = (
    "name",
    "parent",
    "source",
    "origin",
    "done",
    "outcome",
    "error_code",
    "metadata_type",
    "response_type",
    "data",
    "data_format",
    "create_time",
    "update_time",
    "cancel_requested",
)
OUTBOX_FIELDS = (
    "id",
    "event_id",
    "operation",
    "watch_id",
    "data",
    "attributes",
    "ordering_key",
    "attempt",
    "next_attempt",
    "last_error",
    "lease_owner",
    "create_time",
)
CALLBACK_RUN_FIELDS = (
    "event_id",
    "callback",
    "state",
    "lease_until",
    "attempts",
    "last_error",
    "update_time",
    "lease_owner",
)


@dataclasses.dataclass(frozen=True)
class Put:
    """What to write to one row or document: all of it (``create``: insert, or replace a
    tombstone) or only ``fields`` of the existing one."""

    fields: Fields
    create: bool = False


class BatchRows(Generic[K]):
    """The rows one batched write reads and writes, keyed by id: what the rules see of each
    row as the batch goes (a row written earlier in the batch is read as written, so a second
    completion of one watch in one batch meets the watch the first left, as it would one call
    after the other), and each row's writes folded into one :class:`Put` for the backend to
    execute at the end (a row created then changed is one creation)."""

    def __init__(self, rows: Mapping[K, Row | None]) -> None:
        self._rows: dict[K, Row | None] = dict(rows)
        self._puts: dict[K, Put] = {}

    def get(self, key: K) -> Row | None:
        """The row as the batch sees it now (None: there is none)."""
        return self._rows.get(key)

    def write(self, key: K, write: Put | Fields | None) -> None:
        """A rule's answer for the row ``key``: a :class:`Put`, fields to update, or None."""
        if write is None:
            return
        put = write if isinstance(write, Put) else Put(write)
        earlier = self._puts.get(key)
        if put.create:
            self._rows[key] = dict(put.fields)
            self._puts[key] = Put(dict(put.fields), create=True)
            return
        self._rows[key] = {**(self._rows.get(key) or {}), **put.fields}
        if earlier is None:
            self._puts[key] = Put(dict(put.fields))
        else:
            self._puts[key] = Put({**earlier.fields, **put.fields}, create=earlier.create)

    def puts(self) -> dict[K, Put]:
        """Each written row's one write, in the order the rows were first written."""
        return dict(self._puts)


# -- leases and the fencing rule ------------------------------------------------------------


def lease_holds(current: object, held: object | None) -> bool:
    """THE fencing rule, for every lease: a write made under a lease (``held`` = the token the
    writer's claim stamped) goes through only while the row still carries that token; once the
    lease was taken over, the write is refused. ``None``: the writer took no lease."""
    return held is None or current == held


def _active_under(watch: Row | None, held: object | None) -> TypeGuard[Row]:
    """The guard of every poll-state write: the watch is ACTIVE and the lease it was written
    under still holds (the fencing rule)."""
    return (
        watch is not None
        and watch["state"] == WatchState.ACTIVE
        and lease_holds(watch["lease_owner"], held)
    )


def lease_token(owner: str) -> str:
    """A fresh token for one claim by ``owner`` (``host:pid``): ``host:pid#random``."""
    return f"{owner}#{secrets.token_hex(6)}"


def lease_process(token: str) -> str:
    """The ``host:pid`` that took the lease a token stands for."""
    return token.partition("#")[0]


class LeaseBook:
    """The leases one store object took: for each leased row (kind, id), the token its claim
    stamped. Thread-safe. An entry goes once a write under it went through (or the row is
    gone); one whose write was refused stays, so every later write under that lost lease is
    refused too, until this object claims the row again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, Hashable], object] = {}

    def took(self, kind: str, key: Hashable, token: object) -> None:
        with self._lock:
            self._tokens[(kind, key)] = token

    def held(self, kind: str, key: Hashable) -> object | None:
        """The token of this object's lease on the row (None: it took none)."""
        with self._lock:
            return self._tokens.get((kind, key))

    def settled(self, kind: str, key: Hashable, *, wrote: bool) -> None:
        """A write under the lease is over: ``wrote`` (it went through, or the row is gone)
        forgets the lease; a refused one keeps it fenced."""
        if wrote:
            with self._lock:
                self._tokens.pop((kind, key), None)


def claim_poll(now: float, lease: float, token: str) -> Fields:
    """A due poll leased to ``token`` until ``now + lease``."""
    return {"next_poll": now + lease, "lease_owner": token}


def claim_publish(now: float, lease: float, token: str) -> Fields:
    """A due outbox entry leased to ``token`` until ``now + lease``."""
    return {"next_attempt": now + lease, "lease_owner": token}


def poll_due(watch: Row, now: float) -> bool:
    """Whether a watch is due for a poll (the guard of a poll claim)."""
    return bool(watch["state"] == WatchState.ACTIVE and watch["next_poll"] <= now)


def publish_due(entry: Row, now: float) -> bool:
    """Whether an outbox entry is due for (re)publishing (the guard of a publish claim)."""
    return bool(entry["next_attempt"] <= now)


def recover_watch(watch: Row, *, dead: bool, now: float) -> Fields | None:
    """Take back a lease whose process is known to be dead: the watch is due at once."""
    if not dead or not watch["lease_owner"] or watch["state"] != WatchState.ACTIVE:
        return None
    return {"next_poll": min(watch["next_poll"], now), "lease_owner": ""}


def recover_publish(entry: Row, *, dead: bool, now: float) -> Fields | None:
    """Take back an outbox lease whose process is known to be dead: due at once."""
    if not dead or not entry["lease_owner"]:
        return None
    return {"next_attempt": min(entry["next_attempt"], now), "lease_owner": ""}


# -- watches --------------------------------------------------------------------------------


def new_watch(
    watch_id: str,
    *,
    source: str,
    operation: str,
    expire_time: float | None,
    backoff: Backoff,
    progress: bool,
    now: float,
) -> Fields:
    """A registered watch: ACTIVE, due at once."""
    return {
        "id": watch_id,
        "source": source,
        "operation": operation,
        "state": int(WatchState.ACTIVE),
        "create_time": float(now),
        "update_time": float(now),
        "polls": 0,
        "attempt": 0,
        "next_poll": float(now),
        "expire_time": expire_time,
        "initial_delay": backoff.initial_delay,
        "multiplier": backoff.multiplier,
        "max_delay": backoff.max_delay,
        "progress": progress,
        "outcome": "",
        "event_id": "",
        "last_error_code": 0,
        "last_error_message": "",
        "lease_owner": "",
    }


def record_pending(
    watch: Row | None,
    held: object | None,
    *,
    now: float,
    next_poll: float,
    attempt: int,
    polled: bool,
    error_code: int,
    error_message: str,
) -> Fields | None:
    """An ACTIVE watch rescheduled after a poll that found its operation running (or a
    transient error); its lease is released."""
    if not _active_under(watch, held):
        return None
    return {
        "update_time": now,
        "next_poll": next_poll,
        "attempt": attempt,
        "polls": watch["polls"] + int(polled),
        "last_error_code": error_code,
        "last_error_message": error_message,
        "lease_owner": "",
    }


def record_polls(
    watch: Row | None, held: object | None, update: PendingUpdate, *, now: float
) -> Fields | None:
    """A group commit's write of an ACTIVE watch the watcher holds: its poll count, backoff
    step and last error, and ``next_poll`` = the lease's end while it keeps the lease (a
    renewal) or the real next poll once it gives it back (``release``). Refused when the
    watch ended or the lease was taken over (the watcher then forgets the watch)."""
    if not _active_under(watch, held):
        return None
    changes: Fields = {
        "update_time": now,
        "next_poll": update.next_poll,
        "attempt": update.attempt,
        "polls": watch["polls"] + update.polls,
        "last_error_code": update.error_code,
        "last_error_message": update.error_message,
    }
    if update.release:
        changes["lease_owner"] = ""
    return changes


def record_completion(
    watch: Row | None, held: object | None, completion: Completion, *, now: float
) -> Fields | None:
    """ACTIVE -> PUBLISHING: the operation ended; its completion waits in the outbox."""
    if not _active_under(watch, held):
        return None
    return {
        "state": int(WatchState.PUBLISHING),
        "update_time": now,
        "polls": watch["polls"] + 1,
        "outcome": completion.outcome,
        "event_id": completion.event_id,
        "last_error_code": 0,
        "last_error_message": "",
        "lease_owner": "",
    }


@dataclasses.dataclass(frozen=True)
class EndedWatch:
    """A watch a batch of completions moves to PUBLISHING: its outbox entry is to be written."""

    index: int  # in the batch
    watch_id: str
    completion: Completion
    operation: str
    source: str


def record_completions(
    watches: BatchRows[str],
    held: Sequence[object | None],
    completions: Sequence[tuple[str, Completion]],
    *,
    now: float,
) -> tuple[list[EndedWatch], list[tuple[str, bool]]]:
    """:func:`record_completion` for a batch, in order, on ``watches`` (the batch's rows, each
    read as the batch left it): the watches it ended, and per completion whether the lease it
    was recorded under is settled by writing (``(watch_id, wrote)``)."""
    ended: list[EndedWatch] = []
    settled: list[tuple[str, bool]] = []
    for index, (watch_id, completion) in enumerate(completions):
        watch = watches.get(watch_id)
        changes = record_completion(watch, held[index], completion, now=now)
        settled.append((watch_id, watch is None or changes is not None))
        if watch is None or changes is None:
            continue
        watches.write(watch_id, changes)
        ended.append(EndedWatch(index, watch_id, completion, watch["operation"], watch["source"]))
    return ended, settled


def store_finals(operations: BatchRows[str], ended: Iterable[EndedWatch], *, now: float) -> None:
    """:func:`store_final` of each ended watch's operation, on ``operations`` (the batch's)."""
    for watch in ended:
        final = store_final(
            operations.get(watch.operation),
            watch.operation,
            source=watch.source,
            origin="watch",
            completion=watch.completion,
            now=now,
        )
        operations.write(watch.operation, final)


def record_failure(
    watch: Row | None, held: object | None, *, code: int, message: str, now: float
) -> Fields | None:
    """ACTIVE -> FAILED: the source answered with an error that retrying cannot fix."""
    if not _active_under(watch, held):
        return None
    return {
        "state": int(WatchState.FAILED),
        "update_time": now,
        "polls": watch["polls"] + 1,
        "last_error_code": code,
        "last_error_message": message,
        "lease_owner": "",
    }


def poll_soon(watch: Row, *, now: float) -> Fields | None:
    """An ACTIVE watch made due now (after a cancel request), its backoff started over."""
    if watch["state"] != WatchState.ACTIVE or not watch["next_poll"] > now:
        return None
    return {"next_poll": now, "attempt": 0}


def settle_watch(watch: Row | None) -> bool:
    """Whether a watch completes (PUBLISHING -> COMPLETED) once its outbox entry is settled."""
    return watch is not None and watch["state"] == WatchState.PUBLISHING


def untrack_with_watch(operation: Row | None, *, other_watches: bool) -> bool:
    """Whether deleting a watch forgets its operation: only a watched one nothing else
    (another watch, the producer) keeps tracked."""
    return operation is not None and operation["origin"] == "watch" and not other_watches


# -- outbox ---------------------------------------------------------------------------------


def new_outbox_entry(
    message: PendingMessage,
    *,
    event_id: str,
    operation: str,
    watch_id: str | None,
    now: float,
    token: str,
) -> Fields:
    """A message put in the outbox, leased to its writer (``token``), who publishes it at
    once; taken back after :data:`PUBLISH_LEASE_SECONDS` if that one dies. (No ``id``: each
    backend numbers its entries.)"""
    return {
        "event_id": event_id,
        "operation": operation,
        "watch_id": watch_id,
        "data": message.data,
        "attributes": json.dumps(message.attributes),
        "ordering_key": message.ordering_key,
        "attempt": 0,
        "next_attempt": now + PUBLISH_LEASE_SECONDS,
        "last_error": "",
        "lease_owner": token,
        "create_time": now,
    }


def settle_publish(entry: Row | None, held: object | None) -> bool:
    """Whether a published entry is dropped (it is there and the lease is still ours); its
    watch then completes (:func:`settle_watch`)."""
    return entry is not None and lease_holds(entry["lease_owner"], held)


def retry_publish(
    entry: Row | None, held: object | None, *, next_attempt: float, error_message: str
) -> Fields | None:
    """A failed publish rescheduled; the lease is released."""
    if entry is None or not lease_holds(entry["lease_owner"], held):
        return None
    return {
        "next_attempt": next_attempt,
        "attempt": entry["attempt"] + 1,
        "last_error": error_message,
        "lease_owner": "",
    }


def publish_retried_on_watch(error_message: str, *, now: float) -> Fields:
    """What a watch waiting on a failed publish shows."""
    return {
        "update_time": now,
        "last_error_code": PUBLISHING_ERROR_CODE,
        "last_error_message": f"publishing: {error_message}",
    }


def abandon_publish(
    entry: Row | None, held: object | None, *, reason: str, now: float
) -> Fields | None:
    """An entry Pub/Sub can never take, moved whole to the quarantine: the quarantine row
    (no ``id``), or None when it is gone already (abandoned, or published meanwhile) or the
    lease was taken over. The entry is deleted; its watch fails (:func:`abandoned_watch`)."""
    if entry is None or not lease_holds(entry["lease_owner"], held):
        return None
    headers = {**json.loads(entry["attributes"]), "ordering_key": entry["ordering_key"]}
    return {
        "receive_time": now,
        "reason": f"not publishable: {reason}",
        "body": bytes(entry["data"]),
        "headers": json.dumps(headers),
    }


def abandoned_watch(reason: str, *, now: float) -> Fields:
    """The watch of an abandoned entry: FAILED, saying why."""
    return {
        "state": int(WatchState.FAILED),
        "update_time": now,
        "last_error_code": int(Code.INVALID_ARGUMENT),
        "last_error_message": f"the completion cannot be published: {reason}",
    }


# -- tracked operations ---------------------------------------------------------------------


def new_operation(name: str, *, source: str, origin: Origin, now: float) -> Fields:
    """A tracked operation not observed yet."""
    return {
        "name": name,
        "parent": codec.operation_parent(name),
        "source": source,
        "origin": origin,
        "done": False,
        "outcome": "",
        "error_code": None,
        "metadata_type": "",
        "response_type": "",
        "data": None,
        "data_format": "binary",
        "create_time": now,
        "update_time": now,
        "cancel_requested": False,
    }


def is_tombstone(operation: Row | None) -> bool:
    return operation is not None and operation["outcome"] == codec.DELETED


def track(operation: Row | None, name: str, *, source: str, now: float) -> Put | None:
    """Track a watched operation: a new row, or a tombstone revived; a live one is kept."""
    if operation is not None and not is_tombstone(operation):
        return None
    return Put(new_operation(name, source=source, origin="watch", now=now), create=True)


def observed_pending(
    operation: Row | None, snapshot: codec.Snapshot, *, source: str, now: float
) -> Fields | None:
    """A running operation's new state as a poll saw it; None when unchanged (or ended, or
    not tracked): the caller learns from it whether a progress event may be due."""
    data, data_format = codec.encode_payload(snapshot, "binary")
    if operation is None or operation["done"] or operation["data"] == data:
        return None
    return {
        "data": data,
        "data_format": data_format,
        "metadata_type": snapshot.metadata_type,
        "response_type": snapshot.response_type,
        "source": source,
        "update_time": now,
    }


def _final_fields(snapshot: codec.Snapshot, *, outcome: str, source: str, now: float) -> Fields:
    data, data_format = codec.encode_payload(snapshot, "binary")
    return {
        "source": source,
        "done": snapshot.done,
        "outcome": outcome,
        "error_code": snapshot.error_code,
        "metadata_type": snapshot.metadata_type,
        "response_type": snapshot.response_type,
        "data": data,
        "data_format": data_format,
        "update_time": now,
    }


def store_final(
    operation: Row | None,
    name: str,
    *,
    source: str,
    origin: Origin,
    completion: Completion,
    now: float,
) -> Put:
    """The final state of an operation that ended (tracked or not yet)."""
    final = _final_fields(completion.snapshot, outcome=completion.outcome, source=source, now=now)
    if operation is None:
        return Put({**new_operation(name, source=source, origin=origin, now=now), **final}, True)
    return Put(final)


def record_observation(
    operation: Row | None, snapshot: codec.Snapshot, *, source: str, outcome: str, now: float
) -> Put | None:
    """What a poll saw of an operation tracked without a watch (Pub/Sub-driven mode); one
    that already ended (a tombstone included) keeps its final state."""
    observed = _final_fields(snapshot, outcome=outcome, source=source, now=now)
    if operation is None:
        created = new_operation(snapshot.name, source=source, origin="watch", now=now)
        return Put({**created, **observed}, create=True)
    if operation["done"] or operation["outcome"]:
        return None
    return Put(observed)


def tombstone(operation: Row | None) -> Fields | None:
    """DeleteOperation: the operation's row becomes a tombstone (its watches are deleted)."""
    if operation is None or is_tombstone(operation):
        return None
    return {"outcome": codec.DELETED, "done": False, "data": None, "error_code": None}


def running(operation: Row) -> bool:
    """Whether an operation may still change (not done, no outcome): the opposite of settled."""
    return not operation["done"] and not operation["outcome"]


def request_cancel(operation: Row | None, *, now: float) -> Fields | None:
    if operation is None:
        return None
    return {"cancel_requested": True, "update_time": now}


def new_produced_operation(snapshot: codec.Snapshot, *, source: str, now: float) -> Fields:
    """An operation this process produces, as first created."""
    data, data_format = codec.encode_payload(snapshot, "binary")
    created = new_operation(snapshot.name, source=source, origin="producer", now=now)
    created.update(
        {"metadata_type": snapshot.metadata_type, "data": data, "data_format": data_format}
    )
    return created


def check_produced_running(operation: Row | None, name: str) -> None:
    """The guard of every producer update: NotFound or FailedPrecondition, saying why."""
    if operation is None:
        raise NotFound(f"operation {name!r} is not tracked by this bridge")
    if operation["origin"] != "producer":
        raise FailedPrecondition(f"operation {name!r} is watched, not produced here")
    if operation["done"]:
        raise FailedPrecondition(f"operation {name!r} has already ended")


def update_produced(operation: Row | None, snapshot: codec.Snapshot, *, now: float) -> Fields:
    """New metadata of a running produced operation."""
    check_produced_running(operation, snapshot.name)
    data, data_format = codec.encode_payload(snapshot, "binary")
    return {
        "data": data,
        "data_format": data_format,
        "metadata_type": snapshot.metadata_type,
        "update_time": now,
    }


# -- callback runs --------------------------------------------------------------------------


def claim_callback(
    run: Row | None,
    event_id: str,
    callback: str,
    *,
    now: float,
    lease: float,
    owner: str = "",
    holder_gone: bool = False,
) -> tuple[ClaimResult, Put | None]:
    """Run a callback once per event: ``done`` if it succeeded, ``busy`` while another runner
    holds an unexpired lease (unless ``holder_gone``: its process is known to be dead), else
    ``run`` with the row to write (its ``attempts`` count is the lease's token; ``owner``, the
    claiming ``host:pid``, lets a dead process's claims be found)."""
    if run is not None:
        if run["state"] == "succeeded":
            return "done", None
        if run["state"] == "running" and run["lease_until"] > now and not holder_gone:
            return "busy", None
    running_fields: Fields = {
        "state": "running",
        "lease_until": now + lease,
        "update_time": now,
        "lease_owner": owner,
    }
    if run is None:
        first = {"event_id": event_id, "callback": callback, "attempts": 1, "last_error": ""}
        return "run", Put({**first, **running_fields}, create=True)
    return "run", Put({**running_fields, "attempts": run["attempts"] + 1})


def callback_holder(run: Row | None) -> str:
    """The ``host:pid`` running a callback ('' when none, or not recorded)."""
    if run is None or run["state"] != "running":
        return ""
    return str(run.get("lease_owner") or "")


def recover_callback_run(run: Row, *, dead: bool, now: float) -> Fields | None:
    """A callback run whose process died while it ran: failed at once (not after its lease),
    so the next redelivery runs it again."""
    holder = callback_holder(run)
    if not dead or not holder:
        return None
    return {
        "state": "failed",
        "lease_until": 0.0,
        "lease_owner": "",
        "update_time": now,
        "last_error": f"the process running it ({holder}) died",
    }


def finish_callback(
    run: Row | None, held: object | None, *, ok: bool, error: str, now: float
) -> Fields | None:
    """How a callback run ended; refused when another runner took the lease over."""
    if run is None or not lease_holds(run["attempts"], held):
        return None
    return {
        "state": "succeeded" if ok else "failed",
        "lease_until": 0.0,
        "last_error": error,
        "update_time": now,
        "lease_owner": "",
    }


# -- mappers --------------------------------------------------------------------------------


def watch_record(row: Row) -> WatchRecord:
    return WatchRecord(
        id=row["id"],
        source=row["source"],
        operation=row["operation"],
        state=WatchState(row["state"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        polls=row["polls"],
        attempt=row["attempt"],
        next_poll=row["next_poll"],
        expire_time=row["expire_time"],
        backoff=Backoff(row["initial_delay"], row["multiplier"], row["max_delay"]),
        outcome=row["outcome"],
        event_id=row["event_id"],
        last_error_code=row["last_error_code"],
        last_error_message=row["last_error_message"],
        progress=bool(row["progress"]),
    )


def operation_record(row: Row) -> OperationRecord:
    data = row["data"]
    return OperationRecord(
        name=row["name"],
        source=row["source"],
        origin=cast(Origin, row["origin"]),
        done=bool(row["done"]),
        outcome=row["outcome"],
        error_code=row["error_code"],
        metadata_type=row["metadata_type"],
        response_type=row["response_type"],
        data=bytes(data) if data is not None else None,
        data_format=cast(codec.PayloadFormat, row["data_format"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        cancel_requested=bool(row["cancel_requested"]),
    )


def outbox_entry(row: Row) -> OutboxEntry:
    return OutboxEntry(
        id=row["id"],
        event_id=row["event_id"],
        operation=row["operation"],
        watch_id=row["watch_id"],
        message=PendingMessage(
            data=bytes(row["data"]),
            attributes=json.loads(row["attributes"]),
            ordering_key=row["ordering_key"],
        ),
        attempt=row["attempt"],
    )


@dataclasses.dataclass(frozen=True)
class QuarantineLimits:
    """How much the quarantine keeps (LROBRIDGE_QUARANTINE_MAX_AGE / _MAX_BYTES): entries older
    than ``max_age`` seconds go, and the oldest go while the kept bodies total more than
    ``max_bytes`` (the newest entry is always kept). Applied on every write to the quarantine."""

    max_age: float = QUARANTINE_MAX_AGE
    max_bytes: int = QUARANTINE_MAX_BYTES


def quarantined_message(row: Row) -> QuarantinedMessage:
    """A quarantine row; one read without ``body`` is a summary (``body`` b"", ``size`` from the
    row: the body's length, which the listing shows instead of the body)."""
    body = bytes(row["body"]) if row.get("body") is not None else b""
    size = row.get("size")
    return QuarantinedMessage(
        id=row["id"],
        receive_time=row["receive_time"],
        reason=row["reason"],
        body=body,
        headers=json.loads(row["headers"]),
        size=int(size) if size is not None else len(body),
    )


def new_quarantined(*, reason: str, body: bytes, headers: Mapping[str, str], now: float) -> Fields:
    """A push that can never be processed, kept whole with its reason (no ``id``)."""
    return {"receive_time": now, "reason": reason, "body": body, "headers": json.dumps(headers)}


# -- webhook deliveries (the webhook stores) -----------------------------------------------


def delivery_due(delivery: Row, now: float) -> bool:
    """Whether a delivery is due for an attempt (the guard of a delivery claim; the claim also
    skips deliveries of webhooks that are not ENABLED)."""
    return bool(delivery["state"] == "PENDING" and delivery["next_attempt"] <= now)


def claim_delivery(now: float, lease: float, token: str) -> Fields:
    """A due delivery leased to ``token`` (one per delivery) until ``now + lease``."""
    return {"next_attempt": now + lease, "claim_token": token}


def requeued(now: float) -> Fields:
    """A delivery sent again from now on (retry, replay), on a fresh schedule."""
    return {
        "state": "PENDING",
        "next_attempt": now,
        "round_attempts": 0,
        "claim_token": "",
        "update_time": now,
    }


def disable_webhook(webhook: Row | None, *, reason: str, now: float) -> Fields | None:
    """An ENABLED webhook disabled (410 Gone, continuous failure, an operator); its pending
    deliveries are then dead-lettered (:func:`dead_lettered`)."""
    if webhook is None or webhook["state"] != "ENABLED":
        return None
    return {"state": "DISABLED", "disabled_reason": reason, "disable_time": now, "update_time": now}


def dead_lettered(reason: str, *, now: float) -> Fields:
    """A PENDING delivery of a webhook that was disabled."""
    return {
        "state": "DEAD",
        "next_attempt": None,
        "claim_token": "",
        "last_error": f"webhook disabled: {reason}",
        "update_time": now,
    }


def record_delivery_attempt(
    delivery: Row | None,
    token: str,
    *,
    state: str,
    next_attempt: float | None,
    status_code: int,
    error: str,
    now: float,
) -> Fields | None:
    """A delivery attempt's result, written under the claim that made it (``token``); None
    when the delivery is gone, no longer PENDING or its lease was taken over (the attempt is
    then only logged)."""
    if delivery is None or delivery["state"] != "PENDING":
        return None
    if not lease_holds(delivery["claim_token"], token):
        return None
    return {
        "state": state,
        "next_attempt": next_attempt,
        "claim_token": "",
        "attempt_count": delivery["attempt_count"] + 1,
        "round_attempts": delivery["round_attempts"] + 1,
        "last_status_code": status_code,
        "last_error": error,
        "update_time": now,
    }


def endpoint_health(webhook: Row, *, succeeded: bool, failing_since: float | None) -> Fields:
    """An endpoint's ``failing_since`` after an attempt: cleared by a success, else set once
    (the first failure of a run of failures keeps its time)."""
    if succeeded:
        return {"failing_since": None}
    if webhook["failing_since"] is None:
        return {"failing_since": failing_since}
    return {}


def webhook_record(row: Row, *, outcomes: Iterable[str]) -> Webhook:
    """A webhook as both backends keep it (``outcomes``: the stored list, decoded)."""
    return Webhook(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        filter=WebhookFilter(
            operation=row["operation_glob"],
            outcomes=frozenset(o for o in outcomes if o),
            metadata_type=row["metadata_type"],
        ),
        state=WebhookState(row["state"]),
        secret=row["secret"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        disabled_reason=row["disabled_reason"],
        disable_time=row["disable_time"],
        previous_secret=row["previous_secret"],
        previous_secret_expire_time=row["previous_secret_expire_time"],
        failing_since=row["failing_since"],
    )


def attempt_record(row: Row) -> Attempt:
    return Attempt(
        number=row["number"],
        time=row["time"],
        status_code=row["status_code"],
        latency=row["latency"],
        response_body=row["response_body"],
        error=row["error"],
        address=row["address"],
    )


def delivery_record(row: Row, attempts: tuple[Attempt, ...]) -> Delivery:
    """A delivery as both backends keep it, with its attempt log."""
    return Delivery(
        id=row["id"],
        webhook_id=row["webhook_id"],
        message_id=row["message_id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        operation=row["operation"],
        state=DeliveryState(row["state"]),
        attempt_count=row["attempt_count"],
        round_attempts=row["round_attempts"],
        next_attempt_time=row["next_attempt"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        attempts=attempts,
    )
