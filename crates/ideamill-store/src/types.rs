//! The records that cross the store seam. They serialize to JSON as the CLI's
//! `--json` output, so field names are part of the interface.

use ideamill_core::machine::{LostJob, NextJob, Transition};
use ideamill_core::{
    AttemptOutcome, FailureClass, ItemId, ItemState, JobId, JobState, Millis, Usage,
};
use serde::{Deserialize, Serialize};

/// An idea to add as a new item.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// The idea itself: what the stages work on.
    pub text: String,
    /// A JSON object; `{}` when there is none.
    pub metadata: serde_json::Value,
}

/// A job a worker holds. `lease_token` fences its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    /// The job's id.
    pub id: JobId,
    /// Its item's id.
    pub item_id: ItemId,
    /// The stage it runs.
    pub stage: String,
    /// Its gate round, from 1.
    pub round: u32,
    /// This try's number, from 1.
    pub attempt: u32,
    /// Tries before the job fails.
    pub max_attempts: u32,
    /// Changes with every claim; a finish whose token no longer matches is discarded.
    pub lease_token: i64,
    /// When the job became runnable; `claimed_at - run_at` is the pickup latency.
    pub run_at: Millis,
    /// When this worker claimed it.
    pub claimed_at: Millis,
}

/// What a stage runs with.
#[derive(Debug, Clone, Serialize)]
pub struct ItemContext {
    /// The item itself.
    pub item: ItemRow,
    /// The latest output of each stage that has one, in no particular order.
    pub outputs: Vec<OutputRow>,
    /// Every gate rejection so far, oldest first.
    pub feedback: Vec<FeedbackRow>,
    /// The W3C `traceparent` of the attempt this context is for, when traces
    /// are on: set by the engine (never by the store) and given to the
    /// programs a stage runs as `TRACEPARENT`.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

/// One item as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRow {
    /// Its id, in order of creation.
    pub id: ItemId,
    /// The idea, as added.
    pub text: String,
    /// A JSON object given with the idea; `{}` when there is none.
    pub metadata: serde_json::Value,
    /// Where it stands.
    pub state: ItemState,
    /// The stage of its current (or last) job.
    pub stage: Option<String>,
    /// Its current gate round, from 1.
    pub round: u32,
    /// The error of its last failed attempt, if any.
    pub last_error: Option<String>,
    /// Why a failed item failed; `None` unless it is failed (or when it
    /// failed before the store kept this).
    #[serde(default)]
    pub failure_class: Option<FailureClass>,
    /// When it was added.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// When it ended done, failed or cancelled.
    pub finished_at: Option<Millis>,
    /// Its OpenTelemetry trace id (32 hex digits), random, given by the
    /// store when the item is added; `None` only in rows made by hand.
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// What one stage produced for an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRow {
    /// The stage that produced it.
    pub stage: String,
    /// The gate round it was produced in.
    pub round: u32,
    /// The job that produced it.
    pub job_id: JobId,
    /// The output itself.
    pub output: String,
    /// When it was stored.
    pub created_at: Millis,
}

/// A gate's rejection of an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRow {
    /// The gate that rejected.
    pub stage: String,
    /// The round it rejected.
    pub round: u32,
    /// The gate's reasons.
    pub feedback: String,
    /// When it was stored.
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
    /// The job the attempt ran.
    pub job: ClaimedJob,
    /// The process that ran it (the lease holder).
    pub owner: String,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// When the attempt started.
    pub started_at: Millis,
    /// When it ended.
    pub finished_at: Millis,
    /// The process's exit code, if a process ran and exited.
    pub exit_code: Option<i32>,
    /// A note: the error, or a truncation warning.
    pub error: Option<String>,
    /// The attempt's raw output (stdout), kept on the attempt whatever its outcome.
    pub output: Option<String>,
    /// What the process wrote to stderr, if anything.
    pub stderr: Option<String>,
    /// Tokens and cost, for attempts that called a model.
    pub usage: Option<Usage>,
    /// What the state machine says happens next.
    pub transition: Transition,
    /// A gate's rejection: the round's hash (the workspace as the gate found
    /// it and the feedback), stored with the feedback.
    pub round_hash: Option<String>,
}

/// The budget's rule, for [`crate::Store::reserve`]: whether a reservation
/// may be added to what is spent and reserved.
pub trait Caps: Send + Sync {
    /// Whether `r` fits under every cap on top of `spend` (spent and reserved).
    fn admit(&self, spend: &Spend, r: &Reservation) -> bool;
}

