"""The REST Operations source: google.longrunning.Operations over its default HTTP mapping.

Implements :class:`lrobridge.ports.OperationsSource` with a ``requests`` session against a base
URL that includes the API version (``http://host:port/v1``)::

    GetOperation     GET    {base}/{name}
    CancelOperation  POST   {base}/{name}:cancel
    DeleteOperation  DELETE {base}/{name}
    ListOperations   GET    {base}/{parent}/operations?filter=&pageSize=&pageToken=
    WaitOperation    (no default HTTP mapping: always Unimplemented)

Operation names are validated, and their ``/`` kept as path separators; every other character
that is not a plain URL path character is percent-escaped. Operations keep the JSON object the
server sent (:func:`lrobridge.core.codec.snapshot_from_json`), so metadata and responses of types
this
process does not know travel without loss.

One session per source, pooled for the watcher's concurrency, created on first use (HTTPS with
Application Default Credentials via ``AuthorizedSession``, so building the source needs no
credentials). Redirects are never followed. Only connection *establishment* is retried inside a
call (urllib3 knows the request was not sent, so this is safe for POST and DELETE too); the
watcher reschedules everything else with its own backoff. urllib3 logs each of those retries as
a WARNING; for this source's sessions they are logged at DEBUG instead, so an unreachable source
costs one log line per failed poll (the watcher's), not three.

Errors: HTTP errors through ``google.api_core.exceptions.from_http_response`` and
:func:`lrobridge.errors.classify_api_error` (429/5xx transient, 404 NotFound, 501 Unimplemented,
401/403 credentials); timeouts DeadlineExceeded; connection failures Unavailable; a 2xx body that
is not the expected JSON a FailedPrecondition that names the problem.
"""

from __future__ import annotations

import dataclasses
import http.cookiejar
import json as json_module
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import google.auth.exceptions
import requests
import requests.adapters
from google.api_core import exceptions as api_exceptions
from urllib3.util.retry import Retry

from lrobridge.adapters.sources.adc import credentials_for
from lrobridge.core.codec import ListingPage, Snapshot, snapshot_from_json
from lrobridge.core.names import validate_operation_name
from lrobridge.errors import (
    BridgeError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    classify_api_error,
)

log = logging.getLogger(__name__)

USER_AGENT = "lrobridge/0.1.0"
DEFAULT_POOL_SIZE = 64
# Characters of an operation name sent as they are: "/" separates segments, the rest are
# RFC 3986 pchars. Anything else (notably "%") is percent-escaped.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_BODY_EXCERPT = 200

SessionFactory = Callable[[], requests.Session]


class _QuietRetry(Retry):
    """urllib3's Retry, marked so that its "Retrying (...)" warnings are logged at DEBUG."""


