//! `[[stages]]`: the pipeline, in order. What every stage has (name, kind,
//! timeout, retries, concurrency, gate) is read here; each kind's own keys
//! in its module (`command.rs`, `llm.rs`, `agent.rs`), listed in [`KINDS`].
//!
//! # The stage-kind contract
//!
//! A kind is a config type with a parser (its keys and their checks) and a
//! [`KindConfig`] implementation (the facts the rest of ideamill needs about
//! it); `ideamill-stages` adds how it runs (`ideamill_stages::kind`). Every
//! match on [`StageKind`] is exhaustive, so a new variant makes the compiler
//! point at each place that must say what the kind does.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use toml_span::Span;
use toml_span::value::{Table, Value, ValueInner};

use std::collections::BTreeMap;

use super::agent::{self, AgentStage};
use super::command::{self, CommandStage};
use super::llm::{self, LlmStage};
use super::providers::ProviderConfig;
use super::sandbox::Limits;
use super::section::{Got, Problems, Section, is_valid_name, shown};
use crate::model::{FailureClass, Gate, RetryPolicy};

/// Default `timeout` of a stage.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default `retry.max_attempts` of a stage.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default `retry.backoff` of a stage: the first retry's delay.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
/// Default `retry.backoff_max` of a stage: the longest retry delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);
/// Default `concurrency` of a stage.
pub const DEFAULT_CONCURRENCY: u32 = 1;
/// The most jobs of one stage, or requests to one provider, at once.
pub const MAX_CONCURRENCY: i64 = 1024;
/// Default `gate.max_rounds` of a stage.
pub const DEFAULT_MAX_ROUNDS: u32 = 3;

const NO_STAGES: &str = "no [[stages]]: a pipeline needs at least one stage";

/// One `[[stages]]` entry: a step of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig {
    /// Unique among the stages; names the stage in the store, the CLI and the web.
    pub name: String,
    /// What the stage runs, with its kind's settings.
    pub kind: StageKind,
    /// Default 10m.
    pub timeout: Duration,
    /// A job whose processes make no progress for this long (no byte of
    /// output, no change in the workspace, next to no CPU time) is *hung*:
    /// it is killed with an evidence folder and retried. `None` when off.
    /// Command stages: off unless set; agent stages: 5 minutes (see
    /// [`default_stall_after`]).
    pub stall_after: Option<Duration>,
    /// Defaults: max_attempts 3, backoff 2s, backoff_max 10m.
    pub retry: RetryPolicy,
    /// Jobs of this stage one process runs at once. Default 1.
    pub concurrency: u32,
    /// A QA gate: the stage judges the work and a rejection sends it back;
    /// `None` if the stage is not a gate.
    pub gate: Option<Gate>,
}

/// What a stage runs: one variant per kind, each holding its kind's config.
#[derive(Debug, Clone, PartialEq)]
pub enum StageKind {
    /// `kind = "command"`: a program.
    Command(CommandStage),
    /// `kind = "llm"`: a model call.
    Llm(LlmStage),
    /// `kind = "agent"`: a coding-agent CLI.
    Agent(AgentStage),
}

/// The registry of stage kinds: each `kind = "..."` value and its parser.
/// With [`StageKind`] and its two accessors below, the only list of kinds.
const KINDS: &[Kind] = &[
    Kind {
        name: CommandStage::KIND,
        parse: |s, cx| StageKind::Command(command::parse(s, cx.root, cx.limits)),
    },
    Kind {
        name: LlmStage::KIND,
        parse: |s, cx| StageKind::Llm(llm::parse(s, cx.root, cx.providers)),
    },
    Kind {
        name: AgentStage::KIND,
        parse: |s, cx| StageKind::Agent(agent::parse(s, cx.root, cx.limits)),
    },
];

/// One entry of [`KINDS`].
struct Kind {
    name: &'static str,
    /// Reads the kind's own keys (after those every stage has), reporting
    /// every problem in the section.
    parse: fn(&mut Section<'_>, &Context<'_>) -> StageKind,
}

