//! What the pipeline made of one idea, judged: the files it had after each
//! round (rebuilt from the model's answers), how the hidden tests ended on
//! them, and why an idea that does not pass failed.

use std::collections::BTreeMap;

use ideamill_core::{AttemptOutcome, FailureClass, ItemState};
use ideamill_stages::command::{CommandEnd, CommandResult};
use ideamill_store::{ItemDetail, OutputRow};

/// A workspace's files: path → content.
pub type Files = BTreeMap<String, String>;

/// The files after each round `1..=rounds`: the answers of `files_stages`
/// (llm stages with `files = true`; an item's outputs are its succeeded
/// attempts' answers), extracted and applied in order, later ones
/// overwriting; a round the item never reached carries the last state
/// forward.
pub fn round_states(outputs: &[OutputRow], files_stages: &[&str], rounds: u32) -> Vec<Files> {
    let mut answers: Vec<&OutputRow> = outputs
        .iter()
        .filter(|o| files_stages.contains(&o.stage.as_str()))
        .collect();
    // Job ids grow with time; the round first, should a clock disagree.
    answers.sort_by_key(|o| (o.round, o.job_id));
    let mut states = Vec::new();
    let mut files = Files::new();
    let mut next = answers.into_iter().peekable();
    for round in 1..=rounds {
        while let Some(o) = next.next_if(|o| o.round <= round) {
            let extraction = ideamill_llm::extract_files(&o.output);
            files.extend(extraction.files.into_iter().map(|f| (f.path, f.content)));
        }
        states.push(files.clone());
    }
    states
}

/// How the hidden tests ended on one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hidden {
    Pass,
    /// `main` (or a name from it) could not be imported: missing, or broken.
    ImportError,
    /// Tests ran and some assertions failed (no exceptions).
    AssertionFailures,
    /// Tests ran and some raised exceptions.
    Exceptions,
    Timeout,
    /// Neither a pass nor a test report: a crash, a limit, a sandbox problem.
    DidNotRun(String),
}

impl Hidden {
    pub fn passed(&self) -> bool {
        *self == Hidden::Pass
    }

    pub fn label(&self) -> String {
        match self {
            Hidden::Pass => "hidden: pass".to_owned(),
            Hidden::ImportError => "hidden: import error".to_owned(),
            Hidden::AssertionFailures => "hidden: assertion failures".to_owned(),
            Hidden::Exceptions => "hidden: exceptions".to_owned(),
            Hidden::Timeout => "hidden: timeout".to_owned(),
            Hidden::DidNotRun(why) => format!("hidden: did not run ({why})"),
        }
    }

    /// From `python3 -m unittest -q MODULE`'s end and report (on stderr).
    pub fn from_run(run: &CommandResult) -> Hidden {
        let report = &run.stderr;
        match &run.end {
            CommandEnd::Exited(0) if report.contains("\nOK") || report.starts_with("OK") => {
                Hidden::Pass
            }
            CommandEnd::TimedOut => Hidden::Timeout,
            CommandEnd::Exited(_)
                if report.contains("_FailedTest")
                    || report.contains("ImportError")
                    || report.contains("ModuleNotFoundError") =>
            {
                Hidden::ImportError
            }
            CommandEnd::Exited(_) if report.contains("FAILED (") => {
                if report.contains("errors=") {
                    Hidden::Exceptions
                } else {
                    Hidden::AssertionFailures
                }
            }
            CommandEnd::Exited(0) => Hidden::DidNotRun("exit code 0 without a report".to_owned()),
            other => Hidden::DidNotRun(other.describe()),
        }
    }
}

/// Whether the item failed for the infrastructure (the provider's rate
/// limits, 5xx, timeouts; the host's limits or errors): such an item says
/// nothing about the model, so the report counts it apart from the scored
/// ideas, whatever its workspace holds.
pub fn failed_for_infra(detail: &ItemDetail) -> bool {
    detail.item.state == ItemState::Failed && detail.item.failure_class == Some(FailureClass::Infra)
}

