-- The QA lift's tallies (`Store::gate_tallies`) kept as counters, so that
-- /metrics, /api/qa and the overview read a few rows instead of judging
-- every gate job ever finished. A row counts the jobs of one stage, round,
-- model and outcome that ended judged: succeeded (`passed`), or failed with
-- a rejection kept (`failed`, or `no_progress` when the job's reason begins
-- so). Every stage is counted, not only gates: which stages are gates is
-- the config's to say, at read time. The model is the item's newest model
-- call before the job (NULL: none).
--
-- As for the item counts (0004_item_counts.sql), a shared counter row
-- would make the finishes of every engine wait on it: the finish that
-- judges a job appends a delta in its own transaction (`prune` appends
-- negative ones as it deletes items), readers add the pending deltas to
-- the base, and each engine's heartbeat folds them in. `store copy` counts
-- the copied jobs again.
CREATE TABLE gate_tallies (
    stage TEXT NOT NULL,
    round BIGINT NOT NULL,
    model TEXT,
    outcome TEXT NOT NULL,
    n BIGINT NOT NULL
);

-- One row per key, a NULL model included (the fold's upsert names this
-- index).
CREATE UNIQUE INDEX gate_tallies_key ON gate_tallies (stage, round, outcome, COALESCE(model, ''), (model IS NULL));

CREATE TABLE gate_tally_deltas (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stage TEXT NOT NULL,
    round BIGINT NOT NULL,
    model TEXT,
    outcome TEXT NOT NULL,
    n BIGINT NOT NULL
);

-- The history so far, judged as the full scan judged it.
INSERT INTO gate_tallies (stage, round, model, outcome, n)
SELECT stage, round, model, outcome, COUNT(*)
FROM (SELECT j.stage AS stage, j.round AS round,
             (SELECT m.model FROM attempts m
               WHERE m.item_id = j.item_id AND m.job_id < j.id AND m.model IS NOT NULL
               ORDER BY m.id DESC LIMIT 1) AS model,
             CASE WHEN j.state = 'succeeded' THEN 'passed'
                  WHEN SUBSTR(j.last_error, 1, 11) = 'no_progress' THEN 'no_progress'
                  ELSE 'failed' END AS outcome
      FROM jobs j
      WHERE j.state = 'succeeded'
         OR (j.state = 'failed' AND EXISTS (SELECT 1 FROM feedback f WHERE f.job_id = j.id))) AS judged
GROUP BY stage, round, model, outcome;
