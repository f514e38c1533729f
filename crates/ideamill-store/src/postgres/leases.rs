//! PostgreSQL's hot paths of leases: claim, heartbeat, release, and the
//! queue reads the engine polls. Row locks (`FOR UPDATE SKIP LOCKED`) keep
//! concurrent claimers apart; leases run from the database's clock.

use async_trait::async_trait;
use ideamill_core::{AttemptOutcome, JobId, Millis};

use std::sync::LazyLock;

use sqlx::postgres::PgArguments;

use super::context::context_json;
use super::write::{insert_event, notify_in};
use super::{PostgresStore, db_now};
use crate::common::{self, AttemptRecord};
use crate::shared::{Backend, Leases, Rows};
use crate::*;

#[async_trait]
impl Leases for PostgresStore {
    async fn claim(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedJob>> {
        let query = sqlx::query(CLAIM);
        let query = bind_claim(query, stage, limit, owner, now, lease_until, self.db_clock);
        let rows = self.warm.fetch_all(query).await?;
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
        let query = bind_claim(query, stage, limit, owner, now, lease_until, self.db_clock);
        let rows = self.warm.fetch_all(query).await?;
        common::claimed_jobs(&rows, now, true)
    }

    async fn heartbeat(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        running: &[JobId],
    ) -> Result<Vec<JobId>> {
        // One statement, so one transaction and one round trip. Like a
        // claim, a beat need not wait for its WAL flush: a beat lost in a
        // server crash only makes leases expire sooner.
        // Leases are renewed from the database's clock.
        //
        // The rows are locked in id order, as a finish locks them
        // (`PostgresStore::finish`): a beat and a finish of the same jobs
        // taking them in two orders could each wait for the other.
        let cancels = sqlx::query_scalar(concat!(
            "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
             held AS MATERIALIZED (
                 SELECT id FROM jobs
                 WHERE id = ANY($5) AND lease_owner = $2 AND state = 'running'
                   AND EXISTS (SELECT 1 FROM relaxed)
                 ORDER BY id FOR UPDATE),
             renewed AS (
                 UPDATE jobs SET lease_expires_at = CASE WHEN $4 THEN ",
            db_now!(),
            " + ($1 - $3) ELSE $1 END
                 FROM held WHERE jobs.id = ANY($5) AND jobs.id = held.id
                 RETURNING jobs.id, jobs.cancel_requested),
             beat AS (UPDATE processes SET last_beat_at = $3 WHERE id = $2)
             SELECT id FROM renewed WHERE cancel_requested ORDER BY id"
        ))
        .bind(lease_until)
        .bind(owner)
        .bind(now)
        .bind(self.db_clock)
        .bind(running)
        .fetch_all(&self.pool)
        .await?;
        // Housekeeping that rides on the beat; a failure here is not the
        // store failing the engine.
        if let Err(e) = self.fold_counts().await {
            tracing::debug!("Could not fold the count deltas: {e}");
        }
        Ok(cancels)
    }

    async fn idle_beat(&self, owner: &str, now: Millis, _silent_since: Millis) -> Result<IdleBeat> {
        // Leases expire by the server's clock, which the reaper reads: each
        // question is asked in its own cheap read.
        Leases::heartbeat(self, owner, now, now, &[]).await?;
        Ok(IdleBeat::MAYBE)
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = $1, lease_owner = NULL,
                    lease_expires_at = NULL, updated_at = $1
             WHERE lease_owner = $2 AND state = 'running'
             RETURNING id, item_id, stage, round, attempts, max_attempts, lease_token, run_at,
                       COALESCE(started_at, $1) AS started_at",
        )
        .bind(now)
        .bind(owner)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut jobs = rows
            .iter()
            .map(|r| common::claimed_job(r, 1, None))
            .collect::<Result<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.id);
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
        insert_event(&mut tx, &common::jobs_released(owner, rows.len(), now)).await?;
        notify_in(&mut tx, &self.wake_id).await?;
        tx.commit().await?;
        self.local.notify();
        Ok(rows.len() as u64)
    }
}

/// The claim's statement up to its last SELECT, which says what it returns
/// from `claimed`.
///
/// The subquery is materialized so that it runs once: the rows it locked
/// are exactly the rows updated.
///
/// A claim commits without waiting for its WAL flush (`synchronous_commit`
/// off for this transaction only): it is acked to no one but the claimer,
/// and the finish that follows it commits synchronously, flushing the claim
/// with it. If the server crashes before the flush, the claim is undone and
/// the job runs again, like one whose lease expired; the token it handed out
/// may then be handed out again, which is why the fence also checks the
/// owner.
///
/// The lease runs from the database's clock (see the module's doc).
///
/// The claim counts what it takes out of the queue itself, one delta row
/// for them all (0009_queued_counts.sql: no trigger does).
macro_rules! claim_ctes {
    () => {
        concat!(
            "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
             picked AS MATERIALIZED (
                 SELECT id FROM jobs
                 WHERE state = 'queued' AND stage = $4 AND run_at <= $3 AND EXISTS (SELECT 1 FROM relaxed)
                 ORDER BY priority, run_at, id LIMIT $5 FOR UPDATE OF jobs SKIP LOCKED),
             claimed AS (
             UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, lease_token = j.lease_token + 1,
                    lease_owner = $1,
                    lease_expires_at = CASE WHEN $6 THEN ",
            db_now!(),
            " + ($2 - $3) ELSE $2 END,
                    started_at = $3, updated_at = $3
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.item_id, j.stage, j.round, j.attempts, j.max_attempts, j.lease_token, j.run_at,
                       j.priority),
             counted AS (INSERT INTO queued_count_deltas (stage, n)
                 SELECT $4, -count(*) FROM claimed HAVING count(*) > 0)
             "
        )
    };
}

/// The claim. Bound by [`bind_claim`].
const CLAIM: &str = concat!(claim_ctes!(), "SELECT * FROM claimed");

/// The claim, each job with its item's context, read in the same statement
/// (one round trip, one snapshot): a claimed job starts without another.
static CLAIM_WITH_CONTEXTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{}SELECT claimed.*, (SELECT {} FROM items i WHERE i.id = claimed.item_id) AS context FROM claimed",
        claim_ctes!(),
        context_json("i")
    )
});

fn bind_claim<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, PgArguments>,
    stage: &'q str,
    limit: u32,
    owner: &'q str,
    now: Millis,
    lease_until: Millis,
    db_clock: bool,
) -> sqlx::query::Query<'q, sqlx::Postgres, PgArguments> {
    query
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(stage)
        .bind(i64::from(limit))
        .bind(db_clock)
}
