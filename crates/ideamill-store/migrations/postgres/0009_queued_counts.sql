-- Queued jobs per stage, so that every beat and `status` read a few rows
-- instead of counting the backlog (100,000 queued jobs: 11 times the time
-- of 1,000, `bench history`). Kept as `item_counts` are: a counter row per
-- stage would make every claim in every process wait on it, so writers
-- append deltas (statement triggers: a claim or a finish batch appends one
-- row per stage whose queue it changed), readers add the pending deltas to
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

-- A statement's moves, netted per stage: a row updated without entering or
-- leaving the queue counts -1 and +1 for the same stage, so a finish, a
-- lease renewal or a cancellation request appends nothing.
CREATE FUNCTION ideamill_count_changed_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queued_count_deltas (stage, n)
    SELECT stage, SUM(n) FROM (
        SELECT stage, -1 AS n FROM old_jobs WHERE state = 'queued'
        UNION ALL
        SELECT stage, 1 FROM new_jobs WHERE state = 'queued'
    ) moves
    GROUP BY stage
    HAVING SUM(n) <> 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION ideamill_count_inserted_jobs();

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION ideamill_count_deleted_jobs();

CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION ideamill_count_changed_jobs();
