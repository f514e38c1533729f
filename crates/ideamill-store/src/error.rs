//! The store's errors, named by cause.

use ideamill_core::ItemId;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The item asked for does not exist (or was pruned).
    #[error("no item with id {0}")]
    NoSuchItem(ItemId),
    /// The request makes no sense for the data as it is (e.g. retrying an active item).
    #[error("{0}")]
    InvalidRequest(String),
    /// The job's lease token no longer matches: the job was reaped, so its result is discarded.
    #[error("the lease on this job was lost: another process may run it")]
    LeaseLost,
    /// The database's schema is newer than this build knows.
    #[error(
        "the database at {path} was written by a newer ideamill (schema version {found}; this build knows up to {known}); \
         upgrade ideamill: the database was not modified"
    )]
    TooNew {
        /// Where the database is (a URL's password redacted).
        path: String,
        /// Its schema version.
        found: i64,
        /// The newest schema version this build knows.
        known: i64,
    },
    /// No database exists where the config points (the location, redacted).
    #[error("no store at {0}: run `ideamill run` or `ideamill add` first, or check store.url")]
    Missing(String),
    /// The store cannot serve this as set up (e.g. a database it cannot
    /// connect to); waiting will not help.
    #[error("{0}")]
    Unsupported(String),
    /// Rows that break the store's own rules: a bug or a hand edit.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store cannot be used now but may be later: a database server
    /// that does not answer, a full disk. Worth waiting for.
    #[error("{0}")]
    Unavailable(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A file or socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the store refused the request for what it holds, so that
    /// sending the same request again fails the same way: data it cannot
    /// store (PostgreSQL SQLSTATE class 22, a value too big for SQLite), a
    /// constraint (class 23, SQLite's `SQLITE_CONSTRAINT`), a program limit
    /// (class 54), a value that cannot be encoded, an invalid request.
    ///
    /// Such an error is never waited for as if the store were down: a
    /// caller that retries a write until the store answers must stop on it.
    /// Everything else (a lost connection, a full disk, a locked database,
    /// an error this does not know) may go away and is not a refusal.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::InvalidRequest(_) => true,
            StoreError::Database(e) => refused(e),
            _ => false,
        }
    }
}

fn refused(e: &sqlx::Error) -> bool {
    let d = match e {
        sqlx::Error::Encode(_) => return true,
        sqlx::Error::Database(d) => d,
        _ => return false,
    };
    if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return ["22", "23", "54"]
            .iter()
            .any(|class| pg.code().starts_with(class));
    }
    if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // The primary result code is the low byte of the extended one:
        // SQLITE_TOOBIG (18), SQLITE_CONSTRAINT (19), SQLITE_MISMATCH (20),
        // SQLITE_RANGE (25).
        return d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25));
    }
    use sqlx::error::ErrorKind;
    matches!(
        d.kind(),
        ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_from_outages() {
        assert!(StoreError::InvalidRequest("no".into()).is_refusal());
        assert!(!StoreError::Unavailable("down".into()).is_refusal());
        assert!(!StoreError::LeaseLost.is_refusal());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!StoreError::Database(sqlx::Error::Io(io)).is_refusal());
        assert!(!StoreError::Database(sqlx::Error::PoolTimedOut).is_refusal());
    }
}
