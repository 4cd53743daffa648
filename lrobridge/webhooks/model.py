"""The webhook feature's records and its storage seam.

Owns the plain dataclasses the rest of :mod:`lrobridge.webhooks` passes around (a registered
:class:`Webhook`, a :class:`Message` built once per completion event, one :class:`Delivery` of a
message to one webhook, each :class:`Attempt` of a delivery) and :class:`WebhookStore`, the
``typing.Protocol`` every storage backend implements
(:class:`lrobridge.storage.sqlite.webhooks.SqliteWebhookStore`,
:class:`lrobridge.storage.firestore.webhooks.FirestoreWebhookStore`).

Pure module: dataclasses and a Protocol only.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Protocol

from lrobridge.webhooks.filters import WebhookFilter
from lrobridge.webhooks.schedule import Plan


class WebhookState(enum.Enum):
    """Whether a webhook receives deliveries."""

    ENABLED = "ENABLED"
    DISABLED = "DISABLED"  # by a 410 answer, continuous failure, or nobody: see disabled_reason


class DeliveryState(enum.Enum):
    """Where one delivery of one event to one webhook is."""

    PENDING = "PENDING"  # an attempt is due at next_attempt_time (or one is running)
    SUCCEEDED = "SUCCEEDED"  # an attempt got a 2xx answer
    DEAD = "DEAD"  # dead-lettered: retries exhausted or the webhook is disabled; replayable


@dataclasses.dataclass(frozen=True)
class Webhook:
    """A registered endpoint: URL, filter, signing secrets and health."""

    id: str
    url: str
    description: str
    filter: WebhookFilter
    state: WebhookState
    secret: str
    create_time: float
    update_time: float
    disabled_reason: str = ""
    disable_time: float | None = None
    previous_secret: str = ""
    previous_secret_expire_time: float | None = None
    failing_since: float | None = None  # first failed attempt since the last success

    @property
    def name(self) -> str:
        return f"webhooks/{self.id}"

    def signing_secrets(self, now: float) -> tuple[str, ...]:
        """The secrets each request is signed with (:func:`signing_secrets`)."""
        return signing_secrets(
            self.secret, self.previous_secret, self.previous_secret_expire_time, now=now
        )


@dataclasses.dataclass(frozen=True)
class Message:
    """What one completion event sends to every matching webhook (the same bytes each time)."""

    id: str  # the webhook-id header: stable across retries, replays and endpoints
    event_id: str
    event_type: str  # operation.<outcome>
    operation: str
    body: bytes
    create_time: float


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One HTTP attempt of a delivery, as the delivery log shows it."""

    number: int
    time: float
    status_code: int  # 0 when no HTTP answer arrived (refused, timeout, connection error)
    latency: float  # seconds from the start of the attempt to the response headers
    response_body: str  # truncated
    error: str  # why it failed, when it did
    address: str = ""  # the IP address the request was sent to


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One event on its way to one webhook, with its attempts."""

    id: str
    webhook_id: str
    message_id: str
    event_id: str
    event_type: str
    operation: str
    state: DeliveryState
    attempt_count: int  # attempts made in total (the log)
    round_attempts: int  # attempts since creation or the last manual retry (the schedule)
    next_attempt_time: float | None
    create_time: float
    update_time: float
    last_status_code: int = 0
    last_error: str = ""
    attempts: tuple[Attempt, ...] = ()

    @property
    def name(self) -> str:
        return f"deliveries/{self.id}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A due delivery leased to one worker, with everything needed to send it."""

    delivery: Delivery
    token: str  # proves the lease when the result is recorded
    url: str
    secrets: tuple[str, ...]
    body: bytes
    failing_since: float | None


@dataclasses.dataclass(frozen=True)
class NewDelivery:
    """A delivery to create for an event (PENDING, or DEAD at once for a disabled webhook)."""

    webhook_id: str
    state: DeliveryState  # PENDING, or DEAD at once for a disabled webhook
    error: str = ""


class WebhookStore(Protocol):
    """Webhooks, messages, deliveries and attempts; every method is one transaction."""

    def create_webhook(self, webhook: Webhook) -> None: ...

    def get_webhook(self, webhook_id: str) -> Webhook | None: ...

    def list_webhooks(self, *, after: str, limit: int) -> tuple[list[Webhook], str | None]:
        """Webhooks in creation order after cursor ``after`` ('' for the first page); the cursor
        of the next page (opaque ``[0-9a-z-]`` strings, as in lrobridge.storage)."""
        ...

    def all_webhooks(self) -> list[Webhook]: ...

    def delete_webhook(self, webhook_id: str) -> bool:
        """Forget the webhook with its deliveries and their log."""
        ...

    def rotate_secret(
        self, webhook_id: str, *, secret: str, previous_expire_time: float, now: float
    ) -> Webhook | None: ...

    def set_enabled(self, webhook_id: str, *, now: float) -> Webhook | None: ...

    def disable(self, webhook_id: str, *, reason: str, now: float) -> Webhook | None:
        """Disable the webhook and dead-letter its pending deliveries."""
        ...

    def add_message(
        self, message: Message, deliveries: Sequence[NewDelivery], *, now: float
    ) -> list[str]:
        """Store the message and a delivery per webhook unless one exists for this event;
        return the ids of the PENDING deliveries created now (idempotent per event)."""
        ...

    def claim_due(
        self, *, now: float, limit: int, lease: float, only: Sequence[str] | None = None
    ) -> list[Claim]:
        """Due PENDING deliveries of ENABLED webhooks, each leased for ``lease`` seconds."""
        ...

    def record_attempt(self, claim: Claim, attempt: Attempt, plan: Plan, *, now: float) -> bool:
        """Log the attempt and apply the plan; False (log only) if the lease was lost."""
        ...

    def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    def list_deliveries(
        self,
        *,
        webhook_id: str | None,
        state: DeliveryState | None,
        after: str,
        limit: int,
    ) -> tuple[list[Delivery], str | None]:
        """Newest first after cursor ``after`` ('' for the newest); the next page's cursor."""
        ...

    def requeue(self, delivery_id: str, *, now: float) -> Delivery | None:
        """Make a delivery PENDING and due now with a fresh retry schedule."""
        ...

    def requeue_dead_since(self, webhook_id: str, *, since: float, now: float) -> int: ...

    def next_due_time(self) -> float | None: ...

    def count_pending(self, *, due_by: float | None = None) -> int: ...

    def prune(self, *, finished_before: float) -> int:
        """Forget SUCCEEDED and DEAD deliveries last updated before the time, and orphans."""
        ...

    def close(self) -> None: ...


def signing_secrets(
    secret: str, previous_secret: str, previous_secret_expire_time: float | None, *, now: float
) -> tuple[str, ...]:
    """The secrets each request is signed with: the current one, and during a rotation's
    overlap the previous one too (receivers accept either signature)."""
    expires = previous_secret_expire_time
    if previous_secret and expires is not None and now < expires:
        return (secret, previous_secret)
    return (secret,)