/// A model call's worst case, held against the budget caps while the call
/// runs ([`crate::Store::reserve`]). The finish of its job deletes it, in
/// the transaction that records the attempt's actual usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The job whose call it holds budget for.
    pub job_id: JobId,
    /// That job's item (the item cap counts it).
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
    /// The item's state after the finish.
    pub item_state: ItemState,
    /// A job was enqueued (next stage, send-back or retry).
    pub enqueued: bool,
    /// The item was cancelled while the attempt ran; the transition was dropped.
    pub cancelled: bool,
}

/// A job whose lease expired, and what the reaper did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapedJob {
    /// The job's id.
    pub job_id: JobId,
    /// Its item's id.
    pub item_id: ItemId,
    /// The stage it ran.
    pub stage: String,
    /// The process that held the lease.
    pub owner: String,
    /// What the reaper did with it.
    pub action: LostJob,
}

/// Work that keeps `--until-idle` running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// Queued jobs runnable by the horizon.
    pub soon: u64,
    /// Running jobs.
    pub running: u64,
    /// Queued jobs scheduled after the horizon.
    pub later: u64,
    /// The earliest `run_at` of any queued job.
    pub next_run_at: Option<Millis>,
}

/// One engine process, as registered in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Unique: `<host>-<pid>-<random>`.
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its OS process id.
    pub pid: u32,
    /// `ideamill <version>` of its binary.
    pub version: String,
    /// When it started.
    pub started_at: Millis,
    /// Its last heartbeat.
    pub last_beat_at: Millis,
    /// When it stopped cleanly; `None` while it runs (or if it died).
    pub stopped_at: Option<Millis>,
    /// Jobs it holds now (filled by `processes`; ignored by `register_process`).
    pub held_jobs: u64,
}

/// Where a retried item runs again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryEffect {
    /// The stage of the job enqueued.
    pub stage: String,
    /// Its gate round.
    pub round: u32,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CancelEffect {
    /// A worker was running it; it has been asked to stop.
    pub was_running: bool,
}

/// Everything about one item, for `show` and the web.
#[derive(Debug, Clone, Serialize)]
pub struct ItemDetail {
    /// The item itself.
    pub item: ItemRow,
    /// What people see: queued, running, retrying, done, failed, cancelled.
    pub display_state: String,
    /// Its jobs, oldest first.
    pub jobs: Vec<JobRow>,
    /// Every attempt of its jobs, oldest first.
    pub attempts: Vec<AttemptRow>,
    /// Every stored output.
    pub outputs: Vec<OutputRow>,
    /// Every gate rejection.
    pub feedback: Vec<FeedbackRow>,
    /// Events about the item.
    pub events: Vec<Event>,
    /// Tokens and cost of every attempt so far.
    pub usage: UsageTotals,
}

/// Tokens and cost summed over attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// US dollars.
    pub cost: f64,
}

impl UsageTotals {
    /// Prompt and completion tokens together.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What an item, and everything, has used so far, for budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spend {
    /// Of the item.
    pub item: UsageTotals,
    /// Since the start of the current day (UTC).
    pub day: UsageTotals,
}

/// A job waiting for a budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PausedJob {
    /// The job's id.
    pub job_id: JobId,
    /// Its item's id.
    pub item_id: ItemId,
    /// Its stage.
    pub stage: String,
    /// Which budget it waits for.
    pub reason: Option<String>,
    /// What its item has used so far.
    pub item_usage: UsageTotals,
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    /// Its id.
    pub id: JobId,
    /// The stage it runs.
    pub stage: String,
    /// Its gate round, from 1.
    pub round: u32,
    /// Where it stands.
    pub state: JobState,
    /// Tries started so far.
    pub attempts: u32,
    /// Tries before it fails.
    pub max_attempts: u32,
    /// When it becomes (or became) runnable.
    pub run_at: Millis,
    /// The process holding its lease, while running.
    pub lease_owner: Option<String>,
    /// When that lease expires unless renewed.
    pub lease_expires_at: Option<Millis>,
    /// The error of its last failed try, if any.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: Millis,
    /// When it ended.
    pub finished_at: Option<Millis>,
}

/// One try of a job, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRow {
    /// Its id.
    pub id: i64,
    /// The job it belongs to.
    pub job_id: JobId,
    /// The job's stage.
    pub stage: String,
    /// The job's gate round.
    pub round: u32,
    /// The try's number, from 1.
    pub attempt: u32,
    /// The process that ran it.
    pub process: String,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// When it started.
    pub started_at: Millis,
    /// When it ended.
    pub finished_at: Millis,
    /// The process's exit code, if a process ran and exited.
    pub exit_code: Option<i32>,
    /// A note: the error, or a truncation warning.
    pub error: Option<String>,
    /// The raw output (stdout, or the model's answer).
    pub output: Option<String>,
    /// What the process wrote to stderr, if anything.
    pub stderr: Option<String>,
    /// Tokens and cost, for tries that called a model.
    pub usage: Option<Usage>,
}

