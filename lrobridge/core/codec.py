"""Operations as lrobridge carries them: snapshots, outcomes, payloads, attributes, event ids.

A :class:`Snapshot` is one observation of an operation exactly as its source returned it: the
protobuf ``Operation`` for gRPC sources (metadata and response as the original ``Any`` bytes,
whether or not this process knows their types) and, for REST sources, the original JSON object
besides a best-effort protobuf view. Nothing here ever re-encodes an ``Any`` it cannot parse,
which is how unknown types travel without loss:

* binary payload: the serialized ``Operation``; a REST snapshot whose ``Any`` types are unknown
  here cannot become binary, so it is sent as its original JSON and ``payload_format`` says so;
* JSON payload: the original JSON object for REST snapshots; protobuf's JSON mapping for gRPC
  ones, falling back to binary when an ``Any`` type is unknown (JSON would need the schema).

Pure module: protobuf only (``operations_proto_pb2`` is the gRPC-free variant).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Generic, Literal, TypeVar, cast, overload

from google.longrunning import operations_proto_pb2 as operations_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from lrobridge.core.names import validate_operation_name
from lrobridge.errors import InvalidArgument

Outcome = Literal["succeeded", "failed", "cancelled", "expired", "not_found"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "cancelled", "expired", "not_found")
# What an event message announces: an outcome, or `progress` (metadata of a running operation).
EventType = Literal["succeeded", "failed", "cancelled", "expired", "not_found", "progress"]
EVENT_TYPES: tuple[EventType, ...] = (*OUTCOMES, "progress")
# The stored outcome of an operation deleted through the Operations API: a tombstone, never an
# event (see lrobridge.storage.rules).
DELETED: Final = "deleted"
PayloadFormat = Literal["binary", "json"]

CE_TYPE_PREFIX = "lrobridge.operation.v1."
# The CloudEvents Pub/Sub binding, binary content mode: the message attribute `content-type`
# is the event's `datacontenttype` (the media type of `data`).
CONTENT_TYPE_ATTRIBUTE = "content-type"
JSON_CONTENT_TYPE = "application/json"
CONTENT_TYPES: dict[PayloadFormat, str] = {
    "binary": "application/protobuf",
    "json": JSON_CONTENT_TYPE,
}
CANCELLED_CODE = 1


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One observation of an operation, as the source returned it."""

    operation: operations_pb2.Operation
    raw_json: Mapping[str, Any] | None = None
    # False when raw_json holds an Any whose type this process cannot parse into `operation`.
    lossless_proto: bool = True

    @property
    def name(self) -> str:
        return str(self.operation.name)

    @property
    def done(self) -> bool:
        return bool(self.operation.done)

    def outcome(self) -> Outcome | None:
        """The completion outcome, or None while the operation is still running."""
        if not self.done:
            return None
        if self.operation.HasField("error"):
            return "cancelled" if self.operation.error.code == CANCELLED_CODE else "failed"
        return "succeeded"

    @property
    def error_code(self) -> int | None:
        return self.operation.error.code if self.operation.HasField("error") else None

    @property
    def metadata_type(self) -> str:
        return _any_type(self.operation, self.raw_json, "metadata")

    @property
    def response_type(self) -> str:
        return _any_type(self.operation, self.raw_json, "response")

    @property
    def metadata_fingerprint(self) -> bytes:
        """Bytes that change when the metadata changes (used to detect progress)."""
        if self.raw_json is not None:
            return json.dumps(self.raw_json.get("metadata"), sort_keys=True).encode()
        return bytes(self.operation.metadata.SerializeToString(deterministic=True))


def _any_type(op: operations_pb2.Operation, raw: Mapping[str, Any] | None, field: str) -> str:
    if raw is not None:
        value = raw.get(field)
        return str(value.get("@type", "")) if isinstance(value, Mapping) else ""
    if op.HasField(field):
        return cast(str, getattr(op, field).type_url)
    return ""


def snapshot_from_proto(operation: operations_pb2.Operation) -> Snapshot:
    return Snapshot(operation=operation)


Item = TypeVar("Item")


