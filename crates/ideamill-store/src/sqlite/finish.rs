//! SQLite's context reads (the JSON expression a claim reads too, and reads
//! gathered: one statement for a burst of jobs) and its finish: the batch
//! fenced by the lease tokens a chunk at a time, then
//! the rows common to most finishes inserted a chunk at a time.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use ideamill_core::machine::NextJob;
use ideamill_core::{ItemId, JobId, Millis};
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Sqlite};

use super::SqliteStore;
use super::inline_tx::{COMMIT, InlineTx};
use super::write::{
    CHUNK, fail_item, insert_event, insert_feedback, push_insert_attempts, push_insert_jobs,
    run_statements,
};
use crate::common::{self, AttemptRecord, RowExt};
use crate::contexts::{ContextReader, ReadMany};
use crate::shared::{Backend, Stages, tallies};
use crate::*;

#[async_trait]
impl Stages for SqliteStore {
    async fn context(&self, item: ItemId) -> Result<ItemContext> {
        self.contexts
            .read(item, contexts_of(&self.reader, &[item]))
            .await
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>> {
        let finishes = common::storable_finishes(finishes);
        let finishes: &[Finish] = &finishes;
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = InlineTx::new(self.writer.acquire().await?);
        let (results, enqueued) = match write_finishes(&mut tx, finishes).await {
            Ok(written) => written,
            Err(e) => {
                tx.rollback().await;
                return Err(e);
            }
        };
        if enqueued {
            // Other processes' engines may run the next stage; this one's
            // learns of it from the result (`FinishEffect::enqueued`).
            self.notify_others();
        }
        Ok(results)
    }
}

/// The finishes' writes, in one transaction on `tx`, committed; and whether
/// any enqueued a job.
async fn write_finishes(
    tx: &mut InlineTx,
    finishes: &[Finish],
) -> Result<(Vec<Result<FinishEffect>>, bool)> {
    let passed = fence_all(tx, finishes).await?;
    let mut results = Vec::with_capacity(finishes.len());
    // Rows common to most finishes are gathered and inserted a chunk at
    // a time after the loop; rare ones are written as they come.
    let mut attempts: Vec<AttemptRecord<'_>> = Vec::with_capacity(finishes.len());
    let mut outputs: Vec<(&ClaimedJob, &str, Millis)> = Vec::new();
    let mut next_jobs: Vec<(ItemId, &NextJob, Millis)> = Vec::new();
    let mut done: Vec<(ItemId, Millis)> = Vec::new();
    let mut settled: Vec<JobId> = Vec::new();
    let mut judged: Vec<JobId> = Vec::new();
    for (f, fenced) in finishes.iter().zip(passed) {
        let now = f.finished_at;
        let job = &f.job;
        let Some(cancelled) = fenced else {
            insert_event(tx.conn(), &common::stale_completion(f)).await?;
            results.push(Err(StoreError::LeaseLost));
            continue;
        };
        let plan = common::plan(f, cancelled);
        settled.push(job.id);
        if plan.judged {
            judged.push(job.id);
        }
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
            insert_feedback(tx.conn(), job, feedback, f.round_hash.as_deref(), now).await?;
        }
        if plan.uncount {
            // A paused try never ran: it does not count.
            sqlx::query("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?")
                .bind(job.id)
                .execute(tx.conn())
                .await?;
        }
        if let Some(error) = plan.item_error {
            sqlx::query("UPDATE items SET last_error = ?, updated_at = ? WHERE id = ?")
                .bind(error)
                .bind(now)
                .bind(job.item_id)
                .execute(tx.conn())
                .await?;
        }
        if let Some((reason, class)) = plan.fail_reason {
            fail_item(tx.conn(), job.item_id, reason, class, now).await?;
        }
        if plan.cancel_item {
            sqlx::query(
                "UPDATE items SET state = 'cancelled', finished_at = ?1, updated_at = ?1
                     WHERE id = ?2 AND state = 'active'",
            )
            .bind(now)
            .bind(job.item_id)
            .execute(tx.conn())
            .await?;
        }
        if let Some(event) = &plan.event {
            insert_event(tx.conn(), event).await?;
        }
        results.push(Ok(plan.effect));
    }
    // The rows common to most finishes, and the COMMIT, in one hop to
    // SQLite's thread.
    // Begun by the fence's command, unless the batch had nothing to fence.
    let begin = tx.begin();
    run_statements(tx.conn(), |q| {
        q.push(begin);
        push_insert_attempts(q, &attempts);
        for chunk in outputs.chunks(CHUNK) {
            q.push("INSERT INTO outputs (item_id, stage, round, job_id, output, created_at) ");
            q.push_values(chunk, |mut b, (job, output, now)| {
                b.push_bind(job.item_id)
                    .push_bind(&job.stage)
                    .push_bind(job.round)
                    .push_bind(job.id)
                    .push_bind(*output)
                    .push_bind(*now);
            });
            q.push(";\n");
        }
        push_insert_jobs(q, &next_jobs);
        // The attempts' actual usage is recorded: their budget
        // reservations go in the same transaction.
        for chunk in settled.chunks(CHUNK) {
            q.push("DELETE FROM budget_reservations WHERE job_id IN (");
            let mut ids = q.separated(", ");
            for id in chunk {
                ids.push_bind(*id);
            }
            q.push(");\n");
        }
        for chunk in done.chunks(CHUNK) {
            // The move is counted here, one row per state the items
            // left, not by a trigger per item (0011_lighter_finish.sql).
            q.push("WITH ended (id) AS (");
            q.push_values(chunk, |mut b, (id, _)| {
                b.push_bind(*id);
            });
            q.push(
                "), was AS (SELECT i.state, count(*) AS n FROM items i JOIN ended e ON i.id = e.id
                                WHERE i.state <> 'done' GROUP BY i.state)
                     UPDATE item_counts SET n = item_counts.n + d.delta
                     FROM (SELECT state, -n AS delta FROM was
                           UNION ALL SELECT 'done', sum(n) FROM was HAVING count(*) > 0) AS d
                     WHERE item_counts.state = d.state;\n",
            );
            q.push(
                "UPDATE items SET state = 'done', last_error = NULL, finished_at = v.column2,
                            updated_at = v.column2
                     FROM (",
            );
            q.push_values(chunk, |mut b, (id, at)| {
                b.push_bind(*id).push_bind(*at);
            });
            q.push(") AS v WHERE items.id = v.column1;\n");
        }
        // The judgements, counted after their feedback went in.
        let (head, tail) = tallies::count(SqliteStore::TALLIES_INTO, 1, SqliteStore::TALLIES_MERGE);
        for chunk in judged.chunks(CHUNK) {
            q.push(&head);
            q.push("j.id IN (");
            let mut ids = q.separated(", ");
            for id in chunk {
                ids.push_bind(*id);
            }
            q.push(")");
            q.push(&tail);
            q.push(";\n");
        }
        q.push(COMMIT);
    })
    .await?;
    tx.committed();
    Ok((results, !next_jobs.is_empty()))
}

