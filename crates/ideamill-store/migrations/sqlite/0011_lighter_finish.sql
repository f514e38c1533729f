-- What a finish writes for each item it ends, made lighter (the hot path),
-- as PostgreSQL's 0010_lighter_finish.sql did.
--
-- An item's move into `done` is counted by the one statement that makes it,
-- the finish's (`finish.rs`): one row per state its batch left, where this
-- row trigger ran two statements per item. Every other change of an item's
-- state is rare and still counted here.
DROP TRIGGER items_count_update;
CREATE TRIGGER items_count_update AFTER UPDATE OF state ON items
WHEN old.state IS NOT new.state AND new.state <> 'done'
BEGIN
    UPDATE item_counts SET n = n - 1 WHERE state = old.state;
    UPDATE item_counts SET n = n + 1 WHERE state = new.state;
END;

-- `items_finished_state` (0003) answers everything this index did (its
-- leading column, the same predicate), and an ended item's update wrote an
-- entry in both.
DROP INDEX items_finished;
