//! Items, written once: adding them (once per source), importing them,
//! retrying and cancelling by hand, and reading them (one item, pages,
//! search).

use ideamill_core::machine::NextJob;
use ideamill_core::{ItemId, JobId, Millis};

use super::{Backend, Leases, Rows, Sql, Tx, one};
use crate::common::{self, ATTEMPT_COLUMNS, ITEM_COLUMNS, JOB_COLUMNS, RowExt};
use crate::handoff::Claim;
use crate::*;

pub(super) async fn add_items<B: Backend + Rows + Leases>(
    store: &B,
    items: &[NewItem],
    first: &NextJob,
    now: Millis,
) -> Result<Vec<ItemId>> {
    let items = common::storable_items(items);
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let reserved = store.claimer().reserve(&first.stage, items.len());
    let claim = reserved.as_deref().map(Claim::of);
    let added = store.add_new_items(&items, first, now, claim).await?;
    hand_off(store, reserved, added.claimed, now).await;
    Ok(added.ids)
}

pub(super) async fn add_items_once<B: Backend + Rows + Leases>(
    store: &B,
    source: &IntakeSource,
    items: &[NewItem],
    first: &NextJob,
    now: Millis,
) -> Result<AddOutcome> {
    let (source, items) = (
        common::storable_source(source),
        common::storable_items(items),
    );
    let reserved = store.claimer().reserve(&first.stage, items.len());
    let claim = reserved.as_deref().map(Claim::of);
    let mut tx = store.write_tx().await?;
    if let Some(record) = take_source::<B>(&mut tx, &source, now).await? {
        tx.rollback().await?;
        return Ok(AddOutcome::Duplicate(record));
    }
    let added =
        B::insert_new_items(&mut tx, &items, first, now, claim, store.store_clock()).await?;
    record_source_items::<B>(&mut tx, &source.key, &added.ids).await?;
    store.commit(tx, added.any_queued()).await?;
    hand_off(store, reserved, added.claimed, now).await;
    Ok(AddOutcome::Added(added.ids))
}

/// Hand jobs an add claimed to the engine that reserved their slots. If it
/// stopped meanwhile (and so gave back what it held), give them back too,
/// so that they wait for no lease to expire.
async fn hand_off<B: Leases>(
    store: &B,
    reserved: Option<Box<dyn Reserved>>,
    claimed: Vec<ClaimedJob>,
    now: Millis,
) {
    let Some(reserved) = reserved else { return };
    let owner = reserved.owner().to_string();
    let any = !claimed.is_empty();
    if !reserved.hand_off(claimed) && any {
        match Leases::release(store, &owner, now).await {
            Ok(n) => {
                tracing::info!("Gave back {n} new job(s) claimed for engine {owner}, which stopped")
            }
            Err(e) => tracing::warn!(
                "Could not give back the new jobs claimed for engine {owner}, which stopped ({e}); \
                 they run again when their leases expire"
            ),
        }
        store.notify();
    }
}

