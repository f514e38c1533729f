-- ideamill schema 2 (PostgreSQL): intake sources, as in
-- migrations/sqlite/0002_intake.sql. Each source (an inbox file's content
-- hash, a legacy record's key) is taken once.

CREATE TABLE intake_sources (
    key         TEXT PRIMARY KEY,
    -- What people call it (a file name, `ideas_log.json #3`), for messages.
    name        TEXT NOT NULL,
    -- A JSON array of the ids of the items it became, in input order.
    item_ids    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
