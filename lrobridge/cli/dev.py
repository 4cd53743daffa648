"""``lrobridge dev``: the whole stack on one machine, in one command.

Starts (or reuses) the Pub/Sub emulator, creates the topic and a push subscription to the local
endpoint, then runs the HTTP app (push endpoint + API) and the watcher in this process and prints
what it started and a live progress line. Local only: binds 127.0.0.1, push and API auth off.

Each dev stack has a push subscription of its own, named after its HTTP port
(``lro-completed-push-8080``), so several stacks on one emulator (other ports) do not repoint
each other's: each receives every completion published to the shared topic, and one exiting
leaves the others receiving. With ``--serverless`` the watch topic and its subscription are
per port too (``lro-watch-8080``), since a watch message is one stack's work.

``--serverless`` runs the watch mode of Cloud Run instead of the watcher
(``LROBRIDGE_WATCH_MODE=pubsub``, see :mod:`lrobridge.watching.pubsub_mode`): it also creates the
watch
topic, a dead-letter topic and the push subscription to ``/pubsub/watch``, with a 1 s .. 10 s
retry policy unless LROBRIDGE_WATCH_MIN_BACKOFF / LROBRIDGE_WATCH_MAX_BACKOFF say otherwise.

``--tasks`` runs the Cloud Tasks watch mode (``LROBRIDGE_WATCH_MODE=tasks``, see
:mod:`lrobridge.watching.tasks_mode`) against the ``gcloud-tasks-emulator`` package run in this
process (:mod:`lrobridge.cli.tasks_emulator`, port ``--tasks-port``): each watch's next poll is a
task that the emulator POSTs to ``/tasks/watch``, and webhook retries are tasks to
``/tasks/webhook``. The emulator mints no OIDC token (task auth is off, like push auth).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from lrobridge.cli.common import load_bridge, wait_for_signal
from lrobridge.cli.emulator import emulator_answers
from lrobridge.config import Settings
from lrobridge.core.records import WatchState
from lrobridge.errors import FailedPrecondition

if TYPE_CHECKING:
    from lrobridge.adapters.pubsub import PubSubAdmin
    from lrobridge.bridge import Bridge

log = logging.getLogger("lrobridge.dev")


TASKS_LOCATION = "local"


def run_dev(
    *,
    app_spec: str | None,
    port: int | None,
    emulator_port: int,
    serverless: bool = False,
    tasks: bool = False,
    tasks_port: int = 9022,
) -> int:
    from lrobridge.cli.emulator import PubSubEmulator

    # Local development: the emulator signs no push tokens and only this machine can connect.
    os.environ["LROBRIDGE_PUSH_AUTH"] = "none"
    os.environ["LROBRIDGE_API_AUTH"] = "none"
    if not (os.environ.get("LROBRIDGE_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")):
        os.environ["GOOGLE_CLOUD_PROJECT"] = "lrobridge-dev"
    if port is not None:
        os.environ["PORT"] = str(port)
    if serverless:
        os.environ["LROBRIDGE_WATCH_MODE"] = "pubsub"
        os.environ.setdefault("LROBRIDGE_WATCH_MIN_BACKOFF", "1s")
        os.environ.setdefault("LROBRIDGE_WATCH_MAX_BACKOFF", "10s")
    if serverless and tasks:
        raise FailedPrecondition("choose --serverless (Pub/Sub watch mode) or --tasks, not both")
    _own_subscriptions(Settings.from_env(), serverless=serverless)

    with contextlib.ExitStack() as stack:
        if tasks:
            _start_tasks_emulator(stack, tasks_port)
        emulator_host = os.environ.get("PUBSUB_EMULATOR_HOST", "")
        if emulator_host:
            if not emulator_answers(emulator_host):
                raise FailedPrecondition(
                    f"PUBSUB_EMULATOR_HOST={emulator_host} is set but nothing answers there"
                )
            print(f"• Pub/Sub emulator: using {emulator_host} (PUBSUB_EMULATOR_HOST)")
        elif emulator_answers(f"127.0.0.1:{emulator_port}"):
            emulator_host = f"127.0.0.1:{emulator_port}"
            os.environ["PUBSUB_EMULATOR_HOST"] = emulator_host
            print(f"• Pub/Sub emulator: reusing the one on {emulator_host}")
        else:
            print(f"• Pub/Sub emulator: starting on 127.0.0.1:{emulator_port} …", flush=True)
            started = time.monotonic()
            emulator = stack.enter_context(PubSubEmulator(port=emulator_port))
            emulator_host = emulator.host_port
            os.environ["PUBSUB_EMULATOR_HOST"] = emulator_host
            print(
                f"  started in {time.monotonic() - started:.1f}s "
                f"(pid {emulator.pid}, log {emulator.log_path})"
            )

        from lrobridge.adapters.pubsub import PubSubAdmin

        bridge = load_bridge(app_spec)
        stack.callback(bridge.close)
        settings = bridge.settings
        push_url = f"http://127.0.0.1:{settings.port}/pubsub/push"
        admin = PubSubAdmin()
        stack.callback(admin.close)
        topic = settings.topic_path
        subscription = f"projects/{settings.project}/subscriptions/{settings.subscription}"
        print(f"• topic {topic}: {admin.ensure_topic(topic)}")
        result = admin.ensure_push_subscription(
            subscription, topic, push_url, oidc_service_account=None, audience=None
        )
        print(
            f"• push subscription {subscription} -> {push_url}: {result} (this dev stack's "
            "own, named after its port: another `lrobridge dev` on another port gets its own "
            "and receives every completion too)"
        )

        from werkzeug.serving import make_server

        server = make_server("127.0.0.1", settings.port, bridge.create_app(), threaded=True)
        http_thread = threading.Thread(target=server.serve_forever, name="lrobridge-http")
        http_thread.start()
        stack.callback(http_thread.join, 10)
        stack.callback(server.shutdown)
        print(f"• HTTP: http://127.0.0.1:{settings.port} (push endpoint, /v1 API, /healthz)")

        if settings.grpc_port is not None:
            grpc_port = bridge.start_grpc(host="127.0.0.1")
            print(f"• gRPC: 127.0.0.1:{grpc_port} (google.longrunning.Operations, WatchService)")

        from lrobridge.cli.preflight import check_publishing

        if serverless:
            _serverless_watching(admin, settings)
            check_publishing(settings, "lrobridge dev")  # what every publishing process checks
            return _wait_serverless(bridge)
        if tasks:
            check_publishing(settings, "lrobridge dev")
            print(
                f"• tasks watch mode: queue {settings.tasks_queue}, webhook retries on "
                f"{settings.tasks_webhook_queue}, tasks call {settings.tasks_url}/tasks/*"
            )
            return _wait_tasks(bridge)
        check_publishing(settings, "lrobridge dev")
        watcher = bridge.create_watcher()
        watcher_thread = threading.Thread(target=watcher.run, name="lrobridge-watcher")
        watcher_thread.start()
        stack.callback(watcher_thread.join, 60)
        stack.callback(watcher.stop)
        print(f"• watcher: store {settings.store_url}, callbacks: {len(bridge.subscriptions)}")
        if bridge.start_webhook_worker():
            print("• webhooks: delivery worker running (lrobridge webhooks add URL)")
        print(
            "\nReady. In another terminal:\n"
            "  lrobridge watch OPERATION_NAME --source grpc://HOST:PORT\n"
            "Ctrl-C stops everything this command started.\n",
            flush=True,
        )

        stop = wait_for_signal()
        last = ""
        while not stop.wait(1.0):
            counts = bridge.store.count_by_state()
            stats = watcher.stats
            line = (
                f"watches: {counts[WatchState.ACTIVE]} active, "
                f"{counts[WatchState.PUBLISHING]} publishing, "
                f"{counts[WatchState.COMPLETED]} completed, {counts[WatchState.FAILED]} failed"
                f" | polls {stats.polls}, published {watcher.relay.published}"
            )
            if line != last:
                print(time.strftime("%H:%M:%S"), line, flush=True)
                last = line
        print("\nstopping …", flush=True)
    return 0


def _own_subscriptions(settings: Settings, *, serverless: bool) -> None:
    """Name this stack's push subscription (and, serverless, its watch topic and subscription)
    after its port, so that two dev stacks on one emulator never repoint each other's: each
    gets every completion on the shared topic, and one exiting leaves the other receiving."""
    port = settings.port
    os.environ["LROBRIDGE_SUBSCRIPTION"] = f"{settings.subscription}-{port}"
    if serverless:
        # Watch messages are each stack's own work: a topic of its own, or both would poll
        # (and republish) every watch.
        os.environ["LROBRIDGE_WATCH_TOPIC"] = f"{settings.watch_topic}-{port}"
        os.environ["LROBRIDGE_WATCH_SUBSCRIPTION"] = f"{settings.watch_subscription}-{port}"


def _serverless_watching(admin: PubSubAdmin, settings: Settings) -> None:
    """The watch topic, its dead-letter topic and the push subscription to /pubsub/watch."""
    project = f"projects/{settings.project}"
    topic = settings.watch_topic_path
    dead_letter = f"{project}/topics/lro-dead-letter"
    subscription = f"{project}/subscriptions/{settings.watch_subscription}"
    watch_url = f"http://127.0.0.1:{settings.port}/pubsub/watch"
    print(f"• watch topic {topic}: {admin.ensure_topic(topic)}")
    print(f"• dead-letter topic {dead_letter}: {admin.ensure_topic(dead_letter)}")
    result = admin.ensure_push_subscription(
        subscription,
        topic,
        watch_url,
        oidc_service_account=None,
        audience=None,
        enable_message_ordering=False,
        dead_letter_topic=dead_letter,
        max_delivery_attempts=settings.watch_max_deliveries,
        min_backoff=settings.watch_min_backoff,
        max_backoff=settings.watch_max_backoff,
    )
    print(
        f"• watch subscription {subscription} -> {watch_url}: {result} (retry "
        f"{settings.watch_min_backoff:g}s..{settings.watch_max_backoff:g}s, dead letter after "
        f"{settings.watch_max_deliveries} deliveries)"
    )
    print("• serverless watch mode: no watcher; each watch is a message, polled per delivery")


def _wait_serverless(bridge: Bridge) -> int:

    print(
        "\nReady. In another terminal:\n"
        "  lrobridge watch OPERATION_NAME --source grpc://HOST:PORT\n"
        "Ctrl-C stops everything this command started.\n",
        flush=True,
    )
    stop = wait_for_signal()
    last = ""
    while not stop.wait(1.0):
        stats = bridge.watch_endpoint().stats
        line = (
            f"watch deliveries: {stats.polls} polls, {stats.retries} not done yet, "
            f"{stats.republished} republished, {stats.completions} completed, "
            f"{stats.dropped} failed, {stats.quarantined} quarantined"
        )
        if line != last:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            last = line
    print("\nstopping …", flush=True)
    return 0


def _start_tasks_emulator(stack: contextlib.ExitStack, tasks_port: int) -> None:
    """Cloud Tasks emulator in this process, its queues made, the tasks settings pointed at it."""
    from lrobridge.cli.tasks_emulator import TasksEmulator
    from lrobridge.config import Settings

    project = os.environ.get("LROBRIDGE_PROJECT") or os.environ["GOOGLE_CLOUD_PROJECT"]
    os.environ["LROBRIDGE_WATCH_MODE"] = "tasks"
    os.environ.setdefault("LROBRIDGE_TASKS_LOCATION", TASKS_LOCATION)
    os.environ.setdefault("LROBRIDGE_TASKS_WEBHOOK_QUEUE", "lro-webhook-retry")
    # Retries come from their tasks, not from a worker thread.
    os.environ.setdefault("LROBRIDGE_WEBHOOK_DELIVERY", "request")
    os.environ["LROBRIDGE_TASKS_URL"] = f"http://127.0.0.1:{os.environ.get('PORT', '8080')}"
    settings = Settings.from_env()
    queues = {settings.tasks_queue, settings.tasks_webhook_queue}
    queues.update(queue for _, queue in settings.tasks_source_queues)
    location = f"projects/{project}/locations/{settings.tasks_location}"
    emulator = stack.enter_context(
        TasksEmulator(port=tasks_port, queues=[f"{location}/queues/{q}" for q in sorted(queues)])
    )
    os.environ["LROBRIDGE_TASKS_EMULATOR_HOST"] = emulator.host_port
    print(f"• Cloud Tasks emulator: {emulator.host_port}, queues {', '.join(sorted(queues))}")


def _wait_tasks(bridge: Bridge) -> int:
    print(
        "\nReady. In another terminal:\n"
        "  lrobridge watch OPERATION_NAME --source grpc://HOST:PORT\n"
        "Ctrl-C stops everything this command started.\n",
        flush=True,
    )
    stop = wait_for_signal()
    last = ""
    while not stop.wait(1.0):
        counts = bridge.store.count_by_state()
        stats = bridge.task_watch_endpoint().stats
        line = (
            f"watches: {counts[WatchState.ACTIVE]} active, "
            f"{counts[WatchState.COMPLETED]} completed, {counts[WatchState.FAILED]} failed"
            f" | task polls {stats.polls}, rescheduled {stats.rescheduled}, "
            f"stale {stats.stale}, completions {stats.completions}"
        )
        if line != last:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            last = line
    print("\nstopping …", flush=True)
    return 0
