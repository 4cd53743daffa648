"""The Flask app: thin views over the core (push endpoint, Watch API, Operations facade, health).

Operations facade routes (OPERATIONS.md's HTTP mapping on every tracked name, one catch-all per
method so any ``{name=**/operations/*}`` works): ``GET /v1/{name}`` (GetOperation),
``GET /v1/{parent}/operations`` and ``GET /v1/operations`` (ListOperations: ``filter``,
``pageSize``, ``pageToken``, ``returnPartialSuccess``), ``POST /v1/{name}:cancel``,
``POST /v1/{name}:wait`` (body ``{"timeout": "30s"}``, optional), ``DELETE /v1/{name}``
(``?atSource=true`` deletes it on its source too). Static routes (``/v1/watches``...) win over
the catch-alls.

Views read bytes and headers, call pure core code, and turn results or
:class:`~lrobridge.errors.BridgeError` into responses; ``flask.Request`` never reaches the core.
Every error, including unknown routes and unexpected exceptions, is answered in the
google.rpc.Status JSON form ``{"error": {"code", "message", "status", "details"}}``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from lrobridge.adapters.web.http import (
    bool_arg,
    int_arg,
    json_body,
    json_response,
    request_body,
)
from lrobridge.adapters.web.webhooks import WebhookViews
from lrobridge.adapters.web.webhooks import blueprint as webhooks_blueprint
from lrobridge.config import MAX_REQUEST_BYTES
from lrobridge.core import codec
from lrobridge.core.access import ApiAuth
from lrobridge.core.records import QuarantinedMessage, WatchState
from lrobridge.delivery.push import PushEndpoint, PushResponse
from lrobridge.errors import BridgeError, Code, FailedPrecondition, InvalidArgument, NotFound
from lrobridge.logs import TraceContextMiddleware
from lrobridge.operations.service import OperationsFacade
from lrobridge.watching.pubsub_mode import WatchHandler
from lrobridge.watching.resource import (
    WatchService,
    create_args_from_json,
    duration_field,
    watch_to_json,
)

if TYPE_CHECKING:
    from flask import Blueprint

log = logging.getLogger(__name__)


_HTTP_TO_CODE = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    405: Code.UNIMPLEMENTED,
    409: Code.ALREADY_EXISTS,
    413: Code.INVALID_ARGUMENT,
    415: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
}


def error_response(exc: BridgeError) -> Response:
    return json_response(exc.to_status_json(), exc.code.http_status)


class TaskEndpoint(Protocol):
    """A Cloud Tasks handler: the task's body and headers in, a status and body out
    (:class:`lrobridge.watching.tasks_mode.TaskWatchHandler`,
    :class:`lrobridge.webhooks.retry_tasks.RetryTaskHandler`)."""

    def handle(self, body: bytes, headers: Mapping[str, str]) -> PushResponse: ...


class QuarantineLedger(Protocol):
    """What the quarantine views read: the newest quarantined pushes, with or without their
    bodies, and one by id."""

    def list_quarantine(self, *, limit: int) -> list[QuarantinedMessage]: ...

    def quarantine_summaries(self, *, limit: int) -> list[QuarantinedMessage]: ...

    def get_quarantined(self, entry_id: int) -> QuarantinedMessage: ...


@dataclasses.dataclass(frozen=True)
class AppParts:
    """What the app's views use, and nothing more: the push endpoint, the Watch resource, API
    authentication, the Pub/Sub watch handler (made on first use), the quarantine, the
    Operations facade, the webhook views' parts and the user's blueprints."""

    push: PushEndpoint
    watches: WatchService
    api_auth: ApiAuth
    watch_endpoint: Callable[[], WatchHandler]
    ledger: QuarantineLedger
    facade: OperationsFacade
    webhooks: WebhookViews
    blueprints: Sequence[Blueprint] = ()
    trusted_proxies: int = 0  # LROBRIDGE_TRUSTED_PROXIES: proxies whose X-Forwarded-* count
    # Cloud Tasks handlers (made on first use): POST /tasks/watch, POST /tasks/webhook.
    task_watch_endpoint: Callable[[], TaskEndpoint] | None = None
    webhook_task_endpoint: Callable[[], TaskEndpoint] | None = None


def create_app(parts: AppParts) -> Flask:
    app = Flask("lrobridge")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.wsgi_app = TraceContextMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    proxies = parts.trusted_proxies
    if proxies:
        # X-Forwarded-* are believed only from the configured proxies (the rightmost values);
        # token audiences never depend on them (they come from configuration).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies
        )
    push = parts.push
    watches = parts.watches
    api_auth = parts.api_auth

    @app.errorhandler(BridgeError)
    def _bridge_error(exc: BridgeError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_TO_CODE.get(status, Code.UNKNOWN)
        message = exc.description or exc.name
        if status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif status == 405:
            message = f"{request.method} is not supported on {request.path}"
        body = {"error": {"code": status, "message": message, "status": code.name, "details": []}}
        return json_response(body, status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        body = {
            "error": {
                "code": 500,
                "message": "internal error; the bridge's log has the details",
                "status": "INTERNAL",
                "details": [],
            }
        }
        return json_response(body, 500)

    @app.before_request
    def _authenticate_api() -> None:
        if request.path.startswith("/v1/"):
            api_auth.check(
                request.headers.get("Authorization"),
                serverless_authorization=request.headers.get("X-Serverless-Authorization"),
            )

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.post("/pubsub/push")
    def pubsub_push() -> Response:
        body, headers = request_body(), dict(request.headers)
        result = push.handle(body, headers)
        return json_response(result.body, result.status)

    @app.post("/pubsub/watch")
    def pubsub_watch() -> Response:
        body, headers = request_body(), dict(request.headers)
        result = parts.watch_endpoint().handle(body, headers)
        return json_response(result.body, result.status)

    @app.post("/tasks/watch")
    def tasks_watch() -> Response:
        body, headers = request.get_data(cache=False), dict(request.headers)
        result = _task_endpoint(parts.task_watch_endpoint, "/tasks/watch").handle(body, headers)
        return json_response(result.body, result.status)

    @app.post("/tasks/webhook")
    def tasks_webhook() -> Response:
        body, headers = request.get_data(cache=False), dict(request.headers)
        endpoint = _task_endpoint(parts.webhook_task_endpoint, "/tasks/webhook")
        result = endpoint.handle(body, headers)
        return json_response(result.body, result.status)

    @app.post("/v1/watches")
    def create_watch() -> Response:
        args = create_args_from_json(json_body())
        record, created = watches.create(**args)
        return json_response(watch_to_json(record), 201 if created else 200)

    @app.get("/v1/watches")
    def list_watches() -> Response:
        state_name = request.args.get("state", "")
        state = None
        if state_name:
            try:
                state = WatchState[state_name.upper()]
            except KeyError:
                raise InvalidArgument(
                    f"state {state_name!r} is not one of {', '.join(s.name for s in WatchState)}"
                ) from None
        page_size = int_arg("pageSize")
        records, token = watches.list(
            page_size=page_size, page_token=request.args.get("pageToken", ""), state=state
        )
        body: dict[str, Any] = {"watches": [watch_to_json(r) for r in records]}
        if token:
            body["nextPageToken"] = token
        return json_response(body)

    @app.get("/v1/watches/<watch_id>")
    def get_watch(watch_id: str) -> Response:
        return json_response(watch_to_json(watches.get(watch_id)))

    @app.delete("/v1/watches/<watch_id>")
    def delete_watch(watch_id: str) -> Response:
        watches.delete(watch_id)
        return json_response({})

    @app.get("/v1/quarantine")
    def list_quarantine() -> Response:
        full = _quarantine_view()
        most = MAX_FULL_QUARANTINE_PAGE if full else 1000
        limit = int_arg("pageSize") or min(50, most)
        if not 1 <= limit <= most:
            raise InvalidArgument(
                f"pageSize {limit} is outside 1-{most}"
                + (" with view=FULL (bodies are up to 16 MiB each)" if full else "")
            )
        store = parts.ledger
        kept = (
            store.list_quarantine(limit=limit) if full else store.quarantine_summaries(limit=limit)
        )
        return json_response({"messages": [_quarantined_json(m, full=full) for m in kept]})

    @app.get("/v1/quarantine/<entry_id>")
    def get_quarantined(entry_id: str) -> Response:
        if not entry_id.isdigit():
            raise InvalidArgument(f"quarantine id {entry_id!r} is not a number")
        full = _quarantine_view(default="FULL")
        message = parts.ledger.get_quarantined(int(entry_id))
        return json_response(_quarantined_json(message, full=full))

    app.register_blueprint(webhooks_blueprint(parts.webhooks))
    for blueprint in parts.blueprints:
        app.register_blueprint(blueprint)
    facade = parts.facade

    @app.get("/v1/<path:target>")
    def get_or_list_operations(target: str) -> Response:
        _not_a_resource_route(target)
        if target == "operations" or target.endswith("/operations"):
            snapshots, token = facade.list(
                target.removesuffix("operations").removesuffix("/"),
                filter=request.args.get("filter", ""),
                page_size=int_arg("pageSize"),
                page_token=request.args.get("pageToken", ""),
                return_partial_success=bool_arg("returnPartialSuccess"),
            )
            body: dict[str, Any] = {
                "operations": [codec.operation_json_lenient(s) for s in snapshots]
            }
            if token:
                body["nextPageToken"] = token
            return json_response(body)
        return json_response(codec.operation_json_lenient(facade.get(target)))

    @app.post("/v1/<path:target>")
    def operation_method(target: str) -> Response:
        _not_a_resource_route(target)
        name, _, method = target.rpartition(":")
        if method == "cancel" and name:
            facade.cancel(name)
            return json_response({})
        if method == "wait" and name:
            body = json_body(required=False) or {}
            if not isinstance(body, dict) or set(body) - {"name", "timeout"}:
                raise InvalidArgument('a WaitOperation body is {"timeout": "30s"} (optional)')
            timeout = body.get("timeout")
            seconds = duration_field(timeout, "timeout") if timeout is not None else None
            return json_response(codec.operation_json_lenient(facade.wait(name, timeout=seconds)))
        raise NotFound(f"no such endpoint: POST {request.path} (operations take :cancel or :wait)")

    @app.delete("/v1/<path:name>")
    def delete_operation(name: str) -> Response:
        _not_a_resource_route(name)
        facade.delete(name, at_source=bool_arg("atSource"))
        return json_response({})

    return app


def _task_endpoint(make: Callable[[], TaskEndpoint] | None, route: str) -> TaskEndpoint:
    if make is None:
        raise FailedPrecondition(f"POST {route} is not served by this app (no Cloud Tasks)")
    return make()


# Largest page of quarantined messages with their bodies (each up to MAX_REQUEST_BYTES).
MAX_FULL_QUARANTINE_PAGE = 10
_QUARANTINE_VIEWS = ("BASIC", "FULL")


def _quarantine_view(default: str = "BASIC") -> bool:
    """Whether ``?view=`` asks for bodies (AIP-157 partial responses: BASIC, FULL)."""
    view = request.args.get("view", default).upper()
    if view not in _QUARANTINE_VIEWS:
        raise InvalidArgument(f"view={view!r} is not one of {', '.join(_QUARANTINE_VIEWS)}")
    return view == "FULL"


def _quarantined_json(message: QuarantinedMessage, *, full: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": str(message.id),
        "receiveTime": datetime.datetime.fromtimestamp(message.receive_time, datetime.UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "reason": message.reason,
        "headers": message.headers,
        "bodySize": message.size,
    }
    if full:
        entry["body"] = base64.b64encode(message.body).decode()
    return entry


# The bridge's own collections: a path under them that no route took is a wrong request for
# them, never an operation name (say so, instead of "operation 'watches' is not tracked").
_OWN_COLLECTIONS = ("watches", "webhooks", "deliveries", "quarantine")


def _not_a_resource_route(target: str) -> None:
    collection = target.split("/", 1)[0].split(":", 1)[0]
    if collection in _OWN_COLLECTIONS:
        raise NotFound(
            f"no such endpoint: {request.method} {request.path} ({collection} are served at "
            f"/v1/{collection} and /v1/{collection}/{{id}}; see the README)"
        )
