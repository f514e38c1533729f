//! Wake-ups on PostgreSQL: `NOTIFY` on a channel, `LISTEN` on a connection
//! of its own.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool};

use super::CHANNEL;
use crate::wake::WorkSignal;

/// Wake-ups through `LISTEN`, on a pooled connection of its own.
///
/// The first `wait` establishes the `LISTEN` and returns at once, so that
/// the caller looks again for work added before it listened; so does every
/// wait after the connection was lost (notifications sent meanwhile are
/// gone). While the server is unreachable, it retries with backoff.
pub(super) struct PgSignal {
    pool: PgPool,
    listener: Option<PgListener>,
    failures: u32,
    /// The payload of the handle it listens for, whose wake-ups arrive in
    /// process: skipped here.
    own: String,
}

impl PgSignal {
    async fn backoff(&mut self) {
        self.failures = (self.failures + 1).min(6);
        tokio::time::sleep(Duration::from_millis(100 << self.failures)).await;
    }
}

#[async_trait]
impl WorkSignal for PgSignal {
    async fn wait(&mut self) {
        loop {
            let Some(listener) = self.listener.as_mut() else {
                let listened = async {
                    let mut l = PgListener::connect_with(&self.pool).await?;
                    l.listen(CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                }
                .await;
                match listened {
                    Ok(l) => {
                        if self.failures > 0 {
                            tracing::info!("Listening for new work again");
                        }
                        self.listener = Some(l);
                        self.failures = 0;
                        return;
                    }
                    Err(e) => {
                        if self.failures == 0 {
                            tracing::warn!(
                                "Cannot listen for new work ({e}); retrying, and polling meanwhile"
                            );
                        }
                        self.backoff().await;
                        continue;
                    }
                }
            };
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    // Merge a burst of wake-ups into one.
                    let mut other = n.payload() != self.own;
                    while let Some(n) = listener.next_buffered() {
                        other |= n.payload() != self.own;
                    }
                    if other {
                        return;
                    }
                }
                Ok(None) => {
                    // The connection was lost and is being re-established:
                    // anything sent meanwhile is gone, so look now.
                    tracing::warn!("Lost the connection listening for new work; reconnecting");
                    return;
                }
                Err(e) => {
                    tracing::warn!("Listening for new work failed ({e}); reconnecting");
                    self.listener = None;
                    self.backoff().await;
                }
            }
        }
    }
}

impl PgSignal {
    pub(super) fn new(pool: PgPool, own: String) -> PgSignal {
        PgSignal {
            pool,
            listener: None,
            failures: 0,
            own,
        }
    }
}

/// Wake every listening engine, from outside a transaction; `sender` is
/// the payload (see `notify_in`).
pub(super) fn notify(pool: &PgPool, sender: &str) {
    let pool = pool.clone();
    let sender = sender.to_string();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(sender)
                .execute(&pool)
                .await
            {
                tracing::debug!("Could not wake the engines: {e}");
            }
        });
    }
}
