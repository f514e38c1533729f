//! The pure state machine: given how an attempt ended, what happens to the
//! job and its item next. The store applies the answer in one transaction.

use std::time::Duration;

use crate::config::{Config, StageConfig};
use crate::model::{AttemptOutcome, Millis, RetryPolicy};

/// What a stage's executor reports for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageResult {
    /// The stage passed; `output` is stored as its result.
    Passed { output: String },
    /// A gate rejected the work; `feedback` goes back to `retry_from`.
    Rejected { feedback: String },
    /// A retryable failure: crash, bad exit, signal (`Error`) or `Timeout`.
    Failed {
        outcome: AttemptOutcome,
        message: String,
    },
    /// A failure that retrying cannot fix.
    Permanent { message: String },
    /// The work was stopped because someone cancelled the item.
    Cancelled,
}

impl StageResult {
    /// The outcome recorded on the attempt row.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            StageResult::Passed { .. } => AttemptOutcome::Succeeded,
            StageResult::Rejected { .. } => AttemptOutcome::Rejected,
            StageResult::Failed { outcome, .. } => *outcome,
            StageResult::Permanent { .. } => AttemptOutcome::Permanent,
            StageResult::Cancelled => AttemptOutcome::Cancelled,
        }
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextJob {
    pub stage: String,
    pub round: u32,
    pub max_attempts: u32,
}

impl NextJob {
    fn for_stage(stage: &StageConfig, round: u32) -> NextJob {
        NextJob {
            stage: stage.name.clone(),
            round,
            max_attempts: stage.retry.max_attempts,
        }
    }
}

/// What happens after an attempt. Exactly one of these is applied, in one
/// transaction with the attempt's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Store the output; enqueue `next`, or finish the item `done` when `None`.
    Advance {
        output: String,
        next: Option<NextJob>,
    },
    /// A gate rejected: store the feedback and enqueue `to` (a later round).
    SendBack { feedback: String, to: NextJob },
    /// Run the same job again at `run_at`.
    RetryAt { run_at: Millis, error: String },
    /// The item ends `failed` with `reason`; a gate's last rejection keeps
    /// its `feedback` with the others.
    FailItem {
        reason: String,
        feedback: Option<String>,
    },
    /// The item was cancelled; nothing follows.
    Cancel,
}

/// The first job of a new item.
pub fn first_job(config: &Config) -> NextJob {
    NextJob::for_stage(config.first_stage(), 1)
}

/// Decide what follows an attempt of `stage` (the `attempt`-th try, counted
/// from 1, in `round`, counted from 1). `jitter` is a number in `[0, 1)`
/// from the caller's random source, so this stays pure.
pub fn decide(
    config: &Config,
    stage: &StageConfig,
    attempt: u32,
    round: u32,
    result: StageResult,
    now: Millis,
    jitter: f64,
) -> Transition {
    match result {
        StageResult::Passed { output } => {
            let next = config
                .next_stage(&stage.name)
                .map(|s| NextJob::for_stage(s, round));
            Transition::Advance { output, next }
        }
        StageResult::Rejected { feedback } => match &stage.gate {
            Some(gate) if round >= gate.max_rounds => Transition::FailItem {
                reason: format!(
                    "rejected by gate `{}` in round {round} of {}: {}",
                    stage.name,
                    gate.max_rounds,
                    first_line(&feedback)
                ),
                feedback: Some(feedback),
            },
            Some(gate) => match config.stage(&gate.retry_from) {
                Some(to) => Transition::SendBack {
                    feedback,
                    to: NextJob::for_stage(to, round + 1),
                },
                // Validation guarantees `retry_from` exists; a config edited
                // under a running item fails the item loudly instead of looping.
                None => Transition::FailItem {
                    reason: format!(
                        "gate `{}` sends work back to unknown stage `{}`",
                        stage.name, gate.retry_from
                    ),
                    feedback: Some(feedback),
                },
            },
            // Only gates reject; anything else that "rejects" failed.
            None => retry_or_fail(stage, attempt, feedback, now, jitter),
        },
        StageResult::Failed { message, .. } => retry_or_fail(stage, attempt, message, now, jitter),
        StageResult::Permanent { message } => Transition::FailItem {
            reason: format!("stage `{}` failed permanently: {message}", stage.name),
            feedback: None,
        },
        StageResult::Cancelled => Transition::Cancel,
    }
}

fn retry_or_fail(
    stage: &StageConfig,
    attempt: u32,
    error: String,
    now: Millis,
    jitter: f64,
) -> Transition {
    if attempt >= stage.retry.max_attempts {
        Transition::FailItem {
            reason: format!(
                "stage `{}` failed after {attempt} attempt{}: {error}",
                stage.name,
                if attempt == 1 { "" } else { "s" }
            ),
            feedback: None,
        }
    } else {
        let delay = backoff(&stage.retry, attempt, jitter);
        Transition::RetryAt {
            run_at: now + delay.as_millis() as Millis,
            error,
        }
    }
}

/// The delay after the `attempt`-th failed try: `backoff * 2^(attempt-1)`,
/// capped at `backoff_max`, then spread by ±20% so that jobs that failed
/// together do not retry together. The spread keeps successive gaps growing.
pub fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let base = policy.backoff.saturating_mul(1u32 << exp.min(31));
    let capped = base.min(policy.backoff_max);
    capped.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// What the reaper does with a job whose lease expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostJob {
    /// Make it runnable again now.
    Requeue,
    /// The lost try was its last: fail the item.
    Fail,
    /// It was being cancelled: finish the cancellation.
    Cancel,
}

/// A lost try counts as an attempt, so a job that kills its worker every
/// time cannot loop forever.
pub fn after_lost(attempts: u32, max_attempts: u32, cancel_requested: bool) -> LostJob {
    if cancel_requested {
        LostJob::Cancel
    } else if attempts >= max_attempts {
        LostJob::Fail
    } else {
        LostJob::Requeue
    }
}

fn first_line(s: &str) -> &str {
    let line = s.trim().lines().next().unwrap_or("");
    match line.char_indices().nth(200) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}
