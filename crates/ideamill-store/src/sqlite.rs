//! The SQLite store: WAL mode, one writer connection (so writes in this
//! process never contend with each other), a small pool of readers, and
//! Unix-socket wake-ups for other processes.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ideamill_core::machine::{LostJob, NextJob, Transition, after_lost};
use ideamill_core::{AttemptOutcome, ItemId, ItemState, JobId, JobState, Millis, Usage};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use crate::types::event_kind as ek;
use crate::wake::{NeverSignal, WakeDir, WorkSignal};
use crate::*;

/// Schema migrations, embedded in the binary, applied in order at open.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/sqlite/0001_init.sql"))];
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

pub struct SqliteStore {
    path: PathBuf,
    writer: SqlitePool,
    reader: SqlitePool,
    wake: Option<WakeDir>,
}

impl SqliteStore {
    pub async fn open(url: &str, options: &OpenOptions) -> Result<SqliteStore> {
        let path = PathBuf::from(url.strip_prefix("sqlite://").unwrap_or(url));
        if options.must_exist && !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Look before touching: a database from a newer build, or another
        // program's, must be refused before any pragma (WAL) changes its file.
        if path.exists() {
            inspect(&path).await?;
        }
        let connect = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect.clone())
            .await
            .map_err(|e| open_error(&path, e))?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect.read_only(true))
            .await?;
        Ok(SqliteStore {
            path,
            writer,
            reader,
            wake: options.wake_dir.as_deref().map(WakeDir::new),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction that takes the write lock at once, so that a read
    /// inside it can never be invalidated by another process's commit.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn open_error(path: &Path, e: sqlx::Error) -> StoreError {
    StoreError::Corrupt(format!(
        "cannot open the database at {}: {e}",
        path.display()
    ))
}

/// Check an existing database through a read-only connection that sets no
/// pragma: refuse a newer schema or a database that is not ours.
async fn inspect(path: &Path) -> Result<()> {
    use sqlx::Connection;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| open_error(path, e))?;
    let has_meta: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'ideamill_schema'",
    )
    .fetch_optional(&mut conn)
    .await
    .map_err(|e| open_error(path, e))?;
    let result = match has_meta {
        Some(_) => {
            let found: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM ideamill_schema")
                    .fetch_one(&mut conn)
                    .await?;
            if found > SCHEMA_VERSION {
                Err(StoreError::TooNew {
                    path: path.display().to_string(),
                    found,
                    known: SCHEMA_VERSION,
                })
            } else {
                Ok(())
            }
        }
        None => {
            let tables: i64 =
                sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
                    .fetch_one(&mut conn)
                    .await?;
            if tables > 0 {
                Err(StoreError::Corrupt(format!(
                    "{} is a SQLite database but not an ideamill store; it was not modified",
                    path.display()
                )))
            } else {
                Ok(())
            }
        }
    };
    let _ = conn.close().await;
    result
}

