//! The connection an idea's pickup waits on runs on a warm server process.
//!
//! sqlx's pool hands out the connection that has been idle the longest, so
//! with work arriving a few times a second each add and each claim ran on
//! the server process that had slept the longest of the pool's, its caches
//! cold. The add and the claim run on the connection that ran the last of
//! them instead, kept here out of the pool's queue. `pgbench` with the
//! add's statement at four a second: p50 0.2–0.6 ms slower over eight
//! connections than over one.

use std::sync::Mutex;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{Connection, Postgres};

use super::open::UNCHECKED_IDLE;
use crate::Result;

/// At most one connection of `pool`, with when it was last given back.
pub(super) struct WarmConnection {
    pool: PgPool,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    kept: Option<(PoolConnection<Postgres>, Instant)>,
    /// Set by `release`: nothing is kept after it, or the pool's `close`
    /// would wait for the kept connection forever.
    released: bool,
}

impl WarmConnection {
    pub(super) fn new(pool: PgPool) -> WarmConnection {
        WarmConnection {
            pool,
            slot: Mutex::default(),
        }
    }

    /// Run `query` on the kept connection (else one from the pool), and
    /// keep that connection if the query succeeded; one that failed goes
    /// back to the pool, which checks it.
    pub(super) async fn fetch_all(
        &self,
        query: sqlx::query::Query<'_, Postgres, PgArguments>,
    ) -> Result<Vec<PgRow>> {
        let mut conn = self.take().await?;
        let rows = query.fetch_all(&mut *conn).await?;
        self.keep(conn);
        Ok(rows)
    }

    /// The kept connection if there is one, checked as the pool checks its
    /// own (`open.rs`: one idle for over a second may have been cut by a
    /// server restart); else one from the pool.
    async fn take(&self) -> Result<PoolConnection<Postgres>> {
        let kept = self.slot().kept.take();
        if let Some((mut conn, since)) = kept {
            if since.elapsed() <= UNCHECKED_IDLE {
                return Ok(conn);
            }
            match conn.ping().await {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    tracing::debug!("the kept connection failed its check, taking another: {e}");
                    conn.close_on_drop();
                }
            }
        }
        Ok(self.pool.acquire().await?)
    }

    /// Keep `conn` for the next add or claim; one kept before, or `conn`
    /// itself once released, goes back to the pool.
    fn keep(&self, conn: PoolConnection<Postgres>) {
        let back = {
            let mut slot = self.slot();
            if slot.released {
                Some(conn)
            } else {
                slot.kept.replace((conn, Instant::now())).map(|(c, _)| c)
            }
        };
        drop(back);
    }

    /// Give the kept connection back to the pool for good, before its
    /// `close`, which waits for every connection out of it.
    pub(super) fn release(&self) {
        let kept = {
            let mut slot = self.slot();
            slot.released = true;
            slot.kept.take()
        };
        drop(kept);
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}
