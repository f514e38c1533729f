//! The SQLite store: WAL mode, one writer connection (so writes in this
//! process never contend with each other), a small pool of readers, and
//! Unix-socket wake-ups for other processes.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ideamill_core::machine::{LostJob, NextJob};
use ideamill_core::{AttemptOutcome, ItemId, JobId, Millis};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use crate::common::{self, AttemptRecord, ITEM_COLUMNS, RowExt, now_millis};
use crate::wake::{NeverSignal, WakeDir, WorkSignal};
use crate::*;

pub use crate::common::day_start;

common::impl_row_ext!(SqliteRow);

/// Schema migrations, embedded in the binary, applied in order at open.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_intake.sql")),
    (3, include_str!("../migrations/sqlite/0003_dashboard.sql")),
    (
        4,
        include_str!("../migrations/sqlite/0004_status_reads.sql"),
    ),
    (
        5,
        include_str!("../migrations/sqlite/0005_id_high_water.sql"),
    ),
];
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

pub struct SqliteStore {
    path: PathBuf,
    writer: SqlitePool,
    reader: SqlitePool,
    wake: Option<WakeDir>,
}

/// The database private to the mill's user (0600): created so when new
/// (SQLite gives its -wal and -shm files the same mode), narrowed when not.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map(drop),
        Err(e) => Err(e),
    }
}

impl SqliteStore {
    pub async fn open(url: &str, options: &OpenOptions) -> Result<SqliteStore> {
        let path = PathBuf::from(url.strip_prefix("sqlite://").unwrap_or(url));
        if options.must_exist && !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        if let Some(parent) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        // Look before touching: a database from a newer build, or another
        // program's, must be refused before any pragma (WAL) changes its file.
        if path.exists() {
            inspect(&path).await?;
        }
        private_file(&path)?;
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

    /// One page of item summaries. `from_where` is the FROM clause and a
    /// first condition; `text`, when given, is bound as parameter 4.
    async fn item_page(
        &self,
        from_where: &str,
        id_column: &str,
        filter: &ItemFilter,
        text: Option<String>,
    ) -> Result<Vec<ItemSummary>> {
        let sql = common::item_page_sql(
            format!("{} {from_where}", common::ITEM_SUMMARY_SELECT),
            filter,
            id_column,
            '?',
        );
        let mut query = sqlx::query(&sql)
            .bind(&filter.stage)
            .bind(filter.before_id)
            .bind(common::page_limit(filter));
        if let Some(text) = text {
            query = query.bind(text);
        }
        let rows = query.fetch_all(&self.reader).await?;
        rows.iter().map(common::item_summary).collect()
    }

    /// A write transaction that takes the write lock at once, so that a read
    /// inside it can never be invalidated by another process's commit.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        match self.writer.begin_with("BEGIN IMMEDIATE").await {
            // A write that SQLite rolled back on its own (a full disk: an
            // error in the statement or the COMMIT) leaves sqlx counting a
            // transaction that no longer exists, and every later BEGIN fails.
            // Replace the writer connection: closing it also ends whatever
            // SQLite may still hold.
            Err(sqlx::Error::InvalidSavePointStatement) => {
                tracing::warn!(
                    "The SQLite writer was left inside a failed transaction; reopening it"
                );
                let stuck = self.writer.acquire().await?;
                let _ = stuck.close().await;
                Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
            }
            begun => Ok(begun?),
        }
    }
}

fn open_error(path: &Path, e: sqlx::Error) -> StoreError {
    // SQLite's primary result code: the low byte of the extended one.
    let code = match &e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff),
        _ => None,
    };
    const CORRUPT: i32 = 11;
    const NOT_A_DATABASE: i32 = 26;
    let what = format!("cannot open the database at {}: {e}", path.display());
    match code {
        Some(CORRUPT | NOT_A_DATABASE) => StoreError::Corrupt(what),
        // I/O, a full disk, a lock, permissions: the file may be fine.
        _ => StoreError::Unavailable(match free_disk_kib(path) {
            Some(free) if free < 1024 => {
                format!("{what} (the disk holding it has {free} KiB free)")
            }
            _ => what,
        }),
    }
}

