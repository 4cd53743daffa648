"""What only the Firestore backend has: how an outage and bad configuration surface (and that
the watcher rides an outage out), the
database id of the store URL, bounded scans of filtered listings, leases that simply expire,
the webhook runtime opening its store in the same database, and the composite indexes the
queries need (checked against terraform in tests/unit/test_terraform.py). The behaviour both
backends share is tested once for both in tests/unit/test_store.py and test_webhook_store.py."""

from __future__ import annotations

import dataclasses
import pathlib
import threading
import time
import uuid

import pytest
from google.longrunning import operations_proto_pb2 as operations_pb2

from lrobridge import Bridge
from lrobridge.adapters.pubsub import PubSubAdmin
from lrobridge.cli.emulator import FirestoreEmulator, free_port
from lrobridge.config import Settings
from lrobridge.core import codec
from lrobridge.core.backoff import Backoff
from lrobridge.core.opfilter import parse_filter
from lrobridge.core.records import WatchState
from lrobridge.delivery import relay
from lrobridge.errors import ConfigError, Unavailable
from lrobridge.storage import open_store
from lrobridge.storage.firestore.store import FirestoreStore
from lrobridge.storage.firestore.webhooks import FirestoreWebhookStore
from lrobridge.wiring.parts import WebhookParts
from tests.support.operations_servers import FakeOperations, grpc_operations_server
from tests.support.stack import wait_until
from tests.support.webhooks import push_body

pytestmark = pytest.mark.integration


@pytest.fixture
def project(firestore_emulator: str) -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _snapshot(name: str, **fields: object) -> codec.Snapshot:
    return codec.snapshot_from_proto(operations_pb2.Operation(name=name, **fields))


@pytest.mark.timeout(60)  # the store's retry deadline bounds each call: a hang is a failure
def test_a_firestore_outage_answers_pushes_503_unavailable_so_pubsub_redelivers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nobody there
    settings = dataclasses.replace(
        Settings(), project="p", push_auth="none", api_auth="none", store_url="firestore://"
    )
    store = FirestoreStore(project="p", timeout=1.0)
    webhooks = WebhookParts(settings, store=FirestoreWebhookStore(project="p", timeout=1.0))
    bridge = Bridge(settings, store=store, webhooks=webhooks)
    ran: list[object] = []
    bridge.on_complete(name="cb")(ran.append)
    client = bridge.create_app().test_client()
    try:
        with pytest.raises(Unavailable, match=r"Firestore could not read the watch: .*UNAVAILABLE"):
            store.get_watch("w1")
        with pytest.raises(Unavailable, match="Firestore could not register the watch"):
            bridge.watch("operations/1", source="grpc://127.0.0.1:1")
        completion = client.post("/pubsub/push", json=push_body("projects/p/operations/x"))
        assert completion.status_code == 503
        [details] = completion.get_json()["error"]["details"]
        assert "Unavailable: Firestore could not read webhooks" in details["failed"]["webhooks"]
        garbage = client.post("/pubsub/push", data=b"not an envelope")  # quarantine fails too
        assert garbage.status_code == 503
        error = garbage.get_json()["error"]
        assert error["status"] == "UNAVAILABLE" and "quarantine" in error["message"]
        assert ran == []
    finally:
        bridge.close()


def test_without_a_project_the_firestore_store_says_which_variable_to_set() -> None:
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT or LROBRIDGE_PROJECT"):
        open_store("firestore://", project="")


def test_without_credentials_outside_the_emulator_the_store_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", f"{tmp_path}/absent.json")
    with pytest.raises(ConfigError, match="no Application Default Credentials"):
        open_store("firestore://lrobridge", project="p")


def test_the_store_url_names_the_database_and_databases_keep_their_data_apart(
    project: str,
) -> None:
    default = open_store("firestore://", project=project)
    named = open_store("firestore://audit-db", project=project)
    try:
        assert isinstance(named, FirestoreStore) and named.db.database == "audit-db"
        assert isinstance(default, FirestoreStore) and default.db.database == "(default)"
        record, _ = named.create_watch(
            source="grpc://127.0.0.1:1",
            operation="operations/1",
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=1.0,
        )
        assert named.get_watch(record.id) == record
        assert default.get_watch(record.id) is None
    finally:
        default.close()
        named.close()


def test_a_selective_filter_pages_through_a_large_parent_in_bounded_scans(project: str) -> None:
    store = FirestoreStore(project=project, scan_budget=4)
    try:
        for i in range(10):
            name = f"projects/p/operations/op-{i:02d}"
            store.create_produced_operation(_snapshot(name), source="s", now=1.0)
            if i in (0, 9):
                snapshot = _snapshot(name, done=True)
                completion = relay.completion(
                    snapshot, "succeeded", source="s", payload_format="binary", now=2.0
                )
                store.complete_produced_operation(completion, now=2.0)
        pages: list[list[str]] = []
        after: str | None = ""
        while after is not None:
            page, after = store.list_operations(
                "projects/p", parse_filter("done = true"), after=after, limit=10
            )
            pages.append([r.name.rsplit("/", 1)[1] for r in page])
        # At most 4 documents looked at per call: a page in the middle comes back empty with a
        # cursor, and every match still appears exactly once.
        assert pages == [["op-00"], [], ["op-09"]]
    finally:
        store.close()


