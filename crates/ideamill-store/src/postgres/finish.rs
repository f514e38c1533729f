//! PostgreSQL's finish: the whole batch fenced in one statement, then one
//! statement per kind of row it writes.

use async_trait::async_trait;
use ideamill_core::{ItemId, JobId, Millis};

use super::PostgresStore;
use super::write::{RoundText, insert_round_texts, notify_in};
use crate::common::{self, RowExt};
use crate::shared::{Backend, Rows, Stages, tallies};
use crate::*;

#[async_trait]
impl Stages for PostgresStore {
    async fn context(&self, item: ItemId) -> Result<ItemContext> {
        self.item_context(item).await
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>> {
        let finishes = common::storable_finishes(finishes);
        let finishes: &[Finish] = &finishes;
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        // Every statement here that joins the batch's arrays to a table is
        // planned for its batch (`persistent(false)`): a named statement
        // gets a generic plan after five runs, which guesses ten rows for
        // the arrays and joins them by a nested loop, quadratic in the batch
        // (a fence of 256 finishes took 40 ms rather than 2).
        //
        // The fence, for the whole batch in one statement: only the holder
        // of a job's current token may finish it, once. A finish repeated
        // within the batch is stale, as it would be one after another.
        //
        // The batch's rows are found one by one through the primary key (the
        // `LATERAL … FOR UPDATE`, which the planner cannot flatten into a
        // join; the fence's conditions outside it, so that no other index
        // looks cheaper to it), locked in job order, then checked. Written
        // as one join, the plan hung on how many running jobs the planner
        // guessed there were: when it guessed few (always, on a store whose
        // statistics are older than its queue), it took them first and
        // compared each with every row of the batch (65,280 comparisons for
        // 256 finishes, 30 ms of the server's CPU where this takes about 1).
        let mut sent = common::fences(finishes);
        sent.sort_by_key(|s| s.1.job.id);
        let mut tx = self.write_tx().await?;
        let fenced = sqlx::query(
            "WITH fenced AS MATERIALIZED (
                 SELECT j.id, j.cancel_requested, u.*
                 FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::bool[],
                             $8::int8[], $9::text[])
                      AS u(job_id, token, state, run_at, error, at, finished, n, owner)
                 CROSS JOIN LATERAL (
                     SELECT id, cancel_requested, state, lease_token, lease_owner FROM jobs
                     WHERE id = u.job_id FOR UPDATE) j
                 WHERE j.state = 'running' AND j.lease_token = u.token AND j.lease_owner = u.owner)
             UPDATE jobs j SET state = CASE WHEN f.cancel_requested THEN 'cancelled' ELSE f.state END,
                    run_at = COALESCE(f.run_at, j.run_at), last_error = COALESCE(f.error, j.last_error),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = f.at,
                    finished_at = CASE WHEN f.cancel_requested OR f.finished THEN f.at ELSE NULL END
             FROM fenced f
             WHERE j.id = ANY($1) AND j.id = f.id
             RETURNING f.n, f.cancel_requested",
        )
        .persistent(false)
        .bind(sent.iter().map(|s| s.1.job.id).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.1.job.lease_token).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.2.state).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.2.run_at).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.2.error).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.1.finished_at).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.2.finished).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.0 as i64).collect::<Vec<_>>())
        .bind(sent.iter().map(|s| s.1.owner.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut passed: Vec<Option<bool>> = vec![None; finishes.len()];
        for r in &fenced {
            let n = r.int("n")? as usize;
            if let Some(slot) = passed.get_mut(n) {
                *slot = Some(r.flag("cancel_requested")?);
            }
        }

        let mut results = Vec::with_capacity(finishes.len());
        let mut stale = Vec::new();
        let mut plans = Vec::with_capacity(finishes.len());
        for (f, cancelled) in finishes.iter().zip(&passed) {
            match cancelled {
                None => {
                    stale.push(common::stale_completion(f));
                    results.push(Err(StoreError::LeaseLost));
                    plans.push(None);
                }
                Some(cancelled) => {
                    let plan = common::plan(f, *cancelled);
                    results.push(Ok(plan.effect));
                    plans.push(Some(plan));
                }
            }
        }
        let mut attempts = Vec::new();
        let mut outputs = Vec::new();
        let mut feedback = Vec::new();
        let mut next_jobs = Vec::new();
        let mut done: Vec<(ItemId, Millis)> = Vec::new();
        let mut uncount: Vec<JobId> = Vec::new();
        let mut judged: Vec<JobId> = Vec::new();
        let mut item_errors: Vec<(ItemId, &str, Millis)> = Vec::new();
        let mut failed: Vec<(ItemId, &str, ideamill_core::FailureClass, Millis)> = Vec::new();
        let mut cancelled_items: Vec<(ItemId, Millis)> = Vec::new();
        // Events in the order of the finishes, stale ones included.
        let mut events: Vec<NewEvent> = Vec::new();
        let mut stale_events = stale.into_iter();
        for (f, plan) in finishes.iter().zip(plans) {
            let Some(plan) = plan else {
                events.extend(stale_events.next());
                continue;
            };
            let job = &f.job;
            let now = f.finished_at;
            if let Some(output) = plan.output {
                outputs.push((job, output, now));
            }
            if let Some(next) = plan.next {
                next_jobs.push((job.item_id, next, now));
            }
            if plan.done {
                done.push((job.item_id, now));
            }
            if let Some(text) = plan.feedback {
                feedback.push((job, text, now));
            }
            if plan.uncount {
                uncount.push(job.id);
            }
            if plan.judged {
                judged.push(job.id);
            }
            if let Some(error) = plan.item_error {
                item_errors.push((job.item_id, error, now));
            }
            if let Some((reason, class)) = plan.fail_reason {
                failed.push((job.item_id, reason, class, now));
            }
            if plan.cancel_item {
                cancelled_items.push((job.item_id, now));
            }
            attempts.push(plan.attempt);
            events.extend(plan.event);
        }
        insert_round_texts(&mut tx, RoundText::Feedback, &feedback).await?;
        // A gate's round hash, kept with its feedback (a finish that
        // stored none updates nothing).
        let hashed: Vec<(JobId, &str)> = finishes
            .iter()
            .zip(&passed)
            .filter(|(_, p)| p.is_some())
            .filter_map(|(f, _)| Some((f.job.id, f.round_hash.as_deref()?)))
            .collect();
        if !hashed.is_empty() {
            sqlx::query(
                "UPDATE feedback SET round_hash = u.hash
                 FROM UNNEST($1::int8[], $2::text[]) AS u(job_id, hash)
                 WHERE feedback.job_id = ANY($1) AND feedback.job_id = u.job_id",
            )
            .persistent(false)
            .bind(hashed.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(hashed.iter().map(|r| r.1).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        // The attempts' actual usage is recorded: their budget reservations
        // go in the same transaction.
        let settled: Vec<JobId> = finishes
            .iter()
            .zip(&passed)
            .filter(|(_, p)| p.is_some())
            .map(|(f, _)| f.job.id)
            .collect();
        sqlx::query("DELETE FROM budget_reservations WHERE job_id = ANY($1)")
            .bind(&settled)
            .execute(&mut *tx)
            .await?;
        if !uncount.is_empty() {
            // A paused try never ran: it does not count.
            sqlx::query("UPDATE jobs SET attempts = attempts - 1 WHERE id = ANY($1)")
                .bind(&uncount)
                .execute(&mut *tx)
                .await?;
        }
        if !item_errors.is_empty() {
            sqlx::query(
                "UPDATE items SET last_error = u.error, updated_at = u.at
                 FROM UNNEST($1::int8[], $2::text[], $3::int8[]) AS u(id, error, at)
                 WHERE items.id = ANY($1) AND items.id = u.id",
            )
            .persistent(false)
            .bind(item_errors.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(item_errors.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(item_errors.iter().map(|r| r.2).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        Self::fail_items(&mut tx, &failed).await?;
        if !cancelled_items.is_empty() {
            sqlx::query(
                "UPDATE items SET state = 'cancelled', finished_at = u.at, updated_at = u.at
                 FROM UNNEST($1::int8[], $2::int8[]) AS u(id, at)
                 WHERE items.id = ANY($1) AND items.id = u.id AND items.state = 'active'",
            )
            .persistent(false)
            .bind(cancelled_items.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(cancelled_items.iter().map(|r| r.1).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        Self::insert_events(&mut tx, &events).await?;
        Self::insert_attempts(&mut tx, &attempts).await?;
        insert_round_texts(&mut tx, RoundText::Output, &outputs).await?;
        Self::insert_jobs(&mut tx, &next_jobs).await?;
        if !judged.is_empty() {
            // The judgements, counted after their feedback went in, as a
            // delta: no row every engine's finishes would wait on.
            let (head, tail) = tallies::count(Self::TALLIES_INTO, 1, Self::TALLIES_MERGE);
            sqlx::query(&format!("{head}j.id = ANY($1){tail}"))
                .bind(&judged)
                .execute(&mut *tx)
                .await?;
        }
        if !done.is_empty() {
            // Each item locked and its state read through the primary key
            // (as the fence does, so that no guess of the planner's scans the
            // table), then marked done; the move is counted here, one delta
            // per state left, not by a trigger per item
            // (0010_lighter_finish.sql).
            done.sort_unstable_by_key(|r| r.0);
            sqlx::query(
                "WITH prior AS MATERIALIZED (
                     SELECT i.id, i.state, u.at
                     FROM UNNEST($1::int8[], $2::int8[]) AS u(item_id, at)
                     CROSS JOIN LATERAL (SELECT id, state FROM items WHERE id = u.item_id FOR UPDATE) i),
                 moved AS (
                     UPDATE items SET state = 'done', last_error = NULL, finished_at = p.at, updated_at = p.at
                     FROM prior p WHERE items.id = ANY($1) AND items.id = p.id
                     RETURNING p.state AS was)
                 INSERT INTO item_count_deltas (state, n)
                 SELECT was, -count(*) FROM moved WHERE was <> 'done' GROUP BY was
                 UNION ALL
                 SELECT 'done', count(*) FROM moved WHERE was <> 'done' HAVING count(*) > 0",
            )
            .persistent(false)
            .bind(done.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(done.iter().map(|r| r.1).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !next_jobs.is_empty() {
            // Other processes' engines may run the next stage; this one's
            // learns of it from the result (`FinishEffect::enqueued`).
            notify_in(&mut tx, &self.wake_id).await?;
        }
        tx.commit().await?;
        Ok(results)
    }
}
