//! The JSON shapes of the API and of the CLI's `--json`, and nothing else.
//!
//! They are types of their own, built from the store's rows, so that a
//! column added to a row (or a field renamed in it) cannot change what
//! scripts read without a change here. `openapi.json` describes each one;
//! `tests/api.rs` checks every endpoint's answer against that document,
//! and a field that is here but not there, or there but not here, fails it.
//!
//! Every field is always written: an absent value is `null`, never a missing
//! key. States and levels are their stored names (`as_str`).

use std::path::PathBuf;

use ideamill_core::{ItemId, JobId, Millis};
use ideamill_health::verdict::Verdict;
use ideamill_store as store;
use serde::Serialize;

/// An item in a list: `GET /api/items`, `ideamill list --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemSummary {
    /// The item's id.
    pub id: ItemId,
    /// The idea.
    pub text: String,
    /// Its stored state: `active`, `done`, `failed` or `cancelled`.
    pub state: &'static str,
    /// What people see: queued, running, retrying, paused, done, failed or cancelled.
    pub display_state: String,
    /// The stage of its current (or last) job.
    pub stage: Option<String>,
    /// Its current gate round, from 1.
    pub round: u32,
    /// Tries of its current job.
    pub attempts: u32,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// A failed item's class: `quality` (the work was judged and found
    /// wanting) or `infra` (the provider or the host failed); else `null`.
    pub failure_class: Option<&'static str>,
    /// When it was added, ms since the epoch.
    pub created_at: Millis,
    /// When it last changed, ms since the epoch.
    pub updated_at: Millis,
}

impl From<store::ItemSummary> for ItemSummary {
    fn from(i: store::ItemSummary) -> ItemSummary {
        ItemSummary {
            id: i.id,
            text: i.text,
            state: i.state.as_str(),
            display_state: i.display_state,
            stage: i.stage,
            round: i.round,
            attempts: i.attempts,
            last_error: i.last_error,
            failure_class: i.failure_class.map(|c| c.as_str()),
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

/// One page of items: `GET /api/items`.
#[derive(Debug, Serialize)]
pub struct ItemsPage {
    /// Newest first.
    pub items: Vec<ItemSummary>,
    /// Give this as `before` for the next page; `null` on the last page.
    pub next_before: Option<ItemId>,
}

/// The item itself, the `item` of one item's story (and the top of an
/// exported record).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// The item's id.
    pub id: ItemId,
    /// The idea.
    pub text: String,
    /// A JSON object, `{}` when there is none.
    pub metadata: serde_json::Value,
    /// Its stored state: `active`, `done`, `failed` or `cancelled`.
    pub state: &'static str,
    /// The stage of its current (or last) job.
    pub stage: Option<String>,
    /// Its current gate round, from 1.
    pub round: u32,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// As [`ItemSummary::failure_class`].
    pub failure_class: Option<&'static str>,
    /// When it was added, ms since the epoch.
    pub created_at: Millis,
    /// When it last changed, ms since the epoch.
    pub updated_at: Millis,
    /// When it ended done, failed or cancelled.
    pub finished_at: Option<Millis>,
    /// Its OpenTelemetry trace id (32 hex digits).
    pub trace_id: Option<String>,
}

impl From<store::ItemRow> for Item {
    fn from(i: store::ItemRow) -> Item {
        Item {
            id: i.id,
            text: i.text,
            metadata: i.metadata,
            state: i.state.as_str(),
            stage: i.stage,
            round: i.round,
            last_error: i.last_error,
            failure_class: i.failure_class.map(|c| c.as_str()),
            created_at: i.created_at,
            updated_at: i.updated_at,
            finished_at: i.finished_at,
            trace_id: i.trace_id,
        }
    }
}

/// One execution of a stage for an item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The stage it runs.
    pub stage: String,
    /// Its gate round, from 1.
    pub round: u32,
    /// Its stored state (`queued`, `running`, `succeeded`, ...).
    pub state: &'static str,
    /// Tries started so far.
    pub attempts: u32,
    /// Tries before it fails.
    pub max_attempts: u32,
    /// When it becomes (or became) runnable, ms since the epoch.
    pub run_at: Millis,
    /// The process holding its lease, while running.
    pub lease_owner: Option<String>,
    /// When that lease expires unless renewed.
    pub lease_expires_at: Option<Millis>,
    /// The error of its last failed try.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: Millis,
    /// When it ended.
    pub finished_at: Option<Millis>,
}

impl From<store::JobRow> for Job {
    fn from(j: store::JobRow) -> Job {
        Job {
            id: j.id,
            stage: j.stage,
            round: j.round,
            state: j.state.as_str(),
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            run_at: j.run_at,
            lease_owner: j.lease_owner,
            lease_expires_at: j.lease_expires_at,
            last_error: j.last_error,
            created_at: j.created_at,
            finished_at: j.finished_at,
        }
    }
}

/// What one model call used and cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    /// The `[providers]` key of the endpoint called.
    pub provider: String,
    /// The model name it was called with.
    pub model: String,
    /// Prompt (input) tokens; null when the stage reported none (an agent
    /// CLI that prints no usage): unknown, not 0.
    pub prompt_tokens: Option<u64>,
    /// Completion (output) tokens; null when unknown.
    pub completion_tokens: Option<u64>,
    /// US dollars; null when unknown.
    pub cost: Option<f64>,
    /// The server sent no usage; the tokens were counted.
    pub counted: bool,
}

