//! Opening a SQLite store: the file private to the mill's user, a look at
//! an existing database before anything touches it, the migrations, and
//! errors that say whether the file or the disk is at fault.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::SqliteStore;
use crate::common::now_millis;
use crate::wake::{LocalWake, WakeDir};
use crate::*;

/// Schema migrations, embedded in the binary, applied in order at open.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_intake.sql")),
    (
        3,
        include_str!("../../migrations/sqlite/0003_dashboard.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_status_reads.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_id_high_water.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_loop_rules.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_failure_class.sql"),
    ),
    (8, include_str!("../../migrations/sqlite/0008_trace_id.sql")),
    (
        9,
        include_str!("../../migrations/sqlite/0009_gate_tallies.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_queued_counts.sql"),
    ),
    (
        11,
        include_str!("../../migrations/sqlite/0011_lighter_finish.sql"),
    ),
    (
        12,
        include_str!("../../migrations/sqlite/0012_one_queue_index.sql"),
    ),
];
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Page cache budgets, in KiB (`PRAGMA cache_size` of minus that). Each
/// SQLite connection keeps the pages it has read, up to 2 MiB by default,
/// and a mill's database grows for months: five connections filled their
/// caches over hours, and bench soak saw the engine's memory climb all that
/// time. The writer keeps the hot path's pages (the queue's indexes, the
/// newest rows); the readers, which serve contexts, status and pages, keep
/// little (a miss is a read from the kernel's page cache). So SQLite holds
/// at most about 4 MiB of pages in an engine, reached in its first minutes.
const WRITER_CACHE_KIB: u32 = 2048;
const READER_CACHE_KIB: u32 = 512;
/// The idle beat's connection reads a few index pages.
const BEAT_CACHE_KIB: u32 = 64;
/// Readers in the pool.
const READERS: u32 = 4;
/// The WAL's length, in pages, past which the writer's commit copies it
/// back into the database (SQLite's default is 1,000). A queue rewrites the
/// same pages (its indexes' ends, the counters) again and again, and a
/// checkpoint copies each page once however often the WAL holds it: ten
/// times fewer checkpoints copy far fewer pages and sync the file ten times
/// less, for a WAL of up to about 40 MiB on disk. An idle engine's beat
/// (its own connection, the default length) checkpoints a long WAL left
/// over from a burst.
const WAL_CHECKPOINT_PAGES: u32 = 10_000;

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
    /// Open (or create) the database of a `sqlite://` URL and migrate it as `options` allow.
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
            .pragma("temp_store", "memory")
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"));
        // A connection in this process cannot go stale between uses: no ping
        // before each (it is a round trip to the connection's thread, and
        // two thread wake-ups, for every statement).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(
                connect
                    .clone()
                    .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string()),
            )
            .await
            .map_err(|e| open_error(&path, e))?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(
                connect
                    .clone()
                    .read_only(true)
                    .pragma("cache_size", format!("-{READER_CACHE_KIB}")),
            )
            .await?;
        let contexts = super::finish::context_reader(&reader);
        Ok(SqliteStore {
            beat: tokio::sync::Mutex::new(None),
            beat_options: connect.pragma("cache_size", format!("-{BEAT_CACHE_KIB}")),
            path,
            writer,
            reader,
            wake: options.wake_dir.as_deref().map(WakeDir::new),
            local: LocalWake::new(),
            claimer: Default::default(),
            contexts,
        })
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
    ideamill_sys::fs::free_bytes(path.parent()?).map(|b| b / 1024)
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
