"""SQLite storage of webhooks, messages, deliveries and the attempt log.

Opens the same SQLite file as the main store (``LROBRIDGE_STORE``) through a connection of its
own, in WAL mode, with its own tables (``webhooks``, ``webhook_messages``,
``webhook_deliveries``, ``webhook_attempts``; DDL and migrations in
:mod:`lrobridge.storage.sqlite.schema`, the file's one ladder). Every method is one transaction
that is committed before it returns, so a delivery reported as written survives a killed process.

Claims: :meth:`SqliteWebhookStore.claim_due` pushes each due delivery's ``next_attempt`` forward
by a lease and stamps it with a random claim token inside one ``BEGIN IMMEDIATE`` transaction;
several workers (threads, processes, a drain request) never send the same delivery at once,
a worker that dies mid-attempt has its deliveries sent again when the lease ends, and a result
recorded after the lease was lost is logged without changing the delivery.

Connection rules (WAL, fork, errors) are
:class:`lrobridge.storage.sqlite.database.SqliteDatabase`'s.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from lrobridge.storage import rules
from lrobridge.storage.sqlite.database import (
    SqliteDatabase,
    as_row,
    select_one,
    update,
    update_where,
)
from lrobridge.storage.sqlite.schema import MIGRATIONS
from lrobridge.storage.sqlite.store import seq_cursor
from lrobridge.webhooks.model import (
    Attempt,
    Claim,
    Delivery,
    DeliveryState,
    Message,
    NewDelivery,
    Webhook,
    WebhookState,
    signing_secrets,
)
from lrobridge.webhooks.schedule import Plan

_WEBHOOK_COLUMNS = (
    "seq, id, url, description, operation_glob, outcomes, metadata_type, state, "
    "disabled_reason, disable_time, secret, previous_secret, previous_secret_expire_time, "
    "failing_since, create_time, update_time"
)
_DELIVERY_COLUMNS = (
    "d.seq, d.id, d.webhook_id, d.message_id, m.event_id, m.event_type, m.operation, d.state, "
    "d.attempt_count, d.round_attempts, d.next_attempt, d.create_time, d.update_time, "
    "d.last_status_code, d.last_error"
)
_DELIVERY_FROM = "webhook_deliveries d JOIN webhook_messages m ON m.id = d.message_id"
# What a claim reads of the message and the webhook besides the delivery.
_CLAIM_COLUMNS = (
    "m.body, w.url, w.secret, w.previous_secret, w.previous_secret_expire_time, w.failing_since"
)


class SqliteWebhookStore:
    """:class:`~lrobridge.webhooks.model.WebhookStore` on a SQLite file (or ``:memory:``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = SqliteDatabase(path, MIGRATIONS)

    def close(self) -> None:
        self._db.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.read(sql, params)

    # -- webhooks ----------------------------------------------------------------------------

    def create_webhook(self, webhook: Webhook) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO webhooks (id, url, description, operation_glob, outcomes, "
                "metadata_type, state, secret, create_time, update_time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    webhook.id,
                    webhook.url,
                    webhook.description,
                    webhook.filter.operation,
                    ",".join(sorted(webhook.filter.outcomes)),
                    webhook.filter.metadata_type,
                    webhook.state.value,
                    webhook.secret,
                    webhook.create_time,
                    webhook.update_time,
                ),
            )

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        rows = self._read(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,))
        return _webhook(rows[0]) if rows else None

    def list_webhooks(self, *, after: str, limit: int) -> tuple[list[Webhook], str | None]:
        rows = self._read(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq_cursor(after), limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [_webhook(r) for r in rows], (str(rows[-1][0]) if more else None)

    def all_webhooks(self) -> list[Webhook]:
        return [_webhook(r) for r in self._read(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks")]

    def delete_webhook(self, webhook_id: str) -> bool:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN "
                "(SELECT id FROM webhook_deliveries WHERE webhook_id = ?)",
                (webhook_id,),
            )
            conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
            return conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount > 0

    def rotate_secret(
        self, webhook_id: str, *, secret: str, previous_expire_time: float, now: float
    ) -> Webhook | None:
        with self._write() as conn:
            conn.execute(
                "UPDATE webhooks SET previous_secret = secret, secret = ?, "
                "previous_secret_expire_time = ?, update_time = ? WHERE id = ?",
                (secret, previous_expire_time, now, webhook_id),
            )
        return self.get_webhook(webhook_id)

    def set_enabled(self, webhook_id: str, *, now: float) -> Webhook | None:
        with self._write() as conn:
            conn.execute(
                "UPDATE webhooks SET state = ?, disabled_reason = '', disable_time = NULL, "
                "failing_since = NULL, update_time = ? WHERE id = ?",
                (WebhookState.ENABLED.value, now, webhook_id),
            )
        return self.get_webhook(webhook_id)

    def disable(self, webhook_id: str, *, reason: str, now: float) -> Webhook | None:
        with self._write() as conn:
            _disable(conn, webhook_id, reason, now)
        return self.get_webhook(webhook_id)

    # -- deliveries --------------------------------------------------------------------------

    def add_message(
        self, message: Message, deliveries: Sequence[NewDelivery], *, now: float
    ) -> list[str]:
        created: list[str] = []
        with self._write() as conn:
            conn.execute(
                "INSERT INTO webhook_messages (id, event_id, event_type, operation, body, "
                "create_time) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (
                    message.id,
                    message.event_id,
                    message.event_type,
                    message.operation,
                    message.body,
                    message.create_time,
                ),
            )
            for new in deliveries:
                pending = new.state is DeliveryState.PENDING
                row = conn.execute(
                    "INSERT INTO webhook_deliveries (id, webhook_id, message_id, state, "
                    "next_attempt, create_time, update_time, last_error) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (webhook_id, message_id) DO NOTHING RETURNING id",
                    (
                        "d" + secrets.token_hex(10),
                        new.webhook_id,
                        message.id,
                        new.state.value,
                        now if pending else None,
                        now,
                        now,
                        new.error,
                    ),
                ).fetchone()
                if row is not None and pending:
                    created.append(str(row[0]))
        return created

    def claim_due(
        self, *, now: float, limit: int, lease: float, only: Sequence[str] | None = None
    ) -> list[Claim]:
        if limit <= 0 or (only is not None and not only):
            return []
        where = "d.state = 'PENDING' AND d.next_attempt <= ? AND w.state = 'ENABLED'"
        params: list[Any] = [now]
        if only is not None:
            where += f" AND d.id IN ({', '.join('?' for _ in only)})"
            params.extend(only)
        tokens: dict[int, str] = {}  # one claim token per delivery

        def take(row: dict[str, Any]) -> dict[str, Any]:
            tokens[row["seq"]] = secrets.token_hex(8)
            return rules.claim_delivery(now, lease, tokens[row["seq"]])

        rows = self._db.claim(
            table="webhook_deliveries",
            source=f"{_DELIVERY_FROM} JOIN webhooks w ON w.id = d.webhook_id",
            select=f"{_DELIVERY_COLUMNS}, {_CLAIM_COLUMNS}",
            key="seq",
            where=where,
            params=params,
            order="d.next_attempt",
            limit=limit,
            guard=lambda row: rules.delivery_due(row, now),
            changes=take,
        )
        return [
            Claim(
                delivery=rules.delivery_record(row, ()),
                token=tokens[row["seq"]],
                url=row["url"],
                secrets=signing_secrets(
                    row["secret"],
                    row["previous_secret"],
                    row["previous_secret_expire_time"],
                    now=now,
                ),
                body=bytes(row["body"]),
                failing_since=row["failing_since"],
            )
            for row in rows
        ]

    def record_attempt(self, claim: Claim, attempt: Attempt, plan: Plan, *, now: float) -> bool:
        delivery = claim.delivery
        with self._write() as conn:
            conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, number, time, status_code, latency, "
                "response_body, error, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery.id,
                    attempt.number,
                    attempt.time,
                    attempt.status_code,
                    attempt.latency,
                    attempt.response_body,
                    attempt.error,
                    attempt.address,
                ),
            )
            current = select_one(
                conn,
                "webhook_deliveries",
                "state, claim_token, attempt_count, round_attempts",
                "id = ?",
                (delivery.id,),
            )
            changes = rules.record_delivery_attempt(
                current,
                claim.token,
                state=plan.state,
                next_attempt=plan.next_attempt_time,
                status_code=attempt.status_code,
                error=plan.error or attempt.error,
                now=now,
            )
            if changes is None:
                return False  # the lease was lost: logged only
            update(conn, "webhook_deliveries", "id", delivery.id, changes)
            webhook = select_one(
                conn, "webhooks", "failing_since", "id = ?", (delivery.webhook_id,)
            )
            if webhook is not None:
                health = rules.endpoint_health(
                    webhook,
                    succeeded=plan.state == DeliveryState.SUCCEEDED.value,
                    failing_since=plan.failing_since,
                )
                if health:
                    update(conn, "webhooks", "id", delivery.webhook_id, health)
            if plan.disable_reason:
                _disable(conn, delivery.webhook_id, plan.disable_reason, now)
        return True

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        rows = self._read(
            f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM} WHERE d.id = ?", (delivery_id,)
        )
        if not rows:
            return None
        return _delivery(rows[0], self._attempts([delivery_id]).get(delivery_id, ()))

    def list_deliveries(
        self,
        *,
        webhook_id: str | None,
        state: DeliveryState | None,
        after: str,
        limit: int,
    ) -> tuple[list[Delivery], str | None]:
        """Newest first; ``after`` is the cursor of the previous page ('': from the newest)."""
        seq = seq_cursor(after)
        clauses = ["(? = 0 OR d.seq < ?)"]
        params: list[Any] = [seq, seq]
        if webhook_id is not None:
            clauses.append("d.webhook_id = ?")
            params.append(webhook_id)
        if state is not None:
            clauses.append("d.state = ?")
            params.append(state.value)
        params.append(limit + 1)
        rows = self._read(
            f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM} WHERE {' AND '.join(clauses)} "
            "ORDER BY d.seq DESC LIMIT ?",
            params,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        attempts = self._attempts([r[1] for r in rows])
        deliveries = [_delivery(r, attempts.get(r[1], ())) for r in rows]
        return deliveries, (str(rows[-1][0]) if more else None)

    def _attempts(self, delivery_ids: Sequence[str]) -> dict[str, tuple[Attempt, ...]]:
        if not delivery_ids:
            return {}
        rows = self._read(
            "SELECT delivery_id, number, time, status_code, latency, response_body, error, "
            f"address FROM webhook_attempts WHERE delivery_id IN "
            f"({', '.join('?' for _ in delivery_ids)}) ORDER BY seq",
            delivery_ids,
        )
        out: dict[str, list[Attempt]] = {}
        for delivery_id, *fields in rows:
            out.setdefault(delivery_id, []).append(Attempt(*fields))
        return {k: tuple(v) for k, v in out.items()}

    def requeue(self, delivery_id: str, *, now: float) -> Delivery | None:
        with self._write() as conn:
            update(conn, "webhook_deliveries", "id", delivery_id, rules.requeued(now))
        return self.get_delivery(delivery_id)

    def requeue_dead_since(self, webhook_id: str, *, since: float, now: float) -> int:
        with self._write() as conn:
            return update_where(
                conn,
                "webhook_deliveries",
                "webhook_id = ? AND state = 'DEAD' AND create_time >= ?",
                (webhook_id, since),
                rules.requeued(now),
            )

    def next_due_time(self) -> float | None:
        rows = self._read(
            "SELECT MIN(d.next_attempt) FROM webhook_deliveries d JOIN webhooks w "
            "ON w.id = d.webhook_id WHERE d.state = 'PENDING' AND w.state = 'ENABLED'"
        )
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    def count_pending(self, *, due_by: float | None = None) -> int:
        sql = (
            "SELECT COUNT(*) FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
            "WHERE d.state = 'PENDING' AND w.state = 'ENABLED'"
        )
        if due_by is None:
            return int(self._read(sql)[0][0])
        return int(self._read(sql + " AND d.next_attempt <= ?", (due_by,))[0][0])

    def prune(self, *, finished_before: float) -> int:
        with self._write() as conn:
            removed = conn.execute(
                "DELETE FROM webhook_deliveries WHERE state IN ('SUCCEEDED', 'DEAD') "
                "AND update_time < ?",
                (finished_before,),
            ).rowcount
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id NOT IN "
                "(SELECT id FROM webhook_deliveries)"
            )
            conn.execute(
                "DELETE FROM webhook_messages WHERE id NOT IN "
                "(SELECT message_id FROM webhook_deliveries)"
            )
        return int(removed)


def _disable(conn: sqlite3.Connection, webhook_id: str, reason: str, now: float) -> None:
    webhook = select_one(conn, "webhooks", "state", "id = ?", (webhook_id,))
    changes = rules.disable_webhook(webhook, reason=reason, now=now)
    if changes is not None:
        update(conn, "webhooks", "id", webhook_id, changes)
        update_where(
            conn,
            "webhook_deliveries",
            "webhook_id = ? AND state = 'PENDING'",
            (webhook_id,),
            rules.dead_lettered(reason, now=now),
        )


def _webhook(row: Sequence[Any]) -> Webhook:
    fields = as_row(_WEBHOOK_COLUMNS, row)
    return rules.webhook_record(fields, outcomes=fields["outcomes"].split(","))


def _delivery(row: Sequence[Any], attempts: tuple[Attempt, ...]) -> Delivery:
    return rules.delivery_record(as_row(_DELIVERY_COLUMNS, row), attempts)
