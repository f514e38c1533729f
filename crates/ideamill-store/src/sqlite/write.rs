//! The rows SQLite writes many of: multi-row `INSERT`s a chunk at a time.

use async_trait::async_trait;
use ideamill_core::machine::NextJob;
use ideamill_core::{FailureClass, ItemId, Millis};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::inline_tx::{COMMIT, InlineTx};
use super::{SqliteStore, Tx};
use crate::common::{self, AttemptRecord, RowExt};
use crate::handoff::{Claim, NewItems};
use crate::shared::{Backend, Rows};
use crate::*;

/// Rows per multi-row statement; well under SQLite's bound-parameter limit.
pub(super) const CHUNK: usize = 64;

#[async_trait]
impl Rows for SqliteStore {
    async fn insert_events(tx: &mut Tx, events: &[NewEvent]) -> Result<()> {
        for event in events {
            insert_event(tx, event).await?;
        }
        Ok(())
    }

    /// Enqueue many jobs in one statement per chunk (the `jobs_set_current`
    /// trigger keeps each item's current job).
    async fn insert_jobs(tx: &mut Tx, jobs: &[(ItemId, &NextJob, Millis)]) -> Result<()> {
        run_statements(tx, |q| push_insert_jobs(q, jobs)).await
    }

    async fn insert_attempts(tx: &mut Tx, rows: &[AttemptRecord<'_>]) -> Result<()> {
        run_statements(tx, |q| push_insert_attempts(q, rows)).await
    }

    async fn fail_items(tx: &mut Tx, rows: &[(ItemId, &str, FailureClass, Millis)]) -> Result<()> {
        for (item, reason, class, now) in rows {
            fail_item(tx, *item, reason, *class, *now).await?;
        }
        Ok(())
    }

    /// New active items, each with its first job `first`; ids in input
    /// order, and the jobs claimed with them: one hop to SQLite's thread.
    async fn insert_new_items(
        tx: &mut Tx,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
        claim: Option<Claim<'_>>,
        _clock: bool,
    ) -> Result<NewItems> {
        if items.is_empty() {
            return Ok(NewItems::default());
        }
        let mut q = QueryBuilder::new("");
        push_add(&mut q, items, first, now, claim.as_ref());
        added(items, &q.build().fetch_all(&mut **tx).await?, now)
    }

    /// One hop to the writer's thread: the BEGIN, the items, their first
    /// jobs, the hand-off's claim and the COMMIT in one command
    /// (`inline_tx.rs`). An item's pickup waits on every hop.
    async fn add_new_items(
        &self,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
        claim: Option<Claim<'_>>,
    ) -> Result<NewItems> {
        if items.is_empty() {
            return Ok(NewItems::default());
        }
        let mut tx = InlineTx::new(self.writer.acquire().await?);
        match add_in(&mut tx, items, first, now, claim).await {
            Ok(added) => {
                if added.any_queued() {
                    Backend::notify(self);
                }
                Ok(added)
            }
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// [`SqliteStore::add_new_items`]'s writes, in one transaction on `tx`,
/// committed.
async fn add_in(
    tx: &mut InlineTx,
    items: &[NewItem],
    first: &NextJob,
    now: Millis,
    claim: Option<Claim<'_>>,
) -> Result<NewItems> {
    let mut q = QueryBuilder::new(tx.begin());
    push_add(&mut q, items, first, now, claim.as_ref());
    q.push(COMMIT);
    let rows = q.build().fetch_all(tx.conn()).await?;
    tx.committed();
    added(items, &rows, now)
}

/// The statements of an add: the items, their first jobs and the hand-off's
/// claim. Each item's id is its place in `items` past the next id
/// ([`NEXT_ITEM_ID`], read once per statement: an uncorrelated subquery),
/// so the new items are the newest `items.len()`, which the statements
/// after find by that. Rows: the new items' ids, then the claimed jobs.
fn push_add<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    items: &'a [NewItem],
    first: &'a NextJob,
    now: Millis,
    claim: Option<&Claim<'a>>,
) {
    for chunk in items.chunks(CHUNK) {
        q.push(
            "INSERT INTO items (id, text, metadata, state, stage, round, created_at, updated_at, trace_id)
             SELECT next.id + v.column1, v.column2, v.column3, 'active', ",
        )
        .push_bind(&first.stage)
        .push(", ")
        .push_bind(first.round)
        .push(", ")
        .push_bind(now)
        .push(", ")
        .push_bind(now)
        // Written here, not by the migration's trigger: one write per item.
        .push(", lower(hex(randomblob(16))) FROM (SELECT ")
        .push(NEXT_ITEM_ID)
        .push(" AS id) AS next, (");
        q.push_values(chunk.iter().enumerate(), |mut b, (k, item)| {
            b.push_bind(k as i64)
                .push_bind(&item.text)
                .push_bind(item.metadata.to_string());
        });
        q.push(") AS v ORDER BY v.column1 RETURNING id;\n");
    }
    let count = items.len() as i64;
    q.push(
        "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at)
         SELECT id, ",
    )
    .push_bind(&first.stage)
    .push(", ")
    .push_bind(first.round)
    .push(", 'queued', ")
    .push_bind(now)
    .push(", ")
    .push_bind(first.max_attempts)
    .push(", ")
    .push_bind(now)
    .push(", ")
    .push_bind(now)
    .push(" FROM items WHERE id > (SELECT MAX(id) FROM items) - ")
    .push_bind(count)
    .push(" ORDER BY id;\n");
    if let Some(claim) = claim {
        push_claim_new_jobs(q, count, &first.stage, claim, now);
    }
}

/// The new items' ids, in input order, and the jobs claimed with them, from
/// the rows of [`push_add`]'s statements.
fn added(items: &[NewItem], rows: &[SqliteRow], now: Millis) -> Result<NewItems> {
    let (claimed, new): (Vec<&SqliteRow>, Vec<&SqliteRow>) = rows
        .iter()
        .partition(|r| r.try_column("lease_token").is_ok());
    let mut ids = new
        .iter()
        .map(|r| r.int("id"))
        .collect::<Result<Vec<ItemId>>>()?;
    ids.sort_unstable();
    if ids.len() != items.len() {
        return Err(StoreError::Corrupt(format!(
            "an add of {} items inserted {}",
            items.len(),
            ids.len()
        )));
    }
    let mut claimed = claimed
        .into_iter()
        .map(|r| common::claimed_job(r, 0, Some(now)))
        .collect::<Result<Vec<_>>>()?;
    claimed.sort_by_key(|j| j.id);
    Ok(NewItems { ids, claimed })
}

/// The first `claim.slots` jobs of the `count` newest items, just
/// inserted, claimed as [`crate::shared::Leases::claim`] claims, unless an
/// older job of their stage is runnable (it goes first, and the dispatcher
/// claims it): a statement in the add's transaction, not a transaction of
/// its own.
fn push_claim_new_jobs<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    count: i64,
    stage: &'a str,
    claim: &Claim<'a>,
    now: Millis,
) {
    q.push("UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_token = lease_token + 1, lease_owner = ")
        .push_bind(claim.owner)
        .push(", lease_expires_at = ")
        .push_bind(now + claim.lease)
        .push(", started_at = ")
        .push_bind(now)
        .push(", updated_at = ")
        .push_bind(now)
        .push(" FROM (SELECT (SELECT MAX(id) FROM items) - ")
        .push_bind(count)
        .push(
            " + 1 AS id) AS first
             WHERE jobs.item_id >= first.id AND jobs.item_id < first.id + ",
        )
        .push_bind(i64::from(claim.slots))
        .push(
            " AND jobs.state = 'queued'
              AND NOT EXISTS (SELECT 1 FROM jobs older WHERE older.state = 'queued' AND older.stage = ",
        )
        .push_bind(stage)
        .push(" AND older.run_at <= ")
        .push_bind(now)
        .push(
            " AND older.item_id < first.id)
             RETURNING jobs.id, jobs.item_id, jobs.stage, jobs.round, jobs.attempts, jobs.max_attempts,
                       jobs.lease_token, jobs.run_at;\n",
        );
}

/// Statements written into one query, sent to SQLite's connection thread
/// at once: one hop there and back for all of them, however many. Each
/// `push_*` appends `;`-terminated statements, a chunk of rows each, and
/// nothing for no rows.
pub(super) async fn run_statements<'a, F>(conn: &mut SqliteConnection, write: F) -> Result<()>
where
    F: FnOnce(&mut QueryBuilder<'a, Sqlite>),
{
    let mut q = QueryBuilder::<Sqlite>::new("");
    write(&mut q);
    if !q.sql().is_empty() {
        q.build().execute(conn).await?;
    }
    Ok(())
}

pub(super) fn push_insert_jobs<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    jobs: &'a [(ItemId, &'a NextJob, Millis)],
) {
    for chunk in jobs.chunks(CHUNK) {
        q.push(
            "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at) ",
        );
        q.push_values(chunk, |mut b, (item, next, now)| {
            let now = *now;
            b.push_bind(*item)
                .push_bind(&next.stage)
                .push_bind(next.round)
                .push_bind("queued")
                .push_bind(now)
                .push_bind(next.max_attempts)
                .push_bind(now)
                .push_bind(now);
        });
        q.push(";\n");
    }
}

pub(super) fn push_insert_attempts<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    rows: &'a [AttemptRecord<'a>],
) {
    for chunk in rows.chunks(CHUNK) {
        q.push(
            "INSERT INTO attempts (job_id, item_id, stage, round, attempt, process, outcome, started_at,
                                   finished_at, exit_code, error, output, stderr, provider, model,
                                   prompt_tokens, completion_tokens, cost, usage_counted) ",
        );
        q.push_values(chunk, |mut b, a| {
            b.push_bind(a.job.id)
                .push_bind(a.job.item_id)
                .push_bind(&a.job.stage)
                .push_bind(a.job.round)
                .push_bind(a.job.attempt)
                .push_bind(a.process)
                .push_bind(a.outcome.as_str())
                .push_bind(a.started_at)
                .push_bind(a.finished_at)
                .push_bind(a.exit_code)
                .push_bind(a.error)
                .push_bind(a.output)
                .push_bind(a.stderr)
                .push_bind(a.usage.map(|u| u.provider.as_str()))
                .push_bind(a.usage.map(|u| u.model.as_str()))
                .push_bind(a.usage.and_then(|u| u.known()).map(|k| k.0 as i64))
                .push_bind(a.usage.and_then(|u| u.known()).map(|k| k.1 as i64))
                .push_bind(a.usage.and_then(|u| u.known()).map(|k| k.2))
                .push_bind(a.usage.map(|u| u.counted));
        });
        q.push(";\n");
    }
}

