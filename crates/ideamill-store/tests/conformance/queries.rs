//! The read side: listing items, the status snapshot, the event log.

use std::collections::HashMap;

use ideamill_core::FailureClass;
use ideamill_core::machine::Transition;
use ideamill_core::{ItemId, ItemState};
use ideamill_store::{
    EventFilter, ItemCounts, ItemFilter, NewEvent, RunningJob, StageCounts, StateFilter,
    StatusSnapshot, Store,
};

use crate::support::*;

async fn list(s: &dyn Store, filter: ItemFilter) -> Vec<ItemId> {
    s.list_items(&filter)
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect()
}

fn by_state(state: StateFilter) -> ItemFilter {
    ItemFilter {
        state: Some(state),
        limit: 100,
        ..ItemFilter::default()
    }
}

pub async fn list_items_filters_and_pages(s: &dyn Store) {
    // Ids grow in this order; the first five are claimed, in id order.
    let ids = s
        .add_items(
            &new_items(&[
                "running",
                "retrying",
                "done",
                "failed",
                "review",
                "cancelled",
                "queued",
            ]),
            &next("draft", 1, 3),
            T0,
        )
        .await
        .unwrap();
    let [running, retrying, done, failed, review, cancelled, queued] = ids[..] else {
        panic!("seven ids: {ids:?}");
    };
    let held = s.claim("draft", 5, "w1", T0, T0 + LEASE).await.unwrap();
    assert_eq!(held.iter().map(|j| j.item_id).collect::<Vec<_>>(), ids[..5]);
    let retry = Transition::RetryAt {
        run_at: T0 + 60_000,
        error: "exit status 1".into(),
    };
    let fail = Transition::FailItem {
        reason: "no such program".into(),
        feedback: None,
        class: FailureClass::Quality,
    };
    finish_ok(s, finish(&held[1], "w1", T0 + 10, retry)).await;
    finish_ok(s, finish(&held[2], "w1", T0 + 10, advance("out", None))).await;
    finish_ok(s, finish(&held[3], "w1", T0 + 10, fail)).await;
    let to_review = advance("out", Some(next("review", 1, 2)));
    finish_ok(s, finish(&held[4], "w1", T0 + 10, to_review)).await;
    s.cancel_item(cancelled, T0 + 20).await.unwrap();

    for (state, expected) in [
        (StateFilter::Queued, vec![queued, review]),
        (StateFilter::Running, vec![running]),
        (StateFilter::Retrying, vec![retrying]),
        (StateFilter::Done, vec![done]),
        (StateFilter::Failed, vec![failed]),
        (StateFilter::Cancelled, vec![cancelled]),
        (StateFilter::Active, vec![queued, review, retrying, running]),
    ] {
        assert_eq!(list(s, by_state(state)).await, expected, "{state:?}");
    }

    let all = s
        .list_items(&ItemFilter {
            limit: 100,
            ..ItemFilter::default()
        })
        .await
        .unwrap();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(all.iter().map(|i| i.id).collect::<Vec<_>>(), newest_first);
    let shown: HashMap<_, _> = all
        .iter()
        .map(|i| (i.id, (i.display_state.as_str(), i.state, i.attempts)))
        .collect();
    assert_eq!(shown[&queued], ("queued", ItemState::Active, 0));
    assert_eq!(shown[&review], ("queued", ItemState::Active, 0));
    assert_eq!(shown[&running], ("running", ItemState::Active, 1));
    assert_eq!(shown[&retrying], ("retrying", ItemState::Active, 1));
    assert_eq!(shown[&done].0, "done");
    assert_eq!(shown[&failed].0, "failed");
    assert_eq!(shown[&cancelled].0, "cancelled");
    let failed_row = all.iter().find(|i| i.id == failed).unwrap();
    assert_eq!(failed_row.last_error.as_deref(), Some("no such program"));
    assert_eq!(failed_row.text, "failed");

    let at_stage = |stage: &str, state: Option<StateFilter>| ItemFilter {
        state,
        stage: Some(stage.to_string()),
        limit: 100,
        ..ItemFilter::default()
    };
    assert_eq!(list(s, at_stage("review", None)).await, [review]);
    let drafts: Vec<_> = newest_first
        .iter()
        .copied()
        .filter(|&i| i != review)
        .collect();
    assert_eq!(list(s, at_stage("draft", None)).await, drafts);
    assert_eq!(
        list(s, at_stage("draft", Some(StateFilter::Queued))).await,
        [queued]
    );
    assert_eq!(
        list(s, at_stage("review", Some(StateFilter::Queued))).await,
        [review]
    );
    assert!(
        list(s, at_stage("review", Some(StateFilter::Running)))
            .await
            .is_empty()
    );

    // Pages of three, newest first, each starting below the last id seen.
    let mut pages = Vec::new();
    let mut before_id = None;
    loop {
        let page = list(
            s,
            ItemFilter {
                before_id,
                limit: 3,
                ..ItemFilter::default()
            },
        )
        .await;
        if page.is_empty() {
            break;
        }
        before_id = page.last().copied();
        pages.push(page);
    }
    assert_eq!(
        pages,
        [
            newest_first[..3].to_vec(),
            newest_first[3..6].to_vec(),
            newest_first[6..].to_vec()
        ]
    );
    let active_page = |before_id| ItemFilter {
        state: Some(StateFilter::Active),
        before_id,
        limit: 2,
        ..ItemFilter::default()
    };
    assert_eq!(list(s, active_page(None)).await, [queued, review]);
    assert_eq!(
        list(s, active_page(Some(review))).await,
        [retrying, running]
    );
    assert!(list(s, active_page(Some(running))).await.is_empty());
}

