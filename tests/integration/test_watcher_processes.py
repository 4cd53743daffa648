"""Watcher processes (``python -m lrobridge.cli watcher``) on one SQLite store with the Pub/Sub
emulator: two at once share the watches by lease and never publish one completion twice; one
killed with SIGKILL again and again while it writes its group commits loses nothing."""

from __future__ import annotations

import collections
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from google.cloud import pubsub_v1

from lrobridge.adapters.pubsub import PubSubAdmin
from lrobridge.core.backoff import Backoff
from lrobridge.core.records import WatchState
from lrobridge.storage.sqlite.store import SqliteStore
from tests.support.operations_servers import FakeOperations
from tests.support.stack import wait_until

pytestmark = pytest.mark.integration

TOPIC = "lro-completed"


def _env(emulator: str, project: str, store_path: pathlib.Path) -> dict[str, str]:
    return {
        **os.environ,
        "PUBSUB_EMULATOR_HOST": emulator,
        "GOOGLE_CLOUD_PROJECT": project,
        "LROBRIDGE_STORE": f"sqlite:///{store_path}",
        "LROBRIDGE_LONG_POLL_TIMEOUT": "1s",
        "LROBRIDGE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def _start(env: dict[str, str], log_path: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "lrobridge.cli", "watcher"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def subscription(pubsub_emulator: str, pubsub_project: str) -> Iterator[str]:
    """A pull subscription on the completion topic: every message published, duplicates too."""
    topic = f"projects/{pubsub_project}/topics/{TOPIC}"
    path = f"projects/{pubsub_project}/subscriptions/count-{TOPIC}"
    with PubSubAdmin() as admin:
        admin.ensure_topic(topic)
        admin.ensure_pull_subscription(path, topic)
    yield path


def _pull_all(path: str, *, expect: int, timeout: float = 60.0) -> list[dict[str, str]]:
    """Every message on the subscription (acknowledged), once ``expect`` arrived and nothing
    more came for two seconds."""
    subscriber = pubsub_v1.SubscriberClient()
    received: list[dict[str, str]] = []
    quiet_since = time.monotonic()
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            response = subscriber.pull(
                request={"subscription": path, "max_messages": 500}, timeout=5.0
            )
            if response.received_messages:
                received += [dict(m.message.attributes) for m in response.received_messages]
                subscriber.acknowledge(
                    request={
                        "subscription": path,
                        "ack_ids": [m.ack_id for m in response.received_messages],
                    }
                )
                quiet_since = time.monotonic()
            elif len(received) >= expect and time.monotonic() - quiet_since > 2.0:
                break
            else:
                time.sleep(0.1)
    finally:
        subscriber.close()
    return received


def _add_watches(store: SqliteStore, backend: FakeOperations, url: str, names: list[str]) -> None:
    for i, name in enumerate(names):
        backend.add(name, done_after=2.0 + 6.0 * i / len(names))
        store.create_watch(
            source=url,
            operation=name,
            expire_time=None,
            backoff=Backoff(initial_delay=0.3, max_delay=2.0),
            progress=False,
            now=time.time(),
        )


def test_two_watcher_processes_on_one_store_never_publish_one_completion_twice(
    pubsub_emulator: str,
    pubsub_project: str,
    subscription: str,
    tmp_path: pathlib.Path,
    backend: FakeOperations,
    grpc_url: str,
) -> None:
    backend.list_unimplemented = True  # every watch polled on its own: the most contention
    store_path = tmp_path / "shared.db"
    store = SqliteStore(str(store_path))
    names = [f"projects/p/locations/l/operations/two-{i:03d}" for i in range(200)]
    _add_watches(store, backend, grpc_url, names)
    env = _env(pubsub_emulator, pubsub_project, store_path)
    log_path = tmp_path / "watchers.log"
    processes = [_start(env, log_path), _start(env, log_path)]
    try:
        wait_until(
            lambda: store.count_by_state()[WatchState.COMPLETED] == len(names),
            timeout=90,
            what="every watch COMPLETED",
        )
    finally:
        for process in processes:
            _stop(process)
    messages = _pull_all(subscription, expect=len(names))
    per_event = collections.Counter(m["event_id"] for m in messages)
    assert {m["operation"] for m in messages} == set(names), log_path.read_text()[-3000:]
    assert len(messages) == len(per_event) == len(names), [e for e, n in per_event.items() if n > 1]
    store.close()


def test_a_watcher_killed_again_and_again_during_its_group_commits_loses_nothing(
    pubsub_emulator: str,
    pubsub_project: str,
    subscription: str,
    tmp_path: pathlib.Path,
    backend: FakeOperations,
    grpc_url: str,
) -> None:
    backend.list_unimplemented = True
    store_path = tmp_path / "killed.db"
    store = SqliteStore(str(store_path))
    names = [f"projects/p/locations/l/operations/kill-{i:03d}" for i in range(400)]
    _add_watches(store, backend, grpc_url, names)
    env = _env(pubsub_emulator, pubsub_project, store_path)
    log_path = tmp_path / "watcher.log"
    rng = random.Random(7)
    watcher = _start(env, log_path)
    try:
        # Every start claims the watches again and writes their first observations in group
        # commits of hundreds of rows: kill it at random moments of that, eight times.
        for _ in range(8):
            time.sleep(rng.uniform(0.4, 1.5))
            watcher.send_signal(signal.SIGKILL)
            watcher.wait(timeout=10)
            watcher = _start(env, log_path)
        wait_until(
            lambda: store.count_by_state()[WatchState.COMPLETED] == len(names),
            timeout=120,
            what="every watch COMPLETED after the kills",
        )
        assert store.outbox_size() == 0
    finally:
        _stop(watcher)
    messages = _pull_all(subscription, expect=len(names))
    published = {m["operation"] for m in messages}
    assert published == set(names), log_path.read_text()[-3000:]
    # A completion republished after a kill keeps its event id: subscribers deduplicate.
    events_per_operation = collections.defaultdict(set)
    for m in messages:
        events_per_operation[m["operation"]].add(m["event_id"])
    assert all(len(ids) == 1 for ids in events_per_operation.values())
    store.close()
