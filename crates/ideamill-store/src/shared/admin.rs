//! Processes, events and pruning, written once.

use ideamill_core::{ItemId, Millis};

use super::{Backend, Rows, Sql, items::decode, tallies};
use crate::common::{self, RowExt};
use crate::*;

pub(super) async fn register_process<B: Backend + Rows>(store: &B, p: &ProcessInfo) -> Result<()> {
    let mut tx = store.write_tx().await?;
    B::Db::execute(
        &mut tx,
        "INSERT INTO processes (id, host, pid, version, started_at, last_beat_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET last_beat_at = excluded.last_beat_at, stopped_at = NULL",
        &[
            (&p.id).into(),
            (&p.host).into(),
            p.pid.into(),
            (&p.version).into(),
            p.started_at.into(),
            p.last_beat_at.into(),
        ],
    )
    .await?;
    B::insert_events(&mut tx, &[common::process_started(p)]).await?;
    store.commit(tx, false).await
}

pub(super) async fn stop_process<B: Backend + Rows>(
    store: &B,
    id: &str,
    now: Millis,
) -> Result<()> {
    let mut tx = store.write_tx().await?;
    B::Db::execute(
        &mut tx,
        "UPDATE processes SET stopped_at = $1, last_beat_at = $1 WHERE id = $2",
        &[now.into(), id.into()],
    )
    .await?;
    B::insert_events(&mut tx, &[common::process_stopped(id, now)]).await?;
    store.commit(tx, false).await
}

pub(super) async fn processes<B: Backend>(store: &B) -> Result<Vec<ProcessInfo>> {
    let mut conn = store.read().await?;
    let rows = B::Db::rows(
        &mut conn,
        "SELECT p.id, p.host, p.pid, p.version, p.started_at, p.last_beat_at, p.stopped_at,
                (SELECT count(*) FROM jobs j WHERE j.lease_owner = p.id AND j.state = 'running') AS held
         FROM processes p WHERE p.stopped_at IS NULL ORDER BY p.started_at DESC, p.id",
        &[],
    )
    .await?;
    decode(&rows, common::process_row)
}

pub(super) async fn record_event<B: Backend + Rows>(store: &B, event: &NewEvent) -> Result<()> {
    let event = common::storable_event(event);
    let mut tx = store.write_tx().await?;
    B::insert_events(&mut tx, std::slice::from_ref(&*event)).await?;
    store.commit(tx, false).await
}

pub(super) async fn prune<B: Backend + Rows>(store: &B, before: Millis) -> Result<PruneCounts> {
    let mut counts = PruneCounts::default();
    // Small batches, so that engines are never locked out for long.
    loop {
        let mut tx = store.write_tx().await?;
        // The batch is locked (PostgreSQL) while its judgements are taken
        // out of the gate tallies and its rows deleted: no retry can make
        // one of its items active in between.
        let ids = B::Db::rows(
            &mut tx,
            &format!(
                "SELECT i.id FROM items i WHERE i.state IN ('done', 'failed', 'cancelled') AND i.finished_at < $1
                 ORDER BY i.id LIMIT $2{}",
                B::LOCK_ITEM
            ),
            &[before.into(), (common::PRUNE_BATCH as i64).into()],
        )
        .await?
        .iter()
        .map(|r| r.int("id"))
        .collect::<Result<Vec<ItemId>>>()?;
        if !ids.is_empty() {
            tallies::forget_items::<B>(&mut tx, &ids).await?;
            // Numbers the store read, as in `forget_items`.
            let list = ids
                .iter()
                .map(ItemId::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            B::Db::execute(
                &mut tx,
                &format!("DELETE FROM items WHERE id IN ({list})"),
                &[],
            )
            .await?;
        }
        store.commit(tx, false).await?;
        let n = ids.len() as u64;
        counts.items += n;
        counts.item_ids.extend(ids);
        if n < common::PRUNE_BATCH {
            break;
        }
    }
    let mut tx = store.write_tx().await?;
    counts.events = B::Db::execute(
        &mut tx,
        "DELETE FROM events WHERE at < $1",
        &[before.into()],
    )
    .await?;
    B::Db::execute(
        &mut tx,
        "DELETE FROM processes WHERE stopped_at < $1",
        &[before.into()],
    )
    .await?;
    if counts.items > 0 || counts.events > 0 {
        B::insert_events(&mut tx, &[common::pruned(&counts)]).await?;
    }
    store.commit(tx, false).await?;
    Ok(counts)
}
