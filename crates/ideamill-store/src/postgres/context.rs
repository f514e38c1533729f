//! What a stage reads before it runs: jobs start in bursts (a claim hands
//! out dozens), so their context reads share one query, a round trip for the
//! burst instead of one per job.

use ideamill_core::ItemId;
use sqlx::postgres::PgPool;

use super::PostgresStore;
use crate::common::{self, ITEM_COLUMNS, RowExt};
use crate::*;

pub(super) type ContextRequest = (ItemId, tokio::sync::oneshot::Sender<Result<ItemContext>>);

/// Contexts read in one query at most.
const CONTEXT_BATCH: usize = 256;

impl PostgresStore {
    pub(super) async fn item_context(&self, item: ItemId) -> Result<ItemContext> {
        if let Some(batcher) = &self.contexts {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if batcher.send((item, reply)).is_ok()
                && let Ok(context) = answer.await
            {
                return context;
            }
        }
        // No batcher (its runtime is gone): read it alone.
        let mut found = contexts_of(&self.pool, &[item]).await?;
        found.remove(&item).ok_or(StoreError::NoSuchItem(item))
    }
}

/// The contexts of several items, in one statement.
async fn contexts_of(
    pool: &PgPool,
    items: &[ItemId],
) -> Result<std::collections::HashMap<ItemId, ItemContext>> {
    let rows = sqlx::query(&format!(
        "SELECT {ITEM_COLUMNS},
            (SELECT COALESCE(json_agg(json_build_object('stage', o.stage, 'round', o.round, 'job_id', o.job_id,
                                                       'output', o.output, 'created_at', o.created_at)), '[]')::text
             FROM outputs o
             WHERE o.item_id = items.id
               AND o.id = (SELECT MAX(id) FROM outputs o2 WHERE o2.item_id = o.item_id AND o2.stage = o.stage)
            ) AS outputs_json,
            (SELECT COALESCE(json_agg(json_build_object('stage', f.stage, 'round', f.round, 'feedback', f.feedback,
                                                       'created_at', f.created_at,
                                                       'round_hash', f.round_hash) ORDER BY f.id), '[]')::text
             FROM feedback f WHERE f.item_id = items.id
            ) AS feedback_json
         FROM items WHERE id = ANY($1)"
    ))
    .bind(items)
    .fetch_all(pool)
    .await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let item = common::item_row(row)?;
        let id = item.id;
        let outputs = row.text("outputs_json")?;
        let feedback = row.text("feedback_json")?;
        found.insert(
            id,
            ItemContext {
                item,
                outputs: serde_json::from_str(&outputs)
                    .map_err(|e| StoreError::Corrupt(format!("outputs of item {id}: {e}")))?,
                feedback: serde_json::from_str(&feedback)
                    .map_err(|e| StoreError::Corrupt(format!("feedback of item {id}: {e}")))?,
                traceparent: None,
            },
        );
    }
    Ok(found)
}

/// Answer context reads: whatever has piled up while the last query ran
/// goes into the next one.
pub(super) async fn read_contexts(
    pool: PgPool,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ContextRequest>,
) {
    let mut batch: Vec<ContextRequest> = Vec::new();
    while let Some(first) = requests.recv().await {
        batch.push(first);
        while batch.len() < CONTEXT_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut ids: Vec<ItemId> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        match contexts_of(&pool, &ids).await {
            Ok(found) => {
                // Cloned: the same item may be asked for twice in a batch.
                for (id, reply) in batch.drain(..) {
                    let _ = reply.send(found.get(&id).cloned().ok_or(StoreError::NoSuchItem(id)));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Unsupported(format!(
                        "cannot read the item's context: {message}"
                    ))));
                }
            }
        }
    }
}
