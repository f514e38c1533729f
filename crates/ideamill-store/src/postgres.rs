//! The PostgreSQL store, for many engine processes on many machines sharing
//! one database. Same semantics as the SQLite store (one conformance suite
//! checks both); what differs is how concurrency is kept safe:
//!
//! - A claim is one statement that locks its rows with `FOR UPDATE SKIP
//!   LOCKED`, so concurrent claimers never wait for or share a job.
//! - A finish is fenced by the job row's `lease_token` in an `UPDATE`, which
//!   takes the row lock and re-checks its condition after any concurrent
//!   writer commits (the reaper, another owner).
//! - Writes lock jobs before items, everywhere, so that two transactions
//!   never wait for each other in a cycle.
//! - Wake-ups are `NOTIFY` inside the transaction that enqueues work, so an
//!   engine is woken exactly when the work is visible; `LISTEN` runs on a
//!   connection of its own (`PgSignal`). A lost notification only delays
//!   work until the engine's poll.
//! - Batched writes use `UNNEST` over arrays: one statement per kind of row,
//!   whatever the batch size.
//!
//! - Leases are judged by the database server's clock, not the callers':
//!   a claim or a heartbeat leases until the server's `now()` plus the lease
//!   the caller asked for (`lease_until - now`), and the reaper compares
//!   with the server's `now()`. Processes on many machines then agree on
//!   when a lease ends even if their clocks do not: a machine whose clock
//!   runs ahead cannot reap healthy workers' jobs. The `now` the trait
//!   passes is ignored for these; the times recorded on rows (`started_at`,
//!   `finished_at`, events) stay the caller's.
//!
//! The pool reconnects by itself: after a dropped connection or a server
//! restart, calls fail until the server answers again, then work.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ideamill_core::machine::NextJob;
use ideamill_core::{AttemptOutcome, ItemId, JobId, Millis, Usage};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::common::{self, AttemptRecord, ITEM_COLUMNS, RowExt};
use crate::wake::WorkSignal;
use crate::*;

common::impl_row_ext!(PgRow);

/// Schema migrations, embedded in the binary, applied in order at open.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_intake.sql")),
    (3, include_str!("../migrations/postgres/0003_dashboard.sql")),
    (
        4,
        include_str!("../migrations/postgres/0004_item_counts.sql"),
    ),
];
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The channel engines `LISTEN` on; a notification means "new work".
const CHANNEL: &str = "ideamill_work";

/// The advisory lock that serializes migrators ("ideamill" in ASCII).
const MIGRATION_LOCK: i64 = 0x6964_6561_6d69_6c6c;

/// Connections per process: the dispatcher, the completer, the heartbeat,
/// the listener and job tasks reading their context share them.
const POOL_SIZE: u32 = 8;

type Tx = Transaction<'static, Postgres>;

/// The database server's clock in ms since the Unix epoch, as SQL: the
/// transaction's start (`now()`, stable within a statement, so that the
/// reaper's comparison can use the lease index).
macro_rules! db_now {
    () => {
        "(extract(epoch from now()) * 1000)::int8"
    };
}

pub struct PostgresStore {
    pool: PgPool,
    /// Leases are judged by the database's clock (the default); false only
    /// for tests that drive time through the `now` they pass.
    db_clock: bool,
    /// Reads of jobs' contexts, gathered into one query per batch.
    contexts: Option<tokio::sync::mpsc::UnboundedSender<ContextRequest>>,
}

type ContextRequest = (ItemId, tokio::sync::oneshot::Sender<Result<ItemContext>>);

/// Contexts read in one query at most.
const CONTEXT_BATCH: usize = 256;

impl PostgresStore {
    pub async fn open(url: &str, options: &OpenOptions) -> Result<PostgresStore> {
        let name = redact_url(url);
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::InvalidRequest(format!(
                    "{name} is not a usable PostgreSQL URL: {}",
                    scrub(&e.to_string(), url)
                ))
            })?
            .application_name("ideamill");
        // Look before touching, on a connection of its own: a database from
        // a newer build, or another program's, is refused before anything is
        // written. Then migrate on the same connection.
        let mut conn = PgConnection::connect_with(&connect)
            .await
            .map_err(|e| connect_error(&name, url, e, options.must_exist))?;
        let result = async {
            inspect(&mut conn, &name, options.must_exist).await?;
            migrate(&mut conn, &name).await
        }
        .await;
        let _ = conn.close().await;
        result?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx already pings every connection it takes back; only one
            // that sat idle may have been cut since (a server restart), so
            // only those are checked before use.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > Duration::from_secs(1) {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(connect);
        // Jobs start in bursts (a claim hands out dozens): their context
        // reads share one query, a round trip for the burst instead of one
        // per job.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let contexts = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(read_contexts(pool.clone(), rx));
                Some(tx)
            }
            Err(_) => None,
        };
        Ok(PostgresStore {
            pool,
            db_clock: true,
            contexts,
        })
    }

    /// Judge leases by the `now` callers pass, as SQLite does, instead of
    /// the database's clock. For tests that drive time (the conformance
    /// suite's fixed clock); never for processes sharing a database, whose
    /// clocks may disagree.
    pub fn with_caller_clock(mut self) -> PostgresStore {
        self.db_clock = false;
        self
    }

    /// Fold the item count deltas writers appended into the base counts.
    /// Two processes folding at once serialize on the delta rows; neither
    /// counts a delta twice.
    async fn fold_item_counts(&self) -> Result<()> {
        sqlx::query(
            "WITH moved AS (DELETE FROM item_count_deltas RETURNING state, n),
                  sums AS (SELECT state, SUM(n) AS n FROM moved GROUP BY state)
             UPDATE item_counts c SET n = c.n + sums.n FROM sums WHERE c.state = sums.state",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
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
            '$',
        );
        let mut query = sqlx::query(&sql)
            .bind(&filter.stage)
            .bind(filter.before_id)
            .bind(common::page_limit(filter));
        if let Some(text) = text {
            query = query.bind(text);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(common::item_summary).collect()
    }

    async fn tx(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
    }

    /// A read-only transaction that sees one snapshot, so that the parts of
    /// an answer agree with each other.
    async fn snapshot(&self) -> Result<Tx> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }
}

/// Remove a URL's password from a message.
fn scrub(message: &str, url: &str) -> String {
    let redacted = redact_url(url);
    let message = message.replace(url, &redacted);
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((_, password)) if !password.is_empty() => message.replace(password, "***"),
            _ => message,
        },
        _ => message,
    }
}