fn stage(snapshot: &StatusSnapshot, name: &str) -> StageCounts {
    snapshot
        .stages
        .iter()
        .find(|c| c.stage == name)
        .cloned()
        .unwrap_or_else(|| StageCounts {
            stage: name.to_string(),
            ..StageCounts::default()
        })
}

fn counts(queued: u64, scheduled: u64, running: u64) -> (u64, u64, u64) {
    (queued, scheduled, running)
}

fn of(c: StageCounts) -> (u64, u64, u64) {
    (c.queued, c.scheduled, c.running)
}

pub async fn status_counts_stages_leases_and_items(s: &dyn Store) {
    let ids = s
        .add_items(
            &new_items(&["a", "b", "c", "d", "e", "f"]),
            &next("draft", 1, 3),
            T0,
        )
        .await
        .unwrap();
    let held = s.claim("draft", 3, "w1", T0, T0 + 100).await.unwrap();
    let retry = Transition::RetryAt {
        run_at: T0 + 10_000,
        error: "exit status 1".into(),
    };
    finish_ok(s, finish(&held[0], "w1", T0 + 10, retry)).await;
    let to_review = advance("out", Some(next("review", 1, 2)));
    finish_ok(s, finish(&held[1], "w1", T0 + 10, to_review)).await;
    s.cancel_item(ids[5], T0 + 20).await.unwrap();
    // A finished item of each kind, at a stage of their own.
    let solo = s
        .add_items(&new_items(&["g", "h"]), &next("solo", 1, 1), T0)
        .await
        .unwrap();
    let solos = s.claim("solo", 2, "w2", T0, T0 + LEASE).await.unwrap();
    assert_eq!(solos.iter().map(|j| j.item_id).collect::<Vec<_>>(), solo);
    finish_ok(s, finish(&solos[0], "w2", T0 + 30, advance("out", None))).await;
    let fail = Transition::FailItem {
        reason: "no".into(),
        feedback: None,
        class: FailureClass::Quality,
    };
    finish_ok(s, finish(&solos[1], "w2", T0 + 30, fail)).await;

    // draft: d and e runnable, a waiting for its backoff, c running;
    // review: b runnable.
    let snap = s.status(T0 + 50).await.unwrap();
    assert_eq!(snap.now, T0 + 50);
    assert_eq!(
        snap.items,
        ItemCounts {
            active: 5,
            done: 1,
            failed: 1,
            cancelled: 1,
        }
    );
    assert_eq!(of(stage(&snap, "draft")), counts(2, 1, 1));
    assert_eq!(of(stage(&snap, "review")), counts(1, 0, 0));
    assert_eq!(of(stage(&snap, "solo")), counts(0, 0, 0));
    assert_eq!(snap.expired_leases, 0);
    assert_eq!(
        snap.running,
        [RunningJob {
            job_id: held[2].id,
            item_id: ids[2],
            stage: "draft".into(),
            round: 1,
            attempt: 1,
            owner: "w1".into(),
            started_at: T0,
            lease_expires_at: T0 + 100,
        }]
    );
    assert_eq!(snap.oldest_runnable_at, Some(T0));
    assert!(snap.processes.is_empty());

    let snap = s.status(T0 + 101).await.unwrap();
    assert_eq!(snap.expired_leases, 1, "c's lease ended at T0 + 100");
    assert_eq!(of(stage(&snap, "draft")), counts(2, 1, 1));

    let snap = s.status(T0 + 10_000).await.unwrap();
    assert_eq!(
        of(stage(&snap, "draft")),
        counts(3, 0, 1),
        "the backoff is over"
    );
}

