//! What people read, written once: status, events, spend, failure rates,
//! the dashboard's activity and its change marker.

use ideamill_core::{ItemId, Millis};

use super::{Arg, Backend, Leases, Sql, Tx, admin, items::decode, one};
use crate::common::{self, RowExt};
use crate::*;

pub(super) async fn status<B: Backend + Leases>(store: &B, now: Millis) -> Result<StatusSnapshot> {
    let mut tx = store.read_tx().await?;
    let mut items = ItemCounts::default();
    for r in B::Db::rows(&mut tx, B::ITEM_COUNTS, &[]).await? {
        let n = r.count("n")?;
        match r.text("state")?.as_str() {
            "active" => items.active = n,
            "done" => items.done = n,
            "failed" => items.failed = n,
            "cancelled" => items.cancelled = n,
            _ => {}
        }
    }
    let stages = stage_counts::<B>(&mut tx, now).await?;
    let running = B::Db::rows(
        &mut tx,
        "SELECT id, item_id, stage, round, attempts, lease_owner, COALESCE(started_at, updated_at) AS started_at,
                lease_expires_at
         FROM jobs WHERE state = 'running' ORDER BY started_at, id LIMIT 200",
        &[],
    )
    .await?;
    let clock = [now.into(), store.store_clock().into()];
    let expired_leases = one::<B::Db>(&mut tx, B::EXPIRED_COUNT, &clock)
        .await?
        .count("n")?;
    // Runnable if it is due.
    let oldest_runnable_at = oldest_queued::<B>(&mut tx).await?.filter(|at| *at <= now);
    let paused = one::<B::Db>(
        &mut tx,
        "SELECT count(*) AS n FROM jobs WHERE state = 'paused'",
        &[],
    )
    .await?
    .count("n")?;
    let today = usage_since::<B>(&mut tx, common::day_start(now), None).await?;
    tx.commit().await?;
    Ok(StatusSnapshot {
        now,
        items,
        stages,
        running: decode(&running, common::running_job)?,
        processes: admin::processes(store).await?,
        expired_leases,
        oldest_runnable_at,
        paused,
        today,
    })
}

/// Queued, scheduled and running jobs per stage, by stage name (queue
/// depth, and `status` inside its snapshot): the queued jobs' counters; of
/// those, the ones scheduled for later, counted per priority level over
/// `jobs_runnable` (a range each, and they are few); the running jobs,
/// counted (as many as the engines have slots). So a beat costs the same
/// with 100,000 queued jobs and a million finished ones as with none.
pub(super) async fn stage_counts<B: Backend>(
    conn: &mut <B::Db as sqlx::Database>::Connection,
    now: Millis,
) -> Result<Vec<StageCounts>> {
    let rows = B::Db::rows(
        conn,
        &format!(
            "WITH RECURSIVE c(stage, n) AS (SELECT stage, n FROM ({}) q WHERE q.n > 0),
             s(stage) AS (SELECT stage FROM c),
             {LEVELS}
             SELECT c.stage, 'queued' AS state, c.n,
                    COALESCE((SELECT CAST(SUM((SELECT count(*) FROM jobs j
                                          WHERE j.state = 'queued' AND j.stage = l.stage
                                            AND j.priority = l.priority AND j.run_at > $1)) AS BIGINT)
                              FROM levels l WHERE l.stage = c.stage AND l.priority IS NOT NULL), 0) AS scheduled
             FROM c
             UNION ALL
             SELECT stage, 'running', count(*), 0 FROM jobs WHERE state = 'running' GROUP BY stage",
            B::QUEUED_COUNTS
        ),
        &[now.into()],
    )
    .await?;
    common::counted_stages(&rows)
}

/// The priority levels of the queued jobs of each stage `s(stage)` names,
/// as `levels(stage, priority)` (with a last row of NULL priority per
/// stage): one seek of `jobs_runnable` per level. That index is the
/// queue's only one (0012_one_queue_index.sql), ordered for the claim by
/// priority before `run_at`, so a question about `run_at` is asked of each
/// level, and there is one level unless priorities were set.
const LEVELS: &str = "levels(stage, priority) AS (
         SELECT s.stage, (SELECT MIN(j.priority) FROM jobs j WHERE j.state = 'queued' AND j.stage = s.stage)
         FROM s
         UNION ALL
         SELECT l.stage, (SELECT MIN(j.priority) FROM jobs j
                          WHERE j.state = 'queued' AND j.stage = l.stage AND j.priority > l.priority)
         FROM levels l WHERE l.priority IS NOT NULL)";

