-- What a finish writes for each item it ends, made lighter (the hot path).
--
-- An item's move into `done` is counted by the one statement that makes it,
-- the finish's (`PostgresStore::finish`): one delta row per state its batch
-- left, where this row trigger ran once and appended two rows per item (a
-- sixth of the server's work for a one-stage job). Every other change of an
-- item's state is rare and still counted here.
DROP TRIGGER items_count_update ON items;
CREATE TRIGGER items_count_update AFTER UPDATE OF state ON items
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND NEW.state <> 'done')
    EXECUTE FUNCTION ideamill_count_changed_item();

-- `items_finished_state` (0003) answers everything this index did, and an
-- ended item's update wrote an entry in both.
DROP INDEX items_finished;
