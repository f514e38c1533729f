//! The engine's hold on every attempt, whatever its stage's kind: the
//! stage's `timeout` runs from the start of the attempt; at the deadline the
//! job's cancellation token fires, the kind gets its kill grace (a process
//! group: SIGTERM, the grace, SIGKILL) plus a margin to return, and the
//! attempt is recorded as `timeout`. A kind that does not return by then is
//! abandoned (its future dropped, which kills what it still holds), so no
//! kind can keep a job past `timeout + kill_grace + margin`.

use std::future::Future;
use std::time::Duration;

use ideamill_core::AttemptOutcome;
use ideamill_core::config::StageConfig;
use ideamill_core::duration::format_duration;
use ideamill_core::machine::StageResult;
use ideamill_stages::executor::Execution;
use tokio_util::sync::CancellationToken;

/// Past the kill grace, how long a kind may take to hand back its attempt.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// `run` (an attempt of `stage`) held to the stage's timeout.
pub(crate) async fn bounded(
    run: impl Future<Output = Execution>,
    cancel: &CancellationToken,
    stage: &StageConfig,
) -> Execution {
    tokio::pin!(run);
    tokio::select! {
        execution = &mut run => return execution,
        () = tokio::time::sleep(stage.timeout) => {}
    }
    let facts = stage.kind.facts();
    cancel.cancel();
    let message = format!(
        "timed out after {}; its work was stopped",
        format_duration(stage.timeout)
    );
    let timed_out = |message: String| StageResult::Failed {
        outcome: AttemptOutcome::Timeout,
        class: facts.timeout_class,
        message,
    };
    match tokio::time::timeout(facts.kill_grace() + STOP_MARGIN, &mut run).await {
        Ok(mut execution) => {
            // The kind stopped because the token fired: its outcome is the
            // timeout. What it kept (output, usage) stays on the attempt.
            if execution.result == StageResult::Cancelled {
                execution.result = timed_out(message.clone());
                execution.error = Some(match execution.error.take() {
                    Some(note) => format!("{message}; {note}"),
                    None => message,
                });
            }
            execution
        }
        Err(_) => {
            let message = format!(
                "{message}; it did not stop within {} and was abandoned",
                format_duration(facts.kill_grace() + STOP_MARGIN)
            );
            Execution::noted(timed_out(message.clone()), message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ideamill_core::FailureClass;

    fn stage(kind: &str, timeout_ms: u64) -> StageConfig {
        let text = format!(
            "[providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\
             [[stages]]\nname = \"s\"\ntimeout = \"{timeout_ms}ms\"\n{kind}\n"
        );
        let config =
            ideamill_core::config::parse(&text, std::path::Path::new("/p/ideamill.toml")).unwrap();
        config.stages[0].clone()
    }

    fn passed() -> Execution {
        Execution::noted(
            StageResult::Passed {
                output: "ok".into(),
            },
            String::new(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_kind_that_stops_when_told_is_a_timeout_of_its_class() {
        for (kind, class) in [
            (
                "kind = \"command\"\ncommand = [\"x\"]\nkill_grace = \"1s\"",
                FailureClass::Quality,
            ),
            (
                "kind = \"llm\"\nprovider = \"p\"\nprompt = \"p.md\"",
                FailureClass::Infra,
            ),
            (
                "kind = \"agent\"\npreset = \"claude\"\nprompt = \"p.md\"",
                FailureClass::Quality,
            ),
        ] {
            let stage = stage(kind, 100);
            let cancel = CancellationToken::new();
            let obeys = async {
                cancel.cancelled().await;
                Execution::noted(StageResult::Cancelled, "kept".into())
            };
            let e = bounded(obeys, &cancel, &stage).await;
            assert_eq!(
                e.result,
                StageResult::Failed {
                    outcome: AttemptOutcome::Timeout,
                    class,
                    message: "timed out after 100ms; its work was stopped".into()
                },
                "{kind}"
            );
            assert_eq!(
                e.error.as_deref(),
                Some("timed out after 100ms; its work was stopped; kept")
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn work_done_in_time_is_kept_and_a_kind_that_ignores_the_token_is_abandoned() {
        let stage = stage(
            "kind = \"command\"\ncommand = [\"x\"]\nkill_grace = \"2s\"",
            1000,
        );
        let cancel = CancellationToken::new();
        let e = bounded(async { passed() }, &cancel, &stage).await;
        assert!(matches!(e.result, StageResult::Passed { .. }));
        assert!(!cancel.is_cancelled());

        let started = tokio::time::Instant::now();
        let e = bounded(std::future::pending(), &cancel, &stage).await;
        assert!(cancel.is_cancelled());
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1 + 2 + 5),
            "timeout, then the kill grace and the margin"
        );
        assert!(
            matches!(&e.result, StageResult::Failed { outcome: AttemptOutcome::Timeout, message, .. }
                if message.ends_with("it did not stop within 7s and was abandoned")),
            "{:?}",
            e.result
        );
    }
}