/// When the oldest queued job is due: the oldest of each stage that has
/// any.
pub(super) async fn oldest_queued<B: Backend>(
    conn: &mut <B::Db as sqlx::Database>::Connection,
) -> Result<Option<Millis>> {
    let stages = format!("SELECT stage FROM ({}) c WHERE c.n > 0", B::QUEUED_COUNTS);
    soonest_queued::<B::Db>(conn, &stages, &[]).await
}

/// When the soonest queued job of `stages` is due (an idle engine's next
/// wake-up for its own stages).
pub(super) async fn next_run_at<B: Backend>(
    store: &B,
    stages: &[String],
) -> Result<Option<Millis>> {
    if stages.is_empty() {
        return Ok(None);
    }
    let values: Vec<String> = (1..=stages.len()).map(|i| format!("(${i})")).collect();
    let args: Vec<Arg<'_>> = stages.iter().map(|s| s.as_str().into()).collect();
    let mut conn = store.read().await?;
    soonest_queued::<B::Db>(&mut conn, &format!("VALUES {}", values.join(", ")), &args).await
}

/// The soonest `run_at` of the queued jobs of the stages `stages` (SQL with
/// one column) names: one index seek per stage and priority level
/// (`LEVELS`), however long the queue.
async fn soonest_queued<D: Sql>(
    conn: &mut D::Connection,
    stages: &str,
    args: &[Arg<'_>],
) -> Result<Option<Millis>> {
    one::<D>(
        conn,
        &format!(
            "WITH RECURSIVE s(stage) AS ({stages}),
             {LEVELS}
             SELECT MIN((SELECT MIN(j.run_at) FROM jobs j
                         WHERE j.state = 'queued' AND j.stage = l.stage AND j.priority = l.priority)) AS at
             FROM levels l WHERE l.priority IS NOT NULL"
        ),
        args,
    )
    .await?
    .opt_int("at")
}

pub(super) async fn events<B: Backend>(store: &B, filter: &EventFilter) -> Result<Vec<Event>> {
    let mut sql = format!("SELECT {} FROM events WHERE true", common::EVENT_COLUMNS);
    if filter.item.is_some() {
        sql.push_str(" AND item_id = $1");
    }
    if filter.kind.is_some() {
        sql.push_str(" AND kind = $2");
    }
    if filter.since.is_some() {
        sql.push_str(" AND at >= $3");
    }
    sql.push_str(" ORDER BY id DESC LIMIT $4");
    let limit = if filter.limit == 0 { 100 } else { filter.limit };
    let mut conn = store.read().await?;
    let rows = B::Db::rows(
        &mut conn,
        &sql,
        &[
            filter.item.into(),
            (&filter.kind).into(),
            filter.since.into(),
            limit.into(),
        ],
    )
    .await?;
    let mut events = decode(&rows, common::event_row)?;
    events.reverse();
    Ok(events)
}

pub(super) async fn spend<B: Backend>(store: &B, item: ItemId, day_start: Millis) -> Result<Spend> {
    let mut tx = store.read_tx().await?;
    let spend = Spend {
        item: usage_since::<B>(&mut tx, 0, Some(item)).await?,
        day: usage_since::<B>(&mut tx, day_start, None).await?,
    };
    tx.commit().await?;
    Ok(spend)
}

/// Model usage recorded on attempts since `since`, of one item or of all.
async fn usage_since<B: Backend>(
    tx: &mut Tx<B::Db>,
    since: Millis,
    item: Option<ItemId>,
) -> Result<UsageTotals> {
    let r = one::<B::Db>(
        tx,
        "SELECT CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS pt,
                CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS ct,
                CAST(COALESCE(SUM(cost), 0.0) AS DOUBLE PRECISION) AS cost
         FROM attempts
         WHERE prompt_tokens IS NOT NULL AND finished_at >= $1 AND (CAST($2 AS BIGINT) IS NULL OR item_id = $2)",
        &[since.into(), item.into()],
    )
    .await?;
    common::usage_totals(&r)
}

pub(super) async fn attempt_stats<B: Backend>(
    store: &B,
    since: Millis,
) -> Result<Vec<StageAttempts>> {
    // At most the window's newest 50,000 attempts, through the index on
    // `finished_at`: the work grows with the window's activity, never with
    // the history before it. The last error is looked for only where there
    // is one, newest first within the window (by id, it would read every
    // attempt ever made when the window has none).
    let mut conn = store.read().await?;
    let rows = B::Db::rows(
        &mut conn,
        "SELECT s.stage, s.worked, s.failed, s.hung,
                CASE WHEN s.failed > 0 THEN
                    (SELECT a2.error FROM attempts a2
                      WHERE a2.finished_at >= $1 AND a2.stage = s.stage
                        AND a2.outcome IN ('error', 'timeout', 'hung', 'permanent', 'lost')
                      ORDER BY a2.finished_at DESC, a2.id DESC LIMIT 1)
                END AS last_error
         FROM (SELECT stage,
                      COUNT(*) FILTER (WHERE outcome IN ('succeeded', 'rejected')) AS worked,
                      COUNT(*) FILTER (WHERE outcome IN ('error', 'timeout', 'hung', 'permanent', 'lost')) AS failed,
                      COUNT(*) FILTER (WHERE outcome = 'hung') AS hung
               FROM (SELECT stage, outcome FROM attempts WHERE finished_at >= $1
                     ORDER BY finished_at DESC LIMIT 50000) AS recent
               GROUP BY stage) AS s
         WHERE s.worked + s.failed > 0",
        &[since.into()],
    )
    .await?;
    let mut stats = decode(&rows, common::stage_attempts)?;
    // By name as Rust orders it, whatever the database's collation.
    stats.sort_by(|a, b| a.stage.cmp(&b.stage));
    Ok(stats)
}

pub(super) async fn activity<B: Backend>(
    store: &B,
    since: Millis,
    bucket: Millis,
    now: Millis,
) -> Result<Vec<ActivityBucket>> {
    let bucket = bucket.max(1);
    let since = since.max(now - bucket * (crate::dashboard::MAX_BUCKETS - 1));
    let span = [since.into(), bucket.into()];
    let mut tx = store.read_tx().await?;
    let mut rows = Vec::new();
    for r in B::Db::rows(
        &mut tx,
        "SELECT (finished_at - $1) / $2 AS b, COUNT(*) AS n,
                COUNT(*) FILTER (WHERE outcome IN ('error', 'timeout', 'hung', 'permanent', 'lost')) AS failed
         FROM attempts WHERE finished_at >= $1 AND outcome NOT IN ('cancelled', 'released', 'paused')
         GROUP BY b",
        &span,
    )
    .await?
    {
        rows.push((r.int("b")?, r.count("n")?, r.count("failed")?, 0, 0));
    }
    for r in B::Db::rows(
        &mut tx,
        "SELECT (finished_at - $1) / $2 AS b, COUNT(*) FILTER (WHERE state = 'done') AS done,
                COUNT(*) FILTER (WHERE state = 'failed') AS failed
         FROM items WHERE finished_at >= $1 GROUP BY b",
        &span,
    )
    .await?
    {
        rows.push((r.int("b")?, 0, 0, r.count("done")?, r.count("failed")?));
    }
    tx.commit().await?;
    Ok(crate::dashboard::fill_buckets(since, bucket, now, &rows))
}

/// The tallies judged from every finished job of the gates: what the
/// counters (`tallies.rs`) replace, kept to check them against.
pub(super) async fn gate_tallies_scanned<B: Backend>(
    store: &B,
    gates: &[String],
) -> Result<Vec<GateTally>> {
    // Grouped outside, so that neither database mistakes an output name
    // for a column of `jobs`.
    super::tallies::read_tallies(store, gates, |stages| {
        format!(
            "SELECT stage, round, model, outcome, COUNT(*) AS n
             FROM ({} AND j.stage IN ({stages})) AS judged
             GROUP BY stage, round, model, outcome",
            super::tallies::JUDGED
        )
    })
    .await
}

pub(super) async fn change_marker<B: Backend>(store: &B) -> Result<ChangeMarker> {
    // Each MAX(id) is the last entry of the primary key; the running count
    // reads the partial index of running jobs.
    let mut conn = store.read().await?;
    let r = one::<B::Db>(
        &mut conn,
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM items) AS item,
                (SELECT COALESCE(MAX(id), 0) FROM jobs) AS job,
                (SELECT COALESCE(MAX(id), 0) FROM attempts) AS attempt,
                (SELECT COALESCE(MAX(id), 0) FROM events) AS event,
                (SELECT count(*) FROM jobs WHERE state = 'running') AS running",
        &[],
    )
    .await?;
    Ok(ChangeMarker {
        item: r.int("item")?,
        job: r.int("job")?,
        attempt: r.int("attempt")?,
        event: r.int("event")?,
        running: r.count("running")?,
    })
}