class ListingPage(Sequence[Snapshot], Generic[Item]):
    """One page of a ListOperations answer, read lazily: every operation's name at once
    (``names``), the :class:`Snapshot` of one built (and, from JSON, checked) only when it is
    asked for. A sweep reads thousands of listed operations and needs the snapshots of the few
    it watches: building all of them cost it about five times its whole scan of a page.

    ``page[i]`` raises what ``build`` raises for a malformed item (a REST source: a
    :class:`~lrobridge.errors.BridgeError`), so one bad operation spoils only itself."""

    __slots__ = ("_build", "_items", "names")

    def __init__(
        self, names: list[str], items: Sequence[Item], build: Callable[[Item], Snapshot]
    ) -> None:
        self.names = names
        self._items = items
        self._build = build

    @classmethod
    def of(cls, snapshots: Sequence[Snapshot]) -> ListingPage[Any]:
        """``snapshots`` as a page (a source that builds every snapshot itself)."""
        if isinstance(snapshots, ListingPage):
            return snapshots
        return ListingPage([s.name for s in snapshots], snapshots, _same)

    @classmethod
    def of_protos(cls, operations: Sequence[operations_pb2.Operation]) -> ListingPage[Any]:
        return ListingPage([op.name for op in operations], operations, snapshot_from_proto)

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> Snapshot: ...

    @overload
    def __getitem__(self, index: slice) -> list[Snapshot]: ...

    def __getitem__(self, index: int | slice) -> Snapshot | list[Snapshot]:
        if isinstance(index, slice):
            return [self._build(item) for item in self._items[index]]
        return self._build(self._items[index])

    def __iter__(self) -> Iterator[Snapshot]:
        return (self._build(item) for item in self._items)


def _same(snapshot: Snapshot) -> Snapshot:
    return snapshot


def check_json_text(obj: object, what: str) -> None:
    """Refuse decoded JSON holding unpaired surrogates (a ``\\ud800`` escape without its
    pair): such strings cannot be stored or sent on as UTF-8."""
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{what} holds an unpaired surrogate escape (\\ud800-\\udfff without its pair)"
        ) from None


def snapshot_from_json(obj: object) -> Snapshot:
    """A snapshot of an Operation in its JSON form (REST sources, JSON payloads).

    Raises InvalidArgument when ``obj`` is not an Operation: a JSON object with a string
    ``name``, an optional boolean ``done``, at most one of ``error`` / ``response``.
    """
    if not isinstance(obj, Mapping):
        raise InvalidArgument(f"an Operation must be a JSON object, got {type(obj).__name__}")
    check_json_text(obj, "the Operation's JSON")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("Operation JSON has no string 'name'")
    done = obj.get("done", False)
    if not isinstance(done, bool):
        raise InvalidArgument(f"Operation {name!r}: 'done' must be a boolean, got {done!r}")
    # A JSON null is an absent field (proto3 JSON mapping).
    if obj.get("error") is not None and obj.get("response") is not None:
        raise InvalidArgument(f"Operation {name!r} has both 'error' and 'response'")
    op = operations_pb2.Operation(name=name, done=done)
    lossless = True
    error = obj.get("error")
    if error is not None:
        op.error.CopyFrom(_status_from_json(name, error))
        if len(op.error.details) != len(error.get("details") or []):
            lossless = False
    for field in ("metadata", "response"):
        value = obj.get(field)
        if value is None:
            continue
        if not isinstance(value, Mapping) or not isinstance(value.get("@type"), str):
            raise InvalidArgument(f"Operation {name!r}: '{field}' must be an object with '@type'")
        target = any_pb2.Any()
        try:
            json_format.ParseDict(dict(value), target)
        except (json_format.ParseError, TypeError, KeyError, AttributeError, ValueError):
            lossless = False  # unknown type or odd JSON: the raw JSON carries it
            target = any_pb2.Any(type_url=value["@type"])
        getattr(op, field).CopyFrom(target)
    return Snapshot(operation=op, raw_json=dict(obj), lossless_proto=lossless)


def _status_from_json(name: str, error: object) -> status_pb2.Status:
    if not isinstance(error, Mapping):
        raise InvalidArgument(f"Operation {name!r}: 'error' must be an object")
    code = error.get("code", 0)
    if not isinstance(code, int) or isinstance(code, bool) or not -(2**31) <= code < 2**31:
        raise InvalidArgument(
            f"Operation {name!r}: error.code must be a 32-bit integer, got {str(code)[:40]}"
        )
    message = error.get("message", "")
    details = error.get("details") or []
    if not isinstance(details, list):
        raise InvalidArgument(f"Operation {name!r}: error.details must be a list")
    status = status_pb2.Status(code=code, message=str(message))
    for detail in details:
        parsed = any_pb2.Any()
        try:
            json_format.ParseDict(detail, parsed)
        except (json_format.ParseError, TypeError, KeyError, AttributeError, ValueError):
            continue
        status.details.append(parsed)
    return status


def operation_json(snapshot: Snapshot) -> dict[str, Any] | None:
    """The Operation's JSON form exactly as OPERATIONS.md shows it, or None when it needs a
    schema this process does not have (a gRPC snapshot with an unknown Any type)."""
    if snapshot.raw_json is not None:
        out = dict(snapshot.raw_json)
        out["done"] = bool(out.get("done", False))
        return out
    try:
        out = json_format.MessageToDict(snapshot.operation)
    except (TypeError, KeyError, json_format.Error):
        return None
    out["done"] = snapshot.operation.done
    return out


