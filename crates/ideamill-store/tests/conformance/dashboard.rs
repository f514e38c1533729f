//! What the dashboard and the HTTP API read: text search over items, the
//! activity per time bucket behind the charts, and the change marker behind
//! live updates.

use ideamill_core::FailureClass;
use ideamill_core::ItemId;
use ideamill_core::machine::Transition;
use ideamill_store::{ActivityBucket, ItemFilter, NewEvent, StateFilter, Store};

use crate::support::*;

async fn search(s: &dyn Store, text: &str, filter: ItemFilter) -> Vec<ItemId> {
    let filter = ItemFilter {
        limit: if filter.limit == 0 { 100 } else { filter.limit },
        ..filter
    };
    s.search_items(&filter, text)
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect()
}

pub async fn search_items_matches_word_prefixes_with_filters_and_pages(s: &dyn Store) {
    let ids = s
        .add_items(
            &new_items(&[
                "a CLI that converts CSV to JSON",
                "CSV parser in Rust",
                "Converting json to YAML",
                "Ärger über Straßen",
                "unrelated idea",
            ]),
            &next("draft", 1, 3),
            T0,
        )
        .await
        .unwrap();
    let [cli, parser, yaml, umlaut, _] = ids[..] else {
        panic!("five ids: {ids:?}");
    };
    let all = ItemFilter::default;
    assert_eq!(search(s, "csv", all()).await, [parser, cli], "newest first");
    assert_eq!(search(s, "CSV", all()).await, [parser, cli], "without case");
    assert_eq!(
        search(s, "conv json", all()).await,
        [yaml, cli],
        "every word, as a prefix"
    );
    assert_eq!(search(s, "json yaml", all()).await, [yaml]);
    assert_eq!(search(s, "über", all()).await, [umlaut]);
    assert_eq!(
        search(s, "sv", all()).await,
        [] as [ItemId; 0],
        "a word's start only"
    );
    assert_eq!(search(s, "!!! ---", all()).await, [] as [ItemId; 0]);
    assert_eq!(search(s, "nothing-like-it", all()).await, [] as [ItemId; 0]);
    // Words an FTS query language would read as operators are plain words.
    assert_eq!(
        search(s, "\"csv\" OR NOT *", all()).await,
        [] as [ItemId; 0]
    );

    // Pages, newest first.
    let page = |before_id| ItemFilter {
        limit: 1,
        before_id,
        ..ItemFilter::default()
    };
    assert_eq!(search(s, "csv", page(None)).await, [parser]);
    assert_eq!(search(s, "csv", page(Some(parser))).await, [cli]);
    assert_eq!(search(s, "csv", page(Some(cli))).await, [] as [ItemId; 0]);

    // State and stage filters apply as in `list_items`.
    s.cancel_item(cli, T0 + 1).await.unwrap();
    let state = |state| ItemFilter {
        state: Some(state),
        ..ItemFilter::default()
    };
    assert_eq!(search(s, "csv", state(StateFilter::Cancelled)).await, [cli]);
    assert_eq!(search(s, "csv", state(StateFilter::Queued)).await, [parser]);
    let stage = |name: &str| ItemFilter {
        stage: Some(name.into()),
        ..ItemFilter::default()
    };
    assert_eq!(search(s, "csv", stage("draft")).await, [parser, cli]);
    assert_eq!(search(s, "csv", stage("other")).await, [] as [ItemId; 0]);

    // A pruned item leaves the index with its row.
    s.prune(T0 + 10).await.unwrap();
    assert_eq!(search(s, "csv", all()).await, [parser]);
    let summary = &s.search_items(&all(), "parser").await.unwrap()[0];
    assert_eq!(summary.text, "CSV parser in Rust");
    assert_eq!(summary.display_state, "queued");
}

