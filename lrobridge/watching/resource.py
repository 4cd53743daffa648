"""The Watch resource: validation, creation, lookup, paging, and its proto/JSON forms.

Shared by the REST views, the gRPC WatchService and the Python API, so all three accept and
refuse exactly the same input. Pure module (protobuf messages only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from google.protobuf import duration_pb2, json_format, timestamp_pb2

from lrobridge.config import parse_duration
from lrobridge.core import paging
from lrobridge.core.backoff import Backoff
from lrobridge.core.names import validate_operation_name, validate_resource_id
from lrobridge.core.records import WatchRecord, WatchState
from lrobridge.core.source_url import DEFAULT_CREDENTIAL_HOSTS, parse_source_url
from lrobridge.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound
from lrobridge.ports import WatchStore
from lrobridge.proto.v1 import watch_pb2

MAX_DEADLINE_SECONDS = 30 * 86400.0
# Longest duration any request field may give (a year): beyond it is a mistake, not a wish.
MAX_DURATION_SECONDS = 365 * 86400.0


class WatchScheduler(Protocol):
    """Somewhere other than the store that takes new watches (``LROBRIDGE_WATCH_MODE=pubsub``:
    :class:`lrobridge.watching.pubsub_mode.PubSubWatchScheduler` publishes them as watch
    messages)."""

    def schedule(
        self,
        *,
        source: str,
        operation: str,
        expire_time: float | None,
        backoff: Backoff,
        progress: bool,
        now: float,
    ) -> WatchRecord: ...


class WatchTimer(Protocol):
    """What keeps a stored watch's next poll outside this process (``LROBRIDGE_WATCH_MODE=tasks``:
    :class:`lrobridge.watching.tasks_mode.TaskTimer`, one Cloud Task per watch)."""

    def check(self, *, progress: bool) -> None:
        """Refuse (before anything is stored) what this timer cannot do."""
        ...

    def started(self, watch: WatchRecord, *, created: bool) -> None: ...

    def stopped(self, watch: WatchRecord) -> None: ...


class WatchService:
    """The Watch resource (REST, gRPC, Python): create, get, list and delete watches, with their
    checks."""

    def __init__(
        self,
        store: WatchStore,
        *,
        clock: Callable[[], float] = time.time,
        on_created: Callable[[], None] | None = None,
        scheduler: WatchScheduler | None = None,
        credential_hosts: tuple[str, ...] = DEFAULT_CREDENTIAL_HOSTS,
        timer: WatchTimer | None = None,
        page_tokens: paging.PageTokens | None = None,
    ) -> None:
        self._store = store
        self._timer = timer
        self._tokens = page_tokens or paging.process_tokens()
        self._clock = clock
        self._credential_hosts = credential_hosts
        self._on_created = on_created
        self._scheduler = scheduler

    def create(
        self,
        *,
        operation: str,
        source: str,
        deadline: float | None = None,
        backoff: Backoff | None = None,
        progress: bool = False,
    ) -> tuple[WatchRecord, bool]:
        """Register a watch, or return the existing one for the same (source, operation)."""
        validate_operation_name(operation)
        normalized = parse_source_url(source, credential_hosts=self._credential_hosts)
        if deadline is not None and not 0 < deadline <= MAX_DEADLINE_SECONDS:
            raise InvalidArgument(f"deadline {deadline}s is outside (0s, 30d]")
        now = self._clock()
        if self._scheduler is not None:
            # Not stored: the watch message is the watch; registering again publishes again.
            return self._scheduler.schedule(
                source=normalized,
                operation=operation,
                expire_time=now + deadline if deadline is not None else None,
                backoff=backoff or Backoff(),
                progress=progress,
                now=now,
            ), True
        if self._timer is not None:
            self._timer.check(progress=progress)
        record, created = self._store.create_watch(
            source=normalized,
            operation=operation,
            expire_time=now + deadline if deadline is not None else None,
            backoff=backoff or Backoff(),
            progress=progress,
            now=now,
        )
        if self._timer is not None:
            # Stored first: a failure here is answered as such, and registering again (or the
            # sweep) creates the task.
            self._timer.started(record, created=created)
        if created and self._on_created is not None:
            self._on_created()
        return record, created

    def _stored_only(self) -> None:
        if self._scheduler is not None:
            raise FailedPrecondition(
                "LROBRIDGE_WATCH_MODE=pubsub keeps watches as messages on the watch topic, not "
                "in the store, so they cannot be read, listed or deleted here; completions "
                "arrive on the completion topic (an operation past its deadline as `expired`)"
            )

    def get(self, name: str) -> WatchRecord:
        self._stored_only()
        watch_id = _watch_id(name)
        record = self._store.get_watch(watch_id)
        if record is None:
            raise NotFound(f"watch {name!r} not found")
        return record

    def list(
        self, *, page_size: int = 0, page_token: str = "", state: WatchState | None = None
    ) -> tuple[list[WatchRecord], str]:
        self._stored_only()
        size = paging.page_size(page_size)
        after = paging.cursor(self._tokens.decode(page_token, "watches"))
        records, cursor = self._store.list_watches(after=after, limit=size, state=state)
        return records, self._tokens.encode("watches", after=cursor) if cursor is not None else ""

    def delete(self, name: str) -> None:
        self._stored_only()
        watch_id = _watch_id(name)
        record = self._store.get_watch(watch_id) if self._timer is not None else None
        if not self._store.delete_watch(watch_id):
            raise NotFound(f"watch {name!r} not found")
        if self._timer is not None and record is not None:
            self._timer.stopped(record)


def _watch_id(name: str) -> str:
    watch_id = name.removeprefix("watches/")
    return validate_resource_id(watch_id, "watch")


# -- request parsing -----------------------------------------------------------------------


def create_args_from_json(body: object) -> dict[str, Any]:
    """Keyword arguments of :meth:`WatchService.create` from a REST request body.

    Durations are accepted as proto JSON (``"3600s"``) or human form (``"1h"``, ``"1h30m"``).
    """
    if not isinstance(body, Mapping):
        raise InvalidArgument("request body must be a JSON object")
    known = {"operation", "source", "deadline", "backoff", "progress"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidArgument(
            f"unknown field(s) {', '.join(unknown)}; a watch takes {', '.join(sorted(known))}"
        )
    operation = body.get("operation")
    source = body.get("source")
    if not isinstance(operation, str) or not operation:
        raise InvalidArgument("field 'operation' (the operation's full name) is required")
    if not isinstance(source, str) or not source:
        raise InvalidArgument("field 'source' (grpc://, grpcs://, http(s)://host/v1) is required")
    deadline = body.get("deadline")
    progress = body.get("progress", False)
    if not isinstance(progress, bool):
        raise InvalidArgument("field 'progress' must be a boolean")
    return {
        "operation": operation,
        "source": source,
        "deadline": duration_field(deadline, "deadline") if deadline is not None else None,
        "backoff": backoff_from_json(body.get("backoff")),
        "progress": progress,
    }


def create_args_from_proto(request: watch_pb2.CreateWatchRequest) -> dict[str, Any]:
    """Keyword arguments of :meth:`WatchService.create` from a gRPC CreateWatchRequest."""
    if not request.operation:
        raise InvalidArgument("field 'operation' (the operation's full name) is required")
    if not request.source:
        raise InvalidArgument("field 'source' (grpc://, grpcs://, http(s)://host/v1) is required")
    backoff = None
    if request.HasField("backoff"):
        defaults = Backoff()
        b = request.backoff
        initial = duration_seconds(b.initial_delay) if b.HasField("initial_delay") else None
        maximum = duration_seconds(b.max_delay) if b.HasField("max_delay") else None
        backoff = Backoff(
            initial_delay=initial if initial is not None else defaults.initial_delay,
            multiplier=b.multiplier or defaults.multiplier,
            max_delay=maximum
            if maximum is not None
            else max(defaults.max_delay, initial or defaults.initial_delay),
        )
    deadline = None
    if request.HasField("deadline"):
        deadline = duration_seconds(request.deadline)
    return {
        "operation": request.operation,
        "source": request.source,
        "deadline": deadline,
        "backoff": backoff,
        "progress": request.progress,
    }


def backoff_from_json(value: object) -> Backoff | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgument("field 'backoff' must be an object")
    unknown = sorted(set(value) - {"initialDelay", "multiplier", "maxDelay"})
    if unknown:
        raise InvalidArgument(
            f"unknown backoff field(s) {', '.join(unknown)}; use initialDelay, multiplier, maxDelay"
        )
    defaults = Backoff()
    multiplier = value.get("multiplier", defaults.multiplier)
    if not isinstance(multiplier, int | float) or isinstance(multiplier, bool):
        raise InvalidArgument("backoff.multiplier must be a number")
    initial_value = value.get("initialDelay")
    maximum_value = value.get("maxDelay")
    initial = (
        duration_field(initial_value, "backoff.initialDelay")
        if initial_value is not None
        else defaults.initial_delay
    )
    maximum = (
        duration_field(maximum_value, "backoff.maxDelay")
        if maximum_value is not None
        else max(defaults.max_delay, initial)
    )
    return Backoff(initial_delay=initial, multiplier=float(multiplier), max_delay=maximum)


def duration_field(value: object, field: str) -> float:
    """Seconds from a request field: a number, proto JSON (``"3600s"``) or ``"1h30m"``; at
    most :data:`MAX_DURATION_SECONDS`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidArgument(f"field {field!r} must be a duration such as '1h' or '90s'")
    if isinstance(value, str):
        try:
            seconds = parse_duration(value, what=f"field {field!r}")
        except ConfigError as exc:
            raise InvalidArgument(exc.message) from None
    else:
        seconds = float(value)
    if not 0 <= seconds <= MAX_DURATION_SECONDS:  # also refuses NaN
        raise InvalidArgument(
            f"field {field!r} must be between 0 and {MAX_DURATION_SECONDS:.0f} seconds"
        )
    return seconds