/// A state people can filter by: the stored states plus what `active` splits into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateFilter {
    /// Not finished: queued, running, retrying or paused.
    Active,
    /// Waiting for a worker, never tried yet.
    Queued,
    /// A worker runs it now.
    Running,
    /// Waiting for the backoff after a failed try.
    Retrying,
    /// Waiting for a budget.
    Paused,
    /// Every stage passed.
    Done,
    /// Failed for good.
    Failed,
    /// Cancelled by someone.
    Cancelled,
}

impl StateFilter {
    /// The names `parse` accepts, as the CLI and the web show them.
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

    /// The filter named `s`; `None` for an unknown name.
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

/// Which items `list_items` returns.
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    /// Only items in this state.
    pub state: Option<StateFilter>,
    /// Only items whose current (or last) job is of this stage.
    pub stage: Option<String>,
    /// Only failed items whose failure is of this class.
    pub failure: Option<FailureClass>,
    /// Items with an id below this (pages go newest first).
    pub before_id: Option<ItemId>,
    /// Page size; 0 means 100.
    pub limit: u32,
}

/// One line of the item list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemSummary {
    /// Its id.
    pub id: ItemId,
    /// The idea.
    pub text: String,
    /// Its stored state.
    pub state: ItemState,
    /// What people see: queued, running, retrying, paused, done, failed, cancelled.
    pub display_state: String,
    /// The stage of its current (or last) job.
    pub stage: Option<String>,
    /// Its current gate round.
    pub round: u32,
    /// Tries of its current job.
    pub attempts: u32,
    /// The error of its last failed attempt, if any.
    pub last_error: Option<String>,
    /// Why a failed item failed (see [`ItemRow::failure_class`]).
    pub failure_class: Option<FailureClass>,
    /// When it was added.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
}

/// The state of the whole installation, for `status`, the web and health.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    /// When it was read.
    pub now: Millis,
    /// Items by state.
    pub items: ItemCounts,
    /// Jobs by stage and state.
    pub stages: Vec<StageCounts>,
    /// Running jobs, with their lease holders.
    pub running: Vec<RunningJob>,
    /// Processes that have not stopped.
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

/// Items by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ItemCounts {
    /// Active: not finished.
    pub active: u64,
    /// Done.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// Jobs of one stage by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    /// The stage.
    pub stage: String,
    /// Runnable now.
    pub queued: u64,
    /// Waiting for a later `run_at` (backoff).
    pub scheduled: u64,
    /// Held by a worker.
    pub running: u64,
}

/// A job running now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningJob {
    /// Its id.
    pub job_id: JobId,
    /// Its item's id.
    pub item_id: ItemId,
    /// Its stage.
    pub stage: String,
    /// Its gate round.
    pub round: u32,
    /// Its try, from 1.
    pub attempt: u32,
    /// The process holding its lease.
    pub owner: String,
    /// When the try started.
    pub started_at: Millis,
    /// When its lease expires unless renewed.
    pub lease_expires_at: Millis,
}

/// Something that happened, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its id, in order of recording.
    pub id: i64,
    /// When it happened.
    pub at: Millis,
    /// What happened: one of [`event_kind`].
    pub kind: String,
    /// The item it concerns, if any.
    pub item_id: Option<ItemId>,
    /// The job it concerns, if any.
    pub job_id: Option<JobId>,
    /// The process that recorded it, if any.
    pub process: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When it happened.
    pub at: Millis,
    /// What happened: one of [`event_kind`].
    pub kind: &'static str,
    /// The item it concerns, if any.
    pub item_id: Option<ItemId>,
    /// The job it concerns, if any.
    pub job_id: Option<JobId>,
    /// The process that records it, if any.
    pub process: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// Which events `events` returns.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only events of this item.
    pub item: Option<ItemId>,
    /// Only events of this kind.
    pub kind: Option<String>,
    /// Only events at or after this time.
    pub since: Option<Millis>,
    /// At most this many; 0 means 100.
    pub limit: u32,
}

/// What `prune` deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneCounts {
    /// Items deleted.
    pub items: u64,
    /// Events deleted.
    pub events: u64,
    /// The pruned items, for their workspace folders to go too.
    #[serde(skip)]
    pub item_ids: Vec<ItemId>,
}

