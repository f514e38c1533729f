//! The records that cross the store seam. They serialize to JSON as the CLI's
//! `--json` output, so field names are part of the interface.

use ideamill_core::machine::{LostJob, NextJob, Transition};
use ideamill_core::{AttemptOutcome, ItemId, ItemState, JobId, JobState, Millis, Usage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub text: String,
    /// A JSON object; `{}` when there is none.
    pub metadata: serde_json::Value,
}

/// A job a worker holds. `lease_token` fences its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub id: JobId,
    pub item_id: ItemId,
    pub stage: String,
    pub round: u32,
    /// This try's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease_token: i64,
    /// When the job became runnable; `claimed_at - run_at` is the pickup latency.
    pub run_at: Millis,
    pub claimed_at: Millis,
}

/// What a stage runs with.
#[derive(Debug, Clone, Serialize)]
pub struct ItemContext {
    pub item: ItemRow,
    /// The latest output of each stage that has one, in no particular order.
    pub outputs: Vec<OutputRow>,
    /// Every gate rejection so far, oldest first.
    pub feedback: Vec<FeedbackRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRow {
    pub id: ItemId,
    pub text: String,
    pub metadata: serde_json::Value,
    pub state: ItemState,
    /// The stage of its current (or last) job.
    pub stage: Option<String>,
    pub round: u32,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRow {
    pub stage: String,
    pub round: u32,
    pub job_id: JobId,
    pub output: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRow {
    /// The gate that rejected.
    pub stage: String,
    pub round: u32,
    pub feedback: String,
    pub created_at: Millis,
    /// The round's hash, when the engine took one: the item's workspace as
    /// the gate found it (names and contents of its regular files) and the
    /// feedback. The same hash in two rounds in a row is no progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_hash: Option<String>,
}

/// One finished attempt and what follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub job: ClaimedJob,
    pub owner: String,
    pub outcome: AttemptOutcome,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// The attempt's raw output (stdout), kept on the attempt whatever its outcome.
    pub output: Option<String>,
    pub stderr: Option<String>,
    /// Tokens and cost, for attempts that called a model.
    pub usage: Option<Usage>,
    pub transition: Transition,
    /// A gate's rejection: the round's hash (the workspace as the gate found
    /// it and the feedback), stored with the feedback.
    pub round_hash: Option<String>,
}

/// The budget's rule, for [`crate::Store::reserve`]: whether a reservation
/// may be added to what is spent and reserved.
pub trait Caps: Send + Sync {
    fn admit(&self, spend: &Spend, r: &Reservation) -> bool;
}

/// A model call's worst case, held against the budget caps while the call
/// runs ([`crate::Store::reserve`]). The finish of its job deletes it, in
/// the transaction that records the attempt's actual usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub job_id: JobId,
    pub item_id: ItemId,
    /// Estimated prompt tokens plus the stage's `max_tokens`.
    pub tokens: u64,
    /// `tokens` at the model's price (prompt at the input price, the rest
    /// at the output price).
    pub cost: f64,
    /// Now, by the caller's clock: reservations whose `expires_at` has
    /// passed no longer count.
    pub now: Millis,
    /// When the reservation stops counting if its job never finishes (a
    /// process that died): after the stage's timeout.
    pub expires_at: Millis,
    /// The start of the day the day caps count from.
    pub day_start: Millis,
}

/// What a finish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishEffect {
    pub item_state: ItemState,
    /// A job was enqueued (next stage, send-back or retry).
    pub enqueued: bool,
    /// The item was cancelled while the attempt ran; the transition was dropped.
    pub cancelled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapedJob {
    pub job_id: JobId,
    pub item_id: ItemId,
    pub stage: String,
    /// The process that held the lease.
    pub owner: String,
    pub action: LostJob,
}

/// Work that keeps `--until-idle` running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// Queued jobs runnable by the horizon.
    pub soon: u64,
    pub running: u64,
    /// Queued jobs scheduled after the horizon.
    pub later: u64,
    pub next_run_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub started_at: Millis,
    pub last_beat_at: Millis,
    pub stopped_at: Option<Millis>,
    /// Jobs it holds now (filled by `processes`; ignored by `register_process`).
    pub held_jobs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryEffect {
    pub stage: String,
    pub round: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CancelEffect {
    /// A worker was running it; it has been asked to stop.
    pub was_running: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemDetail {
    pub item: ItemRow,
    /// What people see: queued, running, retrying, done, failed, cancelled.
    pub display_state: String,
    pub jobs: Vec<JobRow>,
    pub attempts: Vec<AttemptRow>,
    pub outputs: Vec<OutputRow>,
    pub feedback: Vec<FeedbackRow>,
    pub events: Vec<Event>,
    /// Tokens and cost of every attempt so far.
    pub usage: UsageTotals,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

impl UsageTotals {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What an item, and everything, has used so far, for budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spend {
    pub item: UsageTotals,
    /// Since the start of the current day (UTC).
    pub day: UsageTotals,
}

/// A job waiting for a budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PausedJob {
    pub job_id: JobId,
    pub item_id: ItemId,
    pub stage: String,
    pub reason: Option<String>,
    pub item_usage: UsageTotals,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub id: JobId,
    pub stage: String,
    pub round: u32,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: Millis,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRow {
    pub id: i64,
    pub job_id: JobId,
    pub stage: String,
    pub round: u32,
    pub attempt: u32,
    pub process: String,
    pub outcome: AttemptOutcome,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub output: Option<String>,
    pub stderr: Option<String>,
    pub usage: Option<Usage>,
}

/// A state people can filter by: the stored states plus what `active` splits into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateFilter {
    Active,
    Queued,
    Running,
    Retrying,
    Paused,
    Done,
    Failed,
    Cancelled,
}

impl StateFilter {
    pub const ALL: &'static [&'static str] = &[
        "active",
        "queued",
        "running",
        "retrying",
        "paused",
        "done",
        "failed",
        "cancelled",
    ];

    pub fn parse(s: &str) -> Option<StateFilter> {
        Some(match s {
            "active" => StateFilter::Active,
            "queued" => StateFilter::Queued,
            "running" => StateFilter::Running,
            "retrying" => StateFilter::Retrying,
            "paused" => StateFilter::Paused,
            "done" => StateFilter::Done,
            "failed" => StateFilter::Failed,
            "cancelled" => StateFilter::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    pub state: Option<StateFilter>,
    pub stage: Option<String>,
    /// Items with an id below this (pages go newest first).
    pub before_id: Option<ItemId>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemSummary {
    pub id: ItemId,
    pub text: String,
    pub state: ItemState,
    pub display_state: String,
    pub stage: Option<String>,
    pub round: u32,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    pub now: Millis,
    pub items: ItemCounts,
    pub stages: Vec<StageCounts>,
    pub running: Vec<RunningJob>,
    pub processes: Vec<ProcessInfo>,
    /// Running jobs whose lease has expired and that no reaper has taken yet.
    pub expired_leases: u64,
    /// The oldest `run_at` among runnable queued jobs.
    pub oldest_runnable_at: Option<Millis>,
    /// Jobs waiting for a budget.
    pub paused: u64,
    /// Model usage since the start of the day (UTC).
    pub today: UsageTotals,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ItemCounts {
    pub active: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    pub stage: String,
    /// Runnable now.
    pub queued: u64,
    /// Waiting for a later `run_at` (backoff).
    pub scheduled: u64,
    pub running: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningJob {
    pub job_id: JobId,
    pub item_id: ItemId,
    pub stage: String,
    pub round: u32,
    pub attempt: u32,
    pub owner: String,
    pub started_at: Millis,
    pub lease_expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: Millis,
    pub kind: String,
    pub item_id: Option<ItemId>,
    pub job_id: Option<JobId>,
    pub process: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub at: Millis,
    pub kind: &'static str,
    pub item_id: Option<ItemId>,
    pub job_id: Option<JobId>,
    pub process: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub item: Option<ItemId>,
    pub kind: Option<String>,
    pub since: Option<Millis>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneCounts {
    pub items: u64,
    pub events: u64,
    /// The pruned items, for their workspace folders to go too.
    #[serde(skip)]
    pub item_ids: Vec<ItemId>,
}

/// Event kinds, in one place so that readers can filter on them.
pub mod event_kind {
    pub const PROCESS_STARTED: &str = "process_started";
    pub const PROCESS_STOPPED: &str = "process_stopped";
    pub const LEASE_EXPIRED: &str = "lease_expired";
    pub const PROCESS_DEAD: &str = "process_dead";
    pub const JOBS_RELEASED: &str = "jobs_released";
    pub const STALE_COMPLETION: &str = "stale_completion";
    pub const RETRY_SCHEDULED: &str = "retry_scheduled";
    pub const GATE_REJECTED: &str = "gate_rejected";
    pub const ITEM_FAILED: &str = "item_failed";
    pub const ITEM_CANCELLED: &str = "item_cancelled";
    pub const ITEM_RETRIED: &str = "item_retried";
    pub const PRUNED: &str = "pruned";
    /// The engine's watchdog or its supervisor found the event loop stalled.
    pub const ENGINE_STALLED: &str = "engine_stalled";
    /// The supervisor started a new engine after a crash or a stall.
    pub const ENGINE_RESTARTED: &str = "engine_restarted";
    /// Too many restarts in a short time: the supervisor stopped.
    pub const SUPERVISOR_GAVE_UP: &str = "supervisor_gave_up";
    pub const BUDGET_REACHED: &str = "budget_reached";
    pub const BUDGET_RESUMED: &str = "budget_resumed";
    /// An engine could not reach the store for a while, then reconnected.
    pub const STORE_OUTAGE: &str = "store_outage";
    /// The store refused to record an attempt's result (data it cannot
    /// hold, a constraint); the attempt was recorded as an error instead.
    pub const RESULT_REFUSED: &str = "result_refused";
    /// An inbox file became items (`ideamill run`'s inbox watcher).
    pub const INBOX_TAKEN: &str = "inbox_taken";
    /// An inbox file held content taken before; it created nothing.
    pub const INBOX_DUPLICATE: &str = "inbox_duplicate";
    /// An inbox file could not be taken; it sits in `inbox/rejected/`.
    pub const INBOX_REJECTED: &str = "inbox_rejected";
    /// `ideamill import` brought records of another system in.
    pub const IMPORTED: &str = "imported";
}

/// Attempts of one stage over a window, for failure rates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageAttempts {
    pub stage: String,
    /// Every finished attempt (cancelled and released ones excluded).
    pub attempts: u64,
    /// Succeeded or rejected by a gate: the stage itself worked.
    pub worked: u64,
    /// Error, timeout, permanent error or lost.
    pub failed: u64,
    /// The newest failure's error, if any.
    pub last_error: Option<String>,
}

/// Where items come from when each source must be taken once: an inbox
/// file (keyed by its content hash) or a record of an imported file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeSource {
    /// Unique per source, in one namespace for every kind of source
    /// (`sha256:<hex>` for inbox files, `legacy:<file>:<id>` for imports).
    pub key: String,
    /// What people call it (a file name, `ideas_log.json #3`), for messages.
    pub name: String,
}

/// A source taken earlier, and what it became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntakeRecord {
    pub key: String,
    /// The name it was first taken under.
    pub name: String,
    /// The items it became, in input order (some may have been pruned since).
    pub item_ids: Vec<ItemId>,
    pub taken_at: Millis,
}

/// What `add_items_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddOutcome {
    /// New items, in input order.
    Added(Vec<ItemId>),
    /// The source was taken before: nothing was added.
    Duplicate(IntakeRecord),
}

/// One record of another system, imported in the state it had there.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedItem {
    /// Its stable key: importing it again creates nothing.
    pub source: IntakeSource,
    pub text: String,
    /// A JSON object; `{}` when there is none.
    pub metadata: serde_json::Value,
    /// When the other system created it (the import time when unknown).
    pub created_at: Millis,
    pub state: ImportedState,
}

/// Where an imported item stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportedState {
    /// New work: `next` is its first job.
    Queued { next: NextJob },
    /// A gate rejected it: every rejection (oldest first) is kept as that
    /// round's feedback, where prompts find it, and it runs `next`.
    Rejected {
        rejections: Vec<Rejection>,
        next: NextJob,
    },
    /// Finished there; nothing runs. `retry --from` can run it again.
    Done,
    /// Failed there with `error`; nothing runs. `stage` is where `retry`
    /// starts it again.
    Failed { error: String, stage: String },
}

/// A gate's rejection brought in from elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The gate that rejected.
    pub stage: String,
    pub round: u32,
    pub feedback: String,
}

/// What `import_items` did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported(ItemId),
    /// Its key was taken before (or earlier in the same batch).
    Skipped(IntakeRecord),
}

/// How a gate's judgement of an item ended, as the QA lift counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateOutcome {
    /// The gate passed the item (its job succeeded).
    Passed,
    /// The gate rejected the item's last round: the item failed there.
    Failed,
    /// The loop ended early because a round changed nothing (its job's
    /// reason begins with `no_progress`).
    NoProgress,
}

impl GateOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            GateOutcome::Passed => "passed",
            GateOutcome::Failed => "failed",
            GateOutcome::NoProgress => "no_progress",
        }
    }
}

/// Gate jobs that ended one way, of one gate stage, in one round, after one
/// model's work: a row of [`Store::gate_tallies`](crate::Store::gate_tallies).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GateTally {
    pub stage: String,
    /// The model of the item's newest model call before the gate judged it
    /// (what wrote the work judged); `None` when no stage called one.
    pub model: Option<String>,
    pub round: u32,
    pub outcome: GateOutcome,
    pub items: u64,
}

/// One time bucket of the dashboard's charts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ActivityBucket {
    /// The bucket's start, ms since the epoch.
    pub start: Millis,
    /// Attempts that finished in it (cancelled and released ones excluded).
    pub attempts: u64,
    /// Of those, the ones that failed: error, timeout, permanent error, lost.
    pub failed_attempts: u64,
    /// Items that ended done in it.
    pub items_done: u64,
    /// Items that ended failed in it.
    pub items_failed: u64,
}

/// What `change_marker` reads: newest ids and running jobs. Equal markers
/// mean nothing people see has changed (but the clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ChangeMarker {
    pub item: i64,
    pub job: i64,
    pub attempt: i64,
    pub event: i64,
    pub running: u64,
}
