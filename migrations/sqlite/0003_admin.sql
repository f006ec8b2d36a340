-- The admin API: an append-only audit log of every change made through it, and every version
-- of a script file written through it (so history can show diffs and a rollback can restore
-- exact bytes).

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,           -- unix ms
    actor       TEXT NOT NULL,              -- the admin token's name
    action      TEXT NOT NULL,              -- e.g. script.write, script.rollback, scripts.reload
    target      TEXT NOT NULL,              -- what changed, e.g. rules/routing.rhai
    before_hash TEXT,                       -- sha256 of the content before (NULL: none)
    after_hash  TEXT,                       -- sha256 of the content after (NULL: none)
    detail      TEXT                        -- JSON
);

CREATE TABLE script_versions (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    path    TEXT NOT NULL,                  -- relative: rules/... or adapters/...
    hash    TEXT NOT NULL,                  -- sha256 hex of content
    content BLOB NOT NULL,                  -- the exact bytes
    actor   TEXT NOT NULL,                  -- token name, or (disk) for bytes found on disk
    at      INTEGER NOT NULL
);
CREATE INDEX script_versions_path ON script_versions (path, id);