/// Event kinds, in one place so that readers can filter on them.
pub mod event_kind {
    /// An engine process registered.
    pub const PROCESS_STARTED: &str = "process_started";
    /// An engine process stopped cleanly.
    pub const PROCESS_STOPPED: &str = "process_stopped";
    /// A job's lease expired and the reaper took it back.
    pub const LEASE_EXPIRED: &str = "lease_expired";
    /// A process died without stopping; its leases were expired at once.
    pub const PROCESS_DEAD: &str = "process_dead";
    /// A stopping process gave back its unfinished jobs.
    pub const JOBS_RELEASED: &str = "jobs_released";
    /// A result came after its lease was lost and was discarded.
    pub const STALE_COMPLETION: &str = "stale_completion";
    /// A try failed and the job will run again after its backoff.
    pub const RETRY_SCHEDULED: &str = "retry_scheduled";
    /// A job's processes made no progress for its stage's `stall_after`:
    /// killed, with an evidence folder (the message says where).
    pub const JOB_HUNG: &str = "job_hung";
    /// A gate rejected an item and sent it back.
    pub const GATE_REJECTED: &str = "gate_rejected";
    /// An item ended failed.
    pub const ITEM_FAILED: &str = "item_failed";
    /// An item was cancelled.
    pub const ITEM_CANCELLED: &str = "item_cancelled";
    /// An item was run again by hand.
    pub const ITEM_RETRIED: &str = "item_retried";
    /// Old finished items and events were deleted.
    pub const PRUNED: &str = "pruned";
    /// The engine's watchdog or its supervisor found the event loop stalled.
    pub const ENGINE_STALLED: &str = "engine_stalled";
    /// The supervisor started a new engine after a crash or a stall.
    pub const ENGINE_RESTARTED: &str = "engine_restarted";
    /// Too many restarts in a short time: the supervisor stopped.
    pub const SUPERVISOR_GAVE_UP: &str = "supervisor_gave_up";
    /// A budget cap was reached and paused work.
    pub const BUDGET_REACHED: &str = "budget_reached";
    /// Paused work became runnable again.
    pub const BUDGET_RESUMED: &str = "budget_resumed";
    /// An engine started and removed the job control groups an engine
    /// killed earlier left behind, and killed what was still in them.
    pub const SANDBOX_LEFTOVERS_REMOVED: &str = "sandbox_leftovers_removed";
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
    /// The stage.
    pub stage: String,
    /// Every finished attempt (cancelled and released ones excluded).
    pub attempts: u64,
    /// Succeeded or rejected by a gate: the stage itself worked.
    pub worked: u64,
    /// Error, timeout, hung, permanent error or lost.
    pub failed: u64,
    /// Of those, hung: killed for making no progress (`stall_after`).
    pub hung: u64,
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
    /// The source's key.
    pub key: String,
    /// The name it was first taken under.
    pub name: String,
    /// The items it became, in input order (some may have been pruned since).
    pub item_ids: Vec<ItemId>,
    /// When it was taken.
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
    /// The idea.
    pub text: String,
    /// A JSON object; `{}` when there is none.
    pub metadata: serde_json::Value,
    /// When the other system created it (the import time when unknown).
    pub created_at: Millis,
    /// Where it stood there.
    pub state: ImportedState,
}

/// Where an imported item stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportedState {
    /// New work: `next` is its first job.
    Queued {
        /// Its first job.
        next: NextJob,
    },
    /// A gate rejected it: every rejection (oldest first) is kept as that
    /// round's feedback, where prompts find it, and it runs `next`.
    Rejected {
        /// Every rejection, oldest first.
        rejections: Vec<Rejection>,
        /// The job it runs next.
        next: NextJob,
    },
    /// Finished there; nothing runs. `retry --from` can run it again.
    Done,
    /// Failed there with `error`; nothing runs. `stage` is where `retry`
    /// starts it again.
    Failed {
        /// Why it failed there.
        error: String,
        /// Where `retry` starts it again.
        stage: String,
    },
}

/// A gate's rejection brought in from elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The gate that rejected.
    pub stage: String,
    /// The round it rejected.
    pub round: u32,
    /// The gate's reasons.
    pub feedback: String,
}

/// What `import_items` did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Imported as this new item.
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
    /// The outcome's name, as stored and shown (`passed`, `failed`, `no_progress`).
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
    /// The gate stage's name.
    pub stage: String,
    /// The model of the item's newest model call before the gate judged it
    /// (what wrote the work judged); `None` when no stage called one.
    pub model: Option<String>,
    /// The round the gate judged in.
    pub round: u32,
    /// How that round ended.
    pub outcome: GateOutcome,
    /// How many items ended so.
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
    /// The newest item id.
    pub item: i64,
    /// The newest job id.
    pub job: i64,
    /// The newest attempt id.
    pub attempt: i64,
    /// The newest event id.
    pub event: i64,
    /// Jobs running now.
    pub running: u64,
}