pub(super) async fn import_items<B: Backend + Rows>(
    store: &B,
    items: &[ImportedItem],
    now: Millis,
) -> Result<Vec<ImportOutcome>> {
    let items = common::storable_imports(items);
    let insert_item = format!(
        "INSERT INTO items (id, text, metadata, state, stage, round, last_error, created_at, updated_at, finished_at)
         VALUES ({}, $1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        B::NEW_ITEM_ID
    );
    let mut tx = store.write_tx().await?;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut queued = false;
    for item in items.iter() {
        if let Some(record) = take_source::<B>(&mut tx, &item.source, now).await? {
            outcomes.push(ImportOutcome::Skipped(record));
            continue;
        }
        let (state, stage, round, last_error, finished_at) = match &item.state {
            ImportedState::Queued { next } | ImportedState::Rejected { next, .. } => {
                ("active", Some(next.stage.as_str()), next.round, None, None)
            }
            ImportedState::Done => ("done", None, 1, None, Some(now)),
            ImportedState::Failed { error, stage } => (
                "failed",
                Some(stage.as_str()),
                1,
                Some(error.as_str()),
                Some(now),
            ),
        };
        let metadata = item.metadata.to_string();
        let id = one::<B::Db>(
            &mut tx,
            &insert_item,
            &[
                item.text.as_str().into(),
                metadata.as_str().into(),
                state.into(),
                stage.into(),
                round.into(),
                last_error.into(),
                item.created_at.into(),
                now.into(),
                finished_at.into(),
            ],
        )
        .await?
        .int("id")?;
        if let ImportedState::Rejected { rejections, .. } = &item.state {
            // Each rejection is a finished gate job with its feedback, as if
            // the gate had run here.
            for r in rejections {
                let job: JobId = one::<B::Db>(
                    &mut tx,
                    "INSERT INTO jobs (item_id, stage, round, state, run_at, max_attempts, created_at, updated_at, finished_at)
                     VALUES ($1, $2, $3, 'rejected', $4, 1, $4, $4, $4) RETURNING id",
                    &[id.into(), (&r.stage).into(), r.round.into(), now.into()],
                )
                .await?
                .int("id")?;
                B::Db::execute(
                    &mut tx,
                    "INSERT INTO feedback (item_id, stage, round, job_id, feedback, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        id.into(),
                        (&r.stage).into(),
                        r.round.into(),
                        job.into(),
                        (&r.feedback).into(),
                        now.into(),
                    ],
                )
                .await?;
            }
        }
        if let ImportedState::Queued { next } | ImportedState::Rejected { next, .. } = &item.state {
            // Inserted last, so the trigger makes it the current job.
            B::insert_jobs(&mut tx, &[(id, next, now)]).await?;
            queued = true;
        }
        record_source_items::<B>(&mut tx, &item.source.key, &[id]).await?;
        outcomes.push(ImportOutcome::Imported(id));
    }
    store.commit(tx, queued).await?;
    Ok(outcomes)
}

/// Take a source's key, or find it taken. On PostgreSQL a concurrent taker
/// of the same key waits on the key's index entry until this transaction
/// ends, then finds it taken; on SQLite the write lock, taken first, keeps
/// them apart. Two processes never both take one source.
async fn take_source<B: Backend>(
    tx: &mut Tx<B::Db>,
    source: &IntakeSource,
    now: Millis,
) -> Result<Option<IntakeRecord>> {
    let taken = B::Db::execute(
        tx,
        "INSERT INTO intake_sources (key, name, item_ids, created_at) VALUES ($1, $2, '[]', $3)
         ON CONFLICT (key) DO NOTHING",
        &[(&source.key).into(), (&source.name).into(), now.into()],
    )
    .await?;
    if taken == 1 {
        return Ok(None);
    }
    let r = one::<B::Db>(
        tx,
        "SELECT key, name, item_ids, created_at FROM intake_sources WHERE key = $1",
        &[(&source.key).into()],
    )
    .await?;
    let ids = r.text("item_ids")?;
    Ok(Some(IntakeRecord {
        key: r.text("key")?,
        name: r.text("name")?,
        item_ids: serde_json::from_str(&ids).map_err(|e| {
            StoreError::Corrupt(format!("item ids of intake source {}: {e}", source.key))
        })?,
        taken_at: r.int("created_at")?,
    }))
}

async fn record_source_items<B: Backend>(
    tx: &mut Tx<B::Db>,
    key: &str,
    ids: &[ItemId],
) -> Result<()> {
    let ids = serde_json::Value::from(ids).to_string();
    B::Db::execute(
        tx,
        "UPDATE intake_sources SET item_ids = $1 WHERE key = $2",
        &[ids.as_str().into(), key.into()],
    )
    .await?;
    Ok(())
}