pub async fn activity_counts_attempts_and_items_per_bucket(s: &dyn Store) {
    const MIN: i64 = 60_000;
    let draft = next("draft", 1, 3);
    let ids = s
        .add_items(&new_items(&["a", "b", "c"]), &draft, T0)
        .await
        .unwrap();
    let held = s.claim("draft", 3, "w1", T0, T0 + LEASE).await.unwrap();
    assert_eq!(held.len(), 3);
    // Bucket 0: a done. Bucket 1: b errs (retried). Bucket 2: c fails.
    finish_ok(s, finish(&held[0], "w1", T0 + 10, advance("ok", None))).await;
    let retry = Transition::RetryAt {
        run_at: T0 + MIN + 20,
        error: "exit status 1".into(),
    };
    finish_ok(s, finish(&held[1], "w1", T0 + MIN + 10, retry)).await;
    let fail = Transition::FailItem {
        reason: "no such program".into(),
        feedback: None,
        class: FailureClass::Quality,
    };
    finish_ok(s, finish(&held[2], "w1", T0 + 2 * MIN + 10, fail)).await;
    // Bucket 2 too: b's second attempt succeeds.
    let again = claim_one(s, "draft", "w1", T0 + 2 * MIN).await;
    assert_eq!(again.item_id, ids[1]);
    finish_ok(
        s,
        finish(&again, "w1", T0 + 2 * MIN + 30, advance("ok", None)),
    )
    .await;

    let buckets = s.activity(T0, MIN, T0 + 3 * MIN - 1).await.unwrap();
    let b = |start, attempts, failed_attempts, items_done, items_failed| ActivityBucket {
        start,
        attempts,
        failed_attempts,
        items_done,
        items_failed,
    };
    assert_eq!(
        buckets,
        [
            b(T0, 1, 0, 1, 0),
            b(T0 + MIN, 1, 1, 0, 0),
            b(T0 + 2 * MIN, 2, 1, 1, 1),
        ]
    );
    // A later window sees nothing, but has its buckets.
    let later = s.activity(T0 + 10 * MIN, MIN, T0 + 11 * MIN).await.unwrap();
    assert_eq!(later.len(), 2);
    assert!(later.iter().all(|b| b.attempts == 0 && b.items_done == 0));
}

pub async fn change_marker_moves_with_work(s: &dyn Store) {
    let empty = s.change_marker().await.unwrap();
    assert_eq!(empty, Default::default());
    let id = add_one(s, "an idea", &next("draft", 1, 3), T0).await;
    let added = s.change_marker().await.unwrap();
    assert_eq!((added.item, added.running), (id, 0));
    assert!(added.job > 0);
    let job = claim_one(s, "draft", "w1", T0).await;
    let claimed = s.change_marker().await.unwrap();
    assert_eq!(claimed.running, 1, "a claim changes the marker");
    finish_ok(s, finish(&job, "w1", T0 + 5, advance("ok", None))).await;
    let finished = s.change_marker().await.unwrap();
    assert_ne!(finished, claimed);
    assert!(finished.attempt > claimed.attempt);
    assert_eq!(finished.running, 0);
    s.record_event(&NewEvent {
        at: T0 + 6,
        kind: "process_started",
        item_id: None,
        job_id: None,
        process: Some("w1".into()),
        message: "started".into(),
    })
    .await
    .unwrap();
    assert!(s.change_marker().await.unwrap().event > finished.event);
    assert_eq!(
        s.change_marker().await.unwrap(),
        s.change_marker().await.unwrap()
    );
}

/// One `implement` attempt by `model` (a model call), then the item's `qa`
/// job is claimed and finished with `qa`'s transition and outcome.
async fn implement_then_qa(
    s: &dyn Store,
    at: ideamill_core::Millis,
    model: Option<&str>,
    round: u32,
    qa: Transition,
    qa_outcome: ideamill_core::AttemptOutcome,
) {
    let job = claim_one(s, "implement", "w1", at).await;
    assert_eq!(job.round, round);
    let mut f = finish(
        &job,
        "w1",
        at + 1,
        advance("code", Some(next("qa", round, 3))),
    );
    f.usage = model.map(|m| ideamill_core::Usage {
        provider: "local".into(),
        model: m.into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        cost: 0.0,
        counted: false,
        unknown: false,
    });
    finish_ok(s, f).await;
    let gate = claim_one(s, "qa", "w1", at + 2).await;
    let mut f = finish(&gate, "w1", at + 3, qa);
    f.outcome = qa_outcome;
    finish_ok(s, f).await;
}

