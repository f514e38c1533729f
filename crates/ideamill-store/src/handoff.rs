//! Hand-off: an engine in this process takes the first jobs of the items
//! added through its store in the add's own transaction, when it has free
//! slots for them. The idea then starts without a second commit (a claim)
//! and without a wake-up round, which is most of a pickup on a database
//! server: one durable commit instead of two.
//!
//! The engine registers a [`Claimer`]; an add asks it for free slots
//! ([`Claimer::reserve`]), inserts up to that many of its jobs as running
//! under the engine's lease, and hands the committed jobs over
//! ([`Reserved::hand_off`]). New jobs are taken only when no older job of
//! their stage is waiting, so an add never jumps the queue. A job handed to
//! an engine that stopped meanwhile is given back at once; one whose
//! process dies before it runs is rescued when its lease expires, as any
//! claimed job is.

use std::sync::{Arc, RwLock};

use ideamill_core::Millis;

use crate::ClaimedJob;

/// An engine of this process that starts new items' first jobs itself.
pub trait Claimer: Send + Sync {
    /// Free slots of `stage`, held for up to `wanted` new jobs until the
    /// reservation is handed off or dropped; `None` when there are none or
    /// the engine is stopping.
    fn reserve(&self, stage: &str, wanted: usize) -> Option<Box<dyn Reserved>>;
}

/// Slots held for the jobs of one add.
pub trait Reserved: Send {
    /// The process the jobs are leased to.
    fn owner(&self) -> &str;
    /// How many jobs the slots take.
    fn slots(&self) -> u32;
    /// How long a lease runs from the claim.
    fn lease(&self) -> Millis;
    /// The jobs claimed for these slots, committed (the slots they did not
    /// use are freed). False when the engine no longer takes jobs: the
    /// caller must give them back.
    fn hand_off(self: Box<Self>, jobs: Vec<ClaimedJob>) -> bool;
}

/// The claimer a store hands new jobs to, if any.
#[derive(Default)]
pub(crate) struct ClaimerSlot(RwLock<Option<Arc<dyn Claimer>>>);

impl ClaimerSlot {
    pub(crate) fn set(&self, claimer: Arc<dyn Claimer>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(claimer);
    }

    /// Forget `claimer` if it is the one registered (another engine of this
    /// process may have registered since).
    pub(crate) fn unset(&self, claimer: &Arc<dyn Claimer>) {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, claimer)) {
            *slot = None;
        }
    }

    pub(crate) fn reserve(&self, stage: &str, wanted: usize) -> Option<Box<dyn Reserved>> {
        if wanted == 0 {
            return None;
        }
        let claimer = self.0.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        claimer.reserve(stage, wanted)
    }
}

impl std::fmt::Debug for ClaimerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().map(|c| c.is_some()).unwrap_or(false);
        f.debug_tuple("ClaimerSlot").field(&set).finish()
    }
}

/// What an add's statements need to claim for a reservation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claim<'a> {
    pub owner: &'a str,
    pub slots: u32,
    pub lease: Millis,
}

impl<'a> Claim<'a> {
    pub(crate) fn of(reserved: &'a dyn Reserved) -> Claim<'a> {
        Claim {
            owner: reserved.owner(),
            slots: reserved.slots(),
            lease: reserved.lease(),
        }
    }
}

/// New items' ids in input order, and the first jobs claimed with them.
#[derive(Debug, Default)]
pub(crate) struct NewItems {
    pub ids: Vec<ideamill_core::ItemId>,
    pub claimed: Vec<ClaimedJob>,
}

impl NewItems {
    /// Whether some new job was left queued (other engines must be woken).
    pub(crate) fn any_queued(&self) -> bool {
        self.claimed.len() < self.ids.len()
    }
}
