"""SQLite files are migrated in place along an ordered ladder on ``PRAGMA user_version``.

``tests/data/sqlite/schema_v2.sql`` is golden data: the schema of both SQLite stores as the
release before migrations created it (user_version 2), with rows in every table.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading

import pytest

from lrobridge.errors import FailedPrecondition
from lrobridge.storage.sqlite.store import SqliteStore
from lrobridge.storage.sqlite.webhooks import SqliteWebhookStore

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "data" / "sqlite" / "schema_v2.sql"


def _previous_release_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(GOLDEN.read_text())
    conn.close()
    return path


def _user_version(path: pathlib.Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _current_version() -> int:
    """The version a new file gets from today's code."""
    conn = sqlite3.connect(":memory:")
    try:
        store = SqliteStore(":memory:")
        version = int(store._db.read("PRAGMA user_version")[0][0])
        store.close()
        return version
    finally:
        conn.close()


def test_the_previous_releases_file_keeps_its_watches_deliveries_and_ledger(
    tmp_path: pathlib.Path,
) -> None:
    path = _previous_release_file(tmp_path)
    store = SqliteStore(str(path))
    webhooks = SqliteWebhookStore(str(path))
    try:
        active = store.get_watch("a1b2c3d4e5f60718")
        assert active is not None and active.operation == "projects/p/operations/active"
        assert active.polls == 3
        assert active.last_error_message == "unavailable: connection refused"
        done = store.get_watch("0f1e2d3c4b5a6978")
        assert done is not None and done.outcome == "succeeded" and done.event_id == "ev-done"
        operation = store.get_operation("projects/p/operations/done")
        assert operation is not None and operation.done and operation.data is not None
        assert store.outbox_size() == 1
        # The ledger: what succeeded is not run again; the run left behind is still running.
        assert store.claim_callback("ev-done", "hooks.on_done", now=1700000100.0, lease=600) == (
            "done"
        )
        assert store.claim_callback("ev-done", "hooks.slow", now=1700000100.0, lease=600) == (
            "busy"
        )
        assert [q.reason for q in store.list_quarantine(limit=10)] == ["the body is not JSON"]
        webhook = webhooks.get_webhook("wh_0123456789abcdef")
        assert webhook is not None and webhook.url == "https://hooks.example.com/lro"
        delivery = webhooks.get_delivery("dlv_0123456789abcdef")
        assert delivery is not None and delivery.attempt_count == 1
        assert [a.status_code for a in delivery.attempts] == [503]
    finally:
        webhooks.close()
        store.close()
    assert _user_version(path) == _current_version() > 2


def test_a_new_file_and_a_migrated_one_have_the_same_schema(tmp_path: pathlib.Path) -> None:
    fresh, old = tmp_path / "fresh.db", _previous_release_file(tmp_path)
    for path in (fresh, old):
        SqliteStore(str(path)).close()

    def columns(path: pathlib.Path) -> dict[str, list[tuple[object, ...]]]:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = [r[0] for r in rows]
            return {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in sorted(tables)}
        finally:
            conn.close()

    assert columns(fresh) == columns(old)
    assert _user_version(fresh) == _user_version(old) == _current_version()


def test_a_file_of_a_newer_lrobridge_is_refused_and_left_untouched(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "newer.db"
    SqliteStore(str(path)).close()
    newer = _current_version() + 1
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={newer}")
    conn.close()
    with pytest.raises(FailedPrecondition) as raised:
        SqliteStore(str(path))
    assert f"schema version {newer}" in raised.value.message
    assert "newer lrobridge" in raised.value.message
    with pytest.raises(FailedPrecondition, match="newer lrobridge"):
        SqliteWebhookStore(str(path))
    assert _user_version(path) == newer


def test_many_openers_at_once_migrate_the_file_exactly_once(tmp_path: pathlib.Path) -> None:
    path = _previous_release_file(tmp_path)
    start = threading.Barrier(8)
    errors: list[BaseException] = []
    opened: list[object] = []

    def open_it(i: int) -> None:
        try:
            start.wait(timeout=30)
            opened.append((SqliteWebhookStore if i % 2 else SqliteStore)(str(path)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for store in opened:
        store.close()  # type: ignore[attr-defined]
    assert errors == []
    assert len(opened) == 8
    assert _user_version(path) == _current_version()
    check = SqliteStore(str(path))
    try:
        assert check.get_watch("a1b2c3d4e5f60718") is not None
    finally:
        check.close()


def test_a_version_no_step_starts_from_is_refused_with_what_to_do(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "odd.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=1")
    conn.close()
    with pytest.raises(FailedPrecondition, match=r"cannot migrate.*use a new file"):
        SqliteStore(str(path))
    assert _user_version(path) == 1


def test_the_ladder_climbs_from_a_new_file_to_the_current_version_without_gaps() -> None:
    from lrobridge.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

    versions = [0] + [m.version for m in MIGRATIONS]
    assert [m.from_version for m in MIGRATIONS] == versions[:-1]
    assert versions == sorted(set(versions)) and versions[-1] == SCHEMA_VERSION