impl From<ideamill_core::Usage> for Usage {
    fn from(u: ideamill_core::Usage) -> Usage {
        let known = u.known();
        Usage {
            provider: u.provider,
            model: u.model,
            prompt_tokens: known.map(|k| k.0),
            completion_tokens: known.map(|k| k.1),
            cost: known.map(|k| k.2),
            counted: u.counted,
        }
    }
}

/// One finished try of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// The attempt's id.
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
    /// How it ended (`succeeded`, `rejected`, `error`, `timeout`, ...).
    pub outcome: &'static str,
    /// When it started, ms since the epoch.
    pub started_at: Millis,
    /// When it ended, ms since the epoch.
    pub finished_at: Millis,
    /// The process's exit code, if a process ran and exited.
    pub exit_code: Option<i32>,
    /// A note: the error, or a truncation warning.
    pub error: Option<String>,
    /// The raw output (stdout, or the model's answer).
    pub output: Option<String>,
    /// What the process wrote to stderr.
    pub stderr: Option<String>,
    /// Tokens and cost, for tries that called a model.
    pub usage: Option<Usage>,
}

impl From<store::AttemptRow> for Attempt {
    fn from(a: store::AttemptRow) -> Attempt {
        Attempt {
            id: a.id,
            job_id: a.job_id,
            stage: a.stage,
            round: a.round,
            attempt: a.attempt,
            process: a.process,
            outcome: a.outcome.as_str(),
            started_at: a.started_at,
            finished_at: a.finished_at,
            exit_code: a.exit_code,
            error: a.error,
            output: a.output,
            stderr: a.stderr,
            usage: a.usage.map(Usage::from),
        }
    }
}

/// A stage's committed output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    /// The stage that produced it.
    pub stage: String,
    /// The gate round it was produced in.
    pub round: u32,
    /// The job that produced it.
    pub job_id: JobId,
    /// The output itself.
    pub output: String,
    /// When it was stored, ms since the epoch.
    pub created_at: Millis,
}

impl From<store::OutputRow> for Output {
    fn from(o: store::OutputRow) -> Output {
        Output {
            stage: o.stage,
            round: o.round,
            job_id: o.job_id,
            output: o.output,
            created_at: o.created_at,
        }
    }
}

/// A gate's rejection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Feedback {
    /// The gate that rejected.
    pub stage: String,
    /// The round it rejected.
    pub round: u32,
    /// The gate's reasons.
    pub feedback: String,
    /// When it was stored, ms since the epoch.
    pub created_at: Millis,
}

impl From<store::FeedbackRow> for Feedback {
    fn from(f: store::FeedbackRow) -> Feedback {
        Feedback {
            stage: f.stage,
            round: f.round,
            feedback: f.feedback,
            created_at: f.created_at,
        }
    }
}