def duration_seconds(value: duration_pb2.Duration) -> float:
    """Seconds of a protobuf Duration (``ToTimedelta`` overflows on huge values)."""
    return value.seconds + value.nanos / 1e9


# -- output forms --------------------------------------------------------------------------


def watch_to_proto(record: WatchRecord) -> watch_pb2.Watch:
    watch = watch_pb2.Watch(
        name=record.name,
        operation=record.operation,
        source=record.source,
        state=watch_pb2.Watch.State.Name(int(record.state)),
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
        polls=record.polls,
        backoff=watch_pb2.Backoff(
            initial_delay=_duration(record.backoff.initial_delay),
            multiplier=record.backoff.multiplier,
            max_delay=_duration(record.backoff.max_delay),
        ),
        outcome=record.outcome,
        event_id=record.event_id,
        progress=record.progress,
    )
    if record.state == WatchState.ACTIVE:
        watch.next_poll_time.CopyFrom(_timestamp(record.next_poll))
    if record.expire_time is not None:
        watch.expire_time.CopyFrom(_timestamp(record.expire_time))
    if record.last_error_code:
        watch.last_error.code = record.last_error_code
        watch.last_error.message = record.last_error_message
    return watch


def watch_to_json(record: WatchRecord) -> dict[str, Any]:
    return json_format.MessageToDict(watch_to_proto(record))


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d