pub async fn events_filter_by_item_kind_and_since(s: &dyn Store) {
    let ids = s
        .add_items(&new_items(&["a", "b"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    for (i, item) in [ids[0], ids[1], ids[0], ids[1], ids[0]]
        .into_iter()
        .enumerate()
    {
        s.record_event(&NewEvent {
            at: T0 + i as i64,
            kind: "test_note",
            item_id: Some(item),
            job_id: None,
            process: Some("w1".into()),
            message: format!("Note {i}"),
        })
        .await
        .unwrap();
    }
    s.cancel_item(ids[1], T0 + 10).await.unwrap();

    let filter = |item, kind: Option<&str>, since, limit| EventFilter {
        item,
        kind: kind.map(str::to_string),
        since,
        limit,
    };
    let notes = s
        .events(&filter(None, Some("test_note"), None, 100))
        .await
        .unwrap();
    let got: Vec<_> = notes
        .iter()
        .map(|e| (e.at, e.item_id, e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (T0, Some(ids[0]), "Note 0"),
            (T0 + 1, Some(ids[1]), "Note 1"),
            (T0 + 2, Some(ids[0]), "Note 2"),
            (T0 + 3, Some(ids[1]), "Note 3"),
            (T0 + 4, Some(ids[0]), "Note 4"),
        ],
        "oldest first"
    );
    assert!(notes.windows(2).all(|w| w[0].id < w[1].id));
    assert!(notes.iter().all(|e| e.process.as_deref() == Some("w1")));

    let of_b = s
        .events(&filter(Some(ids[1]), None, None, 100))
        .await
        .unwrap();
    let kinds: Vec<_> = of_b.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["test_note", "test_note", "item_cancelled"]);
    let since = s
        .events(&filter(Some(ids[0]), None, Some(T0 + 2), 100))
        .await
        .unwrap();
    let at: Vec<_> = since.iter().map(|e| e.at).collect();
    assert_eq!(at, [T0 + 2, T0 + 4]);
    let capped = s
        .events(&filter(None, Some("test_note"), None, 2))
        .await
        .unwrap();
    assert_eq!(capped.len(), 2);
}

/// Items moved to done by one batch of finishes are counted once each
/// (PostgreSQL counts them in the finish's own statement, not by a trigger:
/// 0010_lighter_finish.sql), and moved back out by a retry, the other way.
pub async fn item_counts_follow_a_batch_of_finishes_and_a_retry(s: &dyn Store) {
    let ids = s
        .add_items(&new_items(&["a", "b", "c", "d"]), &next("solo", 1, 1), T0)
        .await
        .unwrap();
    let jobs = s.claim("solo", 4, "w1", T0, T0 + LEASE).await.unwrap();
    assert_eq!(jobs.len(), 4);
    let fail = Transition::FailItem {
        reason: "no".into(),
        feedback: None,
        class: FailureClass::Quality,
    };
    let batch = vec![
        finish(&jobs[0], "w1", T0 + 1, advance("out", None)),
        finish(&jobs[1], "w1", T0 + 1, advance("out", None)),
        finish(&jobs[2], "w1", T0 + 1, fail),
        finish(&jobs[3], "w1", T0 + 1, advance("out", None)),
        // The same finish again in the batch: stale, counts nothing.
        finish(&jobs[0], "w1", T0 + 1, advance("out", None)),
    ];
    let results = s.finish(&batch).await.unwrap();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    let counted = |active, done, failed| ItemCounts {
        active,
        done,
        failed,
        cancelled: 0,
    };
    assert_eq!(s.status(T0 + 2).await.unwrap().items, counted(0, 3, 1));
    s.retry_item(ids[1], &next("solo", 1, 1), T0 + 3)
        .await
        .unwrap();
    assert_eq!(s.status(T0 + 4).await.unwrap().items, counted(1, 2, 1));
    let again = s.claim("solo", 1, "w1", T0 + 5, T0 + LEASE).await.unwrap();
    finish_ok(s, finish(&again[0], "w1", T0 + 6, advance("out", None))).await;
    assert_eq!(s.status(T0 + 7).await.unwrap().items, counted(0, 3, 1));
}

/// Many items added at once (more than one statement's chunk on SQLite):
/// ids new, ascending in input order, each item with its text and one
/// queued first job.
pub async fn many_items_added_at_once_keep_their_order_and_jobs(s: &dyn Store) {
    let before = s
        .add_items(&new_items(&["first"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    let texts: Vec<String> = (0..150).map(|n| format!("idea {n}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = s
        .add_items(&new_items(&refs), &next("draft", 1, 3), T0 + 1)
        .await
        .unwrap();
    assert_eq!(ids.len(), 150);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    assert!(ids[0] > before[0]);
    for (id, text) in ids.iter().zip(&texts).step_by(37) {
        assert_eq!(&s.item(*id).await.unwrap().item.text, text);
    }
    let jobs = s
        .claim("draft", 200, "w1", T0 + 2, T0 + LEASE)
        .await
        .unwrap();
    let mut claimed: Vec<_> = jobs.iter().map(|j| j.item_id).collect();
    claimed.sort_unstable();
    let mut expected = before.clone();
    expected.extend(&ids);
    assert_eq!(claimed, expected, "one first job per item");
}
