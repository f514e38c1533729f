-- Unfinished jobs per stage and state (`queued`, `running`), so that every
-- beat and `status` read a few rows instead of counting the backlog
-- (100,000 queued jobs: 30-60 times the time of 1,000, `bench history`).
-- Kept as `item_counts` are: a counter row per stage and state would make
-- every claim and finish in every process wait on it, so writers append
-- deltas (statement triggers: one insert per claim or finish batch),
-- readers add the pending deltas to the base counts, and each engine's
-- heartbeat folds them in (PostgresStore::fold_counts). Only the jobs
-- scheduled for later, the one part that depends on the time, are still
-- counted, through `jobs_next_run`: a range per stage, and they are few.
CREATE TABLE job_counts (
    stage TEXT NOT NULL,
    state TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (stage, state)
);

CREATE TABLE job_count_deltas (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stage TEXT NOT NULL,
    state TEXT NOT NULL,
    n BIGINT NOT NULL
);

INSERT INTO job_counts (stage, state, n)
SELECT stage, state, count(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY stage, state;

CREATE FUNCTION ideamill_count_inserted_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (stage, state, n)
    SELECT stage, state, count(*) FROM new_jobs
    WHERE state IN ('queued', 'running') GROUP BY stage, state;
    RETURN NULL;
END
$$;

CREATE FUNCTION ideamill_count_deleted_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (stage, state, n)
    SELECT stage, state, -count(*) FROM old_jobs
    WHERE state IN ('queued', 'running') GROUP BY stage, state;
    RETURN NULL;
END
$$;

-- A statement's moves, netted per stage and state: a claim of 200 jobs is
-- two delta rows. Updates that move nothing counted (a lease renewal, a
-- finished job's later updates) append nothing.
CREATE FUNCTION ideamill_count_changed_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_count_deltas (stage, state, n)
    SELECT stage, state, SUM(n) FROM (
        SELECT o.stage, o.state, -1 AS n
        FROM old_jobs o JOIN new_jobs j ON j.id = o.id
        WHERE o.state IN ('queued', 'running')
          AND (o.state IS DISTINCT FROM j.state OR o.stage IS DISTINCT FROM j.stage)
        UNION ALL
        SELECT j.stage, j.state, 1
        FROM old_jobs o JOIN new_jobs j ON j.id = o.id
        WHERE j.state IN ('queued', 'running')
          AND (o.state IS DISTINCT FROM j.state OR o.stage IS DISTINCT FROM j.stage)
    ) moves
    GROUP BY stage, state
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
