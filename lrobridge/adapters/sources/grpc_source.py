"""The gRPC Operations source: google.longrunning.Operations over one gRPC channel.

Implements :class:`lrobridge.ports.OperationsSource` with googleapis-common-protos'
``OperationsStub``. One channel per source, created on first use (so building a ``grpcs://``
source needs no credentials until it is called), shared by every thread; each call carries its
own deadline. Operations are returned exactly as received: ``metadata`` and ``response`` stay
the original ``Any`` bytes whether or not this process knows their types.

gRPC errors become lrobridge's error tree through ``google.api_core.exceptions.from_grpc_error``
and :func:`lrobridge.errors.classify_api_error` (the one table of retryable codes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from google.api_core import exceptions as api_exceptions
from google.longrunning import operations_grpc_pb2
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import duration_pb2

from lrobridge.adapters.sources.adc import credentials_for
from lrobridge.core.codec import ListingPage, Snapshot, snapshot_from_proto
from lrobridge.core.names import validate_operation_name
from lrobridge.errors import (
    BridgeError,
    InvalidArgument,
    Unavailable,
    classify_api_error,
)

USER_AGENT = "lrobridge/0.1.0"

# Keepalive pings at the pace the default gRPC server policy accepts
# (grpc.http2.min_ping_interval_without_data_ms = 5 min): faster pings during quiet long polls
# earn a GOAWAY "too_many_pings" from servers that keep that default. Dead peers are caught
# sooner by each call's deadline anyway.
CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.primary_user_agent", USER_AGENT),
)

ChannelFactory = Callable[[], grpc.Channel]


def insecure_channel_factory(target: str) -> ChannelFactory:
    """Plaintext channel to ``host:port`` (``grpc://``)."""

    def make() -> grpc.Channel:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)

    return make


def secure_channel_factory(target: str, credentials: object | None = None) -> ChannelFactory:
    """TLS channel to ``host:port`` authorized with ``credentials`` (``grpcs://``).

    ``credentials`` defaults to Application Default Credentials, looked up when the channel is
    first needed; a missing ADC raises :class:`~lrobridge.errors.Unauthenticated`.
    """

    def make() -> grpc.Channel:
        from google.auth.transport import grpc as auth_grpc
        from google.auth.transport import requests as auth_requests

        creds = credentials_for(f"grpcs://{target}", credentials)
        channel: grpc.Channel = auth_grpc.secure_authorized_channel(  # type: ignore[no-untyped-call]
            creds,
            auth_requests.Request(),
            target,
            ssl_credentials=grpc.ssl_channel_credentials(),
            options=CHANNEL_OPTIONS,
        )
        return channel

    return make


class GrpcSource:
    """An Operations server reached over gRPC (see the module docstring)."""

    def __init__(self, url: str, channel_factory: ChannelFactory) -> None:
        self._url = url
        self._channel_factory = channel_factory
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: operations_grpc_pb2.OperationsStub | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return self._url

    def _get_stub(self) -> operations_grpc_pb2.OperationsStub:
        with self._lock:
            if self._closed:
                raise Unavailable(f"source {self._url} is closed")
            if self._stub is None:
                self._channel = self._channel_factory()
                self._stub = operations_grpc_pb2.OperationsStub(self._channel)
            return self._stub

    def _call(self, method: str, request: object, timeout: float) -> Any:
        check_timeout(timeout)
        stub = self._get_stub()
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise self._error(method, exc) from None
        except ValueError as exc:  # "Cannot invoke RPC on closed channel!"
            raise Unavailable(f"{method} on {self._url}: {exc}") from None

    def _error(self, method: str, exc: BaseException) -> BridgeError:
        return call_error(method, self._url, exc)

    def get_operation(self, name: str, *, timeout: float) -> Snapshot:
        return snapshot_from_proto(self._call("GetOperation", get_request(name), timeout))

    def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot:
        return snapshot_from_proto(self._call("WaitOperation", wait_request(name, wait), timeout))

    def cancel_operation(self, name: str, *, timeout: float) -> None:
        validate_operation_name(name)
        self._call("CancelOperation", operations_pb2.CancelOperationRequest(name=name), timeout)

    def delete_operation(self, name: str, *, timeout: float) -> None:
        validate_operation_name(name)
        self._call("DeleteOperation", operations_pb2.DeleteOperationRequest(name=name), timeout)

    def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[ListingPage[Any], str]:
        request = list_request(parent, filter, page_size, page_token)
        return list_page(self._call("ListOperations", request, timeout))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()

    def __repr__(self) -> str:
        return f"GrpcSource({self._url!r})"


# -- shared by the sync and the asyncio sources (one set of rules) ------------------------------


def get_request(name: str) -> operations_pb2.GetOperationRequest:
    validate_operation_name(name)
    return operations_pb2.GetOperationRequest(name=name)


def wait_request(name: str, wait: float) -> operations_pb2.WaitOperationRequest:
    validate_operation_name(name)
    if not wait >= 0:
        raise InvalidArgument(f"wait must be a non-negative number of seconds, got {wait!r}")
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(wait * 1e9))
    return operations_pb2.WaitOperationRequest(name=name, timeout=duration)


def list_request(
    parent: str, filter: str, page_size: int, page_token: str
) -> operations_pb2.ListOperationsRequest:
    if parent:
        validate_operation_name(parent)
    if page_size < 0:
        raise InvalidArgument(f"page_size must not be negative, got {page_size}")
    return operations_pb2.ListOperationsRequest(
        name=parent, filter=filter, page_size=page_size, page_token=page_token
    )


def list_page(response: Any) -> tuple[ListingPage[Any], str]:
    return ListingPage.of_protos(response.operations), str(response.next_page_token)


def call_error(method: str, url: str, exc: BaseException) -> BridgeError:
    """A failed call as lrobridge's error tree, naming the method and the source."""
    if isinstance(exc, grpc.RpcError):
        exc = api_exceptions.from_grpc_error(exc)  # type: ignore[no-untyped-call]
    error = classify_api_error(exc)
    error.message = f"{method} on {url}: {error.message}"
    error.args = (error.message,)
    return error


def check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise InvalidArgument(f"timeout must be a positive number of seconds, got {timeout!r}")