class _DemoteQuietRetries(logging.Filter):
    """Logs urllib3's retry warning at DEBUG when the retry is one of this module's sessions'
    (other users of urllib3 in the process keep theirs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.levelno == logging.WARNING
            and isinstance(args, tuple)
            and args
            and isinstance(args[0], _QuietRetry)
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _demote_retry_warnings() -> None:
    pool_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _DemoteQuietRetries) for f in pool_log.filters):
        pool_log.addFilter(_DemoteQuietRetries())


def _configure(session: requests.Session, pool_size: int) -> requests.Session:
    _demote_retry_warnings()
    retry = _QuietRetry(
        total=2,
        connect=2,
        read=0,
        status=0,
        other=0,
        redirect=0,
        raise_on_redirect=False,
        raise_on_status=False,
        backoff_factor=0.05,
        respect_retry_after_header=False,
    )
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=1, pool_maxsize=pool_size, max_retries=retry
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"{USER_AGENT} python-requests/{requests.__version__}"
    session.headers["Accept"] = "application/json"
    # An API client has no use for cookies, and a shared jar is mutable state across threads.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


def plain_session_factory(pool_size: int = DEFAULT_POOL_SIZE) -> SessionFactory:
    """Unauthenticated session (``http://`` sources)."""

    def make() -> requests.Session:
        return _configure(requests.Session(), pool_size)

    return make


def authorized_session_factory(
    credentials: object | None = None, pool_size: int = DEFAULT_POOL_SIZE
) -> SessionFactory:
    """Session authorized with ``credentials``, default Application Default Credentials looked
    up on first use (``https://`` sources); a missing ADC raises Unauthenticated."""

    def make() -> requests.Session:
        from google.auth.transport.requests import AuthorizedSession

        creds = credentials_for("HTTPS sources", credentials)
        return _configure(AuthorizedSession(creds), pool_size)  # type: ignore[no-untyped-call]

    return make


class RestSource:
    """An Operations server reached over its REST mapping (see the module docstring)."""

    def __init__(self, url: str, session_factory: SessionFactory) -> None:
        self._url = url.rstrip("/")
        self._session_factory = session_factory
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return self._url

    def get_operation(self, name: str, *, timeout: float) -> Snapshot:
        validate_operation_name(name)
        return operation_from(self._request("GET", operation_path(name), timeout=timeout))

    def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot:
        raise wait_unimplemented(self._url, name)

    def cancel_operation(self, name: str, *, timeout: float) -> None:
        validate_operation_name(name)
        self._request("POST", operation_path(name) + ":cancel", timeout=timeout, json={})

    def delete_operation(self, name: str, *, timeout: float) -> None:
        validate_operation_name(name)
        self._request("DELETE", operation_path(name), timeout=timeout)

    def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[ListingPage[Any], str]:
        path, params = list_path(parent, filter, page_size, page_token)
        return page_from(self._request("GET", path, timeout=timeout, params=params))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def __repr__(self) -> str:
        return f"RestSource({self._url!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _get_session(self) -> requests.Session:
        with self._lock:
            if self._closed:
                raise Unavailable(f"source {self._url} is closed")
            if self._session is None:
                self._session = self._session_factory()
            return self._session

    def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> HttpReply:
        check_timeout(timeout)
        url = f"{self._url}/{path}"
        session = self._get_session()
        try:
            response = session.request(
                method, url, params=params, json=json, timeout=timeout, allow_redirects=False
            )
        except requests.Timeout as exc:
            raise DeadlineExceeded(f"{method} {url}: timed out after {timeout}s ({exc})") from None
        except requests.RequestException as exc:
            raise Unavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        except google.auth.exceptions.GoogleAuthError as exc:  # AuthorizedSession refresh
            raise auth_error(method, url, exc) from None
        with response:
            reply = HttpReply(
                method=method,
                url=str(response.url),
                status_code=response.status_code,
                headers={k.lower(): v for k, v in response.headers.items()},
                content=response.content,
            )
        return checked(reply)


# -- shared by the sync and the asyncio REST sources (one set of rules) ---------------------------


@dataclasses.dataclass(frozen=True)
class HttpReply:
    """An HTTP answer in plain values, whichever client received it."""

    method: str
    url: str
    status_code: int
    headers: Mapping[str, str]  # names lowercased
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")


def operation_path(name: str) -> str:
    """The URL path of an operation: its ``/`` kept, everything else not a pchar escaped."""
    return quote(name, safe=_PATH_SAFE)


def list_path(
    parent: str, filter: str, page_size: int, page_token: str
) -> tuple[str, dict[str, str]]:
    """The path and query of one ListOperations page."""
    if parent:
        validate_operation_name(parent)
    if page_size < 0:
        raise InvalidArgument(f"page_size must not be negative, got {page_size}")
    params: dict[str, str] = {}
    if filter:
        params["filter"] = filter
    if page_size:
        params["pageSize"] = str(page_size)
    if page_token:
        params["pageToken"] = page_token
    path = (operation_path(parent) + "/operations") if parent else "operations"
    return path, params


def wait_unimplemented(url: str, name: str) -> BridgeError:
    validate_operation_name(name)
    return Unimplemented(
        f"WaitOperation on {url}: the Operations REST mapping has no WaitOperation "
        "method; use GetOperation"
    )


def checked(reply: HttpReply) -> HttpReply:
    """``reply`` if it is a success; the error it means otherwise (redirects are refused)."""
    if 300 <= reply.status_code < 400:
        location = reply.headers.get("location", "")
        raise FailedPrecondition(
            f"{reply.method} {reply.url}: HTTP {reply.status_code} redirect to {location!r}; "
            "redirects are not followed: use the final URL as the source"
        )
    if reply.status_code >= 400:
        raise http_error(reply)
    return reply


def operation_from(reply: HttpReply) -> Snapshot:
    """The Operation a GetOperation answer carries, its JSON kept as sent."""
    body = _json(reply)
    try:
        return snapshot_from_json(body)
    except InvalidArgument as exc:
        raise _bad_body(reply, f"the body is not an Operation: {exc}") from None


def page_from(reply: HttpReply) -> tuple[ListingPage[Any], str]:
    """The operations and next page token of a ListOperations answer; each operation is
    checked when its snapshot is asked for, its name at once."""
    body = _json(reply)
    if not isinstance(body, Mapping):
        raise _bad_body(reply, "the ListOperations response is not a JSON object")
    operations = body.get("operations", [])
    token = body.get("nextPageToken", "")
    if not isinstance(operations, list) or not isinstance(token, str):
        raise _bad_body(reply, "'operations' must be a list and 'nextPageToken' a string")
    names = []
    for item in operations:
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name:
            raise _bad_body(reply, "an item of 'operations' is not an Operation with a 'name'")
        names.append(name)

    def snapshot(item: Mapping[str, Any]) -> Snapshot:
        try:
            return snapshot_from_json(item)
        except InvalidArgument as exc:  # the item is the error's subject: no body excerpt
            raise FailedPrecondition(
                f"{reply.method} {reply.url}: an item of 'operations' is invalid: {exc.message}"
            ) from None

    return ListingPage(names, operations, snapshot), token


def _json(reply: HttpReply) -> Any:
    try:
        return json_module.loads(reply.content)
    except ValueError:
        content_type = reply.headers.get("content-type", "no Content-Type")
        raise _bad_body(reply, f"the body is not JSON ({content_type})") from None


def _bad_body(reply: HttpReply, problem: str) -> BridgeError:
    # The body goes to the log only: the error is shown to API callers (a watch's
    # lastError), who must not be able to read arbitrary URLs through the bridge.
    log.warning(
        "%s %s: %s; body starts %r", reply.method, reply.url, problem, reply.text[:_BODY_EXCERPT]
    )
    return FailedPrecondition(
        f"{reply.method} {reply.url}: HTTP {reply.status_code}, {problem} "
        "(the bridge's log shows the start of the body)"
    )


def http_error(reply: HttpReply) -> BridgeError:
    """An HTTP error status as lrobridge's error tree (google-api-core's mapping)."""
    try:
        payload = json_module.loads(reply.content)
    except ValueError:
        payload = {"error": {"message": reply.text or "unknown error"}}
    try:
        api_error = api_exceptions.format_http_response_error(
            reply, reply.method, reply.url, payload
        )
    except (AttributeError, TypeError):  # JSON that is not a google.rpc.Status body
        api_error = api_exceptions.from_http_status(  # type: ignore[no-untyped-call]
            reply.status_code, f"{reply.method} {reply.url}: {reply.text[:_BODY_EXCERPT]}"
        )
    return classify_api_error(api_error)


def auth_error(method: str, url: str, exc: google.auth.exceptions.GoogleAuthError) -> BridgeError:
    if isinstance(exc, google.auth.exceptions.TransportError) or getattr(exc, "retryable", False):
        return Unavailable(f"{method} {url}: {type(exc).__name__}: {exc}")
    return Unauthenticated(f"{method} {url}: credentials failed: {type(exc).__name__}: {exc}")
