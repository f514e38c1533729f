//! Adding work and claiming it: order, limits, `run_at`, and claims racing
//! from two handles.

use std::collections::HashSet;
use std::sync::Arc;

use ideamill_core::machine::Transition;
use ideamill_core::{ItemState, JobState};
use ideamill_store::{NewItem, Store};

use crate::support::*;

pub async fn add_items_then_claim_in_order(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    let mut items = new_items(&["first", "second", "third"]);
    items[1].metadata = serde_json::json!({"source": "import", "n": 2});
    let ids = s.add_items(&items, &draft, T0).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids grow in input order: {ids:?}"
    );

    for (id, item) in ids.iter().zip(&items) {
        let d = s.item(*id).await.unwrap();
        assert_eq!(d.item.text, item.text);
        assert_eq!(d.item.metadata, item.metadata);
        assert_eq!(d.item.state, ItemState::Active);
        assert_eq!(d.item.stage.as_deref(), Some("draft"));
        assert_eq!(d.item.round, 1);
        assert_eq!(d.item.created_at, T0);
        assert_eq!(d.item.finished_at, None);
        assert_eq!(d.display_state, "queued");
        assert_eq!(d.jobs.len(), 1, "one first job per item");
        let job = &d.jobs[0];
        assert_eq!(job.stage, "draft");
        assert_eq!(job.round, 1);
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.attempts, 0);
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.run_at, T0);
        assert_eq!(job.lease_owner, None);
    }

    // Another stage has nothing to run.
    let other = s
        .claim("review", 10, "w1", T0 + 5, T0 + LEASE)
        .await
        .unwrap();
    assert!(other.is_empty(), "no `review` jobs exist: {other:?}");

    let first = s.claim("draft", 2, "w1", T0 + 5, T0 + LEASE).await.unwrap();
    let got: Vec<_> = first.iter().map(|j| j.item_id).collect();
    assert_eq!(
        got,
        ids[..2],
        "`limit` caps the claim and the oldest go first"
    );
    for j in &first {
        assert_eq!(j.stage, "draft");
        assert_eq!(j.round, 1);
        assert_eq!(j.attempt, 1);
        assert_eq!(j.max_attempts, 3);
        assert_eq!(j.run_at, T0);
        assert_eq!(j.claimed_at, T0 + 5);
        assert_held_once(s, j, "w1", T0 + LEASE).await;
    }
    assert_ne!(first[0].id, first[1].id);

    let rest = s
        .claim("draft", 10, "w2", T0 + 6, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|j| j.item_id).collect::<Vec<_>>(), ids[2..]);
    assert_eq!(rest[0].attempt, 1);

    let none = s
        .claim("draft", 10, "w3", T0 + 7, T0 + LEASE)
        .await
        .unwrap();
    assert!(none.is_empty(), "every job is held: {none:?}");
}

pub async fn claim_orders_by_run_at_then_id(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    // Added later but runnable earlier: `run_at` wins over the id.
    let late = add_one(s, "late", &draft, T0 + 100).await;
    let early = add_one(s, "early", &draft, T0).await;
    let early_too = add_one(s, "early too", &draft, T0).await;

    let one = s
        .claim("draft", 1, "w1", T0 + 200, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(
        one.iter().map(|j| j.item_id).collect::<Vec<_>>(),
        [early],
        "the earliest run_at, then the lowest id, is claimed first"
    );
    let rest = s
        .claim("draft", 10, "w1", T0 + 200, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|j| j.item_id).collect::<Vec<_>>(),
        [early_too, late],
        "a claim returns its jobs in (priority, run_at, id) order"
    );
}

