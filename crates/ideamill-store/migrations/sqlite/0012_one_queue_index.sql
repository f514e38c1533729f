-- One index over the queue, as PostgreSQL's 0012_one_queue_index.sql: the
-- claim, when a stage's soonest queued job is due and how many are
-- scheduled for later are all answered by `jobs_runnable`, the reads one
-- priority level at a time (`shared::reads::LEVELS`). Each job inserted
-- writes one index entry fewer, which an add, and so an idea's pickup,
-- waits on.
DROP INDEX jobs_next_run;
