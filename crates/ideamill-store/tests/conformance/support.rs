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

    /// Open a handle as processes do, judging leases by the store's own
    /// clock where it has one (PostgreSQL), whatever `now` callers pass.
    /// `open` judges them by the callers' `now` everywhere, so that tests
    /// can drive time.
    async fn open_with_store_clock(&self) -> Box<dyn Store> {
        self.open().await
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

    /// Run `sql` under the trait, for what nothing the store offers writes
    /// (a job's priority). Every handle must be closed first.
    async fn execute(&self, sql: &str);

    /// The indexes of `jobs` that hold only queued jobs, by name: what a
    /// claim's plan may choose from.
    async fn queue_indexes(&self) -> Vec<String>;

    /// The URL that names this test's database (`ideamill store copy`).
    fn url(&self) -> String;

    /// Take the gate tallies' migration back (its tables and its version,
    /// and the queued counts' after it), as a store from the build before it
    /// had them. Every handle must be closed first.
    async fn undo_gate_tallies(&self);

    /// Take the queued counts' migration back (its tables, triggers and
    /// version), as a store from the build before it had them. Every
    /// handle must be closed first.
    async fn undo_queued_counts(&self);

    /// A fresh, empty database of the other backend, for copies between
    /// the two.
    async fn other_kind(&self) -> Box<dyn Backend>;
}

