//! The pure state machine: given how an attempt ended, what happens to the
//! job and its item next. The store applies the answer in one transaction.

use std::time::Duration;

use crate::config::{Config, StageConfig};
use crate::model::{AttemptOutcome, FailureClass, ItemState, Millis, RetryPolicy};

/// What a stage's executor reports for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageResult {
    /// The stage passed; `output` is stored as its result.
    Passed {
        /// What the stage produced (stdout, or the model's answer).
        output: String,
    },
    /// A gate rejected the work; `feedback` goes back to `retry_from`.
    Rejected {
        /// Why the gate rejected, for the stage the work goes back to.
        feedback: String,
    },
    /// A retryable failure: crash, bad exit, signal (`Error`), `Timeout` or
    /// `Hung`;
    /// `class` says whether the work or the machinery failed, should it be
    /// the item's last.
    Failed {
        /// `Error`, `Timeout` or `Hung`.
        outcome: AttemptOutcome,
        /// Whether the work or the machinery around it failed.
        class: FailureClass,
        /// What went wrong, for the attempt's record.
        message: String,
    },
    /// A failure that retrying cannot fix.
    Permanent {
        /// Whether the work or the machinery around it failed.
        class: FailureClass,
        /// What went wrong, for the attempt's record.
        message: String,
    },
    /// The provider asked us to slow down, and maybe said for how long.
    RateLimited {
        /// What the provider said, for the attempt's record.
        message: String,
        /// The wait the provider asked for, if it named one.
        retry_after: Option<Duration>,
    },
    /// The work was stopped because someone cancelled the item.
    Cancelled,
    /// A budget was reached before the work started: the item waits.
    Paused {
        /// Which budget was reached, for people.
        reason: String,
    },
}

impl StageResult {
    /// The outcome recorded on the attempt row.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            StageResult::Passed { .. } => AttemptOutcome::Succeeded,
            StageResult::Rejected { .. } => AttemptOutcome::Rejected,
            StageResult::Failed { outcome, .. } => *outcome,
            StageResult::Permanent { .. } => AttemptOutcome::Permanent,
            StageResult::RateLimited { .. } => AttemptOutcome::Error,
            StageResult::Cancelled => AttemptOutcome::Cancelled,
            StageResult::Paused { .. } => AttemptOutcome::Paused,
        }
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextJob {
    /// The stage the job runs.
    pub stage: String,
    /// The gate round it belongs to, from 1.
    pub round: u32,
    /// Tries before the job fails, from the stage's retry policy.
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
        /// The finished stage's output.
        output: String,
        /// The next stage's job; `None` after the last stage.
        next: Option<NextJob>,
    },
    /// A gate rejected: store the feedback and enqueue `to` (a later round).
    SendBack {
        /// The gate's reasons, for the stage the work goes back to.
        feedback: String,
        /// The job of the `retry_from` stage, in the next round.
        to: NextJob,
    },
    /// Run the same job again at `run_at`.
    RetryAt {
        /// When the job becomes claimable again.
        run_at: Millis,
        /// What went wrong this time.
        error: String,
    },
    /// The item ends `failed` with `reason`, of `class`; a gate's last
    /// rejection keeps its `feedback` with the others.
    FailItem {
        /// Why the item failed, for people.
        reason: String,
        /// The gate's last rejection, if a gate ended it.
        feedback: Option<String>,
        /// Why, as far as what to do about it goes.
        class: FailureClass,
    },
    /// The item was cancelled; nothing follows.
    Cancel,
    /// Park the job (not claimable, the try not counted) until resumed.
    Pause {
        /// Which budget was reached, for people.
        reason: String,
    },
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
                class: FailureClass::Quality,
            },
            Some(gate) => match config.stage(&gate.retry_from) {
                Some(to) => Transition::SendBack {
                    feedback,
                    to: NextJob::for_stage(to, round + 1),
                },
                // Validation guarantees `retry_from` exists; a config edited
                // under a running item fails the item loudly instead of looping.
                // The work was never judged on its merits: infrastructure.
                None => Transition::FailItem {
                    reason: format!(
                        "gate `{}` sends work back to unknown stage `{}`",
                        stage.name, gate.retry_from
                    ),
                    feedback: Some(feedback),
                    class: FailureClass::Infra,
                },
            },
            // Only gates reject; anything else that "rejects" failed.
            None => retry_or_fail(stage, attempt, feedback, FailureClass::Quality, now, jitter),
        },
        StageResult::Failed { class, message, .. } => {
            retry_or_fail(stage, attempt, message, class, now, jitter)
        }
        // A rate limit is the provider's, never the model's: once the tries
        // run out, the item failed for infrastructure.
        StageResult::RateLimited {
            message,
            retry_after,
        } => {
            match retry_or_fail(stage, attempt, message, FailureClass::Infra, now, jitter) {
                // Never sooner than the server asked.
                Transition::RetryAt { run_at, error } => Transition::RetryAt {
                    run_at: run_at.max(now + retry_after.map_or(0, crate::duration::millis)),
                    error,
                },
                other => other,
            }
        }
        StageResult::Permanent { class, message } => Transition::FailItem {
            reason: format!("stage `{}` failed permanently: {message}", stage.name),
            feedback: None,
            class,
        },
        StageResult::Cancelled => Transition::Cancel,
        StageResult::Paused { reason } => Transition::Pause { reason },
    }
}