/// Free space, in KiB, on the file system holding `path`'s folder.
fn free_disk_kib(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct it is given; `c` outlives the call.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0)
            .then(|| st.f_bavail as u64 * st.f_frsize as u64 / 1024)
    }
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
    insert_attempts(
        tx,
        &[AttemptRecord::interrupted(job, process, outcome, now, note)],
    )
    .await
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

#[async_trait]
impl Store for SqliteStore {
    async fn add_items(
        &self,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
    ) -> Result<Vec<ItemId>> {
        let items = common::storable_items(items);
        let items: &[NewItem] = &items;
        let mut tx = self.write_tx().await?;
        let ids = insert_new_items(&mut tx, items, first, now).await?;
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
                let job = common::claimed_job(r, 0, Some(now))?;
                Ok((r.int("priority")?, job))
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
            item: common::item_row(&row)?,
            outputs: serde_json::from_str(&outputs)
                .map_err(|e| StoreError::Corrupt(format!("outputs of item {item}: {e}")))?,
            feedback: serde_json::from_str(&feedback)
                .map_err(|e| StoreError::Corrupt(format!("feedback of item {item}: {e}")))?,
        })
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>> {
        let finishes = common::storable_finishes(finishes);
        let finishes: &[Finish] = &finishes;
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
            let fence = common::fence(f);
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
            .bind(fence.state)
            .bind(fence.run_at)
            .bind(fence.error)
            .bind(now)
            .bind(fence.finished)
            .bind(job.id)
            .bind(job.lease_token)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(cancelled) = fenced else {
                insert_event(&mut tx, &common::stale_completion(f)).await?;
                results.push(Err(StoreError::LeaseLost));
                continue;
            };
            let plan = common::plan(f, cancelled);
            attempts.push(plan.attempt);
            if let Some(output) = plan.output {
                outputs.push((job, output, now));
            }
            if let Some(next) = plan.next {
                next_jobs.push((job.item_id, next, now));
            }
            if plan.done {
                done.push((job.item_id, now));
            }
            if let Some(feedback) = plan.feedback {
                insert_feedback(&mut tx, job, feedback, now).await?;
            }
            if plan.uncount {
                // A paused try never ran: it does not count.
                sqlx::query("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?")
                    .bind(job.id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(error) = plan.item_error {
                sqlx::query("UPDATE items SET last_error = ?, updated_at = ? WHERE id = ?")
                    .bind(error)
                    .bind(now)
                    .bind(job.item_id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(reason) = plan.fail_reason {
                fail_item(&mut tx, job.item_id, reason, now).await?;
            }
            if plan.cancel_item {
                sqlx::query(
                    "UPDATE items SET state = 'cancelled', finished_at = ?1, updated_at = ?1
                     WHERE id = ?2 AND state = 'active'",
                )
                .bind(now)
                .bind(job.item_id)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(event) = &plan.event {
                insert_event(&mut tx, event).await?;
            }
            results.push(Ok(plan.effect));
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

    async fn heartbeat(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        running: &[JobId],
    ) -> Result<Vec<JobId>> {
        let mut tx = self.write_tx().await?;
        // Only the jobs the process still runs: one it holds but no longer
        // runs must be left to expire.
        let renewed = sqlx::query(
            "UPDATE jobs SET lease_expires_at = ?1
             WHERE id IN (SELECT value FROM json_each(?2)) AND lease_owner = ?3 AND state = 'running'
             RETURNING id, cancel_requested",
        )
        .bind(lease_until)
        .bind(serde_json::Value::from(running).to_string())
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("UPDATE processes SET last_beat_at = ? WHERE id = ?")
            .bind(now)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut cancels = Vec::new();
        for r in &renewed {
            if r.int("cancel_requested")? != 0 {
                cancels.push(r.int("id")?);
            }
        }
        cancels.sort_unstable();
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
            let job = common::claimed_job(r, 0, None)?;
            let owner: String = r.opt_text("lease_owner")?.unwrap_or_default();
            let reap = common::reap(&job, &owner, r.flag("cancel_requested")?, now);
            sqlx::query(
                "UPDATE jobs SET state = ?1, run_at = ?2, last_error = ?3, lease_owner = NULL, lease_expires_at = NULL,
                        updated_at = ?4, finished_at = CASE WHEN ?1 = 'queued' THEN NULL ELSE ?4 END
                 WHERE id = ?5 AND lease_token = ?6",
            )
            .bind(reap.state)
            .bind(reap.run_at)
            .bind(&reap.error)
            .bind(now)
            .bind(job.id)
            .bind(job.lease_token)
            .execute(&mut *tx)
            .await?;
            insert_interrupted_attempt(
                &mut tx,
                &job,
                &owner,
                AttemptOutcome::Lost,
                now,
                &reap.error,
            )
            .await?;
            if let Some(reason) = &reap.fail_reason {
                fail_item(&mut tx, job.item_id, reason, now).await?;
            }
            insert_event(&mut tx, &reap.event).await?;
            reaped.push(ReapedJob {
                job_id: job.id,
                item_id: job.item_id,
                stage: job.stage,
                owner,
                action: reap.action,
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
        insert_event(&mut tx, &common::process_dead(process, n, now)).await?;
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
            let job = common::claimed_job(r, 1, None)?;
            insert_interrupted_attempt(
                &mut tx,
                &job,
                owner,
                AttemptOutcome::Released,
                now,
                common::RELEASED_NOTE,
            )
            .await?;
        }
        if !rows.is_empty() {
            insert_event(&mut tx, &common::jobs_released(owner, rows.len(), now)).await?;
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
        insert_event(&mut tx, &common::process_started(p)).await?;
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
        insert_event(&mut tx, &common::process_stopped(id, now)).await?;
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
        rows.iter().map(common::process_row).collect()
    }

    async fn retry_item(&self, id: ItemId, next: &NextJob, now: Millis) -> Result<RetryEffect> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT i.state, j.id AS job_id, j.state AS job_state, j.stage AS job_stage FROM items i
             LEFT JOIN jobs j ON j.id = i.current_job_id WHERE i.id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NoSuchItem(id))?;
        let state: String = row.try_get("state")?;
        let job_state: Option<String> = row.try_get("job_state")?;
        if let Some(refusal) = common::retry_refusal(id, &state, job_state.as_deref()) {
            return Err(refusal);
        }
        let event = match state.as_str() {
            "active"
                if row
                    .try_get::<Option<String>, _>("job_stage")?
                    .is_some_and(|stage| stage != next.stage) =>
            {
                // Waiting on another stage (one the config may no longer
                // have): that job is cancelled, the named stage runs.
                let job_id: Option<JobId> = row.try_get("job_id")?;
                let from: String = row.try_get("job_stage")?;
                sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', updated_at = ?
                     WHERE id = ? AND state IN ('queued', 'paused')",
                )
                .bind(now)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
                insert_job(&mut tx, id, next, now, now).await?;
                common::retried_moved(id, &from, next, now)
            }
            "active" => {
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
                common::retried_waiting(id, now)
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
                common::retried_again(id, &state, next, now)
            }
        };
        insert_event(&mut tx, &event).await?;
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
            return Err(common::not_cancellable(id, &state));
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
        insert_event(&mut tx, &common::item_cancelled(id, was_running, now)).await?;
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
        let item = common::item_row(&row)?;
        let jobs = sqlx::query(
            "SELECT id, stage, round, state, attempts, max_attempts, run_at, lease_owner, lease_expires_at, last_error,
                    created_at, finished_at
             FROM jobs WHERE item_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::job_row)
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
        .map(common::attempt_row)
        .collect::<Result<Vec<_>>>()?;
        let outputs =
            sqlx::query("SELECT stage, round, job_id, output, created_at FROM outputs WHERE item_id = ? ORDER BY id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(common::output_row)
                .collect::<Result<Vec<_>>>()?;
        let feedback = sqlx::query(
            "SELECT stage, round, feedback, created_at FROM feedback WHERE item_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::feedback_row)
        .collect::<Result<Vec<_>>>()?;
        let events = sqlx::query(
            "SELECT id, at, kind, item_id, job_id, process, message FROM events WHERE item_id = ? ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::event_row)
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(common::item_detail(
            item, jobs, attempts, outputs, feedback, events,
        ))
    }

    async fn list_items(&self, filter: &ItemFilter) -> Result<Vec<ItemSummary>> {
        self.item_page(
            "FROM items i LEFT JOIN jobs j ON j.id = i.current_job_id WHERE 1 = 1",
            "i.id",
            filter,
            None,
        )
        .await
    }

    async fn status(&self, now: Millis) -> Result<StatusSnapshot> {
        let mut conn = self.reader.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut items = ItemCounts::default();
        // Kept by triggers (0004_status_reads.sql): four rows, not a count.
        for r in sqlx::query("SELECT state, n FROM item_counts")
            .fetch_all(&mut *tx)
            .await?
        {
            let n = r.count("n")?;
            match r.text("state")?.as_str() {
                "active" => items.active = n,
                "done" => items.done = n,
                "failed" => items.failed = n,
                "cancelled" => items.cancelled = n,
                _ => {}
            }
        }
        // Two reads, each over a partial index of unfinished jobs (`state IN
        // (...)` would use neither and scan every job ever run).
        let mut counts: std::collections::BTreeMap<String, StageCounts> = Default::default();
        for r in sqlx::query(
            "SELECT stage, COALESCE(SUM(run_at <= ?1), 0) AS queued, COALESCE(SUM(run_at > ?1), 0) AS scheduled
             FROM jobs WHERE state = 'queued' GROUP BY stage",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        {
            let c = common::stage_counts(&mut counts, r.text("stage")?);
            c.queued = r.count("queued")?;
            c.scheduled = r.count("scheduled")?;
        }
        for r in sqlx::query(
            "SELECT stage, count(*) AS running FROM jobs WHERE state = 'running' GROUP BY stage",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            common::stage_counts(&mut counts, r.text("stage")?).running = r.count("running")?;
        }
        let stages: Vec<StageCounts> = counts.into_values().collect();
        let running = sqlx::query(
            "SELECT id, item_id, stage, round, attempts, lease_owner, COALESCE(started_at, updated_at) AS started_at,
                    lease_expires_at
             FROM jobs WHERE state = 'running' ORDER BY started_at LIMIT 200",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::running_job)
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
        let today = usage_since(&mut tx, common::day_start(now), None).await?;
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
            .map(common::event_row)
            .collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    async fn record_event(&self, event: &NewEvent) -> Result<()> {
        let event = common::storable_event(event);
        let event: &NewEvent = &event;
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
                    item_usage: common::usage_totals(r)?,
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
                insert_event(&mut tx, &common::budget_resumed(item, *id, now)).await?;
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
            let ids: Vec<ItemId> = sqlx::query_scalar(
                "DELETE FROM items WHERE id IN (SELECT id FROM items WHERE state IN ('done', 'failed', 'cancelled')
                                                AND finished_at < ? LIMIT ?)
                 RETURNING id",
            )
            .bind(before)
            .bind(common::PRUNE_BATCH as i64)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let n = ids.len() as u64;
            counts.items += n;
            counts.item_ids.extend(ids);
            if n < common::PRUNE_BATCH {
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
            insert_event(&mut tx, &common::pruned(&counts)).await?;
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
        rows.iter().map(common::stage_attempts).collect()
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

    async fn add_items_once(
        &self,
        source: &IntakeSource,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
    ) -> Result<AddOutcome> {
        let (source, items) = (
            common::storable_source(source),
            common::storable_items(items),
        );
        let (source, items): (&IntakeSource, &[NewItem]) = (&source, &items);
        // The write lock is taken first, so two processes taking the same
        // content at once cannot both find it new.
        let mut tx = self.write_tx().await?;
        if let Some(record) = intake_record(&mut tx, &source.key).await? {
            tx.rollback().await?;
            return Ok(AddOutcome::Duplicate(record));
        }
        let ids = insert_new_items(&mut tx, items, first, now).await?;
        insert_intake_record(&mut tx, source, &ids, now).await?;
        tx.commit().await?;
        self.notify();
        Ok(AddOutcome::Added(ids))
    }

    async fn import_items(
        &self,
        items: &[ImportedItem],
        now: Millis,
    ) -> Result<Vec<ImportOutcome>> {
        let items = common::storable_imports(items);
        let items: &[ImportedItem] = &items;
        let mut tx = self.write_tx().await?;
        let mut outcomes = Vec::with_capacity(items.len());
        let mut queued = false;
        for item in items {
            if let Some(record) = intake_record(&mut tx, &item.source.key).await? {
                outcomes.push(ImportOutcome::Skipped(record));
                continue;
            }
            let (state, stage, round, last_error, finished_at) = match &item.state {
                ImportedState::Queued { next } | ImportedState::Rejected { next, .. } => {
                    ("active", Some(next.stage.as_str()), next.round, None, None)
                }
                ImportedState::Done => ("done", None, 1, None, Some(now)),
                ImportedState::Failed { error, stage } => (
                    "failed",
                    Some(stage.as_str()),
                    1,
                    Some(error.as_str()),
                    Some(now),
                ),
            };
            let id = next_item_id(&mut tx).await?;
            sqlx::query(
                "INSERT INTO items (id, text, metadata, state, stage, round, last_error, created_at, updated_at, finished_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(&item.text)
            .bind(item.metadata.to_string())
            .bind(state)
            .bind(stage)
            .bind(round)
            .bind(last_error)
            .bind(item.created_at)
            .bind(now)
            .bind(finished_at)
            .execute(&mut *tx)
            .await?;
            if let ImportedState::Rejected { rejections, .. } = &item.state {
                // Each rejection is a finished gate job with its feedback,
                // as if the gate had run here.
                for r in rejections {
                    let job: JobId = sqlx::query_scalar(
                        "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at, finished_at)
                         VALUES (?1, ?2, ?3, 'rejected', ?4, 1, ?4, ?4, ?4) RETURNING id",
                    )
                    .bind(id)
                    .bind(&r.stage)
                    .bind(r.round)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO feedback (item_id, stage, round, job_id, feedback, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(id)
                    .bind(&r.stage)
                    .bind(r.round)
                    .bind(job)
                    .bind(&r.feedback)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            if let ImportedState::Queued { next } | ImportedState::Rejected { next, .. } =
                &item.state
            {
                // Inserted last, so the trigger makes it the current job.
                insert_job(&mut tx, id, next, now, now).await?;
                queued = true;
            }
            insert_intake_record(&mut tx, &item.source, &[id], now).await?;
            outcomes.push(ImportOutcome::Imported(id));
        }
        tx.commit().await?;
        if queued {
            self.notify();
        }
        Ok(outcomes)
    }

    async fn search_items(&self, filter: &ItemFilter, text: &str) -> Result<Vec<ItemSummary>> {
        let terms = crate::search_terms(text);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        // FTS5 hands out matches by rowid, newest first, so a page stops
        // reading as soon as it is full.
        let query = crate::dashboard::fts5_query(&terms);
        self.item_page(
            "FROM items_fts f JOIN items i ON i.id = f.rowid LEFT JOIN jobs j ON j.id = i.current_job_id WHERE items_fts MATCH ?4",
            "f.rowid",
            filter,
            Some(query),
        )
        .await
    }

    async fn activity(
        &self,
        since: Millis,
        bucket: Millis,
        now: Millis,
    ) -> Result<Vec<ActivityBucket>> {
        let bucket = bucket.max(1);
        let since = since.max(now - bucket * (crate::dashboard::MAX_BUCKETS - 1));
        let mut conn = self.reader.acquire().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut rows = Vec::new();
        for r in sqlx::query(
            "SELECT (finished_at - ?1) / ?2 AS b, count(*) AS n,
                    COALESCE(SUM(outcome IN ('error', 'timeout', 'permanent', 'lost')), 0) AS failed
             FROM attempts WHERE finished_at >= ?1 AND outcome NOT IN ('cancelled', 'released', 'paused')
             GROUP BY b",
        )
        .bind(since)
        .bind(bucket)
        .fetch_all(&mut *tx)
        .await?
        {
            rows.push((r.int("b")?, r.count("n")?, r.count("failed")?, 0, 0));
        }
        for r in sqlx::query(
            "SELECT (finished_at - ?1) / ?2 AS b, COALESCE(SUM(state = 'done'), 0) AS done,
                    COALESCE(SUM(state = 'failed'), 0) AS failed
             FROM items WHERE finished_at >= ?1 GROUP BY b",
        )
        .bind(since)
        .bind(bucket)
        .fetch_all(&mut *tx)
        .await?
        {
            rows.push((r.int("b")?, 0, 0, r.count("done")?, r.count("failed")?));
        }
        tx.commit().await?;
        Ok(crate::dashboard::fill_buckets(since, bucket, now, &rows))
    }

    async fn change_marker(&self) -> Result<ChangeMarker> {
        // Each MAX(id) is the last entry of a rowid table; the running
        // count reads the partial index of running jobs.
        let r = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM items) AS item,
                    (SELECT COALESCE(MAX(id), 0) FROM jobs) AS job,
                    (SELECT COALESCE(MAX(id), 0) FROM attempts) AS attempt,
                    (SELECT COALESCE(MAX(id), 0) FROM events) AS event,
                    (SELECT count(*) FROM jobs WHERE state = 'running') AS running",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(ChangeMarker {
            item: r.int("item")?,
            job: r.int("job")?,
            attempt: r.int("attempt")?,
            event: r.int("event")?,
            running: r.count("running")?,
        })
    }
}

async fn intake_record(
    tx: &mut Transaction<'static, Sqlite>,
    key: &str,
) -> Result<Option<IntakeRecord>> {
    let Some(r) =
        sqlx::query("SELECT key, name, item_ids, created_at FROM intake_sources WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?
    else {
        return Ok(None);
    };
    let ids: String = r.try_get("item_ids")?;
    Ok(Some(IntakeRecord {
        key: r.try_get("key")?,
        name: r.try_get("name")?,
        item_ids: serde_json::from_str(&ids)
            .map_err(|e| StoreError::Corrupt(format!("item ids of intake source {key}: {e}")))?,
        taken_at: r.try_get("created_at")?,
    }))
}

async fn insert_intake_record(
    tx: &mut Transaction<'static, Sqlite>,
    source: &IntakeSource,
    ids: &[ItemId],
    now: Millis,
) -> Result<()> {
    sqlx::query("INSERT INTO intake_sources (key, name, item_ids, created_at) VALUES (?, ?, ?, ?)")
        .bind(&source.key)
        .bind(&source.name)
        .bind(serde_json::Value::from(ids).to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The id the next new item gets: above every id in use and every id ever
/// deleted (`id_high_water`), so that no id is given twice, even after the
/// newest items were pruned. Read inside the write transaction that inserts.
async fn next_item_id(tx: &mut Transaction<'static, Sqlite>) -> Result<ItemId> {
    let id: ItemId = sqlx::query_scalar(
        "SELECT MAX(COALESCE((SELECT MAX(id) FROM items), 0),
                    COALESCE((SELECT id FROM id_high_water WHERE name = 'items'), 0)) + 1",
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(id)
}

/// New active items, each with its first job `first`; ids in input order.
async fn insert_new_items(
    tx: &mut Transaction<'static, Sqlite>,
    items: &[NewItem],
    first: &NextJob,
    now: Millis,
) -> Result<Vec<ItemId>> {
    let first_id = next_item_id(tx).await?;
    let ids: Vec<ItemId> = (first_id..).take(items.len()).collect();
    for (chunk, chunk_ids) in items.chunks(CHUNK).zip(ids.chunks(CHUNK)) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO items (id, text, metadata, state, stage, round, created_at, updated_at) ",
        );
        q.push_values(chunk.iter().zip(chunk_ids), |mut b, (item, id)| {
            b.push_bind(*id)
                .push_bind(&item.text)
                .push_bind(item.metadata.to_string())
                .push_bind("active")
                .push_bind(&first.stage)
                .push_bind(first.round)
                .push_bind(now)
                .push_bind(now);
        });
        q.build().execute(&mut **tx).await?;
    }
    let jobs: Vec<(ItemId, &NextJob, Millis)> = ids.iter().map(|id| (*id, first, now)).collect();
    insert_jobs(tx, &jobs).await?;
    Ok(ids)
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
    common::usage_totals(&r)
}