pub async fn gate_tallies_count_each_judgement_by_round_and_model(s: &dyn Store) {
    use ideamill_core::AttemptOutcome::{Error, Rejected, Succeeded};
    use ideamill_store::{GateOutcome, GateTally, gate_lift};
    let gates = ["qa".to_string()];
    assert_eq!(s.gate_tallies(&gates).await.unwrap(), []);
    let implement = next("implement", 1, 3);
    let done = || advance("ok", None);
    let last = |reason: &str| Transition::FailItem {
        reason: reason.into(),
        feedback: Some("tests fail".into()),
        class: ideamill_core::FailureClass::Quality,
    };
    // a: passes at round 1 (model m1).
    add_one(s, "a", &implement, T0).await;
    implement_then_qa(s, T0, Some("m1"), 1, done(), Succeeded).await;
    // b: rejected at round 1, passes at round 2 after m2 worked on it.
    add_one(s, "b", &implement, T0 + 10).await;
    let back = Transition::SendBack {
        feedback: "tests fail".into(),
        to: next("implement", 2, 3),
    };
    implement_then_qa(s, T0 + 10, Some("m1"), 1, back, Rejected).await;
    implement_then_qa(s, T0 + 20, Some("m2"), 2, done(), Succeeded).await;
    // c: rejected in its last round (1); d: ended as no_progress.
    add_one(s, "c", &implement, T0 + 30).await;
    let fail = last("rejected by gate `qa` in round 1 of 1: tests fail");
    implement_then_qa(s, T0 + 30, Some("m1"), 1, fail, Rejected).await;
    add_one(s, "d", &implement, T0 + 40).await;
    let stuck = last("no_progress: round 1 changed nothing");
    implement_then_qa(s, T0 + 40, Some("m1"), 1, stuck, Rejected).await;
    // e: no model call, passes at round 1; f: the gate itself broke (no
    // feedback): no judgement.
    add_one(s, "e", &implement, T0 + 50).await;
    implement_then_qa(s, T0 + 50, None, 1, done(), Succeeded).await;
    add_one(s, "f", &implement, T0 + 60).await;
    let broke = Transition::FailItem {
        reason: "stage `qa` failed after 1 attempt: no such program".into(),
        feedback: None,
        class: ideamill_core::FailureClass::Quality,
    };
    implement_then_qa(s, T0 + 60, Some("m1"), 1, broke, Error).await;

    let t = |model: Option<&str>, round, outcome, items| GateTally {
        stage: "qa".into(),
        model: model.map(Into::into),
        round,
        outcome,
        items,
    };
    let tallies = s.gate_tallies(&gates).await.unwrap();
    assert_eq!(
        tallies,
        [
            t(None, 1, GateOutcome::Passed, 1),
            t(Some("m1"), 1, GateOutcome::Passed, 1),
            t(Some("m1"), 1, GateOutcome::Failed, 1),
            t(Some("m1"), 1, GateOutcome::NoProgress, 1),
            t(Some("m2"), 2, GateOutcome::Passed, 1),
        ]
    );
    let lifts = gate_lift(&tallies);
    assert_eq!(lifts.len(), 3);
    assert_eq!(lifts[1].model.as_deref(), Some("m1"));
    assert_eq!(lifts[1].first_pass_rate(), Some(1.0 / 3.0));
    // Only the stages named are counted.
    assert_eq!(s.gate_tallies(&["review".into()]).await.unwrap(), []);
    assert_eq!(s.gate_tallies(&[]).await.unwrap(), []);
}