/// A new database of the other backend holding a copy of `b`'s (every
/// handle on `b` closed first), and a handle open on the copy.
pub async fn copy_into_other_kind(b: &dyn Backend) -> (Box<dyn Backend>, Box<dyn Store>) {
    let other = b.other_kind().await;
    other.open().await.close().await;
    ideamill_store::transfer::copy(&b.url(), &other.url(), false)
        .await
        .unwrap();
    let t = other.open().await;
    (other, t)
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
    pub(crate) async fn raw(&self, create: bool) -> SqliteConnection {
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

    async fn execute(&self, sql: &str) {
        let mut conn = self.raw(false).await;
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .expect("run the SQL");
        conn.close().await.expect("close the plain connection");
    }

    async fn queue_indexes(&self) -> Vec<String> {
        let mut conn = self.raw(false).await;
        let names = sqlx::query_scalar(
            "SELECT name FROM sqlite_master
             WHERE type = 'index' AND tbl_name = 'jobs' AND sql LIKE '%WHERE state = ''queued''%'
             ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await
        .expect("list the queue's indexes");
        conn.close().await.expect("close the plain connection");
        names
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }

    async fn undo_queued_counts(&self) {
        self.execute(
            "-- First migrations 12 (0012_one_queue_index.sql) and 11
             -- (0011_lighter_finish.sql), which came after it.
             CREATE INDEX jobs_next_run ON jobs (stage, run_at) WHERE state = 'queued';
             DELETE FROM ideamill_schema WHERE version = 12;
             DROP TRIGGER items_count_update;
             CREATE TRIGGER items_count_update AFTER UPDATE OF state ON items
             WHEN old.state IS NOT new.state
             BEGIN
                 UPDATE item_counts SET n = n - 1 WHERE state = old.state;
                 UPDATE item_counts SET n = n + 1 WHERE state = new.state;
             END;
             CREATE INDEX items_finished ON items (finished_at) WHERE finished_at IS NOT NULL;
             DELETE FROM ideamill_schema WHERE version = 11;
             DROP TRIGGER jobs_count_insert;
             DROP TRIGGER jobs_count_delete;
             DROP TRIGGER jobs_count_update;
             DROP TABLE queued_counts;
             DELETE FROM ideamill_schema WHERE version = 10;",
        )
        .await;
    }

    async fn undo_gate_tallies(&self) {
        self.undo_queued_counts().await;
        self.execute(
            "DROP TABLE gate_tallies;
             DELETE FROM ideamill_schema WHERE version = 9;",
        )
        .await;
    }

    async fn other_kind(&self) -> Box<dyn Backend> {
        Box::new(PostgresBackend::create().await)
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
        round_hash: None,
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

/// `job`, its item's first, is running in its first attempt, held by
/// `owner` until `until`.
pub async fn assert_held_once(s: &dyn Store, job: &ClaimedJob, owner: &str, until: Millis) {
    let d = s.item(job.item_id).await.unwrap();
    assert_eq!(d.display_state, "running");
    let held = &d.jobs[0];
    assert_eq!(
        (held.id, held.state, held.attempts),
        (job.id, ideamill_core::JobState::Running, 1)
    );
    assert_eq!(held.lease_owner.as_deref(), Some(owner));
    assert_eq!(held.lease_expires_at, Some(until));
}

/// Finish `job` (held by `w1`) at `at` with an error that retries it at
/// `run_at`.
pub async fn retry_later(s: &dyn Store, job: &ClaimedJob, at: Millis, run_at: Millis) {
    let error = "exit status 1".into();
    let t = Transition::RetryAt { run_at, error };
    finish_ok(s, finish(job, "w1", at, t)).await;
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

/// The PostgreSQL server the suite uses, as an administrator's URL:
/// `DATABASE_URL` when set, else a throwaway cluster started once for this
/// test binary and stopped when it exits. No server fails the test.
fn postgres_server() -> &'static str {
    static SERVER: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let server = SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.is_empty()
        {
            return Ok(url);
        }
        let cluster = crate::cluster::Cluster::start()?;
        let url = cluster.url("postgres");
        // Statics are never dropped: stop the cluster when the process exits.
        static CLUSTER: std::sync::OnceLock<crate::cluster::Cluster> = std::sync::OnceLock::new();
        let _ = CLUSTER.set(cluster);
        extern "C" fn stop_cluster() {
            if let Some(c) = CLUSTER.get() {
                let _ = c.stop();
                let _ = std::fs::remove_dir_all(c.dir());
            }
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(stop_cluster) };
        Ok(url)
    });
    match server {
        Ok(url) => url,
        Err(e) => panic!(
            "no PostgreSQL for the PostgreSQL half of the conformance suite: {e}; \
             set DATABASE_URL or install the server binaries"
        ),
    }
}

/// PostgreSQL: a database of its own per test, dropped afterwards.
pub struct PostgresBackend {
    admin: String,
    name: String,
    url: String,
}

impl PostgresBackend {
    pub async fn create() -> PostgresBackend {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let admin = postgres_server().to_string();
        let name = format!(
            "ideamill_test_{}_{}_{:04x}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            fastrand_u16()
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connect to the PostgreSQL server for tests: {e}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("create the test database {name}: {e}"));
        let _ = conn.close().await;
        let url = ideamill_store::postgres::with_database(&admin, &name);
        PostgresBackend { admin, name, url }
    }

    pub async fn raw(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("open a plain PostgreSQL connection")
    }
}

fn fastrand_u16() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u16
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs inside a test's runtime: drop the database from a thread
        // with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

#[async_trait(?Send)]
impl Backend for PostgresBackend {
    async fn try_open(&self, must_exist: bool) -> Result<Box<dyn Store>, StoreError> {
        let options = OpenOptions {
            wake_dir: None,
            must_exist,
        };
        // The suite drives time through the `now` it passes (`T0`), so
        // leases are judged by it here, as on SQLite;
        // `open_with_store_clock` opens the store as processes do.
        let store = ideamill_store::postgres::PostgresStore::open(&self.url, &options).await?;
        Ok(Box::new(store.with_caller_clock()))
    }

    async fn open_with_store_clock(&self) -> Box<dyn Store> {
        let options = OpenOptions {
            wake_dir: None,
            must_exist: false,
        };
        ideamill_store::open(&self.url, &options)
            .await
            .unwrap_or_else(|e| panic!("open the test store: {e}"))
    }

    async fn exists(&self) -> bool {
        let mut conn = self.raw().await;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('ideamill_schema') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .expect("look for the store's tables");
        let _ = conn.close().await;
        exists
    }

    async fn set_schema_version(&self, version: i64) {
        let mut conn = self.raw().await;
        sqlx::query(
            "INSERT INTO ideamill_schema (version, applied_at, by) VALUES ($1, 0, 'ideamill 99.0.0')",
        )
        .bind(version)
        .execute(&mut conn)
        .await
        .expect("record a newer schema version");
        let _ = conn.close().await;
    }

    async fn create_foreign(&self) {
        self.execute(
            "CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL);
             INSERT INTO notes (id, body) VALUES (1, 'not an ideamill store');",
        )
        .await;
    }

    async fn fingerprint(&self) -> Vec<u8> {
        // The catalog of the public schema (tables, columns, indexes,
        // triggers, functions) and every row of every table, as text.
        let mut conn = self.raw().await;
        let mut out = String::new();
        for sql in [
            "SELECT COALESCE(string_agg(table_name || '.' || column_name || ' ' || data_type, E'\\n'
                                        ORDER BY table_name, ordinal_position), '')
             FROM information_schema.columns WHERE table_schema = 'public'",
            "SELECT COALESCE(string_agg(indexdef, E'\\n' ORDER BY indexdef), '') FROM pg_indexes
             WHERE schemaname = 'public'",
            "SELECT COALESCE(string_agg(tgname, E'\\n' ORDER BY tgname), '') FROM pg_trigger WHERE NOT tgisinternal",
            "SELECT COALESCE(string_agg(p.proname, E'\\n' ORDER BY p.proname), '') FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'",
        ] {
            let part: String = sqlx::query_scalar(sql)
                .fetch_one(&mut conn)
                .await
                .expect("read the catalog");
            out.push_str(&part);
            out.push('\n');
        }
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .expect("list the tables");
        for table in tables {
            let rows: String = sqlx::query_scalar(&format!(
                "SELECT COALESCE(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {table} t"
            ))
            .fetch_one(&mut conn)
            .await
            .expect("read a table");
            out.push_str(&format!("== {table}\n{rows}\n"));
        }
        let _ = conn.close().await;
        out.into_bytes()
    }

    async fn count_rows(&self, table: &str) -> i64 {
        let mut conn = self.raw().await;
        let n = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .expect("count rows");
        let _ = conn.close().await;
        n
    }

    async fn execute(&self, sql: &str) {
        let mut conn = self.raw().await;
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .expect("run the SQL");
        let _ = conn.close().await;
    }

    async fn queue_indexes(&self) -> Vec<String> {
        let mut conn = self.raw().await;
        let names = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename = 'jobs'
               AND indexdef LIKE '%WHERE (state = ''queued''::text)'
             ORDER BY indexname",
        )
        .fetch_all(&mut conn)
        .await
        .expect("list the queue's indexes");
        let _ = conn.close().await;
        names
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn undo_queued_counts(&self) {
        self.execute(
            "-- First migrations 12 (0012_one_queue_index.sql), 11
             -- (0011_add_sets_current.sql) and 10 (0010_lighter_finish.sql),
             -- which came after it.
             CREATE INDEX jobs_next_run ON jobs (stage, run_at) WHERE state = 'queued';
             DELETE FROM ideamill_schema WHERE version = 12;
             CREATE OR REPLACE FUNCTION ideamill_jobs_set_current() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 UPDATE items SET current_job_id = NEW.id, stage = NEW.stage, round = NEW.round,
                                  updated_at = NEW.created_at
                 WHERE id = NEW.item_id;
                 RETURN NULL;
             END;
             $$;
             DELETE FROM ideamill_schema WHERE version = 11;
             DROP TRIGGER items_count_update ON items;
             CREATE TRIGGER items_count_update AFTER UPDATE OF state ON items
                 FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
                 EXECUTE FUNCTION ideamill_count_changed_item();
             CREATE INDEX items_finished ON items (finished_at) WHERE finished_at IS NOT NULL;
             DELETE FROM ideamill_schema WHERE version = 10;
             DROP TRIGGER jobs_count_insert ON jobs;
             DROP TRIGGER jobs_count_delete ON jobs;
             DROP TRIGGER jobs_count_update ON jobs;
             DROP FUNCTION ideamill_count_inserted_jobs, ideamill_count_deleted_jobs,
                 ideamill_count_moved_job;
             DROP TABLE queued_counts, queued_count_deltas;
             DELETE FROM ideamill_schema WHERE version = 9;",
        )
        .await;
    }

    async fn undo_gate_tallies(&self) {
        self.undo_queued_counts().await;
        self.execute(
            "DROP TABLE gate_tallies, gate_tally_deltas;
             DELETE FROM ideamill_schema WHERE version = 8;",
        )
        .await;
    }

    async fn other_kind(&self) -> Box<dyn Backend> {
        Box::new(SqliteBackend::create().await)
    }
}
