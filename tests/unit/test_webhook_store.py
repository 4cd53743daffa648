"""The webhook store contract, run against every backend (SQLite here; Firestore on the
emulator, as integration): deliveries written once per event, leased claims, the attempt log,
disabling, replay, pruning and paging; plus SQLite's sharing of the main store's file."""

from __future__ import annotations

import dataclasses
import pathlib
import sqlite3
import threading

import pytest

from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.storage.sqlite.webhooks import SqliteWebhookStore
from lrobridge.webhooks.filters import WebhookFilter
from lrobridge.webhooks.model import (
    Attempt,
    DeliveryState,
    Message,
    NewDelivery,
    Webhook,
    WebhookState,
    WebhookStore,
)
from lrobridge.webhooks.schedule import Plan
from tests.support.stores import Backend

NOW = 1_800_000_000.0


@pytest.fixture
def store(store_backend: Backend) -> WebhookStore:
    return store_backend.open_webhooks()


def _webhook(webhook_id: str = "w1", state: WebhookState = WebhookState.ENABLED) -> Webhook:
    return Webhook(
        id=webhook_id,
        url="https://hooks.example.com/",
        description="",
        filter=WebhookFilter.build(outcomes=["failed"]),
        state=state,
        secret="whsec_" + "A" * 44,
        create_time=NOW,
        update_time=NOW,
    )


def _message(event_id: str = "e1") -> Message:
    return Message(
        id=f"msg_{event_id}",
        event_id=event_id,
        event_type="operation.failed",
        operation="operations/x",
        body=b'{"type":"operation.failed"}',
        create_time=NOW,
    )


def _attempt(status: int = 500) -> Attempt:
    return Attempt(
        number=1, time=NOW, status_code=status, latency=0.01, response_body="no", error="HTTP 500"
    )


def test_sqlite_shares_the_main_stores_file_in_wal_mode(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "bridge.db")
    store = SqliteWebhookStore(path)
    main = SqliteStore(path)
    try:
        store.create_webhook(_webhook())
        with sqlite3.connect(path) as other:
            tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master")}
            assert {"watches", "webhooks", "webhook_deliveries", "webhook_attempts"} <= tables
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        main.close()
        store.close()
    reopened = SqliteWebhookStore(path)
    assert reopened.get_webhook("w1") == _webhook()
    reopened.close()


def test_writing_the_same_event_twice_creates_its_deliveries_once(
    store: WebhookStore,
) -> None:
    store.create_webhook(_webhook("w1"))
    store.create_webhook(_webhook("w2"))
    news = [NewDelivery("w1", DeliveryState.PENDING), NewDelivery("w2", DeliveryState.PENDING)]
    first = store.add_message(_message(), news, now=NOW)
    assert len(first) == 2
    assert store.add_message(_message(), news, now=NOW + 1) == []
    deliveries, _ = store.list_deliveries(webhook_id=None, state=None, after="", limit=10)
    assert sorted(d.webhook_id for d in deliveries) == ["w1", "w2"]
    assert {d.message_id for d in deliveries} == {"msg_e1"}


def test_a_claimed_delivery_is_leased_and_not_handed_out_twice(store: WebhookStore) -> None:
    store.create_webhook(_webhook())
    [delivery_id] = store.add_message(
        _message(), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW
    )
    [claim] = store.claim_due(now=NOW, limit=10, lease=20)
    assert claim.delivery.id == delivery_id and claim.body == b'{"type":"operation.failed"}'
    assert store.claim_due(now=NOW + 19, limit=10, lease=20) == []
    [again] = store.claim_due(now=NOW + 20, limit=10, lease=20)  # the first worker died
    assert again.token != claim.token
    # the first worker comes back late: its attempt is logged, the state is not touched
    plan = Plan("SUCCEEDED", None, None)
    assert store.record_attempt(claim, _attempt(200), plan, now=NOW + 21) is False
    current = store.get_delivery(delivery_id)
    assert current is not None and current.state is DeliveryState.PENDING
    assert len(current.attempts) == 1
    assert store.record_attempt(again, _attempt(200), plan, now=NOW + 22) is True
    done = store.get_delivery(delivery_id)
    assert done is not None and done.state is DeliveryState.SUCCEEDED
    assert [a.status_code for a in done.attempts] == [200, 200]


