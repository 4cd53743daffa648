"""The webhook REST API: a Flask blueprint of thin views over :class:`WebhookService`.

Routes (all under /v1, so the app's API authentication applies to every one of them):

=======  =====================================  ==========================================
POST     /v1/webhooks                           register (answer 201 holds the secret, once)
GET      /v1/webhooks                           list (pageSize, pageToken)
GET      /v1/webhooks/{id}                      one webhook
DELETE   /v1/webhooks/{id}                      forget it, its deliveries and their log
POST     /v1/webhooks/{id}:rotateSecret         new secret; the old one signs for ``overlap``
POST     /v1/webhooks/{id}:enable               re-enable after a 410 or continuous failure
POST     /v1/webhooks/{id}:replay               requeue dead-lettered deliveries ``since``
GET      /v1/webhooks/{id}/deliveries           its delivery log (state, pageSize, pageToken)
GET      /v1/deliveries                         every webhook's deliveries (state=DEAD: DLQ)
GET      /v1/deliveries/{id}                    one delivery with its attempts
POST     /v1/deliveries/{id}:retry              send it again now, on a fresh schedule
POST     /v1/deliveries:drain                   run due deliveries for ``maxTime`` (Scheduler)
=======  =====================================  ==========================================

In ``request`` delivery mode the blueprint also makes the first attempt of the deliveries a
request created (a push, a retry) after its view has run and before the response is sent; in
``background`` mode it starts the process's worker thread with the first request.
Errors are :class:`~lrobridge.errors.BridgeError` and become google.rpc.Status JSON in the app.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from flask import Blueprint, Response, g, has_request_context, request

from lrobridge.adapters.web.http import int_arg, json_body, json_response
from lrobridge.webhooks import resources
from lrobridge.webhooks.service import WebhookService
from lrobridge.webhooks.worker import DrainCounts

log = logging.getLogger(__name__)

_PENDING_KEY = "lrobridge_webhook_deliveries"


def _collect(delivery_ids: Sequence[str]) -> None:
    """Remember deliveries made due during this request (request mode attempts them)."""
    if has_request_context():
        g.setdefault(_PENDING_KEY, []).extend(delivery_ids)


class WebhookFeature(Protocol):
    """The webhook parts the views use (:class:`lrobridge.wiring.parts.WebhookParts`)."""

    @property
    def service(self) -> WebhookService: ...

    def add_pending_hook(self, hook: Callable[[Sequence[str]], None]) -> None: ...

    def deliver_now(self, delivery_ids: Sequence[str]) -> DrainCounts: ...

    def clock(self) -> float: ...


@dataclasses.dataclass(frozen=True)
class WebhookViews:
    """What the webhook views need: the feature's parts (made on first use), how to start this
    process's background worker, and the outbox drain the scheduled drain also runs."""

    parts: Callable[[], WebhookFeature]
    start_worker: Callable[[], bool]
    drain_outbox: Callable[[float], int]
    # Tasks watch mode: reschedules watches whose Cloud Task was lost (None in other modes).
    sweep_watch_tasks: Callable[[], int] | None = None


def blueprint(views: WebhookViews) -> Blueprint:
    bp = Blueprint("lrobridge_webhooks", __name__)
    runtime = views.parts
    runtime().add_pending_hook(_collect)

    @bp.before_app_request
    def _start_worker() -> None:
        views.start_worker()

    @bp.after_app_request
    def _deliver_new(response: Response) -> Response:
        pending = g.pop(_PENDING_KEY, None)
        if pending:
            try:
                runtime().deliver_now(pending)
            except Exception:  # committed: the next drain sends them
                log.exception("in-request webhook delivery failed")
        return response

    def service() -> WebhookService:
        return runtime().service

    @bp.post("/v1/webhooks")
    def create_webhook() -> Response:
        webhook, secret = service().create(
            **resources.create_args_from_json(json_body(required=False))
        )
        return json_response(resources.webhook_to_json(webhook, secret=secret), 201)

    @bp.get("/v1/webhooks")
    def list_webhooks() -> Response:
        webhooks, token = service().list(
            page_size=int_arg("pageSize"), page_token=request.args.get("pageToken", "")
        )
        body: dict[str, Any] = {"webhooks": [resources.webhook_to_json(w) for w in webhooks]}
        if token:
            body["nextPageToken"] = token
        return json_response(body)

    @bp.get("/v1/webhooks/<webhook_id>")
    def get_webhook(webhook_id: str) -> Response:
        return json_response(resources.webhook_to_json(service().get(webhook_id)))

    @bp.delete("/v1/webhooks/<webhook_id>")
    def delete_webhook(webhook_id: str) -> Response:
        service().delete(webhook_id)
        return json_response({})

    @bp.post("/v1/webhooks/<webhook_id>:rotateSecret")
    def rotate_secret(webhook_id: str) -> Response:
        overlap = resources.rotate_args_from_json(json_body(required=False))
        webhook, secret = service().rotate_secret(webhook_id, overlap=overlap)
        return json_response(resources.webhook_to_json(webhook, secret=secret))

    @bp.post("/v1/webhooks/<webhook_id>:enable")
    def enable_webhook(webhook_id: str) -> Response:
        return json_response(resources.webhook_to_json(service().enable(webhook_id)))

    @bp.post("/v1/webhooks/<webhook_id>:replay")
    def replay(webhook_id: str) -> Response:
        since = resources.replay_since_from_json(json_body(required=False), now=runtime().clock())
        count = service().replay(webhook_id, since=since)
        return json_response({"requeued": count, "since": resources.rfc3339(since)})

    def _deliveries(webhook: str | None) -> Response:
        deliveries, token = service().deliveries(
            webhook,
            state=resources.state_arg(request.args.get("state", "")),
            page_size=int_arg("pageSize"),
            page_token=request.args.get("pageToken", ""),
        )
        body: dict[str, Any] = {"deliveries": [resources.delivery_to_json(d) for d in deliveries]}
        if token:
            body["nextPageToken"] = token
        return json_response(body)

    @bp.get("/v1/webhooks/<webhook_id>/deliveries")
    def webhook_deliveries(webhook_id: str) -> Response:
        return _deliveries(webhook_id)

    @bp.get("/v1/deliveries")
    def all_deliveries() -> Response:
        return _deliveries(None)

    @bp.get("/v1/deliveries/<delivery_id>")
    def get_delivery(delivery_id: str) -> Response:
        return json_response(resources.delivery_to_json(service().delivery(delivery_id)))

    @bp.post("/v1/deliveries/<delivery_id>:retry")
    def retry_delivery(delivery_id: str) -> Response:
        return json_response(resources.delivery_to_json(service().retry(delivery_id)))

    @bp.post("/v1/deliveries:drain")
    def drain() -> Response:
        max_time = resources.drain_args_from_json(json_body(required=False))
        kwargs = {} if max_time is None else {"max_time": max_time}
        body = resources.drain_to_json(service().drain(**kwargs))
        # The scheduled drain also republishes outbox entries: on Cloud Run no watcher or
        # background thread may be running to do it.
        body["outboxRepublished"] = views.drain_outbox(10.0)
        if views.sweep_watch_tasks is not None:
            # Tasks watch mode: Cloud Tasks has no dead-letter queue; watches whose task was
            # lost run again.
            body["watchTasksRescheduled"] = views.sweep_watch_tasks()
        return json_response(body)

    return bp
