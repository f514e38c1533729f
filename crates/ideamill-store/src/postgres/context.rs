//! What a stage reads before it runs, for many jobs in one query
//! (gathered by `crate::contexts`).

use ideamill_core::ItemId;
use sqlx::postgres::PgPool;

use super::PostgresStore;
use crate::common::{self, ITEM_COLUMNS};
use crate::contexts::{ContextReader, ReadMany};
use crate::*;

impl PostgresStore {
    pub(super) async fn item_context(&self, item: ItemId) -> Result<ItemContext> {
        self.contexts
            .read(item, contexts_of(&self.pool, &[item]))
            .await
    }
}

/// Context reads of `pool`, gathered.
pub(super) fn reader(pool: &PgPool) -> ContextReader {
    let pool = pool.clone();
    let read: ReadMany = Box::new(move |ids| {
        let pool = pool.clone();
        Box::pin(async move { contexts_of(&pool, &ids).await })
    });
    ContextReader::start(read)
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
    common::item_contexts(&rows)
}
