"""The Cloud Tasks watch mode on the ``gcloud-tasks-emulator`` package, with the real Pub/Sub
emulator, a real gRPC Operations server and the bridge's Flask app on a real HTTP port: a watch
registered over HTTP -> a named task at its poll time -> the emulator POSTs /tasks/watch -> poll
-> next task ... -> done -> completion on Pub/Sub -> /pubsub/push -> callback; webhook retries as
tasks; the task routes' token check with tokens this test mints; and a serving process killed
twice mid-run losing no watch and publishing each completion under one event id.

The emulator signs no task (no OIDC token), so the emulator-driven tests run with task auth
off and the token check is tested by requests this test signs, as for push."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import requests
from google.cloud import pubsub_v1
from werkzeug.serving import make_server

from lrobridge import Bridge
from lrobridge.adapters.pubsub import PubSubAdmin
from lrobridge.cli.tasks_emulator import TasksEmulator
from lrobridge.config import Settings
from lrobridge.core.codec import event_id
from lrobridge.core.records import WatchState
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.wiring.parts import WebhookParts
from tests.support.oidc import TokenAuthority
from tests.support.operations_servers import FakeOperations
from tests.support.stack import EventLog, stack_settings, wait_until
from tests.support.webhooks import LiveServer, Received, Receiver, free_port

pytestmark = pytest.mark.integration

OPERATION = "projects/p/locations/l/operations/build-7"
LOCATION = "local"
QUEUES = ("lro-watch", "lro-webhook-retry")
SERVICE_ACCOUNT = "tasks-invoker@p.iam.gserviceaccount.com"


@pytest.fixture
def tasks_emulator(pubsub_project: str, tasks_emulator_installed: None) -> Iterator[TasksEmulator]:
    parent = f"projects/{pubsub_project}/locations/{LOCATION}/queues"
    with TasksEmulator(port=free_port(), queues=[f"{parent}/{q}" for q in QUEUES]) as emulator:
        yield emulator


def tasks_settings(
    project: str, store: pathlib.Path, port: int, emulator: TasksEmulator, **extra: object
) -> Settings:
    return stack_settings(
        project,
        store,
        port=port,
        watch_mode="tasks",
        tasks_location=LOCATION,
        tasks_url=f"http://127.0.0.1:{port}",
        tasks_emulator_host=emulator.host_port,
        tasks_webhook_queue=QUEUES[1],
        webhook_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),),
        **extra,
    )


def ensure_pubsub(settings: Settings, push_url: str | None) -> None:
    """The completion topic, and its push subscription to ``push_url`` or a pull one."""
    with PubSubAdmin() as admin:
        admin.ensure_topic(settings.topic_path)
        name = f"projects/{settings.project}/subscriptions/{settings.subscription}"
        if push_url is None:
            admin.ensure_pull_subscription(name, settings.topic_path, enable_message_ordering=False)
        else:
            admin.ensure_push_subscription(
                name, settings.topic_path, push_url, oidc_service_account=None, audience=None
            )


@dataclasses.dataclass
class Stack:
    bridge: Bridge
    base_url: str
    events: EventLog


@pytest.fixture
def stack(
    pubsub_project: str, tmp_path: pathlib.Path, tasks_emulator: TasksEmulator
) -> Iterator[Stack]:
    port = free_port()
    settings = tasks_settings(pubsub_project, tmp_path / "bridge.db", port, tasks_emulator)
    bridge = Bridge(settings, webhooks=WebhookParts(settings, mode="request"))
    events = EventLog()
    bridge.on_complete(name="record")(events)
    base_url = f"http://127.0.0.1:{port}"
    ensure_pubsub(settings, f"{base_url}/pubsub/push")
    server = make_server("127.0.0.1", port, bridge.create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="bridge-http", daemon=True)
    thread.start()
    try:
        yield Stack(bridge, base_url, events)
    finally:
        server.shutdown()
        thread.join(10)
        bridge.close()


def register(base_url: str, source: str, operation: str = OPERATION, **extra: object) -> str:
    response = requests.post(
        f"{base_url}/v1/watches",
        json={"operation": operation, "source": source, **extra},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["name"])


def test_a_watch_is_polled_by_its_tasks_until_done_and_its_completion_reaches_callbacks(
    stack: Stack, backend: FakeOperations, grpc_url: str
) -> None:
    backend.add(OPERATION)
    name = register(stack.base_url, grpc_url, backoff={"initialDelay": "0.2s"})

    wait_until(lambda: backend.calls("GetOperation") >= 3, what="three polls by task")
    watch = requests.get(f"{stack.base_url}/v1/{name}", timeout=30).json()
    assert watch["state"] == "ACTIVE" and int(watch["polls"]) >= 2 and "nextPollTime" in watch
    backend.complete(OPERATION)

    (event,) = stack.events.wait_count(1, timeout=30)
    assert event.name == OPERATION and event.outcome == "succeeded"
    assert event.event_id == event_id(grpc_url, OPERATION, "succeeded")
    wait_until(
        lambda: (
            requests.get(f"{stack.base_url}/v1/{name}", timeout=30).json()["state"] == "COMPLETED"
        ),
        what="the watch to be COMPLETED",
    )
    stats = stack.bridge.task_watch_endpoint().stats
    assert stats.completions == 1 and stats.rescheduled >= 2


def test_a_deleted_watch_is_never_polled_again_though_the_emulator_cannot_delete_its_task(
    stack: Stack, backend: FakeOperations, grpc_url: str
) -> None:
    backend.add(OPERATION)
    name = register(stack.base_url, grpc_url, backoff={"initialDelay": "1s"})
    wait_until(lambda: backend.calls("GetOperation") >= 1, what="the first poll")
    assert requests.delete(f"{stack.base_url}/v1/{name}", timeout=30).status_code == 200
    polls = backend.calls("GetOperation")
    handler = stack.bridge.task_watch_endpoint()
    rescheduled = handler.stats.rescheduled

    # The pending task still runs (DeleteTask is UNIMPLEMENTED there); it finds no watch.
    wait_until(lambda: _queue_empty(stack.bridge), timeout=30, what="the task to run")

    assert backend.calls("GetOperation") == polls
    assert handler.stats.rescheduled == rescheduled


def _queue_empty(bridge: Bridge) -> bool:
    """Whether the emulator holds no task of the watch queue (asked with a client of our own)."""
    import grpc
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(bridge.settings.tasks_emulator_host)
    try:
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        return not list(client.list_tasks(parent=bridge.settings.queue_path(QUEUES[0])))
    finally:
        channel.close()


def test_a_failed_webhook_attempt_is_retried_by_its_task_at_the_planned_time(
    stack: Stack, backend: FakeOperations, grpc_url: str
) -> None:
    answers = iter([500, 200])

    def respond(_: Received) -> tuple[int, dict[str, str], bytes]:
        return next(answers, 200), {}, b""

    with Receiver(respond=respond) as receiver:
        stack.bridge.webhooks.create(receiver.url)
        backend.add(OPERATION, done_after=0.0)
        register(stack.base_url, grpc_url)

        # Attempt 1 in the push request (500); attempt 2 from its task, 5 s (+-20 %) later.
        receiver.wait_for(2, timeout=30)

    deliveries, _ = stack.bridge.webhooks.deliveries(page_size=10)
    (delivery,) = deliveries
    wait_until(
        lambda: stack.bridge.webhooks.delivery(delivery.name).state.value == "SUCCEEDED",
        what="the delivery to succeed",
    )
    final = stack.bridge.webhooks.delivery(delivery.name)
    assert [a.status_code for a in final.attempts] == [500, 200]
    # The retry was made by the task route, not by a drain.
    assert len(stack.bridge.webhook_task_endpoint().lateness) == 1


def test_the_task_routes_accept_only_the_configured_service_accounts_tokens_for_its_audience(
    tmp_path: pathlib.Path,
) -> None:
    audience = "https://bridge.example.run.app"
    with TokenAuthority() as authority:
        settings = dataclasses.replace(
            Settings(),
            project="p",
            store_url=f"sqlite:///{tmp_path / 'bridge.db'}",
            push_auth="oidc",
            push_audience="https://bridge.example/pubsub/push",  # configured, never the request's
            push_service_account="pubsub-push@p.iam.gserviceaccount.com",
            push_certs_url=authority.certs_url,
            api_auth="none",
            watch_mode="tasks",
            tasks_location=LOCATION,
            tasks_url=audience,
            tasks_service_account=SERVICE_ACCOUNT,
        )
        bridge = Bridge(settings, webhooks=WebhookParts(settings, mode="request"))
        try:
            with LiveServer(bridge.create_app()) as live:
                body = json.dumps({"watch": "abc123", "attempt": 0, "due": 1}).encode()
                webhook_body = json.dumps({"delivery": "d1", "attempt": 2}).encode()

                def post(route: str, data: bytes, token: str | None) -> requests.Response:
                    headers = {"Content-Type": "application/json"}
                    if token is not None:
                        headers["Authorization"] = f"Bearer {token}"
                    return requests.post(
                        f"{live.url}{route}", data=data, headers=headers, timeout=30
                    )

                good = authority.mint(audience, SERVICE_ACCOUNT)
                watch = post("/tasks/watch", body, good)
                assert watch.status_code == 200 and watch.json()["step"] == "gone"
                hook = post("/tasks/webhook", webhook_body, good)
                assert hook.status_code == 200 and hook.json()["state"] == "gone"
                refusals = {
                    "no token": (None, 401),
                    "forged": (authority.mint_forged(audience, SERVICE_ACCOUNT), 401),
                    # The URL it was sent to is not the audience: only configuration is.
                    "request url": (
                        authority.mint(f"{live.url}/tasks/watch", SERVICE_ACCOUNT),
                        403,
                    ),
                    "push account": (authority.mint(audience, settings.push_service_account), 403),
                }
                for what, (token, status) in refusals.items():
                    for route, data in (("/tasks/watch", body), ("/tasks/webhook", webhook_body)):
                        answer = post(route, data, token)
                        assert answer.status_code == status, (what, route, answer.text)
                        assert set(answer.json()["error"]) == {
                            "code",
                            "message",
                            "status",
                            "details",
                        }
        finally:
            bridge.close()


KILL_OPERATIONS = 24


def _serve(env: dict[str, str], port: int, log_path: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.tasks_server", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    wait_until(lambda: _answers(port), timeout=30, what="the serving process to listen")
    return process


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_a_serving_process_killed_twice_loses_no_watch_and_publishes_each_completion_once(
    pubsub_emulator: str,
    pubsub_project: str,
    tmp_path: pathlib.Path,
    tasks_emulator: TasksEmulator,
    backend: FakeOperations,
    grpc_url: str,
) -> None:
    port = free_port()
    store_path = tmp_path / "bridge.db"
    settings = tasks_settings(pubsub_project, store_path, port, tasks_emulator)
    ensure_pubsub(settings, None)
    env = {
        **os.environ,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator,
        "GOOGLE_CLOUD_PROJECT": pubsub_project,
        "LROBRIDGE_STORE": f"sqlite:///{store_path}",
        "LROBRIDGE_PUSH_AUTH": "none",
        "LROBRIDGE_API_AUTH": "none",
        "LROBRIDGE_WATCH_MODE": "tasks",
        "LROBRIDGE_TASKS_LOCATION": LOCATION,
        "LROBRIDGE_TASKS_URL": f"http://127.0.0.1:{port}",
        "LROBRIDGE_TASKS_EMULATOR_HOST": tasks_emulator.host_port,
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    log_path = tmp_path / "server.log"
    names = [f"projects/p/operations/kill-{i:03d}" for i in range(KILL_OPERATIONS)]
    for i, name in enumerate(names):
        backend.add(name, done_after=1.0 + 6.0 * i / KILL_OPERATIONS)
    server = _serve(env, port, log_path)
    store = SqliteStore(str(store_path))
    try:
        for name in names:
            register(f"http://127.0.0.1:{port}", grpc_url, name, backoff={"initialDelay": "0.3s"})

        def completed() -> int:
            return store.count_by_state()[WatchState.COMPLETED]

        for fraction in (0.25, 0.6):
            wait_until(lambda f=fraction: completed() >= KILL_OPERATIONS * f, timeout=60)
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            server = _serve(env, port, log_path)
        wait_until(lambda: completed() == KILL_OPERATIONS, timeout=120, what="every watch")
        assert store.outbox_size() == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        store.close()
    seen = _pull_all(settings)
    ids = {name: {e for n, e in seen if n == name} for name in names}
    assert ids == {n: {event_id(grpc_url, n, "succeeded")} for n in names}, log_path.read_text()[
        -3000:
    ]


def _pull_all(settings: Settings) -> list[tuple[str, str]]:
    """(operation, event id) of every completion message on the topic."""
    subscriber = pubsub_v1.SubscriberClient()
    subscription = f"projects/{settings.project}/subscriptions/{settings.subscription}"
    seen: list[tuple[str, str]] = []
    try:
        while True:
            pulled = subscriber.pull(subscription=subscription, max_messages=100, timeout=10)
            if not pulled.received_messages:
                return seen
            for received in pulled.received_messages:
                attributes = received.message.attributes
                seen.append((attributes["operation"], attributes["event_id"]))
            subscriber.acknowledge(
                subscription=subscription, ack_ids=[r.ack_id for r in pulled.received_messages]
            )
    finally:
        subscriber.close()