pub(super) async fn retry_item<B: Backend + Rows>(
    store: &B,
    id: ItemId,
    next: &NextJob,
    now: Millis,
) -> Result<RetryEffect> {
    let mut tx = store.write_tx().await?;
    let read = format!(
        "SELECT i.state, j.id AS job_id, j.state AS job_state, j.stage AS job_stage FROM items i
         LEFT JOIN jobs j ON j.id = i.current_job_id WHERE i.id = $1{}",
        B::LOCK_ITEM
    );
    let row = B::Db::row(&mut tx, &read, &[id.into()])
        .await?
        .ok_or(StoreError::NoSuchItem(id))?;
    let state = row.text("state")?;
    let job_state = row.opt_text("job_state")?;
    if let Some(refusal) = common::retry_refusal(id, &state, job_state.as_deref()) {
        return Err(refusal);
    }
    let job_id = row.opt_int("job_id")?;
    let event = match (state.as_str(), row.opt_text("job_stage")?) {
        ("active", Some(from)) if from != next.stage => {
            // Waiting on another stage (one the config may no longer have):
            // that job is cancelled, the named stage runs.
            B::Db::execute(
                &mut tx,
                "UPDATE jobs SET state = 'cancelled', updated_at = $1
                 WHERE id = $2 AND state IN ('queued', 'paused')",
                &[now.into(), job_id.into()],
            )
            .await?;
            B::insert_jobs(&mut tx, &[(id, next, now)]).await?;
            common::retried_moved(id, &from, next, now)
        }
        ("active", _) => {
            // Waiting for a backoff or a budget: run it now, without a new
            // job.
            B::Db::execute(
                &mut tx,
                "UPDATE jobs SET state = 'queued', run_at = $1, updated_at = $1
                 WHERE id = $2 AND state IN ('queued', 'paused')",
                &[now.into(), job_id.into()],
            )
            .await?;
            common::retried_waiting(id, now)
        }
        _ => {
            B::Db::execute(
                &mut tx,
                "UPDATE items SET state = 'active', finished_at = NULL, last_error = NULL,
                        failure_class = NULL, updated_at = $1
                 WHERE id = $2",
                &[now.into(), id.into()],
            )
            .await?;
            B::insert_jobs(&mut tx, &[(id, next, now)]).await?;
            common::retried_again(id, &state, next, now)
        }
    };
    B::insert_events(&mut tx, &[event]).await?;
    store.commit(tx, true).await?;
    Ok(RetryEffect {
        stage: next.stage.clone(),
        round: next.round,
    })
}

pub(super) async fn cancel_item<B: Backend + Rows>(
    store: &B,
    id: ItemId,
    now: Millis,
) -> Result<CancelEffect> {
    let mut tx = store.write_tx().await?;
    let state = B::Db::row(
        &mut tx,
        "SELECT state FROM items WHERE id = $1",
        &[id.into()],
    )
    .await?
    .ok_or(StoreError::NoSuchItem(id))?
    .text("state")?;
    if state != "active" {
        return Err(common::not_cancellable(id, &state));
    }
    // Jobs first, then the item: the order every write takes.
    B::Db::execute(
        &mut tx,
        "UPDATE jobs SET state = 'cancelled', finished_at = $1, updated_at = $1
         WHERE item_id = $2 AND state IN ('queued', 'paused')",
        &[now.into(), id.into()],
    )
    .await?;
    let was_running = B::Db::execute(
        &mut tx,
        "UPDATE jobs SET cancel_requested = true, updated_at = $1 WHERE item_id = $2 AND state = 'running'",
        &[now.into(), id.into()],
    )
    .await?
        > 0;
    let cancelled = B::Db::execute(
        &mut tx,
        "UPDATE items SET state = 'cancelled', last_error = 'cancelled by hand', finished_at = $1, updated_at = $1
         WHERE id = $2 AND state = 'active'",
        &[now.into(), id.into()],
    )
    .await?;
    if cancelled == 0 {
        // It finished while we looked (PostgreSQL: no write lock is held).
        tx.rollback().await?;
        let mut conn = store.read().await?;
        let state = one::<B::Db>(
            &mut conn,
            "SELECT state FROM items WHERE id = $1",
            &[id.into()],
        )
        .await?
        .text("state")?;
        return Err(common::not_cancellable(id, &state));
    }
    B::insert_events(&mut tx, &[common::item_cancelled(id, was_running, now)]).await?;
    // Wakes the engine holding the job so that it stops the work now.
    store.commit(tx, true).await?;
    Ok(CancelEffect { was_running })
}