fn connect_error(name: &str, url: &str, e: sqlx::Error, must_exist: bool) -> StoreError {
    // 3D000: the database itself does not exist.
    let missing = matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("3D000"));
    if missing && must_exist {
        return StoreError::Missing(name.to_string());
    }
    // A server that does not answer (yet), or is starting or stopping: worth
    // waiting for. A refused login or a missing database is not.
    let unavailable = match &e {
        // TLS failures (a certificate nobody trusts) come as InvalidData.
        sqlx::Error::Io(io) => !matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::PermissionDenied
        ),
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => matches!(
            d.code().as_deref(),
            Some("57P01" | "57P02" | "57P03" | "53300")
        ),
        _ => false,
    };
    if unavailable {
        return StoreError::Unavailable(format!(
            "cannot connect to PostgreSQL at {name}: {}",
            scrub(&e.to_string(), url)
        ));
    }
    StoreError::Unsupported(format!(
        "cannot connect to PostgreSQL at {name}: {}{}",
        scrub(&e.to_string(), url),
        if missing {
            " (create the database first, e.g. with createdb)"
        } else {
            ""
        }
    ))
}

/// Refuse a newer schema or a database that is not ours; plain reads only.
async fn inspect(conn: &mut PgConnection, name: &str, must_exist: bool) -> Result<()> {
    let has_meta: bool = sqlx::query_scalar("SELECT to_regclass('ideamill_schema') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if has_meta {
        let found: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::int8 FROM ideamill_schema")
                .fetch_one(&mut *conn)
                .await?;
        if found > SCHEMA_VERSION {
            return Err(too_new(name, found));
        }
        return Ok(());
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()",
    )
    .fetch_one(&mut *conn)
    .await?;
    if tables > 0 {
        return Err(StoreError::Corrupt(format!(
            "{name} is a PostgreSQL database with other tables but not an ideamill store; it was not modified"
        )));
    }
    if must_exist {
        return Err(StoreError::Missing(name.to_string()));
    }
    Ok(())
}

fn too_new(name: &str, found: i64) -> StoreError {
    StoreError::TooNew {
        path: name.to_string(),
        found,
        known: SCHEMA_VERSION,
    }
}