def test_claims_can_be_limited_to_given_deliveries(store: WebhookStore) -> None:
    store.create_webhook(_webhook())
    [a] = store.add_message(_message("a"), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW)
    [b] = store.add_message(_message("b"), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW)
    assert [c.delivery.id for c in store.claim_due(now=NOW, limit=9, lease=5, only=[b])] == [b]
    assert [c.delivery.id for c in store.claim_due(now=NOW, limit=9, lease=5)] == [a]


def test_disabling_dead_letters_pending_deliveries_and_stops_claims(
    store: WebhookStore,
) -> None:
    store.create_webhook(_webhook())
    [delivery_id] = store.add_message(
        _message(), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW
    )
    [claim] = store.claim_due(now=NOW, limit=1, lease=5)
    plan = Plan("DEAD", None, NOW, disable_reason="the endpoint answered 410 Gone", error="gone")
    assert store.record_attempt(claim, _attempt(410), plan, now=NOW)
    webhook = store.get_webhook("w1")
    assert webhook is not None and webhook.state is WebhookState.DISABLED
    assert webhook.disabled_reason == "the endpoint answered 410 Gone"
    delivery = store.get_delivery(delivery_id)
    assert delivery is not None and delivery.state is DeliveryState.DEAD
    store.requeue(delivery_id, now=NOW + 1)
    assert store.claim_due(now=NOW + 2, limit=1, lease=5) == []  # disabled: nothing is sent
    assert store.count_pending() == 0
    store.set_enabled("w1", now=NOW + 3)
    assert len(store.claim_due(now=NOW + 3, limit=1, lease=5)) == 1


def test_a_failure_starts_the_endpoints_failing_streak_and_a_success_ends_it(
    store: WebhookStore,
) -> None:
    store.create_webhook(_webhook())
    store.add_message(_message("a"), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW)
    [claim] = store.claim_due(now=NOW, limit=1, lease=5)
    store.record_attempt(claim, _attempt(), Plan("PENDING", NOW + 5, NOW), now=NOW)
    webhook = store.get_webhook("w1")
    assert webhook is not None and webhook.failing_since == NOW
    [claim] = store.claim_due(now=NOW + 5, limit=1, lease=5)
    store.record_attempt(claim, _attempt(200), Plan("SUCCEEDED", None, None), now=NOW + 6)
    webhook = store.get_webhook("w1")
    assert webhook is not None and webhook.failing_since is None


def test_replay_since_requeues_only_dead_deliveries_created_since(
    store: WebhookStore,
) -> None:
    store.create_webhook(_webhook())
    dead = [NewDelivery("w1", DeliveryState.DEAD, "webhook disabled")]
    store.add_message(_message("old"), dead, now=NOW - 100)
    store.add_message(_message("new"), dead, now=NOW)
    assert store.requeue_dead_since("w1", since=NOW - 10, now=NOW) == 1
    [claim] = store.claim_due(now=NOW, limit=5, lease=5)
    assert claim.delivery.event_id == "new" and claim.delivery.round_attempts == 0


def test_deleting_a_webhook_forgets_its_deliveries_and_log(store: WebhookStore) -> None:
    store.create_webhook(_webhook())
    [delivery_id] = store.add_message(
        _message(), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW
    )
    [claim] = store.claim_due(now=NOW, limit=1, lease=5)
    store.record_attempt(claim, _attempt(), Plan("PENDING", NOW + 5, NOW), now=NOW)
    assert store.delete_webhook("w1") is True
    assert store.get_delivery(delivery_id) is None
    assert store.delete_webhook("w1") is False


def test_pruning_forgets_old_finished_deliveries_only(store: WebhookStore) -> None:
    store.create_webhook(_webhook())
    store.add_message(_message("old"), [NewDelivery("w1", DeliveryState.DEAD, "x")], now=NOW - 99)
    store.add_message(_message("new"), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW - 99)
    assert store.prune(finished_before=NOW) == 1
    deliveries, _ = store.list_deliveries(webhook_id="w1", state=None, after="", limit=10)
    assert [d.event_id for d in deliveries] == ["new"]


