"""Firestore storage of webhooks, messages, deliveries and the attempt log: the
:class:`~lrobridge.webhooks.model.WebhookStore` of ``LROBRIDGE_STORE=firestore://[DATABASE]``,
shared by every instance, behaving like
:class:`lrobridge.storage.sqlite.webhooks.SqliteWebhookStore`.

Collections (prefix ``lrobridge_``, beside the main store's):

``webhooks``                 one document per webhook, id = the webhook id
``webhook_messages``         id = digest(message id): the body sent for one event
``webhook_deliveries``       id = the delivery id; carries its message's event id, type and
                             operation (a message never changes) and its attempt log (a list)
``webhook_delivery_keys``    id = digest(webhook id, message id) -> the delivery id: the unique
                             index that makes :meth:`~FirestoreWebhookStore.add_message`
                             idempotent per event

Claims: :meth:`~FirestoreWebhookStore.claim_due` finds due PENDING deliveries in due order,
skips those of webhooks that are not ENABLED, and leases each by a conditional write (see
:mod:`lrobridge.storage.firestore.client`) that stamps a fresh claim token; a result recorded with a
token that is no longer the delivery's is logged without changing the delivery, as on SQLite.
Every other read-modify-write is a transaction, except the unbounded deletes of
:meth:`~FirestoreWebhookStore.delete_webhook` and :meth:`~FirestoreWebhookStore.prune`, done in
batches (the webhook document goes last, so a delete cut short can simply be repeated).

Adapter module (google-cloud-firestore).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.collection import CollectionReference
from google.cloud.firestore_v1.document import DocumentReference
from google.cloud.firestore_v1.query import Query
from google.cloud.firestore_v1.transaction import Transaction

from lrobridge.config import DEFAULT_FIRESTORE_DATABASE
from lrobridge.errors import AlreadyExists
from lrobridge.storage import rules
from lrobridge.storage.firestore.client import (
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT,
    SCAN_BUDGET,
    CreationOrder,
    FirestoreDatabase,
    digest,
    eq,
    fields,
    usable_id,
)
from lrobridge.webhooks.model import (
    Attempt,
    Claim,
    Delivery,
    DeliveryState,
    Message,
    NewDelivery,
    Webhook,
    WebhookState,
)
from lrobridge.webhooks.schedule import Plan

if TYPE_CHECKING:
    Doc = DocumentSnapshot[Any]
Write = Callable[[firestore.WriteBatch], None]

ASC, DESC = "ASCENDING", "DESCENDING"
# (collection without prefix, ((field, order), ...)): what the queries below need.
COMPOSITE_INDEXES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("webhook_deliveries", (("state", ASC), ("next_attempt", ASC))),  # claims, due counts
    ("webhook_deliveries", (("webhook_id", ASC), ("seq", DESC))),  # a webhook's log
    ("webhook_deliveries", (("state", ASC), ("seq", DESC))),  # dead letters of all
    ("webhook_deliveries", (("webhook_id", ASC), ("state", ASC), ("seq", DESC))),
)

_WEBHOOKS = "webhooks"
_MESSAGES = "webhook_messages"
_DELIVERIES = "webhook_deliveries"
_KEYS = "webhook_delivery_keys"
_PENDING = DeliveryState.PENDING.value
_ENABLED = WebhookState.ENABLED.value


class FirestoreWebhookStore:
    """:class:`~lrobridge.webhooks.model.WebhookStore` on one Firestore database."""

    def __init__(
        self,
        *,
        project: str,
        database: str = DEFAULT_FIRESTORE_DATABASE,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.db = FirestoreDatabase(
            project=project, database=database, prefix=prefix, timeout=timeout
        )
        self._order = CreationOrder()

    def close(self) -> None:
        self.db.close()

    def _col(self, name: str) -> CollectionReference:
        return self.db.collection(name)

    def _doc(self, collection: str, doc_id: str) -> DocumentReference:
        return self._col(collection).document(doc_id)

    # -- webhooks ----------------------------------------------------------------------------

    def create_webhook(self, webhook: Webhook) -> None:
        created = {
            "id": webhook.id,
            "seq": self._order.key(webhook.create_time, webhook.id),
            "url": webhook.url,
            "description": webhook.description,
            "operation_glob": webhook.filter.operation,
            "outcomes": sorted(webhook.filter.outcomes),
            "metadata_type": webhook.filter.metadata_type,
            "state": webhook.state.value,
            "disabled_reason": "",
            "disable_time": None,
            "secret": webhook.secret,
            "previous_secret": "",
            "previous_secret_expire_time": None,
            "failing_since": None,
            "create_time": webhook.create_time,
            "update_time": webhook.update_time,
        }
        with self.db.errors("register the webhook"):
            try:
                self._doc(_WEBHOOKS, webhook.id).create(created)
            except api_exceptions.AlreadyExists:
                raise AlreadyExists(f"webhook {webhook.id!r} already exists") from None

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        if not usable_id(webhook_id):
            return None
        snapshot = self.db.read("read the webhook", self._doc(_WEBHOOKS, webhook_id))
        return _webhook(fields(snapshot)) if snapshot.exists else None

    def list_webhooks(self, *, after: str, limit: int) -> tuple[list[Webhook], str | None]:
        query = self._col(_WEBHOOKS).order_by("seq")
        if after:
            query = query.start_after({"seq": after})
        docs = self.db.query("list webhooks", query.limit(limit + 1))
        more = len(docs) > limit
        page = docs[:limit]
        return [_webhook(fields(d)) for d in page], (str(page[-1].get("seq")) if more else None)

    def all_webhooks(self) -> list[Webhook]:
        return [_webhook(fields(d)) for d in self.db.query("read webhooks", self._col(_WEBHOOKS))]

    def delete_webhook(self, webhook_id: str) -> bool:
        if not usable_id(webhook_id):
            return False
        ref = self._doc(_WEBHOOKS, webhook_id)
        existed = self.db.read("read the webhook", ref).exists
        deliveries = self.db.query(
            "find the webhook's deliveries",
            self._col(_DELIVERIES).where(filter=eq("webhook_id", webhook_id)),
        )
        self.db.write_batches(
            "delete the webhook's deliveries",
            [*self._delete_deliveries(deliveries), _deletion(ref)],
        )
        return existed

    def _delete_deliveries(self, docs: Sequence[Doc]) -> list[Write]:
        writes: list[Write] = []
        for doc in docs:
            key = self._doc(_KEYS, digest(doc.get("webhook_id"), doc.get("message_id")))
            writes += [_deletion(doc.reference), _deletion(key)]
        return writes

    def rotate_secret(
        self, webhook_id: str, *, secret: str, previous_expire_time: float, now: float
    ) -> Webhook | None:
        ref = self._doc(_WEBHOOKS, webhook_id)

        def body(tx: Transaction) -> None:
            current = ref.get(transaction=tx, **self.db.reads)
            if current.exists:
                tx.update(
                    ref,
                    {
                        "previous_secret": current.get("secret"),
                        "secret": secret,
                        "previous_secret_expire_time": previous_expire_time,
                        "update_time": now,
                    },
                )

        if usable_id(webhook_id):
            self.db.transact("rotate the webhook's secret", body)
        return self.get_webhook(webhook_id)

    def set_enabled(self, webhook_id: str, *, now: float) -> Webhook | None:
        if not usable_id(webhook_id):
            return None
        with self.db.errors("enable the webhook"):
            try:
                self._doc(_WEBHOOKS, webhook_id).update(
                    {
                        "state": _ENABLED,
                        "disabled_reason": "",
                        "disable_time": None,
                        "failing_since": None,
                        "update_time": now,
                    }
                )
            except api_exceptions.NotFound:
                return None
        return self.get_webhook(webhook_id)

    def disable(self, webhook_id: str, *, reason: str, now: float) -> Webhook | None:
        if not usable_id(webhook_id):
            return None
        ref = self._doc(_WEBHOOKS, webhook_id)
        pending = self._pending_of(webhook_id)

        def body(tx: Transaction) -> None:
            webhook = ref.get(transaction=tx, **self.db.reads)
            docs = list(pending.stream(transaction=tx, **self.db.reads))
            _disable(tx, webhook, docs, reason, now, {})

        self.db.transact("disable the webhook", body)
        return self.get_webhook(webhook_id)

    def _pending_of(self, webhook_id: str) -> Query:
        return (
            self._col(_DELIVERIES)
            .where(filter=eq("webhook_id", webhook_id))
            .where(filter=eq("state", _PENDING))
        )

    # -- deliveries --------------------------------------------------------------------------

    def add_message(
        self, message: Message, deliveries: Sequence[NewDelivery], *, now: float
    ) -> list[str]:
        message_ref = self._doc(_MESSAGES, digest(message.id))
        first: dict[str, NewDelivery] = {}
        for new in deliveries:  # one delivery per webhook, as the unique key has it
            first.setdefault(new.webhook_id, new)
        news = list(first.values())
        keys = [self._doc(_KEYS, digest(new.webhook_id, message.id)) for new in news]
        planned = []
        for new in news:
            delivery_id = "d" + secrets.token_hex(10)
            planned.append((new, delivery_id, self._order.key(now, delivery_id)))

        def body(tx: Transaction) -> list[str]:
            stored = message_ref.get(transaction=tx, **self.db.reads)
            existing = (
                {s.reference.path for s in tx.get_all(keys, **self.db.reads) if s.exists}
                if keys
                else set()
            )
            if not stored.exists:
                tx.set(
                    message_ref,
                    {
                        "id": message.id,
                        "event_id": message.event_id,
                        "event_type": message.event_type,
                        "operation": message.operation,
                        "body": message.body,
                        "create_time": message.create_time,
                    },
                )
            created = []
            for (new, delivery_id, seq), key in zip(planned, keys, strict=True):
                if key.path in existing:
                    continue
                pending = new.state is DeliveryState.PENDING
                tx.create(
                    self._doc(_DELIVERIES, delivery_id),
                    {
                        "id": delivery_id,
                        "seq": seq,
                        "webhook_id": new.webhook_id,
                        "message_id": message.id,
                        "event_id": message.event_id,
                        "event_type": message.event_type,
                        "operation": message.operation,
                        "state": new.state.value,
                        "attempt_count": 0,
                        "round_attempts": 0,
                        "next_attempt": now if pending else None,
                        "claim_token": "",
                        "create_time": now,
                        "update_time": now,
                        "last_status_code": 0,
                        "last_error": new.error,
                        "attempts": [],
                    },
                )
                tx.set(key, {"delivery_id": delivery_id})
                if pending:
                    created.append(delivery_id)
            return created

        return self.db.transact("store the message and its deliveries", body)

    def claim_due(
        self, *, now: float, limit: int, lease: float, only: Sequence[str] | None = None
    ) -> list[Claim]:
        if limit <= 0 or (only is not None and not only):
            return []
        enabled = {w.id: w for w in self.all_webhooks() if w.state is WebhookState.ENABLED}
        if only is not None:
            refs = [self._doc(_DELIVERIES, i) for i in dict.fromkeys(only) if usable_id(i)]
            docs = [
                d
                for d in self.db.read_many("read deliveries", refs)
                if d.exists
                and rules.delivery_due(fields(d), now)
                and d.get("webhook_id") in enabled
            ]
            candidates = sorted(docs, key=lambda d: float(d.get("next_attempt")))[:limit]
        else:
            candidates = self._due(now, limit, enabled)
        tokens = {d.id: secrets.token_hex(8) for d in candidates}
        held = self.db.claim(
            "claim due deliveries",
            candidates,
            lambda d: rules.claim_delivery(now, lease, tokens[d.id]),
        )
        messages = {
            s.get("id"): s
            for s in self.db.read_many(
                "read messages",
                [
                    self._doc(_MESSAGES, digest(m))
                    for m in dict.fromkeys(d.get("message_id") for d in held)
                ],
            )
            if s.exists
        }
        claims = []
        for doc in held:
            message = messages.get(doc.get("message_id"))
            if message is None:  # pruned meanwhile: nothing left to send
                continue
            webhook = enabled[doc.get("webhook_id")]
            claims.append(
                Claim(
                    delivery=_delivery(fields(doc)),
                    token=tokens[doc.id],
                    url=webhook.url,
                    secrets=webhook.signing_secrets(now),
                    body=bytes(message.get("body")),
                    failing_since=webhook.failing_since,
                )
            )
        return claims

    def _due(self, now: float, limit: int, enabled: dict[str, Webhook]) -> list[Doc]:
        """Due PENDING deliveries of enabled webhooks in due order (scanning past others)."""
        query = (
            self._col(_DELIVERIES)
            .where(filter=eq("state", _PENDING))
            .where(filter=firestore.FieldFilter("next_attempt", "<=", now))
            .order_by("next_attempt")
        )
        found: list[Doc] = []
        scanned = 0
        last: Doc | None = None
        while len(found) < limit and scanned < SCAN_BUDGET:
            page = query.start_after(last) if last is not None else query
            docs = self.db.query("find due deliveries", page.limit(limit * 2))
            found += [d for d in docs if d.get("webhook_id") in enabled][: limit - len(found)]
            scanned += len(docs)
            if len(docs) < limit * 2:
                break
            last = docs[-1]
        return found

    def record_attempt(self, claim: Claim, attempt: Attempt, plan: Plan, *, now: float) -> bool:
        delivery = claim.delivery
        ref = self._doc(_DELIVERIES, delivery.id)
        webhook_ref = self._doc(_WEBHOOKS, delivery.webhook_id)
        pending = self._pending_of(delivery.webhook_id)
        logged = {
            "number": attempt.number,
            "time": attempt.time,
            "status_code": attempt.status_code,
            "latency": attempt.latency,
            "response_body": attempt.response_body,
            "error": attempt.error,
            "address": attempt.address,
        }

        def body(tx: Transaction) -> bool:
            current = ref.get(transaction=tx, **self.db.reads)
            webhook = webhook_ref.get(transaction=tx, **self.db.reads)
            others = (
                list(pending.stream(transaction=tx, **self.db.reads)) if plan.disable_reason else []
            )
            if not current.exists:
                return False
            log = [*current.get("attempts"), logged]
            changes = rules.record_delivery_attempt(
                fields(current),
                claim.token,
                state=plan.state,
                next_attempt=plan.next_attempt_time,
                status_code=attempt.status_code,
                error=plan.error or attempt.error,
                now=now,
            )
            if changes is None:
                tx.update(ref, {"attempts": log})  # the lease was lost: log only
                return False
            changes["attempts"] = log
            webhook_changes: dict[str, Any] = {}
            if webhook.exists:
                webhook_changes = rules.endpoint_health(
                    fields(webhook),
                    succeeded=plan.state == DeliveryState.SUCCEEDED.value,
                    failing_since=plan.failing_since,
                )
            if plan.disable_reason:
                _disable(
                    tx,
                    webhook,
                    [d for d in others if d.id != delivery.id],
                    plan.disable_reason,
                    now,
                    webhook_changes,
                )
            elif webhook_changes:
                tx.update(webhook_ref, webhook_changes)
            tx.update(ref, changes)
            return True

        return self.db.transact("record the delivery attempt", body)

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        if not usable_id(delivery_id):
            return None
        snapshot = self.db.read("read the delivery", self._doc(_DELIVERIES, delivery_id))
        return _delivery(fields(snapshot)) if snapshot.exists else None

    def list_deliveries(
        self,
        *,
        webhook_id: str | None,
        state: DeliveryState | None,
        after: str,
        limit: int,
    ) -> tuple[list[Delivery], str | None]:
        query: Query | CollectionReference = self._col(_DELIVERIES)
        if webhook_id is not None:
            query = query.where(filter=eq("webhook_id", webhook_id))
        if state is not None:
            query = query.where(filter=eq("state", state.value))
        query = query.order_by("seq", direction=firestore.Query.DESCENDING)
        if after:
            query = query.start_after({"seq": after})
        docs = self.db.query("list deliveries", query.limit(limit + 1))
        more = len(docs) > limit
        page = docs[:limit]
        return [_delivery(fields(d)) for d in page], (str(page[-1].get("seq")) if more else None)

    def requeue(self, delivery_id: str, *, now: float) -> Delivery | None:
        if not usable_id(delivery_id):
            return None
        with self.db.errors("requeue the delivery"):
            try:
                self._doc(_DELIVERIES, delivery_id).update(rules.requeued(now))
            except api_exceptions.NotFound:
                return None
        return self.get_delivery(delivery_id)

    def requeue_dead_since(self, webhook_id: str, *, since: float, now: float) -> int:
        dead = (
            self._col(_DELIVERIES)
            .where(filter=eq("webhook_id", webhook_id))
            .where(filter=eq("state", DeliveryState.DEAD.value))
        )

        def body(tx: Transaction) -> int:
            docs = [
                d
                for d in dead.stream(transaction=tx, **self.db.reads)
                if d.get("create_time") >= since
            ]
            for doc in docs:
                tx.update(doc.reference, rules.requeued(now))
            return len(docs)

        return self.db.transact("requeue dead deliveries", body)

    def next_due_time(self) -> float | None:
        enabled = {w.id for w in self.all_webhooks() if w.state is WebhookState.ENABLED}
        if not enabled:
            return None
        query = self._col(_DELIVERIES).where(filter=eq("state", _PENDING)).order_by("next_attempt")
        last: Doc | None = None
        for _ in range(SCAN_BUDGET // 100):
            page = query.start_after(last) if last is not None else query
            docs = self.db.query("find the next due delivery", page.limit(100))
            for doc in docs:
                if doc.get("webhook_id") in enabled:
                    return float(doc.get("next_attempt"))
            if len(docs) < 100:
                return None
            last = docs[-1]
        return None

    def count_pending(self, *, due_by: float | None = None) -> int:
        query = self._col(_DELIVERIES).where(filter=eq("state", _PENDING))
        if due_by is not None:
            query = query.where(filter=firestore.FieldFilter("next_attempt", "<=", due_by))
        total = self.db.count("count pending deliveries", query)
        for webhook in self.all_webhooks():  # deliveries of disabled webhooks do not count
            if webhook.state is WebhookState.ENABLED:
                continue
            for doc in self.db.query("count pending deliveries", self._pending_of(webhook.id)):
                if due_by is None or doc.get("next_attempt") <= due_by:
                    total -= 1
        return total

    def prune(self, *, finished_before: float) -> int:
        old = (
            self._col(_DELIVERIES)
            .where(filter=firestore.FieldFilter("update_time", "<", finished_before))
            .order_by("update_time")
        )
        finished = [
            d
            for d in self.db.query("find finished deliveries", old)
            if d.get("state") in (DeliveryState.SUCCEEDED.value, DeliveryState.DEAD.value)
        ]
        self.db.write_batches("prune deliveries", self._delete_deliveries(finished))
        stale = self.db.query(
            "find old messages",
            self._col(_MESSAGES).where(
                filter=firestore.FieldFilter("create_time", "<", finished_before)
            ),
        )
        orphans = [
            m.reference
            for m in stale
            if not self.db.query(
                "find a message's deliveries",
                self._col(_DELIVERIES).where(filter=eq("message_id", m.get("id"))).limit(1),
            )
        ]
        self.db.write_batches("prune messages", [_deletion(ref) for ref in orphans])
        return len(finished)


def _disable(
    tx: Transaction,
    webhook: Doc,
    pending: Sequence[Doc],
    reason: str,
    now: float,
    webhook_changes: dict[str, Any],
) -> None:
    """Disable an ENABLED webhook and dead-letter its ``pending`` deliveries."""
    changes = rules.disable_webhook(_row(webhook), reason=reason, now=now)
    if changes is None:
        if webhook.exists and webhook_changes:
            tx.update(webhook.reference, webhook_changes)
        return
    tx.update(webhook.reference, {**webhook_changes, **changes})
    for doc in pending:
        tx.update(doc.reference, rules.dead_lettered(reason, now=now))


def _deletion(ref: DocumentReference) -> Write:
    def write(batch: firestore.WriteBatch) -> None:
        batch.delete(ref)

    return write


def _row(snapshot: Doc) -> dict[str, Any] | None:
    return fields(snapshot) if snapshot.exists else None


def _webhook(d: dict[str, Any]) -> Webhook:
    return rules.webhook_record(d, outcomes=d["outcomes"])


def _delivery(d: dict[str, Any]) -> Delivery:
    return rules.delivery_record(d, tuple(rules.attempt_record(a) for a in d["attempts"]))
