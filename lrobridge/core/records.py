"""Plain records the store keeps and the core passes around.

* :class:`WatchRecord`: one operation on one source that the watcher polls;
* :class:`OperationRecord`: the latest known state of a tracked operation (watched or produced),
  which the Operations facade serves;
* :class:`OutboxEntry`: a message committed to the store before it is handed to Pub/Sub;
* :class:`QuarantinedMessage`: a push that can never be processed, kept whole with its reason;
* :class:`Completion`: how an operation ended, with the message announcing it;
* :class:`PendingUpdate`: what the watcher writes of a watch it holds (group commits).

Pure module: dataclasses only. ``WatchState`` mirrors ``lrobridge.v1.Watch.State`` numbers.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Literal

from lrobridge.core import codec
from lrobridge.core.backoff import Backoff

Origin = Literal["watch", "producer"]
# What claiming a callback run for an event answers (run it, it already ran, another runs it).
ClaimResult = Literal["run", "done", "busy"]


class WatchState(enum.IntEnum):
    """Where a watch is: polled (ACTIVE), its completion waiting for Pub/Sub (PUBLISHING), done
    (COMPLETED, FAILED)."""

    ACTIVE = 1
    PUBLISHING = 2
    COMPLETED = 3
    FAILED = 4


@dataclasses.dataclass(frozen=True)
class PendingMessage:
    """A Pub/Sub message as the outbox keeps it."""

    data: bytes
    attributes: dict[str, str]
    ordering_key: str


@dataclasses.dataclass(frozen=True)
class OutboxEntry:
    """A message waiting for Pub/Sub's acknowledgement; ``watch_id`` completes with it."""

    id: int
    event_id: str
    operation: str
    watch_id: str | None
    message: PendingMessage
    attempt: int


@dataclasses.dataclass(frozen=True)
class WatchRecord:
    """One operation on one source that the watcher polls, with its schedule and last result."""

    id: str
    source: str
    operation: str
    state: WatchState
    create_time: float
    update_time: float
    polls: int
    attempt: int  # polls in a row that found it pending (or failed transiently): the backoff step
    next_poll: float  # ACTIVE: when the next poll is due (or its lease ends)
    expire_time: float | None
    backoff: Backoff
    outcome: str = ""
    event_id: str = ""
    last_error_code: int = 0
    last_error_message: str = ""
    progress: bool = False  # publish metadata changes of the pending operation

    @property
    def name(self) -> str:
        return f"watches/{self.id}"


@dataclasses.dataclass(frozen=True)
class OperationRecord:
    """The latest known state of one tracked operation."""

    name: str
    source: str
    origin: Origin
    done: bool
    outcome: str  # '' while running; an outcome once the bridge knows how it ended
    error_code: int | None
    metadata_type: str
    response_type: str
    data: bytes | None  # codec.encode_payload form; None before the first observation
    data_format: codec.PayloadFormat
    create_time: float
    update_time: float
    cancel_requested: bool = False

    def snapshot(self) -> codec.Snapshot:
        """The stored Operation (only ``name`` before the source was first read)."""
        if self.data is None:
            return codec.Snapshot(operation=codec.empty_operation(self.name))
        return codec.decode_payload(self.data, self.data_format)


@dataclasses.dataclass(frozen=True)
class QuarantinedMessage:
    """A push that can never be processed, kept whole with the reason why."""

    id: int
    receive_time: float
    reason: str
    body: bytes  # b"" in a summary (list without bodies)
    headers: dict[str, str]
    size: int = 0  # the body's length in bytes, also in a summary


@dataclasses.dataclass(frozen=True)
class Completion:
    """How an operation ended, with the message announcing it (written in one transaction)."""

    outcome: str
    event_id: str
    snapshot: codec.Snapshot
    message: PendingMessage


@dataclasses.dataclass(frozen=True)
class PendingUpdate:
    """What the watcher learned of one watch it holds since it last wrote it; many are written
    in one transaction (``record_pending_many``, rule ``storage.rules.record_polls``).

    ``next_poll`` is stored as the watch's due time: the end of this process's lease while it
    keeps the watch (``release`` False), the real next poll when it gives the watch back.
    ``polls`` is how many polls the source answered since the last write (added to the count);
    ``snapshot`` the state to store (given only when it changed)."""

    watch_id: str
    next_poll: float
    attempt: int
    polls: int = 0
    snapshot: codec.Snapshot | None = None
    error_code: int = 0
    error_message: str = ""
    release: bool = False
