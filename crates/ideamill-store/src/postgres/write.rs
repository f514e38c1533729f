//! The rows PostgreSQL writes many of: one `UNNEST` statement per kind of
//! row, whatever the batch size.

use async_trait::async_trait;
use ideamill_core::machine::NextJob;
use ideamill_core::{FailureClass, ItemId, Millis, Usage};

use super::{CHANNEL, PostgresStore, Tx, db_now};
use crate::common::{self, AttemptRecord, RowExt};
use crate::handoff::{Claim, NewItems};
use crate::shared::Rows;
use crate::*;

#[async_trait]
impl Rows for PostgresStore {
    async fn insert_events(tx: &mut Tx, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Ordered by position, so that ids follow the order given.
        sqlx::query(
            "INSERT INTO events (at, kind, item_id, job_id, process, message)
             SELECT at, kind, item_id, job_id, process, message
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[])
                  WITH ORDINALITY AS u(at, kind, item_id, job_id, process, message, n)
             ORDER BY n",
        )
        .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.item_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.job_id).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.process.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Enqueue jobs, one statement for all (the `jobs_set_current` trigger
    /// keeps each item's current job).
    async fn insert_jobs(tx: &mut Tx, jobs: &[(ItemId, &NextJob, Millis)]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at)
             SELECT item_id, stage, round, 'queued', at, max_attempts, at, at
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
                  WITH ORDINALITY AS u(item_id, stage, round, at, max_attempts, n)
             ORDER BY n",
        )
        .bind(jobs.iter().map(|j| j.0).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.1.stage.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| i64::from(j.1.round)).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.2).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| i64::from(j.1.max_attempts)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn insert_attempts(tx: &mut Tx, rows: &[AttemptRecord<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let usage = |f: &dyn Fn(&Usage) -> Option<i64>| -> Vec<Option<i64>> {
            rows.iter()
                .map(|a| a.usage.filter(|u| !u.unknown).and_then(f))
                .collect()
        };
        sqlx::query(
            "INSERT INTO attempts (job_id, item_id, stage, round, attempt, process, outcome, started_at,
                                   finished_at, exit_code, error, output, stderr, provider, model,
                                   prompt_tokens, completion_tokens, cost, usage_counted)
             SELECT job_id, item_id, stage, round, attempt, process, outcome, started_at,
                    finished_at, exit_code, error, output, stderr, provider, model,
                    prompt_tokens, completion_tokens, cost, usage_counted
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::text[],
                         $8::int8[], $9::int8[], $10::int8[], $11::text[], $12::text[], $13::text[],
                         $14::text[], $15::text[], $16::int8[], $17::int8[], $18::float8[], $19::bool[])
                  WITH ORDINALITY AS u(job_id, item_id, stage, round, attempt, process, outcome, started_at,
                                       finished_at, exit_code, error, output, stderr, provider, model,
                                       prompt_tokens, completion_tokens, cost, usage_counted, n)
             ORDER BY n",
        )
        .bind(rows.iter().map(|a| a.job.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.job.item_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.job.stage.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| i64::from(a.job.round)).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| i64::from(a.job.attempt)).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.process).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.outcome.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.started_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.finished_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.exit_code.map(i64::from)).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.error).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.output).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.stderr).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.usage.map(|u| u.provider.as_str())).collect::<Vec<_>>())
        .bind(rows.iter().map(|a| a.usage.map(|u| u.model.as_str())).collect::<Vec<_>>())
        .bind(usage(&|u| Some(u.prompt_tokens as i64)))
        .bind(usage(&|u| Some(u.completion_tokens as i64)))
        .bind(
            rows.iter()
                .map(|a| a.usage.and_then(|u| u.known()).map(|(_, _, cost)| cost))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|a| a.usage.map(|u| u.counted)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Fail active items, each with its reason; planned for its rows, as
    /// the finish's joins are (`finish.rs`).
    async fn fail_items(tx: &mut Tx, rows: &[(ItemId, &str, FailureClass, Millis)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE items SET state = 'failed', last_error = u.reason, failure_class = u.class,
                    finished_at = u.at, updated_at = u.at
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[]) AS u(id, reason, class, at)
             WHERE items.id = ANY($1) AND items.id = u.id AND items.state = 'active'",
        )
        .persistent(false)
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// New active items, each with its first job `first`; ids in input
    /// order, and the jobs claimed with them.
    async fn insert_new_items(
        tx: &mut Tx,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
        claim: Option<Claim<'_>>,
        clock: bool,
    ) -> Result<NewItems> {
        if items.is_empty() {
            return Ok(NewItems::default());
        }
        let rows = new_items(
            concat!(new_items_sql!(), " SELECT * FROM queued"),
            items,
            first,
            now,
            claim,
            clock,
        )
        .fetch_all(&mut **tx)
        .await?;
        added(&rows, now)
    }

    /// One statement, committed on its own: the items, their first jobs
    /// (those claimed with them inserted running) and, if a job was left
    /// queued, the wake-up (delivered at commit).
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
        let query = new_items(
            concat!(
                new_items_sql!(),
                ", woken AS MATERIALIZED (
                     SELECT pg_notify($11, $12) WHERE EXISTS (SELECT 1 FROM queued WHERE state = 'queued'))
                 SELECT *, (SELECT count(*) FROM woken) AS woken FROM queued"
            ),
            items,
            first,
            now,
            claim,
            self.db_clock,
        )
        .bind(CHANNEL)
        .bind(&self.wake_id);
        let rows = self.warm.fetch_all(query).await?;
        let added = added(&rows, now)?;
        if added.any_queued() {
            self.local.notify();
        }
        Ok(added)
    }
}

