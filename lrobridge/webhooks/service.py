"""The webhook API: registration, secrets, the delivery log, retries, replays and drains.

:class:`WebhookService` is what the REST views, the CLI (through REST) and the Python API
(``bridge.webhooks``) call, so all of them accept and refuse exactly the same input:

* ``create`` checks the URL with the SSRF guard (resolving the name now), validates the
  filters, generates a ``whsec_`` secret and returns it once;
* ``rotate_secret`` generates a new secret; the previous one keeps signing (both signatures are
  sent) for the overlap period, :data:`DEFAULT_ROTATION_OVERLAP` unless given;
* ``retry`` puts one delivery back on a fresh schedule, due now; ``replay`` does so for every
  dead-lettered delivery of a webhook created since a time; ``enable`` re-enables a webhook that
  a 410 or continuous failure disabled;
* ``drain`` runs due deliveries for a bounded time (the ``POST /v1/deliveries:drain`` endpoint).

Pure module.
"""

from __future__ import annotations

import builtins
import dataclasses
import secrets
import time
from collections.abc import Callable, Iterable

from lrobridge.core import paging
from lrobridge.core.names import validate_resource_id
from lrobridge.errors import FailedPrecondition, InvalidArgument, NotFound, TransientError
from lrobridge.webhooks.filters import WebhookFilter
from lrobridge.webhooks.model import Delivery, DeliveryState, Webhook, WebhookState, WebhookStore
from lrobridge.webhooks.signing import generate_secret
from lrobridge.webhooks.ssrf import Guard
from lrobridge.webhooks.worker import DeliveryWorker, DrainCounts

MAX_DESCRIPTION_LENGTH = 1024
DEFAULT_ROTATION_OVERLAP = 24 * 3600.0
MAX_ROTATION_OVERLAP = 7 * 86400.0
DEFAULT_DRAIN_TIME = 45.0
MAX_DRAIN_TIME = 600.0


@dataclasses.dataclass(frozen=True)
class DrainReport:
    """What a bounded drain of due deliveries did, and what is left."""

    counts: DrainCounts
    elapsed: float
    pending: int  # PENDING deliveries of enabled webhooks after the drain
    due: int  # of which already due (more work than the budget allowed)
    next_attempt_time: float | None


