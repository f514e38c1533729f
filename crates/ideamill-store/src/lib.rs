//! ideamill's durable store. [`Store`] is the seam between the engine and a
//! database: every state transition is one of its methods and one
//! transaction. SQLite (`sqlite/`) and PostgreSQL (`postgres/`) implement
//! it with the same semantics, checked by one conformance suite, so nothing
//! backend-specific may appear in its signatures. What both do alike is
//! written once (`shared/`, over each backend's `Backend`); each backend
//! keeps its hot paths (claim, finish, heartbeat, release, context, queue
//! depth) and what only it has.

mod common;
mod contexts;
mod dashboard;
mod error;
mod handoff;
pub mod postgres;
pub mod seed;
mod shared;
pub mod sqlite;
pub mod transfer;
mod types;
pub mod wake;

use async_trait::async_trait;
use ideamill_core::machine::{NextJob, Transition};
use ideamill_core::{ItemId, Millis};

pub use common::{NUL_NOTE, day_start};
pub use dashboard::{GateLift, LIFT_ROUNDS, gate_lift, round_label, search_terms};
pub use error::StoreError;
pub use handoff::{Claimer, Reserved};
pub use types::*;
pub use wake::WorkSignal;

/// A store call's result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Open the store a URL names, applying migrations.
pub async fn open(url: &str, options: &OpenOptions) -> Result<Box<dyn Store>> {
    if url.starts_with("sqlite://") {
        Ok(Box::new(sqlite::SqliteStore::open(url, options).await?))
    } else if is_postgres_url(url) {
        Ok(Box::new(postgres::PostgresStore::open(url, options).await?))
    } else {
        Err(StoreError::Unsupported(format!(
            "unknown store URL scheme in {}",
            redact_url(url)
        )))
    }
}

/// Whether a store URL names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Options for opening a store.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Folder for wake-up sockets; `None` disables cross-process wake-ups
    /// (the engine then relies on its poll).
    pub wake_dir: Option<std::path::PathBuf>,
    /// Open without creating or migrating (read-only commands on a missing
    /// store fail clearly instead of creating one).
    pub must_exist: bool,
}

/// What an idle process's beat learns ([`Store::idle_beat`]); `true` means
/// "maybe": the housekeeping asks for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleBeat {
    /// A lease has expired: the reaper has work.
    pub expired_leases: bool,
    /// A job is paused (by a budget): the budget check may resume it.
    pub paused_jobs: bool,
    /// Another process, not marked gone, beat last before `silent_since`.
    pub silent_processes: bool,
}

impl IdleBeat {
    /// Every question left to its own read.
    pub const MAYBE: IdleBeat = IdleBeat {
        expired_leases: true,
        paused_jobs: true,
        silent_processes: true,
    };
}

/// The durable state of the mill. Implementations must make each method one
/// transaction, and must never let a completion commit unless its lease
/// token still holds.
#[async_trait]
pub trait Store: Send + Sync {
    /// Add items, each with its first job, in one transaction, and wake
    /// every engine (or hand the jobs to this process's claimer, which
    /// then runs them: see [`Store::set_claimer`]). Returns the new ids in
    /// input order.
    async fn add_items(
        &self,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
    ) -> Result<Vec<ItemId>>;