def test_listing_pages_newest_first_and_filters_by_state(store: WebhookStore) -> None:
    store.create_webhook(_webhook())
    for i in range(5):
        state = DeliveryState.DEAD if i % 2 else DeliveryState.PENDING
        store.add_message(_message(f"e{i}"), [NewDelivery("w1", state)], now=NOW + i)
    page, cursor = store.list_deliveries(webhook_id="w1", state=None, after="", limit=2)
    assert [d.event_id for d in page] == ["e4", "e3"] and cursor is not None
    rest, end = store.list_deliveries(webhook_id="w1", state=None, after=cursor, limit=10)
    assert [d.event_id for d in rest] == ["e2", "e1", "e0"] and end is None
    dead, _ = store.list_deliveries(webhook_id=None, state=DeliveryState.DEAD, after="", limit=10)
    assert [d.event_id for d in dead] == ["e3", "e1"]


def test_webhooks_page_in_creation_order_and_secrets_rotate_with_an_overlap(
    store: WebhookStore,
) -> None:
    ids = [f"w{i}" for i in range(5)]
    for webhook_id in ids:
        store.create_webhook(_webhook(webhook_id))
    page, cursor = store.list_webhooks(after="", limit=2)
    seen = [w.id for w in page]
    while cursor is not None:
        page, cursor = store.list_webhooks(after=cursor, limit=2)
        seen += [w.id for w in page]
    assert seen == ids
    assert sorted(w.id for w in store.all_webhooks()) == ids
    assert store.get_webhook("nope") is None
    rotated = store.rotate_secret("w1", secret="whsec_new", previous_expire_time=NOW + 60, now=NOW)
    assert rotated is not None
    assert rotated.signing_secrets(NOW) == ("whsec_new", "whsec_" + "A" * 44)
    assert rotated.signing_secrets(NOW + 61) == ("whsec_new",)
    assert store.rotate_secret("nope", secret="x", previous_expire_time=NOW, now=NOW) is None


def test_pending_counts_and_the_next_due_time_leave_out_disabled_webhooks(
    store: WebhookStore,
) -> None:
    store.create_webhook(_webhook("on"))
    store.create_webhook(_webhook("off"))
    assert store.next_due_time() is None
    pending = [NewDelivery("on", DeliveryState.PENDING), NewDelivery("off", DeliveryState.PENDING)]
    store.add_message(_message("a"), pending, now=NOW + 5)
    store.add_message(_message("b"), pending, now=NOW)
    disabled = store.disable("off", reason="operator", now=NOW)
    assert disabled is not None and disabled.state is WebhookState.DISABLED
    [dead], _ = store.list_deliveries(webhook_id="off", state=None, after="", limit=1)
    assert dead.state is DeliveryState.DEAD and dead.last_error == "webhook disabled: operator"
    requeued = store.requeue(dead.id, now=NOW - 10)  # due first, but its webhook is off
    assert requeued is not None and requeued.state is DeliveryState.PENDING
    assert store.count_pending() == 2
    assert store.count_pending(due_by=NOW + 1) == 1
    assert store.next_due_time() == NOW
    assert store.disable("nope", reason="x", now=NOW) is None
    assert store.set_enabled("nope", now=NOW) is None


def test_two_workers_claiming_the_same_due_deliveries_never_both_get_one(
    store_backend: Backend,
) -> None:
    workers = [store_backend.open_webhooks(), store_backend.open_webhooks()]
    workers[0].create_webhook(_webhook())
    made = set()
    for i in range(8):
        made.update(
            workers[0].add_message(
                _message(f"e{i}"), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW
            )
        )
    got: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def claim(i: int) -> None:
        start.wait()
        for _ in range(100):  # until nothing is due; a round lost to the other comes back short
            if workers[i].count_pending(due_by=NOW) == 0:
                return
            got[i] += [c.delivery.id for c in workers[i].claim_due(now=NOW, limit=2, lease=60)]

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = got[0] + got[1]
    assert sorted(claimed) == sorted(set(claimed)) and set(claimed) == made


def test_a_messages_trace_context_comes_back_with_each_claim(store: WebhookStore) -> None:
    store.create_webhook(_webhook())
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = dataclasses.replace(_message("e1"), traceparent=traceparent)
    store.add_message(traced, [NewDelivery("w1", DeliveryState.PENDING)], now=NOW)
    store.add_message(_message("e2"), [NewDelivery("w1", DeliveryState.PENDING)], now=NOW)
    claims = store.claim_due(now=NOW, limit=10, lease=20)
    by_event = {c.delivery.event_id: c.traceparent for c in claims}
    assert by_event == {"e1": traceparent, "e2": ""}  # untraced (tracing off): none
