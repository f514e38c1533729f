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
