//! Processes, events and pruning, written once.

use ideamill_core::{ItemId, Millis};

use super::{Arg, Backend, Rows, Sql, Tx, id_list, items::decode, tallies};
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
    let finished = "i.state IN ('done', 'failed', 'cancelled') AND i.finished_at < $1";
    // Small batches, so that engines are never locked out for long.
    loop {
        let mut tx = store.write_tx().await?;
        let read_ids = async |tx: &mut Tx<B::Db>, sql: &str, args: &[Arg<'_>]| {
            B::Db::rows(tx, sql, args)
                .await?
                .iter()
                .map(|r| r.int("id"))
                .collect::<Result<Vec<ItemId>>>()
        };
        let mut ids = read_ids(
            &mut tx,
            &format!("SELECT i.id FROM items i WHERE {finished} ORDER BY i.id LIMIT $2"),
            &[before.into(), (common::PRUNE_BATCH as i64).into()],
        )
        .await?;
        // A full batch means there may be more, whichever of it is kept.
        let full = ids.len() as u64 == common::PRUNE_BATCH;
        if !ids.is_empty() && !B::LOCK_ITEM.is_empty() {
            // PostgreSQL: the batch's jobs are locked before its items, the
            // order a finish takes (its fence, then the item's row and the
            // foreign keys of what it inserts), else a cancelled item's late
            // finish and its prune would deadlock. The items are then read
            // again under their locks: a retry may have made one active
            // meanwhile, and no retry can between that read and the delete.
            let list = id_list(&ids);
            B::Db::rows(
                &mut tx,
                &format!("SELECT id FROM jobs WHERE item_id IN ({list}) ORDER BY id FOR UPDATE"),
                &[],
            )
            .await?;
            ids = read_ids(
                &mut tx,
                &format!(
                    "SELECT i.id FROM items i WHERE i.id IN ({list}) AND {finished} ORDER BY i.id{}",
                    B::LOCK_ITEM
                ),
                &[before.into()],
            )
            .await?;
        }
        if !ids.is_empty() {
            tallies::forget_items::<B>(&mut tx, &ids).await?;
            B::Db::execute(
                &mut tx,
                &format!("DELETE FROM items WHERE id IN ({})", id_list(&ids)),
                &[],
            )
            .await?;
        }
        store.commit(tx, false).await?;
        counts.items += ids.len() as u64;
        counts.item_ids.extend(ids);
        if !full {
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