pub(super) async fn insert_event(conn: &mut SqliteConnection, e: &NewEvent) -> Result<()> {
    sqlx::query("INSERT INTO events (at, kind, item_id, job_id, process, message) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(e.at)
        .bind(e.kind)
        .bind(e.item_id)
        .bind(e.job_id)
        .bind(&e.process)
        .bind(&e.message)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn fail_item(
    conn: &mut SqliteConnection,
    item: ItemId,
    reason: &str,
    class: FailureClass,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "UPDATE items SET state = 'failed', last_error = ?, failure_class = ?, finished_at = ?,
                updated_at = ?
         WHERE id = ? AND state = 'active'",
    )
    .bind(reason)
    .bind(class.as_str())
    .bind(now)
    .bind(now)
    .bind(item)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn insert_feedback(
    conn: &mut SqliteConnection,
    job: &ClaimedJob,
    feedback: &str,
    round_hash: Option<&str>,
    now: Millis,
) -> Result<()> {
    sqlx::query("INSERT INTO feedback (item_id, stage, round, job_id, feedback, created_at, round_hash) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(job.item_id)
        .bind(&job.stage)
        .bind(job.round)
        .bind(job.id)
        .bind(feedback)
        .bind(now)
        .bind(round_hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The id the next new item gets: above every id in use and every id ever
/// deleted (`id_high_water`), so that no id is given twice, even after the
/// newest items were pruned. Read inside the write transaction that inserts.
macro_rules! next_item_id {
    () => {
        "(SELECT MAX(COALESCE((SELECT MAX(id) FROM items), 0),
                     COALESCE((SELECT id FROM id_high_water WHERE name = 'items'), 0)) + 1)"
    };
}
pub(super) const NEXT_ITEM_ID: &str = next_item_id!();
