-- The SQLite schema of lrobridge as released at schema version 2 (PRAGMA user_version=2),
-- both stores' tables exactly as main created them before migrations existed, with rows.
-- Golden data: never edit; tests/unit/test_sqlite_migrations.py opens it with today's code.
CREATE TABLE IF NOT EXISTS watches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    operation TEXT NOT NULL,
    state INTEGER NOT NULL,
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    polls INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    next_poll REAL NOT NULL,
    expire_time REAL,
    initial_delay REAL NOT NULL,
    multiplier REAL NOT NULL,
    max_delay REAL NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    event_id TEXT NOT NULL DEFAULT '',
    last_error_code INTEGER NOT NULL DEFAULT 0,
    last_error_message TEXT NOT NULL DEFAULT '',
    lease_owner TEXT NOT NULL DEFAULT '',
    UNIQUE (source, operation)
);
CREATE INDEX IF NOT EXISTS watches_due ON watches (state, next_poll);
CREATE INDEX IF NOT EXISTS watches_operation ON watches (operation);
CREATE TABLE IF NOT EXISTS operations (
    name TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    source TEXT NOT NULL,
    origin TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    error_code INTEGER,
    metadata_type TEXT NOT NULL DEFAULT '',
    response_type TEXT NOT NULL DEFAULT '',
    data BLOB,
    data_format TEXT NOT NULL DEFAULT 'binary',
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS operations_parent ON operations (parent, name);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    watch_id TEXT,
    data BLOB NOT NULL,
    attributes TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    lease_owner TEXT NOT NULL DEFAULT '',
    create_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt);
CREATE TABLE IF NOT EXISTS callback_runs (
    event_id TEXT NOT NULL,
    callback TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_until REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    update_time REAL NOT NULL,
    PRIMARY KEY (event_id, callback)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    receive_time REAL NOT NULL,
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    operation_glob TEXT NOT NULL DEFAULT '',
    outcomes TEXT NOT NULL DEFAULT '',
    metadata_type TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    disabled_reason TEXT NOT NULL DEFAULT '',
    disable_time REAL,
    secret TEXT NOT NULL,
    previous_secret TEXT NOT NULL DEFAULT '',
    previous_secret_expire_time REAL,
    failing_since REAL,
    create_time REAL NOT NULL,
    update_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_messages (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    operation TEXT NOT NULL,
    body BLOB NOT NULL,
    create_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    webhook_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    round_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL,
    claim_token TEXT NOT NULL DEFAULT '',
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    last_status_code INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    UNIQUE (webhook_id, message_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (state, next_attempt);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_webhook
    ON webhook_deliveries (webhook_id, seq);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    time REAL NOT NULL,
    status_code INTEGER NOT NULL,
    latency REAL NOT NULL,
    response_body TEXT NOT NULL,
    error TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_delivery ON webhook_attempts (delivery_id, seq);
PRAGMA user_version=2;

-- Rows as lrobridge wrote them at schema version 2: one watch of each state, its tracked
-- operation, an outbox entry waiting to be published, callback runs (one succeeded, one left
-- running by a process that is gone), a quarantined message, and a webhook with a message,
-- a delivery and its attempt.
INSERT INTO watches (id, source, operation, state, create_time, update_time, polls, attempt,
    next_poll, expire_time, initial_delay, multiplier, max_delay, progress, outcome, event_id,
    last_error_code, last_error_message, lease_owner)
VALUES
    ('a1b2c3d4e5f60718', 'grpc://127.0.0.1:9010', 'projects/p/operations/active', 1,
     1700000000.0, 1700000005.0, 3, 2, 1700000010.0, NULL, 1.0, 2.0, 60.0, 0, '', '', 14,
     'unavailable: connection refused', ''),
    ('0f1e2d3c4b5a6978', 'grpc://127.0.0.1:9010', 'projects/p/operations/done', 3,
     1700000000.0, 1700000020.0, 5, 0, 1700000020.0, 1700086400.0, 1.0, 2.0, 60.0, 1,
     'succeeded', 'ev-done', 0, '', '');
INSERT INTO operations (name, parent, source, origin, done, outcome, error_code, metadata_type,
    response_type, data, data_format, create_time, update_time, cancel_requested)
VALUES
    ('projects/p/operations/active', 'projects/p', 'grpc://127.0.0.1:9010', 'watch', 0, '',
     NULL, '', '', NULL, 'binary', 1700000000.0, 1700000005.0, 0),
    ('projects/p/operations/done', 'projects/p', 'grpc://127.0.0.1:9010', 'watch', 1,
     'succeeded', NULL, '', '', X'0a1a70726f6a656374732f702f6f7065726174696f6e732f646f6e651801',
     'binary', 1700000000.0, 1700000020.0, 0);
INSERT INTO outbox (event_id, operation, watch_id, data, attributes, ordering_key, attempt,
    next_attempt, last_error, lease_owner, create_time)
VALUES ('ev-done', 'projects/p/operations/done', '0f1e2d3c4b5a6978',
    X'0a1a70726f6a656374732f702f6f7065726174696f6e732f646f6e651801',
    '{"operation": "projects/p/operations/done", "outcome": "succeeded", "event_id": "ev-done"}',
    '', 1, 1700000030.0, 'publishing: unavailable', '', 1700000020.0);
INSERT INTO callback_runs (event_id, callback, state, lease_until, attempts, last_error,
    update_time)
VALUES
    ('ev-done', 'hooks.on_done', 'succeeded', 0, 1, '', 1700000021.0),
    ('ev-done', 'hooks.slow', 'running', 1700000621.0, 1, '', 1700000021.0);
INSERT INTO quarantine (receive_time, reason, body, headers)
VALUES (1700000022.0, 'the body is not JSON', X'6e6f74206a736f6e', '{"content-type": "text/plain"}');
INSERT INTO webhooks (id, url, description, operation_glob, outcomes, metadata_type, state,
    disabled_reason, disable_time, secret, previous_secret, previous_secret_expire_time,
    failing_since, create_time, update_time)
VALUES ('wh_0123456789abcdef', 'https://hooks.example.com/lro', 'ops channel', 'projects/*/operations/*',
    'succeeded,failed', '', 'ENABLED', '', NULL, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', '',
    NULL, NULL, 1700000000.0, 1700000000.0);
INSERT INTO webhook_messages (id, event_id, event_type, operation, body, create_time)
VALUES ('msg_ev-done', 'ev-done', 'lrobridge.operation.v1.succeeded', 'projects/p/operations/done',
    X'7b7d', 1700000021.0);
INSERT INTO webhook_deliveries (id, webhook_id, message_id, state, attempt_count, round_attempts,
    next_attempt, claim_token, create_time, update_time, last_status_code, last_error)
VALUES ('dlv_0123456789abcdef', 'wh_0123456789abcdef', 'msg_ev-done', 'PENDING', 1, 1,
    1700000090.0, '', 1700000021.0, 1700000030.0, 503, 'HTTP 503');
INSERT INTO webhook_attempts (delivery_id, number, time, status_code, latency, response_body,
    error, address)
VALUES ('dlv_0123456789abcdef', 1, 1700000030.0, 503, 0.25, 'busy', '', '203.0.113.7');