/// Something the mill recorded: `GET /api/events`, `ideamill events --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The event's id, in order of recording.
    pub id: i64,
    /// When it happened, ms since the epoch.
    pub at: Millis,
    /// What happened (`item_failed`, `lease_expired`, ...).
    pub kind: String,
    /// The item it concerns.
    pub item_id: Option<ItemId>,
    /// The job it concerns.
    pub job_id: Option<JobId>,
    /// The process that recorded it.
    pub process: Option<String>,
    /// What happened, for people.
    pub message: String,
}

impl From<store::Event> for Event {
    fn from(e: store::Event) -> Event {
        Event {
            id: e.id,
            at: e.at,
            kind: e.kind,
            item_id: e.item_id,
            job_id: e.job_id,
            process: e.process,
            message: e.message,
        }
    }
}

/// Tokens and cost added up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UsageTotals {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// US dollars.
    pub cost: f64,
}

impl From<store::UsageTotals> for UsageTotals {
    fn from(u: store::UsageTotals) -> UsageTotals {
        UsageTotals {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cost: u.cost,
        }
    }
}

/// A file of an item's workspace, with its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct File {
    /// Relative to the item's workspace folder.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// One item's whole story: `GET /api/items/{id}` (files as [`File`]) and
/// `ideamill show --json` (files as paths).
#[derive(Debug, Serialize)]
pub struct ItemView<F> {
    /// The item itself.
    pub item: Item,
    /// What people see: queued, running, retrying, paused, done, failed or cancelled.
    pub display_state: String,
    /// Its jobs, oldest first.
    pub jobs: Vec<Job>,
    /// Every try of its jobs, oldest first.
    pub attempts: Vec<Attempt>,
    /// Every stored output.
    pub outputs: Vec<Output>,
    /// Every gate rejection.
    pub feedback: Vec<Feedback>,
    /// Events about the item.
    pub events: Vec<Event>,
    /// Tokens and cost of every try so far.
    pub usage: UsageTotals,
    /// The item's folder on the server.
    pub workspace: PathBuf,
    /// The regular files in its workspace folder, sorted by path.
    pub files: Vec<F>,
    /// Its trace in the tracing backend, when `[telemetry] trace_url` is set.
    pub trace_url: Option<String>,
}

impl<F> ItemView<F> {
    /// The story of `d`, with its workspace folder and files.
    pub fn new(d: store::ItemDetail, workspace: PathBuf, files: Vec<F>) -> ItemView<F> {
        ItemView {
            trace_url: None,
            item: d.item.into(),
            display_state: d.display_state,
            jobs: convert(d.jobs),
            attempts: convert(d.attempts),
            outputs: convert(d.outputs),
            feedback: convert(d.feedback),
            events: convert(d.events),
            usage: d.usage.into(),
            workspace,
            files,
        }
    }
}

/// `POST /api/items`, `ideamill add --json`: the new items, in input order.
#[derive(Debug, Serialize)]
pub struct Added {
    /// The new items' ids.
    pub ids: Vec<ItemId>,
}

/// `POST /api/items/{id}/retry`, `ideamill retry --json`: what runs next.
#[derive(Debug, Serialize)]
pub struct Retried {
    /// The item's id.
    pub id: ItemId,
    /// The stage that runs next.
    pub stage: String,
    /// The gate round it runs in.
    pub round: u32,
}

impl Retried {
    /// The answer for item `id` from the store's `effect`.
    pub fn new(id: ItemId, effect: store::RetryEffect) -> Retried {
        Retried {
            id,
            stage: effect.stage,
            round: effect.round,
        }
    }
}

/// `POST /api/items/retry`, `ideamill retry --failed CLASS --json`: every
/// item run again, newest first.
#[derive(Debug, Serialize)]
pub struct RetriedAll {
    /// What runs next for each item run again.
    pub retried: Vec<Retried>,
}

/// `POST /api/items/{id}/cancel`, `ideamill cancel --json`.
#[derive(Debug, Serialize)]
pub struct Cancelled {
    /// The item's id.
    pub id: ItemId,
    /// Always true: a refusal is an error instead.
    pub cancelled: bool,
    /// A worker was running it; it has been asked to stop.
    pub was_running: bool,
}

impl Cancelled {
    /// The answer for item `id` from the store's `effect`.
    pub fn new(id: ItemId, effect: store::CancelEffect) -> Cancelled {
        Cancelled {
            id,
            cancelled: true,
            was_running: effect.was_running,
        }
    }
}