impl StageKind {
    /// The kind's config, as the facts every kind gives.
    pub fn config(&self) -> &dyn KindConfig {
        match self {
            StageKind::Command(c) => c,
            StageKind::Llm(c) => c,
            StageKind::Agent(c) => c,
        }
    }

    fn config_mut(&mut self) -> &mut dyn KindConfig {
        match self {
            StageKind::Command(c) => c,
            StageKind::Llm(c) => c,
            StageKind::Agent(c) => c,
        }
    }

    /// The `kind` value naming this kind in the config.
    pub fn name(&self) -> &'static str {
        self.config().name()
    }

    /// What the rest of ideamill needs to know of this stage's kind.
    pub fn facts(&self) -> KindFacts<'_> {
        self.config().facts()
    }

    /// Secrets (`env` values) replaced by `replacement`, for evidence and logs.
    pub fn redact(&mut self, replacement: &str) {
        self.config_mut().redact(replacement);
    }
}

/// What every stage kind's config tells the engine, health, the sandbox and
/// the tools. The engine owns what every stage has (timeout, retries,
/// cancellation, the recording of outcomes); a kind says only what differs.
pub trait KindConfig {
    /// The `kind = "..."` value.
    fn name(&self) -> &'static str;
    /// The facts about this stage that do not depend on the kind's name.
    fn facts(&self) -> KindFacts<'_>;
    /// Its secrets (`env` values) replaced by `replacement`.
    fn redact(&mut self, replacement: &str);
}

/// What a stage's kind says about it to the rest of ideamill.
#[derive(Debug, Clone, Copy)]
pub struct KindFacts<'a> {
    /// The program it runs and how it is confined, for kinds that run one.
    pub process: Option<&'a CommandStage>,
    /// The `[providers]` key it calls, for kinds that call one.
    pub provider: Option<&'a str>,
    /// Its prompt template, for kinds that render one.
    pub prompt: Option<&'a Path>,
    /// Whether its work is files in the workspace (what `eval` keeps).
    pub writes_files: bool,
    /// What a timeout says about the work: a program that hangs is the
    /// work's failure, a model that does not answer in time is the host's.
    pub timeout_class: FailureClass,
}

impl KindFacts<'_> {
    /// Between the stop signal and the kill, for kinds that run a process;
    /// zero for the others (their work ends when they are told to stop).
    pub fn kill_grace(&self) -> Duration {
        self.process.map_or(Duration::ZERO, |p| p.kill_grace)
    }
}

impl KindConfig for CommandStage {
    fn name(&self) -> &'static str {
        CommandStage::KIND
    }
    fn facts(&self) -> KindFacts<'_> {
        KindFacts {
            process: Some(self),
            provider: None,
            prompt: None,
            writes_files: false,
            timeout_class: FailureClass::Quality,
        }
    }
    fn redact(&mut self, replacement: &str) {
        self.env
            .values_mut()
            .for_each(|v| *v = replacement.to_owned());
    }
}

impl KindConfig for LlmStage {
    fn name(&self) -> &'static str {
        LlmStage::KIND
    }
    fn facts(&self) -> KindFacts<'_> {
        KindFacts {
            process: None,
            provider: Some(&self.provider),
            prompt: Some(&self.prompt),
            writes_files: self.files,
            timeout_class: FailureClass::Infra,
        }
    }
    fn redact(&mut self, _replacement: &str) {}
}

impl KindConfig for AgentStage {
    fn name(&self) -> &'static str {
        AgentStage::KIND
    }
    fn facts(&self) -> KindFacts<'_> {
        KindFacts {
            process: Some(&self.process),
            provider: None,
            prompt: Some(&self.prompt),
            writes_files: true,
            timeout_class: FailureClass::Quality,
        }
    }
    fn redact(&mut self, replacement: &str) {
        self.process.redact(replacement);
    }
}

/// What a stage's checks need of the configs around it.
pub(super) struct Context<'a> {
    pub(super) root: &'a Path,
    pub(super) providers: &'a BTreeMap<String, ProviderConfig>,
    /// `[sandbox]`'s limits, which a command stage's own override.
    pub(super) limits: &'a Limits,
}

