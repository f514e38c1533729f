-- The loop's two rules (issue 13).
--
-- A gate's feedback keeps the round's hash: the item's workspace as the gate
-- found it (names and contents of its regular files) and the feedback. A
-- round whose hash is the previous round's ends the item as `no_progress`.
ALTER TABLE feedback ADD COLUMN round_hash TEXT;

-- A model call's worst case (estimated prompt tokens + max_tokens, at the
-- model's price), held against the budget caps while the call runs. Taken
-- under a transaction-scoped advisory lock together with the check of the
-- caps, so that concurrent callers in every engine see each other's
-- reservations; deleted by the finish that records the attempt's actual
-- usage, in the same transaction. One left by a process that died counts
-- until `expires_at`.
CREATE TABLE budget_reservations (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      BIGINT NOT NULL,
    item_id     BIGINT NOT NULL,
    tokens      BIGINT NOT NULL,
    nano_usd    BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX budget_reservations_job ON budget_reservations (job_id);
CREATE INDEX budget_reservations_item ON budget_reservations (item_id);