/// The fence, for a whole batch in one statement per chunk: only the holder
/// of a job's current token may finish it, once, and a cancellation
/// requested meanwhile wins over the result. Per finish, in order: `None`
/// if it is stale (a finish repeated within the batch is stale, as it would
/// be one after another), else whether the job was cancelled.
async fn fence_all(tx: &mut InlineTx, finishes: &[Finish]) -> Result<Vec<Option<bool>>> {
    let sent = common::fences(finishes);
    let mut passed: Vec<Option<bool>> = vec![None; finishes.len()];
    for chunk in sent.chunks(CHUNK) {
        // RETURNING may name only the updated table: each row is matched
        // back to its finish by job id and token (unique after the dedup).
        // The first chunk's command begins the transaction.
        let mut q = QueryBuilder::<Sqlite>::new(tx.begin());
        q.push(
            "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE v.column3 END,
                    run_at = COALESCE(v.column4, run_at), last_error = COALESCE(v.column5, last_error),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = v.column6,
                    finished_at = CASE WHEN cancel_requested = 1 OR v.column7 THEN v.column6 ELSE NULL END
             FROM (",
        );
        q.push_values(chunk, |mut b, (_, f, fence)| {
            b.push_bind(f.job.id)
                .push_bind(f.job.lease_token)
                .push_bind(fence.state)
                .push_bind(fence.run_at)
                .push_bind(fence.error)
                .push_bind(f.finished_at)
                .push_bind(fence.finished);
        });
        q.push(
            ") AS v WHERE jobs.id = v.column1 AND jobs.state = 'running' AND jobs.lease_token = v.column2
             RETURNING id, lease_token, cancel_requested = 1 AS cancelled",
        );
        let rows = q.build().fetch_all(tx.conn()).await?;
        let at: std::collections::HashMap<(JobId, i64), usize> = chunk
            .iter()
            .map(|(n, f, _)| ((f.job.id, f.job.lease_token), *n))
            .collect();
        for r in &rows {
            if let Some(n) = at.get(&(r.int("id")?, r.int("lease_token")?)) {
                passed[*n] = Some(r.int("cancelled")? != 0);
            }
        }
    }
    Ok(passed)
}

/// Context reads of `pool`, gathered (`crate::contexts`).
pub(super) fn context_reader(pool: &SqlitePool) -> ContextReader {
    let pool = pool.clone();
    let read: ReadMany = Box::new(move |ids| {
        let pool = pool.clone();
        Box::pin(async move { contexts_of(&pool, &ids).await })
    });
    ContextReader::start(read)
}

/// The contexts of several items, in one statement.
async fn contexts_of(pool: &SqlitePool, items: &[ItemId]) -> Result<HashMap<ItemId, ItemContext>> {
    static READ: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} AS context FROM items WHERE id IN (SELECT value FROM json_each(?))",
            context_json("items")
        )
    });
    let rows = sqlx::query(&READ)
        .bind(serde_json::Value::from(items).to_string())
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            let context = common::item_context_json(&r.text("context")?)?;
            Ok((context.item.id, context))
        })
        .collect()
}

/// An expression for the context of the item row `item` names, as one JSON
/// object ([`common::item_context_json`]): its columns, its latest output
/// per stage and its feedback, oldest first. One expression, so that a
/// claim's RETURNING can read it too.
pub(super) fn context_json(item: &str) -> String {
    format!(
        "json_object('id', {item}.id, 'text', {item}.text, 'metadata', {item}.metadata,
            'state', {item}.state, 'stage', {item}.stage, 'round', {item}.round,
            'last_error', {item}.last_error, 'failure_class', {item}.failure_class,
            'created_at', {item}.created_at, 'updated_at', {item}.updated_at,
            'finished_at', {item}.finished_at, 'trace_id', {item}.trace_id,
            'outputs', json((
                SELECT json_group_array(json_object('stage', stage, 'round', round, 'job_id', job_id,
                                                    'output', output, 'created_at', created_at))
                FROM outputs o
                WHERE o.item_id = {item}.id
                  AND o.id = (SELECT MAX(id) FROM outputs o2 WHERE o2.item_id = o.item_id AND o2.stage = o.stage))),
            'feedback', json((
                SELECT json_group_array(json_object('stage', stage, 'round', round, 'feedback', feedback,
                                                    'created_at', created_at, 'round_hash', round_hash))
                FROM (SELECT * FROM feedback f WHERE f.item_id = {item}.id ORDER BY f.id))))"
    )
}
