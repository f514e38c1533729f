//! The hand-off: an add claims new items' first jobs for this process's
//! engine when it has free slots, in the add's own transaction, without
//! jumping the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ideamill_core::{AttemptOutcome, JobState, Millis};
use ideamill_store::{AddOutcome, ClaimedJob, Claimer, IntakeSource, Reserved, StageCounts, Store};

use crate::support::*;

/// An engine's side, as far as the store sees it: `free` slots of stage
/// `draft`, taken by reservations and never given back; what it was handed.
struct Slots {
    free: AtomicUsize,
    takes: bool,
    handed: Arc<Mutex<Vec<ClaimedJob>>>,
}

impl Slots {
    fn set(
        s: &dyn Store,
        free: usize,
        takes: bool,
    ) -> (Arc<dyn Claimer>, Arc<Mutex<Vec<ClaimedJob>>>) {
        let handed = Arc::new(Mutex::new(Vec::new()));
        let claimer: Arc<dyn Claimer> = Arc::new(Slots {
            free: AtomicUsize::new(free),
            takes,
            handed: handed.clone(),
        });
        s.set_claimer(claimer.clone());
        (claimer, handed)
    }
}

impl Claimer for Slots {
    fn reserve(&self, stage: &str, wanted: usize) -> Option<Box<dyn Reserved>> {
        let n = wanted.min(self.free.load(Ordering::SeqCst));
        if stage != "draft" || n == 0 {
            return None;
        }
        self.free.fetch_sub(n, Ordering::SeqCst);
        Some(Box::new(Held {
            slots: n as u32,
            takes: self.takes,
            handed: self.handed.clone(),
        }))
    }
}

struct Held {
    slots: u32,
    takes: bool,
    handed: Arc<Mutex<Vec<ClaimedJob>>>,
}

impl Reserved for Held {
    fn owner(&self) -> &str {
        "w1"
    }
    fn slots(&self) -> u32 {
        self.slots
    }
    fn lease(&self) -> Millis {
        LEASE
    }
    fn hand_off(self: Box<Self>, jobs: Vec<ClaimedJob>) -> bool {
        self.handed.lock().unwrap().extend(jobs);
        self.takes
    }
}

async fn draft_counts(s: &dyn Store) -> (u64, u64) {
    let counts: Vec<StageCounts> = s.queue_depth(T0).await.unwrap();
    counts
        .iter()
        .find(|c| c.stage == "draft")
        .map_or((0, 0), |c| (c.queued, c.running))
}