def test_recover_takes_back_nothing_and_an_expired_lease_is_claimed_again(project: str) -> None:
    store = FirestoreStore(project=project)
    other = FirestoreStore(project=project)  # another instance, after this one died mid-poll
    try:
        record, _ = store.create_watch(
            source="grpc://127.0.0.1:1",
            operation="operations/1",
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=100.0,
        )
        assert [w.id for w in store.claim_due_polls(now=100.0, limit=1, lease=30.0)] == [record.id]
        assert other.recover(now=101.0) == 0
        assert other.claim_due_polls(now=101.0, limit=1, lease=30.0) == []
        assert [w.id for w in other.claim_due_polls(now=130.0, limit=1, lease=30.0)] == [record.id]
    finally:
        store.close()
        other.close()


def test_the_webhook_runtime_keeps_its_store_in_the_firestore_database(project: str) -> None:
    settings = Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": project,
            "LROBRIDGE_STORE": "firestore://",
            "LROBRIDGE_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        }
    )
    runtime = WebhookParts(settings)
    elsewhere = FirestoreWebhookStore(project=project)  # as another instance sees it
    try:
        assert isinstance(runtime.store, FirestoreWebhookStore)
        webhook, _ = runtime.service.create("http://127.0.0.1:9999/hook")
        seen = elsewhere.get_webhook(webhook.id)
        assert seen is not None and seen.url == "http://127.0.0.1:9999/hook"
    finally:
        runtime.close()
        elsewhere.close()


def test_the_watcher_rides_out_a_firestore_outage_and_polls_once_it_is_back(
    pubsub_project: str,
    firestore_emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{port}")  # not started yet
    settings = dataclasses.replace(
        Settings(), project=pubsub_project, push_auth="none", store_url="firestore://"
    )
    with PubSubAdmin() as admin:
        admin.ensure_topic(settings.topic_path)
    backend = FakeOperations()
    bridge = Bridge(settings, store=FirestoreStore(project=pubsub_project, timeout=1.0))
    watcher = bridge.create_watcher()
    thread = threading.Thread(target=watcher.run, name="watcher", daemon=True)
    with grpc_operations_server(backend) as source:
        thread.start()
        try:
            wait_until(
                lambda: "the store is unavailable" in caplog.text, what="a failed watcher step"
            )
            assert thread.is_alive()
            with FirestoreEmulator(port=port):
                # Another instance registers the watch; this one's gRPC channel reconnects on
                # its own backoff, and its watcher then polls and publishes.
                other = FirestoreStore(project=pubsub_project)
                backend.add("operations/after-outage", done_after=0.0)
                watch, _ = other.create_watch(
                    source=source,
                    operation="operations/after-outage",
                    expire_time=None,
                    backoff=Backoff(),
                    progress=False,
                    now=time.time(),
                )

                def completed() -> bool:
                    record = other.get_watch(watch.id)
                    return record is not None and record.state is WatchState.COMPLETED

                try:
                    wait_until(completed, timeout=60, what="the watch to complete after it")
                finally:
                    other.close()
                watcher.stop()
                thread.join(timeout=30)
        finally:
            watcher.stop()
            bridge.close()
    assert not thread.is_alive()


def test_an_operation_too_large_for_a_firestore_document_fails_its_watch_saying_why(
    project: str,
) -> None:
    from concurrent.futures import Future

    from google.protobuf import any_pb2

    from lrobridge.watching.poller import Watcher

    store = FirestoreStore(project=project)
    name = "projects/p/operations/huge"
    huge = operations_pb2.Operation(
        name=name, done=True, response=any_pb2.Any(type_url="t/x", value=b"x" * 1_100_000)
    )

    class Source:
        url = "grpc://127.0.0.1:1"

        def get_operation(self, name: str, *, timeout: float) -> codec.Snapshot:
            return codec.snapshot_from_proto(huge)

        def wait_operation(self, name: str, *, wait: float, timeout: float) -> codec.Snapshot:
            return codec.snapshot_from_proto(huge)

    class Publisher:
        def publish(self, data: bytes, attributes: dict[str, str], key: str) -> Future[str]:
            raise AssertionError("nothing may be published for a completion never stored")

        def close(self) -> None:
            pass

    try:
        watch, _ = store.create_watch(
            source=Source.url,
            operation=name,
            expire_time=None,
            backoff=Backoff(),
            progress=False,
            now=time.time(),
        )
        watcher = Watcher(
            store=store,
            sources=lambda url: Source(),  # type: ignore[arg-type,return-value]
            publisher=Publisher(),
            settings=dataclasses.replace(Settings(), long_poll_slots=0),
        )
        [claimed] = store.claim_due_polls(now=time.time(), limit=5, lease=60.0)
        watcher.poll(claimed)
        failed = store.get_watch(watch.id)
        assert failed is not None and failed.state == WatchState.FAILED
        assert "cannot be stored" in failed.last_error_message
        assert "longer than" in failed.last_error_message  # Firestore's own words: the limit
    finally:
        store.close()
