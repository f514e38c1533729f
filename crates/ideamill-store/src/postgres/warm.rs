//! The connection an idea's pickup waits on runs on a warm server process.
//!
//! sqlx's pool hands out the connection that has been idle the longest, so
//! with work arriving a few times a second each add and each claim ran on
//! the server process that had slept the longest of the pool's, its caches
//! cold. The add and the claim take the connection that ran the last of
//! them instead, kept here out of the pool's queue, and give it back here.
//! `pgbench` with the add's statement at four a second: p50 0.2–0.6 ms
//! slower over eight connections than over one.

use std::sync::Mutex;
use std::time::Instant;

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;

use super::open::UNCHECKED_IDLE;
use crate::Result;

/// At most one connection, with when it was last given back.
#[derive(Default)]
pub(super) struct WarmConnection(Mutex<Option<(PoolConnection<Postgres>, Instant)>>);

impl WarmConnection {
    /// The kept connection if there is one, checked as the pool checks its
    /// own (`open.rs`: one idle for over a second may have been cut by a
    /// server restart); else one from the pool.
    pub(super) async fn take(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mut conn, since)) = kept {
            if since.elapsed() <= UNCHECKED_IDLE {
                return Ok(conn);
            }
            match sqlx::Connection::ping(&mut *conn).await {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    tracing::debug!("the kept connection failed its check, taking another: {e}");
                    conn.close_on_drop();
                }
            }
        }
        Ok(pool.acquire().await?)
    }

    /// Keep `conn` for the next add or claim; one kept before goes back to
    /// the pool. Only a connection whose statement succeeded comes back here
    /// (one that failed goes back to the pool, which checks it).
    pub(super) fn keep(&self, conn: PoolConnection<Postgres>) {
        let before = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((conn, Instant::now()));
        drop(before);
    }

    /// Give the kept connection back to the pool, whose `close` waits for
    /// every connection out of it.
    pub(super) fn release(&self) {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(kept);
    }
}
