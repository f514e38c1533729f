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
//!
//! What is written once for both databases lives in `shared/`; here are the
//! hooks it needs and the hot paths: `leases.rs` (claim, heartbeat, release,
//! queue reads), `finish.rs`, `context.rs` (batched context reads),
//! `write.rs` (the rows written many at a time), `signal.rs` (`LISTEN`),
//! `warm.rs` (the connection adds and claims run on), `open.rs`.

mod context;
mod copy;
mod finish;
mod leases;
mod open;
mod signal;
mod warm;
mod write;

use async_trait::async_trait;
use ideamill_core::Millis;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgRow};

use crate::common;
use crate::shared::Backend;
use crate::wake::{LocalWake, WorkSignal};
use crate::*;

pub(crate) use copy::copy_endpoint;
pub use open::{ScratchDatabase, ServerCounters, server_counters, with_database};

common::impl_row_ext!(PgRow);

/// The channel engines `LISTEN` on; a notification means "new work".
const CHANNEL: &str = "ideamill_work";

type Tx = crate::shared::Tx<Postgres>;

/// The database server's clock in ms since the Unix epoch, as SQL: the
/// transaction's start (`now()`, stable within a statement, so that the
/// reaper's comparison can use the lease index).
macro_rules! db_now {
    () => {
        "(extract(epoch from now()) * 1000)::int8"
    };
}
use db_now;

/// The lease clock of the lease statements: the database's when `$2`, else
/// the caller's `$1`.
macro_rules! lease_clock {
    () => {
        concat!("CASE WHEN $2 THEN ", db_now!(), " ELSE $1 END")
    };
}

/// The PostgreSQL store: a connection pool to one database.
pub struct PostgresStore {
    pool: PgPool,
    /// Leases are judged by the database's clock (the default); false only
    /// for tests that drive time through the `now` they pass.
    db_clock: bool,
    /// Reads of jobs' contexts, gathered into one query per batch.
    contexts: crate::contexts::ContextReader,
    /// The connection adds and claims run on (`warm.rs`).
    warm: warm::WarmConnection,
    /// Wakes this handle's own subscribers, in process.
    local: LocalWake,
    /// The engine of this process that new jobs are handed to (`handoff.rs`).
    claimer: crate::handoff::ClaimerSlot,
    /// This handle's `NOTIFY` payload, so that its subscribers skip what
    /// `local` already told them.
    wake_id: String,
}

impl PostgresStore {
    /// Judge leases by the `now` callers pass, as SQLite does, instead of
    /// the database's clock. For tests that drive time (the conformance
    /// suite's fixed clock); never for processes sharing a database, whose
    /// clocks may disagree.
    pub fn with_caller_clock(mut self) -> PostgresStore {
        self.db_clock = false;
        self
    }