/// Why an idea failed: one whose final workspace fails the hidden tests, or
/// one that failed for the infrastructure (`infra: ...`).
pub fn failure_class(detail: &ItemDetail, hidden: &Hidden) -> String {
    if failed_for_infra(detail) {
        let last = detail
            .attempts
            .iter()
            .rev()
            .find(|a| a.outcome != AttemptOutcome::Succeeded);
        return match last {
            Some(a) => format!("infra: {} ({})", a.stage, a.outcome.as_str()),
            None => "infra".to_owned(),
        };
    }
    match detail.item.state {
        ItemState::Done => format!("done but hidden tests fail ({})", hidden.label()),
        ItemState::Cancelled => "cancelled".to_owned(),
        ItemState::Active => "not finished".to_owned(),
        ItemState::Failed => {
            let error = detail.item.last_error.as_deref().unwrap_or("");
            if error.contains("rejected by gate") {
                let report = detail.feedback.last().map_or("", |f| f.feedback.as_str());
                if report.contains("No tests found") || report.contains("No test ran") {
                    "failed: no tests found".to_owned()
                } else if report.contains("did not finish") {
                    "failed: own tests time out".to_owned()
                } else {
                    "failed: own tests failing".to_owned()
                }
            } else {
                let last = detail
                    .attempts
                    .iter()
                    .rev()
                    .find(|a| a.outcome != AttemptOutcome::Succeeded);
                match last {
                    Some(a) => format!("failed: error ({}: {})", a.stage, a.outcome.as_str()),
                    None => "failed: error".to_owned(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn output(job_id: i64, stage: &str, round: u32, output: &str) -> OutputRow {
        OutputRow {
            stage: stage.into(),
            round,
            job_id,
            output: output.into(),
            created_at: 0,
        }
    }

    fn file(name: &str, body: &str) -> String {
        format!("```python {name}\n{body}\n```\n")
    }

    fn names(states: &[Files]) -> Vec<Vec<String>> {
        states
            .iter()
            .map(|s| s.iter().map(|(k, v)| format!("{k}={}", v.trim())).collect())
            .collect()
    }

    #[test]
    fn rounds_accumulate_files_and_carry_the_last_state_forward() {
        let outputs = [
            output(5, "implement", 2, &file("main.py", "v2")),
            output(1, "outline", 1, &file("outline.py", "x")),
            output(
                3,
                "implement",
                1,
                &(file("main.py", "v1") + &file("test_main.py", "t1")),
            ),
            output(6, "qa", 2, &file("main.py", "qa")),
        ];
        let states = round_states(&outputs, &["implement"], 3);
        assert_eq!(
            names(&states),
            [
                vec!["main.py=v1", "test_main.py=t1"],
                vec!["main.py=v2", "test_main.py=t1"],
                vec!["main.py=v2", "test_main.py=t1"],
            ]
        );
        assert_eq!(
            names(&round_states(&outputs, &[], 2)),
            [Vec::<String>::new(), vec![]],
            "no files stage: nothing to rebuild"
        );
    }

    fn result(end: CommandEnd, stderr: &str) -> CommandResult {
        CommandResult {
            end,
            stdout: String::new(),
            stdout_dropped: 0,
            stderr: stderr.into(),
            stderr_dropped: 0,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn hidden_outcomes_from_the_unittest_report() {
        let check = |end: CommandEnd, stderr: &str, expected: Hidden| {
            assert_eq!(Hidden::from_run(&result(end, stderr)), expected, "{stderr}");
        };
        let line = "-".repeat(70);
        check(
            CommandEnd::Exited(0),
            &format!("{line}\nRan 3 tests in 0.001s\n\nOK\n"),
            Hidden::Pass,
        );
        check(
            CommandEnd::Exited(1),
            "ERROR: ideamill_hidden_tests (unittest.loader._FailedTest.ideamill_hidden_tests)\n\
             ImportError: cannot import name 'add' from 'main'\nFAILED (errors=1)\n",
            Hidden::ImportError,
        );
        check(
            CommandEnd::Exited(1),
            "FAIL: test_a\nAssertionError: 1 != 2\nRan 2 tests\n\nFAILED (failures=1)\n",
            Hidden::AssertionFailures,
        );
        check(
            CommandEnd::Exited(1),
            "ERROR: test_a\nTypeError: x\nFAILED (failures=1, errors=1)\n",
            Hidden::Exceptions,
        );
        check(CommandEnd::TimedOut, "", Hidden::Timeout);
        check(
            CommandEnd::Signaled(9),
            "",
            Hidden::DidNotRun("killed by signal 9 (SIGKILL)".into()),
        );
        check(
            CommandEnd::Exited(0),
            "",
            Hidden::DidNotRun("exit code 0 without a report".into()),
        );
    }
}
