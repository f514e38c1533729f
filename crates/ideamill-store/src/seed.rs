//! Bulk history for benchmarks (`ideamill bench history`): a million
//! finished jobs written by a few set-based statements in one transaction,
//! rather than by a million claims and finishes. Only for a new, empty
//! store: the rows get ids from 1.

use ideamill_core::Millis;
use sqlx::Connection;

use crate::Result;

/// What [`history`] writes.
#[derive(Debug, Clone)]
pub struct History {
    /// Items that went through every stage and are done: each with one
    /// succeeded job, one attempt and one output per stage.
    pub done_items: u64,
    /// Active items waiting at the first stage: one queued job each,
    /// runnable since the second before `now`.
    pub queued_items: u64,
    /// The pipeline's stages, in order.
    pub stages: Vec<String>,
    /// The finished items are spread evenly over `[from, to)`.
    pub from: Millis,
    /// See `from`.
    pub to: Millis,
    /// See `queued_items`.
    pub now: Millis,
    /// One event (a retry) per this many finished items.
    pub items_per_event: u64,
}

const TABLES: [&str; 5] = ["items", "jobs", "attempts", "outputs", "events"];

/// A SQL string literal.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The statements, each over a series `n(i)`, `i` from 0; `series(rows)`
/// says how this database makes one. The values are ours (numbers and the
/// config's stage names), written as literals so that one text serves both
/// databases.
fn statements(h: &History, series: impl Fn(i64) -> String) -> Vec<String> {
    let stages = h.stages.len().max(1) as i64;
    let stage_of = {
        let arms: String = h
            .stages
            .iter()
            .enumerate()
            .map(|(k, s)| format!(" WHEN {k} THEN {}", quoted(s)))
            .collect();
        format!("(CASE i % {stages}{arms} END)")
    };
    let first = quoted(h.stages.first().map_or("", String::as_str));
    let last = quoted(h.stages.last().map_or("", String::as_str));
    let done = h.done_items as i64;
    let queued = h.queued_items as i64;
    let jobs = done * stages;
    let every = h.items_per_event.max(1) as i64;
    let events = done / every;
    let from = h.from;
    let step = ((h.to - h.from) / done.max(1)).max(1);
    // A finished job's item, and its time: the item's, plus a minute a stage.
    let item = format!("i / {stages} + 1");
    let at = format!("({from} + (i / {stages}) * {step} + (i % {stages}) * 60000)");
    let since = h.now - 1000;
    vec![
        format!(
            "{} INSERT INTO items (id, text, metadata, state, stage, round, current_job_id, created_at, updated_at,
                                finished_at, trace_id)
             SELECT i + 1, 'idea ' || CAST(i + 1 AS TEXT), '{{}}', 'done', {last}, 1, (i + 1) * {stages},
                    {from} + i * {step}, {from} + i * {step} + 180000, {from} + i * {step} + 180000,
                    'history' || CAST(i AS TEXT)
             FROM n",
            series(done)
        ),
        format!(
            "{} INSERT INTO jobs (id, item_id, stage, round, state, priority, run_at, attempts, max_attempts,
                               lease_token, created_at, updated_at, started_at, finished_at)
             SELECT i + 1, {item}, {stage_of}, 1, 'succeeded', 0, {at}, 1, 3, 1, {at}, {at} + 50000,
                    {at}, {at} + 50000
             FROM n",
            series(jobs)
        ),
        format!(
            "{} INSERT INTO attempts (id, job_id, item_id, stage, round, attempt, process, outcome, started_at,
                                   finished_at, exit_code)
             SELECT i + 1, i + 1, {item}, {stage_of}, 1, 1, 'bench', 'succeeded', {at}, {at} + 50000, 0
             FROM n",
            series(jobs)
        ),
        format!(
            "{} INSERT INTO outputs (id, item_id, stage, round, job_id, output, created_at)
             SELECT i + 1, {item}, {stage_of}, 1, i + 1, 'the output of job ' || CAST(i + 1 AS TEXT),
                    {at} + 50000
             FROM n",
            series(jobs)
        ),
        format!(
            "{} INSERT INTO events (id, at, kind, item_id, process, message)
             SELECT i + 1, {from} + i * {every} * {step}, 'retry_scheduled', i * {every} + 1, 'bench',
                    'a retry in the bench''s history'
             FROM n",
            series(events)
        ),
        format!(
            "{} INSERT INTO items (id, text, metadata, state, stage, round, current_job_id, created_at, updated_at,
                                trace_id)
             SELECT {done} + i + 1, 'queued idea ' || CAST(i AS TEXT), '{{}}', 'active', {first}, 1,
                    {jobs} + i + 1, {since}, {since}, 'queued' || CAST(i AS TEXT)
             FROM n",
            series(queued)
        ),
        format!(
            "{} INSERT INTO jobs (id, item_id, stage, round, state, priority, run_at, attempts, max_attempts,
                               lease_token, created_at, updated_at)
             SELECT {jobs} + i + 1, {done} + i + 1, {first}, 1, 'queued', 0, {since} + i * 1000 / {spread}, 0, 3,
                    0, {since}, {since}
             FROM n",
            series(queued),
            spread = queued.max(1)
        ),
    ]
}

/// Write `h` into the store at `url` (already created and migrated), in
/// one transaction.
pub async fn history(url: &str, h: &History) -> Result<()> {
    if crate::is_postgres_url(url) {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let mut tx = conn.begin().await?;
        // The items are written with their current job already: the
        // trigger that keeps it would update an item per job, a million
        // times. The bench owns its scratch database, so it may.
        sqlx::raw_sql("ALTER TABLE jobs DISABLE TRIGGER jobs_set_current")
            .execute(&mut *tx)
            .await?;
        ensure_empty(
            sqlx::query_scalar("SELECT COUNT(*) FROM items")
                .fetch_one(&mut *tx)
                .await?,
        )?;
        for sql in statements(h, |rows| {
            format!("WITH n(i) AS (SELECT generate_series(0::bigint, {rows} - 1))")
        }) {
            sqlx::raw_sql(&sql).execute(&mut *tx).await?;
        }
        sqlx::raw_sql("ALTER TABLE jobs ENABLE TRIGGER jobs_set_current")
            .execute(&mut *tx)
            .await?;
        // Explicit ids leave the identity sequences behind.
        for table in TABLES {
            sqlx::raw_sql(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST((SELECT MAX(id) FROM {table}), 1))"
            ))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        // A server's autovacuum would have analyzed a history this size.
        sqlx::raw_sql("ANALYZE").execute(&mut conn).await?;
        // The finishes would have kept the gate tallies: count them (with
        // the statistics, so that each job's model is found by index).
        sqlx::raw_sql(&crate::shared::tallies::recount_sql())
            .execute(&mut conn)
            .await?;
        conn.close().await?;
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        ensure_empty(
            sqlx::query_scalar("SELECT COUNT(*) FROM items")
                .fetch_one(&mut *tx)
                .await?,
        )?;
        for sql in statements(h, |rows| {
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 0 WHERE {rows} > 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {rows})"
            )
        }) {
            sqlx::raw_sql(&sql).execute(&mut *tx).await?;
        }
        // The finishes would have kept the gate tallies: count them.
        sqlx::raw_sql(&crate::shared::tallies::recount_sql())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        conn.close().await?;
    }
    Ok(())
}

/// The history's ids start at 1: refuse a store that has items already.
fn ensure_empty(items: i64) -> Result<()> {
    if items > 0 {
        return Err(crate::StoreError::Unsupported(
            "the bench's history goes only into a new, empty store".into(),
        ));
    }
    Ok(())
}
