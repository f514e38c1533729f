-- Unfinished jobs per stage and state (`queued`, `running`), kept by
-- triggers, so that every beat and `status` read a few rows instead of
-- counting the backlog (100,000 queued jobs took 16 ms a beat to count,
-- `bench history`). Only the jobs scheduled for later, the one part that
-- depends on the time, are still counted, through `jobs_next_run`: a range
-- per stage, and they are few. SQLite has one writer, so the shared rows
-- cost no contention. `store copy` counts them again
-- (`sqlite::leases::RECOUNT_JOBS`, the statement below).
CREATE TABLE job_counts (
    stage TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (stage, state)
) WITHOUT ROWID;

INSERT INTO job_counts (stage, state, n)
SELECT stage, state, count(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY stage, state;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
WHEN new.state IN ('queued', 'running')
BEGIN
    INSERT INTO job_counts (stage, state, n) VALUES (new.stage, new.state, 1)
    ON CONFLICT (stage, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
WHEN old.state IN ('queued', 'running')
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE stage = old.stage AND state = old.state;
END;

-- Only when a counted state or the stage changes: a lease renewal, a
-- cancellation request or a finished job's later updates cost nothing here.
CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, stage ON jobs
WHEN (old.state IS NOT new.state OR old.stage IS NOT new.stage)
 AND (old.state IN ('queued', 'running') OR new.state IN ('queued', 'running'))
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE stage = old.stage AND state = old.state;
    INSERT INTO job_counts (stage, state, n)
    SELECT new.stage, new.state, 1 WHERE new.state IN ('queued', 'running')
    ON CONFLICT (stage, state) DO UPDATE SET n = n + 1;
END;
