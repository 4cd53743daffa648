"""The asyncio gRPC Operations source: google.longrunning.Operations over one ``grpc.aio``
channel, for the watcher's event loop.

Implements :class:`lrobridge.ports.AsyncOperationsSource` with googleapis-common-protos'
``OperationsStub`` on a ``grpc.aio`` channel. The requests, the answers and the error mapping are
those of :mod:`lrobridge.adapters.sources.grpc_source` (one set of rules for both); only the
transport differs. The channel is created on first use, on the loop that calls (a ``grpc.aio``
channel belongs to one loop), with the same options as the sync channel. ``grpcs://`` uses TLS and
Application Default Credentials (google-api-core's ``grpc_helpers_async.create_channel``, the
credentials from :func:`lrobridge.adapters.sources.adc.credentials_for`).

Get and List calls of one source run at most ``max_concurrency`` at once (an
``asyncio.Semaphore``); WaitOperation long polls are bounded by the watcher's slots instead,
since they mostly wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from google.longrunning import operations_grpc_pb2

from lrobridge.adapters.sources.adc import credentials_for
from lrobridge.adapters.sources.grpc_source import (
    CHANNEL_OPTIONS,
    call_error,
    check_timeout,
    get_request,
    list_page,
    list_request,
    wait_request,
)
from lrobridge.core.codec import Snapshot, snapshot_from_proto
from lrobridge.errors import Unavailable

AioChannelFactory = Callable[[], grpc.aio.Channel]
DEFAULT_MAX_CONCURRENCY = 64


def insecure_aio_channel_factory(target: str) -> AioChannelFactory:
    """Plaintext ``grpc.aio`` channel to ``host:port`` (``grpc://``)."""

    def make() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

    return make


def secure_aio_channel_factory(target: str, credentials: object | None = None) -> AioChannelFactory:
    """TLS ``grpc.aio`` channel authorized with ``credentials`` (default ADC, ``grpcs://``)."""

    def make() -> grpc.aio.Channel:
        from google.api_core import grpc_helpers_async

        creds = credentials_for(f"grpcs://{target}", credentials)
        channel: grpc.aio.Channel = grpc_helpers_async.create_channel(
            target, credentials=creds, options=CHANNEL_OPTIONS
        )
        return channel

    return make


class AsyncGrpcSource:
    """An Operations server reached over gRPC from an asyncio loop (see the module docstring)."""

    def __init__(
        self,
        url: str,
        channel_factory: AioChannelFactory,
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self.url = url
        self._channel_factory = channel_factory
        self._channel: grpc.aio.Channel | None = None
        self._stub: operations_grpc_pb2.OperationsStub | None = None
        self._slots = asyncio.Semaphore(max_concurrency)
        self._closed = False

    def _get_stub(self) -> operations_grpc_pb2.OperationsStub:
        if self._closed:
            raise Unavailable(f"source {self.url} is closed")
        if self._stub is None:
            self._channel = self._channel_factory()
            self._stub = operations_grpc_pb2.OperationsStub(self._channel)
        return self._stub

    async def _call(self, method: str, request: object, timeout: float) -> Any:
        check_timeout(timeout)
        stub = self._get_stub()
        try:
            return await getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise call_error(method, self.url, exc) from None
        except (ValueError, grpc.aio.UsageError) as exc:  # the channel was closed meanwhile
            raise Unavailable(f"{method} on {self.url}: {exc}") from None

    async def get_operation(self, name: str, *, timeout: float) -> Snapshot:
        request = get_request(name)
        async with self._slots:
            return snapshot_from_proto(await self._call("GetOperation", request, timeout))

    async def wait_operation(self, name: str, *, wait: float, timeout: float) -> Snapshot:
        request = wait_request(name, wait)
        return snapshot_from_proto(await self._call("WaitOperation", request, timeout))

    async def list_operations(
        self, parent: str, *, filter: str, page_size: int, page_token: str, timeout: float
    ) -> tuple[list[Snapshot], str]:
        request = list_request(parent, filter, page_size, page_token)
        async with self._slots:
            return list_page(await self._call("ListOperations", request, timeout))

    async def aclose(self) -> None:
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    def __repr__(self) -> str:
        return f"AsyncGrpcSource({self.url!r})"