/// What follows a gate's rejection in `round` that changed nothing since
/// the round before (the same files and the same feedback): the item fails
/// as `no_progress` with the feedback kept, instead of going back for a
/// round that would repeat it. Other transitions are left as they are.
pub fn no_progress(transition: Transition, round: u32) -> Transition {
    match transition {
        Transition::SendBack { feedback, .. } => Transition::FailItem {
            reason: format!(
                "{NO_PROGRESS}: round {round} changed nothing: same files and same gate feedback as round {}",
                round.saturating_sub(1)
            ),
            feedback: Some(feedback),
            // The work was judged, twice alike: the model's failure.
            class: FailureClass::Quality,
        },
        other => other,
    }
}

/// How the reason of an item failed by [`no_progress`] begins.
pub const NO_PROGRESS: &str = "no_progress";

fn retry_or_fail(
    stage: &StageConfig,
    attempt: u32,
    error: String,
    class: FailureClass,
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
            class,
        }
    } else {
        let delay = backoff(&stage.retry, attempt, jitter);
        Transition::RetryAt {
            run_at: now + crate::duration::millis(delay),
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

/// Why an item cannot run again as asked by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryRefused {
    /// A done item runs again only from a stage named for it.
    DoneNeedsFrom,
    /// The item records no stage to resume at.
    NoStage,
    /// The stage named (or recorded) is not in the config.
    UnknownStage {
        /// The stage asked for.
        name: String,
        /// The stages the config has, for the message.
        stages: Vec<String>,
    },
}

/// The job that runs an item again by hand (`retry`, the dashboard's
/// button): from `from`, else where it stopped, in its current round.
pub fn retry_job(
    config: &Config,
    state: ItemState,
    stopped_at: Option<&str>,
    round: u32,
    from: Option<&str>,
) -> Result<NextJob, RetryRefused> {
    let name = match (from, state) {
        (Some(from), _) => from,
        (None, ItemState::Done) => return Err(RetryRefused::DoneNeedsFrom),
        (None, _) => stopped_at.ok_or(RetryRefused::NoStage)?,
    };
    let stage = config
        .stage(name)
        .ok_or_else(|| RetryRefused::UnknownStage {
            name: name.to_string(),
            stages: config.stages.iter().map(|s| s.name.clone()).collect(),
        })?;
    Ok(NextJob {
        stage: stage.name.clone(),
        round: round.max(1),
        max_attempts: stage.retry.max_attempts,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
[[stages]]
name = "outline"
kind = "command"
command = ["true"]

[[stages]]
name = "implement"
kind = "command"
command = ["true"]
max_attempts = 3
backoff = "1s"
backoff_max = "3s"

[[stages]]
name = "qa"
kind = "command"
command = ["true"]
gate = { retry_from = "implement", max_rounds = 3 }
"#;

    fn config() -> Config {
        crate::config::parse(CONFIG, Path::new("/p/ideamill.toml")).expect("valid test config")
    }

    fn job(stage: &str, round: u32) -> NextJob {
        NextJob {
            stage: stage.into(),
            round,
            max_attempts: config().stage(stage).unwrap().retry.max_attempts,
        }
    }

    /// `decide` for stage `stage`, attempt and round, at now = 10_000 with
    /// jitter 0.5 (no spread), compared with `expected`.
    fn check(stage: &str, attempt: u32, round: u32, result: StageResult, expected: Transition) {
        let config = config();
        let stage = config.stage(stage).unwrap();
        assert_eq!(
            decide(&config, stage, attempt, round, result, 10_000, 0.5),
            expected
        );
    }

    fn passed(s: &str) -> StageResult {
        StageResult::Passed { output: s.into() }
    }
    fn rejected(s: &str) -> StageResult {
        StageResult::Rejected { feedback: s.into() }
    }
    fn error(s: &str) -> StageResult {
        StageResult::Failed {
            outcome: AttemptOutcome::Error,
            class: FailureClass::Quality,
            message: s.into(),
        }
    }

    #[test]
    fn passing_advances_to_the_next_stage_in_the_same_round() {
        check(
            "outline",
            1,
            1,
            passed("o"),
            Transition::Advance {
                output: "o".into(),
                next: Some(job("implement", 1)),
            },
        );
        check(
            "implement",
            2,
            2,
            passed("i"),
            Transition::Advance {
                output: "i".into(),
                next: Some(job("qa", 2)),
            },
        );
        check(
            "qa",
            1,
            3,
            passed("ok"),
            Transition::Advance {
                output: "ok".into(),
                next: None,
            },
        );
    }

    #[test]
    fn a_gate_rejection_sends_work_back_until_the_last_round() {
        check(
            "qa",
            1,
            1,
            rejected("fix it"),
            Transition::SendBack {
                feedback: "fix it".into(),
                to: job("implement", 2),
            },
        );
        check(
            "qa",
            1,
            2,
            rejected("again"),
            Transition::SendBack {
                feedback: "again".into(),
                to: job("implement", 3),
            },
        );
        check(
            "qa",
            1,
            3,
            rejected("still\nbroken"),
            Transition::FailItem {
                reason: "rejected by gate `qa` in round 3 of 3: still".into(),
                feedback: Some("still\nbroken".into()),
                class: FailureClass::Quality,
            },
        );
    }

    #[test]
    fn a_round_that_changed_nothing_fails_the_item_as_no_progress() {
        let send_back = Transition::SendBack {
            feedback: "No tests found".into(),
            to: job("implement", 3),
        };
        assert_eq!(
            no_progress(send_back, 2),
            Transition::FailItem {
                reason: "no_progress: round 2 changed nothing: same files and same gate feedback as round 1"
                    .into(),
                feedback: Some("No tests found".into()),
                class: FailureClass::Quality,
            }
        );
        // The last round's rejection already ends the item as it did.
        let last = Transition::FailItem {
            reason: "rejected".into(),
            feedback: Some("f".into()),
            class: FailureClass::Quality,
        };
        assert_eq!(no_progress(last.clone(), 3), last);
    }

    #[test]
    fn a_rejection_from_a_stage_that_is_not_a_gate_is_an_error() {
        check(
            "implement",
            1,
            1,
            rejected("nope"),
            Transition::RetryAt {
                run_at: 11_000,
                error: "nope".into(),
            },
        );
    }

    #[test]
    fn errors_retry_with_backoff_until_max_attempts() {
        check(
            "implement",
            1,
            1,
            error("e1"),
            Transition::RetryAt {
                run_at: 11_000,
                error: "e1".into(),
            },
        );
        check(
            "implement",
            2,
            1,
            error("e2"),
            Transition::RetryAt {
                run_at: 12_000,
                error: "e2".into(),
            },
        );
        check(
            "implement",
            3,
            1,
            error("e3"),
            Transition::FailItem {
                reason: "stage `implement` failed after 3 attempts: e3".into(),
                feedback: None,
                class: FailureClass::Quality,
            },
        );
        check(
            "implement",
            1,
            1,
            StageResult::Failed {
                outcome: AttemptOutcome::Timeout,
                class: FailureClass::Quality,
                message: "timed out".into(),
            },
            Transition::RetryAt {
                run_at: 11_000,
                error: "timed out".into(),
            },
        );
    }

    #[test]
    fn a_failed_item_keeps_the_class_of_its_last_failure() {
        let last = |result: StageResult| {
            let config = config();
            match decide(
                &config,
                config.stage("implement").unwrap(),
                3,
                1,
                result,
                0,
                0.5,
            ) {
                Transition::FailItem { class, .. } => class,
                other => panic!("expected FailItem, got {other:?}"),
            }
        };
        let failed = |class| StageResult::Failed {
            outcome: AttemptOutcome::Error,
            class,
            message: "m".into(),
        };
        assert_eq!(last(failed(FailureClass::Infra)), FailureClass::Infra);
        assert_eq!(last(failed(FailureClass::Quality)), FailureClass::Quality);
        assert_eq!(
            last(StageResult::RateLimited {
                message: "429".into(),
                retry_after: None,
            }),
            FailureClass::Infra
        );
        // A stage that is not a gate "rejecting" failed on its own.
        assert_eq!(last(rejected("no")), FailureClass::Quality);
        assert_eq!(
            last(StageResult::Permanent {
                class: FailureClass::Quality,
                message: "m".into(),
            }),
            FailureClass::Quality
        );
    }

    #[test]
    fn permanent_errors_and_cancellation_end_at_once() {
        check(
            "outline",
            1,
            1,
            StageResult::Permanent {
                class: FailureClass::Infra,
                message: "bad".into(),
            },
            Transition::FailItem {
                reason: "stage `outline` failed permanently: bad".into(),
                feedback: None,
                class: FailureClass::Infra,
            },
        );
        check("outline", 1, 1, StageResult::Cancelled, Transition::Cancel);
        check(
            "outline",
            1,
            1,
            StageResult::Paused {
                reason: "over budget".into(),
            },
            Transition::Pause {
                reason: "over budget".into(),
            },
        );
    }

    #[test]
    fn rate_limits_wait_at_least_as_long_as_the_server_asked() {
        let limited = |after: Option<u64>| StageResult::RateLimited {
            message: "429".into(),
            retry_after: after.map(Duration::from_secs),
        };
        // The server's delay when longer than the backoff (1s here)...
        check(
            "implement",
            1,
            1,
            limited(Some(30)),
            Transition::RetryAt {
                run_at: 40_000,
                error: "429".into(),
            },
        );
        // ...the backoff when the server said nothing or asked for less.
        check(
            "implement",
            1,
            1,
            limited(None),
            Transition::RetryAt {
                run_at: 11_000,
                error: "429".into(),
            },
        );
        check(
            "implement",
            2,
            1,
            limited(Some(1)),
            Transition::RetryAt {
                run_at: 12_000,
                error: "429".into(),
            },
        );
        check(
            "implement",
            3,
            1,
            limited(Some(5)),
            Transition::FailItem {
                reason: "stage `implement` failed after 3 attempts: 429".into(),
                feedback: None,
                class: FailureClass::Infra,
            },
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_its_jitter_keeps_gaps_growing() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
        };
        let cases: &[(u32, f64, u64)] = &[
            (1, 0.5, 100),
            (2, 0.5, 200),
            (3, 0.5, 400),
            (4, 0.5, 800),
            (5, 0.5, 1000),
            (40, 0.5, 1000),
            (1, 0.0, 80),
            (1, 0.999_999, 119),
        ];
        for &(attempt, jitter, millis) in cases {
            assert_eq!(
                backoff(&policy, attempt, jitter).as_millis() as u64,
                millis,
                "attempt {attempt} jitter {jitter}"
            );
        }
        // The worst case of one gap is still shorter than the best of the next.
        for attempt in 1..4 {
            assert!(backoff(&policy, attempt, 1.0) < backoff(&policy, attempt + 1, 0.0));
        }
    }

    #[test]
    fn lost_jobs_requeue_fail_or_cancel() {
        let cases = [
            ((1, 3, false), LostJob::Requeue),
            ((2, 3, false), LostJob::Requeue),
            ((3, 3, false), LostJob::Fail),
            ((1, 3, true), LostJob::Cancel),
            ((3, 3, true), LostJob::Cancel),
        ];
        for ((attempts, max, cancel), expected) in cases {
            assert_eq!(
                after_lost(attempts, max, cancel),
                expected,
                "{attempts}/{max} cancel={cancel}"
            );
        }
    }
}