pub async fn claim_waits_for_run_at(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    let retried = add_one(s, "retried", &draft, T0).await;
    let job = claim_one(s, "draft", "w1", T0).await;
    retry_later(s, &job, T0 + 10, T0 + 10_000).await;
    // An item added "in the future" is not runnable before then either.
    let future = add_one(s, "future", &draft, T0 + 20_000).await;

    for now in [T0 + 10, T0 + 9_999] {
        let got = s.claim("draft", 10, "w1", now, now + LEASE).await.unwrap();
        assert!(got.is_empty(), "nothing is runnable at {now}: {got:?}");
    }
    let p = s.pending(T0 + 5_000).await.unwrap();
    assert_eq!((p.soon, p.running, p.later), (0, 0, 2));
    assert_eq!(p.next_run_at, Some(T0 + 10_000));
    let p = s.pending(T0 + 10_000).await.unwrap();
    assert_eq!((p.soon, p.running, p.later), (1, 0, 1));
    assert_eq!(
        s.next_run_at(&["draft".to_string()]).await.unwrap(),
        Some(T0 + 10_000)
    );
    assert_eq!(s.next_run_at(&["review".to_string()]).await.unwrap(), None);
    // Over several stages, the soonest of those that have any.
    assert_eq!(
        s.next_run_at(&["review".to_string(), "draft".to_string()])
            .await
            .unwrap(),
        Some(T0 + 10_000)
    );
    assert_eq!(s.next_run_at(&[]).await.unwrap(), None);

    let got = s
        .claim("draft", 10, "w1", T0 + 10_000, T0 + 40_000)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|j| j.item_id).collect::<Vec<_>>(), [retried]);
    assert_eq!(got[0].run_at, T0 + 10_000);
    let got = s
        .claim("draft", 10, "w1", T0 + 19_999, T0 + 40_000)
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    let got = s
        .claim("draft", 10, "w1", T0 + 20_000, T0 + 40_000)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|j| j.item_id).collect::<Vec<_>>(), [future]);
}

pub async fn concurrent_claims_never_share_a_job(b: &dyn Backend) {
    const JOBS: usize = 200;
    let setup = b.open().await;
    let items: Vec<NewItem> = (0..JOBS)
        .map(|i| NewItem {
            text: format!("idea {i}"),
            metadata: serde_json::json!({}),
        })
        .collect();
    let ids = setup
        .add_items(&items, &next("draft", 1, 3), T0)
        .await
        .unwrap();
    assert_eq!(ids.len(), JOBS);

    // Two handles opened separately, as two engine processes would.
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for owner in ["engine-a", "engine-b"] {
        let store = b.open().await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut claimed = Vec::new();
            loop {
                let got = store
                    .claim("draft", 7, owner, T0, T0 + LEASE)
                    .await
                    .expect("claim");
                if got.is_empty() {
                    break;
                }
                claimed.extend(got);
            }
            store.close().await;
            claimed
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("the claiming task ran"));
    }

    let job_ids: HashSet<_> = all.iter().map(|j| j.id).collect();
    assert_eq!(job_ids.len(), all.len(), "a job was claimed twice");
    let item_ids: HashSet<_> = all.iter().map(|j| j.item_id).collect();
    assert_eq!(item_ids, ids.iter().copied().collect::<HashSet<_>>());
    assert!(all.iter().all(|j| j.attempt == 1));
    let p = setup.pending(T0).await.unwrap();
    assert_eq!((p.soon, p.running), (0, JOBS as u64));
    setup.close().await;
}

