//! The loop's rules in the store: budget reservations checked and taken one
//! caller at a time, released by the finish that records the usage; a
//! gate's round hash kept with its feedback.

use std::sync::Arc;

use ideamill_core::Usage;
use ideamill_core::machine::Transition;
use ideamill_store::{Caps, Reservation, Spend, Store};

use crate::support::*;

/// A cap on the item's tokens, as the budget's rule would apply it.
struct ItemTokens(u64);

impl Caps for ItemTokens {
    fn admit(&self, spend: &Spend, r: &Reservation) -> bool {
        spend.item.tokens() + r.tokens <= self.0
    }
}

fn reservation(job_id: i64, item_id: i64, tokens: u64, now: i64) -> Reservation {
    Reservation {
        job_id,
        item_id,
        tokens,
        cost: 0.001,
        now,
        expires_at: now + 60_000,
        day_start: 0,
    }
}

pub async fn concurrent_reservations_never_pass_a_cap(b: &dyn Backend) {
    const CALLERS: usize = 4;
    const CALLS: i64 = 12;
    let setup = b.open().await;
    let item = add_one(&*setup, "an idea", &next("draft", 1, 3), T0).await;
    // Several handles, as several engines sharing one database would be,
    // each reserving for many calls at once against a cap that holds 10.
    let start = Arc::new(tokio::sync::Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS as i64 {
        let store: Arc<dyn Store> = Arc::from(b.open().await);
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let calls = (0..CALLS).map(|n| {
                let store = store.clone();
                async move {
                    let r = reservation(caller * 100 + n, item, 100, T0);
                    store
                        .reserve(&r, &ItemTokens(1_000))
                        .await
                        .expect("reserve")
                        .0
                }
            });
            let taken = futures_util::future::join_all(calls).await;
            store.close().await;
            taken.into_iter().filter(|t| *t).count()
        }));
    }
    let mut taken = 0;
    for task in tasks {
        taken += task.await.expect("the reserving task ran");
    }
    assert_eq!(taken, 10, "exactly as many calls as the cap holds");
    let (more, spend) = setup
        .reserve(&reservation(9_999, item, 1, T0), &ItemTokens(1_000))
        .await
        .unwrap();
    assert!(!more);
    assert_eq!(spend.item.tokens(), 1_000);
    assert!((spend.item.cost - 0.01).abs() < 1e-9, "{spend:?}");
    // The day counts every item's reservations.
    assert_eq!(spend.day.tokens(), 1_000);
    setup.close().await;
}

pub async fn a_finish_releases_its_reservation_and_records_the_usage(s: &dyn Store) {
    let item = add_one(s, "an idea", &next("draft", 1, 3), T0).await;
    let job = claim_one(s, "draft", "w1", T0).await;
    let cap = ItemTokens(1_000);
    assert!(
        s.reserve(&reservation(job.id, item, 800, T0), &cap)
            .await
            .unwrap()
            .0
    );
    // Another call of the item does not fit beside the first one's worst case.
    assert!(
        !s.reserve(&reservation(job.id + 1, item, 300, T0), &cap)
            .await
            .unwrap()
            .0
    );
    // A job's new reservation replaces its own earlier one.
    assert!(
        s.reserve(&reservation(job.id, item, 900, T0), &cap)
            .await
            .unwrap()
            .0
    );
    let mut f = finish(&job, "w1", T0 + 10, advance("v1", None));
    f.usage = Some(Usage {
        provider: "p".into(),
        model: "m".into(),
        prompt_tokens: 150,
        completion_tokens: 50,
        cost: 0.0,
        counted: false,
        unknown: false,
    });
    finish_ok(s, f).await;
    // The call used 200 of its 900: the rest is free again.
    let (taken, spend) = s
        .reserve(&reservation(job.id + 1, item, 800, T0 + 20), &cap)
        .await
        .unwrap();
    assert!(taken, "{spend:?}");
    assert_eq!(spend.item.tokens(), 200);
    // A reservation its finish never deleted stops counting once expired.
    let later = T0 + 20 + 60_001;
    let (taken, spend) = s
        .reserve(&reservation(job.id + 2, item, 800, later), &cap)
        .await
        .unwrap();
    assert!(taken, "{spend:?}");
    assert_eq!(spend.item.tokens(), 200);
}

pub async fn a_gates_round_hash_is_kept_with_its_feedback(s: &dyn Store) {
    let id = add_one(s, "an idea", &next("qa", 1, 3), T0).await;
    let job = claim_one(s, "qa", "w1", T0).await;
    let mut f = finish(
        &job,
        "w1",
        T0 + 1,
        Transition::SendBack {
            feedback: "No tests found".into(),
            to: next("qa", 2, 3),
        },
    );
    f.round_hash = Some("abc123".into());
    finish_ok(s, f).await;
    let context = s.context(id).await.unwrap();
    assert_eq!(context.feedback.len(), 1);
    assert_eq!(context.feedback[0].round_hash.as_deref(), Some("abc123"));
    assert_eq!(
        s.item(id).await.unwrap().feedback[0].round_hash.as_deref(),
        Some("abc123")
    );
    // Without a hash, the feedback has none.
    let job = claim_one(s, "qa", "w1", T0 + 2).await;
    finish_ok(
        s,
        finish(
            &job,
            "w1",
            T0 + 3,
            Transition::SendBack {
                feedback: "again".into(),
                to: next("qa", 3, 3),
            },
        ),
    )
    .await;
    let context = s.context(id).await.unwrap();
    assert_eq!(context.feedback[1].round_hash, None);
}
