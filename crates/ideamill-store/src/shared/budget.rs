//! Budget reservations, written once: a model call's worst case is checked
//! against the caps and reserved in one transaction that concurrent callers
//! take one at a time, so that no cap is passed by more than one call.

use super::{Backend, Sql, one};
use crate::common::RowExt;
use crate::*;

/// Reservations keep their cost in billionths of a dollar, rounded up, so
/// that every column the store binds is an integer or text.
const NANO: f64 = 1e9;

pub(super) async fn reserve<B: Backend>(
    store: &B,
    r: &Reservation,
    caps: &dyn Caps,
) -> Result<(bool, Spend)> {
    let mut tx = store.write_tx().await?;
    if let Some(lock) = B::LOCK_BUDGET {
        B::Db::execute(&mut tx, lock, &[]).await?;
    }
    // An earlier attempt of the same job (given back at shutdown, or whose
    // finish was lost) no longer runs: its reservation goes, and so do
    // expired ones (left by processes that died), which count no more.
    B::Db::execute(
        &mut tx,
        "DELETE FROM budget_reservations WHERE job_id = $1 OR expires_at <= $2",
        &[r.job_id.into(), r.now.into()],
    )
    .await?;
    // One statement, so that one snapshot sees each call either reserved or
    // recorded (a finish swaps one for the other in one transaction), even
    // where each statement sees what committed before it (PostgreSQL).
    let row = one::<B::Db>(
        &mut tx,
        "SELECT
           (SELECT CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) FROM attempts
             WHERE prompt_tokens IS NOT NULL AND item_id = $1) AS item_pt,
           (SELECT CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) FROM attempts
             WHERE prompt_tokens IS NOT NULL AND item_id = $1) AS item_ct,
           (SELECT CAST(COALESCE(SUM(cost), 0.0) AS DOUBLE PRECISION) FROM attempts
             WHERE prompt_tokens IS NOT NULL AND item_id = $1) AS item_cost,
           (SELECT CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) FROM attempts
             WHERE prompt_tokens IS NOT NULL AND finished_at >= $2) AS day_pt,
           (SELECT CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) FROM attempts
             WHERE prompt_tokens IS NOT NULL AND finished_at >= $2) AS day_ct,
           (SELECT CAST(COALESCE(SUM(cost), 0.0) AS DOUBLE PRECISION) FROM attempts
             WHERE prompt_tokens IS NOT NULL AND finished_at >= $2) AS day_cost,
           (SELECT CAST(COALESCE(SUM(tokens), 0) AS BIGINT) FROM budget_reservations
             WHERE item_id = $1 AND expires_at > $3) AS item_rt,
           (SELECT CAST(COALESCE(SUM(nano_usd), 0) AS BIGINT) FROM budget_reservations
             WHERE item_id = $1 AND expires_at > $3) AS item_rn,
           (SELECT CAST(COALESCE(SUM(tokens), 0) AS BIGINT) FROM budget_reservations
             WHERE expires_at > $3) AS day_rt,
           (SELECT CAST(COALESCE(SUM(nano_usd), 0) AS BIGINT) FROM budget_reservations
             WHERE expires_at > $3) AS day_rn",
        &[r.item_id.into(), r.day_start.into(), r.now.into()],
    )
    .await?;
    let totals = |p: &str| -> Result<UsageTotals> {
        Ok(UsageTotals {
            prompt_tokens: row.count(&format!("{p}_pt"))? + row.count(&format!("{p}_rt"))?,
            completion_tokens: row.count(&format!("{p}_ct"))?,
            cost: row.real(&format!("{p}_cost"))? + row.count(&format!("{p}_rn"))? as f64 / NANO,
        })
    };
    let spend = Spend {
        item: totals("item")?,
        day: totals("day")?,
    };
    if !caps.admit(&spend, r) {
        tx.rollback().await?;
        return Ok((false, spend));
    }
    let tokens = i64::try_from(r.tokens).unwrap_or(i64::MAX);
    let nano_usd = (r.cost.max(0.0) * NANO).ceil().min(i64::MAX as f64) as i64;
    B::Db::execute(
        &mut tx,
        "INSERT INTO budget_reservations (job_id, item_id, tokens, nano_usd, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            r.job_id.into(),
            r.item_id.into(),
            tokens.into(),
            nano_usd.into(),
            r.expires_at.into(),
        ],
    )
    .await?;
    store.commit(tx, false).await?;
    Ok((true, spend))
}