/// `GET /api/events`.
#[derive(Debug, Serialize)]
pub struct Events {
    /// Newest first.
    pub events: Vec<Event>,
}

/// One reason of a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// `HEALTHY`, `DEGRADED`, `STALLED` or `DOWN`.
    pub level: &'static str,
    /// Stable; `docs/runbook.md` has a section per code.
    pub code: &'static str,
    /// What was found, for people.
    pub message: String,
}

/// The health verdict with every reason, worst first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The worst level: `HEALTHY`, `DEGRADED`, `STALLED` or `DOWN`.
    pub verdict: &'static str,
    /// Every reason, worst first.
    pub reasons: Vec<Reason>,
}

impl From<Verdict> for Health {
    fn from(v: Verdict) -> Health {
        Health {
            verdict: v.verdict.as_str(),
            reasons: v
                .reasons
                .into_iter()
                .map(|r| Reason {
                    level: r.level.as_str(),
                    code: r.code,
                    message: r.message,
                })
                .collect(),
        }
    }
}

/// Items per stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ItemCounts {
    /// Not finished.
    pub active: u64,
    /// Every stage passed.
    pub done: u64,
    /// Failed for good.
    pub failed: u64,
    /// Cancelled by someone.
    pub cancelled: u64,
}

/// Unfinished jobs of one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageCounts {
    /// The stage's name.
    pub stage: String,
    /// Runnable now.
    pub queued: u64,
    /// Waiting for a later `run_at` (backoff).
    pub scheduled: u64,
    /// Held by a worker.
    pub running: u64,
}

/// A job a worker holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningJob {
    /// The job's id.
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
    /// When the try started, ms since the epoch.
    pub started_at: Millis,
    /// When its lease expires unless renewed.
    pub lease_expires_at: Millis,
}

/// An engine process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Unique: `<host>-<pid>-<random>`.
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its OS process id.
    pub pid: u32,
    /// `ideamill <version>` of its binary.
    pub version: String,
    /// When it started, ms since the epoch.
    pub started_at: Millis,
    /// Its last heartbeat, ms since the epoch.
    pub last_beat_at: Millis,
    /// When it stopped cleanly; `null` while it runs (or if it died).
    pub stopped_at: Option<Millis>,
    /// Jobs it holds now.
    pub held_jobs: u64,
}

impl From<store::ProcessInfo> for Process {
    fn from(p: store::ProcessInfo) -> Process {
        Process {
            id: p.id,
            host: p.host,
            pid: p.pid,
            version: p.version,
            started_at: p.started_at,
            last_beat_at: p.last_beat_at,
            stopped_at: p.stopped_at,
            held_jobs: p.held_jobs,
        }
    }
}

/// What `status` counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusSnapshot {
    /// When it was read, ms since the epoch.
    pub now: Millis,
    /// Items by state.
    pub items: ItemCounts,
    /// Unfinished jobs per stage.
    pub stages: Vec<StageCounts>,
    /// Jobs running now.
    pub running: Vec<RunningJob>,
    /// Processes that have not stopped.
    pub processes: Vec<Process>,
    /// Running jobs whose lease has expired and that no reaper has taken yet.
    pub expired_leases: u64,
    /// The oldest `run_at` among runnable queued jobs.
    pub oldest_runnable_at: Option<Millis>,
    /// Jobs waiting for a budget.
    pub paused: u64,
    /// Model usage since the start of the day (UTC).
    pub today: UsageTotals,
}

impl From<store::StatusSnapshot> for StatusSnapshot {
    fn from(s: store::StatusSnapshot) -> StatusSnapshot {
        StatusSnapshot {
            now: s.now,
            items: ItemCounts {
                active: s.items.active,
                done: s.items.done,
                failed: s.items.failed,
                cancelled: s.items.cancelled,
            },
            stages: s
                .stages
                .into_iter()
                .map(|c| StageCounts {
                    stage: c.stage,
                    queued: c.queued,
                    scheduled: c.scheduled,
                    running: c.running,
                })
                .collect(),
            running: s
                .running
                .into_iter()
                .map(|j| RunningJob {
                    job_id: j.job_id,
                    item_id: j.item_id,
                    stage: j.stage,
                    round: j.round,
                    attempt: j.attempt,
                    owner: j.owner,
                    started_at: j.started_at,
                    lease_expires_at: j.lease_expires_at,
                })
                .collect(),
            processes: convert(s.processes),
            expired_leases: s.expired_leases,
            oldest_runnable_at: s.oldest_runnable_at,
            paused: s.paused,
            today: s.today.into(),
        }
    }
}