pub async fn a_claim_reads_its_jobs_contexts_as_a_context_read_does(s: &dyn Store) {
    let draft = next("draft", 1, 3);
    // An item with metadata, text JSON must escape, a stage's output and a
    // gate's feedback; and a plain one.
    let mut items = new_items(&["quote \" and \\ and\nnewline, ünïcödé", "plain"]);
    items[0].metadata = serde_json::json!({"source": "import", "n": 2, "tags": ["a", "b"]});
    let ids = s.add_items(&items, &draft, T0).await.unwrap();
    let d = claim_one(s, "draft", "w1", T0 + 1).await;
    assert_eq!(d.item_id, ids[0]);
    finish_ok(
        s,
        finish(&d, "w1", T0 + 2, advance("v1", Some(next("review", 1, 1)))),
    )
    .await;
    let r = claim_one(s, "review", "w1", T0 + 3).await;
    let back = Transition::SendBack {
        feedback: "needs \"sources\"".into(),
        to: next("draft", 2, 3),
    };
    finish_ok(s, finish(&r, "w1", T0 + 4, back)).await;

    let claimed = s
        .claim_with_contexts("draft", 10, "w2", T0 + 5, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|(j, _)| j.item_id).collect::<Vec<_>>(),
        [ids[1], ids[0]],
        "the same jobs, in the same order, as a claim (the sent-back job runs from T0 + 4)"
    );
    for (job, context) in &claimed {
        let jobs = s.item(job.item_id).await.unwrap().jobs;
        let held = jobs.iter().find(|j| j.id == job.id).unwrap();
        assert_eq!(
            (held.state, held.lease_owner.as_deref()),
            (JobState::Running, Some("w2"))
        );
        let context = context
            .as_ref()
            .unwrap_or_else(|| panic!("job {} came without its context", job.id));
        let read = s.context(job.item_id).await.unwrap();
        assert_eq!(
            serde_json::to_value(context).unwrap(),
            serde_json::to_value(&read).unwrap(),
            "the claim's context of item {} is what a context read gives",
            job.item_id
        );
    }
    let first = claimed[1].1.as_ref().unwrap();
    assert_eq!(first.item.text, items[0].text);
    assert_eq!(first.item.metadata, items[0].metadata);
    assert_eq!((first.outputs.len(), first.feedback.len()), (1, 1));
    assert_eq!(first.feedback[0].feedback, "needs \"sources\"");
    let none = s
        .claim_with_contexts("draft", 10, "w3", T0 + 6, T0 + LEASE)
        .await
        .unwrap();
    assert!(none.is_empty(), "every job is held: {none:?}");
}

/// The queue has one index, the claim's, so that a claim's plan is never
/// the planner's guess: with a second one over `(stage, run_at)` a store
/// without fresh statistics read and sorted the whole queue for every
/// claim (0012_one_queue_index.sql). The reads that need `run_at` walk the
/// same index per priority level (`claim_waits_for_run_at`,
/// `queue_counts`), which covers the schema this lint reads.
pub async fn the_queue_has_one_index(b: &dyn Backend) {
    b.open().await.close().await;
    assert_eq!(b.queue_indexes().await, ["jobs_runnable"]);
}

/// When the soonest queued job is due and how many are scheduled for later
/// are read one priority level at a time (`jobs_runnable` orders by
/// priority before `run_at`): with three levels, the soonest job is the one
/// of the level claimed last, and every level's later jobs are counted.
pub async fn reads_of_run_at_see_every_priority_level(b: &dyn Backend) {
    let draft = next("draft", 1, 3);
    let s = b.open().await;
    let soonest = add_one(&*s, "soonest", &draft, T0 + 100).await;
    let middle = add_one(&*s, "middle", &draft, T0 + 200).await;
    let last = add_one(&*s, "last", &draft, T0 + 300).await;
    s.close().await;
    b.execute(&format!(
        "UPDATE jobs SET priority = 5 WHERE item_id = {soonest};
         UPDATE jobs SET priority = -1 WHERE item_id = {last};"
    ))
    .await;

    let s = b.open().await;
    assert_eq!(
        s.next_run_at(&["draft".to_string()]).await.unwrap(),
        Some(T0 + 100),
        "the soonest of every level"
    );
    let p = s.pending(T0 + 150).await.unwrap();
    assert_eq!(
        (p.soon, p.later, p.next_run_at),
        (1, 2, Some(T0 + 100)),
        "one due, two later, over three levels"
    );
    let depth: Vec<_> = s
        .queue_depth(T0 + 250)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.stage == "draft")
        .map(|c| (c.queued, c.scheduled))
        .collect();
    assert_eq!(depth, [(2, 1)], "runnable now, and scheduled later");
    let claimed = s
        .claim("draft", 10, "w1", T0 + 1_000, T0 + 1_000 + LEASE)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|j| j.item_id).collect::<Vec<_>>(),
        [last, middle, soonest],
        "claimed by priority first"
    );
    assert_eq!(s.next_run_at(&["draft".to_string()]).await.unwrap(), None);
    s.close().await;
}
