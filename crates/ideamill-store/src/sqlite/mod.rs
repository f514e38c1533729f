//! The SQLite store: WAL mode, one writer connection (so writes in this
//! process never contend with each other; an idle engine's beat has its own
//! connection, and writes one row when the writer has nothing to do), a
//! small pool of readers, and Unix-socket wake-ups for other processes.
//! Every write transaction takes the write lock first (`BEGIN IMMEDIATE`),
//! so a read inside it can never be invalidated by another process's commit.
//!
//! What is written once for both databases lives in `shared/`; here are the
//! hooks it needs and the hot paths: `leases.rs` (claim, heartbeat, release,
//! queue reads), `finish.rs` (finish, context), `write.rs` (the rows written
//! many at a time), `open.rs`.

mod copy;
mod finish;
mod inline_tx;
mod leases;
mod open;
mod write;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ideamill_core::Millis;
use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use crate::common;
use crate::shared::Backend;
use crate::wake::{LocalWake, NeverSignal, WakeDir, WorkSignal};
use crate::*;

pub use crate::common::day_start;
pub(crate) use copy::copy_endpoint;

common::impl_row_ext!(SqliteRow);

type Tx = crate::shared::Tx<Sqlite>;

/// The SQLite store: one database file, written by one connection at a time.
pub struct SqliteStore {
    path: PathBuf,
    writer: SqlitePool,
    reader: SqlitePool,
    wake: Option<WakeDir>,
    /// Wakes this handle's own subscribers.
    local: LocalWake,
    /// The engine of this process that new jobs are handed to (`handoff.rs`).
    claimer: crate::handoff::ClaimerSlot,
    /// Reads of jobs' contexts, gathered into one statement per burst.
    contexts: crate::contexts::ContextReader,
    /// The idle beat's own connection, outside the pools, opened at the
    /// first idle beat: a pooled connection costs its thread and the
    /// caller's loop a second wake-up per statement (sqlx pings each one it
    /// is given back), and an idle engine's beat is most of what it does.
    beat: tokio::sync::Mutex<Option<sqlx::SqliteConnection>>,
    beat_options: sqlx::sqlite::SqliteConnectOptions,
}

impl SqliteStore {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wake the engines of other handles (other processes): what a finish
    /// does when it enqueued work, since the engine that finished knows.
    fn notify_others(&self) {
        if let Some(wake) = &self.wake {
            wake.notify();
        }
    }
}

#[async_trait]
impl Backend for SqliteStore {
    type Db = Sqlite;

    // Kept by triggers (0004_status_reads.sql) and, for an item that ends
    // done, by the finish (0011_lighter_finish.sql): four rows, not a count.
    const ITEM_COUNTS: &'static str = "SELECT state, n FROM item_counts";
    // Kept by triggers (0010_queued_counts.sql): a row per stage, not a count.
    const QUEUED_COUNTS: &'static str = "SELECT stage, n FROM queued_counts";
    // One writer: the finish adds to the counters' rows themselves
    // (0009_gate_tallies.sql).
    const TALLIES: &'static str = "gate_tallies";
    const TALLIES_INTO: &'static str = "gate_tallies";
    const TALLIES_MERGE: &'static str = crate::shared::tallies::MERGE;
    // The write lock is held already.
    const LOCK_ITEM: &'static str = "";
    // Above every id in use and every id ever deleted (`id_high_water`), so
    // that no id is given twice, even after the newest items were pruned.
    const NEW_ITEM_ID: &'static str = write::NEXT_ITEM_ID;
    // One machine: the caller's clock judges leases.
    const ANY_EXPIRED: &'static str =
        "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < $1 LIMIT 1";
    const EXPIRED_JOBS: &'static str = "SELECT id, item_id, stage, round, attempts, max_attempts, lease_token, lease_owner, cancel_requested,
                COALESCE(started_at, updated_at) AS started_at, run_at
         FROM jobs WHERE state = 'running' AND lease_expires_at < $1 ORDER BY id LIMIT 1000";
    const EXPIRED_COUNT: &'static str =
        "SELECT count(*) AS n FROM jobs WHERE state = 'running' AND lease_expires_at < $1";
    const EXPIRE_LEASES: &'static str =
        "UPDATE jobs SET lease_expires_at = $1 WHERE lease_owner = $3 AND state = 'running'";

    fn store_clock(&self) -> bool {
        false
    }

    async fn read(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.reader.acquire().await?)
    }

    async fn read_tx(&self) -> Result<Tx> {
        Ok(self.reader.begin().await?)
    }

    /// A write transaction that takes the write lock at once, so that a read
    /// inside it can never be invalidated by another process's commit.
    async fn write_tx(&self) -> Result<Tx> {
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

    /// Other processes are woken once the commit made the work visible.
    async fn commit(&self, tx: Tx, wake: bool) -> Result<()> {
        tx.commit().await?;
        if wake {
            Backend::notify(self);
        }
        Ok(())
    }

    fn search(terms: &[String]) -> (&'static str, &'static str, String) {
        // FTS5 hands out matches by rowid, newest first, so a page stops
        // reading as soon as it is full.
        (
            "FROM items_fts f JOIN items i ON i.id = f.rowid LEFT JOIN jobs j ON j.id = i.current_job_id WHERE items_fts MATCH $4",
            "f.rowid",
            crate::dashboard::fts5_query(terms),
        )
    }

    async fn quick_check(&self) -> Result<Vec<String>> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    fn subscribe(&self) -> Result<Box<dyn WorkSignal>> {
        match &self.wake {
            Some(wake) => Ok(self.local.with(wake.subscribe()?)),
            None => Ok(self.local.with(NeverSignal)),
        }
    }

    fn claimer(&self) -> &crate::handoff::ClaimerSlot {
        &self.claimer
    }

    fn notify(&self) {
        self.local.notify();
        self.notify_others();
    }

    async fn close(&self) {
        if let Some(beat) = self.beat.lock().await.take() {
            let _ = sqlx::Connection::close(beat).await;
        }
        self.reader.close().await;
        self.writer.close().await;
    }

    fn is_remote(&self) -> bool {
        false
    }

    async fn clock_millis(&self) -> Result<Option<Millis>> {
        Ok(None)
    }
}