pub(super) async fn item<B: Backend>(store: &B, id: ItemId) -> Result<ItemDetail> {
    // One read transaction, so that the parts agree with each other.
    let mut tx = store.read_tx().await?;
    let row = B::Db::row(
        &mut tx,
        &format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = $1"),
        &[id.into()],
    )
    .await?
    .ok_or(StoreError::NoSuchItem(id))?;
    let item = common::item_row(&row)?;
    let mut of_item = async |sql: String| B::Db::rows(&mut tx, &sql, &[id.into()]).await;
    let jobs = of_item(format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE item_id = $1 ORDER BY id"
    ))
    .await?;
    let attempts = of_item(format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE item_id = $1 ORDER BY id"
    ))
    .await?;
    let outputs = of_item(
        "SELECT stage, round, job_id, output, created_at FROM outputs WHERE item_id = $1 ORDER BY id"
            .into(),
    )
    .await?;
    let feedback = of_item(
        "SELECT stage, round, feedback, created_at, round_hash FROM feedback WHERE item_id = $1 ORDER BY id"
            .into(),
    )
    .await?;
    let events = of_item(format!(
        "SELECT {} FROM events WHERE item_id = $1 ORDER BY id",
        common::EVENT_COLUMNS
    ))
    .await?;
    tx.commit().await?;
    Ok(common::item_detail(
        item,
        decode(&jobs, common::job_row)?,
        decode(&attempts, common::attempt_row)?,
        decode(&outputs, common::output_row)?,
        decode(&feedback, common::feedback_row)?,
        decode(&events, common::event_row)?,
    ))
}

/// Rows decoded into records.
pub(super) fn decode<R, T>(rows: &[R], f: impl Fn(&R) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

pub(super) async fn list_items<B: Backend>(
    store: &B,
    filter: &ItemFilter,
) -> Result<Vec<ItemSummary>> {
    item_page(
        store,
        "FROM items i LEFT JOIN jobs j ON j.id = i.current_job_id WHERE true",
        "i.id",
        filter,
        None,
    )
    .await
}

pub(super) async fn search_items<B: Backend>(
    store: &B,
    filter: &ItemFilter,
    text: &str,
) -> Result<Vec<ItemSummary>> {
    let terms = crate::search_terms(text);
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let (from_where, id_column, query) = B::search(&terms);
    item_page(store, from_where, id_column, filter, Some(&query)).await
}

/// One page of item summaries. `from_where` is the FROM clause and a first
/// condition; `text`, when given, is bound as `$4`.
async fn item_page<B: Backend>(
    store: &B,
    from_where: &str,
    id_column: &str,
    filter: &ItemFilter,
    text: Option<&str>,
) -> Result<Vec<ItemSummary>> {
    let sql = common::item_page_sql(
        format!("{} {from_where}", common::ITEM_SUMMARY_SELECT),
        filter,
        id_column,
    );
    let mut args = vec![
        filter.stage.as_deref().into(),
        filter.before_id.into(),
        common::page_limit(filter).into(),
    ];
    if let Some(text) = text {
        args.push(text.into());
    }
    let mut conn = store.read().await?;
    decode(
        &B::Db::rows(&mut conn, &sql, &args).await?,
        common::item_summary,
    )
}
