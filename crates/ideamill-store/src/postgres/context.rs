//! What a stage reads before it runs, for many jobs in one query
//! (gathered by `crate::contexts`).

use std::sync::LazyLock;

use ideamill_core::ItemId;
use sqlx::postgres::PgPool;

use super::PostgresStore;
use crate::common::{self, RowExt};
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
    static READ: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} AS context FROM items WHERE id = ANY($1)",
            context_json("items")
        )
    });
    let rows = sqlx::query(&READ).bind(items).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            let context = common::item_context_json(&r.text("context")?)?;
            Ok((context.item.id, context))
        })
        .collect()
}

/// An expression for the context of the item row `item` names, as one JSON
/// object in text ([`common::item_context_json`]): its columns, its latest
/// output per stage and its feedback, oldest first. One expression, so that
/// a claim can read it too.
pub(super) fn context_json(item: &str) -> String {
    format!(
        "json_build_object('id', {item}.id, 'text', {item}.text, 'metadata', {item}.metadata,
            'state', {item}.state, 'stage', {item}.stage, 'round', {item}.round,
            'last_error', {item}.last_error, 'failure_class', {item}.failure_class,
            'created_at', {item}.created_at, 'updated_at', {item}.updated_at,
            'finished_at', {item}.finished_at, 'trace_id', {item}.trace_id,
            'outputs', (
                SELECT COALESCE(json_agg(json_build_object('stage', o.stage, 'round', o.round, 'job_id', o.job_id,
                                                           'output', o.output, 'created_at', o.created_at)), '[]')
                FROM outputs o
                WHERE o.item_id = {item}.id
                  AND o.id = (SELECT MAX(id) FROM outputs o2 WHERE o2.item_id = o.item_id AND o2.stage = o.stage)),
            'feedback', (
                SELECT COALESCE(json_agg(json_build_object('stage', f.stage, 'round', f.round, 'feedback', f.feedback,
                                                           'created_at', f.created_at, 'round_hash', f.round_hash)
                                         ORDER BY f.id), '[]')
                FROM feedback f WHERE f.item_id = {item}.id))::text"
    )
}
