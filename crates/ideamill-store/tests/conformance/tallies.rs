//! The gate tallies kept as counters: after every kind of history they
//! answer what the full scan of finished jobs answers (`gate_tallies_scanned`,
//! the query they replace), through finishes one by one and in batches,
//! retries, cancels, a PostgreSQL heartbeat's fold, a prune, a store copy
//! either way, and the migration that counts an existing history.

use ideamill_core::machine::Transition;
use ideamill_core::{AttemptOutcome, FailureClass, Millis, Usage};
use ideamill_store::{ClaimedJob, GateTally, Store};

use crate::support::*;

/// The gate sets the tests read: both gates, one, and a stage that is no
/// gate (every stage is counted; the config says which are gates).
fn gate_sets() -> [Vec<String>; 3] {
    [
        vec!["qa".into(), "review".into()],
        vec!["review".into()],
        vec!["implement".into()],
    ]
}

/// The counters answer as the full scan does, for every gate set.
async fn assert_counted(s: &dyn Store, why: &str) -> Vec<GateTally> {
    for gates in gate_sets() {
        assert_eq!(
            s.gate_tallies(&gates).await.unwrap(),
            s.gate_tallies_scanned(&gates).await.unwrap(),
            "{why}: the counters of {gates:?}"
        );
    }
    s.gate_tallies(&gate_sets()[0]).await.unwrap()
}

fn usage(model: &str) -> Usage {
    Usage {
        provider: "local".into(),
        model: model.into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost: 0.0,
        counted: false,
        unknown: false,
    }
}

/// Finish `job` with `t`, its attempt calling `model`.
async fn end(s: &dyn Store, job: &ClaimedJob, at: Millis, model: Option<&str>, t: Transition) {
    let mut f = finish(job, "w1", at, t);
    f.usage = model.map(usage);
    finish_ok(s, f).await;
}

/// Claim the one runnable job of `stage` and finish it with `t`.
async fn step(s: &dyn Store, stage: &str, at: Millis, model: Option<&str>, t: Transition) {
    let job = claim_one(s, stage, "w1", at).await;
    end(s, &job, at + 1, model, t).await;
}

fn to(stage: &str, round: u32) -> Option<ideamill_core::machine::NextJob> {
    Some(next(stage, round, 3))
}

fn fail(reason: &str, feedback: Option<&str>) -> Transition {
    Transition::FailItem {
        reason: reason.into(),
        feedback: feedback.map(Into::into),
        class: FailureClass::Quality,
    }
}

fn back(round: u32) -> Transition {
    Transition::SendBack {
        feedback: "tests fail".into(),
        to: next("implement", round, 3),
    }
}

/// Items through `implement` (a model call), the gate `qa` and the gate
/// `review`, ended every way a job can end, each item walked alone from
/// `at`; every item ends done, failed or cancelled.
async fn mixed_history(s: &dyn Store, at: Millis) {
    let implement = next("implement", 1, 3);
    // Passes both gates in round 1.
    add_one(s, "a", &implement, at).await;
    step(s, "implement", at, Some("m1"), advance("code", to("qa", 1))).await;
    step(s, "qa", at + 2, None, advance("ok", to("review", 1))).await;
    step(s, "review", at + 4, None, advance("ok", None)).await;
    // Rejected by qa in round 1, passes it in round 2 after another model,
    // then review ends the loop as no_progress.
    add_one(s, "b", &implement, at + 10).await;
    step(
        s,
        "implement",
        at + 10,
        Some("m1"),
        advance("code", to("qa", 1)),
    )
    .await;
    step(s, "qa", at + 12, None, back(2)).await;
    step(
        s,
        "implement",
        at + 14,
        Some("m2"),
        advance("code", to("qa", 2)),
    )
    .await;
    step(s, "qa", at + 16, None, advance("ok", to("review", 2))).await;
    let stuck = fail("no_progress: round 2 changed nothing", Some("same"));
    step(s, "review", at + 18, None, stuck).await;
    // qa's first try errs, its second passes; the gate's own model calls
    // are not the work it judged. Review rejects in its last round.
    add_one(s, "c", &implement, at + 20).await;
    step(s, "implement", at + 20, None, advance("code", to("qa", 1))).await;
    let retry = Transition::RetryAt {
        run_at: at + 23,
        error: "exit status 1".into(),
    };
    step(s, "qa", at + 22, Some("judge"), retry).await;
    step(
        s,
        "qa",
        at + 24,
        Some("judge"),
        advance("ok", to("review", 1)),
    )
    .await;
    let last = fail("rejected by gate `review` in round 1 of 1", Some("bad"));
    step(s, "review", at + 26, None, last).await;
    // The gate itself breaks (no feedback: no judgement); run again by
    // hand, the item passes.
    let d = add_one(s, "d", &implement, at + 30).await;
    step(
        s,
        "implement",
        at + 30,
        Some("m1"),
        advance("code", to("qa", 1)),
    )
    .await;
    step(s, "qa", at + 32, None, fail("no such program", None)).await;
    s.retry_item(d, &implement, at + 33).await.unwrap();
    step(
        s,
        "implement",
        at + 34,
        Some("m2"),
        advance("code", to("qa", 1)),
    )
    .await;
    step(s, "qa", at + 36, None, advance("ok", to("review", 1))).await;
    step(s, "review", at + 38, None, advance("ok", None)).await;
    // Cancelled while qa judges: its pass is not recorded, nor counted.
    let e = add_one(s, "e", &implement, at + 40).await;
    step(
        s,
        "implement",
        at + 40,
        Some("m3"),
        advance("code", to("qa", 1)),
    )
    .await;
    let judging = claim_one(s, "qa", "w1", at + 42).await;
    assert!(s.cancel_item(e, at + 43).await.unwrap().was_running);
    end(s, &judging, at + 44, None, advance("ok", to("review", 1))).await;
    // Two items judged by one batch of finishes: one passes, one fails in
    // its last round.
    let ids = s
        .add_items(&new_items(&["f", "g"]), &implement, at + 50)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    for (n, model) in ["m1", "m2"].into_iter().enumerate() {
        let at = at + 50 + 2 * n as Millis;
        step(
            s,
            "implement",
            at,
            Some(model),
            advance("code", to("qa", 1)),
        )
        .await;
    }
    let jobs = s
        .claim("qa", 2, "w1", at + 60, at + 60 + LEASE)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    let mut batch = vec![
        finish(&jobs[0], "w1", at + 61, advance("ok", None)),
        finish(
            &jobs[1],
            "w1",
            at + 61,
            fail("rejected in round 1 of 1", Some("no")),
        ),
    ];
    batch[1].outcome = AttemptOutcome::Rejected;
    for r in s.finish(&batch).await.unwrap() {
        r.unwrap();
    }
}

