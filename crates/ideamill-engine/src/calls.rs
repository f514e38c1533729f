//! The engine's hot-path store calls counted and timed, so that a benchmark
//! can say where a run's time went (claims, context reads, finishes) without
//! a profiler. Two clock reads and two relaxed atomic adds per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many hot-path store calls a run made and how long they took. Claims
/// are made one at a time by the dispatcher and finishes by the completer
/// (at most two at once), so their times compared with the run's say how
/// busy each was; context reads overlap, so theirs is a sum over jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCalls {
    /// Claim calls (each one statement, for any number of jobs).
    pub claims: u64,
    /// Time spent in them.
    pub claim_time: Duration,
    /// Context reads (one per job started without its context: handed off
    /// by an add, or claimed from a store that did not read it along).
    pub context_reads: u64,
    /// Time spent in them, summed over jobs.
    pub context_time: Duration,
    /// Finish calls (each one transaction, for a batch of attempts).
    pub finish_batches: u64,
    /// Time spent in them.
    pub finish_time: Duration,
    /// Jobs claimed by an add in this process and handed to the dispatcher
    /// (no claim call of their own).
    pub handed_off: u64,
}

/// The running counts behind [`StoreCalls`].
#[derive(Default)]
pub(crate) struct CallCounters {
    claims: Counter,
    contexts: Counter,
    finishes: Counter,
    handed_off: AtomicU64,
}

#[derive(Default)]
struct Counter {
    calls: AtomicU64,
    nanos: AtomicU64,
}

impl Counter {
    fn add(&self, since: Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn read(&self) -> (u64, Duration) {
        (
            self.calls.load(Ordering::Relaxed),
            Duration::from_nanos(self.nanos.load(Ordering::Relaxed)),
        )
    }
}

impl CallCounters {
    pub(crate) fn claim(&self, since: Instant) {
        self.claims.add(since);
    }

    pub(crate) fn context(&self, since: Instant) {
        self.contexts.add(since);
    }

    pub(crate) fn finish(&self, since: Instant) {
        self.finishes.add(since);
    }

    pub(crate) fn handed_off(&self, jobs: u64) {
        self.handed_off.fetch_add(jobs, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StoreCalls {
        let (claims, claim_time) = self.claims.read();
        let (context_reads, context_time) = self.contexts.read();
        let (finish_batches, finish_time) = self.finishes.read();
        StoreCalls {
            claims,
            claim_time,
            context_reads,
            context_time,
            finish_batches,
            finish_time,
            handed_off: self.handed_off.load(Ordering::Relaxed),
        }
    }
}
