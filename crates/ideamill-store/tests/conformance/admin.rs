//! What people do by hand: retry and cancel items, prune old ones.

use ideamill_core::FailureClass;
use ideamill_core::machine::Transition;
use ideamill_core::{ItemState, JobState};
use ideamill_store::{EventFilter, ItemCounts, RetryEffect, Store, StoreError, event_kind};

use crate::support::*;

const MISSING: i64 = 9_999_999;

pub async fn retry_and_cancel_by_hand(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    let ids = s
        .add_items(
            &new_items(&["failed", "running", "done", "waiting"]),
            &draft,
            T0,
        )
        .await
        .unwrap();
    let (failed, running, done, waiting) = (ids[0], ids[1], ids[2], ids[3]);
    let held = s.claim("draft", 4, "w1", T0, T0 + LEASE).await.unwrap();
    assert_eq!(held.iter().map(|j| j.item_id).collect::<Vec<_>>(), ids);
    let reason = "stage `draft` failed permanently: no such program";
    finish_ok(
        s,
        finish(
            &held[0],
            "w1",
            T0 + 10,
            Transition::FailItem {
                reason: reason.into(),
                feedback: None,
                class: FailureClass::Quality,
            },
        ),
    )
    .await;
    finish_ok(s, finish(&held[2], "w1", T0 + 10, advance("out", None))).await;
    finish_ok(
        s,
        finish(
            &held[3],
            "w1",
            T0 + 10,
            Transition::RetryAt {
                run_at: T0 + 50_000,
                error: "exit status 1".into(),
            },
        ),
    )
    .await;

    let ctx = s.context(failed).await.unwrap();
    assert_eq!(ctx.item.state, ItemState::Failed);
    assert_eq!(ctx.item.last_error.as_deref(), Some(reason));
    assert!(
        ctx.feedback.is_empty(),
        "a failure without feedback stores none"
    );
    assert_eq!(
        events_of(s, Some(failed), event_kind::ITEM_FAILED)
            .await
            .len(),
        1
    );

    // A failed item runs again from the stage asked for.
    let effect = s.retry_item(failed, &draft, T0 + 100).await.unwrap();
    assert_eq!(
        effect,
        RetryEffect {
            stage: "draft".into(),
            round: 1
        }
    );
    let d = s.item(failed).await.unwrap();
    assert_eq!(d.item.state, ItemState::Active);
    assert_eq!(d.item.finished_at, None);
    assert_eq!(d.display_state, "queued");
    assert_eq!(d.jobs.len(), 2, "a retry by hand is a new job");
    assert_eq!(
        (d.jobs[1].state, d.jobs[1].attempts, d.jobs[1].run_at),
        (JobState::Queued, 0, T0 + 100)
    );
    assert_eq!(
        events_of(s, Some(failed), event_kind::ITEM_RETRIED)
            .await
            .len(),
        1
    );
    let again = claim_one(s, "draft", "w2", T0 + 100).await;
    assert_eq!(
        (again.item_id, again.attempt, again.id),
        (failed, 1, d.jobs[1].id)
    );

    // A done item may run again from a later stage.
    let effect = s
        .retry_item(done, &next("review", 1, 2), T0 + 110)
        .await
        .unwrap();
    assert_eq!(
        effect,
        RetryEffect {
            stage: "review".into(),
            round: 1
        }
    );
    let item = s.context(done).await.unwrap().item;
    assert_eq!(
        (item.state, item.stage.as_deref()),
        (ItemState::Active, Some("review"))
    );
    assert_eq!(claim_one(s, "review", "w2", T0 + 110).await.item_id, done);

    // An item waiting for its backoff runs now, as the same job.
    s.retry_item(waiting, &draft, T0 + 120).await.unwrap();
    let d = s.item(waiting).await.unwrap();
    assert_eq!(d.jobs.len(), 1);
    assert_eq!(
        (d.jobs[0].state, d.jobs[0].run_at),
        (JobState::Queued, T0 + 120)
    );
    let now = claim_one(s, "draft", "w2", T0 + 120).await;
    assert_eq!((now.item_id, now.attempt), (waiting, 2));

    let err = expect_err(
        s.retry_item(running, &draft, T0 + 130).await,
        "retry a running item",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err:?}");
    assert_eq!(
        s.item(running).await.unwrap().jobs.len(),
        1,
        "a refused retry changes nothing"
    );
    let err = expect_err(
        s.retry_item(MISSING, &draft, T0 + 130).await,
        "retry a missing item",
    );
    assert!(matches!(err, StoreError::NoSuchItem(MISSING)), "{err:?}");
    let err = expect_err(
        s.cancel_item(MISSING, T0 + 130).await,
        "cancel a missing item",
    );
    assert!(matches!(err, StoreError::NoSuchItem(MISSING)), "{err:?}");
    let err = expect_err(s.item(MISSING).await, "read a missing item");
    assert!(matches!(err, StoreError::NoSuchItem(MISSING)), "{err:?}");

    // Cancelling works once; a finished item has nothing to cancel.
    let effect = s.cancel_item(running, T0 + 140).await.unwrap();
    assert!(effect.was_running);
    let err = expect_err(
        s.cancel_item(running, T0 + 150).await,
        "cancel a cancelled item",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err:?}");

    let fresh = add_one(s, "to finish", &next("solo", 1, 1), T0 + 200).await;
    let job = claim_one(s, "solo", "w3", T0 + 200).await;
    finish_ok(s, finish(&job, "w3", T0 + 210, advance("out", None))).await;
    let err = expect_err(s.cancel_item(fresh, T0 + 220).await, "cancel a done item");
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err:?}");
    let d = s.item(fresh).await.unwrap();
    assert_eq!(
        (d.item.state, d.item.finished_at),
        (ItemState::Done, Some(T0 + 210))
    );
}

