-- Items per state without counting every item ever added. A single counter
-- row per state would make every writer in every process wait on it, so
-- writers only append deltas (triggers), readers add the pending deltas to
-- the base counts, and each engine's heartbeat folds the deltas into the
-- base (PostgresStore::fold_counts).
CREATE TABLE item_counts (
    state TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);

CREATE TABLE item_count_deltas (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state TEXT NOT NULL,
    n BIGINT NOT NULL
);

INSERT INTO item_counts (state, n)
SELECT s, (SELECT count(*) FROM items WHERE items.state = s)
FROM unnest(ARRAY['active', 'done', 'failed', 'cancelled']) AS s;

CREATE FUNCTION ideamill_count_inserted_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO item_count_deltas (state, n)
    SELECT state, count(*) FROM new_items GROUP BY state;
    RETURN NULL;
END
$$;

CREATE FUNCTION ideamill_count_deleted_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO item_count_deltas (state, n)
    SELECT state, -count(*) FROM old_items GROUP BY state;
    RETURN NULL;
END
$$;

-- Row by row, and only when the state changes: most updates of an item
-- (each stage it passes) leave its state alone and cost nothing here.
CREATE FUNCTION ideamill_count_changed_item() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO item_count_deltas (state, n) VALUES (OLD.state, -1), (NEW.state, 1);
    RETURN NULL;
END
$$;

CREATE TRIGGER items_count_insert AFTER INSERT ON items
    REFERENCING NEW TABLE AS new_items
    FOR EACH STATEMENT EXECUTE FUNCTION ideamill_count_inserted_items();

CREATE TRIGGER items_count_delete AFTER DELETE ON items
    REFERENCING OLD TABLE AS old_items
    FOR EACH STATEMENT EXECUTE FUNCTION ideamill_count_deleted_items();

CREATE TRIGGER items_count_update AFTER UPDATE OF state ON items
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION ideamill_count_changed_item();