    /// Claim up to `limit` runnable jobs of `stage` for `owner`, leased
    /// until `lease_until`. One statement.
    async fn claim(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedJob>>;

    /// [`Store::claim`], each job with its item's context where the store
    /// reads it along with the claim (`None` where it does not: ask
    /// [`Store::context`]), so that a claimed job starts without another
    /// trip to the store.
    async fn claim_with_contexts(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<(ClaimedJob, Option<ItemContext>)>>;

    /// What a stage needs to run: the item, earlier outputs, feedback.
    async fn context(&self, item: ItemId) -> Result<ItemContext>;

    /// Apply finished attempts, each atomically with its transition. A
    /// finish whose lease token no longer holds is discarded (and recorded as
    /// an event); its slot in the result is `Err(StoreError::LeaseLost)`.
    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>>;

    /// Renew the leases of the jobs in `running` that `owner` holds, and beat
    /// its process row. `running` names the jobs whose work is still going on
    /// in the process: a job it holds but no longer runs (its task ended and
    /// its result was never committed) is not renewed, so that its lease
    /// expires and the reaper gives it back. Returns the renewed jobs someone
    /// asked to cancel.
    async fn heartbeat(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        running: &[JobId],
    ) -> Result<Vec<JobId>>;

    /// The beat of a process that runs no job: beat its process row and say
    /// whether its housekeeping has anything to do ([`IdleBeat`]), so that
    /// it asks the store nothing more while the answer is no. A process
    /// that beat before `silent_since` counts as silent. An idle engine's
    /// only store work every few seconds: one statement on SQLite;
    /// PostgreSQL beats as [`Store::heartbeat`] does and answers
    /// [`IdleBeat::MAYBE`], leaving each question to its own read.
    async fn idle_beat(&self, owner: &str, now: Millis, silent_since: Millis) -> Result<IdleBeat>;

    /// Make jobs whose leases expired runnable again (or fail or cancel
    /// them), recording an event for each. Safe to run in every process.
    async fn reap_expired(&self, now: Millis) -> Result<Vec<ReapedJob>>;

    /// Expire at once the leases of processes known to be dead (same host,
    /// pid gone), so a restart recovers their work without waiting.
    async fn expire_process(&self, process: &str, now: Millis) -> Result<u64>;

    /// Held jobs of `owner` that someone asked to cancel.
    async fn cancel_requests(&self, owner: &str) -> Result<Vec<JobId>>;

    /// Give back every job `owner` still holds (graceful shutdown).
    async fn release(&self, owner: &str, now: Millis) -> Result<u64>;

    /// The earliest `run_at` of any queued job of these stages.
    async fn next_run_at(&self, stages: &[String]) -> Result<Option<Millis>>;

    /// Queued jobs runnable by `horizon` plus running jobs, for `--until-idle`.
    async fn pending(&self, horizon: Millis) -> Result<Pending>;

    /// Record a starting process (its row, and a `process_started` event).
    async fn register_process(&self, process: &ProcessInfo) -> Result<()>;
    /// Mark the process stopped at `now`.
    async fn stop_process(&self, id: &str, now: Millis) -> Result<()>;
    /// Processes that have not stopped, newest first.
    async fn processes(&self) -> Result<Vec<ProcessInfo>>;

    /// Run a failed, cancelled or done item again as `next`, or make an
    /// item waiting for its backoff runnable now.
    async fn retry_item(&self, id: ItemId, next: &NextJob, now: Millis) -> Result<RetryEffect>;
    /// Cancel an item: its queued jobs at once, a running one by asking its worker to stop.
    async fn cancel_item(&self, id: ItemId, now: Millis) -> Result<CancelEffect>;

    /// One item with its jobs, attempts, outputs, feedback and events.
    async fn item(&self, id: ItemId) -> Result<ItemDetail>;
    /// A page of items, newest first.
    async fn list_items(&self, filter: &ItemFilter) -> Result<Vec<ItemSummary>>;
    /// Item and job counts, running jobs and processes, as of `now`.
    async fn status(&self, now: Millis) -> Result<StatusSnapshot>;
    /// Events matching `filter`, newest first.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>>;
    /// Record one event.
    async fn record_event(&self, event: &NewEvent) -> Result<()>;

    /// Model usage of `item`, and of everything since `day_start`.
    async fn spend(&self, item: ItemId, day_start: Millis) -> Result<Spend>;

    /// Reserve a model call's worst case unless it would pass a cap: one
    /// transaction that concurrent callers, in every process, take one at a
    /// time. It reads, in one snapshot, what is spent (recorded attempts)
    /// and reserved (live reservations) for `r`'s item and for the day since
    /// `r.day_start`, asks `caps` whether `r` may be added, and
    /// inserts `r` only if so, replacing any earlier reservation of the
    /// same job. Returns whether it was reserved and what was spent and
    /// reserved before it (reserved tokens counted as prompt tokens).
    async fn reserve(&self, r: &Reservation, caps: &dyn Caps) -> Result<(bool, Spend)>;

    /// Jobs waiting for a budget.
    async fn paused_jobs(&self) -> Result<Vec<PausedJob>>;

    /// Make paused jobs runnable again (a cap was raised).
    async fn resume_jobs(&self, jobs: &[JobId], now: Millis) -> Result<u64>;

    /// Delete finished items (and their jobs, attempts, outputs) and events
    /// older than `before`. Never touches unfinished work.
    async fn prune(&self, before: Millis) -> Result<PruneCounts>;

    /// A wake-up signal that fires when another process adds work.
    fn subscribe(&self) -> Result<Box<dyn WorkSignal>>;

    /// Wake every engine (after a change made outside `add_items`).
    fn notify(&self);

    /// Let `claimer` (an engine of this process) take the first jobs of the
    /// items added through this store (`add_items`, `add_items_once`) in
    /// the add's own transaction while it has free slots (`handoff.rs`).
    fn set_claimer(&self, claimer: std::sync::Arc<dyn Claimer>);

    /// Stop handing new jobs to `claimer`, if it is the one set.
    fn unset_claimer(&self, claimer: &std::sync::Arc<dyn Claimer>);

    /// Close the connections; later calls fail.
    async fn close(&self);

    /// The database's own consistency check (SQLite: `PRAGMA quick_check`).
    /// Returns the problems found; empty means healthy.
    async fn quick_check(&self) -> Result<Vec<String>>;

    /// Attempts per stage that finished at or after `since`, by kind of
    /// outcome, for failure rates. Implementations may bound the work to the
    /// most recent attempts (tens of thousands), so that the cost does not
    /// grow with history.
    async fn attempt_stats(&self, since: Millis) -> Result<Vec<StageAttempts>>;

    /// Jobs per stage: runnable now, scheduled later, running. One cheap
    /// read, for the heartbeat's status file and the metrics.
    async fn queue_depth(&self, now: Millis) -> Result<Vec<StageCounts>>;

    /// Add items from one source unless that source was taken before, in one
    /// transaction: the check, the items with their first jobs, and the
    /// source's record. A source taken before adds nothing and returns its
    /// record (`AddOutcome::Duplicate`). Wakes every engine when it adds.
    async fn add_items_once(
        &self,
        source: &IntakeSource,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
    ) -> Result<AddOutcome>;

    /// Import records of another system in the states they had there, in one
    /// transaction. Each record's source key is taken once: a key taken
    /// before (or earlier in `items`) is skipped, so importing the same
    /// records again creates nothing. Returns one outcome per record, in
    /// input order. Wakes every engine when it queued work.
    async fn import_items(&self, items: &[ImportedItem], now: Millis)
    -> Result<Vec<ImportOutcome>>;

    /// Items whose text holds every word of `text` (each as the start of a
    /// word, without case: [`search_terms`]), with `filter`'s state, stage,
    /// page and limit, newest first. Served by a text index, so the cost
    /// follows the matches, not the size of the table. Text without a letter
    /// or digit matches nothing.
    async fn search_items(&self, filter: &ItemFilter, text: &str) -> Result<Vec<ItemSummary>>;

    /// Finished attempts and items per `bucket` ms from `since` to now,
    /// oldest first, empty buckets included, for the dashboard's charts.
    async fn activity(
        &self,
        since: Millis,
        bucket: Millis,
        now: Millis,
    ) -> Result<Vec<ActivityBucket>>;

    /// Gate jobs that ended, per gate stage, model, round and outcome
    /// (passed; rejected in the last round; ended early as `no_progress`),
    /// over every item the store holds, for the QA lift. `gates` names the
    /// gate stages: the store does not know which stages are gates. A job
    /// counts once, so an item run again by hand is judged again. Read from
    /// counters the finishes keep (a few rows, however long the history).
    async fn gate_tallies(&self, gates: &[String]) -> Result<Vec<GateTally>>;

    /// What [`Store::gate_tallies`] answers, judged again from every
    /// finished job of the gates rather than read from the counters: slow
    /// (it reads the whole history), for checking the counters.
    #[doc(hidden)]
    async fn gate_tallies_scanned(&self, gates: &[String]) -> Result<Vec<GateTally>>;

    /// Marks that change whenever something people see changes (an item,
    /// job, attempt or event added, a job claimed or given back), read in
    /// one cheap statement, for live updates.
    async fn change_marker(&self) -> Result<ChangeMarker>;

    /// Whether every call is a round trip to a database server (PostgreSQL)
    /// rather than to an embedded database: callers should then send fewer,
    /// larger requests and overlap them. Not a semantic difference.
    fn is_remote(&self) -> bool {
        false
    }

    /// The store's own clock, in ms since the Unix epoch, where the store
    /// judges leases by it rather than by the `now` callers pass: on
    /// PostgreSQL the database server's (claims, heartbeats, the reaper and
    /// `status`'s expired leases ignore the `now` they are given, so that
    /// machines whose clocks disagree still agree on leases). `None` where
    /// the caller's clock is the only one (SQLite: one machine). `doctor`
    /// compares it with this machine's.
    async fn clock_millis(&self) -> Result<Option<Millis>> {
        Ok(None)
    }
}

pub use ideamill_core::JobId;

/// Hide a password in a store URL before it reaches a message.
pub fn redact_url(url: &str) -> String {
    ideamill_core::config::redact_url_secret(url)
}

/// Used by implementations to keep the transition types in one place.
pub(crate) fn transition_job_state(t: &Transition) -> ideamill_core::JobState {
    use ideamill_core::JobState;
    match t {
        Transition::Advance { .. } => JobState::Succeeded,
        Transition::SendBack { .. } => JobState::Rejected,
        Transition::RetryAt { .. } => JobState::Queued,
        Transition::FailItem { .. } => JobState::Failed,
        Transition::Cancel => JobState::Cancelled,
        Transition::Pause { .. } => JobState::Paused,
    }
}