def operation_json_lenient(snapshot: Snapshot) -> dict[str, Any]:
    """:func:`operation_json`, or when an ``Any`` type is unknown here, the Operation with each
    such ``Any`` as ``{"@type": url, "value": "<base64 of its bytes>"}`` (nothing is dropped)."""
    exact = operation_json(snapshot)
    if exact is not None:
        return exact
    op = snapshot.operation
    out: dict[str, Any] = {"name": op.name}
    for field in ("metadata", "response"):
        if op.HasField(field):
            out[field] = _any_json(getattr(op, field))
    out["done"] = op.done
    if op.HasField("error"):
        error: dict[str, Any] = {"code": op.error.code, "message": op.error.message}
        if op.error.details:
            error["details"] = [_any_json(d) for d in op.error.details]
        out["error"] = error
    return out


def _any_json(value: any_pb2.Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(value)
    except (TypeError, KeyError, json_format.Error):
        return {"@type": value.type_url, "value": base64.b64encode(value.value).decode()}


def encode_payload(snapshot: Snapshot, requested: PayloadFormat) -> tuple[bytes, PayloadFormat]:
    """Message data for a snapshot, and the format actually used (see the module docstring)."""
    if requested == "json" or (snapshot.raw_json is not None and not snapshot.lossless_proto):
        as_json = operation_json(snapshot)
        if as_json is not None:
            return _dump_json(as_json), "json"
    return snapshot.operation.SerializeToString(), "binary"


def _dump_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def decode_payload(data: bytes, payload_format: str) -> Snapshot:
    """The snapshot carried by a completion message's data (InvalidArgument if it is none)."""
    if payload_format == "json":
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidArgument(
                f"payload_format is json but data is not JSON: {problem}"
            ) from None
        return snapshot_from_json(obj)
    if payload_format not in ("binary", ""):
        raise InvalidArgument(f"unknown payload_format {payload_format!r}")
    op = operations_pb2.Operation()
    try:
        op.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"data is not a binary google.longrunning.Operation: {exc}") from None
    if not op.name:
        raise InvalidArgument("data decodes to an Operation without a name")
    return Snapshot(operation=op)


def event_id(source: str, operation_name: str, outcome: Outcome) -> str:
    """Stable id of one completion: the same however often, or by whom, it is observed."""
    digest = hashlib.sha256(f"{source}\n{operation_name}\n{outcome}".encode()).digest()
    return base64.b32encode(digest[:20]).decode().lower()


def progress_event_id(source: str, snapshot: Snapshot) -> str:
    """Stable id of one progress state: the same metadata observed twice is one event."""
    digest = hashlib.sha256(
        f"{source}\n{snapshot.name}\nprogress\n".encode() + snapshot.metadata_fingerprint
    ).digest()
    return base64.b32encode(digest[:20]).decode().lower()


def completion_attributes(
    snapshot: Snapshot,
    *,
    outcome: EventType,
    source: str,
    event_id: str,
    payload_format: PayloadFormat,
    time: datetime.datetime,
) -> dict[str, str]:
    """Message attributes per ARCHITECTURE.md, CloudEvents Pub/Sub binding included.

    ``outcome`` is ``progress`` for a progress event (the operation is still running)."""
    attributes = {
        "operation": snapshot.name,
        "outcome": outcome,
        "source": source,
        "event_id": event_id,
        "payload_format": payload_format,
        "ce-specversion": "1.0",
        "ce-type": CE_TYPE_PREFIX + outcome,
        "ce-source": source,
        "ce-id": event_id,
        "ce-subject": snapshot.name,
        "ce-time": time.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z"),
        CONTENT_TYPE_ATTRIBUTE: CONTENT_TYPES[payload_format],
    }
    if outcome in ("failed", "cancelled") and snapshot.error_code is not None:
        attributes["error_code"] = str(snapshot.error_code)
    if snapshot.metadata_type:
        attributes["metadata_type"] = snapshot.metadata_type
    if snapshot.response_type:
        attributes["response_type"] = snapshot.response_type
    return attributes


def empty_operation(name: str) -> operations_pb2.Operation:
    """An Operation that carries only its name (not observed yet, or gone from its source)."""
    return operations_pb2.Operation(name=name)


def not_found_snapshot(name: str) -> Snapshot:
    """What is published for an operation its source no longer knows."""
    validate_operation_name(name)
    return Snapshot(operation=empty_operation(name))


def operation_parent(name: str) -> str:
    """The collection parent of an operation name, as ListOperations takes it.

    ``projects/p/operations/x`` -> ``projects/p``; ``operations/x`` -> ``""``; a name without
    an ``operations`` collection loses its last segment (``tasks/t/runs/r`` -> ``tasks/t/runs``).
    """
    head, _, _ = name.rpartition("/")
    if head == "operations":
        return ""
    if head.endswith("/operations"):
        return head.removesuffix("/operations")
    return head
