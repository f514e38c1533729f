//! The queue's counts per stage (`Store::queue_depth`, read by every beat,
//! `status` and `/metrics`): kept as counters on SQLite, counted on
//! PostgreSQL. Either way, after every move a job makes (added, claimed,
//! advanced, sent back, retried later, paused and resumed, failed,
//! cancelled, reaped, released, retried from the start, pruned, copied into
//! the other kind of store, counted by the migration that adds the
//! counters), they say where the jobs are.

use ideamill_core::machine::Transition;
use ideamill_core::{FailureClass, Millis};
use ideamill_store::Store;

use crate::support::*;

/// `(stage, queued, scheduled, running)` of every stage that has any.
async fn depth(s: &dyn Store, now: Millis) -> Vec<(String, u64, u64, u64)> {
    s.queue_depth(now)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.queued + c.scheduled + c.running > 0)
        .map(|c| (c.stage, c.queued, c.scheduled, c.running))
        .collect()
}

fn row(stage: &str, queued: u64, scheduled: u64, running: u64) -> (String, u64, u64, u64) {
    (stage.to_string(), queued, scheduled, running)
}

/// The status snapshot counts the same as the beat.
async fn assert_depth(s: &dyn Store, now: Millis, expected: &[(String, u64, u64, u64)], why: &str) {
    assert_eq!(depth(s, now).await, expected, "{why}: queue_depth");
    let status: Vec<_> = s
        .status(now)
        .await
        .unwrap()
        .stages
        .into_iter()
        .filter(|c| c.queued + c.scheduled + c.running > 0)
        .map(|c| (c.stage, c.queued, c.scheduled, c.running))
        .collect();
    assert_eq!(status, expected, "{why}: status");
}

pub async fn queue_counts_follow_every_move_of_a_job(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    let ids = s
        .add_items(&new_items(&["a", "b", "c", "d", "e", "f"]), &draft, T0)
        .await
        .unwrap();
    assert_depth(s, T0, &[row("draft", 6, 0, 0)], "added").await;

    let a = claim_one(s, "draft", "w1", T0).await;
    let b = claim_one(s, "draft", "w1", T0).await;
    assert_depth(s, T0, &[row("draft", 4, 0, 2)], "claimed").await;

    finish_ok(
        s,
        finish(&a, "w1", T0 + 1, advance("outline", Some(next("qa", 1, 3)))),
    )
    .await;
    let retry_at = T0 + 60_000;
    let retried = Transition::RetryAt {
        run_at: retry_at,
        error: "flaky".into(),
    };
    finish_ok(s, finish(&b, "w1", T0 + 1, retried)).await;
    assert_depth(
        s,
        T0 + 2,
        &[row("draft", 4, 1, 0), row("qa", 1, 0, 0)],
        "advanced one, retried one later",
    )
    .await;
    assert_depth(
        s,
        retry_at,
        &[row("draft", 5, 0, 0), row("qa", 1, 0, 0)],
        "the later one's time came",
    )
    .await;
    // The `--until-idle` check reads the same counts, as of its horizon.
    let p = s.pending(T0 + 2).await.unwrap();
    assert_eq!(
        (p.soon, p.running, p.later, p.next_run_at),
        (5, 0, 1, Some(T0))
    );
    let p = s.pending(retry_at).await.unwrap();
    assert_eq!((p.soon, p.running, p.later), (6, 0, 0));

    // The gate sends its item back: a new draft job, round 2.
    let q = claim_one(s, "qa", "w1", T0 + 3).await;
    let back = Transition::SendBack {
        feedback: "more tests".into(),
        to: next("draft", 2, 3),
    };
    finish_ok(s, finish(&q, "w1", T0 + 4, back)).await;
    assert_depth(s, T0 + 5, &[row("draft", 5, 1, 0)], "sent back").await;

    // Paused jobs are neither queued nor running; resumed, they are queued.
    let p = claim_one(s, "draft", "w1", T0 + 5).await;
    let paused = Transition::Pause {
        reason: "budget".into(),
    };
    finish_ok(s, finish(&p, "w1", T0 + 6, paused)).await;
    assert_depth(s, T0 + 7, &[row("draft", 4, 1, 0)], "paused").await;
    assert_eq!(s.resume_jobs(&[p.id], T0 + 7).await.unwrap(), 1);
    assert_depth(s, T0 + 8, &[row("draft", 5, 1, 0)], "resumed").await;

    // A failed item and a cancelled one take their jobs out.
    let f = claim_one(s, "draft", "w1", T0 + 8).await;
    let failed = Transition::FailItem {
        reason: "impossible".into(),
        feedback: None,
        class: FailureClass::Quality,
    };
    finish_ok(s, finish(&f, "w1", T0 + 9, failed)).await;
    assert_depth(s, T0 + 10, &[row("draft", 4, 1, 0)], "failed").await;
    let queued_item = ids
        .iter()
        .copied()
        .find(|id| *id != f.item_id && *id != p.item_id && *id != a.item_id && *id != b.item_id)
        .unwrap();
    s.cancel_item(queued_item, T0 + 10).await.unwrap();
    assert_depth(s, T0 + 11, &[row("draft", 3, 1, 0)], "cancelled").await;

    // A lease that expires is reaped back to the queue; a stopping worker
    // releases what it holds.
    claim_one(s, "draft", "w1", T0 + 11).await;
    claim_one(s, "draft", "w2", T0 + 11).await;
    assert_depth(s, T0 + 12, &[row("draft", 1, 1, 2)], "claimed by two").await;
    let reaped = s.reap_expired(T0 + 11 + LEASE + 1).await.unwrap();
    assert_eq!(reaped.len(), 2, "both leases expired");
    assert_depth(s, T0 + 12 + LEASE, &[row("draft", 3, 1, 0)], "reaped").await;
    claim_one(s, "draft", "w2", T0 + LEASE + 20).await;
    assert_eq!(s.release("w2", T0 + LEASE + 21).await.unwrap(), 1);
    assert_depth(s, T0 + LEASE + 22, &[row("draft", 3, 1, 0)], "released").await;

    // The failed item, retried, runs again from its first stage.
    s.retry_item(f.item_id, &draft, T0 + LEASE + 30)
        .await
        .unwrap();
    assert_depth(s, T0 + LEASE + 31, &[row("draft", 4, 1, 0)], "retried").await;

    // Everything to the end: nothing left to count; prune takes the
    // finished items away and leaves the counts at nothing.
    let end = retry_at + 1;
    while let Some(job) = s
        .claim("draft", 1, "w1", end, end + LEASE)
        .await
        .unwrap()
        .pop()
    {
        finish_ok(s, finish(&job, "w1", end, advance("done", None))).await;
    }
    assert_depth(s, end, &[], "every item finished").await;
    s.prune(end + 1).await.unwrap();
    assert_depth(s, end + 2, &[], "pruned").await;

    // The oldest runnable job: none while the only one waits for later.
    let oldest = |now| async move { s.status(now).await.unwrap().oldest_runnable_at };
    assert_eq!(oldest(end + 3).await, None, "an empty queue");
    s.add_items(&new_items(&["g"]), &draft, end + 3)
        .await
        .unwrap();
    s.add_items(&new_items(&["h"]), &next("qa", 1, 3), end + 4)
        .await
        .unwrap();
    assert_eq!(
        oldest(end + 5).await,
        Some(end + 3),
        "the older of two stages"
    );
    let g = claim_one(s, "draft", "w1", end + 5).await;
    let later = Transition::RetryAt {
        run_at: end + 100,
        error: "flaky".into(),
    };
    finish_ok(s, finish(&g, "w1", end + 6, later)).await;
    assert_eq!(oldest(end + 7).await, Some(end + 4), "the other stage's");
    let h = claim_one(s, "qa", "w1", end + 7).await;
    assert_eq!(oldest(end + 8).await, None, "only a job for later");
    assert_eq!(oldest(end + 100).await, Some(end + 100), "its time came");
    finish_ok(s, finish(&h, "w1", end + 101, advance("done", None))).await;
}

