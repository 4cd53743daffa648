"""The hand-off from the push endpoint: one delivery record per matching webhook, committed
before the push is acknowledged.

:class:`WebhookSink` is a :class:`lrobridge.delivery.dispatch.EventSink`. For each decoded event it
matches every webhook's filter and, in one transaction, stores the message (the body, built
once) and a delivery per matching webhook: ``PENDING`` and due at once for an enabled webhook,
``DEAD`` with the reason for a disabled one (so a replay after re-enabling it can send what it
missed). A redelivered push finds the deliveries in place and adds none (idempotent per
event). If the store fails, ``accept`` raises and the push is nacked. After the commit it
reports the new deliveries to ``on_created`` (the runtime wakes the worker or attempts them
inside the request).

Pure module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from lrobridge.delivery.dispatch import CompletionEvent
from lrobridge.webhooks.model import DeliveryState, NewDelivery, WebhookState, WebhookStore
from lrobridge.webhooks.payload import build_message

log = logging.getLogger(__name__)


class WebhookSink:
    """Turns a pushed event into delivery records for the webhooks it matches, before the push is
    acknowledged."""

    name = "webhooks"

    def __init__(
        self,
        store: WebhookStore,
        *,
        clock: Callable[[], float] = time.time,
        on_created: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_created = on_created

    def accept(self, event: CompletionEvent) -> None:
        metadata_type = event.snapshot.metadata_type
        deliveries = []
        for webhook in self._store.all_webhooks():
            if not webhook.filter.matches(
                name=event.name, outcome=event.outcome, metadata_type=metadata_type
            ):
                continue
            if webhook.state is WebhookState.ENABLED:
                deliveries.append(NewDelivery(webhook.id, DeliveryState.PENDING))
            else:
                reason = f"webhook disabled: {webhook.disabled_reason or 'disabled'}"
                deliveries.append(NewDelivery(webhook.id, DeliveryState.DEAD, reason))
        if not deliveries:
            return
        now = self._clock()
        created = self._store.add_message(build_message(event, now=now), deliveries, now=now)
        if created:
            log.debug("event %s: %d webhook deliveries written", event.event_id, len(created))
            if self._on_created is not None:
                try:
                    self._on_created(created)
                except Exception:  # committed already: the worker or a drain sends them
                    log.exception("notifying the webhook worker failed")
