-- PIL core schema (SQLite). Times are unix milliseconds; amounts are integer minor units.

CREATE TABLE batches (
    id            TEXT PRIMARY KEY,
    sender_id     TEXT NOT NULL,
    batch_id      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    payment_count INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (sender_id, batch_id)
);

CREATE TABLE payments (
    id              TEXT PRIMARY KEY,
    batch_id        TEXT NOT NULL REFERENCES batches (id),
    seq             INTEGER NOT NULL,
    sender_id       TEXT NOT NULL,
    reference_id    TEXT NOT NULL,
    payee_fa        TEXT,
    payee_id_type   TEXT,
    payee_id_value  TEXT,
    amount_minor    INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    payee_name      TEXT,
    note            TEXT,
    meta            TEXT,
    status          TEXT NOT NULL,
    dfsp            TEXT,
    fallbacks       TEXT NOT NULL DEFAULT '[]',
    dfsp_ref        TEXT,
    idempotency_key TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    polls           INTEGER NOT NULL DEFAULT 0,
    reason_code     TEXT,
    reason          TEXT,
    route_version   TEXT,
    adapter_version TEXT,
    next_at         INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (sender_id, reference_id)
);

CREATE INDEX payments_due ON payments (status, next_at);
CREATE INDEX payments_batch ON payments (batch_id, id);
CREATE INDEX payments_dfsp_ref ON payments (dfsp, dfsp_ref);

CREATE TABLE payment_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id      TEXT NOT NULL,
    at              INTEGER NOT NULL,
    from_status     TEXT,
    to_status       TEXT NOT NULL,
    reason_code     TEXT,
    detail          TEXT,
    route_version   TEXT,
    adapter_version TEXT
);

CREATE INDEX payment_events_payment ON payment_events (payment_id, id);

CREATE TABLE dispatch_attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id      TEXT NOT NULL,
    dfsp            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    idempotency_key TEXT,
    method          TEXT NOT NULL,
    url             TEXT NOT NULL,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER NOT NULL,
    http_status     INTEGER,
    outcome         TEXT NOT NULL,
    error           TEXT
);

CREATE INDEX dispatch_attempts_payment ON dispatch_attempts (payment_id, id);

CREATE TABLE raw_callbacks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    dfsp         TEXT NOT NULL,
    method       TEXT NOT NULL,
    path         TEXT NOT NULL,
    headers      TEXT NOT NULL,
    body         BLOB NOT NULL,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    payment_id   TEXT,
    outcome      TEXT
);