pub async fn prune_deletes_only_old_finished_items(b: &dyn Backend) {
    let store = b.open().await;
    let s = &*store;
    // Each item starts at its own stage so that claims pick exactly it.
    let old_done = add_one(s, "old done", &next("draft", 1, 3), T0).await;
    let old_failed = add_one(s, "old failed", &next("review", 1, 1), T0).await;
    let old_cancelled = add_one(s, "old cancelled", &next("cancel", 1, 3), T0).await;
    let old_queued = add_one(s, "old queued", &next("queued", 1, 3), T0).await;
    let old_running = add_one(s, "old running", &next("running", 1, 3), T0).await;
    let recent_done = add_one(s, "recent done", &next("late", 1, 3), T0).await;

    let job = claim_one(s, "draft", "w1", T0).await;
    finish_ok(s, finish(&job, "w1", T0 + 10, advance("out", None))).await;
    let job = claim_one(s, "review", "w1", T0).await;
    let fail = Transition::FailItem {
        reason: "rejected".into(),
        feedback: Some("bad".into()),
        class: FailureClass::Quality,
    };
    finish_ok(s, finish(&job, "w1", T0 + 20, fail)).await;
    s.cancel_item(old_cancelled, T0 + 30).await.unwrap();
    let still_running = claim_one(s, "running", "w2", T0 + 40).await;
    let job = claim_one(s, "late", "w1", T0 + 4_000).await;
    finish_ok(s, finish(&job, "w1", T0 + 5_000, advance("kept", None))).await;

    let before = T0 + 1_000;
    let all_events = s
        .events(&EventFilter {
            limit: 10_000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    let old_events = all_events.iter().filter(|e| e.at < before).count() as u64;
    assert!(old_events > 0, "the setup made old events");

    let items = |active, done, failed, cancelled| ItemCounts {
        active,
        done,
        failed,
        cancelled,
    };
    let status = s.status(T0 + 5_000).await.unwrap();
    assert_eq!(status.items, items(2, 2, 1, 1), "counts before the prune");
    let counts = s.prune(before).await.unwrap();
    let status = s.status(T0 + 5_000).await.unwrap();
    assert_eq!(
        status.items,
        items(2, 1, 0, 0),
        "pruned items are not counted"
    );
    assert_eq!((counts.items, counts.events), (3, old_events));
    let mut pruned = counts.item_ids.clone();
    pruned.sort();
    assert_eq!(pruned, [old_done, old_failed, old_cancelled], "pruned ids");
    for gone in [old_done, old_failed, old_cancelled] {
        let err = expect_err(s.item(gone).await, "read a pruned item");
        assert!(
            matches!(err, StoreError::NoSuchItem(id) if id == gone),
            "{err:?}"
        );
    }
    for kept in [old_queued, old_running, recent_done] {
        s.item(kept).await.unwrap();
    }
    let d = s.item(recent_done).await.unwrap();
    assert_eq!(d.outputs.len(), 1, "a kept item keeps its outputs");
    let left = s
        .events(&EventFilter {
            limit: 10_000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert!(
        left.iter().all(|e| e.at >= before),
        "old events are pruned: {left:?}"
    );

    // The pruned items' jobs, attempts, outputs and feedback went with them.
    let mut jobs = 0;
    let mut attempts = 0;
    for kept in [old_queued, old_running, recent_done] {
        let d = s.item(kept).await.unwrap();
        jobs += d.jobs.len() as i64;
        attempts += d.attempts.len() as i64;
    }
    assert_eq!(b.count_rows("items").await, 3);
    assert_eq!(b.count_rows("jobs").await, jobs);
    assert_eq!(b.count_rows("attempts").await, attempts);
    assert_eq!(b.count_rows("outputs").await, 1);
    assert_eq!(b.count_rows("feedback").await, 0);

    assert_eq!(s.prune(before).await.unwrap().items, 0);
    // Unfinished work is untouched and still finishes.
    let effect = finish_ok(
        s,
        finish(&still_running, "w2", T0 + 6_000, advance("late", None)),
    )
    .await;
    assert_eq!(effect.item_state, ItemState::Done);
    assert_eq!(
        claim_one(s, "queued", "w2", T0 + 6_000).await.item_id,
        old_queued
    );
    let status = s.status(T0 + 6_000).await.unwrap();
    assert_eq!(status.items, items(1, 2, 0, 0));
    // A beat may fold count deltas into the base counts (PostgreSQL): the
    // counts stay the same, and stay right for what comes next.
    s.heartbeat("w2", T0 + 6_000, T0 + 9_000, &[])
        .await
        .unwrap();
    assert_eq!(s.status(T0 + 6_000).await.unwrap().items, items(1, 2, 0, 0));
    s.heartbeat("w2", T0 + 6_000, T0 + 9_000, &[])
        .await
        .unwrap();
    add_one(s, "after the fold", &next("queued", 1, 3), T0 + 7_000).await;
    assert_eq!(s.status(T0 + 7_000).await.unwrap().items, items(2, 2, 0, 0));
    store.close().await;
}

pub async fn item_ids_are_never_given_twice(s: &dyn Store) {
    use ideamill_store::{AddOutcome, ImportOutcome, ImportedItem, ImportedState, IntakeSource};
    let draft = next("draft", 1, 3);
    let ids = s
        .add_items(&new_items(&["a", "b", "c"]), &draft, T0)
        .await
        .unwrap();
    let mut given = ids.clone();
    let held = s.claim("draft", 3, "w1", T0, T0 + LEASE).await.unwrap();
    assert_eq!(held.len(), 3);
    // The newest two finish and are pruned; the oldest stays.
    for job in &held[1..] {
        finish_ok(s, finish(job, "w1", T0 + 10, advance("out", None))).await;
    }
    let mut pruned = s.prune(T0 + 1_000).await.unwrap().item_ids;
    pruned.sort_unstable();
    assert_eq!(pruned, ids[1..]);

    let highest = |given: &[i64]| *given.iter().max().unwrap();
    let added = add_one(s, "d", &draft, T0 + 2_000).await;
    assert!(
        added > highest(&given),
        "item {added} was given after ids up to {} (pruned: {pruned:?})",
        highest(&given)
    );
    given.push(added);

    // Every way in gives new ids: a file of the inbox, an import.
    let AddOutcome::Added(once) = s
        .add_items_once(
            &IntakeSource {
                key: "sha256:ids".into(),
                name: "inbox/ids.txt".into(),
            },
            &new_items(&["e", "f"]),
            &draft,
            T0 + 2_000,
        )
        .await
        .unwrap()
    else {
        panic!("a new source adds its items");
    };
    assert!(once[0] > highest(&given) && once[1] > once[0], "{once:?}");
    given.extend(&once);

    // Everything finished and pruned: the table is empty, and still no id
    // comes back.
    for job in [held[0].clone()].into_iter().chain(
        s.claim("draft", 10, "w1", T0 + 3_000, T0 + LEASE)
            .await
            .unwrap(),
    ) {
        finish_ok(s, finish(&job, "w1", T0 + 3_000, advance("out", None))).await;
    }
    assert_eq!(s.prune(T0 + 4_000).await.unwrap().items, 4);
    let imported = s
        .import_items(
            &[ImportedItem {
                source: IntakeSource {
                    key: "legacy:ids".into(),
                    name: "legacy/ids".into(),
                },
                text: "g".into(),
                metadata: serde_json::json!({}),
                created_at: T0,
                state: ImportedState::Done,
            }],
            T0 + 5_000,
        )
        .await
        .unwrap();
    let [ImportOutcome::Imported(g)] = imported[..] else {
        panic!("imported: {imported:?}");
    };
    assert!(g > highest(&given), "imported item {g} after {given:?}");
    given.push(g);
    let after = s
        .add_items(&new_items(&["h", "i"]), &draft, T0 + 5_000)
        .await
        .unwrap();
    assert!(
        after[0] > highest(&given) && after[1] > after[0],
        "{after:?}"
    );
}

pub async fn store_copy_gives_no_item_id_twice(b: &dyn Backend) {
    let draft = next("draft", 1, 3);
    let s = b.open().await;
    let ids = s
        .add_items(&new_items(&["a", "b", "c"]), &draft, T0)
        .await
        .unwrap();
    let held = s.claim("draft", 3, "w1", T0, T0 + LEASE).await.unwrap();
    for job in &held[1..] {
        finish_ok(&*s, finish(job, "w1", T0 + 10, advance("out", None))).await;
    }
    assert_eq!(s.prune(T0 + 1_000).await.unwrap().items, 2);
    s.close().await;

    // Into the other kind of store: the pruned ids stay given.
    let (other, t) = copy_into_other_kind(b).await;
    assert_eq!(t.item(ids[0]).await.unwrap().item.text, "a");
    let added = add_one(&*t, "d", &draft, T0 + 2_000).await;
    assert!(
        added > ids[2],
        "the copy gave item {added} after ids up to {}",
        ids[2]
    );
    // The newest item goes too, before the copy back.
    let job = claim_one(&*t, "draft", "w1", T0 + 2_000).await;
    finish_ok(&*t, finish(&job, "w1", T0 + 2_010, advance("out", None))).await;
    assert_eq!(t.prune(T0 + 3_000).await.unwrap().items, 1);
    t.close().await;

    // And back, replacing what the first store held.
    ideamill_store::transfer::copy(&other.url(), &b.url(), true)
        .await
        .unwrap();
    let s = b.open().await;
    let again = add_one(&*s, "e", &draft, T0 + 4_000).await;
    assert!(
        again > added,
        "the copy back gave item {again} after ids up to {added}"
    );
    s.close().await;
}

pub async fn retry_waits_until_a_cancelled_job_has_ended(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    let ids = s
        .add_items(&new_items(&["killed", "engine died"]), &draft, T0)
        .await
        .unwrap();
    let held = s.claim("draft", 2, "w1", T0, T0 + LEASE).await.unwrap();
    assert_eq!(held.len(), 2);
    for id in &ids {
        assert!(s.cancel_item(*id, T0 + 10).await.unwrap().was_running);
    }

    // The cancelled jobs are still held by w1, whose processes are being
    // killed: no retry may start a second job of the item next to them.
    for id in &ids {
        let err = expect_err(s.retry_item(*id, &draft, T0 + 20).await, "retry");
        assert!(
            matches!(&err, StoreError::InvalidRequest(m)
                if m == &format!("item {id}'s cancelled job is still stopping (its process is being killed); retry in a moment")),
            "{err:?}"
        );
        let d = s.item(*id).await.unwrap();
        assert_eq!(d.item.state, ItemState::Cancelled, "nothing changed");
        assert_eq!(d.jobs.len(), 1, "nothing enqueued");
    }
    assert!(
        s.claim("draft", 10, "w2", T0 + 20, T0 + LEASE)
            .await
            .unwrap()
            .is_empty()
    );

    // The engine records the cancelled attempt once the process is gone.
    finish_ok(s, finish(&held[0], "w1", T0 + 3_000, Transition::Cancel)).await;
    s.retry_item(ids[0], &draft, T0 + 3_010).await.unwrap();
    // The other one's engine died: its lease expires and the reaper ends it.
    let err = expect_err(s.retry_item(ids[1], &draft, T0 + 3_010).await, "retry");
    assert!(matches!(err, StoreError::InvalidRequest(_)), "{err:?}");
    let reaped = s.reap_expired(T0 + LEASE + 1).await.unwrap();
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    s.retry_item(ids[1], &draft, T0 + LEASE + 2).await.unwrap();

    let again = s
        .claim("draft", 10, "w2", T0 + LEASE + 2, T0 + 2 * LEASE)
        .await
        .unwrap();
    let mut items: Vec<_> = again.iter().map(|j| j.item_id).collect();
    items.sort_unstable();
    assert_eq!(items, ids, "both items run again, once each");
}

/// Issue 13: a failed item keeps why it failed (the work's quality or the
/// infrastructure), lists filter by it, and a retry clears it, so that
/// `retry --failed infra` runs only the infrastructure's failures again.
pub async fn failure_class_is_kept_filtered_and_cleared_by_retry(s: &dyn Store) {
    use ideamill_store::{ItemFilter, StateFilter};

    let draft = next("draft", 1, 3);
    let ids = s
        .add_items(&new_items(&["infra", "quality", "done"]), &draft, T0)
        .await
        .unwrap();
    let (infra, quality, done) = (ids[0], ids[1], ids[2]);
    // One more whose only try is lost: the reaper fails it, and a lost
    // worker is the host's failure.
    let lost = add_one(s, "lost", &next("draft", 1, 1), T0).await;
    let held = s.claim("draft", 4, "w1", T0, T0 + LEASE).await.unwrap();
    assert_eq!(held.len(), 4);
    let fail = |class| Transition::FailItem {
        reason: format!("failed: {class}"),
        feedback: None,
        class,
    };
    finish_ok(
        s,
        finish(&held[0], "w1", T0 + 10, fail(FailureClass::Infra)),
    )
    .await;
    finish_ok(
        s,
        finish(&held[1], "w1", T0 + 10, fail(FailureClass::Quality)),
    )
    .await;
    finish_ok(s, finish(&held[2], "w1", T0 + 10, advance("out", None))).await;
    let reaped = s.reap_expired(T0 + LEASE + 1).await.unwrap();
    assert_eq!(reaped.iter().map(|r| r.item_id).collect::<Vec<_>>(), [lost]);

    let class_of = async |id| s.item(id).await.unwrap().item.failure_class;
    assert_eq!(class_of(infra).await, Some(FailureClass::Infra));
    assert_eq!(class_of(quality).await, Some(FailureClass::Quality));
    assert_eq!(class_of(lost).await, Some(FailureClass::Infra));
    assert_eq!(class_of(done).await, None, "only failed items have one");
    assert_eq!(
        s.context(infra).await.unwrap().item.failure_class,
        Some(FailureClass::Infra)
    );

    let failed = |failure| ItemFilter {
        failure,
        limit: 100,
        ..ItemFilter::default()
    };
    let listed = async |filter: ItemFilter| {
        s.list_items(&filter)
            .await
            .unwrap()
            .iter()
            .map(|i| (i.id, i.failure_class))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(failed(Some(FailureClass::Infra))).await,
        [
            (lost, Some(FailureClass::Infra)),
            (infra, Some(FailureClass::Infra))
        ]
    );
    assert_eq!(
        listed(failed(Some(FailureClass::Quality))).await,
        [(quality, Some(FailureClass::Quality))]
    );
    assert_eq!(
        listed(ItemFilter {
            state: Some(StateFilter::Failed),
            ..failed(None)
        })
        .await,
        [
            (lost, Some(FailureClass::Infra)),
            (quality, Some(FailureClass::Quality)),
            (infra, Some(FailureClass::Infra))
        ]
    );
    // Text search honours the filter too.
    let found = s
        .search_items(&failed(Some(FailureClass::Infra)), "infra")
        .await
        .unwrap();
    assert_eq!(found.iter().map(|i| i.id).collect::<Vec<_>>(), [infra]);

    // Retrying what the filter lists runs those again, and nothing else.
    for item in s
        .list_items(&failed(Some(FailureClass::Infra)))
        .await
        .unwrap()
    {
        s.retry_item(item.id, &draft, T0 + LEASE + 10)
            .await
            .unwrap();
    }
    assert_eq!(listed(failed(Some(FailureClass::Infra))).await, []);
    for id in [infra, lost] {
        let d = s.item(id).await.unwrap();
        assert_eq!(
            (d.item.state, d.item.failure_class, d.item.last_error),
            (ItemState::Active, None, None),
            "item {id} runs again with its failure forgotten"
        );
    }
    assert_eq!(class_of(quality).await, Some(FailureClass::Quality));
    assert_eq!(s.item(quality).await.unwrap().item.state, ItemState::Failed);
    let mut again = s
        .claim("draft", 10, "w2", T0 + LEASE + 10, T0 + 2 * LEASE)
        .await
        .unwrap();
    again.sort_by_key(|j| j.item_id);
    assert_eq!(
        again.iter().map(|j| j.item_id).collect::<Vec<_>>(),
        [infra, lost]
    );

    // Failing again records the new class, not the old one.
    let at = T0 + LEASE + 20;
    finish_ok(s, finish(&again[0], "w2", at, fail(FailureClass::Quality))).await;
    assert_eq!(class_of(infra).await, Some(FailureClass::Quality));
    finish_ok(s, finish(&again[1], "w2", at, advance("out", None))).await;
    assert_eq!(class_of(lost).await, None);
}
