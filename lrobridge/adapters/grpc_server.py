"""The bridge's gRPC server: ``google.longrunning.Operations`` (the facade) and
``lrobridge.v1.WatchService`` on ``LROBRIDGE_GRPC_PORT``.

It is an asyncio server (``grpc.aio``) running on a thread and event loop of its own, so a
WaitOperation in progress is a coroutine waiting on a completion event, not a thread: thousands
of waiters cost little. Everything that may block (store calls, which on Firestore are network
calls; reaching a source; publishing a watch message; fetching token certificates) runs on a
thread pool, so one slow call never holds up the others.

Besides those, the standard ``grpc.health.v1.Health`` service (grpcio-health-checking: SERVING
for the server as a whole, ``""``, and for each of the two services; NOT_SERVING once it stops)
and server reflection (grpcio-reflection, ``grpc.reflection.v1alpha.ServerReflection``, so
``grpcurl`` and similar tools list and call the services without the .proto files). Like
``/healthz``, those two answer without credentials; they show only the public schemas.

Callers authenticate like the REST API (``authorization: Bearer <API key>`` metadata; see
:mod:`lrobridge.core.access`). Every failure is a gRPC status carrying the
:class:`~lrobridge.errors.BridgeError`'s code and message; DeleteOperation reaches the source
too when the call carries the metadata ``x-lrobridge-delete-at-source: true``.

Adapter module (gRPC).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.longrunning import operations_grpc_pb2
from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import empty_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lrobridge.core import codec
from lrobridge.core.access import ApiAuth
from lrobridge.core.records import WatchState
from lrobridge.errors import BridgeError, FailedPrecondition, InvalidArgument, Unavailable
from lrobridge.operations.service import OperationsFacade
from lrobridge.proto.v1 import watch_pb2, watch_pb2_grpc
from lrobridge.watching.resource import (
    WatchService,
    create_args_from_proto,
    duration_seconds,
    watch_to_proto,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
DELETE_AT_SOURCE_HEADER = "x-lrobridge-delete-at-source"
SERVICE_NAMES = (
    operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
    watch_pb2.DESCRIPTOR.services_by_name["WatchService"].full_name,
)
STOP_GRACE_SECONDS = 5.0


class _Servicer:
    """What both servicers share: authentication, the thread pool, errors as statuses."""

    def __init__(self, auth: ApiAuth, pool: concurrent.futures.Executor) -> None:
        self._auth = auth
        self._pool = pool

    async def _blocking(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _answer(
        self, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            metadata = dict(context.invocation_metadata() or ())
            await self._blocking(lambda: self._auth.check(metadata.get("authorization")))
            return await call()
        except BridgeError as exc:
            await context.abort(grpc.StatusCode[exc.code.name], exc.message)
            raise  # abort raises; this line is never reached


def _proto(snapshot: codec.Snapshot) -> operations_pb2.Operation:
    return snapshot.operation


class OperationsServicer(_Servicer, operations_grpc_pb2.OperationsServicer):  # type: ignore[misc]
    """google.longrunning.Operations over gRPC: each RPC authenticated, then answered by the
    Operations facade on the thread pool."""

    def __init__(
        self, facade: OperationsFacade, auth: ApiAuth, pool: concurrent.futures.Executor
    ) -> None:
        super().__init__(auth, pool)
        self._facade = facade

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Any
    ) -> operations_pb2.Operation:
        async def call() -> operations_pb2.Operation:
            return _proto(await self._blocking(lambda: self._facade.get(request.name)))

        return await self._answer(context, call)

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Any
    ) -> operations_pb2.ListOperationsResponse:
        async def call() -> operations_pb2.ListOperationsResponse:
            snapshots, token = await self._blocking(
                lambda: self._facade.list(
                    request.name,
                    filter=request.filter,
                    page_size=request.page_size,
                    page_token=request.page_token,
                    return_partial_success=request.return_partial_success,
                )
            )
            return operations_pb2.ListOperationsResponse(
                operations=[_proto(s) for s in snapshots], next_page_token=token
            )

        return await self._answer(context, call)

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Any
    ) -> empty_pb2.Empty:
        async def call() -> empty_pb2.Empty:
            await self._blocking(lambda: self._facade.cancel(request.name))
            return empty_pb2.Empty()

        return await self._answer(context, call)

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Any
    ) -> empty_pb2.Empty:
        async def call() -> empty_pb2.Empty:
            metadata = dict(context.invocation_metadata() or ())
            at_source = metadata.get(DELETE_AT_SOURCE_HEADER, "").lower() == "true"
            await self._blocking(lambda: self._facade.delete(request.name, at_source=at_source))
            return empty_pb2.Empty()

        return await self._answer(context, call)

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Any
    ) -> operations_pb2.Operation:
        async def call() -> operations_pb2.Operation:
            timeout = None
            if request.HasField("timeout"):
                timeout = duration_seconds(request.timeout)
            snapshot = await self._facade.wait_async(
                request.name,
                timeout=timeout,
                deadline=context.time_remaining(),
                executor=self._pool,
            )
            return _proto(snapshot)

        return await self._answer(context, call)


class WatchServicer(_Servicer, watch_pb2_grpc.WatchServiceServicer):
    """lrobridge.v1.WatchService over gRPC: each RPC authenticated, then answered by the Watch
    resource on the thread pool."""

    def __init__(
        self, watches: WatchService, auth: ApiAuth, pool: concurrent.futures.Executor
    ) -> None:
        super().__init__(auth, pool)
        self._watches = watches

    async def CreateWatch(
        self, request: watch_pb2.CreateWatchRequest, context: Any
    ) -> watch_pb2.Watch:
        async def call() -> watch_pb2.Watch:
            args = create_args_from_proto(request)
            record, _ = await self._blocking(lambda: self._watches.create(**args))
            return watch_to_proto(record)

        return await self._answer(context, call)

    async def GetWatch(self, request: watch_pb2.GetWatchRequest, context: Any) -> watch_pb2.Watch:
        async def call() -> watch_pb2.Watch:
            return watch_to_proto(await self._blocking(lambda: self._watches.get(request.name)))

        return await self._answer(context, call)

    async def ListWatches(
        self, request: watch_pb2.ListWatchesRequest, context: Any
    ) -> watch_pb2.ListWatchesResponse:
        async def call() -> watch_pb2.ListWatchesResponse:
            try:
                state = WatchState(request.state) if request.state else None
            except ValueError:
                raise InvalidArgument(f"state {request.state} is not a Watch.State") from None
            records, token = await self._blocking(
                lambda: self._watches.list(
                    page_size=request.page_size, page_token=request.page_token, state=state
                )
            )
            return watch_pb2.ListWatchesResponse(
                watches=[watch_to_proto(r) for r in records], next_page_token=token
            )

        return await self._answer(context, call)

    async def DeleteWatch(
        self, request: watch_pb2.DeleteWatchRequest, context: Any
    ) -> empty_pb2.Empty:
        async def call() -> empty_pb2.Empty:
            await self._blocking(lambda: self._watches.delete(request.name))
            return empty_pb2.Empty()

        return await self._answer(context, call)


class GrpcServer:
    """The gRPC server on its own thread and event loop; ``start()`` returns the bound port."""

    def __init__(
        self,
        *,
        facade: OperationsFacade,
        watches: WatchService,
        auth: ApiAuth,
        host: str = "127.0.0.1",
        port: int = 0,
        blocking_workers: int = 16,
    ) -> None:
        self._facade = facade
        self._watches = watches
        self._auth = auth
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=blocking_workers, thread_name_prefix="lrobridge-grpc"
        )
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Event | None = None
        self._grace = STOP_GRACE_SECONDS
        self.port: int | None = None

    def start(self) -> int:
        if self._thread is not None:
            raise FailedPrecondition("the gRPC server is already running")
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="lrobridge-grpc-server", daemon=True
        )
        self._thread.start()
        self.port = started.result(timeout=30)
        log.info("gRPC server (Operations, WatchService) on %s", self._address)
        return self.port

    def _run(self, started: concurrent.futures.Future[int]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(started))
        finally:
            self._loop.close()

    async def _serve(self, started: concurrent.futures.Future[int]) -> None:
        try:
            server = grpc.aio.server(migration_thread_pool=None)
            operations_grpc_pb2.add_OperationsServicer_to_server(
                OperationsServicer(self._facade, self._auth, self._pool), server
            )
            watch_pb2_grpc.add_WatchServiceServicer_to_server(  # type: ignore[no-untyped-call]
                WatchServicer(self._watches, self._auth, self._pool), server
            )
            # grpc-stubs describe the threaded servicer only; health.aio is grpc.aio's.
            health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            port = server.add_insecure_port(self._address)
            if port == 0:
                raise Unavailable(f"cannot listen for gRPC on {self._address}")
            await server.start()
            for service in ("", *SERVICE_NAMES):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, BridgeError)
                else Unavailable(f"cannot listen for gRPC on {self._address}: {exc}")
            )
            started.set_exception(error)
            return
        self._server = server
        self._stopping = asyncio.Event()
        started.set_result(port)
        await self._stopping.wait()
        await health_servicer.enter_graceful_shutdown()  # every service NOT_SERVING from now
        # In-flight calls get ``grace`` seconds; waiters still waiting then are cancelled.
        await server.stop(self._grace)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        thread = self._thread
        if self._server is None or thread is None:
            return
        self._grace = grace
        stopping = self._stopping
        assert stopping is not None
        self._loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=grace + 5)
        if thread.is_alive():
            log.warning("the gRPC server did not stop within %.0fs", grace + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._server = None