/// A gate whose `retry_from` is checked once every stage name is known.
struct PendingGate {
    stage: usize,
    label: String,
    retry_from: String,
    span: Span,
}

/// Every `[[stages]]` entry, and the checks across them: names unique, each
/// gate sending work back to an earlier stage.
pub(super) fn parse(
    array: Got<Vec<Value<'_>>>,
    context: &Context<'_>,
    problems: &mut Problems,
) -> Vec<StageConfig> {
    let array = match array {
        Got::Ok(array, span) => {
            if array.is_empty() {
                problems.add(span, NO_STAGES.to_owned());
            }
            array
        }
        Got::Absent => {
            problems.add(Span::default(), NO_STAGES.to_owned());
            return Vec::new();
        }
        Got::Bad => return Vec::new(),
    };

    let mut stages = Vec::new();
    // Each stage's name, as written, even if invalid, so that later checks
    // do not pile spurious errors on an already reported one.
    let mut names: Vec<Option<String>> = Vec::new();
    let mut first_use: HashMap<String, usize> = HashMap::new();
    let mut gates = Vec::new();
    for (i, mut value) in array.into_iter().enumerate() {
        let number = i + 1;
        let table = match value.take() {
            ValueInner::Table(table) => table,
            other => {
                problems.add(
                    value.span,
                    format!(
                        "[[stages]] #{number} must be a table, found {}",
                        other.type_str()
                    ),
                );
                names.push(None);
                continue;
            }
        };
        let mut s = Section::new(table, value.span, format!("[[stages]] #{number}"));
        let (stage, name, gate) = stage(number, &mut s, context);
        problems.absorb(s);
        if let Some((name, span)) = &name {
            if let Some(first) = first_use.get(name) {
                problems.add(
                    *span,
                    format!(
                        "[[stages]] #{number} ({name:?}): duplicate stage name {name:?}; \
                         [[stages]] #{first} already has it"
                    ),
                );
            } else {
                first_use.insert(name.clone(), number);
            }
        }
        names.push(name.map(|(name, _)| name));
        gates.extend(gate);
        stages.push(stage);
    }

    for gate in gates {
        let earlier: Vec<&str> = names[..gate.stage]
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if earlier.contains(&gate.retry_from.as_str()) {
            continue;
        }
        let why = if names[gate.stage].as_ref() == Some(&gate.retry_from) {
            "is this stage itself; a gate sends work back to an earlier stage"
        } else if names.contains(&Some(gate.retry_from.clone())) {
            "is not an earlier stage"
        } else {
            "is not a stage"
        };
        let earlier = if earlier.is_empty() {
            "none, so the first stage cannot be a gate".to_owned()
        } else {
            earlier.join(", ")
        };
        problems.add(
            gate.span,
            format!(
                "{}: gate.retry_from {:?} {why}; earlier stages: {earlier}",
                gate.label, gate.retry_from
            ),
        );
    }
    stages
}

