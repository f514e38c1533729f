-- Queued jobs per stage, so that every beat and `status` read a few rows
-- instead of counting the backlog (100,000 queued jobs: 11 times the time
-- of 1,000, `bench history`). Kept as `item_counts` are: a counter row per
-- stage would make every claim in every process wait on it, so writers
-- append deltas (a claim one row for the jobs it took, an insert of jobs
-- one per stage, any other move one per job), readers add the pending deltas to
-- the base counts, and each engine's heartbeat folds them in
-- (PostgresStore::fold_counts). Running jobs are still counted (there are
-- as many as the engines have slots), and so are the queued jobs scheduled
-- for later, the one part that depends on the time, through
-- `jobs_next_run`: a range per stage, and they are few.
CREATE TABLE queued_counts (
    stage TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);

CREATE TABLE queued_count_deltas (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stage TEXT NOT NULL,
    n BIGINT NOT NULL
);

INSERT INTO queued_counts (stage, n)
SELECT stage, count(*) FROM jobs WHERE state = 'queued' GROUP BY stage;

CREATE FUNCTION ideamill_count_inserted_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queued_count_deltas (stage, n)
    SELECT stage, count(*) FROM new_jobs WHERE state = 'queued' GROUP BY stage;
    RETURN NULL;
END
$$;

CREATE FUNCTION ideamill_count_deleted_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queued_count_deltas (stage, n)
    SELECT stage, -count(*) FROM old_jobs WHERE state = 'queued' GROUP BY stage;
    RETURN NULL;
END
$$;

-- A job that enters or leaves the queue, one by one: retried later, reaped,
-- released, resumed, cancelled, retried from a stage. Not a claim (queued to
-- running, the hot path): the claim's own statement appends one delta for
-- all the jobs it took (`PostgresStore::claim`), so no trigger runs for it,
-- nor for a finish or a lease renewal (the WHEN clause).
CREATE FUNCTION ideamill_count_moved_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queued_count_deltas (stage, n)
    SELECT OLD.stage, -1 WHERE OLD.state = 'queued'
    UNION ALL
    SELECT NEW.stage, 1 WHERE NEW.state = 'queued';
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION ideamill_count_inserted_jobs();

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION ideamill_count_deleted_jobs();

CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, stage ON jobs
    FOR EACH ROW
    WHEN ((OLD.state = 'queued' OR NEW.state = 'queued')
          AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.stage IS DISTINCT FROM NEW.stage)
          AND NOT (OLD.state = 'queued' AND NEW.state = 'running'))
    EXECUTE FUNCTION ideamill_count_moved_job();
