//! Jobs, written once: the lease reaper, a dead process's leases, cancel
//! requests, what is pending, and jobs paused for a budget.

use ideamill_core::machine::LostJob;
use ideamill_core::{AttemptOutcome, FailureClass, ItemId, JobId, Millis};

use super::{Backend, Rows, Sql};
use crate::common::{self, AttemptRecord, RowExt};
use crate::*;

pub(super) async fn reap_expired<B: Backend + Rows>(
    store: &B,
    now: Millis,
) -> Result<Vec<ReapedJob>> {
    // A lease has expired when the backend's clock says so; `now` dates what
    // the reaper records.
    let clock = [now.into(), store.store_clock().into()];
    // A cheap read first, so that idle processes write nothing.
    let any = {
        let mut conn = store.read().await?;
        B::Db::row(&mut conn, B::ANY_EXPIRED, &clock).await?
    };
    if any.is_none() {
        return Ok(Vec::new());
    }
    let mut tx = store.write_tx().await?;
    let rows = B::Db::rows(&mut tx, B::EXPIRED_JOBS, &clock).await?;
    let mut reaped = Vec::with_capacity(rows.len());
    for r in &rows {
        let job = common::claimed_job(r, 0, None)?;
        let owner: String = r.opt_text("lease_owner")?.unwrap_or_default();
        let reap = common::reap(&job, &owner, r.flag("cancel_requested")?, now);
        B::Db::execute(
            &mut tx,
            "UPDATE jobs SET state = $1, run_at = $2, last_error = $3, lease_owner = NULL, lease_expires_at = NULL,
                    updated_at = $4, finished_at = CASE WHEN $1 = 'queued' THEN NULL ELSE $4 END
             WHERE id = $5 AND lease_token = $6",
            &[
                reap.state.into(),
                reap.run_at.into(),
                (&reap.error).into(),
                now.into(),
                job.id.into(),
                job.lease_token.into(),
            ],
        )
        .await?;
        let lost = AttemptRecord::interrupted(&job, &owner, AttemptOutcome::Lost, now, &reap.error);
        B::insert_attempts(&mut tx, &[lost]).await?;
        if let Some(reason) = &reap.fail_reason {
            B::fail_items(&mut tx, &[(job.item_id, reason, FailureClass::Infra, now)]).await?;
        }
        B::insert_events(&mut tx, std::slice::from_ref(&reap.event)).await?;
        reaped.push(ReapedJob {
            job_id: job.id,
            item_id: job.item_id,
            stage: job.stage,
            owner,
            action: reap.action,
        });
    }
    let requeued = reaped.iter().any(|r| r.action == LostJob::Requeue);
    store.commit(tx, requeued).await?;
    Ok(reaped)
}

pub(super) async fn expire_process<B: Backend + Rows>(
    store: &B,
    process: &str,
    now: Millis,
) -> Result<u64> {
    let mut tx = store.write_tx().await?;
    // Expired by the clock the reaper judges by.
    let n = B::Db::execute(
        &mut tx,
        B::EXPIRE_LEASES,
        &[(now - 1).into(), store.store_clock().into(), process.into()],
    )
    .await?;
    let marked = B::Db::execute(
        &mut tx,
        "UPDATE processes SET stopped_at = $1 WHERE id = $2 AND stopped_at IS NULL",
        &[now.into(), process.into()],
    )
    .await?;
    if marked == 0 && n == 0 {
        // Another process recovered it first: nothing to record.
        tx.rollback().await?;
        return Ok(0);
    }
    B::insert_events(&mut tx, &[common::process_dead(process, n, now)]).await?;
    store.commit(tx, false).await?;
    Ok(n)
}

pub(super) async fn cancel_requests<B: Backend>(store: &B, owner: &str) -> Result<Vec<JobId>> {
    let mut conn = store.read().await?;
    B::Db::rows(
        &mut conn,
        "SELECT id FROM jobs WHERE lease_owner = $1 AND state = 'running' AND cancel_requested ORDER BY id",
        &[owner.into()],
    )
    .await?
    .iter()
    .map(|r| r.int("id"))
    .collect()
}

/// Work due by `horizon`, running, or due later: the queue's counts as of
/// `horizon` (counters and bounded counts, `reads::stage_counts`), so an
/// `--until-idle` run's check costs the same however long the queue and
/// the history.
pub(super) async fn pending<B: Backend>(store: &B, horizon: Millis) -> Result<Pending> {
    let mut conn = store.read().await?;
    let stages = super::reads::stage_counts::<B>(&mut conn, horizon).await?;
    Ok(Pending {
        soon: stages.iter().map(|c| c.queued).sum(),
        running: stages.iter().map(|c| c.running).sum(),
        later: stages.iter().map(|c| c.scheduled).sum(),
        next_run_at: super::reads::oldest_queued::<B>(&mut conn).await?,
    })
}

pub(super) async fn paused_jobs<B: Backend>(store: &B) -> Result<Vec<PausedJob>> {
    let mut conn = store.read().await?;
    let rows = B::Db::rows(
        &mut conn,
        "SELECT j.id, j.item_id, j.stage, i.last_error,
                CAST(COALESCE((SELECT SUM(prompt_tokens) FROM attempts a WHERE a.item_id = j.item_id), 0) AS BIGINT) AS pt,
                CAST(COALESCE((SELECT SUM(completion_tokens) FROM attempts a WHERE a.item_id = j.item_id), 0) AS BIGINT) AS ct,
                CAST(COALESCE((SELECT SUM(cost) FROM attempts a WHERE a.item_id = j.item_id), 0.0) AS DOUBLE PRECISION) AS cost
         FROM jobs j JOIN items i ON i.id = j.item_id WHERE j.state = 'paused' ORDER BY j.id",
        &[],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PausedJob {
                job_id: r.int("id")?,
                item_id: r.int("item_id")?,
                stage: r.text("stage")?,
                reason: r.opt_text("last_error")?,
                item_usage: common::usage_totals(r)?,
            })
        })
        .collect()
}

pub(super) async fn resume_jobs<B: Backend + Rows>(
    store: &B,
    jobs: &[JobId],
    now: Millis,
) -> Result<u64> {
    let mut tx = store.write_tx().await?;
    let mut resumed = 0;
    for id in jobs {
        let item = B::Db::row(
            &mut tx,
            "UPDATE jobs SET state = 'queued', run_at = $1, updated_at = $1 WHERE id = $2 AND state = 'paused'
             RETURNING item_id",
            &[now.into(), (*id).into()],
        )
        .await?;
        if let Some(item) = item {
            let item: ItemId = item.int("item_id")?;
            resumed += 1;
            B::insert_events(&mut tx, &[common::budget_resumed(item, *id, now)]).await?;
        }
    }
    store.commit(tx, resumed > 0).await?;
    Ok(resumed)
}
