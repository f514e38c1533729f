-- ideamill schema 2 (SQLite): intake sources. Each source (an inbox file's
-- content hash, a legacy record's key) is taken once: taking it again finds
-- its row and creates nothing.

CREATE TABLE intake_sources (
    key         TEXT PRIMARY KEY,
    -- What people call it (a file name, `ideas_log.json #3`), for messages.
    name        TEXT NOT NULL,
    -- A JSON array of the ids of the items it became, in input order.
    item_ids    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
