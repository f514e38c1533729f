//! Fixtures for the conformance suite: the `Backend` each test runs against,
//! and small builders and assertions shared by the behaviour tests.

use std::path::PathBuf;

use async_trait::async_trait;
use ideamill_core::machine::{NextJob, Transition};
use ideamill_core::{AttemptOutcome, ItemId, Millis};
use ideamill_store::{
    ClaimedJob, Event, EventFilter, Finish, FinishEffect, NewItem, OpenOptions, Store, StoreError,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

/// The clock the tests control; the store never reads it except where noted.
pub const T0: Millis = 1_000_000;
/// The lease length `claim_one` uses.
pub const LEASE: Millis = 30_000;

/// A fresh, empty database for one test, and the few things a test needs to
/// do beneath the `Store` trait. A new backend implements this once and is
/// added to the list at the bottom of `conformance.rs`.
///
/// Not `Send`: the compiler cannot prove `sqlx::raw_sql` futures `Send` in
/// a boxed trait future, and tests await these directly anyway.
#[async_trait(?Send)]
pub trait Backend {
    /// Open a handle on this test's database (creating and migrating it).
    async fn try_open(&self, must_exist: bool) -> Result<Box<dyn Store>, StoreError>;

    /// Open a handle, failing the test if that fails.
    async fn open(&self) -> Box<dyn Store> {
        match self.try_open(false).await {
            Ok(store) => store,
            Err(e) => panic!("open the test store: {e}"),
        }
    }

    /// Whether the database exists at all.
    async fn exists(&self) -> bool;

    /// Record a schema version above any this build knows, as a newer
    /// ideamill would. Every handle must be closed first.
    async fn set_schema_version(&self, version: i64);

    /// Create, instead of a store, a database some other program owns.
    async fn create_foreign(&self);

    /// Everything stored, as bytes: equal fingerprints mean nothing changed.
    /// Every handle must be closed first.
    async fn fingerprint(&self) -> Vec<u8>;

    /// Rows in one of the store's tables, for what the trait cannot show
    /// (rows of pruned items).
    async fn count_rows(&self, table: &str) -> i64;
}

/// SQLite: one database file in a temp dir, wake sockets next to it.
pub struct SqliteBackend {
    dir: tempfile::TempDir,
}

impl SqliteBackend {
    pub async fn create() -> SqliteBackend {
        SqliteBackend {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("t.db")
    }

    /// A plain connection that sets no journal mode, so that it leaves the
    /// file as it finds it.
    async fn raw(&self, create: bool) -> SqliteConnection {
        SqliteConnectOptions::new()
            .filename(self.db())
            .create_if_missing(create)
            .connect()
            .await
            .expect("open a plain SQLite connection")
    }
}

#[async_trait(?Send)]
impl Backend for SqliteBackend {
    async fn try_open(&self, must_exist: bool) -> Result<Box<dyn Store>, StoreError> {
        let options = OpenOptions {
            wake_dir: Some(self.dir.path().join("wake")),
            must_exist,
        };
        ideamill_store::open(&format!("sqlite://{}", self.db().display()), &options).await
    }

    async fn exists(&self) -> bool {
        self.db().exists()
    }

    async fn set_schema_version(&self, version: i64) {
        let mut conn = self.raw(false).await;
        sqlx::query("INSERT INTO ideamill_schema (version, applied_at, by) VALUES (?, 0, 'ideamill 99.0.0')")
            .bind(version)
            .execute(&mut conn)
            .await
            .expect("record a newer schema version");
        // Closing the last connection checkpoints the WAL into the main file,
        // so the fingerprint below sees every byte.
        conn.close().await.expect("close the plain connection");
    }

    async fn create_foreign(&self) {
        // Another program's database, in SQLite's default rollback-journal
        // mode, as most tools leave it.
        let mut conn = SqliteConnectOptions::new()
            .filename(self.db())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete)
            .connect()
            .await
            .expect("create a foreign database");
        sqlx::raw_sql(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
             INSERT INTO notes (body) VALUES ('not an ideamill store');",
        )
        .execute(&mut conn)
        .await
        .expect("fill the foreign database");
        conn.close().await.expect("close the foreign database");
    }

    async fn fingerprint(&self) -> Vec<u8> {
        std::fs::read(self.db()).expect("read the database file")
    }

    async fn count_rows(&self, table: &str) -> i64 {
        let mut conn = self.raw(false).await;
        let n = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .expect("count rows");
        conn.close().await.expect("close the plain connection");
        n
    }
}

pub fn next(stage: &str, round: u32, max_attempts: u32) -> NextJob {
    NextJob {
        stage: stage.to_string(),
        round,
        max_attempts,
    }
}

pub fn new_items(texts: &[&str]) -> Vec<NewItem> {
    texts
        .iter()
        .map(|t| NewItem {
            text: t.to_string(),
            metadata: serde_json::json!({}),
        })
        .collect()
}

/// Add one item whose first job is `first`; returns its id.
pub async fn add_one(s: &dyn Store, text: &str, first: &NextJob, now: Millis) -> ItemId {
    let ids = s
        .add_items(&new_items(&[text]), first, now)
        .await
        .expect("add an item");
    assert_eq!(ids.len(), 1);
    ids[0]
}

/// Claim exactly one job of `stage` at `now`, leased for `LEASE`.
pub async fn claim_one(s: &dyn Store, stage: &str, owner: &str, now: Millis) -> ClaimedJob {
    let mut jobs = s
        .claim(stage, 1, owner, now, now + LEASE)
        .await
        .expect("claim");
    assert_eq!(
        jobs.len(),
        1,
        "expected one runnable `{stage}` job at {now}"
    );
    jobs.remove(0)
}

pub fn advance(output: &str, next: Option<NextJob>) -> Transition {
    Transition::Advance {
        output: output.to_string(),
        next,
    }
}

/// A finished attempt of `job`, with the outcome its transition implies.
pub fn finish(job: &ClaimedJob, owner: &str, at: Millis, transition: Transition) -> Finish {
    let (outcome, output, error) = match &transition {
        Transition::Advance { output, .. } => {
            (AttemptOutcome::Succeeded, Some(output.clone()), None)
        }
        Transition::SendBack { feedback, .. } => {
            (AttemptOutcome::Rejected, Some(feedback.clone()), None)
        }
        Transition::RetryAt { error, .. } => (AttemptOutcome::Error, None, Some(error.clone())),
        Transition::FailItem { reason, .. } => {
            (AttemptOutcome::Permanent, None, Some(reason.clone()))
        }
        Transition::Cancel => (AttemptOutcome::Cancelled, None, None),
        Transition::Pause { reason } => (AttemptOutcome::Paused, None, Some(reason.clone())),
    };
    Finish {
        job: job.clone(),
        owner: owner.to_string(),
        outcome,
        started_at: job.claimed_at,
        finished_at: at,
        exit_code: Some(if outcome == AttemptOutcome::Succeeded {
            0
        } else {
            1
        }),
        error,
        output,
        stderr: None,
        usage: None,
        transition,
    }
}

/// Apply one finish and return its slot.
pub async fn finish_one(s: &dyn Store, f: Finish) -> Result<FinishEffect, StoreError> {
    let mut results = s.finish(&[f]).await.expect("finish");
    assert_eq!(results.len(), 1, "one result per finish");
    results.remove(0)
}

/// Apply one finish that must succeed.
pub async fn finish_ok(s: &dyn Store, f: Finish) -> FinishEffect {
    match finish_one(s, f).await {
        Ok(effect) => effect,
        Err(e) => panic!("finish failed: {e}"),
    }
}

/// The events of `kind` about `item`, oldest first.
pub async fn events_of(s: &dyn Store, item: Option<ItemId>, kind: &str) -> Vec<Event> {
    s.events(&EventFilter {
        item,
        kind: Some(kind.to_string()),
        since: None,
        limit: 1000,
    })
    .await
    .expect("read events")
}

/// The error a call returned, failing the test if it succeeded.
pub fn expect_err<T>(r: Result<T, StoreError>, what: &str) -> StoreError {
    match r {
        Ok(_) => panic!("{what}: expected an error, got success"),
        Err(e) => e,
    }
}

/// Fail unless two fingerprints are equal, naming where they first differ
/// (printing whole database files would bury the message).
pub fn assert_unchanged(before: &[u8], after: &[u8], what: &str) {
    if before == after {
        return;
    }
    let differ: Vec<usize> = before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .take(8)
        .collect();
    panic!(
        "{what} was modified: {} bytes before, {} after; first differing offsets {differ:?} \
         (before {:?}, after {:?})",
        before.len(),
        after.len(),
        differ.iter().map(|&i| before[i]).collect::<Vec<_>>(),
        differ.iter().map(|&i| after[i]).collect::<Vec<_>>(),
    );
}