pub async fn an_add_claims_its_first_jobs_for_free_slots_here(s: &dyn Store) {
    let (claimer, handed) = Slots::set(s, 2, true);
    let ids = s
        .add_items(&new_items(&["a", "b", "c"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    let handed = handed.lock().unwrap().clone();
    let got: Vec<_> = handed.iter().map(|j| j.item_id).collect();
    assert_eq!(got, ids[..2], "the two free slots take the first two");
    for j in &handed {
        assert_eq!(
            (j.stage.as_str(), j.round, j.attempt, j.max_attempts),
            ("draft", 1, 1, 3)
        );
        assert_eq!((j.run_at, j.claimed_at), (T0, T0));
        assert_held_once(s, j, "w1", T0 + LEASE).await;
    }
    assert_eq!(draft_counts(s).await, (1, 2), "(queued, running)");
    let status = s.status(T0).await.unwrap();
    assert_eq!(status.items.active, 3);

    // The third waits for a claim, as without a hand-off.
    let rest = claim_one(s, "draft", "w2", T0 + 1).await;
    assert_eq!(rest.item_id, ids[2]);
    assert_eq!(draft_counts(s).await, (0, 3));

    // A handed-off job is a claimed job: its lease fences its finish.
    let done = finish(&handed[0], "w1", T0 + 2, advance("out", None));
    finish_ok(s, done).await;
    assert_eq!(
        s.item(ids[0]).await.unwrap().item.state,
        ideamill_core::ItemState::Done
    );
    let stale = ClaimedJob {
        lease_token: handed[1].lease_token + 1,
        ..handed[1].clone()
    };
    let err = finish_one(s, finish(&stale, "w1", T0 + 3, advance("out", None))).await;
    assert!(err.is_err(), "a wrong token is fenced: {err:?}");

    // Unset, adds claim nothing more.
    s.unset_claimer(&claimer);
    let later = add_one(s, "d", &next("draft", 1, 3), T0 + 4).await;
    assert_eq!(s.item(later).await.unwrap().jobs[0].state, JobState::Queued);
}

pub async fn an_add_never_jumps_the_queue(s: &dyn Store) {
    let older = add_one(s, "older", &next("draft", 1, 3), T0).await;
    let (_claimer, handed) = Slots::set(s, 4, true);
    let newer = add_one(s, "newer", &next("draft", 1, 3), T0 + 1).await;
    assert!(
        handed.lock().unwrap().is_empty(),
        "an older runnable job of the stage goes first"
    );
    assert_eq!(s.item(newer).await.unwrap().jobs[0].state, JobState::Queued);
    assert_eq!(claim_one(s, "draft", "w1", T0 + 2).await.item_id, older);

    // Another stage's backlog, or a job of this one scheduled for later,
    // is not in the way.
    add_one(s, "elsewhere", &next("review", 1, 3), T0 + 3).await;
    let job = claim_one(s, "draft", "w1", T0 + 3).await;
    assert_eq!(job.item_id, newer);
    retry_later(s, &job, T0 + 4, T0 + 60_000).await;
    let third = add_one(s, "third", &next("draft", 1, 3), T0 + 5).await;
    let got: Vec<_> = handed.lock().unwrap().iter().map(|j| j.item_id).collect();
    assert_eq!(got, [third]);
}

pub async fn an_intake_add_hands_off_too(s: &dyn Store) {
    let (_claimer, handed) = Slots::set(s, 1, true);
    let source = IntakeSource {
        key: "sha256:bbbb".into(),
        name: "ideas.txt".into(),
    };
    let ids = match s
        .add_items_once(
            &source,
            &new_items(&["one", "two"]),
            &next("draft", 1, 3),
            T0,
        )
        .await
        .unwrap()
    {
        AddOutcome::Added(ids) => ids,
        other => panic!("a new source adds its items: {other:?}"),
    };
    let got: Vec<_> = handed.lock().unwrap().iter().map(|j| j.item_id).collect();
    assert_eq!(got, ids[..1]);
    assert_eq!(draft_counts(s).await, (1, 1));
    // Taken again: nothing added, nothing handed off.
    let again = s
        .add_items_once(
            &source,
            &new_items(&["three"]),
            &next("draft", 1, 3),
            T0 + 1,
        )
        .await
        .unwrap();
    assert!(matches!(again, AddOutcome::Duplicate(_)), "{again:?}");
    assert_eq!(handed.lock().unwrap().len(), 1);
}

pub async fn a_hand_off_to_a_stopped_engine_gives_the_jobs_back(s: &dyn Store) {
    let (_claimer, handed) = Slots::set(s, 2, false);
    let ids = s
        .add_items(&new_items(&["a", "b"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    assert_eq!(handed.lock().unwrap().len(), 2, "both were claimed");
    for id in &ids {
        let d = s.item(*id).await.unwrap();
        assert_eq!(
            (
                d.jobs[0].state,
                d.jobs[0].attempts,
                d.jobs[0].lease_owner.as_deref()
            ),
            (JobState::Queued, 0, None),
            "given back at once"
        );
        let outcomes: Vec<_> = d.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, [AttemptOutcome::Released]);
    }
    assert_eq!(draft_counts(s).await, (2, 0));
    let again = s.claim("draft", 5, "w2", T0 + 1, T0 + LEASE).await.unwrap();
    assert_eq!(again.iter().map(|j| j.item_id).collect::<Vec<_>>(), ids);
}
