//! The store's errors, named by cause.

use ideamill_core::ItemId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no item with id {0}")]
    NoSuchItem(ItemId),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the lease on this job was lost: another process may run it")]
    LeaseLost,
    #[error(
        "the database at {path} was written by a newer ideamill (schema version {found}; this build knows up to {known}); \
         upgrade ideamill: the database was not modified"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("no store at {0}: run `ideamill run` or `ideamill add` first, or check store.url")]
    Missing(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store cannot be used now but may be later: a database server
    /// that does not answer, a full disk. Worth waiting for.
    #[error("{0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}
