//! SQLite's context read and its finish: each result fenced by its lease
//! token, then the rows common to most finishes inserted a chunk at a time.

use async_trait::async_trait;
use ideamill_core::machine::NextJob;
use ideamill_core::{ItemId, JobId, Millis};
use sqlx::{QueryBuilder, Sqlite};

use super::SqliteStore;
use super::write::{CHUNK, fail_item, insert_event, insert_feedback};
use crate::common::{self, AttemptRecord, ITEM_COLUMNS, RowExt};
use crate::shared::{Backend, Rows, Stages};
use crate::*;

#[async_trait]
impl Stages for SqliteStore {
    async fn context(&self, item: ItemId) -> Result<ItemContext> {
        // One statement: the engine reads this once per job.
        let row = sqlx::query(&format!(
            "SELECT {ITEM_COLUMNS},
                (SELECT json_group_array(json_object('stage', stage, 'round', round, 'job_id', job_id,
                                                     'output', output, 'created_at', created_at))
                 FROM outputs o
                 WHERE o.item_id = items.id
                   AND o.id = (SELECT MAX(id) FROM outputs o2 WHERE o2.item_id = o.item_id AND o2.stage = o.stage)
                ) AS outputs_json,
                (SELECT json_group_array(json_object('stage', stage, 'round', round, 'feedback', feedback,
                                                     'created_at', created_at,
                                                     'round_hash', round_hash))
                 FROM (SELECT * FROM feedback f WHERE f.item_id = items.id ORDER BY f.id)
                ) AS feedback_json
             FROM items WHERE id = ?"
        ))
        .bind(item)
        .fetch_optional(&self.reader)
        .await?
        .ok_or(StoreError::NoSuchItem(item))?;
        let outputs: String = row.text("outputs_json")?;
        let feedback: String = row.text("feedback_json")?;
        Ok(ItemContext {
            item: common::item_row(&row)?,
            outputs: serde_json::from_str(&outputs)
                .map_err(|e| StoreError::Corrupt(format!("outputs of item {item}: {e}")))?,
            feedback: serde_json::from_str(&feedback)
                .map_err(|e| StoreError::Corrupt(format!("feedback of item {item}: {e}")))?,
            traceparent: None,
        })
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>> {
        let finishes = common::storable_finishes(finishes);
        let finishes: &[Finish] = &finishes;
        let mut tx = self.write_tx().await?;
        let mut results = Vec::with_capacity(finishes.len());
        // Rows common to most finishes are gathered and inserted a chunk at
        // a time after the loop; rare ones are written as they come.
        let mut attempts: Vec<AttemptRecord<'_>> = Vec::with_capacity(finishes.len());
        let mut outputs: Vec<(&ClaimedJob, &str, Millis)> = Vec::new();
        let mut next_jobs: Vec<(ItemId, &NextJob, Millis)> = Vec::new();
        let mut done: Vec<(ItemId, Millis)> = Vec::new();
        let mut settled: Vec<JobId> = Vec::new();
        for f in finishes {
            let now = f.finished_at;
            let job = &f.job;
            let fence = common::fence(f);
            // The fence: only the holder of the current token may finish the
            // job. A cancellation requested meanwhile wins over the result.
            let fenced: Option<bool> = sqlx::query_scalar(
                "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE ?1 END,
                        run_at = COALESCE(?2, run_at), last_error = COALESCE(?3, last_error),
                        lease_owner = NULL, lease_expires_at = NULL, updated_at = ?4,
                        finished_at = CASE WHEN cancel_requested = 1 OR ?5 THEN ?4 ELSE NULL END
                 WHERE id = ?6 AND state = 'running' AND lease_token = ?7
                 RETURNING cancel_requested = 1",
            )
            .bind(fence.state)
            .bind(fence.run_at)
            .bind(fence.error)
            .bind(now)
            .bind(fence.finished)
            .bind(job.id)
            .bind(job.lease_token)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(cancelled) = fenced else {
                insert_event(&mut tx, &common::stale_completion(f)).await?;
                results.push(Err(StoreError::LeaseLost));
                continue;
            };
            let plan = common::plan(f, cancelled);
            settled.push(job.id);
            attempts.push(plan.attempt);
            if let Some(output) = plan.output {
                outputs.push((job, output, now));
            }
            if let Some(next) = plan.next {
                next_jobs.push((job.item_id, next, now));
            }
            if plan.done {
                done.push((job.item_id, now));
            }
            if let Some(feedback) = plan.feedback {
                insert_feedback(&mut tx, job, feedback, f.round_hash.as_deref(), now).await?;
            }
            if plan.uncount {
                // A paused try never ran: it does not count.
                sqlx::query("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?")
                    .bind(job.id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(error) = plan.item_error {
                sqlx::query("UPDATE items SET last_error = ?, updated_at = ? WHERE id = ?")
                    .bind(error)
                    .bind(now)
                    .bind(job.item_id)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some((reason, class)) = plan.fail_reason {
                fail_item(&mut tx, job.item_id, reason, class, now).await?;
            }
            if plan.cancel_item {
                sqlx::query(
                    "UPDATE items SET state = 'cancelled', finished_at = ?1, updated_at = ?1
                     WHERE id = ?2 AND state = 'active'",
                )
                .bind(now)
                .bind(job.item_id)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(event) = &plan.event {
                insert_event(&mut tx, event).await?;
            }
            results.push(Ok(plan.effect));
        }
        Self::insert_attempts(&mut tx, &attempts).await?;
        for chunk in outputs.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO outputs (item_id, stage, round, job_id, output, created_at) ",
            );
            q.push_values(chunk, |mut b, (job, output, now)| {
                b.push_bind(job.item_id)
                    .push_bind(&job.stage)
                    .push_bind(job.round)
                    .push_bind(job.id)
                    .push_bind(*output)
                    .push_bind(*now);
            });
            q.build().execute(&mut *tx).await?;
        }
        Self::insert_jobs(&mut tx, &next_jobs).await?;
        // The attempts' actual usage is recorded: their budget reservations
        // go in the same transaction.
        for chunk in settled.chunks(CHUNK) {
            let mut q =
                QueryBuilder::<Sqlite>::new("DELETE FROM budget_reservations WHERE job_id IN (");
            let mut ids = q.separated(", ");
            for id in chunk {
                ids.push_bind(*id);
            }
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        for chunk in done.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE items SET state = 'done', last_error = NULL, finished_at = v.column2,
                        updated_at = v.column2
                 FROM (",
            );
            q.push_values(chunk, |mut b, (id, at)| {
                b.push_bind(*id).push_bind(*at);
            });
            q.push(") AS v WHERE items.id = v.column1");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if !next_jobs.is_empty() {
            // Other engines may run the next stage.
            Backend::notify(self);
        }
        Ok(results)
    }
}
