"""The producer kit: a service creates its own long-running operations through the bridge.

```python
op = bridge.producer.create(parent="projects/p/locations/l", metadata=BuildMetadata(step=1))
...                                   # return op.operation() from your API method at once
op.update(metadata=BuildMetadata(step=2, percent=40))
op.succeed(response=Build(id="b1"))  # or op.fail(code=9, message="quota")  or op.cancelled()

@bridge.producer.on_cancel
def stop_build(name: str) -> None:   # CancelOperation on the facade calls this
    ...
```

Produced operations are served by the Operations facade like watched ones. Completing one stores
the final state and its completion message in one transaction and publishes it at once (receive
mode, no polling), with the same message contract as watched operations; their ``source``
attribute is :attr:`Producer.source`. A process that dies before Pub/Sub acknowledged leaves the
message in the outbox, where the next drain republishes it (the watcher, the outbox drainer of
any bridge process, or ``POST /v1/deliveries:drain``).

Pure module.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from lrobridge.core import codec
from lrobridge.core.names import validate_operation_name, validate_resource_id
from lrobridge.delivery import relay
from lrobridge.delivery.relay import OutboxRelay
from lrobridge.errors import Code, InvalidArgument, Unimplemented
from lrobridge.operations.waiters import CompletionHub
from lrobridge.ports import OperationStore, Outbox

C = TypeVar("C", bound=Callable[[str], None])


class ProducerStore(OperationStore, Outbox, Protocol):
    """What the producer kit needs of the store."""


def _pack(value: Message | any_pb2.Any) -> any_pb2.Any:
    if isinstance(value, any_pb2.Any):
        return value
    if not isinstance(value, Message):
        raise InvalidArgument(
            f"metadata and response must be protobuf messages, got {type(value).__name__}"
        )
    packed = any_pb2.Any()
    packed.Pack(value)
    return packed


class ProducedOperation:
    """A handle on one produced operation (see the module docstring)."""

    def __init__(self, producer: Producer, name: str, *, progress: bool) -> None:
        self._producer = producer
        self.name = name
        self.progress = progress
        self._metadata: any_pb2.Any | None = None

    def operation(self) -> operations_pb2.Operation:
        """The current Operation, as GetOperation returns it (what an API method returns)."""
        return self._producer.get_operation(self.name)

    def json(self) -> dict[str, Any]:
        """The current Operation in its JSON form (what a REST method returns)."""
        return codec.operation_json_lenient(codec.snapshot_from_proto(self.operation()))

    @property
    def cancel_requested(self) -> bool:
        record = self._producer.store.get_operation(self.name)
        return bool(record and record.cancel_requested)

    def update(self, metadata: Message | any_pb2.Any) -> None:
        """New metadata (progress) of the running operation."""
        self._metadata = _pack(metadata)
        self._producer.update(self, self._metadata)

    def succeed(self, response: Message | any_pb2.Any | None = None) -> None:
        op = self._final()
        if response is not None:
            op.response.CopyFrom(_pack(response))
        self._producer.finish(op, "succeeded", progress=self.progress)

    def fail(self, code: int, message: str, details: Iterable[Message | any_pb2.Any] = ()) -> None:
        """End with an error (``code`` is a google.rpc.Code other than OK)."""
        try:
            rpc_code = Code(code)
        except ValueError:
            raise InvalidArgument(f"{code} is not a google.rpc.Code") from None
        if rpc_code == Code.OK:
            raise InvalidArgument("a failed operation needs an error code other than OK (0)")
        op = self._final()
        op.error.CopyFrom(
            status_pb2.Status(
                code=int(rpc_code), message=message, details=[_pack(d) for d in details]
            )
        )
        outcome: codec.Outcome = "cancelled" if rpc_code == Code.CANCELLED else "failed"
        self._producer.finish(op, outcome, progress=self.progress)

    def cancelled(self, message: str = "cancelled") -> None:
        """End as cancelled (error code 1), e.g. from the cancel hook."""
        self.fail(Code.CANCELLED, message)

    def _final(self) -> operations_pb2.Operation:
        current = self._producer.get_operation(self.name)
        op = operations_pb2.Operation(name=self.name, done=True)
        if current.HasField("metadata"):
            op.metadata.CopyFrom(current.metadata)
        return op


class Producer:
    """The producer kit: create, update and complete operations this service runs itself, each
    change stored and announced like a watched one."""

    def __init__(
        self,
        store: ProducerStore,
        relay_: OutboxRelay,
        hub: CompletionHub,
        *,
        source: str,
        payload_format: codec.PayloadFormat = "binary",
        progress: bool = False,
        progress_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_create: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._relay = relay_
        self._hub = hub
        self.source = source
        self._payload_format = payload_format
        self.progress = progress
        self._throttle = relay.ProgressThrottle(progress_interval)
        self._clock = clock
        self._cancel_hook: Callable[[str], None] | None = None
        self._on_create = on_create

    def create(
        self,
        *,
        parent: str = "",
        operation_id: str | None = None,
        metadata: Message | any_pb2.Any | None = None,
        progress: bool | None = None,
    ) -> ProducedOperation:
        """A new running operation named ``{parent}/operations/{operation_id}`` (a random id
        by default; ``operations/{id}`` without a parent)."""
        op_id = validate_resource_id(operation_id or secrets.token_hex(8), "operation")
        name = f"{parent}/operations/{op_id}" if parent else f"operations/{op_id}"
        validate_operation_name(name)
        op = operations_pb2.Operation(name=name)
        if metadata is not None:
            op.metadata.CopyFrom(_pack(metadata))
        self.store.create_produced_operation(
            codec.snapshot_from_proto(op), source=self.source, now=self._clock()
        )
        if self._on_create is not None:
            self._on_create()  # e.g. make sure something republishes what fails to publish
        return ProducedOperation(
            self, name, progress=self.progress if progress is None else progress
        )

    def handle(self, name: str, *, progress: bool | None = None) -> ProducedOperation:
        """A handle on an operation created earlier (by this or another process)."""
        self.get_operation(name)
        return ProducedOperation(
            self, name, progress=self.progress if progress is None else progress
        )

    def get_operation(self, name: str) -> operations_pb2.Operation:
        validate_operation_name(name)
        record = self.store.get_operation(name)
        if record is None or record.origin != "producer":
            raise InvalidArgument(f"operation {name!r} was not produced through this bridge")
        return record.snapshot().operation

    def on_cancel(self, hook: C) -> C:
        """Register the function CancelOperation calls with the operation name (decorator)."""
        self._cancel_hook = hook
        return hook

    def request_cancel(self, name: str) -> None:
        """What the facade calls for CancelOperation of a produced operation."""
        if self._cancel_hook is None:
            raise Unimplemented(
                f"operation {name!r}: the producing service registered no cancel hook "
                "(bridge.producer.on_cancel)"
            )
        self._cancel_hook(name)

    def update(self, handle: ProducedOperation, metadata: any_pb2.Any) -> None:
        op = operations_pb2.Operation(name=handle.name, metadata=metadata)
        snapshot = codec.snapshot_from_proto(op)
        now = self._clock()
        message, event_id = None, ""
        if handle.progress and self._throttle.should_send(handle.name, changed=True, now=now):
            message, event_id = relay.progress_message(
                snapshot, source=self.source, payload_format=self._payload_format, now=now
            )
        entry = self.store.update_produced_operation(
            snapshot, now=now, message=message, event_id=event_id
        )
        if entry is not None:
            self._relay.publish(entry)

    def finish(
        self, op: operations_pb2.Operation, outcome: codec.Outcome, *, progress: bool
    ) -> None:
        """Store and publish the end of ``op``; ``progress``: its handle sends progress events
        (then the completion is ordered after them)."""
        now = self._clock()
        done = relay.completion(
            codec.snapshot_from_proto(op),
            outcome,
            source=self.source,
            payload_format=self._payload_format,
            now=now,
            progress=progress,
        )
        entry = self.store.complete_produced_operation(done, now=now)
        self._throttle.forget(op.name)
        self._hub.notify(op.name)
        self._relay.publish(entry)
