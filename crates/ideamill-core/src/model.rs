//! The nouns of the pipeline (items, jobs, attempts, stages) shared by the
//! store, the engine and the CLI. These are the only wire format between them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. Every timestamp in the store is one.
pub type Millis = i64;
/// An item's id in the store.
pub type ItemId = i64;
/// A job's id in the store.
pub type JobId = i64;

/// The stored state of an item. `Active` items have exactly one unfinished
/// job; what people see ("queued", "running", "retrying") is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Moving through the pipeline: it has a queued, running or paused job.
    Active,
    /// Every stage passed.
    Done,
    /// A stage failed for good, or a gate rejected it `max_rounds` times.
    Failed,
    /// Someone cancelled it.
    Cancelled,
}

impl ItemState {
    /// The name stored and shown for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Active => "active",
            ItemState::Done => "done",
            ItemState::Failed => "failed",
            ItemState::Cancelled => "cancelled",
        }
    }
    /// The state named `s`, as stored; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<ItemState> {
        Some(match s {
            "active" => ItemState::Active,
            "done" => ItemState::Done,
            "failed" => ItemState::Failed,
            "cancelled" => ItemState::Cancelled,
            _ => return None,
        })
    }
    /// Whether the item has ended (done, failed or cancelled).
    pub fn is_finished(self) -> bool {
        self != ItemState::Active
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one job (one stage of one item in one round).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for `run_at`, then for a worker.
    Queued,
    /// Held by a worker under a lease.
    Running,
    /// The stage passed; its output is stored.
    Succeeded,
    /// A gate rejected the work; its feedback is stored.
    Rejected,
    /// Attempts exhausted or a permanent error.
    Failed,
    /// Its item was cancelled.
    Cancelled,
    /// Waiting for a budget: not claimable until resumed (`retry`, or a
    /// raised cap).
    Paused,
}

impl JobState {
    /// The name stored and shown for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Rejected => "rejected",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Paused => "paused",
        }
    }
    /// The state named `s`, as stored; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "rejected" => JobState::Rejected,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "paused" => JobState::Paused,
            _ => return None,
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an item failed, as far as what to do about it goes: `Quality` when
/// the work itself was judged and found wanting (a gate rejected its last
/// round, a stage program or the model's answer failed on its own), `Infra`
/// when the machinery never let the work be judged (the provider's rate
/// limits, 5xx answers, timeouts and dropped connections; the host's
/// sandbox limits, spawn errors, a store that refused the result, a lost
/// worker). An `Infra` failure says nothing about the model, so a benchmark
/// counts it apart and `retry --failed infra` runs it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureClass {
    /// The work was judged and found wanting.
    Quality,
    /// The provider or the host failed; the work was never judged.
    Infra,
}

impl FailureClass {
    /// The stored and shown name: `quality`, `infra`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Quality => "quality",
            FailureClass::Infra => "infra",
        }
    }
    /// The class named `s` ([`FailureClass::as_str`]), if any.
    pub fn parse(s: &str) -> Option<FailureClass> {
        Some(match s {
            "quality" => FailureClass::Quality,
            "infra" => FailureClass::Infra,
            _ => return None,
        })
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended, as recorded on the attempt row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// The stage passed.
    Succeeded,
    /// A gate rejected the work.
    Rejected,
    /// A retryable error: crash, non-zero exit, signal.
    Error,
    /// The attempt ran longer than the stage's `timeout`.
    Timeout,
    /// The attempt's processes made no progress (no output, no change in
    /// the workspace, no CPU time) for the stage's `stall_after`: killed,
    /// with an evidence folder, and retried.
    Hung,
    /// An error that retrying cannot fix (bad config, missing program).
    Permanent,
    /// The item was cancelled while the attempt ran.
    Cancelled,
    /// The worker's lease expired (process killed, machine gone).
    Lost,
    /// The worker shut down before finishing and gave the job back.
    Released,
    /// A budget was reached before the work started; the item waits.
    Paused,
}

impl AttemptOutcome {
    /// The name stored and shown for this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Rejected => "rejected",
            AttemptOutcome::Error => "error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Hung => "hung",
            AttemptOutcome::Permanent => "permanent",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Released => "released",
            AttemptOutcome::Paused => "paused",
        }
    }
    /// The outcome named `s`, as stored; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<AttemptOutcome> {
        Some(match s {
            "succeeded" => AttemptOutcome::Succeeded,
            "rejected" => AttemptOutcome::Rejected,
            "error" => AttemptOutcome::Error,
            "timeout" => AttemptOutcome::Timeout,
            "hung" => AttemptOutcome::Hung,
            "permanent" => AttemptOutcome::Permanent,
            "cancelled" => AttemptOutcome::Cancelled,
            "lost" => AttemptOutcome::Lost,
            "released" => AttemptOutcome::Released,
            "paused" => AttemptOutcome::Paused,
            _ => return None,
        })
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage's retry policy, resolved from the config with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries of one job, the first included. At least 1.
    pub max_attempts: u32,
    /// The delay before the second try; it doubles for each later one.
    pub backoff: Duration,
    /// The delay never grows past this.
    pub backoff_max: Duration,
}

/// A gate: a stage whose rejection sends the item back to `retry_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// The stage a rejection sends the work back to.
    pub retry_from: String,
    /// Rounds are counted from 1; a rejection in round `max_rounds` fails the item.
    pub max_rounds: u32,
}

/// What one model call used and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The `[providers]` key of the endpoint called.
    pub provider: String,
    /// The model name the endpoint was called with.
    pub model: String,
    /// Tokens of the prompt (input).
    pub prompt_tokens: u64,
    /// Tokens of the answer (output).
    pub completion_tokens: u64,
    /// US dollars, from `[prices]`; 0 when the model has no price.
    pub cost: f64,
    /// The server sent no usage, so the tokens were counted here.
    pub counted: bool,
    /// Nothing was reported (an agent CLI that prints no usage): tokens and
    /// cost are unknown, stored as NULL and shown as "unknown", never as 0.
    #[serde(default)]
    pub unknown: bool,
}

impl Usage {
    /// Tokens in, tokens out and cost, when they are known.
    pub fn known(&self) -> Option<(u64, u64, f64)> {
        (!self.unknown).then_some((self.prompt_tokens, self.completion_tokens, self.cost))
    }
}
