//! Opening a PostgreSQL store: a look at the database before anything is
//! written, the migrations under an advisory lock, errors that say whether
//! waiting helps (without a URL's password), the schema check `doctor` runs,
//! and scratch databases for benchmarks.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgConnection};

use super::PostgresStore;
use crate::common::{self, RowExt};
use crate::wake::LocalWake;
use crate::*;

/// Schema migrations, embedded in the binary, applied in order at open.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_intake.sql")),
    (
        3,
        include_str!("../../migrations/postgres/0003_dashboard.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_item_counts.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_loop_rules.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_failure_class.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_trace_id.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_gate_tallies.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_queued_counts.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_lighter_finish.sql"),
    ),
    (
        11,
        include_str!("../../migrations/postgres/0011_add_sets_current.sql"),
    ),
    (
        12,
        include_str!("../../migrations/postgres/0012_one_queue_index.sql"),
    ),
];
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The advisory lock that serializes migrators ("ideamill" in ASCII).
const MIGRATION_LOCK: i64 = 0x6964_6561_6d69_6c6c;

/// Connections per process: the dispatcher, the completer, the heartbeat,
/// the listener and job tasks reading their context share them.
const POOL_SIZE: u32 = 8;

/// How long a connection may sit idle and still be used without a check: a
/// server restart, which cuts every connection, takes longer.
pub(super) const UNCHECKED_IDLE: Duration = Duration::from_secs(1);

impl PostgresStore {
    /// Connect to the database at `url` and migrate it as `options` allow.
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
        let connect = plain_on_loopback(connect, url);
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
                    if meta.idle_for > UNCHECKED_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(connect);
        // Jobs start in bursts (a claim hands out dozens): their context
        // reads share one query.
        let contexts = super::context::reader(&pool);
        let warm = super::warm::WarmConnection::new(pool.clone());
        Ok(PostgresStore {
            pool,
            db_clock: true,
            contexts,
            warm,
            local: LocalWake::new(),
            claimer: Default::default(),
            wake_id: crate::wake::handle_id(),
        })
    }

    /// PostgreSQL checks its own pages; what can go wrong here is the
    /// schema: a table dropped or a version this build does not know.
    pub(super) async fn check_schema(&self) -> Result<Vec<String>> {
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

/// `connect` without TLS if it reaches a server on this machine (a loopback
/// address, `localhost` or a Unix socket) and neither the URL nor
/// `PGSSLMODE` chose an `sslmode`. The default, `prefer`, never checks whose
/// certificate it is, so it guards nothing against a local impostor, and
/// loopback traffic never leaves the kernel; it cost 0.1-0.25 ms of each
/// idle round trip (`bench pickup --store`). A chosen mode is kept.
fn plain_on_loopback(connect: PgConnectOptions, url: &str) -> PgConnectOptions {
    if tls_guards_nothing(&connect, url, std::env::var_os("PGSSLMODE").is_some()) {
        connect.ssl_mode(PgSslMode::Disable)
    } else {
        connect
    }
}

/// Whether `connect` (parsed from `url`) reaches this machine with an
/// `sslmode` nobody chose (`env_chose`: `PGSSLMODE` is set).
fn tls_guards_nothing(connect: &PgConnectOptions, url: &str, env_chose: bool) -> bool {
    let query = url.split_once('?').map_or("", |(_, query)| query);
    let url_chose = query.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or_default();
        key.eq_ignore_ascii_case("sslmode") || key.eq_ignore_ascii_case("ssl-mode")
    });
    if env_chose || url_chose || !matches!(connect.get_ssl_mode(), PgSslMode::Prefer) {
        return false;
    }
    let host = connect.get_host();
    connect.get_socket().is_some()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

/// A database of its own next to the one a URL names, for benchmarks:
/// created empty, dropped by [`ScratchDatabase::drop_now`]. Needs the
/// CREATEDB privilege.
pub struct ScratchDatabase {
    admin: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// Create an empty database next to the one `url` names.
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

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drop the database (it must have no connections left).
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

/// The server's counters of the database `url` names and of its WAL, read
/// once every other connection to the database is closed (a backend sends
/// its counts when its session ends), for a benchmark's before and after.
pub async fn server_counters(url: &str) -> Result<ServerCounters> {
    let mut conn = PgConnection::connect(url).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await?;
        if others == 0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A snapshot taken now, not the one cached earlier in this session.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut conn)
        .await?;
    let row = sqlx::query(
        "SELECT d.xact_commit, d.tup_inserted + d.tup_updated + d.tup_deleted AS rows_written,
                w.wal_sync, w.wal_bytes::int8 AS wal_bytes
         FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(ServerCounters {
        commits: row.int("xact_commit")?,
        rows_written: row.int("rows_written")?,
        wal_syncs: row.int("wal_sync")?,
        wal_bytes: row.int("wal_bytes")?,
    })
}

/// What the server counted for one database and its WAL (see
/// [`server_counters`]); the WAL's counts are the whole server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerCounters {
    /// Transactions committed in the database.
    pub commits: i64,
    /// Rows inserted, updated and deleted in the database.
    pub rows_written: i64,
    /// Times the server flushed WAL to disk (`pg_stat_wal.wal_sync`).
    pub wal_syncs: i64,
    /// WAL written, in bytes.
    pub wal_bytes: i64,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn guards_nothing(url: &str) -> bool {
        tls_guards_nothing(&PgConnectOptions::from_str(url).unwrap(), url, false)
    }

    #[test]
    fn tls_is_left_out_only_on_this_machine_and_only_when_nobody_chose() {
        for url in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@127.3.4.5/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@127.0.0.1/db?application_name=x",
            "postgres:///db?host=/var/run/postgresql",
        ] {
            assert!(guards_nothing(url), "{url}");
        }
        for url in [
            "postgres://u@db.example.org/db",
            "postgres://u@10.0.0.7/db",
            "postgres://u@[2001:db8::1]/db",
            "postgres://u@127.0.0.1/db?sslmode=prefer",
            "postgres://u@127.0.0.1/db?sslmode=require",
            "postgres://u@localhost/db?application_name=x&SSLMODE=verify-full",
            "postgres://u@127.0.0.1/db?ssl-mode=require",
        ] {
            assert!(!guards_nothing(url), "{url}");
        }
        let url = "postgres://u@127.0.0.1/db";
        let connect = PgConnectOptions::from_str(url).unwrap();
        assert!(
            !tls_guards_nothing(&connect, url, true),
            "PGSSLMODE is a choice too"
        );
    }
}