/// One `[[stages]]` entry; also returns its name and its gate's target for
/// the checks across stages. Its keys are read in the order the
/// documentation shows them: every stage's, then its kind's.
fn stage(
    number: usize,
    s: &mut Section<'_>,
    context: &Context<'_>,
) -> (StageConfig, Option<(String, Span)>, Option<PendingGate>) {
    let name = match s.required_string("name") {
        Got::Ok(name, span) => {
            s.label = format!("[[stages]] #{number} ({name:?})");
            if !is_valid_name(&name) {
                s.invalid(
                    "name",
                    span,
                    format_args!(
                        "{name:?} must be 1 to 63 lowercase letters, digits, `_` or `-`, \
                         starting with a letter or digit"
                    ),
                );
            }
            Some((name.into_owned(), span))
        }
        Got::Absent | Got::Bad => None,
    };
    let kind_name = s.required_string("kind");
    let timeout = s.nonzero_duration("timeout").or(DEFAULT_TIMEOUT);
    let stall_after = s.nonzero_duration_or_off("stall_after");
    let max_attempts = s.count("max_attempts", i64::MAX, DEFAULT_MAX_ATTEMPTS);
    let backoff = s.duration("backoff").checkable(DEFAULT_BACKOFF);
    let backoff_max = s.duration("backoff_max").checkable(DEFAULT_BACKOFF_MAX);
    if let (Some((backoff, backoff_span)), Some((backoff_max, backoff_max_span))) =
        (backoff, backoff_max)
    {
        // A cap below the first delay would silently replace it, which is
        // surely not what was meant.
        if backoff_max < backoff {
            let span = backoff_max_span.or(backoff_span).unwrap_or(s.span);
            s.invalid(
                "backoff_max",
                span,
                format_args!(
                    "({}) must be at least `backoff` ({})",
                    shown(backoff_max, backoff_max_span),
                    shown(backoff, backoff_span)
                ),
            );
        }
    }
    let concurrency = s.count("concurrency", MAX_CONCURRENCY, DEFAULT_CONCURRENCY);
    let (gate, pending) = match gate(s) {
        Some((gate, Some((retry_from, span)))) => {
            let pending = PendingGate {
                stage: number - 1,
                label: s.label.clone(),
                retry_from,
                span,
            };
            (Some(gate), Some(pending))
        }
        Some((gate, None)) => (Some(gate), None),
        None => (None, None),
    };

    let kind = match &kind_name {
        Got::Ok(name, span) => match KINDS.iter().find(|k| k.name == name) {
            Some(kind) => Some((kind.parse)(s, context)),
            None => {
                let known: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
                let message = s.say(format_args!(
                    "unknown stage kind {name:?}; known kinds: {}",
                    known.join(", ")
                ));
                s.report(*span, message);
                None
            }
        },
        Got::Absent | Got::Bad => None,
    };
    let kind = match kind {
        Some(kind) => kind,
        None => {
            // With the kind unknown, any kind's key is known, and what its
            // value says is not: the stage is already in error.
            let found = s.problems_found();
            for kind in KINDS {
                (kind.parse)(s, context);
            }
            s.drop_problems_since(found);
            // The placeholder is never returned: the stage is already in error.
            StageKind::Command(command::placeholder())
        }
    };
    let stall_after = match (stall_after, kind.facts().process) {
        (Got::Ok(_, span), None) => {
            s.invalid(
                "stall_after",
                span,
                "applies to stages that run processes; an llm stage's provider has `idle_timeout`",
            );
            None
        }
        (Got::Ok(after, _), Some(_)) => after,
        (Got::Absent | Got::Bad, _) => default_stall_after(&kind),
    };

    let stage = StageConfig {
        name: name
            .as_ref()
            .map_or_else(String::new, |(name, _)| name.clone()),
        kind,
        timeout,
        stall_after,
        retry: RetryPolicy {
            max_attempts,
            backoff: backoff.map_or(DEFAULT_BACKOFF, |(d, _)| d),
            backoff_max: backoff_max.map_or(DEFAULT_BACKOFF_MAX, |(d, _)| d),
        },
        concurrency,
        gate,
    };
    (stage, name, pending)
}

/// A stage kind's `stall_after` when the stage sets none. Plain command
/// stages: off. A build, a test suite or a download may legitimately sit
/// quiet and idle (a test's `sleep`, a lock, a slow server), the
/// wall-clock `timeout` already bounds them, and a pipeline that ran before
/// must not start killing its jobs on an upgrade; a stage opts in.
pub fn default_stall_after(kind: &StageKind) -> Option<Duration> {
    match kind {
        StageKind::Command(_) => None,
        StageKind::Llm(_) => None,
        // An agent CLI that is silent, idle and leaves the workspace alone
        // for five minutes is waiting on something that will not come.
        StageKind::Agent(_) => Some(Duration::from_secs(300)),
    }
}

