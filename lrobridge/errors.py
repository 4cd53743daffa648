"""The one error tree of lrobridge.

Every failure the bridge reports is one of these, each carrying the google.rpc.Code it maps to,
so adapters (Flask views, the gRPC servicer, the CLI) translate with one table instead of
guessing from exception types::

    BridgeError                       (code, message, details)
    ├── PermanentError                retrying cannot help: ack, quarantine, stop the watch
    │   ├── InvalidArgument           INVALID_ARGUMENT  bad input (request, name, URL, envelope)
    │   │   └── ConfigError           bad configuration (environment, flags)
    │   ├── NotFound                  NOT_FOUND
    │   ├── AlreadyExists             ALREADY_EXISTS
    │   ├── FailedPrecondition        FAILED_PRECONDITION
    │   ├── Unimplemented             UNIMPLEMENTED
    │   ├── Unauthenticated           UNAUTHENTICATED  (HTTP 401)
    │   └── PermissionDenied          PERMISSION_DENIED (HTTP 403)
    └── TransientError                retry with backoff, nack
        ├── Unavailable               UNAVAILABLE  (source down, HTTP 429/5xx, Pub/Sub down)
        ├── DeadlineExceeded          DEADLINE_EXCEEDED
        └── PartialCommit             a batched write failed after committing its first items:
                                      ``committed`` says what they wrote, ``error`` why the
                                      rest did not; write the rest again

Errors raised by google-api-core (``google.api_core.exceptions.GoogleAPICallError``) are
classified into this tree by :func:`classify_api_error`, which is the only place that knows
which gRPC codes are worth retrying.

This module is pure: it imports no gRPC, Flask, Pub/Sub or HTTP client.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar


class Code(enum.IntEnum):
    """google.rpc.Code values and their canonical HTTP status."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

# Codes after which the same request may succeed later. CANCELLED is the call's fate, not an
# answer (a server or proxy shedding calls, a connection going away): asked again, it may succeed.
RETRYABLE_CODES = frozenset(
    {
        Code.CANCELLED,
        Code.UNAVAILABLE,
        Code.DEADLINE_EXCEEDED,
        Code.RESOURCE_EXHAUSTED,
        Code.ABORTED,
        Code.INTERNAL,
        Code.UNKNOWN,
    }
)


class BridgeError(Exception):
    """Base of every error lrobridge raises on purpose."""

    code: Code = Code.UNKNOWN
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        code: Code | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        if code is not None:
            self.code = code

    def to_status_json(self) -> dict[str, Any]:
        """The google.rpc.Status JSON form used in every REST error body."""
        return {
            "error": {
                "code": self.code.http_status,
                "message": self.message,
                "status": self.code.name,
                "details": self.details,
            }
        }


class PermanentError(BridgeError):
    """Retrying the same thing cannot succeed."""


class TransientError(BridgeError):
    """The same thing may succeed later: retry with backoff, nack."""

    code = Code.UNAVAILABLE
    retryable = True


class InvalidArgument(PermanentError):
    """The request is wrong (bad name, filter, body, setting): HTTP 400."""

    code = Code.INVALID_ARGUMENT


class ConfigError(InvalidArgument):
    """The configuration (environment variables, command-line flags) is wrong."""


class NotFound(PermanentError):
    """The named thing does not exist (or is not tracked here): HTTP 404."""

    code = Code.NOT_FOUND


class AlreadyExists(PermanentError):
    """Creating something whose name is taken: HTTP 409."""

    code = Code.ALREADY_EXISTS


class FailedPrecondition(PermanentError):
    """The request is valid but the state does not allow it (e.g. already ended): HTTP 400."""

    code = Code.FAILED_PRECONDITION


class Unimplemented(PermanentError):
    """The method is not offered (by the bridge or by a source): HTTP 501."""

    code = Code.UNIMPLEMENTED


