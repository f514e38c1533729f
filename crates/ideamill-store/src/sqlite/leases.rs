//! SQLite's hot paths of leases: claim, heartbeat, release, and the queue
//! reads the engine polls. One writer connection in this process and the
//! database's write lock keep them safe; partial indexes over unfinished
//! jobs keep them cheap.

use async_trait::async_trait;
use ideamill_core::{AttemptOutcome, JobId, Millis};

use std::sync::LazyLock;

use sqlx::sqlite::SqliteArguments;

use super::SqliteStore;
use super::finish::context_json;
use super::write::insert_event;
use crate::common::{self, AttemptRecord, RowExt};
use crate::shared::{Backend, Leases, Rows};
use crate::*;

#[async_trait]
impl Leases for SqliteStore {
    async fn claim(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedJob>> {
        let rows = bind_claim(sqlx::query(CLAIM), stage, limit, owner, now, lease_until)
            .fetch_all(&self.writer)
            .await?;
        let jobs = common::claimed_jobs(&rows, now, false)?;
        Ok(jobs.into_iter().map(|(job, _)| job).collect())
    }

    async fn claim_with_contexts(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<(ClaimedJob, Option<ItemContext>)>> {
        let query = sqlx::query(&CLAIM_WITH_CONTEXTS);
        let rows = bind_claim(query, stage, limit, owner, now, lease_until)
            .fetch_all(&self.writer)
            .await?;
        common::claimed_jobs(&rows, now, true)
    }

    async fn heartbeat(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        running: &[JobId],
    ) -> Result<Vec<JobId>> {
        if running.is_empty() {
            // An idle engine's beat: one statement, so one round trip to the
            // connection's thread rather than four.
            sqlx::query("UPDATE processes SET last_beat_at = ? WHERE id = ?")
                .bind(now)
                .bind(owner)
                .execute(&self.writer)
                .await?;
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        // Only the jobs the process still runs: one it holds but no longer
        // runs must be left to expire.
        let renewed = sqlx::query(
            "UPDATE jobs SET lease_expires_at = ?1
             WHERE id IN (SELECT value FROM json_each(?2)) AND lease_owner = ?3 AND state = 'running'
             RETURNING id, cancel_requested",
        )
        .bind(lease_until)
        .bind(serde_json::Value::from(running).to_string())
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("UPDATE processes SET last_beat_at = ? WHERE id = ?")
            .bind(now)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut cancels = Vec::new();
        for r in &renewed {
            if r.int("cancel_requested")? != 0 {
                cancels.push(r.int("id")?);
            }
        }
        cancels.sort_unstable();
        Ok(cancels)
    }

    async fn idle_beat(&self, owner: &str, now: Millis, silent_since: Millis) -> Result<IdleBeat> {
        // One statement, the housekeeping's questions included (each an
        // index lookup or a read of a few rows), on the beat's own
        // connection: one wake-up of its thread and one of the loop. It
        // writes beside the writer as another process would, under the
        // database's write lock; while idle the writer has little to do.
        // Without that connection (it cannot be opened: out of descriptors,
        // say) the beat goes through the writer, as any write does.
        let mut beat = self.beat.lock().await;
        if beat.is_none() {
            *beat = sqlx::Connection::connect_with(&self.beat_options)
                .await
                .inspect_err(|e| tracing::debug!("The idle beat goes through the writer: {e}"))
                .ok();
        }
        let query = sqlx::query(
            "UPDATE processes SET last_beat_at = ?1 WHERE id = ?2
             RETURNING
               EXISTS (SELECT 1 FROM jobs WHERE state = 'running' AND lease_expires_at < ?1) AS expired,
               EXISTS (SELECT 1 FROM jobs WHERE state = 'paused') AS paused,
               EXISTS (SELECT 1 FROM processes p
                       WHERE p.stopped_at IS NULL AND p.id <> ?2 AND p.last_beat_at < ?3) AS silent",
        )
        .bind(now)
        .bind(owner)
        .bind(silent_since);
        let row = match beat.as_mut() {
            Some(conn) => {
                let row = query.fetch_optional(&mut *conn).await;
                if row.is_err() {
                    // Opened afresh at the next beat: a connection that
                    // failed once (a full disk, a broken file) is not
                    // trusted again.
                    *beat = None;
                }
                row?
            }
            None => query.fetch_optional(&self.writer).await?,
        };
        // No row of its own (not registered yet, or marked gone by another
        // process): every question is left to its own read.
        let Some(r) = row else {
            return Ok(IdleBeat::MAYBE);
        };
        Ok(IdleBeat {
            expired_leases: r.flag("expired")?,
            paused_jobs: r.flag("paused")?,
            silent_processes: r.flag("silent")?,
        })
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = ?1, lease_owner = NULL,
                    lease_expires_at = NULL, updated_at = ?1
             WHERE lease_owner = ?2 AND state = 'running'
             RETURNING id, item_id, stage, round, attempts, max_attempts, lease_token, run_at,
                       COALESCE(started_at, ?1) AS started_at",
        )
        .bind(now)
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        let jobs = rows
            .iter()
            .map(|r| common::claimed_job(r, 1, None))
            .collect::<Result<Vec<_>>>()?;
        let records: Vec<_> = jobs
            .iter()
            .map(|job| {
                AttemptRecord::interrupted(
                    job,
                    owner,
                    AttemptOutcome::Released,
                    now,
                    common::RELEASED_NOTE,
                )
            })
            .collect();
        Self::insert_attempts(&mut tx, &records).await?;
        if !rows.is_empty() {
            insert_event(&mut tx, &common::jobs_released(owner, rows.len(), now)).await?;
        }
        tx.commit().await?;
        if !rows.is_empty() {
            Backend::notify(self);
        }
        Ok(rows.len() as u64)
    }
}

/// The claim: the runnable jobs of a stage, oldest first, leased in one
/// statement. Bound by [`bind_claim`].
const CLAIM: &str =
    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_token = lease_token + 1,
        lease_owner = ?1, lease_expires_at = ?2, started_at = ?3, updated_at = ?3
 WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND stage = ?4 AND run_at <= ?3
              ORDER BY priority, run_at, id LIMIT ?5)
 RETURNING id, item_id, stage, round, attempts, max_attempts, lease_token, run_at, priority";

/// The claim, each job with its item's context, read in the same
/// statement (so in the same transaction and the same hop to the writer's
/// thread): a claimed job starts without a trip through the readers.
static CLAIM_WITH_CONTEXTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{CLAIM},
           (SELECT {} FROM items i WHERE i.id = jobs.item_id) AS context",
        context_json("i")
    )
});

fn bind_claim<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments<'q>>,
    stage: &'q str,
    limit: u32,
    owner: &'q str,
    now: Millis,
    lease_until: Millis,
) -> sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments<'q>> {
    query
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(stage)
        .bind(limit)
}