pub async fn gate_tally_counters_equal_the_full_scan(s: &dyn Store) {
    assert_eq!(assert_counted(s, "an empty store").await, []);
    mixed_history(s, T0).await;
    let tallies = assert_counted(s, "after a mixed history").await;
    // What the history above holds, so that the equality is not of two
    // empty answers: qa passed a (m1), b in round 2 (m2), c (no model),
    // d (m2), f (m1); rejected b in round 1 without ending it, g in its
    // last round (m2); review passed a and d, ended b and c.
    let judged: u64 = tallies.iter().map(|t| t.items).sum();
    assert_eq!(judged, 6 + 4, "{tallies:#?}");
    // A heartbeat folds PostgreSQL's deltas into the counters: the same
    // answer.
    s.heartbeat("w1", T0 + 1_000, T0 + 1_000 + LEASE, &[])
        .await
        .unwrap();
    assert_counted(s, "after a heartbeat").await;
    // More history on top of the folded counters.
    mixed_history(s, T0 + 2_000).await;
    let twice = assert_counted(s, "after a second history").await;
    let judged_twice: u64 = twice.iter().map(|t| t.items).sum();
    assert_eq!(judged_twice, 2 * judged);
}

pub async fn gate_tallies_follow_prune_copy_and_the_migration(b: &dyn Backend) {
    let s = b.open().await;
    mixed_history(&*s, T0).await;
    s.heartbeat("w1", T0 + 1_000, T0 + 1_000 + LEASE, &[])
        .await
        .unwrap();
    mixed_history(&*s, T0 + 100_000).await;
    let whole = assert_counted(&*s, "before the prune").await;

    // The first history goes: its judgements with it.
    let pruned = s.prune(T0 + 50_000).await.unwrap();
    assert_eq!(pruned.items, 7, "every item of the first history");
    let kept = assert_counted(&*s, "after the prune").await;
    let total = |t: &[GateTally]| t.iter().map(|t| t.items).sum::<u64>();
    assert_eq!(2 * total(&kept), total(&whole));
    // Nothing left to prune: nothing changes.
    assert_eq!(s.prune(T0 + 50_000).await.unwrap().items, 0);
    assert_eq!(assert_counted(&*s, "after an empty prune").await, kept);
    s.close().await;

    // Into the other kind of store, and back over what this one holds.
    let (other, t) = copy_into_other_kind(b).await;
    assert_eq!(assert_counted(&*t, "in the copy").await, kept);
    mixed_history(&*t, T0 + 200_000).await;
    let grown = assert_counted(&*t, "after finishes in the copy").await;
    t.close().await;
    ideamill_store::transfer::copy(&other.url(), &b.url(), true)
        .await
        .unwrap();
    let s = b.open().await;
    assert_eq!(assert_counted(&*s, "copied back").await, grown);
    s.close().await;

    // A store from before the counters: the migration counts its history.
    b.undo_gate_tallies().await;
    let s = b.open().await;
    assert_eq!(assert_counted(&*s, "after the migration").await, grown);
    s.close().await;
}