class Unauthenticated(PermanentError):
    """No credentials, or credentials that do not check out: HTTP 401."""

    code = Code.UNAUTHENTICATED


class PermissionDenied(PermanentError):
    """Valid credentials that may not do this: HTTP 403."""

    code = Code.PERMISSION_DENIED


class Unavailable(TransientError):
    """A dependency (source, store, Pub/Sub) cannot be reached now; retrying may help: HTTP 503."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(TransientError):
    """A call took longer than its deadline; retrying may help: HTTP 504."""

    code = Code.DEADLINE_EXCEEDED


class PartialCommit(TransientError):
    """A write committed in several transactions (a Firestore batch, chunk by chunk) that failed
    after the first of them committed: what did commit stays, the rest was not written.

    ``committed`` holds the results of the first ``len(committed)`` items, in input order, as
    the call would have returned them (for ``record_completions``: the outbox entry id, None
    where the rules refused it); ``error`` is the failure of the rest, which carries its code.
    Transient as a whole, since writing the rest again is how it recovers; when ``error`` is
    permanent, the caller writes the rest one at a time to find the item that cannot be."""

    def __init__(self, committed: list[Any], error: BridgeError) -> None:
        super().__init__(
            f"{len(committed)} item(s) committed, then: {error.message}",
            details=error.details,
            code=error.code,
        )
        self.committed = committed
        self.error = error


class OtherPermanentError(PermanentError):
    """A permanent error with a code that has no class of its own (pass ``code=``)."""


class OtherTransientError(TransientError):
    """A retryable error with a code that has no class of its own (pass ``code=``)."""


_BY_CODE: dict[Code, type[BridgeError]] = {
    Code.INVALID_ARGUMENT: InvalidArgument,
    Code.NOT_FOUND: NotFound,
    Code.ALREADY_EXISTS: AlreadyExists,
    Code.FAILED_PRECONDITION: FailedPrecondition,
    Code.UNIMPLEMENTED: Unimplemented,
    Code.UNAUTHENTICATED: Unauthenticated,
    Code.PERMISSION_DENIED: PermissionDenied,
    Code.UNAVAILABLE: Unavailable,
    Code.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def error_for_code(code: int, message: str) -> BridgeError:
    """The BridgeError for a google.rpc.Code number (unknown numbers count as UNKNOWN)."""
    try:
        rpc_code = Code(code)
    except ValueError:
        rpc_code = Code.UNKNOWN
    cls = _BY_CODE.get(rpc_code)
    if cls is not None:
        return cls(message)
    if rpc_code in RETRYABLE_CODES:
        return OtherTransientError(message, code=rpc_code)
    return OtherPermanentError(message, code=rpc_code)


def classify_api_error(exc: BaseException) -> BridgeError:
    """Map a google-api-core exception (or any exception) into the tree.

    Works by duck typing on ``grpc_status_code`` / ``code`` so this module stays free of
    google-api-core imports; anything unrecognised is treated as transient UNAVAILABLE, since a
    network stack raises many shapes of "could not reach it".
    """
    if isinstance(exc, BridgeError):
        return exc
    grpc_code = getattr(exc, "grpc_status_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if grpc_code is not None:
        value = grpc_code.value[0] if isinstance(grpc_code.value, tuple) else int(grpc_code.value)
        return error_for_code(value, str(message))
    http_code = getattr(exc, "code", None)
    if isinstance(http_code, int):
        if http_code == 429 or http_code >= 500:
            return Unavailable(f"HTTP {http_code}: {message}")
        for rpc_code, status in _HTTP_STATUS.items():
            if status == http_code and (rpc_code in _BY_CODE or rpc_code in RETRYABLE_CODES):
                return error_for_code(rpc_code, str(message))
        return OtherPermanentError(f"HTTP {http_code}: {message}", code=Code.FAILED_PRECONDITION)
    return Unavailable(f"{type(exc).__name__}: {message}")
