import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Backoff(_message.Message):
    __slots__ = ("initial_delay", "multiplier", "max_delay")
    INITIAL_DELAY_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_FIELD_NUMBER: _ClassVar[int]
    initial_delay: _duration_pb2.Duration
    multiplier: float
    max_delay: _duration_pb2.Duration
    def __init__(self, initial_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., multiplier: _Optional[float] = ..., max_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Watch(_message.Message):
    __slots__ = ("name", "operation", "source", "state", "create_time", "update_time", "polls", "next_poll_time", "expire_time", "backoff", "outcome", "event_id", "last_error", "progress")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Watch.State]
        ACTIVE: _ClassVar[Watch.State]
        PUBLISHING: _ClassVar[Watch.State]
        COMPLETED: _ClassVar[Watch.State]
        FAILED: _ClassVar[Watch.State]
    STATE_UNSPECIFIED: Watch.State
    ACTIVE: Watch.State
    PUBLISHING: Watch.State
    COMPLETED: Watch.State
    FAILED: Watch.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    POLLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_POLL_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    operation: str
    source: str
    state: Watch.State
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    polls: int
    next_poll_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    backoff: Backoff
    outcome: str
    event_id: str
    last_error: _status_pb2.Status
    progress: bool
    def __init__(self, name: _Optional[str] = ..., operation: _Optional[str] = ..., source: _Optional[str] = ..., state: _Optional[_Union[Watch.State, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., polls: _Optional[int] = ..., next_poll_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., backoff: _Optional[_Union[Backoff, _Mapping]] = ..., outcome: _Optional[str] = ..., event_id: _Optional[str] = ..., last_error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., progress: _Optional[bool] = ...) -> None: ...

class CreateWatchRequest(_message.Message):
    __slots__ = ("operation", "source", "deadline", "backoff", "progress")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    operation: str
    source: str
    deadline: _duration_pb2.Duration
    backoff: Backoff
    progress: bool
    def __init__(self, operation: _Optional[str] = ..., source: _Optional[str] = ..., deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff: _Optional[_Union[Backoff, _Mapping]] = ..., progress: _Optional[bool] = ...) -> None: ...

class GetWatchRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListWatchesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: Watch.State
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[Watch.State, str]] = ...) -> None: ...

class ListWatchesResponse(_message.Message):
    __slots__ = ("watches", "next_page_token")
    WATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    watches: _containers.RepeatedCompositeFieldContainer[Watch]
    next_page_token: str
    def __init__(self, watches: _Optional[_Iterable[_Union[Watch, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteWatchRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
