-- ideamill schema 1 (SQLite). Timestamps are milliseconds since the Unix epoch.

CREATE TABLE items (
    id              INTEGER PRIMARY KEY,
    text            TEXT NOT NULL,
    metadata        TEXT NOT NULL DEFAULT '{}',
    state           TEXT NOT NULL CHECK (state IN ('active', 'done', 'failed', 'cancelled')),
    stage           TEXT,
    round           INTEGER NOT NULL DEFAULT 1,
    current_job_id  INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX items_state ON items (state, id);
CREATE INDEX items_finished ON items (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY,
    item_id           INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    stage             TEXT NOT NULL,
    round             INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'rejected', 'failed', 'cancelled', 'paused')),
    priority          INTEGER NOT NULL DEFAULT 0,
    run_at            INTEGER NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    lease_token       INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_expires_at  INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER
);
-- Partial indexes hold only unfinished jobs, so a claim costs the same with
-- a million finished jobs as with none.
CREATE INDEX jobs_runnable ON jobs (stage, priority, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_next_run ON jobs (stage, run_at) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_owner ON jobs (lease_owner) WHERE state = 'running';
CREATE INDEX jobs_paused ON jobs (item_id) WHERE state = 'paused';
CREATE INDEX jobs_item ON jobs (item_id);

-- An item's current job is always its newest one. Keeping that here saves a
-- statement per enqueued job, which is most of the engine's write traffic.
CREATE TRIGGER jobs_set_current AFTER INSERT ON jobs BEGIN
    UPDATE items SET current_job_id = NEW.id, stage = NEW.stage, round = NEW.round, updated_at = NEW.created_at
    WHERE id = NEW.item_id;
END;

CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    job_id       INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    item_id      INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    stage        TEXT NOT NULL,
    round        INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    process      TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL,
    exit_code    INTEGER,
    error        TEXT,
    output       TEXT,
    stderr       TEXT,
    -- Model usage, for attempts that called one.
    provider           TEXT,
    model              TEXT,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    cost               REAL,
    usage_counted      INTEGER
);
CREATE INDEX attempts_item ON attempts (item_id, id);
CREATE INDEX attempts_usage ON attempts (finished_at) WHERE prompt_tokens IS NOT NULL;

-- A stage's committed output: exactly one per succeeded job.
CREATE TABLE outputs (
    id          INTEGER PRIMARY KEY,
    item_id     INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    stage       TEXT NOT NULL,
    round       INTEGER NOT NULL,
    job_id      INTEGER NOT NULL UNIQUE,
    output      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX outputs_item ON outputs (item_id, stage, id);

-- A gate's rejection: exactly one per rejected job.
CREATE TABLE feedback (
    id          INTEGER PRIMARY KEY,
    item_id     INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    stage       TEXT NOT NULL,
    round       INTEGER NOT NULL,
    job_id      INTEGER NOT NULL UNIQUE,
    feedback    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX feedback_item ON feedback (item_id, id);

CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    item_id   INTEGER,
    job_id    INTEGER,
    process   TEXT,
    message   TEXT NOT NULL
);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_item ON events (item_id) WHERE item_id IS NOT NULL;

CREATE TABLE processes (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    version       TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    last_beat_at  INTEGER NOT NULL,
    stopped_at    INTEGER
);
