"""Plain records the store keeps and the core passes around (watches, quarantined messages).

Pure module: dataclasses only. ``WatchState`` mirrors ``lrobridge.v1.Watch.State`` numbers.
"""

from __future__ import annotations

import dataclasses
import enum

from lrobridge.backoff import Backoff


class WatchState(enum.IntEnum):
    ACTIVE = 1
    PUBLISHING = 2
    COMPLETED = 3
    FAILED = 4


@dataclasses.dataclass(frozen=True)
class PendingMessage:
    """A completion message built and stored before it is handed to Pub/Sub (the outbox)."""

    data: bytes
    attributes: dict[str, str]
    ordering_key: str


@dataclasses.dataclass(frozen=True)
class WatchRecord:
    id: str
    source: str
    operation: str
    state: WatchState
    create_time: float
    update_time: float
    polls: int
    attempt: int  # polls in a row that found it pending (or failed transiently): the backoff step
    next_poll: float  # ACTIVE: when the next poll is due; PUBLISHING: next publish attempt
    expire_time: float | None
    backoff: Backoff
    outcome: str = ""
    event_id: str = ""
    last_error_code: int = 0
    last_error_message: str = ""
    message: PendingMessage | None = None  # set while PUBLISHING
    progress: bool = False  # publish metadata changes of the pending operation

    @property
    def name(self) -> str:
        return f"watches/{self.id}"


@dataclasses.dataclass(frozen=True)
class QuarantinedMessage:
    id: int
    receive_time: float
    reason: str
    body: bytes
    headers: dict[str, str]