/// The stage's gate, if it has one, and where its `retry_from` was written.
fn gate(stage: &mut Section<'_>) -> Option<(Gate, Option<(String, Span)>)> {
    let mut value = stage.take("gate")?;
    let table: Table<'_> = match value.take() {
        ValueInner::Table(table) => table,
        other => {
            stage.wrong_type(
                "gate",
                "a table like { retry_from = \"implement\", max_rounds = 3 }",
                &other,
                value.span,
            );
            return None;
        }
    };
    let mut g = Section::new(table, value.span, stage.label.clone()).with_prefix("gate.");
    let retry_from = match g.required_string("retry_from") {
        Got::Ok(name, span) => Some((name.into_owned(), span)),
        Got::Absent | Got::Bad => None,
    };
    let max_rounds = g.count("max_rounds", i64::MAX, DEFAULT_MAX_ROUNDS);
    stage.absorb(g);
    let gate = Gate {
        retry_from: retry_from
            .as_ref()
            .map_or_else(String::new, |(name, _)| name.clone()),
        max_rounds,
    };
    Some((gate, retry_from))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{STAGE, check_errors, command, config, stage_named};
    use crate::model::Gate;

    #[test]
    fn stall_after_is_a_duration_or_off_and_off_by_default_for_commands() {
        use std::time::Duration;
        let stall = |extra: &str| config(&format!("{STAGE}{extra}\n")).stages[0].stall_after;
        assert_eq!(stall(""), None);
        assert_eq!(stall("stall_after = \"off\""), None);
        assert_eq!(
            stall("stall_after = \"90s\""),
            Some(Duration::from_secs(90))
        );
        check_errors(
            &format!("{STAGE}stall_after = \"0s\"\n"),
            &[
                "5:15: [[stages]] #1 (\"build\"): `stall_after` must be greater than 0s (or \"off\")",
            ],
        );
        check_errors(
            &format!("{STAGE}stall_after = 5\n"),
            &[
                "5:15: [[stages]] #1 (\"build\"): `stall_after` must be a duration string like \"5m\", or \"off\", found integer",
            ],
        );
        check_errors(
            "[providers.p]\nkind = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\n\
             [[stages]]\nname = \"a\"\nkind = \"llm\"\nprovider = \"p\"\nprompt = \"x\"\nstall_after = \"1m\"\n",
            &[
                "10:15: [[stages]] #1 (\"a\"): `stall_after` applies to stages that run processes; an llm stage's provider has `idle_timeout`",
            ],
        );
    }

    #[test]
    fn stage_kinds_and_names() {
        check_errors(
            "[[stages]]\nname = \"a\"\nkind = \"wasm\"\nflavour = \"x\"\n",
            &[
                "3:8: [[stages]] #1 (\"a\"): unknown stage kind \"wasm\"; known kinds: command, llm, agent",
                "4:1: unknown key `flavour` in [[stages]] #1 (\"a\"); expected one of: name, kind, \
                 timeout, stall_after, max_attempts, backoff, backoff_max, concurrency, gate, command, env, \
                 kill_grace, max_output, sandbox, network, pass_env, read_only, limits, provider, prompt, system, temperature, max_tokens, files, \
                 max_files, max_file_bytes, preset, model, prompt_via, output",
            ],
        );
        for bad in ["Build", "-x", "a b", "", &"a".repeat(64)] {
            let text =
                format!("[[stages]]\nname = {bad:?}\nkind = \"command\"\ncommand = [\"x\"]\n");
            check_errors(
                &text,
                &[&format!(
                    "2:8: [[stages]] #1 ({bad:?}): `name` {bad:?} must be 1 to 63 lowercase \
                     letters, digits, `_` or `-`, starting with a letter or digit"
                )],
            );
        }
        for good in ["a", "0", "build-2_x", &"a".repeat(63)] {
            let text =
                format!("[[stages]]\nname = {good:?}\nkind = \"command\"\ncommand = [\"x\"]\n");
            assert_eq!(config(&text).stages[0].name, good);
        }
    }

    #[test]
    fn duplicate_stage_names() {
        check_errors(
            &format!("{STAGE}{STAGE}{STAGE}"),
            &[
                "6:8: [[stages]] #2 (\"build\"): duplicate stage name \"build\"; [[stages]] #1 already has it",
                "10:8: [[stages]] #3 (\"build\"): duplicate stage name \"build\"; [[stages]] #1 already has it",
            ],
        );
    }

    #[test]
    fn integer_ranges() {
        check_errors(
            &format!(
                "{STAGE}concurrency = 1025\nmax_output = 0\ngate = {{ retry_from = \"x\", max_rounds = 0 }}\n"
            ),
            &[
                "5:15: [[stages]] #1 (\"build\"): `concurrency` must be an integer from 1 to 1024, found 1025",
                "6:14: [[stages]] #1 (\"build\"): `max_output` must be an integer >= 1, found 0",
                "7:23: [[stages]] #1 (\"build\"): gate.retry_from \"x\" is not a stage; earlier stages: none, so the first stage cannot be a gate",
                "7:41: [[stages]] #1 (\"build\"): `gate.max_rounds` must be an integer >= 1, found 0",
            ],
        );
        check_errors(
            &format!("{STAGE}max_attempts = 4294967296\n"),
            &[
                "5:16: [[stages]] #1 (\"build\"): `max_attempts` must be an integer <= 4294967295, found 4294967296",
            ],
        );
        let text = format!("{STAGE}concurrency = 1024\nmax_attempts = 1\nmax_output = 10\n");
        let stage = &config(&text).stages[0];
        assert_eq!(
            (
                stage.concurrency,
                stage.retry.max_attempts,
                command(stage).max_output
            ),
            (1024, 1, 10)
        );
    }

    fn check_gate(retry_from: &str, expected: &[&str]) {
        let text = format!(
            "{}\n{}\n[[stages]]\nname = \"qa\"\nkind = \"command\"\ncommand = [\"qa\"]\ngate = {{ retry_from = {retry_from:?} }}\n{}",
            stage_named("outline"),
            stage_named("implement"),
            stage_named("deploy"),
        );
        if expected.is_empty() {
            let config = config(&text);
            let gate = config.stage("qa").and_then(|s| s.gate.clone());
            assert_eq!(
                gate,
                Some(Gate {
                    retry_from: retry_from.to_owned(),
                    max_rounds: 3
                })
            );
        } else {
            check_errors(&text, expected);
        }
    }

    #[test]
    fn gate_retry_from() {
        check_gate("outline", &[]);
        check_gate("implement", &[]);
        check_gate(
            "deploy",
            &[
                "13:23: [[stages]] #3 (\"qa\"): gate.retry_from \"deploy\" is not an earlier stage; earlier stages: outline, implement",
            ],
        );
        check_gate(
            "nope",
            &[
                "13:23: [[stages]] #3 (\"qa\"): gate.retry_from \"nope\" is not a stage; earlier stages: outline, implement",
            ],
        );
        check_gate(
            "qa",
            &[
                "13:23: [[stages]] #3 (\"qa\"): gate.retry_from \"qa\" is this stage itself; a gate sends work back to an earlier stage; earlier stages: outline, implement",
            ],
        );
    }

    /// A gate may be written as an inline table, with dotted keys or as a
    /// sub-table; all mean the same.
    fn check_gate_form(gate: &str, expected: Result<Gate, &str>) {
        let text = format!("{}\n{STAGE}{gate}\n", stage_named("draft"));
        match expected {
            Ok(gate) => assert_eq!(config(&text).stages[1].gate, Some(gate), "config:\n{text}"),
            Err(message) => check_errors(&text, &[message]),
        }
    }

    #[test]
    fn gate_forms() {
        let gate = |max_rounds| Gate {
            retry_from: "draft".to_owned(),
            max_rounds,
        };
        check_gate_form("gate = { retry_from = \"draft\" }", Ok(gate(3)));
        check_gate_form(
            "gate.retry_from = \"draft\"\ngate.max_rounds = 5",
            Ok(gate(5)),
        );
        check_gate_form(
            "[stages.gate]\nretry_from = \"draft\"\nmax_rounds = 2",
            Ok(gate(2)),
        );
        check_gate_form(
            "[stages.gate]\nmax_rounds = 2",
            Err("9:1: [[stages]] #2 (\"build\"): missing required key `gate.retry_from`"),
        );
    }
}
