-- Reads behind `status` and the health verdict that stay cheap however long
-- the history.
--
-- Items per state, kept by triggers, so that `status`, the dashboard's
-- overview and /metrics read four rows instead of counting every item ever
-- added. SQLite has one writer, so the shared rows cost no contention.
CREATE TABLE item_counts (
    state TEXT PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO item_counts (state, n)
SELECT s.state, (SELECT count(*) FROM items i WHERE i.state = s.state)
FROM (SELECT 'active' AS state UNION ALL SELECT 'done' UNION ALL SELECT 'failed'
      UNION ALL SELECT 'cancelled') s;

CREATE TRIGGER items_count_insert AFTER INSERT ON items
BEGIN
    UPDATE item_counts SET n = n + 1 WHERE state = new.state;
END;

CREATE TRIGGER items_count_delete AFTER DELETE ON items
BEGIN
    UPDATE item_counts SET n = n - 1 WHERE state = old.state;
END;

CREATE TRIGGER items_count_update AFTER UPDATE OF state ON items
WHEN old.state IS NOT new.state
BEGIN
    UPDATE item_counts SET n = n - 1 WHERE state = old.state;
    UPDATE item_counts SET n = n + 1 WHERE state = new.state;
END;

-- The health verdict asks for the recent events of one kind (restarts,
-- outages): read newest first from this index, not by walking every event.
CREATE INDEX events_kind ON events (kind, id);
