-- Programme-system interop: the payee directory, where a batch came from (and where its
-- sender wants callbacks), directory attributes kept on each payment, and a durable outbox for
-- callbacks to senders.

CREATE TABLE directory (
    id_type    TEXT NOT NULL,
    id_value   TEXT NOT NULL,
    fa         TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}',
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (id_type, id_value)
) WITHOUT ROWID;

-- 'native' (PIL's REST API), 'legacy' (OpenG2P PIL API) or 'g2p' (G2P Connect).
ALTER TABLE batches ADD COLUMN channel TEXT NOT NULL DEFAULT 'native';
ALTER TABLE batches ADD COLUMN callback_url TEXT;

ALTER TABLE payments ADD COLUMN attributes TEXT;

CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_id    TEXT NOT NULL,
    url          TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    delivered_at INTEGER,
    last_error   TEXT
);
CREATE INDEX outbox_due ON outbox (next_at) WHERE delivered_at IS NULL;

-- Positions of readers that follow the append-only history (e.g. the sender notifier).
CREATE TABLE cursors (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
