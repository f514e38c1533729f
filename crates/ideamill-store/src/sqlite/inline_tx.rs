//! A write transaction whose `BEGIN IMMEDIATE` is sent with its first
//! statement and whose `COMMIT` with its last, for the hot path that runs
//! one every batch (the finish).
//!
//! sqlx's `Transaction` sends each of them as a command of its own, and its
//! SQLite worker thread then waits, doing nothing, until the caller's task
//! has taken the answer (sqlx-sqlite 0.8's `blocking_send` of BEGIN and
//! COMMIT): two more hops between threads per batch, each holding the one
//! writer connection that the next claim waits for.

use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;

/// Sent before the transaction's first statement, in the same command.
pub(super) const BEGIN: &str = "BEGIN IMMEDIATE;\n";
/// Sent after its last statement, in the same command.
pub(super) const COMMIT: &str = "COMMIT;\n";

/// The writer connection for one transaction. If it is dropped while the
/// transaction may be open (a caller's future cancelled mid-way, a ROLLBACK
/// that failed), the connection is closed rather than given back to the
/// pool: closing it rolls back whatever SQLite still holds, and the pool
/// opens another.
pub(super) struct InlineTx {
    conn: PoolConnection<Sqlite>,
    /// The BEGIN was sent and no COMMIT or ROLLBACK has answered.
    open: bool,
}

impl InlineTx {
    pub(super) fn new(conn: PoolConnection<Sqlite>) -> InlineTx {
        InlineTx { conn, open: false }
    }

    /// What the next command starts with: the BEGIN, if it was not sent yet.
    /// The transaction counts as open from here on, whether or not that
    /// command gets through.
    pub(super) fn begin(&mut self) -> &'static str {
        if self.open {
            ""
        } else {
            self.open = true;
            BEGIN
        }
    }

    /// The connection, for statements inside the transaction.
    pub(super) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// The command that carried the COMMIT got through.
    pub(super) fn committed(&mut self) {
        self.open = false;
    }

    /// After a failed statement: roll back, so that the connection can go
    /// back to the pool. A transaction SQLite already ended on its own (a
    /// failed COMMIT, a full disk) has nothing to roll back.
    pub(super) async fn rollback(mut self) {
        if !self.open {
            return;
        }
        match sqlx::query("ROLLBACK").execute(&mut *self.conn).await {
            Ok(_) => self.open = false,
            Err(e) if e.to_string().contains("no transaction is active") => self.open = false,
            Err(e) => tracing::warn!(
                "Could not roll back a write on the SQLite writer ({e}); reopening it"
            ),
        }
    }
}

impl Drop for InlineTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}