/// Apply the migrations this build knows and the database lacks, in one
/// transaction that holds the write lock, so that two processes starting at
/// once cannot both apply them.
async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS ideamill_schema (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL, by TEXT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    // Another process may have migrated while we waited for the lock.
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM ideamill_schema")
        .fetch_one(&mut *tx)
        .await?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO ideamill_schema (version, applied_at, by) VALUES (?, ?, ?)")
            .bind(version)
            .bind(now_millis())
            .bind(concat!("ideamill ", env!("CARGO_PKG_VERSION")))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

async fn insert_event(tx: &mut Transaction<'static, Sqlite>, e: &NewEvent) -> Result<()> {
    sqlx::query("INSERT INTO events (at, kind, item_id, job_id, process, message) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(e.at)
        .bind(e.kind)
        .bind(e.item_id)
        .bind(e.job_id)
        .bind(&e.process)
        .bind(&e.message)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_job(
    tx: &mut Transaction<'static, Sqlite>,
    item: ItemId,
    next: &NextJob,
    run_at: Millis,
    now: Millis,
) -> Result<JobId> {
    let id: JobId = sqlx::query_scalar(
        "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at)
         VALUES (?, ?, ?, 'queued', ?, ?, ?, ?) RETURNING id",
    )
    .bind(item)
    .bind(&next.stage)
    .bind(next.round)
    .bind(run_at)
    .bind(next.max_attempts)
    .bind(now)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

/// Enqueue many jobs in one statement per chunk (the `jobs_set_current`
/// trigger keeps each item's current job).
async fn insert_jobs(
    tx: &mut Transaction<'static, Sqlite>,
    jobs: &[(ItemId, &NextJob, Millis)],
) -> Result<()> {
    for chunk in jobs.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at) ",
        );
        q.push_values(chunk, |mut b, (item, next, now)| {
            let now = *now;
            b.push_bind(*item)
                .push_bind(&next.stage)
                .push_bind(next.round)
                .push_bind("queued")
                .push_bind(now)
                .push_bind(next.max_attempts)
                .push_bind(now)
                .push_bind(now);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Rows per multi-row statement; well under SQLite's bound-parameter limit.
const CHUNK: usize = 64;

/// An attempt row to insert.
struct AttemptRecord<'a> {
    job: &'a ClaimedJob,
    process: &'a str,
    outcome: AttemptOutcome,
    started_at: Millis,
    finished_at: Millis,
    exit_code: Option<i32>,
    error: Option<&'a str>,
    output: Option<&'a str>,
    stderr: Option<&'a str>,
    usage: Option<&'a Usage>,
}

async fn insert_attempts(
    tx: &mut Transaction<'static, Sqlite>,
    rows: &[AttemptRecord<'_>],
) -> Result<()> {
    for chunk in rows.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO attempts (job_id, item_id, stage, round, attempt, process, outcome, started_at,
                                   finished_at, exit_code, error, output, stderr, provider, model,
                                   prompt_tokens, completion_tokens, cost, usage_counted) ",
        );
        q.push_values(chunk, |mut b, a| {
            b.push_bind(a.job.id)
                .push_bind(a.job.item_id)
                .push_bind(&a.job.stage)
                .push_bind(a.job.round)
                .push_bind(a.job.attempt)
                .push_bind(a.process)
                .push_bind(a.outcome.as_str())
                .push_bind(a.started_at)
                .push_bind(a.finished_at)
                .push_bind(a.exit_code)
                .push_bind(a.error)
                .push_bind(a.output)
                .push_bind(a.stderr)
                .push_bind(a.usage.map(|u| u.provider.as_str()))
                .push_bind(a.usage.map(|u| u.model.as_str()))
                .push_bind(a.usage.map(|u| u.prompt_tokens as i64))
                .push_bind(a.usage.map(|u| u.completion_tokens as i64))
                .push_bind(a.usage.map(|u| u.cost))
                .push_bind(a.usage.map(|u| u.counted));
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// An attempt that ended without running to completion (lost, released).
async fn insert_interrupted_attempt(
    tx: &mut Transaction<'static, Sqlite>,
    job: &ClaimedJob,
    process: &str,
    outcome: AttemptOutcome,
    now: Millis,
    note: &str,
) -> Result<()> {
    let record = AttemptRecord {
        job,
        process,
        outcome,
        started_at: job.claimed_at,
        finished_at: now,
        exit_code: None,
        error: Some(note),
        output: None,
        stderr: None,
        usage: None,
    };
    insert_attempts(tx, &[record]).await
}

async fn fail_item(
    tx: &mut Transaction<'static, Sqlite>,
    item: ItemId,
    reason: &str,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "UPDATE items SET state = 'failed', last_error = ?, finished_at = ?, updated_at = ? WHERE id = ? AND state = 'active'",
    )
    .bind(reason)
    .bind(now)
    .bind(now)
    .bind(item)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn item_row(r: &SqliteRow) -> Result<ItemRow> {
    let state: String = r.try_get("state")?;
    let metadata: String = r.try_get("metadata")?;
    Ok(ItemRow {
        id: r.try_get("id")?,
        text: r.try_get("text")?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::String(metadata)),
        state: ItemState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown item state {state:?}")))?,
        stage: r.try_get("stage")?,
        round: r.try_get("round")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

const ITEM_COLUMNS: &str =
    "id, text, metadata, state, stage, round, last_error, created_at, updated_at, finished_at";

fn output_row(r: &SqliteRow) -> Result<OutputRow> {
    Ok(OutputRow {
        stage: r.try_get("stage")?,
        round: r.try_get("round")?,
        job_id: r.try_get("job_id")?,
        output: r.try_get("output")?,
        created_at: r.try_get("created_at")?,
    })
}

fn feedback_row(r: &SqliteRow) -> Result<FeedbackRow> {
    Ok(FeedbackRow {
        stage: r.try_get("stage")?,
        round: r.try_get("round")?,
        feedback: r.try_get("feedback")?,
        created_at: r.try_get("created_at")?,
    })
}

fn event_row(r: &SqliteRow) -> Result<Event> {
    Ok(Event {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        kind: r.try_get("kind")?,
        item_id: r.try_get("item_id")?,
        job_id: r.try_get("job_id")?,
        process: r.try_get("process")?,
        message: r.try_get("message")?,
    })
}

fn job_state(s: &str) -> Result<JobState> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown job state {s:?}")))
}

/// What people see for an item, from its stored state and its current job.
fn display_state(item: ItemState, job_state: Option<&str>, attempts: u32) -> String {
    match (item, job_state) {
        (ItemState::Active, Some("running")) => "running".into(),
        (ItemState::Active, Some("paused")) => "paused".into(),
        (ItemState::Active, Some("queued")) if attempts > 0 => "retrying".into(),
        (ItemState::Active, _) => "queued".into(),
        (other, _) => other.as_str().into(),
    }
}

fn state_clause(filter: StateFilter) -> &'static str {
    match filter {
        StateFilter::Active => "i.state = 'active'",
        StateFilter::Queued => "i.state = 'active' AND j.state = 'queued' AND j.attempts = 0",
        StateFilter::Retrying => "i.state = 'active' AND j.state = 'queued' AND j.attempts > 0",
        StateFilter::Running => "i.state = 'active' AND j.state = 'running'",
        StateFilter::Paused => "i.state = 'active' AND j.state = 'paused'",
        StateFilter::Done => "i.state = 'done'",
        StateFilter::Failed => "i.state = 'failed'",
        StateFilter::Cancelled => "i.state = 'cancelled'",
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn add_items(
        &self,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
    ) -> Result<Vec<ItemId>> {
        let mut tx = self.write_tx().await?;
        let mut ids = Vec::with_capacity(items.len());
        for chunk in items.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO items (text, metadata, state, stage, round, created_at, updated_at) ",
            );
            q.push_values(chunk, |mut b, item| {
                b.push_bind(&item.text)
                    .push_bind(item.metadata.to_string())
                    .push_bind("active")
                    .push_bind(&first.stage)
                    .push_bind(first.round)
                    .push_bind(now)
                    .push_bind(now);
            });
            q.push(" RETURNING id");
            let mut chunk_ids: Vec<ItemId> = q.build_query_scalar().fetch_all(&mut *tx).await?;
            // RETURNING's order is unspecified; new rowids grow in VALUES order.
            chunk_ids.sort_unstable();
            ids.extend(chunk_ids);
        }
        let jobs: Vec<(ItemId, &NextJob, Millis)> =
            ids.iter().map(|id| (*id, first, now)).collect();
        insert_jobs(&mut tx, &jobs).await?;
        tx.commit().await?;
        self.notify();
        Ok(ids)
    }

    async fn claim(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedJob>> {
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_token = lease_token + 1,
                    lease_owner = ?1, lease_expires_at = ?2, started_at = ?3, updated_at = ?3
             WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND stage = ?4 AND run_at <= ?3
                          ORDER BY priority, run_at, id LIMIT ?5)
             RETURNING id, item_id, stage, round, attempts, max_attempts, lease_token, run_at, priority",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(stage)
        .bind(limit)
        .fetch_all(&self.writer)
        .await?;
        let mut jobs = rows
            .iter()
            .map(|r| {
                let job = ClaimedJob {
                    id: r.try_get("id")?,
                    item_id: r.try_get("item_id")?,
                    stage: r.try_get("stage")?,
                    round: r.try_get("round")?,
                    attempt: r.try_get("attempts")?,
                    max_attempts: r.try_get("max_attempts")?,
                    lease_token: r.try_get("lease_token")?,
                    run_at: r.try_get("run_at")?,
                    claimed_at: now,
                };
                Ok((r.try_get::<i64, _>("priority")?, job))
            })
            .collect::<Result<Vec<_>>>()?;
        // RETURNING does not keep the subquery's order: restore it.
        jobs.sort_by_key(|(priority, job)| (*priority, job.run_at, job.id));
        Ok(jobs.into_iter().map(|(_, job)| job).collect())
    }

    async fn context(&self, item: ItemId) -> Result<ItemContext> {
        // One statement: the engine reads this once per job.
        let row = sqlx::query(&format!(
            "SELECT {ITEM_COLUMNS},
                (SELECT json_group_array(json_object('stage', stage, 'round', round, 'job_id', job_id,
                                                     'output', output, 'created_at', created_at))
                 FROM outputs o
                 WHERE o.item_id = items.id
                   AND o.id = (SELECT MAX(id) FROM outputs o2 WHERE o2.item_id = o.item_id AND o2.stage = o.stage)
                ) AS outputs_json,
                (SELECT json_group_array(json_object('stage', stage, 'round', round, 'feedback', feedback,
                                                     'created_at', created_at))
                 FROM (SELECT * FROM feedback f WHERE f.item_id = items.id ORDER BY f.id)
                ) AS feedback_json
             FROM items WHERE id = ?"
        ))
        .bind(item)
        .fetch_optional(&self.reader)
        .await?
        .ok_or(StoreError::NoSuchItem(item))?;
        let outputs: String = row.try_get("outputs_json")?;
        let feedback: String = row.try_get("feedback_json")?;
        Ok(ItemContext {
            item: item_row(&row)?,
            outputs: serde_json::from_str(&outputs)
                .map_err(|e| StoreError::Corrupt(format!("outputs of item {item}: {e}")))?,
            feedback: serde_json::from_str(&feedback)
                .map_err(|e| StoreError::Corrupt(format!("feedback of item {item}: {e}")))?,
        })
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>> {
        let mut tx = self.write_tx().await?;
        let mut results = Vec::with_capacity(finishes.len());
        // Rows common to most finishes are gathered and inserted a chunk at
        // a time after the loop; rare ones are written as they come.
        let mut attempts: Vec<AttemptRecord<'_>> = Vec::with_capacity(finishes.len());
        let mut outputs: Vec<(&ClaimedJob, &str, Millis)> = Vec::new();
        let mut next_jobs: Vec<(ItemId, &NextJob, Millis)> = Vec::new();
        let mut done: Vec<(ItemId, Millis)> = Vec::new();
        for f in finishes {
            let now = f.finished_at;
            let job = &f.job;
            let new_state = crate::transition_job_state(&f.transition);
            let (run_at, error) = match &f.transition {
                Transition::RetryAt { run_at, error } => (Some(*run_at), Some(error.as_str())),
                Transition::FailItem { reason, .. } => (None, Some(reason.as_str())),
                _ => (None, f.error.as_deref()),
            };
            let finished = !matches!(new_state, JobState::Queued | JobState::Paused);
            // The fence: only the holder of the current token may finish the
            // job. A cancellation requested meanwhile wins over the result.
            let fenced: Option<bool> = sqlx::query_scalar(
                "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE ?1 END,
                        run_at = COALESCE(?2, run_at), last_error = COALESCE(?3, last_error),
                        lease_owner = NULL, lease_expires_at = NULL, updated_at = ?4,
                        finished_at = CASE WHEN cancel_requested = 1 OR ?5 THEN ?4 ELSE NULL END
                 WHERE id = ?6 AND state = 'running' AND lease_token = ?7
                 RETURNING cancel_requested = 1",
            )
            .bind(new_state.as_str())
            .bind(run_at)
            .bind(error)
            .bind(now)
            .bind(finished)
            .bind(job.id)
            .bind(job.lease_token)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(cancelled) = fenced else {
                insert_event(
                    &mut tx,
                    &NewEvent {
                        at: now,
                        kind: ek::STALE_COMPLETION,
                        item_id: Some(job.item_id),
                        job_id: Some(job.id),
                        process: Some(f.owner.clone()),
                        message: format!(
                            "Discarded the result of attempt {} of job {} (stage `{}`): its lease was lost, so another process owns the job",
                            job.attempt, job.id, job.stage
                        ),
                    },
                )
                .await?;
                results.push(Err(StoreError::LeaseLost));
                continue;
            };
            let passed = matches!(f.transition, Transition::Advance { .. }) && !cancelled;
            attempts.push(AttemptRecord {
                job,
                process: &f.owner,
                outcome: if cancelled {
                    AttemptOutcome::Cancelled
                } else {
                    f.outcome
                },
                started_at: f.started_at,
                finished_at: now,
                exit_code: f.exit_code,
                error: f.error.as_deref(),
                // A passing attempt's output is the stage's output, stored
                // once in `outputs`.
                output: if passed { None } else { f.output.as_deref() },
                stderr: f.stderr.as_deref(),
                usage: f.usage.as_ref(),
            });
            if cancelled {
                results.push(Ok(FinishEffect {
                    item_state: ItemState::Cancelled,
                    enqueued: false,
                    cancelled: true,
                }));
                continue;
            }
            let effect = match &f.transition {
                Transition::Advance { output, next } => {
                    outputs.push((job, output, now));
                    match next {
                        Some(next) => {
                            next_jobs.push((job.item_id, next, now));
                            FinishEffect {
                                item_state: ItemState::Active,
                                enqueued: true,
                                cancelled: false,
                            }
                        }
                        None => {
                            done.push((job.item_id, now));
                            FinishEffect {
                                item_state: ItemState::Done,
                                enqueued: false,
                                cancelled: false,
                            }
                        }
                    }
                }
                Transition::SendBack { feedback, to } => {
                    insert_feedback(&mut tx, job, feedback, now).await?;
                    next_jobs.push((job.item_id, to, now));
                    insert_event(
                        &mut tx,
                        &NewEvent {
                            at: now,
                            kind: ek::GATE_REJECTED,
                            item_id: Some(job.item_id),
                            job_id: Some(job.id),
                            process: Some(f.owner.clone()),
                            message: format!(
                                "Gate `{}` rejected round {}; sent back to `{}` for round {}",
                                job.stage, job.round, to.stage, to.round
                            ),
                        },
                    )
                    .await?;
                    FinishEffect {
                        item_state: ItemState::Active,
                        enqueued: true,
                        cancelled: false,
                    }
                }
                Transition::RetryAt { run_at, error } => {
                    sqlx::query("UPDATE items SET last_error = ?, updated_at = ? WHERE id = ?")
                        .bind(error)
                        .bind(now)
                        .bind(job.item_id)
                        .execute(&mut *tx)
                        .await?;
                    insert_event(
                        &mut tx,
                        &NewEvent {
                            at: now,
                            kind: ek::RETRY_SCHEDULED,
                            item_id: Some(job.item_id),
                            job_id: Some(job.id),
                            process: Some(f.owner.clone()),
                            message: format!(
                                "Attempt {} of {} at stage `{}` failed ({}); retrying in {} ms",
                                job.attempt,
                                job.max_attempts,
                                job.stage,
                                one_line(error),
                                run_at - now
                            ),
                        },
                    )
                    .await?;
                    FinishEffect {
                        item_state: ItemState::Active,
                        enqueued: true,
                        cancelled: false,
                    }
                }
                Transition::FailItem { reason, feedback } => {
                    if let Some(feedback) = feedback {
                        insert_feedback(&mut tx, job, feedback, now).await?;
                    }
                    fail_item(&mut tx, job.item_id, reason, now).await?;
                    insert_event(
                        &mut tx,
                        &NewEvent {
                            at: now,
                            kind: ek::ITEM_FAILED,
                            item_id: Some(job.item_id),
                            job_id: Some(job.id),
                            process: Some(f.owner.clone()),
                            message: format!("Item {} failed: {}", job.item_id, one_line(reason)),
                        },
                    )
                    .await?;
                    FinishEffect {
                        item_state: ItemState::Failed,
                        enqueued: false,
                        cancelled: false,
                    }
                }
                Transition::Pause { reason } => {
                    // A paused try never ran: it does not count.
                    sqlx::query("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?")
                        .bind(job.id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE items SET last_error = ?, updated_at = ? WHERE id = ?")
                        .bind(reason)
                        .bind(now)
                        .bind(job.item_id)
                        .execute(&mut *tx)
                        .await?;
                    insert_event(
                        &mut tx,
                        &NewEvent {
                            at: now,
                            kind: ek::BUDGET_REACHED,
                            item_id: Some(job.item_id),
                            job_id: Some(job.id),
                            process: Some(f.owner.clone()),
                            message: format!(
                                "Item {} paused at stage `{}`: {reason}",
                                job.item_id, job.stage
                            ),
                        },
                    )
                    .await?;
                    FinishEffect {
                        item_state: ItemState::Active,
                        enqueued: false,
                        cancelled: false,
                    }
                }
                Transition::Cancel => {
                    sqlx::query(
                        "UPDATE items SET state = 'cancelled', finished_at = ?1, updated_at = ?1
                         WHERE id = ?2 AND state = 'active'",
                    )
                    .bind(now)
                    .bind(job.item_id)
                    .execute(&mut *tx)
                    .await?;
                    FinishEffect {
                        item_state: ItemState::Cancelled,
                        enqueued: false,
                        cancelled: true,
                    }
                }
            };
            results.push(Ok(effect));
        }
        insert_attempts(&mut tx, &attempts).await?;
        for chunk in outputs.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO outputs (item_id, stage, round, job_id, output, created_at) ",
            );
            q.push_values(chunk, |mut b, (job, output, now)| {
                b.push_bind(job.item_id)
                    .push_bind(&job.stage)
                    .push_bind(job.round)
                    .push_bind(job.id)
                    .push_bind(*output)
                    .push_bind(*now);
            });
            q.build().execute(&mut *tx).await?;
        }
        insert_jobs(&mut tx, &next_jobs).await?;
        for chunk in done.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE items SET state = 'done', last_error = NULL, finished_at = v.column2,
                        updated_at = v.column2
                 FROM (",
            );
            q.push_values(chunk, |mut b, (id, at)| {
                b.push_bind(*id).push_bind(*at);
            });
            q.push(") AS v WHERE items.id = v.column1");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if !next_jobs.is_empty() {
            // Other engines may run the next stage.
            self.notify();
        }
        Ok(results)
    }

    async fn heartbeat(&self, owner: &str, now: Millis, lease_until: Millis) -> Result<Vec<JobId>> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE jobs SET lease_expires_at = ? WHERE lease_owner = ? AND state = 'running'",
        )
        .bind(lease_until)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE processes SET last_beat_at = ? WHERE id = ?")
            .bind(now)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        let cancels = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE lease_owner = ? AND state = 'running' AND cancel_requested = 1",
        )
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(cancels)
    }

    async fn reap_expired(&self, now: Millis) -> Result<Vec<ReapedJob>> {
        // A cheap read first, so that idle processes do not take the write
        // lock on every beat.
        let any: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < ? LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.reader)
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "SELECT id, item_id, stage, round, attempts, max_attempts, lease_token, lease_owner, cancel_requested,
                    COALESCE(started_at, updated_at) AS started_at, run_at
             FROM jobs WHERE state = 'running' AND lease_expires_at < ? LIMIT 1000",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut reaped = Vec::with_capacity(rows.len());
        for r in &rows {
            let job = ClaimedJob {
                id: r.try_get("id")?,
                item_id: r.try_get("item_id")?,
                stage: r.try_get("stage")?,
                round: r.try_get("round")?,
                attempt: r.try_get("attempts")?,
                max_attempts: r.try_get("max_attempts")?,
                lease_token: r.try_get("lease_token")?,
                run_at: r.try_get("run_at")?,
                claimed_at: r.try_get("started_at")?,
            };
            let owner: String = r
                .try_get::<Option<String>, _>("lease_owner")?
                .unwrap_or_default();
            let cancel_requested: bool = r.try_get("cancel_requested")?;
            let action = after_lost(job.attempt, job.max_attempts, cancel_requested);
            let error = format!(
                "lease expired: process {owner} stopped renewing it (killed, hung or cut off)"
            );
            let (state, run_at) = match action {
                LostJob::Requeue => ("queued", now),
                LostJob::Fail => ("failed", job.run_at),
                LostJob::Cancel => ("cancelled", job.run_at),
            };
            sqlx::query(
                "UPDATE jobs SET state = ?1, run_at = ?2, last_error = ?3, lease_owner = NULL, lease_expires_at = NULL,
                        updated_at = ?4, finished_at = CASE WHEN ?1 = 'queued' THEN NULL ELSE ?4 END
                 WHERE id = ?5 AND lease_token = ?6",
            )
            .bind(state)
            .bind(run_at)
            .bind(&error)
            .bind(now)
            .bind(job.id)
            .bind(job.lease_token)
            .execute(&mut *tx)
            .await?;
            insert_interrupted_attempt(&mut tx, &job, &owner, AttemptOutcome::Lost, now, &error)
                .await?;
            let what = match action {
                LostJob::Requeue => format!(
                    "made runnable again (attempt {} of {})",
                    job.attempt, job.max_attempts
                ),
                LostJob::Fail => {
                    let reason = format!(
                        "stage `{}` failed after {} attempts: the last one was lost ({error})",
                        job.stage, job.attempt
                    );
                    fail_item(&mut tx, job.item_id, &reason, now).await?;
                    format!(
                        "item failed: that was attempt {} of {}",
                        job.attempt, job.max_attempts
                    )
                }
                LostJob::Cancel => "its cancellation completed".to_string(),
            };
            insert_event(
                &mut tx,
                &NewEvent {
                    at: now,
                    kind: ek::LEASE_EXPIRED,
                    item_id: Some(job.item_id),
                    job_id: Some(job.id),
                    process: Some(owner.clone()),
                    message: format!(
                        "Recovered job {} (item {}, stage `{}`) from process {owner}, whose lease expired; {what}",
                        job.id, job.item_id, job.stage
                    ),
                },
            )
            .await?;
            reaped.push(ReapedJob {
                job_id: job.id,
                item_id: job.item_id,
                stage: job.stage,
                owner,
                action,
            });
        }
        tx.commit().await?;
        if reaped.iter().any(|r| r.action == LostJob::Requeue) {
            self.notify();
        }
        Ok(reaped)
    }

    async fn expire_process(&self, process: &str, now: Millis) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE jobs SET lease_expires_at = ? WHERE lease_owner = ? AND state = 'running'",
        )
        .bind(now - 1)
        .bind(process)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let marked =
            sqlx::query("UPDATE processes SET stopped_at = ? WHERE id = ? AND stopped_at IS NULL")
                .bind(now)
                .bind(process)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if marked == 0 && n == 0 {
            // Another process recovered it first: nothing to record.
            return Ok(0);
        }
        insert_event(
            &mut tx,
            &NewEvent {
                at: now,
                kind: ek::PROCESS_DEAD,
                item_id: None,
                job_id: None,
                process: Some(process.to_string()),
                message: format!(
                    "Process {process} is gone without stopping cleanly; expired its {n} lease{} so its jobs run again now",
                    if n == 1 { "" } else { "s" }
                ),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn cancel_requests(&self, owner: &str) -> Result<Vec<JobId>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE lease_owner = ? AND state = 'running' AND cancel_requested = 1",
        )
        .bind(owner)
        .fetch_all(&self.reader)
        .await?)
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = ?1, lease_owner = NULL,
                    lease_expires_at = NULL, updated_at = ?1
             WHERE lease_owner = ?2 AND state = 'running'
             RETURNING id, item_id, stage, round, attempts, max_attempts, lease_token, run_at,
                       COALESCE(started_at, ?1) AS started_at",
        )
        .bind(now)
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let job = ClaimedJob {
                id: r.try_get("id")?,
                item_id: r.try_get("item_id")?,
                stage: r.try_get("stage")?,
                round: r.try_get("round")?,
                attempt: r.try_get::<u32, _>("attempts")? + 1,
                max_attempts: r.try_get("max_attempts")?,
                lease_token: r.try_get("lease_token")?,
                run_at: r.try_get("run_at")?,
                claimed_at: r.try_get("started_at")?,
            };
            let note = "the process shut down before the attempt finished; it does not count";
            insert_interrupted_attempt(&mut tx, &job, owner, AttemptOutcome::Released, now, note)
                .await?;
        }
        if !rows.is_empty() {
            insert_event(
                &mut tx,
                &NewEvent {
                    at: now,
                    kind: ek::JOBS_RELEASED,
                    item_id: None,
                    job_id: None,
                    process: Some(owner.to_string()),
                    message: format!(
                        "Shutting down: gave back {} unfinished job{} for another process to run",
                        rows.len(),
                        if rows.len() == 1 { "" } else { "s" }
                    ),
                },
            )
            .await?;
        }
        tx.commit().await?;
        if !rows.is_empty() {
            self.notify();
        }
        Ok(rows.len() as u64)
    }

    async fn next_run_at(&self, stages: &[String]) -> Result<Option<Millis>> {
        let mut next: Option<Millis> = None;
        let mut conn = self.reader.acquire().await?;
        for stage in stages {
            let at: Option<Millis> = sqlx::query_scalar(
                "SELECT MIN(run_at) FROM jobs WHERE state = 'queued' AND stage = ?",
            )
            .bind(stage)
            .fetch_one(&mut *conn)
            .await?;
            next = match (next, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(next)
    }

    async fn pending(&self, horizon: Millis) -> Result<Pending> {
        let r = sqlx::query(
            "SELECT COALESCE(SUM(state = 'queued' AND run_at <= ?1), 0) AS soon,
                    COALESCE(SUM(state = 'running'), 0) AS running,
                    COALESCE(SUM(state = 'queued' AND run_at > ?1), 0) AS later,
                    MIN(CASE WHEN state = 'queued' THEN run_at END) AS next_run_at
             FROM jobs WHERE state IN ('queued', 'running')",
        )
        .bind(horizon)
        .fetch_one(&self.reader)
        .await?;
        Ok(Pending {
            soon: r.try_get::<i64, _>("soon")? as u64,
            running: r.try_get::<i64, _>("running")? as u64,
            later: r.try_get::<i64, _>("later")? as u64,
            next_run_at: r.try_get("next_run_at")?,
        })
    }

    async fn register_process(&self, p: &ProcessInfo) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO processes (id, host, pid, version, started_at, last_beat_at) VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET last_beat_at = excluded.last_beat_at, stopped_at = NULL",
        )
        .bind(&p.id)
        .bind(&p.host)
        .bind(p.pid)
        .bind(&p.version)
        .bind(p.started_at)
        .bind(p.last_beat_at)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            &NewEvent {
                at: p.started_at,
                kind: ek::PROCESS_STARTED,
                item_id: None,
                job_id: None,
                process: Some(p.id.clone()),
                message: format!(
                    "Engine process {} started on {} (pid {}, {})",
                    p.id, p.host, p.pid, p.version
                ),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stop_process(&self, id: &str, now: Millis) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("UPDATE processes SET stopped_at = ?, last_beat_at = ? WHERE id = ?")
            .bind(now)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            &NewEvent {
                at: now,
                kind: ek::PROCESS_STOPPED,
                item_id: None,
                job_id: None,
                process: Some(id.to_string()),
                message: format!("Engine process {id} stopped cleanly"),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        let rows = sqlx::query(
            "SELECT p.id, p.host, p.pid, p.version, p.started_at, p.last_beat_at, p.stopped_at,
                    (SELECT count(*) FROM jobs j WHERE j.lease_owner = p.id AND j.state = 'running') AS held
             FROM processes p WHERE p.stopped_at IS NULL ORDER BY p.started_at DESC",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProcessInfo {
                    id: r.try_get("id")?,
                    host: r.try_get("host")?,
                    pid: r.try_get("pid")?,
                    version: r.try_get("version")?,
                    started_at: r.try_get("started_at")?,
                    last_beat_at: r.try_get("last_beat_at")?,
                    stopped_at: r.try_get("stopped_at")?,
                    held_jobs: r.try_get::<i64, _>("held")? as u64,
                })
            })
            .collect()
    }

    async fn retry_item(&self, id: ItemId, next: &NextJob, now: Millis) -> Result<RetryEffect> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT i.state, j.id AS job_id, j.state AS job_state FROM items i
             LEFT JOIN jobs j ON j.id = i.current_job_id WHERE i.id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NoSuchItem(id))?;
        let state: String = row.try_get("state")?;
        let job_state: Option<String> = row.try_get("job_state")?;
        let message = match (state.as_str(), job_state.as_deref()) {
            ("active", Some("running")) => {
                return Err(StoreError::InvalidRequest(format!(
                    "item {id} is running now; wait for it or cancel it first"
                )));
            }
            ("active", _) => {
                // Waiting for a backoff or a budget: run it now, without a
                // new job.
                let job_id: Option<JobId> = row.try_get("job_id")?;
                sqlx::query(
                    "UPDATE jobs SET state = 'queued', run_at = ?, updated_at = ?
                     WHERE id = ? AND state IN ('queued', 'paused')",
                )
                .bind(now)
                .bind(now)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
                format!("Item {id} retried by hand: its waiting job runs now")
            }
            _ => {
                sqlx::query(
                    "UPDATE items SET state = 'active', finished_at = NULL, last_error = NULL, updated_at = ? WHERE id = ?",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                insert_job(&mut tx, id, next, now, now).await?;
                format!(
                    "Item {id} retried by hand from `{state}`: stage `{}` runs again (round {})",
                    next.stage, next.round
                )
            }
        };
        insert_event(
            &mut tx,
            &NewEvent {
                at: now,
                kind: ek::ITEM_RETRIED,
                item_id: Some(id),
                job_id: None,
                process: None,
                message,
            },
        )
        .await?;
        tx.commit().await?;
        self.notify();
        Ok(RetryEffect {
            stage: next.stage.clone(),
            round: next.round,
        })
    }

    async fn cancel_item(&self, id: ItemId, now: Millis) -> Result<CancelEffect> {
        let mut tx = self.write_tx().await?;
        let state: String = sqlx::query_scalar("SELECT state FROM items WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NoSuchItem(id))?;
        if state != "active" {
            return Err(StoreError::InvalidRequest(format!(
                "item {id} is already {state}; there is nothing to cancel"
            )));
        }
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?1, updated_at = ?1 WHERE item_id = ?2 AND state IN ('queued', 'paused')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let was_running = sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE item_id = ? AND state = 'running'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        sqlx::query(
            "UPDATE items SET state = 'cancelled', last_error = 'cancelled by hand', finished_at = ?1, updated_at = ?1 WHERE id = ?2",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            &NewEvent {
                at: now,
                kind: ek::ITEM_CANCELLED,
                item_id: Some(id),
                job_id: None,
                process: None,
                message: if was_running {
                    format!("Item {id} cancelled by hand; its running job is being stopped")
                } else {
                    format!("Item {id} cancelled by hand")
                },
            },
        )
        .await?;
        tx.commit().await?;
        // Wakes the engine holding the job so that it stops the work now.
        self.notify();
        Ok(CancelEffect { was_running })
    }

    async fn item(&self, id: ItemId) -> Result<ItemDetail> {
        let mut conn = self.reader.acquire().await?;
        // One read transaction, so that the parts agree with each other.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let row = sqlx::query(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NoSuchItem(id))?;
        let item = item_row(&row)?;
        let jobs = sqlx::query(
            "SELECT id, stage, round, state, attempts, max_attempts, run_at, lease_owner, lease_expires_at, last_error,
                    created_at, finished_at
             FROM jobs WHERE item_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(JobRow {
                id: r.try_get("id")?,
                stage: r.try_get("stage")?,
                round: r.try_get("round")?,
                state: job_state(r.try_get("state")?)?,
                attempts: r.try_get("attempts")?,
                max_attempts: r.try_get("max_attempts")?,
                run_at: r.try_get("run_at")?,
                lease_owner: r.try_get("lease_owner")?,
                lease_expires_at: r.try_get("lease_expires_at")?,
                last_error: r.try_get("last_error")?,
                created_at: r.try_get("created_at")?,
                finished_at: r.try_get("finished_at")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let attempts = sqlx::query(
            "SELECT id, job_id, stage, round, attempt, process, outcome, started_at, finished_at, exit_code, error,
                    output, stderr, provider, model, prompt_tokens, completion_tokens, cost, usage_counted
             FROM attempts WHERE item_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            let outcome: String = r.try_get("outcome")?;
            Ok(AttemptRow {
                id: r.try_get("id")?,
                job_id: r.try_get("job_id")?,
                stage: r.try_get("stage")?,
                round: r.try_get("round")?,
                attempt: r.try_get("attempt")?,
                process: r.try_get("process")?,
                outcome: AttemptOutcome::parse(&outcome)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown attempt outcome {outcome:?}")))?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                exit_code: r.try_get("exit_code")?,
                error: r.try_get("error")?,
                output: r.try_get("output")?,
                stderr: r.try_get("stderr")?,
                usage: usage_of(r)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let outputs =
            sqlx::query("SELECT stage, round, job_id, output, created_at FROM outputs WHERE item_id = ? ORDER BY id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(output_row)
                .collect::<Result<Vec<_>>>()?;
        let feedback = sqlx::query(
            "SELECT stage, round, feedback, created_at FROM feedback WHERE item_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(feedback_row)
        .collect::<Result<Vec<_>>>()?;
        let events = sqlx::query(
            "SELECT id, at, kind, item_id, job_id, process, message FROM events WHERE item_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(event_row)
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        let current = jobs.last();
        let display_state = display_state(
            item.state,
            current.map(|j| j.state.as_str()),
            current.map_or(0, |j| j.attempts),
        );
        let usage = attempts.iter().filter_map(|a| a.usage.as_ref()).fold(
            UsageTotals::default(),
            |t, u| UsageTotals {
                prompt_tokens: t.prompt_tokens + u.prompt_tokens,
                completion_tokens: t.completion_tokens + u.completion_tokens,
                cost: t.cost + u.cost,
            },
        );
        Ok(ItemDetail {
            item,
            display_state,
            jobs,
            attempts,
            outputs,
            feedback,
            events,
            usage,
        })
    }

    async fn list_items(&self, filter: &ItemFilter) -> Result<Vec<ItemSummary>> {
        let mut sql = String::from(
            "SELECT i.id, substr(i.text, 1, 500) AS text, i.state, i.stage, i.round, i.last_error, i.created_at,
                    i.updated_at, j.state AS job_state, COALESCE(j.attempts, 0) AS attempts
             FROM items i LEFT JOIN jobs j ON j.id = i.current_job_id WHERE 1 = 1",
        );
        if let Some(state) = filter.state {
            sql.push_str(" AND ");
            sql.push_str(state_clause(state));
        }
        if filter.stage.is_some() {
            sql.push_str(" AND i.stage = ?1");
        }
        if filter.before_id.is_some() {
            sql.push_str(" AND i.id < ?2");
        }
        sql.push_str(" ORDER BY i.id DESC LIMIT ?3");
        let rows = sqlx::query(&sql)
            .bind(&filter.stage)
            .bind(filter.before_id)
            .bind(if filter.limit == 0 { 100 } else { filter.limit })
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                let state = ItemState::parse(&state)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown item state {state:?}")))?;
                let job_state: Option<String> = r.try_get("job_state")?;
                let attempts: u32 = r.try_get("attempts")?;
                Ok(ItemSummary {
                    id: r.try_get("id")?,
                    text: r.try_get("text")?,
                    state,
                    display_state: display_state(state, job_state.as_deref(), attempts),
                    stage: r.try_get("stage")?,
                    round: r.try_get("round")?,
                    attempts,
                    last_error: r.try_get("last_error")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn status(&self, now: Millis) -> Result<StatusSnapshot> {
        let mut conn = self.reader.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut items = ItemCounts::default();
        for r in sqlx::query("SELECT state, count(*) AS n FROM items GROUP BY state")
            .fetch_all(&mut *tx)
            .await?
        {
            let n = r.try_get::<i64, _>("n")? as u64;
            match r.try_get::<String, _>("state")?.as_str() {
                "active" => items.active = n,
                "done" => items.done = n,
                "failed" => items.failed = n,
                "cancelled" => items.cancelled = n,
                _ => {}
            }
        }
        let mut stages: Vec<StageCounts> = Vec::new();
        for r in sqlx::query(
            "SELECT stage, COALESCE(SUM(state = 'queued' AND run_at <= ?1), 0) AS queued,
                    COALESCE(SUM(state = 'queued' AND run_at > ?1), 0) AS scheduled,
                    COALESCE(SUM(state = 'running'), 0) AS running
             FROM jobs WHERE state IN ('queued', 'running') GROUP BY stage",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        {
            stages.push(StageCounts {
                stage: r.try_get("stage")?,
                queued: r.try_get::<i64, _>("queued")? as u64,
                scheduled: r.try_get::<i64, _>("scheduled")? as u64,
                running: r.try_get::<i64, _>("running")? as u64,
            });
        }
        let running = sqlx::query(
            "SELECT id, item_id, stage, round, attempts, lease_owner, COALESCE(started_at, updated_at) AS started_at,
                    lease_expires_at
             FROM jobs WHERE state = 'running' ORDER BY started_at LIMIT 200",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(RunningJob {
                job_id: r.try_get("id")?,
                item_id: r.try_get("item_id")?,
                stage: r.try_get("stage")?,
                round: r.try_get("round")?,
                attempt: r.try_get("attempts")?,
                owner: r.try_get::<Option<String>, _>("lease_owner")?.unwrap_or_default(),
                started_at: r.try_get("started_at")?,
                lease_expires_at: r.try_get::<Option<Millis>, _>("lease_expires_at")?.unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let expired_leases: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_expires_at < ?",
        )
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let oldest_runnable_at: Option<Millis> = sqlx::query_scalar(
            "SELECT MIN(run_at) FROM jobs WHERE state = 'queued' AND run_at <= ?",
        )
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'paused'")
            .fetch_one(&mut *tx)
            .await?;
        let today = usage_since(&mut tx, day_start(now), None).await?;
        tx.commit().await?;
        drop(conn);
        Ok(StatusSnapshot {
            now,
            items,
            stages,
            running,
            processes: self.processes().await?,
            expired_leases: expired_leases as u64,
            oldest_runnable_at,
            paused: paused as u64,
            today,
        })
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let mut sql = String::from(
            "SELECT id, at, kind, item_id, job_id, process, message FROM events WHERE 1 = 1",
        );
        if filter.item.is_some() {
            sql.push_str(" AND item_id = ?1");
        }
        if filter.kind.is_some() {
            sql.push_str(" AND kind = ?2");
        }
        if filter.since.is_some() {
            sql.push_str(" AND at >= ?3");
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?4");
        let mut events = sqlx::query(&sql)
            .bind(filter.item)
            .bind(&filter.kind)
            .bind(filter.since)
            .bind(if filter.limit == 0 { 100 } else { filter.limit })
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(event_row)
            .collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    async fn record_event(&self, event: &NewEvent) -> Result<()> {
        let mut tx = self.write_tx().await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn spend(&self, item: ItemId, day_start: Millis) -> Result<Spend> {
        let mut conn = self.reader.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let spend = Spend {
            item: usage_since(&mut tx, 0, Some(item)).await?,
            day: usage_since(&mut tx, day_start, None).await?,
        };
        tx.commit().await?;
        Ok(spend)
    }

    async fn paused_jobs(&self) -> Result<Vec<PausedJob>> {
        let rows = sqlx::query(
            "SELECT j.id, j.item_id, j.stage, i.last_error,
                    COALESCE((SELECT SUM(prompt_tokens) FROM attempts a WHERE a.item_id = j.item_id), 0) AS pt,
                    COALESCE((SELECT SUM(completion_tokens) FROM attempts a WHERE a.item_id = j.item_id), 0) AS ct,
                    COALESCE((SELECT SUM(cost) FROM attempts a WHERE a.item_id = j.item_id), 0.0) AS cost
             FROM jobs j JOIN items i ON i.id = j.item_id WHERE j.state = 'paused' ORDER BY j.id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PausedJob {
                    job_id: r.try_get("id")?,
                    item_id: r.try_get("item_id")?,
                    stage: r.try_get("stage")?,
                    reason: r.try_get("last_error")?,
                    item_usage: UsageTotals {
                        prompt_tokens: r.try_get::<i64, _>("pt")? as u64,
                        completion_tokens: r.try_get::<i64, _>("ct")? as u64,
                        cost: r.try_get("cost")?,
                    },
                })
            })
            .collect()
    }

    async fn resume_jobs(&self, jobs: &[JobId], now: Millis) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let mut resumed = 0;
        for id in jobs {
            let item: Option<ItemId> = sqlx::query_scalar(
                "UPDATE jobs SET state = 'queued', run_at = ?1, updated_at = ?1 WHERE id = ?2 AND state = 'paused'
                 RETURNING item_id",
            )
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(item) = item {
                resumed += 1;
                insert_event(
                    &mut tx,
                    &NewEvent {
                        at: now,
                        kind: ek::BUDGET_RESUMED,
                        item_id: Some(item),
                        job_id: Some(*id),
                        process: None,
                        message: format!("Item {item} resumed: its budget allows more work now"),
                    },
                )
                .await?;
            }
        }
        tx.commit().await?;
        if resumed > 0 {
            self.notify();
        }
        Ok(resumed)
    }

    async fn prune(&self, before: Millis) -> Result<PruneCounts> {
        let mut counts = PruneCounts::default();
        // Small batches, so that engines are never locked out for long.
        loop {
            let mut tx = self.write_tx().await?;
            let n = sqlx::query(
                "DELETE FROM items WHERE id IN (SELECT id FROM items WHERE state IN ('done', 'failed', 'cancelled')
                                                AND finished_at < ? LIMIT 500)",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            counts.items += n;
            if n < 500 {
                break;
            }
        }
        let mut tx = self.write_tx().await?;
        counts.events = sqlx::query("DELETE FROM events WHERE at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM processes WHERE stopped_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        if counts.items > 0 || counts.events > 0 {
            insert_event(
                &mut tx,
                &NewEvent {
                    at: now_millis(),
                    kind: ek::PRUNED,
                    item_id: None,
                    job_id: None,
                    process: None,
                    message: format!(
                        "Pruned {} finished items and {} events older than the retention",
                        counts.items, counts.events
                    ),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(counts)
    }

    fn subscribe(&self) -> Result<Box<dyn WorkSignal>> {
        match &self.wake {
            Some(wake) => Ok(Box::new(wake.subscribe()?)),
            None => Ok(Box::new(NeverSignal)),
        }
    }

    fn notify(&self) {
        if let Some(wake) = &self.wake {
            wake.notify();
        }
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn quick_check(&self) -> Result<Vec<String>> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    async fn attempt_stats(&self, since: Millis) -> Result<Vec<StageAttempts>> {
        // The newest attempts by rowid: bounded work however long the history.
        let rows = sqlx::query(
            "SELECT stage,
                    COALESCE(SUM(outcome IN ('succeeded', 'rejected')), 0) AS worked,
                    COALESCE(SUM(outcome IN ('error', 'timeout', 'permanent', 'lost')), 0) AS failed,
                    (SELECT a2.error FROM attempts a2
                      WHERE a2.stage = recent.stage AND a2.finished_at >= ?1
                        AND a2.outcome IN ('error', 'timeout', 'permanent', 'lost')
                      ORDER BY a2.id DESC LIMIT 1) AS last_error
             FROM (SELECT stage, outcome FROM attempts
                   WHERE id > (SELECT COALESCE(MAX(id), 0) FROM attempts) - 50000 AND finished_at >= ?1) AS recent
             GROUP BY stage HAVING worked + failed > 0 ORDER BY stage",
        )
        .bind(since)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let worked = r.try_get::<i64, _>("worked")? as u64;
                let failed = r.try_get::<i64, _>("failed")? as u64;
                Ok(StageAttempts {
                    stage: r.try_get("stage")?,
                    attempts: worked + failed,
                    worked,
                    failed,
                    last_error: r
                        .try_get::<Option<String>, _>("last_error")?
                        .map(|e| one_line(&e)),
                })
            })
            .collect()
    }

    async fn queue_depth(&self, now: Millis) -> Result<Vec<StageCounts>> {
        // Two reads, each over a partial index of unfinished jobs only, so
        // that a beat costs the same with a million finished jobs as with none.
        let mut conn = self.reader.acquire().await?;
        let mut counts: std::collections::BTreeMap<String, StageCounts> = Default::default();
        for r in sqlx::query(
            "SELECT stage, COALESCE(SUM(run_at <= ?1), 0) AS queued, COALESCE(SUM(run_at > ?1), 0) AS scheduled
             FROM jobs WHERE state = 'queued' GROUP BY stage",
        )
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
        {
            let stage: String = r.try_get("stage")?;
            let c = counts.entry(stage.clone()).or_insert_with(|| StageCounts {
                stage,
                ..StageCounts::default()
            });
            c.queued = r.try_get::<i64, _>("queued")? as u64;
            c.scheduled = r.try_get::<i64, _>("scheduled")? as u64;
        }
        for r in sqlx::query(
            "SELECT stage, count(*) AS running FROM jobs WHERE state = 'running' GROUP BY stage",
        )
        .fetch_all(&mut *conn)
        .await?
        {
            let stage: String = r.try_get("stage")?;
            let c = counts.entry(stage.clone()).or_insert_with(|| StageCounts {
                stage,
                ..StageCounts::default()
            });
            c.running = r.try_get::<i64, _>("running")? as u64;
        }
        Ok(counts.into_values().collect())
    }
}

async fn insert_feedback(
    tx: &mut Transaction<'static, Sqlite>,
    job: &ClaimedJob,
    feedback: &str,
    now: Millis,
) -> Result<()> {
    sqlx::query("INSERT INTO feedback (item_id, stage, round, job_id, feedback, created_at) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(job.item_id)
        .bind(&job.stage)
        .bind(job.round)
        .bind(job.id)
        .bind(feedback)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Model usage recorded on attempts since `since`, of one item or of all.
async fn usage_since(
    tx: &mut Transaction<'_, Sqlite>,
    since: Millis,
    item: Option<ItemId>,
) -> Result<UsageTotals> {
    let r = sqlx::query(
        "SELECT COALESCE(SUM(prompt_tokens), 0) AS pt, COALESCE(SUM(completion_tokens), 0) AS ct,
                COALESCE(SUM(cost), 0.0) AS cost
         FROM attempts WHERE prompt_tokens IS NOT NULL AND finished_at >= ?1 AND (?2 IS NULL OR item_id = ?2)",
    )
    .bind(since)
    .bind(item)
    .fetch_one(&mut **tx)
    .await?;
    Ok(UsageTotals {
        prompt_tokens: r.try_get::<i64, _>("pt")? as u64,
        completion_tokens: r.try_get::<i64, _>("ct")? as u64,
        cost: r.try_get("cost")?,
    })
}

/// Midnight UTC of the day holding `now`.
pub fn day_start(now: Millis) -> Millis {
    now - now.rem_euclid(86_400_000)
}

fn usage_of(r: &SqliteRow) -> Result<Option<Usage>> {
    let Some(provider) = r.try_get::<Option<String>, _>("provider")? else {
        return Ok(None);
    };
    Ok(Some(Usage {
        provider,
        model: r.try_get::<Option<String>, _>("model")?.unwrap_or_default(),
        prompt_tokens: r.try_get::<Option<i64>, _>("prompt_tokens")?.unwrap_or(0) as u64,
        completion_tokens: r
            .try_get::<Option<i64>, _>("completion_tokens")?
            .unwrap_or(0) as u64,
        cost: r.try_get::<Option<f64>, _>("cost")?.unwrap_or(0.0),
        counted: r
            .try_get::<Option<bool>, _>("usage_counted")?
            .unwrap_or(false),
    }))
}

fn one_line(s: &str) -> String {
    let line = s.trim().lines().next().unwrap_or("");
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    }
}