/// Apply the migrations this build knows and the database lacks, in one
/// transaction under an advisory lock, so that processes starting at once
/// cannot both apply them.
async fn migrate(conn: &mut PgConnection, name: &str) -> Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS ideamill_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL, by TEXT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    // Another process may have migrated while we waited for the lock.
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::int8 FROM ideamill_schema")
            .fetch_one(&mut *tx)
            .await?;
    if current > SCHEMA_VERSION {
        return Err(too_new(name, current));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO ideamill_schema (version, applied_at, by) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(common::now_millis())
            .bind(concat!("ideamill ", env!("CARGO_PKG_VERSION")))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Wake every listening engine when this transaction commits.
async fn notify_in(tx: &mut Tx) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_events(tx: &mut Tx, events: &[NewEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // Ordered by position, so that ids follow the order given.
    sqlx::query(
        "INSERT INTO events (at, kind, item_id, job_id, process, message)
         SELECT at, kind, item_id, job_id, process, message
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[])
              WITH ORDINALITY AS u(at, kind, item_id, job_id, process, message, n)
         ORDER BY n",
    )
    .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.item_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.job_id).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.process.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        events
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_event(tx: &mut Tx, e: &NewEvent) -> Result<()> {
    insert_events(tx, std::slice::from_ref(e)).await
}

/// Enqueue jobs, one statement for all (the `jobs_set_current` trigger
/// keeps each item's current job).
async fn insert_jobs(tx: &mut Tx, jobs: &[(ItemId, &NextJob, Millis)]) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at)
         SELECT item_id, stage, round, 'queued', at, max_attempts, at, at
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
              WITH ORDINALITY AS u(item_id, stage, round, at, max_attempts, n)
         ORDER BY n",
    )
    .bind(jobs.iter().map(|j| j.0).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.1.stage.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| i64::from(j.1.round)).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.2).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| i64::from(j.1.max_attempts)).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_attempts(tx: &mut Tx, rows: &[AttemptRecord<'_>]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let usage = |f: &dyn Fn(&Usage) -> Option<i64>| -> Vec<Option<i64>> {
        rows.iter().map(|a| a.usage.and_then(f)).collect()
    };
    sqlx::query(
        "INSERT INTO attempts (job_id, item_id, stage, round, attempt, process, outcome, started_at,
                               finished_at, exit_code, error, output, stderr, provider, model,
                               prompt_tokens, completion_tokens, cost, usage_counted)
         SELECT job_id, item_id, stage, round, attempt, process, outcome, started_at,
                finished_at, exit_code, error, output, stderr, provider, model,
                prompt_tokens, completion_tokens, cost, usage_counted
         FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::text[],
                     $8::int8[], $9::int8[], $10::int8[], $11::text[], $12::text[], $13::text[],
                     $14::text[], $15::text[], $16::int8[], $17::int8[], $18::float8[], $19::bool[])
              WITH ORDINALITY AS u(job_id, item_id, stage, round, attempt, process, outcome, started_at,
                                   finished_at, exit_code, error, output, stderr, provider, model,
                                   prompt_tokens, completion_tokens, cost, usage_counted, n)
         ORDER BY n",
    )
    .bind(rows.iter().map(|a| a.job.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.job.item_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.job.stage.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| i64::from(a.job.round)).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| i64::from(a.job.attempt)).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.process).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.outcome.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.started_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.finished_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.exit_code.map(i64::from)).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.error).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.output).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.stderr).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.usage.map(|u| u.provider.as_str())).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.usage.map(|u| u.model.as_str())).collect::<Vec<_>>())
    .bind(usage(&|u| Some(u.prompt_tokens as i64)))
    .bind(usage(&|u| Some(u.completion_tokens as i64)))
    .bind(rows.iter().map(|a| a.usage.map(|u| u.cost)).collect::<Vec<_>>())
    .bind(rows.iter().map(|a| a.usage.map(|u| u.counted)).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Which per-round text a finish records: the table and its text column.
#[derive(Clone, Copy)]
enum RoundText {
    Feedback,
    Output,
}

/// Insert a gate's feedback or a stage's output for each finished job.
async fn insert_round_texts(
    tx: &mut Tx,
    kind: RoundText,
    rows: &[(&ClaimedJob, &str, Millis)],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (table, column) = match kind {
        RoundText::Feedback => ("feedback", "feedback"),
        RoundText::Output => ("outputs", "output"),
    };
    let sql = format!(
        "INSERT INTO {table} (item_id, stage, round, job_id, {column}, created_at)
         SELECT item_id, stage, round, job_id, text, created_at
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[])
              WITH ORDINALITY AS u(item_id, stage, round, job_id, text, created_at, n)
         ORDER BY n"
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.0.item_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.0.stage.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| i64::from(r.0.round))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.0.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Fail active items, each with its reason.
async fn fail_items(tx: &mut Tx, rows: &[(ItemId, &str, Millis)]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE items SET state = 'failed', last_error = u.reason, finished_at = u.at, updated_at = u.at
         FROM UNNEST($1::int8[], $2::text[], $3::int8[]) AS u(id, reason, at)
         WHERE items.id = ANY($1) AND items.id = u.id AND items.state = 'active'",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// New active items, each with its first job `first`; ids in input order.
async fn insert_new_items(
    tx: &mut Tx,
    items: &[NewItem],
    first: &NextJob,
    now: Millis,
) -> Result<Vec<ItemId>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<ItemId> = sqlx::query_scalar(
        "INSERT INTO items (text, metadata, state, stage, round, created_at, updated_at)
         SELECT text, metadata, 'active', $3, $4, $5, $5
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u(text, metadata, n)
         ORDER BY n
         RETURNING id",
    )
    .bind(items.iter().map(|i| i.text.as_str()).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| i.metadata.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(&first.stage)
    .bind(i64::from(first.round))
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    // RETURNING's order is unspecified; new ids grow in input order.
    ids.sort_unstable();
    let jobs: Vec<(ItemId, &NextJob, Millis)> = ids.iter().map(|id| (*id, first, now)).collect();
    insert_jobs(tx, &jobs).await?;
    Ok(ids)
}

async fn intake_record(tx: &mut Tx, key: &str) -> Result<Option<IntakeRecord>> {
    let Some(r) =
        sqlx::query("SELECT key, name, item_ids, created_at FROM intake_sources WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?
    else {
        return Ok(None);
    };
    let ids = r.text("item_ids")?;
    Ok(Some(IntakeRecord {
        key: r.text("key")?,
        name: r.text("name")?,
        item_ids: serde_json::from_str(&ids)
            .map_err(|e| StoreError::Corrupt(format!("item ids of intake source {key}: {e}")))?,
        taken_at: r.int("created_at")?,
    }))
}

/// Take a source's key, or find it taken. A concurrent taker of the same
/// key waits on the key's index entry until this transaction ends, then
/// finds it taken: two processes never both take one source.
async fn take_source(
    tx: &mut Tx,
    source: &IntakeSource,
    now: Millis,
) -> Result<Option<IntakeRecord>> {
    let taken = sqlx::query(
        "INSERT INTO intake_sources (key, name, item_ids, created_at) VALUES ($1, $2, '[]', $3)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(&source.key)
    .bind(&source.name)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if taken == 1 {
        return Ok(None);
    }
    intake_record(tx, &source.key).await
}

async fn record_source_items(tx: &mut Tx, key: &str, ids: &[ItemId]) -> Result<()> {
    sqlx::query("UPDATE intake_sources SET item_ids = $1 WHERE key = $2")
        .bind(serde_json::Value::from(ids).to_string())
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Model usage recorded on attempts since `since`, of one item or of all.
async fn usage_since(tx: &mut Tx, since: Millis, item: Option<ItemId>) -> Result<UsageTotals> {
    let r = sqlx::query(
        "SELECT COALESCE(SUM(prompt_tokens), 0)::int8 AS pt, COALESCE(SUM(completion_tokens), 0)::int8 AS ct,
                COALESCE(SUM(cost), 0.0)::float8 AS cost
         FROM attempts WHERE prompt_tokens IS NOT NULL AND finished_at >= $1 AND ($2::int8 IS NULL OR item_id = $2)",
    )
    .bind(since)
    .bind(item)
    .fetch_one(&mut **tx)
    .await?;
    common::usage_totals(&r)
}

#[async_trait]
impl Store for PostgresStore {
    async fn add_items(
        &self,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
    ) -> Result<Vec<ItemId>> {
        let items = common::storable_items(items);
        let items: &[NewItem] = &items;
        let mut tx = self.tx().await?;
        let ids = insert_new_items(&mut tx, items, first, now).await?;
        notify_in(&mut tx).await?;
        tx.commit().await?;
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
        // The subquery is materialized so that it runs once: the rows it
        // locked are exactly the rows updated.
        //
        // A claim commits without waiting for its WAL flush
        // (`synchronous_commit` off for this transaction only): it is acked
        // to no one but the claimer, and the finish that follows it commits
        // synchronously, flushing the claim with it. If the server crashes
        // before the flush, the claim is undone and the job runs again, like
        // one whose lease expired; the token it handed out may then be handed
        // out again, which is why the fence also checks the owner.
        //
        // The lease runs from the database's clock (see the module's doc).
        let rows = sqlx::query(concat!(
            "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
             picked AS MATERIALIZED (
                 SELECT id FROM jobs
                 WHERE state = 'queued' AND stage = $4 AND run_at <= $3 AND EXISTS (SELECT 1 FROM relaxed)
                 ORDER BY priority, run_at, id LIMIT $5 FOR UPDATE OF jobs SKIP LOCKED)
             UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, lease_token = j.lease_token + 1,
                    lease_owner = $1,
                    lease_expires_at = CASE WHEN $6 THEN ",
            db_now!(),
            " + ($2 - $3) ELSE $2 END,
                    started_at = $3, updated_at = $3
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.item_id, j.stage, j.round, j.attempts, j.max_attempts, j.lease_token, j.run_at,
                       j.priority"
        ))
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(stage)
        .bind(i64::from(limit))
        .bind(self.db_clock)
        .fetch_all(&self.pool)
        .await?;
        let mut jobs = rows
            .iter()
            .map(|r| Ok((r.int("priority")?, common::claimed_job(r, 0, Some(now))?)))
            .collect::<Result<Vec<_>>>()?;
        // RETURNING does not keep the subquery's order: restore it.
        jobs.sort_by_key(|(priority, job)| (*priority, job.run_at, job.id));
        Ok(jobs.into_iter().map(|(_, job)| job).collect())
    }

    async fn context(&self, item: ItemId) -> Result<ItemContext> {
        if let Some(batcher) = &self.contexts {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if batcher.send((item, reply)).is_ok()
                && let Ok(context) = answer.await
            {
                return context;
            }
        }
        // No batcher (its runtime is gone): read it alone.
        let mut found = contexts_of(&self.pool, &[item]).await?;
        found.remove(&item).ok_or(StoreError::NoSuchItem(item))
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>> {
        let finishes = common::storable_finishes(finishes);
        let finishes: &[Finish] = &finishes;
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        // `id = ANY($1)` lets the planner find the rows through the primary
        // key whatever it guesses about the arrays (fresh tables have no
        // statistics).
        //
        // The fence, for the whole batch in one statement: only the holder
        // of a job's current token may finish it, once. A finish repeated
        // within the batch is stale, as it would be one after another.
        let mut seen = std::collections::HashSet::new();
        let sent: Vec<(usize, &Finish, common::Fence<'_>)> = finishes
            .iter()
            .enumerate()
            .filter(|(_, f)| seen.insert((f.job.id, f.job.lease_token)))
            .map(|(n, f)| (n, f, common::fence(f)))
            .collect();
        let mut tx = self.tx().await?;
        let fenced = sqlx::query(
            "UPDATE jobs j SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE u.state END,
                    run_at = COALESCE(u.run_at, j.run_at), last_error = COALESCE(u.error, j.last_error),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = u.at,
                    finished_at = CASE WHEN j.cancel_requested OR u.finished THEN u.at ELSE NULL END
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::bool[], $8::int8[],
                         $9::text[])
                  AS u(id, token, state, run_at, error, at, finished, n, owner)
             WHERE j.id = ANY($1) AND j.id = u.id AND j.state = 'running' AND j.lease_token = u.token
               AND j.lease_owner = u.owner
             RETURNING u.n, j.cancel_requested",
        )
        .bind(sent.iter().map(|s| s.1.job.id).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.1.job.lease_token).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.2.state).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.2.run_at).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.2.error).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.1.finished_at).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.2.finished).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.0 as i64).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.1.owner.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut passed: Vec<Option<bool>> = vec![None; finishes.len()];
        for r in &fenced {
            let n = r.int("n")? as usize;
            if let Some(slot) = passed.get_mut(n) {
                *slot = Some(r.flag("cancel_requested")?);
            }
        }

        let mut results = Vec::with_capacity(finishes.len());
        let mut stale = Vec::new();
        let mut plans = Vec::with_capacity(finishes.len());
        for (f, cancelled) in finishes.iter().zip(&passed) {
            match cancelled {
                None => {
                    stale.push(common::stale_completion(f));
                    results.push(Err(StoreError::LeaseLost));
                    plans.push(None);
                }
                Some(cancelled) => {
                    let plan = common::plan(f, *cancelled);
                    results.push(Ok(plan.effect));
                    plans.push(Some(plan));
                }
            }
        }
        let mut attempts = Vec::new();
        let mut outputs = Vec::new();
        let mut feedback = Vec::new();
        let mut next_jobs = Vec::new();
        let mut done: Vec<(ItemId, Millis)> = Vec::new();
        let mut uncount: Vec<JobId> = Vec::new();
        let mut item_errors: Vec<(ItemId, &str, Millis)> = Vec::new();
        let mut failed: Vec<(ItemId, &str, Millis)> = Vec::new();
        let mut cancelled_items: Vec<(ItemId, Millis)> = Vec::new();
        // Events in the order of the finishes, stale ones included.
        let mut events: Vec<NewEvent> = Vec::new();
        let mut stale_events = stale.into_iter();
        for (f, plan) in finishes.iter().zip(plans) {
            let Some(plan) = plan else {
                events.extend(stale_events.next());
                continue;
            };
            let job = &f.job;
            let now = f.finished_at;
            if let Some(output) = plan.output {
                outputs.push((job, output, now));
            }
            if let Some(next) = plan.next {
                next_jobs.push((job.item_id, next, now));
            }
            if plan.done {
                done.push((job.item_id, now));
            }
            if let Some(text) = plan.feedback {
                feedback.push((job, text, now));
            }
            if plan.uncount {
                uncount.push(job.id);
            }
            if let Some(error) = plan.item_error {
                item_errors.push((job.item_id, error, now));
            }
            if let Some(reason) = plan.fail_reason {
                failed.push((job.item_id, reason, now));
            }
            if plan.cancel_item {
                cancelled_items.push((job.item_id, now));
            }
            attempts.push(plan.attempt);
            events.extend(plan.event);
        }
        insert_round_texts(&mut tx, RoundText::Feedback, &feedback).await?;
        if !uncount.is_empty() {
            // A paused try never ran: it does not count.
            sqlx::query("UPDATE jobs SET attempts = attempts - 1 WHERE id = ANY($1)")
                .bind(&uncount)
                .execute(&mut *tx)
                .await?;
        }
        if !item_errors.is_empty() {
            sqlx::query(
                "UPDATE items SET last_error = u.error, updated_at = u.at
                 FROM UNNEST($1::int8[], $2::text[], $3::int8[]) AS u(id, error, at)
                 WHERE items.id = ANY($1) AND items.id = u.id",
            )
            .bind(item_errors.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(item_errors.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(item_errors.iter().map(|r| r.2).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        fail_items(&mut tx, &failed).await?;
        if !cancelled_items.is_empty() {
            sqlx::query(
                "UPDATE items SET state = 'cancelled', finished_at = u.at, updated_at = u.at
                 FROM UNNEST($1::int8[], $2::int8[]) AS u(id, at)
                 WHERE items.id = ANY($1) AND items.id = u.id AND items.state = 'active'",
            )
            .bind(cancelled_items.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(cancelled_items.iter().map(|r| r.1).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        insert_events(&mut tx, &events).await?;
        insert_attempts(&mut tx, &attempts).await?;
        insert_round_texts(&mut tx, RoundText::Output, &outputs).await?;
        insert_jobs(&mut tx, &next_jobs).await?;
        if !done.is_empty() {
            sqlx::query(
                "UPDATE items SET state = 'done', last_error = NULL, finished_at = u.at, updated_at = u.at
                 FROM UNNEST($1::int8[], $2::int8[]) AS u(id, at) WHERE items.id = ANY($1) AND items.id = u.id",
            )
            .bind(done.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(done.iter().map(|r| r.1).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !next_jobs.is_empty() {
            // Other engines may run the next stage.
            notify_in(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn heartbeat(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        running: &[JobId],
    ) -> Result<Vec<JobId>> {
        // One statement, so one transaction and one round trip. Like a
        // claim, a beat need not wait for its WAL flush: a beat lost in a
        // server crash only makes leases expire sooner.
        // Leases are renewed from the database's clock.
        let cancels = sqlx::query_scalar(concat!(
            "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
             renewed AS (
                 UPDATE jobs SET lease_expires_at = CASE WHEN $4 THEN ",
            db_now!(),
            " + ($1 - $3) ELSE $1 END
                 WHERE id = ANY($5) AND lease_owner = $2 AND state = 'running'
                   AND EXISTS (SELECT 1 FROM relaxed)
                 RETURNING id, cancel_requested),
             beat AS (UPDATE processes SET last_beat_at = $3 WHERE id = $2)
             SELECT id FROM renewed WHERE cancel_requested ORDER BY id"
        ))
        .bind(lease_until)
        .bind(owner)
        .bind(now)
        .bind(self.db_clock)
        .bind(running)
        .fetch_all(&self.pool)
        .await?;
        // Housekeeping that rides on the beat; a failure here is not the
        // store failing the engine.
        if let Err(e) = self.fold_item_counts().await {
            tracing::debug!("Could not fold the item count deltas: {e}");
        }
        Ok(cancels)
    }

    async fn reap_expired(&self, now: Millis) -> Result<Vec<ReapedJob>> {
        // A lease has expired when the database's clock says so; `now`
        // only dates what the reaper records.
        //
        // A cheap read first, so that idle processes write nothing.
        let any: Option<i64> = sqlx::query_scalar(concat!(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < CASE WHEN $2 THEN ",
            db_now!(),
            " ELSE $1 END LIMIT 1"
        ))
        .bind(now)
        .bind(self.db_clock)
        .fetch_optional(&self.pool)
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.tx().await?;
        // Rows another reaper (or a late finish) holds are skipped: whoever
        // holds them deals with them.
        let rows = sqlx::query(concat!(
            "SELECT id, item_id, stage, round, attempts, max_attempts, lease_token, lease_owner, cancel_requested,
                    COALESCE(started_at, updated_at) AS started_at, run_at
             FROM jobs WHERE state = 'running' AND lease_expires_at < CASE WHEN $2 THEN ",
            db_now!(),
            " ELSE $1 END
             ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED"
        ))
        .bind(now)
        .bind(self.db_clock)
        .fetch_all(&mut *tx)
        .await?;
        let mut reaped = Vec::with_capacity(rows.len());
        let mut requeued = false;
        for r in &rows {
            let job = common::claimed_job(r, 0, None)?;
            let owner: String = r.opt_text("lease_owner")?.unwrap_or_default();
            let reap = common::reap(&job, &owner, r.flag("cancel_requested")?, now);
            sqlx::query(
                "UPDATE jobs SET state = $1, run_at = $2, last_error = $3, lease_owner = NULL, lease_expires_at = NULL,
                        updated_at = $4, finished_at = CASE WHEN $1 = 'queued' THEN NULL ELSE $4 END
                 WHERE id = $5 AND lease_token = $6",
            )
            .bind(reap.state)
            .bind(reap.run_at)
            .bind(&reap.error)
            .bind(now)
            .bind(job.id)
            .bind(job.lease_token)
            .execute(&mut *tx)
            .await?;
            insert_attempts(
                &mut tx,
                &[AttemptRecord::interrupted(
                    &job,
                    &owner,
                    AttemptOutcome::Lost,
                    now,
                    &reap.error,
                )],
            )
            .await?;
            if let Some(reason) = &reap.fail_reason {
                fail_items(&mut tx, &[(job.item_id, reason, now)]).await?;
            }
            insert_event(&mut tx, &reap.event).await?;
            requeued |= reap.action == ideamill_core::machine::LostJob::Requeue;
            reaped.push(ReapedJob {
                job_id: job.id,
                item_id: job.item_id,
                stage: job.stage,
                owner,
                action: reap.action,
            });
        }
        if requeued {
            notify_in(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(reaped)
    }

    async fn expire_process(&self, process: &str, now: Millis) -> Result<u64> {
        let mut tx = self.tx().await?;
        // Expired by the clock the reaper judges by.
        let n = sqlx::query(concat!(
            "UPDATE jobs SET lease_expires_at = CASE WHEN $3 THEN ",
            db_now!(),
            " - 1 ELSE $1 END WHERE lease_owner = $2 AND state = 'running'"
        ))
        .bind(now - 1)
        .bind(process)
        .bind(self.db_clock)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let marked = sqlx::query(
            "UPDATE processes SET stopped_at = $1 WHERE id = $2 AND stopped_at IS NULL",
        )
        .bind(now)
        .bind(process)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 && n == 0 {
            // Another process recovered it first: nothing to record.
            tx.rollback().await?;
            return Ok(0);
        }
        insert_event(&mut tx, &common::process_dead(process, n, now)).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn cancel_requests(&self, owner: &str) -> Result<Vec<JobId>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE lease_owner = $1 AND state = 'running' AND cancel_requested ORDER BY id",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<u64> {
        let mut tx = self.tx().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = $1, lease_owner = NULL,
                    lease_expires_at = NULL, updated_at = $1
             WHERE lease_owner = $2 AND state = 'running'
             RETURNING id, item_id, stage, round, attempts, max_attempts, lease_token, run_at,
                       COALESCE(started_at, $1) AS started_at",
        )
        .bind(now)
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut jobs = rows
            .iter()
            .map(|r| common::claimed_job(r, 1, None))
            .collect::<Result<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.id);
        let records: Vec<_> = jobs
            .iter()
            .map(|job| {
                AttemptRecord::interrupted(
                    job,
                    owner,
                    AttemptOutcome::Released,
                    now,
                    common::RELEASED_NOTE,
                )
            })
            .collect();
        insert_attempts(&mut tx, &records).await?;
        insert_event(&mut tx, &common::jobs_released(owner, rows.len(), now)).await?;
        notify_in(&mut tx).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    async fn next_run_at(&self, stages: &[String]) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(run_at) FROM jobs WHERE state = 'queued' AND stage = ANY($1)",
        )
        .bind(stages)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn pending(&self, horizon: Millis) -> Result<Pending> {
        let r = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE state = 'queued' AND run_at <= $1) AS soon,
                    COUNT(*) FILTER (WHERE state = 'running') AS running,
                    COUNT(*) FILTER (WHERE state = 'queued' AND run_at > $1) AS later,
                    MIN(run_at) FILTER (WHERE state = 'queued') AS next_run_at
             FROM jobs WHERE state IN ('queued', 'running')",
        )
        .bind(horizon)
        .fetch_one(&self.pool)
        .await?;
        Ok(Pending {
            soon: r.count("soon")?,
            running: r.count("running")?,
            later: r.count("later")?,
            next_run_at: r.opt_int("next_run_at")?,
        })
    }

    async fn register_process(&self, p: &ProcessInfo) -> Result<()> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO processes (id, host, pid, version, started_at, last_beat_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET last_beat_at = excluded.last_beat_at, stopped_at = NULL",
        )
        .bind(&p.id)
        .bind(&p.host)
        .bind(i64::from(p.pid))
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
        let mut tx = self.tx().await?;
        sqlx::query("UPDATE processes SET stopped_at = $1, last_beat_at = $1 WHERE id = $2")
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
             FROM processes p WHERE p.stopped_at IS NULL ORDER BY p.started_at DESC, p.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(common::process_row).collect()
    }

    async fn retry_item(&self, id: ItemId, next: &NextJob, now: Millis) -> Result<RetryEffect> {
        let mut tx = self.tx().await?;
        let row = sqlx::query(
            "SELECT i.state, j.id AS job_id, j.state AS job_state, j.stage AS job_stage FROM items i
             LEFT JOIN jobs j ON j.id = i.current_job_id WHERE i.id = $1 FOR UPDATE OF i",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NoSuchItem(id))?;
        let state = row.text("state")?;
        let job_state = row.opt_text("job_state")?;
        if let Some(refusal) = common::retry_refusal(id, &state, job_state.as_deref()) {
            return Err(refusal);
        }
        let event = match state.as_str() {
            "active"
                if row
                    .opt_text("job_stage")?
                    .is_some_and(|stage| stage != next.stage) =>
            {
                // Waiting on another stage (one the config may no longer
                // have): that job is cancelled, the named stage runs.
                let from = row.text("job_stage")?;
                sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', updated_at = $1
                     WHERE id = $2 AND state IN ('queued', 'paused')",
                )
                .bind(now)
                .bind(row.opt_int("job_id")?)
                .execute(&mut *tx)
                .await?;
                insert_jobs(&mut tx, &[(id, next, now)]).await?;
                common::retried_moved(id, &from, next, now)
            }
            "active" => {
                // Waiting for a backoff or a budget: run it now, without a
                // new job.
                sqlx::query(
                    "UPDATE jobs SET state = 'queued', run_at = $1, updated_at = $1
                     WHERE id = $2 AND state IN ('queued', 'paused')",
                )
                .bind(now)
                .bind(row.opt_int("job_id")?)
                .execute(&mut *tx)
                .await?;
                common::retried_waiting(id, now)
            }
            _ => {
                sqlx::query(
                    "UPDATE items SET state = 'active', finished_at = NULL, last_error = NULL, updated_at = $1
                     WHERE id = $2",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                insert_jobs(&mut tx, &[(id, next, now)]).await?;
                common::retried_again(id, &state, next, now)
            }
        };
        insert_event(&mut tx, &event).await?;
        notify_in(&mut tx).await?;
        tx.commit().await?;
        Ok(RetryEffect {
            stage: next.stage.clone(),
            round: next.round,
        })
    }

    async fn cancel_item(&self, id: ItemId, now: Millis) -> Result<CancelEffect> {
        let mut tx = self.tx().await?;
        let state: String = sqlx::query_scalar("SELECT state FROM items WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NoSuchItem(id))?;
        if state != "active" {
            return Err(common::not_cancellable(id, &state));
        }
        // Jobs first, then the item: the order every write takes.
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1, updated_at = $1
             WHERE item_id = $2 AND state IN ('queued', 'paused')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let was_running = sqlx::query(
            "UPDATE jobs SET cancel_requested = true, updated_at = $1 WHERE item_id = $2 AND state = 'running'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        let cancelled = sqlx::query(
            "UPDATE items SET state = 'cancelled', last_error = 'cancelled by hand', finished_at = $1, updated_at = $1
             WHERE id = $2 AND state = 'active'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if cancelled == 0 {
            // It finished while we looked.
            tx.rollback().await?;
            let state: String = sqlx::query_scalar("SELECT state FROM items WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
            return Err(common::not_cancellable(id, &state));
        }
        insert_event(&mut tx, &common::item_cancelled(id, was_running, now)).await?;
        // Wakes the engine holding the job so that it stops the work now.
        notify_in(&mut tx).await?;
        tx.commit().await?;
        Ok(CancelEffect { was_running })
    }

    async fn item(&self, id: ItemId) -> Result<ItemDetail> {
        let mut tx = self.snapshot().await?;
        let row = sqlx::query(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NoSuchItem(id))?;
        let item = common::item_row(&row)?;
        let jobs = sqlx::query(&format!(
            "SELECT {} FROM jobs WHERE item_id = $1 ORDER BY id",
            common::JOB_COLUMNS
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::job_row)
        .collect::<Result<Vec<_>>>()?;
        let attempts = sqlx::query(&format!(
            "SELECT {} FROM attempts WHERE item_id = $1 ORDER BY id",
            common::ATTEMPT_COLUMNS
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::attempt_row)
        .collect::<Result<Vec<_>>>()?;
        let outputs = sqlx::query(
            "SELECT stage, round, job_id, output, created_at FROM outputs WHERE item_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::output_row)
        .collect::<Result<Vec<_>>>()?;
        let feedback = sqlx::query(
            "SELECT stage, round, feedback, created_at FROM feedback WHERE item_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::feedback_row)
        .collect::<Result<Vec<_>>>()?;
        let events = sqlx::query(
            "SELECT id, at, kind, item_id, job_id, process, message FROM events WHERE item_id = $1 ORDER BY id",
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
            "FROM items i LEFT JOIN jobs j ON j.id = i.current_job_id WHERE true",
            "i.id",
            filter,
            None,
        )
        .await
    }

    async fn status(&self, now: Millis) -> Result<StatusSnapshot> {
        let mut tx = self.snapshot().await?;
        let mut items = ItemCounts::default();
        // Base counts plus the deltas not folded in yet (0004_item_counts.sql).
        for r in sqlx::query(
            "SELECT state, SUM(n)::int8 AS n
             FROM (SELECT state, n FROM item_counts UNION ALL SELECT state, n FROM item_count_deltas) c
             GROUP BY state",
        )
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
        let mut stages = Vec::new();
        for r in sqlx::query(
            "SELECT stage, COUNT(*) FILTER (WHERE state = 'queued' AND run_at <= $1) AS queued,
                    COUNT(*) FILTER (WHERE state = 'queued' AND run_at > $1) AS scheduled,
                    COUNT(*) FILTER (WHERE state = 'running') AS running
             FROM jobs WHERE state IN ('queued', 'running') GROUP BY stage",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?
        {
            stages.push(StageCounts {
                stage: r.text("stage")?,
                queued: r.count("queued")?,
                scheduled: r.count("scheduled")?,
                running: r.count("running")?,
            });
        }
        stages.sort_by(|a, b| a.stage.cmp(&b.stage));
        let running = sqlx::query(
            "SELECT id, item_id, stage, round, attempts, lease_owner, COALESCE(started_at, updated_at) AS started_at,
                    lease_expires_at
             FROM jobs WHERE state = 'running' ORDER BY started_at, id LIMIT 200",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(common::running_job)
        .collect::<Result<Vec<_>>>()?;
        let expired_leases: i64 = sqlx::query_scalar(concat!(
            "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_expires_at < CASE WHEN $2 THEN ",
            db_now!(),
            " ELSE $1 END"
        ))
        .bind(now)
        .bind(self.db_clock)
        .fetch_one(&mut *tx)
        .await?;
        let oldest_runnable_at: Option<Millis> = sqlx::query_scalar(
            "SELECT MIN(run_at) FROM jobs WHERE state = 'queued' AND run_at <= $1",
        )
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'paused'")
            .fetch_one(&mut *tx)
            .await?;
        let today = usage_since(&mut tx, common::day_start(now), None).await?;
        tx.commit().await?;
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
            "SELECT id, at, kind, item_id, job_id, process, message FROM events WHERE true",
        );
        if filter.item.is_some() {
            sql.push_str(" AND item_id = $1");
        }
        if filter.kind.is_some() {
            sql.push_str(" AND kind = $2");
        }
        if filter.since.is_some() {
            sql.push_str(" AND at >= $3");
        }
        sql.push_str(" ORDER BY id DESC LIMIT $4");
        let mut events = sqlx::query(&sql)
            .bind(filter.item)
            .bind(&filter.kind)
            .bind(filter.since)
            .bind(i64::from(if filter.limit == 0 {
                100
            } else {
                filter.limit
            }))
            .fetch_all(&self.pool)
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
        let mut tx = self.tx().await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn spend(&self, item: ItemId, day_start: Millis) -> Result<Spend> {
        let mut tx = self.snapshot().await?;
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
                    COALESCE((SELECT SUM(prompt_tokens) FROM attempts a WHERE a.item_id = j.item_id), 0)::int8 AS pt,
                    COALESCE((SELECT SUM(completion_tokens) FROM attempts a WHERE a.item_id = j.item_id), 0)::int8 AS ct,
                    COALESCE((SELECT SUM(cost) FROM attempts a WHERE a.item_id = j.item_id), 0.0)::float8 AS cost
             FROM jobs j JOIN items i ON i.id = j.item_id WHERE j.state = 'paused' ORDER BY j.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PausedJob {
                    job_id: r.int("id")?,
                    item_id: r.int("item_id")?,
                    stage: r.text("stage")?,
                    reason: r.opt_text("last_error")?,
                    item_usage: common::usage_totals(r)?,
                })
            })
            .collect()
    }

    async fn resume_jobs(&self, jobs: &[JobId], now: Millis) -> Result<u64> {
        let mut tx = self.tx().await?;
        let mut resumed = 0;
        for id in jobs {
            let item: Option<ItemId> = sqlx::query_scalar(
                "UPDATE jobs SET state = 'queued', run_at = $1, updated_at = $1 WHERE id = $2 AND state = 'paused'
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
        if resumed > 0 {
            notify_in(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(resumed)
    }

    async fn prune(&self, before: Millis) -> Result<PruneCounts> {
        let mut counts = PruneCounts::default();
        // Small batches, so that no transaction holds many locks for long.
        loop {
            let ids: Vec<ItemId> = sqlx::query_scalar(
                "DELETE FROM items WHERE id IN (SELECT id FROM items WHERE state IN ('done', 'failed', 'cancelled')
                                                AND finished_at < $1 ORDER BY id LIMIT $2)
                 RETURNING id",
            )
            .bind(before)
            .bind(common::PRUNE_BATCH as i64)
            .fetch_all(&self.pool)
            .await?;
            let n = ids.len() as u64;
            counts.items += n;
            counts.item_ids.extend(ids);
            if n < common::PRUNE_BATCH {
                break;
            }
        }
        let mut tx = self.tx().await?;
        counts.events = sqlx::query("DELETE FROM events WHERE at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM processes WHERE stopped_at < $1")
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
        Ok(Box::new(PgSignal {
            pool: self.pool.clone(),
            listener: None,
            failures: 0,
        }))
    }

    fn notify(&self) {
        let pool = self.pool.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(CHANNEL)
                    .execute(&pool)
                    .await
                {
                    tracing::debug!("Could not wake the engines: {e}");
                }
            });
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn quick_check(&self) -> Result<Vec<String>> {
        // PostgreSQL checks its own pages; what can go wrong here is the
        // schema: a table dropped or a version this build does not know.
        let mut problems = Vec::new();
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::int8 FROM ideamill_schema")
                .fetch_one(&self.pool)
                .await?;
        if version != SCHEMA_VERSION {
            problems.push(format!(
                "schema version {version}, but this build expects {SCHEMA_VERSION}"
            ));
        }
        for table in [
            "items",
            "jobs",
            "attempts",
            "outputs",
            "feedback",
            "events",
            "processes",
            "intake_sources",
        ] {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(&self.pool)
                .await?;
            if !exists {
                problems.push(format!("table {table} is missing"));
            }
        }
        Ok(problems)
    }

    async fn attempt_stats(&self, since: Millis) -> Result<Vec<StageAttempts>> {
        // The newest attempts by id: bounded work however long the history.
        let rows = sqlx::query(
            "SELECT s.stage, s.worked, s.failed,
                    (SELECT a2.error FROM attempts a2
                      WHERE a2.stage = s.stage AND a2.finished_at >= $1
                        AND a2.outcome IN ('error', 'timeout', 'permanent', 'lost')
                      ORDER BY a2.id DESC LIMIT 1) AS last_error
             FROM (SELECT stage,
                          COUNT(*) FILTER (WHERE outcome IN ('succeeded', 'rejected')) AS worked,
                          COUNT(*) FILTER (WHERE outcome IN ('error', 'timeout', 'permanent', 'lost')) AS failed
                   FROM attempts
                   WHERE id > (SELECT COALESCE(MAX(id), 0) FROM attempts) - 50000 AND finished_at >= $1
                   GROUP BY stage) AS s
             WHERE s.worked + s.failed > 0",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut stats = rows
            .iter()
            .map(common::stage_attempts)
            .collect::<Result<Vec<_>>>()?;
        stats.sort_by(|a, b| a.stage.cmp(&b.stage));
        Ok(stats)
    }

    async fn queue_depth(&self, now: Millis) -> Result<Vec<StageCounts>> {
        // One read over the partial indexes of unfinished jobs.
        let mut counts: std::collections::BTreeMap<String, StageCounts> = Default::default();
        for r in sqlx::query(
            "SELECT stage, COUNT(*) FILTER (WHERE state = 'queued' AND run_at <= $1) AS queued,
                    COUNT(*) FILTER (WHERE state = 'queued' AND run_at > $1) AS scheduled,
                    COUNT(*) FILTER (WHERE state = 'running') AS running
             FROM jobs WHERE state IN ('queued', 'running') GROUP BY stage",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        {
            let c = common::stage_counts(&mut counts, r.text("stage")?);
            c.queued = r.count("queued")?;
            c.scheduled = r.count("scheduled")?;
            c.running = r.count("running")?;
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
        let mut tx = self.tx().await?;
        if let Some(record) = take_source(&mut tx, source, now).await? {
            tx.rollback().await?;
            return Ok(AddOutcome::Duplicate(record));
        }
        let ids = insert_new_items(&mut tx, items, first, now).await?;
        record_source_items(&mut tx, &source.key, &ids).await?;
        notify_in(&mut tx).await?;
        tx.commit().await?;
        Ok(AddOutcome::Added(ids))
    }

    async fn import_items(
        &self,
        items: &[ImportedItem],
        now: Millis,
    ) -> Result<Vec<ImportOutcome>> {
        let items = common::storable_imports(items);
        let items: &[ImportedItem] = &items;
        let mut tx = self.tx().await?;
        let mut outcomes = Vec::with_capacity(items.len());
        let mut queued = false;
        for item in items {
            if let Some(record) = take_source(&mut tx, &item.source, now).await? {
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
            let id: ItemId = sqlx::query_scalar(
                "INSERT INTO items (text, metadata, state, stage, round, last_error, created_at, updated_at, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .bind(&item.text)
            .bind(item.metadata.to_string())
            .bind(state)
            .bind(stage)
            .bind(i64::from(round))
            .bind(last_error)
            .bind(item.created_at)
            .bind(now)
            .bind(finished_at)
            .fetch_one(&mut *tx)
            .await?;
            if let ImportedState::Rejected { rejections, .. } = &item.state {
                // Each rejection is a finished gate job with its feedback,
                // as if the gate had run here.
                for r in rejections {
                    let job: JobId = sqlx::query_scalar(
                        "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at, finished_at)
                         VALUES ($1, $2, $3, 'rejected', $4, 1, $4, $4, $4) RETURNING id",
                    )
                    .bind(id)
                    .bind(&r.stage)
                    .bind(i64::from(r.round))
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO feedback (item_id, stage, round, job_id, feedback, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(id)
                    .bind(&r.stage)
                    .bind(i64::from(r.round))
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
                insert_jobs(&mut tx, &[(id, next, now)]).await?;
                queued = true;
            }
            record_source_items(&mut tx, &item.source.key, &[id]).await?;
            outcomes.push(ImportOutcome::Imported(id));
        }
        if queued {
            notify_in(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn search_items(&self, filter: &ItemFilter, text: &str) -> Result<Vec<ItemSummary>> {
        let terms = crate::search_terms(text);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        // The expression is the GIN index's (0003_dashboard.sql), word for word.
        let query = crate::dashboard::tsquery(&terms);
        self.item_page(
            "FROM items i LEFT JOIN jobs j ON j.id = i.current_job_id WHERE to_tsvector('simple', i.text) @@ to_tsquery('simple', $4)",
            "i.id",
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
        let mut tx = self.snapshot().await?;
        let mut rows = Vec::new();
        for r in sqlx::query(
            "SELECT (finished_at - $1) / $2 AS b, COUNT(*) AS n,
                    COUNT(*) FILTER (WHERE outcome IN ('error', 'timeout', 'permanent', 'lost')) AS failed
             FROM attempts WHERE finished_at >= $1 AND outcome NOT IN ('cancelled', 'released', 'paused')
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
            "SELECT (finished_at - $1) / $2 AS b, COUNT(*) FILTER (WHERE state = 'done') AS done,
                    COUNT(*) FILTER (WHERE state = 'failed') AS failed
             FROM items WHERE finished_at >= $1 GROUP BY b",
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

    fn is_remote(&self) -> bool {
        true
    }

    async fn clock_millis(&self) -> Result<Option<Millis>> {
        let now: i64 =
            sqlx::query_scalar("SELECT (extract(epoch from clock_timestamp()) * 1000)::int8")
                .fetch_one(&self.pool)
                .await?;
        Ok(Some(now))
    }

    async fn change_marker(&self) -> Result<ChangeMarker> {
        let r = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM items) AS item,
                    (SELECT COALESCE(MAX(id), 0) FROM jobs) AS job,
                    (SELECT COALESCE(MAX(id), 0) FROM attempts) AS attempt,
                    (SELECT COALESCE(MAX(id), 0) FROM events) AS event,
                    (SELECT COUNT(*) FROM jobs WHERE state = 'running') AS running",
        )
        .fetch_one(&self.pool)
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

/// The contexts of several items, in one statement.
async fn contexts_of(
    pool: &PgPool,
    items: &[ItemId],
) -> Result<std::collections::HashMap<ItemId, ItemContext>> {
    let rows = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS},
            (SELECT COALESCE(json_agg(json_build_object('stage', o.stage, 'round', o.round, 'job_id', o.job_id,
                                                       'output', o.output, 'created_at', o.created_at)), '[]')::text
             FROM outputs o
             WHERE o.item_id = items.id
               AND o.id = (SELECT MAX(id) FROM outputs o2 WHERE o2.item_id = o.item_id AND o2.stage = o.stage)
            ) AS outputs_json,
            (SELECT COALESCE(json_agg(json_build_object('stage', f.stage, 'round', f.round, 'feedback', f.feedback,
                                                       'created_at', f.created_at) ORDER BY f.id), '[]')::text
             FROM feedback f WHERE f.item_id = items.id
            ) AS feedback_json
         FROM items WHERE id = ANY($1)"
    ))
    .bind(items)
    .fetch_all(pool)
    .await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let item = common::item_row(row)?;
        let id = item.id;
        let outputs = row.text("outputs_json")?;
        let feedback = row.text("feedback_json")?;
        found.insert(
            id,
            ItemContext {
                item,
                outputs: serde_json::from_str(&outputs)
                    .map_err(|e| StoreError::Corrupt(format!("outputs of item {id}: {e}")))?,
                feedback: serde_json::from_str(&feedback)
                    .map_err(|e| StoreError::Corrupt(format!("feedback of item {id}: {e}")))?,
            },
        );
    }
    Ok(found)
}

/// Answer context reads: whatever has piled up while the last query ran
/// goes into the next one.
async fn read_contexts(
    pool: PgPool,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ContextRequest>,
) {
    let mut batch: Vec<ContextRequest> = Vec::new();
    while let Some(first) = requests.recv().await {
        batch.push(first);
        while batch.len() < CONTEXT_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut ids: Vec<ItemId> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        match contexts_of(&pool, &ids).await {
            Ok(found) => {
                // Cloned: the same item may be asked for twice in a batch.
                for (id, reply) in batch.drain(..) {
                    let _ = reply.send(found.get(&id).cloned().ok_or(StoreError::NoSuchItem(id)));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Unsupported(format!(
                        "cannot read the item's context: {message}"
                    ))));
                }
            }
        }
    }
}

/// Wake-ups through `LISTEN`, on a pooled connection of its own.
///
/// The first `wait` establishes the `LISTEN` and returns at once, so that
/// the caller looks again for work added before it listened; so does every
/// wait after the connection was lost (notifications sent meanwhile are
/// gone). While the server is unreachable, it retries with backoff.
struct PgSignal {
    pool: PgPool,
    listener: Option<PgListener>,
    failures: u32,
}

impl PgSignal {
    async fn backoff(&mut self) {
        self.failures = (self.failures + 1).min(6);
        tokio::time::sleep(Duration::from_millis(100 << self.failures)).await;
    }
}

#[async_trait]
impl WorkSignal for PgSignal {
    async fn wait(&mut self) {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                let listened = async {
                    let mut l = PgListener::connect_with(&self.pool).await?;
                    l.listen(CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                }
                .await;
                match listened {
                    Ok(l) => {
                        if self.failures > 0 {
                            tracing::info!("Listening for new work again");
                        }
                        self.listener = Some(l);
                        self.failures = 0;
                        return;
                    }
                    Err(e) => {
                        if self.failures == 0 {
                            tracing::warn!(
                                "Cannot listen for new work ({e}); retrying, and polling meanwhile"
                            );
                        }
                        self.backoff().await;
                        continue;
                    }
                }
            };
            match listener.try_recv().await {
                Ok(Some(_)) => {
                    // Merge a burst of wake-ups into one.
                    while listener.next_buffered().is_some() {}
                    return;
                }
                Ok(None) => {
                    // The connection was lost and is being re-established:
                    // anything sent meanwhile is gone, so look now.
                    tracing::warn!("Lost the connection listening for new work; reconnecting");
                    return;
                }
                Err(e) => {
                    tracing::warn!("Listening for new work failed ({e}); reconnecting");
                    self.listener = None;
                    self.backoff().await;
                }
            }
        }
    }
}

/// A database of its own next to the one a URL names, for benchmarks:
/// created empty, dropped by [`ScratchDatabase::drop_now`]. Needs the
/// CREATEDB privilege.
pub struct ScratchDatabase {
    admin: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    pub async fn create(url: &str) -> Result<ScratchDatabase> {
        let name = format!(
            "ideamill_scratch_{}_{}",
            std::process::id(),
            common::now_millis()
        );
        let mut conn = PgConnection::connect(url)
            .await
            .map_err(|e| connect_error(&redact_url(url), url, e, false))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(ScratchDatabase {
            admin: url.to_string(),
            url: with_database(url, &name),
            name,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn drop_now(self) -> Result<()> {
        let mut conn = PgConnection::connect(&self.admin).await?;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(())
    }
}

/// `url` naming another database on the same server.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}