    /// Fold the item and queued job count and gate tally deltas writers appended
    /// into the base counts, in one round trip. Two processes folding at once
    /// serialize on the delta rows (and on the counters' keys, taken in one
    /// order); neither counts a delta twice.
    async fn fold_counts(&self) -> Result<()> {
        sqlx::raw_sql(
            "WITH moved AS (DELETE FROM item_count_deltas RETURNING state, n),
                  sums AS (SELECT state, SUM(n) AS n FROM moved GROUP BY state)
             UPDATE item_counts c SET n = c.n + sums.n FROM sums WHERE c.state = sums.state;
             WITH moved AS (DELETE FROM queued_count_deltas RETURNING stage, n)
             INSERT INTO queued_counts (stage, n)
             SELECT stage, SUM(n) FROM moved GROUP BY stage ORDER BY stage
             ON CONFLICT (stage) DO UPDATE SET n = queued_counts.n + excluded.n;
             WITH moved AS (DELETE FROM gate_tally_deltas RETURNING stage, round, model, outcome, n)
             INSERT INTO gate_tallies (stage, round, model, outcome, n)
             SELECT stage, round, model, outcome, SUM(n) FROM moved
             GROUP BY stage, round, model, outcome
             ORDER BY stage, round, outcome, model
             ON CONFLICT (stage, round, outcome, (COALESCE(model, '')), ((model IS NULL)))
             DO UPDATE SET n = gate_tallies.n + excluded.n;",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Backend for PostgresStore {
    type Db = Postgres;

    // Base counts plus the deltas not folded in yet (0004_item_counts.sql).
    const ITEM_COUNTS: &'static str = "SELECT state, CAST(SUM(n) AS BIGINT) AS n
         FROM (SELECT state, n FROM item_counts UNION ALL SELECT state, n FROM item_count_deltas) c
         GROUP BY state";
    // Base counts plus the deltas not folded in yet (0009_queued_counts.sql).
    const QUEUED_COUNTS: &'static str = "SELECT stage, CAST(SUM(n) AS BIGINT) AS n
         FROM (SELECT stage, n FROM queued_counts UNION ALL SELECT stage, n FROM queued_count_deltas) u
         GROUP BY stage";
    // Writers append deltas, each heartbeat folds them in
    // (0008_gate_tallies.sql).
    const TALLIES: &'static str = "(SELECT stage, round, model, outcome, n FROM gate_tallies
         UNION ALL SELECT stage, round, model, outcome, n FROM gate_tally_deltas)";
    const TALLIES_INTO: &'static str = "gate_tally_deltas";
    const TALLIES_MERGE: &'static str = "";
    // Jobs before items is the lock order of a finish, a cancel and a prune.
    // A retry starts from its item and locks it first: it writes only a job
    // no finish holds (queued or paused) or a new one.
    const LOCK_ITEM: &'static str = " FOR UPDATE OF i";
    // The identity sequence, which never goes back.
    const NEW_ITEM_ID: &'static str = "DEFAULT";
    const ANY_EXPIRED: &'static str = concat!(
        "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < ",
        lease_clock!(),
        " LIMIT 1"
    );
    // Rows another reaper (or a late finish) holds are skipped: whoever
    // holds them deals with them.
    const EXPIRED_JOBS: &'static str = concat!(
        "SELECT id, item_id, stage, round, attempts, max_attempts, lease_token, lease_owner, cancel_requested,
                COALESCE(started_at, updated_at) AS started_at, run_at
         FROM jobs WHERE state = 'running' AND lease_expires_at < ",
        lease_clock!(),
        " ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED"
    );
    const EXPIRED_COUNT: &'static str = concat!(
        "SELECT count(*) AS n FROM jobs WHERE state = 'running' AND lease_expires_at < ",
        lease_clock!()
    );
    const EXPIRE_LEASES: &'static str = concat!(
        "UPDATE jobs SET lease_expires_at = CASE WHEN $2 THEN ",
        db_now!(),
        " - 1 ELSE $1 END WHERE lease_owner = $3 AND state = 'running'"
    );

    /// Held to the end of the transaction ("budget" in ASCII).
    const LOCK_BUDGET: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(108256335193460)");

    fn store_clock(&self) -> bool {
        self.db_clock
    }

    async fn read(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    /// A read-only transaction that sees one snapshot, so that the parts of
    /// an answer agree with each other.
    async fn read_tx(&self) -> Result<Tx> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }

    /// Row locks, not a write lock: writes lock jobs before items.
    async fn write_tx(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
    }

    /// The wake-up is sent inside the transaction, so that PostgreSQL
    /// delivers it at commit: a woken engine always sees the work.
    async fn commit(&self, mut tx: Tx, wake: bool) -> Result<()> {
        if wake {
            write::notify_in(&mut tx, &self.wake_id).await?;
        }
        tx.commit().await?;
        if wake {
            self.local.notify();
        }
        Ok(())
    }

    fn search(terms: &[String]) -> (&'static str, &'static str, String) {
        // The expression is the GIN index's (0003_dashboard.sql), word for word.
        (
            "FROM items i LEFT JOIN jobs j ON j.id = i.current_job_id WHERE to_tsvector('simple', i.text) @@ to_tsquery('simple', $4)",
            "i.id",
            crate::dashboard::tsquery(terms),
        )
    }

    async fn quick_check(&self) -> Result<Vec<String>> {
        self.check_schema().await
    }

    fn subscribe(&self) -> Result<Box<dyn WorkSignal>> {
        Ok(self.local.with(signal::PgSignal::new(
            self.pool.clone(),
            self.wake_id.clone(),
        )))
    }

    fn claimer(&self) -> &crate::handoff::ClaimerSlot {
        &self.claimer
    }

    fn notify(&self) {
        self.local.notify();
        signal::notify(&self.pool, &self.wake_id);
    }

    async fn close(&self) {
        self.warm.release();
        self.pool.close().await;
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
}