class WebhookService:
    """The webhook API behind REST, the CLI and ``bridge.webhooks``: register, list, rotate, enable,
    replay, retry, drain."""

    def __init__(
        self,
        store: WebhookStore,
        guard: Guard,
        *,
        worker: DeliveryWorker | None = None,
        clock: Callable[[], float] = time.time,
        on_requeued: Callable[[list[str]], None] | None = None,
        page_tokens: paging.PageTokens | None = None,
    ) -> None:
        self._store = store
        self._tokens = page_tokens or paging.process_tokens()
        self._guard = guard
        self._worker = worker
        self._clock = clock
        self._on_requeued = on_requeued

    # -- webhooks ----------------------------------------------------------------------------

    def create(
        self,
        url: str,
        *,
        operation: str | None = None,
        outcomes: str | Iterable[str] | None = None,
        metadata_type: str | None = None,
        description: str = "",
    ) -> tuple[Webhook, str]:
        """Register a webhook; returns it and its signing secret (shown only now)."""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH:
            raise InvalidArgument(
                f"description must be a string of at most {MAX_DESCRIPTION_LENGTH} characters"
            )
        webhook_filter = WebhookFilter.build(
            operation=operation, outcomes=outcomes, metadata_type=metadata_type
        )
        self.check_url(url)
        now = self._clock()
        secret = generate_secret()
        webhook = Webhook(
            id=secrets.token_hex(8),
            url=url,
            description=description,
            filter=webhook_filter,
            state=WebhookState.ENABLED,
            secret=secret,
            create_time=now,
            update_time=now,
        )
        self._store.create_webhook(webhook)
        return webhook, secret

    def check_url(self, url: str) -> None:
        """Refuse a URL the guard refuses, resolving its name now (InvalidArgument)."""
        try:
            self._guard.pin(url)
        except TransientError as exc:
            raise InvalidArgument(f"webhook url {url!r}: {exc.message}") from None

    def get(self, name: str) -> Webhook:
        webhook = self._store.get_webhook(_id(name, "webhooks/", "webhook"))
        if webhook is None:
            raise NotFound(f"webhook {name!r} not found")
        return webhook

    def list(self, *, page_size: int = 0, page_token: str = "") -> tuple[list[Webhook], str]:
        size = paging.page_size(page_size)
        webhooks, cursor = self._store.list_webhooks(
            after=paging.cursor(self._tokens.decode(page_token, "webhooks")), limit=size
        )
        return webhooks, self._tokens.encode("webhooks", after=cursor) if cursor is not None else ""

    def delete(self, name: str) -> None:
        if not self._store.delete_webhook(_id(name, "webhooks/", "webhook")):
            raise NotFound(f"webhook {name!r} not found")

    def rotate_secret(self, name: str, *, overlap: float | None = None) -> tuple[Webhook, str]:
        """A new secret (returned once); the old one also signs for ``overlap`` seconds."""
        overlap = DEFAULT_ROTATION_OVERLAP if overlap is None else overlap
        if not 0 <= overlap <= MAX_ROTATION_OVERLAP:
            raise InvalidArgument(f"overlap {overlap:g}s is outside 0s..7d")
        webhook = self.get(name)
        now = self._clock()
        secret = generate_secret()
        updated = self._store.rotate_secret(
            webhook.id, secret=secret, previous_expire_time=now + overlap, now=now
        )
        if updated is None:
            raise NotFound(f"webhook {name!r} not found")
        return updated, secret

    def enable(self, name: str) -> Webhook:
        webhook = self.get(name)
        if webhook.state is WebhookState.ENABLED:
            return webhook
        self.check_url(webhook.url)
        updated = self._store.set_enabled(webhook.id, now=self._clock())
        if updated is None:
            raise NotFound(f"webhook {name!r} not found")
        return updated

    # -- deliveries --------------------------------------------------------------------------

    def deliveries(
        self,
        webhook: str | None = None,
        *,
        state: DeliveryState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[builtins.list[Delivery], str]:
        """Deliveries (newest first) of one webhook or of all, with their attempt log."""
        webhook_id = self.get(webhook).id if webhook is not None else None
        size = paging.page_size(page_size)
        items, cursor = self._store.list_deliveries(
            webhook_id=webhook_id,
            state=state,
            after=paging.cursor(self._tokens.decode(page_token, "deliveries")),
            limit=size,
        )
        return items, self._tokens.encode("deliveries", after=cursor) if cursor is not None else ""

    def delivery(self, name: str) -> Delivery:
        delivery = self._store.get_delivery(_id(name, "deliveries/", "delivery"))
        if delivery is None:
            raise NotFound(f"delivery {name!r} not found")
        return delivery

    def retry(self, name: str) -> Delivery:
        """Send one delivery again (whatever its state) on a fresh schedule, starting now."""
        delivery = self.delivery(name)
        webhook = self.get(delivery.webhook_id)
        if webhook.state is not WebhookState.ENABLED:
            raise FailedPrecondition(
                f"webhook {webhook.name} is disabled ({webhook.disabled_reason}); "
                f"enable it first (POST /v1/{webhook.name}:enable)"
            )
        requeued = self._store.requeue(delivery.id, now=self._clock())
        if requeued is None:
            raise NotFound(f"delivery {name!r} not found")
        self._requeued([requeued.id])
        return requeued

    def replay(self, name: str, *, since: float) -> int:
        """Requeue every dead-lettered delivery of the webhook created at or after ``since``."""
        webhook = self.get(name)
        if webhook.state is not WebhookState.ENABLED:
            raise FailedPrecondition(
                f"webhook {webhook.name} is disabled ({webhook.disabled_reason}); enable it first"
            )
        count = self._store.requeue_dead_since(webhook.id, since=since, now=self._clock())
        if count:
            self._requeued([])
        return count

    def _requeued(self, ids: builtins.list[str]) -> None:
        if self._on_requeued is not None:
            self._on_requeued(ids)

    def drain(self, *, max_time: float = DEFAULT_DRAIN_TIME) -> DrainReport:
        """Run due deliveries for at most ``max_time`` seconds (plus one request timeout)."""
        if not 0 < max_time <= MAX_DRAIN_TIME:
            raise InvalidArgument(f"maxTime {max_time:g}s is outside (0s, {MAX_DRAIN_TIME:g}s]")
        if self._worker is None:
            raise FailedPrecondition("this webhook service has no delivery worker")
        started = time.monotonic()
        counts = self._worker.run_due(budget=max_time)
        now = self._clock()
        return DrainReport(
            counts=counts,
            elapsed=time.monotonic() - started,
            pending=self._store.count_pending(),
            due=self._store.count_pending(due_by=now),
            next_attempt_time=self._store.next_due_time(),
        )


def _id(name: str, prefix: str, kind: str) -> str:
    if not isinstance(name, str):
        raise InvalidArgument(f"{kind} name must be a string")
    return validate_resource_id(name.removeprefix(prefix), kind)
