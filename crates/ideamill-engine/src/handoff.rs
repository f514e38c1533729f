//! The engine's side of the hand-off (`ideamill_store::Claimer`): an item
//! added in this process (the API, the dashboard, the inbox) has its first
//! job claimed in the add's own transaction when its stage has a free slot
//! here, and the job comes to the dispatcher through a channel, with the
//! slot it fills. No claim statement, no wake-up round: on PostgreSQL one
//! durable commit per pickup instead of two.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ideamill_core::Millis;
use ideamill_store::{ClaimedJob, Claimer, Reserved};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Jobs an add claimed for this engine, and the slots they fill (one
/// permit each).
pub(crate) struct HandedOff {
    pub jobs: Vec<ClaimedJob>,
    pub slots: OwnedSemaphorePermit,
}

/// The stages' slots, shared with the dispatcher, offered to adds until
/// the engine stops claiming.
pub(crate) struct LocalClaims {
    owner: String,
    lease: Millis,
    slots: HashMap<String, Arc<Semaphore>>,
    to_dispatcher: mpsc::UnboundedSender<HandedOff>,
    open: AtomicBool,
}

impl LocalClaims {
    pub(crate) fn new(
        owner: String,
        lease: Millis,
        slots: HashMap<String, Arc<Semaphore>>,
        to_dispatcher: mpsc::UnboundedSender<HandedOff>,
    ) -> LocalClaims {
        LocalClaims {
            owner,
            lease,
            slots,
            to_dispatcher,
            open: AtomicBool::new(true),
        }
    }

    /// Reserve nothing more: the engine is stopping.
    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }
}

impl Claimer for LocalClaims {
    fn reserve(&self, stage: &str, wanted: usize) -> Option<Box<dyn Reserved>> {
        if !self.open.load(Ordering::SeqCst) {
            return None;
        }
        let slots = self.slots.get(stage)?;
        let n = wanted.min(slots.available_permits());
        if n == 0 {
            return None;
        }
        let permit = slots
            .clone()
            .try_acquire_many_owned(u32::try_from(n).ok()?)
            .ok()?;
        Some(Box::new(Reservation {
            owner: self.owner.clone(),
            lease: self.lease,
            permit,
            to_dispatcher: self.to_dispatcher.clone(),
        }))
    }
}

/// Slots held for one add; dropped unused, they are free again.
struct Reservation {
    owner: String,
    lease: Millis,
    permit: OwnedSemaphorePermit,
    to_dispatcher: mpsc::UnboundedSender<HandedOff>,
}

impl Reserved for Reservation {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn slots(&self) -> u32 {
        u32::try_from(self.permit.num_permits()).unwrap_or(u32::MAX)
    }

    fn lease(&self) -> Millis {
        self.lease
    }

    fn hand_off(self: Box<Self>, jobs: Vec<ClaimedJob>) -> bool {
        let Reservation {
            mut permit,
            to_dispatcher,
            ..
        } = *self;
        if jobs.is_empty() {
            return true;
        }
        let unused = permit.num_permits().saturating_sub(jobs.len());
        if unused > 0 {
            drop(permit.split(unused));
        }
        to_dispatcher
            .send(HandedOff {
                jobs,
                slots: permit,
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64) -> ClaimedJob {
        ClaimedJob {
            id,
            item_id: id,
            stage: "s".into(),
            round: 1,
            attempt: 1,
            max_attempts: 3,
            lease_token: 1,
            run_at: 0,
            claimed_at: 0,
        }
    }

    fn claims(
        free: usize,
    ) -> (
        LocalClaims,
        Arc<Semaphore>,
        mpsc::UnboundedReceiver<HandedOff>,
    ) {
        let slots = Arc::new(Semaphore::new(free));
        let (tx, rx) = mpsc::unbounded_channel();
        let claims = LocalClaims::new(
            "me".into(),
            30_000,
            HashMap::from([("s".to_string(), slots.clone())]),
            tx,
        );
        (claims, slots, rx)
    }

    #[test]
    fn a_reservation_holds_at_most_the_free_slots_and_frees_what_it_did_not_use() {
        let (claims, slots, mut rx) = claims(3);
        let r = claims.reserve("s", 5).expect("free slots");
        assert_eq!((r.owner(), r.slots(), r.lease()), ("me", 3, 30_000));
        assert_eq!(slots.available_permits(), 0);
        assert!(claims.reserve("s", 1).is_none(), "no slot left");
        assert!(r.hand_off(vec![job(1)]));
        // One slot goes with the job; the other two are free again.
        assert_eq!(slots.available_permits(), 2);
        let handed = rx.try_recv().expect("handed to the dispatcher");
        assert_eq!((handed.jobs.len(), handed.slots.num_permits()), (1, 1));
        drop(handed);
        assert_eq!(slots.available_permits(), 3);
    }

    #[test]
    fn nothing_is_reserved_for_an_unknown_stage_or_once_closed() {
        let (claims, slots, _rx) = claims(2);
        assert!(claims.reserve("other", 1).is_none());
        let dropped = claims.reserve("s", 1).expect("a free slot");
        drop(dropped);
        assert_eq!(
            slots.available_permits(),
            2,
            "a dropped reservation frees its slots"
        );
        claims.close();
        assert!(claims.reserve("s", 1).is_none());
    }

    #[test]
    fn a_hand_off_to_a_stopped_dispatcher_says_so() {
        let (claims, _slots, rx) = claims(1);
        let r = claims.reserve("s", 1).expect("a free slot");
        drop(rx);
        assert!(
            !r.hand_off(vec![job(1)]),
            "the caller must give the job back"
        );
    }
}
