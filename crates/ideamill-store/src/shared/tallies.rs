//! The QA lift's tallies, kept as counters (`gate_tallies`, migrations
//! `sqlite/0009` and `postgres/0008`): what a job counts for, written once,
//! for the finish that judges it, the prune that deletes it, the copy that
//! counts a store again, and the read.
//!
//! A job counts when it ended judged: it succeeded (`passed`), or it failed
//! with a rejection kept (feedback): in its last round (`failed`), or early
//! as `no_progress` (its reason begins so). A failure without feedback (the
//! gate itself broke) is no judgement. The model is the item's newest model
//! call before the job, through the `attempts_item` index. Every stage is
//! counted: which stages are gates is the config's to say when it reads.
//!
//! Nothing changes a counted job once its finish committed (a retry adds
//! jobs, a cancel touches only unfinished ones), so the counters equal the
//! full scan over `jobs` they replace; `conformance::dashboard` checks it
//! after finishes, retries, prunes and copies. One difference is possible
//! and intended: the model is the one the item had when it was judged. A
//! model call recorded later for an earlier job (a cancelled job finishing
//! after its item was retried and judged again) would change the full
//! scan's answer after the fact, never the counters'.

use ideamill_core::ItemId;

use super::{Arg, Backend, Sql, Tx};
use crate::common::RowExt;
use crate::*;

/// The statement that adds (`sign` 1) or takes away (-1) the judgements of
/// the jobs `j` a condition selects, into `into` (the counters, or a
/// database's deltas) with `merge` after it (an upsert's conflict clause,
/// or nothing): everything before the condition, and everything after it.
pub(crate) fn count(into: &str, sign: i64, merge: &str) -> (String, String) {
    (
        format!(
            "INSERT INTO {into} (stage, round, model, outcome, n)
             SELECT stage, round, model, outcome, {sign} * COUNT(*)
             FROM ({JUDGED}
                     AND ("
        ),
        format!(
            ")) AS judged
             GROUP BY stage, round, model, outcome
             ORDER BY stage, round, outcome, model{merge}"
        ),
    )
}

/// Every judged job `j`, with its stage, round, model and outcome; a
/// condition on `j` may follow (`AND …`). A gate job that succeeded passed
/// the item in its round; one that failed with a rejection kept (feedback)
/// ended the loop there: in its last round, or early as `no_progress`. A
/// failure without feedback (the gate itself broke) is no judgement. The
/// model is the item's newest model call before the job, through the
/// `attempts_item` index. The migrations that count existing history hold
/// their own copy: a migration never changes.
pub(crate) const JUDGED: &str = "SELECT j.stage AS stage, j.round AS round,
                          (SELECT m.model FROM attempts m
                            WHERE m.item_id = j.item_id AND m.job_id < j.id AND m.model IS NOT NULL
                            ORDER BY m.id DESC LIMIT 1) AS model,
                          CASE WHEN j.state = 'succeeded' THEN 'passed'
                               WHEN SUBSTR(j.last_error, 1, 11) = 'no_progress' THEN 'no_progress'
                               ELSE 'failed' END AS outcome
                   FROM jobs j
                   WHERE (j.state = 'succeeded'
                          OR (j.state = 'failed' AND EXISTS (SELECT 1 FROM feedback f WHERE f.job_id = j.id)))";

/// Adds a tally to an existing row of the counters (`gate_tallies_key`,
/// one row per key, a NULL model included); the same text on both
/// databases.
pub(crate) const MERGE: &str = "
             ON CONFLICT (stage, round, outcome, (COALESCE(model, '')), ((model IS NULL)))
             DO UPDATE SET n = gate_tallies.n + excluded.n";

/// Count every judged job again, from nothing: what a store copy does to
/// the store it wrote (the counters are not copied, they are derived).
pub(crate) fn recount_sql() -> String {
    let (head, tail) = count("gate_tallies", 1, "");
    format!("DELETE FROM gate_tallies; {head}true{tail};")
}

/// Take away the judgements of the jobs of items about to be deleted, in
/// the transaction that deletes them.
pub(super) async fn forget_items<B: Backend>(tx: &mut Tx<B::Db>, items: &[ItemId]) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let ids = super::id_list(items);
    let (head, tail) = count(B::TALLIES_INTO, -1, B::TALLIES_MERGE);
    B::Db::execute(tx, &format!("{head}j.item_id IN ({ids}){tail}"), &[]).await?;
    Ok(())
}

pub(super) async fn gate_tallies<B: Backend>(
    store: &B,
    gates: &[String],
) -> Result<Vec<GateTally>> {
    // A key whose jobs were all pruned stays, at 0: the full scan would
    // not list it.
    read_tallies(store, gates, |stages| {
        format!(
            "SELECT stage, round, model, outcome, CAST(SUM(n) AS BIGINT) AS n
             FROM {} AS t
             WHERE stage IN ({stages})
             GROUP BY stage, round, model, outcome
             HAVING SUM(n) > 0",
            B::TALLIES
        )
    })
    .await
}

/// The tallies of `gates`, by the query `sql` makes of their placeholders
/// (`$1, $2, …`), in Rust's order whatever the database's collation.
pub(super) async fn read_tallies<B: Backend>(
    store: &B,
    gates: &[String],
    sql: impl FnOnce(&str) -> String,
) -> Result<Vec<GateTally>> {
    if gates.is_empty() {
        return Ok(Vec::new());
    }
    let stages = (1..=gates.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let args: Vec<Arg<'_>> = gates.iter().map(Arg::from).collect();
    let mut conn = store.read().await?;
    let rows = B::Db::rows(&mut conn, &sql(&stages), &args).await?;
    let mut tallies = super::items::decode(&rows, tally_row)?;
    tallies.sort();
    Ok(tallies)
}

/// A row of `stage, round, model, outcome, n`.
fn tally_row<R: RowExt>(r: &R) -> Result<GateTally> {
    Ok(GateTally {
        stage: r.text("stage")?,
        model: r.opt_text("model")?,
        round: r.u32("round")?,
        outcome: match r.text("outcome")?.as_str() {
            "passed" => GateOutcome::Passed,
            "no_progress" => GateOutcome::NoProgress,
            _ => GateOutcome::Failed,
        },
        items: r.count("n")?,
    })
}
