//! ideamill's intake: the ways ideas arrive other than one at a time.
//!
//! - [`parse`]: idea files (`.txt`, `.md`, `.json`, `.jsonl`), with limits and
//!   errors that name a line and column. `ideamill add --file` uses it too.
//! - [`inbox`]: taking one file from the inbox folder: all its ideas in one
//!   transaction, then the file moves to `processed/` (with a sidecar listing
//!   its items) or to `rejected/` (with an `.error.txt`). Nothing is deleted.
//! - [`watch`]: the inbox watcher `ideamill run` starts: filesystem events
//!   plus a slow full rescan, one file at a time.
//! - [`legacy`]: the files of the system ideamill replaces, mapped to items.

pub mod inbox;
pub mod legacy;
pub mod parse;
pub mod watch;

pub use inbox::{Layout, TakeOutcome, take_file};
pub use parse::{Format, Limits, ParseError, parse_ideas};
pub use watch::{InboxHandle, spawn_inbox};

/// Why intake could not do its work now. A file is never rejected for one of
/// these: it stays where it is and is tried again.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A file or folder could not be read, written or moved.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The store refused or could not be reached.
    #[error(transparent)]
    Store(#[from] ideamill_store::StoreError),
    /// A blocking task (reading, moving files) panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl IntakeError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IntakeError {
        let what = what.into();
        move |source| IntakeError::Io { what, source }
    }
}
