-- Queued jobs per stage, kept by triggers, so that every beat and `status`
-- read a few rows instead of counting the backlog (100,000 queued jobs
-- took 7-17 ms a beat to count, `bench history`). Running jobs are still
-- counted (there are as many as the engines have slots), and so are the
-- queued jobs scheduled for later, the one part that depends on the time,
-- through `jobs_next_run`: a range per stage, and they are few. SQLite has
-- one writer, so the shared rows cost no contention. `store copy` counts
-- them again with the statement below (`common::RECOUNT_QUEUED`).
CREATE TABLE queued_counts (
    stage TEXT PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO queued_counts (stage, n)
SELECT stage, count(*) FROM jobs WHERE state = 'queued' GROUP BY stage;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
WHEN new.state = 'queued'
BEGIN
    INSERT INTO queued_counts (stage, n) VALUES (new.stage, 1)
    ON CONFLICT (stage) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
WHEN old.state = 'queued'
BEGIN
    UPDATE queued_counts SET n = n - 1 WHERE stage = old.stage;
END;

-- Only when a job enters or leaves the queue (or a queued one changes
-- stage): a finish, a lease renewal or a cancellation request costs
-- nothing here.
CREATE TRIGGER jobs_count_update AFTER UPDATE OF state, stage ON jobs
WHEN (old.state = 'queued' OR new.state = 'queued')
 AND (old.state IS NOT new.state OR old.stage IS NOT new.stage)
BEGIN
    UPDATE queued_counts SET n = n - 1 WHERE stage = old.stage AND old.state = 'queued';
    INSERT INTO queued_counts (stage, n)
    SELECT new.stage, 1 WHERE new.state = 'queued'
    ON CONFLICT (stage) DO UPDATE SET n = n + 1;
END;