/// Counts survive `store copy` into the other kind of store, and back.
pub async fn queue_counts_survive_a_copy_either_way(b: &dyn Backend) {
    let s = b.open().await;
    let draft = next("draft", 1, 3);
    s.add_items(&new_items(&["a", "b", "c", "d"]), &draft, T0)
        .await
        .unwrap();
    let a = claim_one(&*s, "draft", "w1", T0).await;
    let later = Transition::RetryAt {
        run_at: T0 + 60_000,
        error: "flaky".into(),
    };
    finish_ok(&*s, finish(&a, "w1", T0 + 1, later)).await;
    let c = claim_one(&*s, "draft", "w1", T0 + 2).await;
    finish_ok(
        &*s,
        finish(&c, "w1", T0 + 3, advance("x", Some(next("qa", 1, 3)))),
    )
    .await;
    claim_one(&*s, "draft", "w1", T0 + 4).await;
    let expected = [row("draft", 1, 1, 1), row("qa", 1, 0, 0)];
    assert_depth(&*s, T0 + 5, &expected, "before the copy").await;
    s.close().await;

    let (other, t) = copy_into_other_kind(b).await;
    assert_depth(&*t, T0 + 5, &expected, "in the copy").await;
    // The copy's counters go on from there.
    claim_one(&*t, "qa", "w1", T0 + 6).await;
    assert_depth(
        &*t,
        T0 + 7,
        &[row("draft", 1, 1, 1), row("qa", 0, 0, 1)],
        "the copy, after a claim",
    )
    .await;
    t.close().await;

    let (_again, back) = copy_into_other_kind(&*other).await;
    assert_depth(
        &*back,
        T0 + 7,
        &[row("draft", 1, 1, 1), row("qa", 0, 0, 1)],
        "copied back",
    )
    .await;
    back.close().await;
}

/// The migration that adds the counters counts the jobs already there.
pub async fn queue_counts_migration_counts_the_jobs_there(b: &dyn Backend) {
    let s = b.open().await;
    s.add_items(&new_items(&["a", "b", "c"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    let a = claim_one(&*s, "draft", "w1", T0).await;
    finish_ok(
        &*s,
        finish(&a, "w1", T0 + 1, advance("x", Some(next("qa", 1, 3)))),
    )
    .await;
    claim_one(&*s, "draft", "w1", T0 + 2).await;
    let expected = [row("draft", 1, 0, 1), row("qa", 1, 0, 0)];
    assert_depth(&*s, T0 + 3, &expected, "before").await;
    s.close().await;
    b.undo_queued_counts().await;
    let s = b.open().await;
    assert_depth(&*s, T0 + 3, &expected, "counted by the migration").await;
    let q = claim_one(&*s, "qa", "w1", T0 + 4).await;
    finish_ok(&*s, finish(&q, "w1", T0 + 5, advance("y", None))).await;
    assert_depth(&*s, T0 + 6, &[row("draft", 1, 0, 1)], "and kept after").await;
    s.close().await;
}
