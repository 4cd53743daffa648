"""A service whose API method returns a long-running Operation, served by lrobridge.

``POST /v1/projects/{project}/builds`` starts a build and answers at once with the Operation;
the build reports progress and finishes on a thread. Clients follow it with any standard
Operations client against the same server (``GET /v1/projects/p/operations/ID``,
``POST /v1/...:wait``, or ``google.api_core.operation.from_gapic``); the completion is
published to Pub/Sub, where a subscriber's callback gets the result.

    GOOGLE_CLOUD_PROJECT=demo lrobridge dev --app examples.build_service:bridge
    curl -X POST localhost:8080/v1/projects/demo/builds -d '{"steps": 3}'
"""

from __future__ import annotations

import threading
import time

from flask import Blueprint, Response, jsonify, request
from google.protobuf import struct_pb2

from lrobridge import Bridge, CompletionEvent
from lrobridge.operations.producer import ProducedOperation

bridge = Bridge()
builds = Blueprint("builds", __name__)
completed: list[CompletionEvent] = []


def _struct(**fields: object) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


@builds.post("/v1/projects/<project>/builds")
def create_build(project: str) -> Response:
    body = request.get_json(silent=True) or {}
    op = bridge.producer.create(parent=f"projects/{project}", metadata=_struct(step=0))
    steps, pause = int(body.get("steps", 3)), float(body.get("stepSeconds", 1.0))
    threading.Thread(target=run_build, args=(op, steps, pause), daemon=True).start()
    return jsonify(op.json())  # the Operation, at once


def run_build(op: ProducedOperation, steps: int, pause: float) -> None:
    for step in range(1, steps + 1):
        if op.cancel_requested:
            op.cancelled("build cancelled")
            return
        time.sleep(pause)
        op.update(_struct(step=step, percent=100 * step // steps))
    op.succeed(_struct(image=f"registry.example/builds/{op.name.rsplit('/', 1)[1]}:latest"))


@bridge.on_cancel
def cancel_build(name: str) -> None:
    """CancelOperation reached us; the build thread stops at its next step."""


@bridge.on_complete(operation="projects/*/operations/*")
def build_finished(event: CompletionEvent) -> None:
    completed.append(event)
    print(f"{event.name}: {event.outcome}", flush=True)


bridge.add_blueprint(builds)
