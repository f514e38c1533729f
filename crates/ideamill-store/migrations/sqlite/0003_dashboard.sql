-- ideamill schema 3 (SQLite): what the dashboard and the HTTP API read.

-- Text search over items: an FTS5 index of the idea text (word prefixes,
-- case- and accent-insensitive), kept by triggers, so that a search costs
-- what its matches cost, not what the table holds. External content: the
-- text is stored once, in `items`.
CREATE VIRTUAL TABLE items_fts USING fts5 (
    text,
    content = 'items',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '2 3'
);
INSERT INTO items_fts (items_fts) VALUES ('rebuild');
CREATE TRIGGER items_fts_insert AFTER INSERT ON items BEGIN
    INSERT INTO items_fts (rowid, text) VALUES (NEW.id, NEW.text);
END;
CREATE TRIGGER items_fts_delete AFTER DELETE ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, text) VALUES ('delete', OLD.id, OLD.text);
END;
CREATE TRIGGER items_fts_update AFTER UPDATE OF text ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, text) VALUES ('delete', OLD.id, OLD.text);
    INSERT INTO items_fts (rowid, text) VALUES (NEW.id, NEW.text);
END;

-- The items list filtered by stage, newest first, without a scan.
CREATE INDEX items_stage ON items (stage, id);

-- Charts: attempts and items finished per time bucket, read from the
-- indexes alone (they cover the columns the charts count by).
CREATE INDEX attempts_finished ON attempts (finished_at, outcome);
CREATE INDEX items_finished_state ON items (finished_at, state) WHERE finished_at IS NOT NULL;
