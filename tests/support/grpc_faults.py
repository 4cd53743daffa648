"""A gRPC proxy that forwards every call to a real server (an emulator) and fails chosen calls
with a status first: transient faults injected on the wire, so a client's own retry policy is
what has to recover from them (nothing in the client is replaced).

    with FaultyProxy("127.0.0.1:8080") as proxy:
        proxy.fail("RunQuery", times=2, code=grpc.StatusCode.UNAVAILABLE)
        ... point the client at proxy.address ...
        assert proxy.failed["RunQuery"] == 2
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

_UNARY_STREAM = ("BatchGetDocuments", "RunQuery", "RunAggregationQuery", "PartitionQuery")
_STREAM_STREAM = ("Write", "Listen")


class FaultyProxy:
    """Forwards raw bytes of every method to ``target``; :meth:`fail` makes the next calls of
    one method (matched by its last path segment, after letting ``after`` through) end with
    ``code`` before reaching it."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target)
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[int, int, grpc.StatusCode]] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._server.add_generic_rpc_handlers((_Handler(self),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"

    def __enter__(self) -> FaultyProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
        self._channel.close()

    def fail(self, method: str, *, times: int, code: grpc.StatusCode, after: int = 0) -> None:
        """Fail the ``times`` calls of ``method`` that follow the next ``after`` ones."""
        with self._lock:
            self._faults[method] = (after, times, code)

    def _fault(self, method: str) -> grpc.StatusCode | None:
        with self._lock:
            self.calls[method] += 1
            after, times, code = self._faults.get(method, (0, 0, grpc.StatusCode.OK))
            if after > 0:
                self._faults[method] = (after - 1, times, code)
                return None
            if times <= 0:
                return None
            self._faults[method] = (0, times - 1, code)
            self.failed[method] += 1
            return code

    def _metadata(self, context: grpc.ServicerContext) -> list[tuple[str, Any]]:
        return [
            (k, v)
            for k, v in context.invocation_metadata()
            if not k.startswith(":") and k not in ("user-agent", "grpc-accept-encoding")
        ]

    def handler(self, path: str) -> grpc.RpcMethodHandler:
        method = path.rsplit("/", 1)[-1]

        def check(context: grpc.ServicerContext) -> None:
            code = self._fault(method)
            if code is not None:
                context.abort(code, f"injected by FaultyProxy: {method} {code.name}")

        def forward_error(context: grpc.ServicerContext, error: grpc.RpcError) -> None:
            call: Any = error
            context.abort(call.code(), call.details() or "")

        if method in _STREAM_STREAM:

            def stream_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
                check(context)
                call = self._channel.stream_stream(path)
                try:
                    yield from call(requests, metadata=self._metadata(context))
                except grpc.RpcError as error:
                    forward_error(context, error)

            return grpc.stream_stream_rpc_method_handler(stream_stream)
        if method in _UNARY_STREAM:

            def unary_stream(request: bytes, context: grpc.ServicerContext) -> Any:
                check(context)
                call = self._channel.unary_stream(path)
                try:
                    yield from call(request, metadata=self._metadata(context))
                except grpc.RpcError as error:
                    forward_error(context, error)

            return grpc.unary_stream_rpc_method_handler(unary_stream)

        def unary_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            check(context)
            call: Callable[..., bytes] = self._channel.unary_unary(path)
            try:
                return call(request, metadata=self._metadata(context))
            except grpc.RpcError as error:
                forward_error(context, error)
                raise

        return grpc.unary_unary_rpc_method_handler(unary_unary)


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: FaultyProxy) -> None:
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self._proxy.handler(handler_call_details.method)