/// New items and their first jobs, in one statement: `queued` returns the
/// jobs. The first `$7` of them are inserted running, leased to `$8` (as a
/// claim leaves a job, `leases.rs`), unless a job of their stage is already
/// runnable: that one goes first, and the dispatcher claims it. Each item
/// is inserted with its job already current (the job's id drawn first), so
/// the trigger that keeps the current job writes nothing
/// (0011_add_sets_current.sql). The jobs' triggers are AFTER triggers,
/// which run at the end of the statement and so see the items it inserted;
/// the queued-count trigger counts only the jobs inserted queued.
macro_rules! new_items_sql {
    () => {
        concat!(
            "WITH added AS (
                 INSERT INTO items (text, metadata, state, stage, round, current_job_id, created_at, updated_at)
                 SELECT text, metadata, 'active', $3, $4, nextval(pg_get_serial_sequence('jobs', 'id')), $5, $5
                 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u(text, metadata, n)
                 ORDER BY n
                 RETURNING id, current_job_id),
             free AS MATERIALIZED (
                 SELECT $7::int8 > 0 AND NOT EXISTS (
                     SELECT 1 FROM jobs WHERE state = 'queued' AND stage = $3 AND run_at <= $5) AS ok),
             ranked AS (
                 SELECT id, current_job_id,
                        (SELECT ok FROM free) AND row_number() OVER (ORDER BY id) <= $7 AS taken
                 FROM added),
             queued AS (
                 INSERT INTO jobs (id, item_id, stage, round, state, run_at, max_attempts, created_at, updated_at,
                                   attempts, lease_token, lease_owner, lease_expires_at, started_at)
                 SELECT current_job_id, id, $3, $4, CASE WHEN taken THEN 'running' ELSE 'queued' END, $5, $6, $5, $5,
                        CASE WHEN taken THEN 1 ELSE 0 END, CASE WHEN taken THEN 1 ELSE 0 END,
                        CASE WHEN taken THEN $8 END,
                        CASE WHEN taken THEN (CASE WHEN $9 THEN ",
            db_now!(),
            " ELSE $5 END) + $10 END,
                        CASE WHEN taken THEN $5 END
                 FROM ranked ORDER BY id
                 RETURNING id, item_id, stage, round, attempts, max_attempts, lease_token, run_at, state)"
        )
    };
}
use new_items_sql;

/// `sql` (over [`new_items_sql`]) with the items' parameters bound.
fn new_items<'q>(
    sql: &'q str,
    items: &'q [NewItem],
    first: &'q NextJob,
    now: Millis,
    claim: Option<Claim<'q>>,
    clock: bool,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(items.iter().map(|i| i.text.as_str()).collect::<Vec<_>>())
        .bind(
            items
                .iter()
                .map(|i| i.metadata.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(&first.stage)
        .bind(i64::from(first.round))
        .bind(now)
        .bind(i64::from(first.max_attempts))
        .bind(claim.map_or(0, |c| i64::from(c.slots)))
        .bind(claim.map(|c| c.owner))
        .bind(clock)
        .bind(claim.map_or(0, |c| c.lease))
}

/// The new items' ids in input order (they grow with it; RETURNING's order
/// is unspecified), and the jobs claimed with them.
fn added(rows: &[sqlx::postgres::PgRow], now: Millis) -> Result<NewItems> {
    let mut added = NewItems::default();
    for r in rows {
        added.ids.push(r.int("item_id")?);
        if r.text("state")? == "running" {
            added.claimed.push(common::claimed_job(r, 0, Some(now))?);
        }
    }
    added.ids.sort_unstable();
    added.claimed.sort_by_key(|j| j.id);
    Ok(added)
}

/// Wake every listening engine when this transaction commits. The payload
/// names the handle that sent it (`sender`), whose own engines are woken in
/// process instead.
pub(super) async fn notify_in(tx: &mut Tx, sender: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(sender)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn insert_event(tx: &mut Tx, e: &NewEvent) -> Result<()> {
    PostgresStore::insert_events(tx, std::slice::from_ref(e)).await
}

/// Which per-round text a finish records: the table and its text column.
#[derive(Clone, Copy)]
pub(super) enum RoundText {
    Feedback,
    Output,
}

/// Insert a gate's feedback or a stage's output for each finished job.
pub(super) async fn insert_round_texts(
    tx: &mut Tx,
    kind: RoundText,
    rows: &[(&ClaimedJob, &str, Millis)],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (table, column) = match kind {
        RoundText::Feedback => ("feedback", "feedback"),
        RoundText::Output => ("outputs", "output"),
    };
    let sql = format!(
        "INSERT INTO {table} (item_id, stage, round, job_id, {column}, created_at)
         SELECT item_id, stage, round, job_id, text, created_at
         FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[])
              WITH ORDINALITY AS u(item_id, stage, round, job_id, text, created_at, n)
         ORDER BY n"
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.0.item_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.0.stage.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| i64::from(r.0.round))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.0.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