/// `GET /api/status`, `ideamill status --json`: the verdict, and the
/// snapshot it was judged on (`null` when the store did not answer).
#[derive(Debug, Serialize)]
pub struct Status {
    /// The verdict.
    pub health: Health,
    /// What it was judged on; `null` when the store did not answer.
    pub status: Option<StatusSnapshot>,
}

impl Status {
    /// The answer from a verdict and the snapshot it was judged on.
    pub fn new(verdict: Verdict, snapshot: Option<store::StatusSnapshot>) -> Status {
        Status {
            health: verdict.into(),
            status: snapshot.map(StatusSnapshot::from),
        }
    }
}

/// An engine process with the age of its last beat.
#[derive(Debug, Serialize)]
pub struct ProcessBeat {
    /// The process.
    #[serde(flatten)]
    pub process: Process,
    /// How long ago it last beat, ms.
    pub beat_age_ms: i64,
}

/// `GET /api/processes`.
#[derive(Debug, Serialize)]
pub struct Processes {
    /// Processes that have not stopped, newest first.
    pub processes: Vec<ProcessBeat>,
}

/// One time bucket of the charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

impl From<store::ActivityBucket> for ActivityBucket {
    fn from(b: store::ActivityBucket) -> ActivityBucket {
        ActivityBucket {
            start: b.start,
            attempts: b.attempts,
            failed_attempts: b.failed_attempts,
            items_done: b.items_done,
            items_failed: b.items_failed,
        }
    }
}

/// `GET /api/activity`: buckets over the last `hours`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Activity {
    /// The window asked for, in hours.
    pub hours: u32,
    /// Each bucket's length, ms.
    pub bucket_ms: Millis,
    /// The window's start, ms since the epoch.
    pub since: Millis,
    /// The window's end, ms since the epoch.
    pub now: Millis,
    /// Oldest first.
    pub buckets: Vec<ActivityBucket>,
}

/// The QA lift of one gate for the items one model worked on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateLift {
    /// The gate stage's name.
    pub stage: String,
    /// The model of the item's newest model call before the gate judged;
    /// `null` when no stage called one.
    pub model: Option<String>,
    /// Passed at round 1, 2, 3 and 4 or later.
    pub passed_by_round: [u64; store::LIFT_ROUNDS],
    /// Passed at round 1.
    pub passed_first: u64,
    /// Passed at round 2 or later.
    pub passed_later: u64,
    /// Rejected in the last round.
    pub failed: u64,
    /// Ended early: a round changed nothing.
    pub no_progress: u64,
    /// Items whose gate loop has ended (passed, failed or no_progress).
    pub judged: u64,
    /// Share of `judged` that passed at round 1; `null` when none is judged.
    pub first_pass_rate: Option<f64>,
    /// Share of `judged` that passed at any round; `null` when none is judged.
    pub final_pass_rate: Option<f64>,
    /// `final_pass_rate / first_pass_rate`; `null` until an item passes at
    /// round 1.
    pub lift: Option<f64>,
}

impl From<store::GateLift> for GateLift {
    fn from(g: store::GateLift) -> GateLift {
        GateLift {
            passed_by_round: g.passed,
            passed_first: g.passed_first(),
            passed_later: g.passed_later(),
            judged: g.judged(),
            first_pass_rate: g.first_pass_rate(),
            final_pass_rate: g.final_pass_rate(),
            lift: g.lift(),
            failed: g.failed,
            no_progress: g.no_progress,
            stage: g.stage,
            model: g.model,
        }
    }
}

/// `GET /api/qa`: the QA lift per gate and model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QaLift {
    /// One entry per gate stage and model.
    pub gates: Vec<GateLift>,
}

/// Rows into their wire shapes.
pub fn convert<R, W: From<R>>(rows: Vec<R>) -> Vec<W> {
    rows.into_iter().map(W::from).collect()
}
