-- Operators' holds: DFSPs kept out of routing, batches whose unsent payments wait.
CREATE TABLE dfsp_pauses (
    dfsp       TEXT PRIMARY KEY,
    paused_at  INTEGER NOT NULL,
    actor      TEXT NOT NULL
);

ALTER TABLE batches ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
