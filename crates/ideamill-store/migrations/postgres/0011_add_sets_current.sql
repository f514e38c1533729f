-- An add writes each new item with its first job already current: the
-- job's id is drawn from the jobs' sequence before either row is inserted
-- (`PostgresStore::add_new_items`). The trigger that keeps an item's
-- current job then has nothing to write for it; a second version of the
-- item, with an entry in each of its indexes (the text index included),
-- was a seventh of the add, which an idea's pickup waits on. Every other
-- insert of a job is still made current here.
CREATE OR REPLACE FUNCTION ideamill_jobs_set_current() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE items SET current_job_id = NEW.id, stage = NEW.stage, round = NEW.round, updated_at = NEW.created_at
    WHERE id = NEW.item_id AND current_job_id IS DISTINCT FROM NEW.id;
    RETURN NULL;
END;
$$;
