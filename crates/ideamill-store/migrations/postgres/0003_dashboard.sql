-- ideamill schema 3 (PostgreSQL): what the dashboard and the HTTP API read,
-- as in migrations/sqlite/0003_dashboard.sql.

-- Text search over items: words of the idea text in the `simple`
-- configuration (no stemming, no stop words, lowercased), matched as
-- prefixes. An expression index: nothing to keep in step, nothing extra to
-- copy.
CREATE INDEX items_text_search ON items USING gin (to_tsvector('simple', text));

-- The items list filtered by stage, newest first, without a scan.
CREATE INDEX items_stage ON items (stage, id);

-- Charts: attempts and items finished per time bucket, read from the
-- indexes alone (they cover the columns the charts count by).
CREATE INDEX attempts_finished ON attempts (finished_at, outcome);
CREATE INDEX items_finished_state ON items (finished_at, state) WHERE finished_at IS NOT NULL;
