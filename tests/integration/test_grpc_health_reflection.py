"""The bridge's gRPC server answers the standard health service and server reflection, to the
real clients of grpcio-health-checking and grpcio-reflection (a real server on port 0)."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from lrobridge import Bridge
from lrobridge.config import Settings
from lrobridge.storage.sqlite.store import SqliteStore

pytestmark = pytest.mark.integration

OPERATIONS = "google.longrunning.Operations"
WATCHES = "lrobridge.v1.WatchService"


@pytest.fixture
def channel(tmp_path: pathlib.Path) -> Iterator[grpc.Channel]:
    settings = dataclasses.replace(
        Settings(), project="p", push_auth="none", api_keys=frozenset({"k-1"})
    )
    bridge = Bridge(settings, store=SqliteStore(str(tmp_path / "s.db")))
    port = bridge.start_grpc(port=0, host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        bridge.close()


def test_health_says_serving_for_the_server_and_each_service_without_credentials(
    channel: grpc.Channel,
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", OPERATIONS, WATCHES):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # The bridge's own services still want credentials.
    with pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(
            f"/{OPERATIONS}/GetOperation",
            request_serializer=lambda _: b"",
            response_deserializer=bytes,
        )(b"", timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reflection_lists_the_services_and_describes_their_methods(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {OPERATIONS, WATCHES, "grpc.health.v1.Health"} <= services
    pool = descriptor_pool.DescriptorPool(database)
    get = pool.FindServiceByName(OPERATIONS).methods_by_name["GetOperation"]
    assert get.input_type.full_name == "google.longrunning.GetOperationRequest"
    assert get.output_type.full_name == "google.longrunning.Operation"
    create = pool.FindServiceByName(WATCHES).methods_by_name["CreateWatch"]
    assert {"operation", "source"} <= set(create.input_type.fields_by_name)
    assert create.output_type.full_name == "lrobridge.v1.Watch"
