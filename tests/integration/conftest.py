"""Fixtures of the integration tests: a fake Operations backend served over real gRPC and REST
servers on port 0, and a log of the events callbacks receive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.operations_servers import (
    FakeOperations,
    grpc_operations_server,
    rest_operations_server,
)
from tests.support.stack import EventLog


@pytest.fixture
def backend() -> FakeOperations:
    return FakeOperations()


@pytest.fixture
def grpc_url(backend: FakeOperations) -> Iterator[str]:
    """``grpc://127.0.0.1:PORT`` of a real gRPC Operations server over ``backend``."""
    with grpc_operations_server(backend) as url:
        yield url


@pytest.fixture
def rest_url(backend: FakeOperations) -> Iterator[str]:
    """``http://127.0.0.1:PORT/v1`` of a real REST Operations server over ``backend``."""
    with rest_operations_server(backend) as url:
        yield url


@pytest.fixture
def events() -> EventLog:
    return EventLog()
