"""The README's example service (examples/build_service.py) works as it says: its API method
returns an Operation at once, a standard Operations client follows it to the result through the
bridge, and the subscriber's callback gets the completion from Pub/Sub."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

import pytest
import requests
from google.api_core import operation, operations_v1
from google.api_core.future import polling
from google.api_core.operations_v1.transports.rest import OperationsRestTransport
from google.auth.credentials import AnonymousCredentials
from google.protobuf import struct_pb2

from tests.support.stack import LocalStack, stack_settings, wait_until

pytestmark = pytest.mark.integration

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "build_service.py"


def _load_example(monkeypatch: pytest.MonkeyPatch, project: str, store: pathlib.Path) -> ModuleType:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    monkeypatch.setenv("LROBRIDGE_STORE", f"sqlite:///{store}")
    monkeypatch.setenv("LROBRIDGE_PUSH_AUTH", "none")
    monkeypatch.setenv("LROBRIDGE_API_AUTH", "none")
    spec = importlib.util.spec_from_file_location(f"build_service_{project}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_example_build_service_returns_an_operation_that_clients_and_callbacks_follow(
    pubsub_project: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _load_example(monkeypatch, pubsub_project, tmp_path / "example.db")
    settings = stack_settings(pubsub_project, tmp_path / "example.db")
    with LocalStack(settings, bridge=example.bridge, run_watcher=False) as stack:
        started = requests.post(
            f"{stack.base_url}/v1/projects/demo/builds",
            json={"steps": 2, "stepSeconds": 0.2},
            timeout=10,
        )
        assert started.status_code == 200
        op_json = started.json()
        assert op_json["name"].startswith("projects/demo/operations/") and op_json["done"] is False
        assert op_json["metadata"] == {
            "@type": "type.googleapis.com/google.protobuf.Struct",
            "value": {"step": 0},
        }

        transport = OperationsRestTransport(host=stack.base_url, credentials=AnonymousCredentials())
        client = operations_v1.AbstractOperationsClient(transport=transport)
        future = operation.from_gapic(
            client.get_operation(op_json["name"]),
            client,
            struct_pb2.Struct,
            metadata_type=struct_pb2.Struct,
            polling=polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.2),
        )
        result = future.result(timeout=30)
        assert result["image"].startswith("registry.example/builds/")
        assert future.metadata["percent"] == 100
        wait_until(lambda: len(example.completed) == 1, timeout=30, what="the callback")
        [event] = example.completed
        assert event.name == op_json["name"] and event.outcome == "succeeded"
        assert event.attributes["response_type"] == "type.googleapis.com/google.protobuf.Struct"
