"""The Dockerfile's command line, run for real (Docker has no engine here): ``lrobridge serve``
on $PORT. /healthz answers the startup probe, SIGTERM lets a push in flight finish and the
server exit inside Cloud Run's 10 s grace, logs are JSON lines carrying the request's trace, and
in poller mode the watcher runs in the same process."""

from __future__ import annotations

import base64
import datetime
import json
import os
import pathlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge.cli.emulator import free_port
from lrobridge.core import codec
from tests.support.container import ROOT, parse_dockerfile
from tests.support.operations_servers import FakeOperations, grpc_operations_server

pytestmark = pytest.mark.integration

CLOUD_RUN_GRACE = 10.0  # seconds between SIGTERM and SIGKILL on Cloud Run
TRACE = "0af7651916cd43dd8448eb211c80319c"
NAME = "projects/p/operations/slow-1"


class Container:
    """The image's CMD under /bin/sh, as Docker would start it, with another WSGI app."""

    def __init__(self, workdir: pathlib.Path, env: dict[str, str], app: str) -> None:
        command = parse_dockerfile().command
        assert command.endswith(" lrobridge.wsgi:app")
        command = command.removesuffix("lrobridge.wsgi:app") + app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr = workdir / "stderr.log"
        full_env = {
            "PATH": os.environ["PATH"],
            "HOME": str(workdir),
            "PYTHONPATH": str(ROOT),
            "PORT": str(self.port),
            "GOOGLE_CLOUD_PROJECT": "p",
            "LROBRIDGE_LOG_FORMAT": "json",
            "LROBRIDGE_PUSH_AUTH": "none",
            "LROBRIDGE_API_AUTH": "none",
            **env,
        }
        with self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=workdir,
                env=full_env,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.stderr.read_text()[-3000:]}")
            try:
                response = requests.get(f"{self.url}/healthz", timeout=1)
                if response.status_code == 200:
                    return response.json()  # type: ignore[no-any-return]
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or the worker is still booting (the socket is)
            time.sleep(0.1)
        raise AssertionError(f"/healthz never answered: {self.stderr.read_text()[-3000:]}")

    def terminate(self) -> int:
        """SIGTERM (what Cloud Run sends), then the exit status within Cloud Run's grace."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=CLOUD_RUN_GRACE)

    def log_entries(self) -> list[dict[str, object]]:
        lines = self.stderr.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def containers(tmp_path: pathlib.Path) -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        container.kill()


def completion_envelope() -> bytes:
    snapshot = codec.snapshot_from_proto(operations_pb2.Operation(name=NAME, done=True))
    attributes = codec.completion_attributes(
        snapshot,
        outcome="succeeded",
        source="grpc://ops:1",
        event_id=codec.event_id("grpc://ops:1", NAME, "succeeded"),
        payload_format="binary",
        time=datetime.datetime.now(datetime.UTC),
    )
    message = {
        "data": base64.b64encode(snapshot.operation.SerializeToString()).decode(),
        "attributes": attributes,
        "messageId": "1",
        "publishTime": "2030-01-01T00:00:00Z",
    }
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s"}).encode()


def _publishing_env(project: str, emulator: str) -> dict[str, str]:
    """A project on the session's emulator with the topics: a process that publishes checks at
    start that Pub/Sub answers and has them (lrobridge.cli.preflight)."""
    from lrobridge.adapters.pubsub import PubSubAdmin

    with PubSubAdmin() as admin:
        for topic in ("lro-completed", "lro-watch"):
            admin.ensure_topic(f"projects/{project}/topics/{topic}")
    return {"GOOGLE_CLOUD_PROJECT": project, "PUBSUB_EMULATOR_HOST": emulator}


def test_sigterm_lets_a_push_in_flight_finish_and_the_server_exit_within_the_grace(
    tmp_path: pathlib.Path, containers: list[Container], pubsub_project: str, pubsub_emulator: str
) -> None:
    container = Container(
        tmp_path,
        {
            "LROBRIDGE_WATCH_MODE": "pubsub",
            "LROBRIDGE_TEST_MARKERS": str(tmp_path),
            **_publishing_env(pubsub_project, pubsub_emulator),
        },
        "tests.support.container_app:app",
    )
    containers.append(container)
    assert container.wait_healthy() == {"status": "ok"}

    outcome: dict[str, requests.Response] = {}

    def push() -> None:
        outcome["response"] = requests.post(
            f"{container.url}/pubsub/push",
            data=completion_envelope(),
            headers={
                "Content-Type": "application/json",
                "traceparent": f"00-{TRACE}-b7ad6b7169203331-01",
            },
            timeout=30,
        )

    sender = threading.Thread(target=push)
    sender.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the callback never started"
        time.sleep(0.02)

    assert container.terminate() == 0
    sender.join(30)
    assert outcome["response"].status_code == 204  # acked: the callback completed
    assert (tmp_path / "finished").read_text() == NAME

    entries = container.log_entries()
    assert entries and all("severity" in e and "message" in e for e in entries)
    (callback_line,) = [e for e in entries if e["message"] == f"callback for {NAME}"]
    assert callback_line["severity"] == "INFO"
    trace = f"projects/{pubsub_project}/traces/{TRACE}"
    assert callback_line["logging.googleapis.com/trace"] == trace
    assert callback_line["logging.googleapis.com/spanId"] == "b7ad6b7169203331"
    assert any(e.get("logger") == "lrobridge.server" for e in entries)


def test_in_poller_mode_the_watcher_runs_in_the_server_process_and_stops_on_sigterm(
    tmp_path: pathlib.Path, containers: list[Container], pubsub_project: str, pubsub_emulator: str
) -> None:
    backend = FakeOperations()
    backend.add(NAME)  # stays pending: the watcher holds a long poll when SIGTERM comes
    with grpc_operations_server(backend) as source:
        container = Container(
            tmp_path,
            {"LROBRIDGE_WATCH_MODE": "poller", **_publishing_env(pubsub_project, pubsub_emulator)},
            "lrobridge.wsgi:app",
        )
        containers.append(container)
        container.wait_healthy()
        created = requests.post(
            f"{container.url}/v1/watches", json={"operation": NAME, "source": source}, timeout=30
        )
        assert created.status_code == 201, created.text

        deadline = time.monotonic() + 30
        while backend.calls("WaitOperation") + backend.calls("GetOperation") == 0:
            assert time.monotonic() < deadline, "the watcher never polled"
            time.sleep(0.05)
        assert container.terminate() == 0
