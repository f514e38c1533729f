//! A `kind = "command"` stage: a program run in the item's workspace,
//! confined by `[sandbox]` unless it says `sandbox = "off"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_span::value::ValueInner;

use super::sandbox::{self, Limits, SandboxMode};
use super::section::{Got, Section, resolve};

/// Default `kill_grace` of a command stage.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
/// Default `max_output` of a command stage, in bytes.
pub const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;

/// A `kind = "command"` stage: a program run in the workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandStage {
    /// `command[0]`.
    pub program: String,
    /// `command[1..]`.
    pub args: Vec<String>,
    /// Extra environment variables (`env = { K = "v" }`).
    pub env: BTreeMap<String, String>,
    /// Between SIGTERM and SIGKILL of the process group. Default 5s.
    pub kill_grace: Duration,
    /// Stdout kept as the stage's output. Default 1 MiB.
    pub max_output: usize,
    /// Confined (default) or not.
    pub sandbox: SandboxMode,
    /// A network of its own (`network = true`) instead of none. Default false.
    pub network: bool,
    /// Variables of the engine's environment passed through by name, on top
    /// of the allowlist (`PATH`, `LANG`, `LC_*`, `TERM`, `HOME`, `IDEAMILL_*`
    /// context). Default none.
    pub pass_env: Vec<String>,
    /// Host paths (absolute) the stage may read, mounted read-only at the
    /// same place. Default none.
    pub read_only: Vec<PathBuf>,
    /// `[sandbox]`'s limits with this stage's `limits = { ... }` applied.
    pub limits: Limits,
}

impl CommandStage {
    /// The `kind` value of a command stage.
    pub const KIND: &str = "command";
}

/// Stands in for the command of a stage whose kind is unknown; that stage
/// is already in error, so it is never returned.
pub(super) fn placeholder() -> CommandStage {
    CommandStage {
        program: String::new(),
        args: Vec::new(),
        env: BTreeMap::new(),
        kill_grace: DEFAULT_KILL_GRACE,
        max_output: DEFAULT_MAX_OUTPUT,
        sandbox: SandboxMode::On,
        network: false,
        pass_env: Vec::new(),
        read_only: Vec::new(),
        limits: Limits::default(),
    }
}

/// The command stage's own keys, after those every stage has.
pub(super) fn parse(s: &mut Section<'_>, root: &Path, sandbox_limits: &Limits) -> CommandStage {
    let command = match command(s) {
        Some(command) => command,
        None => {
            s.missing("command");
            Vec::new()
        }
    };
    process(s, root, sandbox_limits, command, false)
}

/// The keys of a stage that runs a program (`command` and `agent` stages),
/// after its program and arguments: environment, output, confinement.
/// `network` defaults to `network_default`.
pub(super) fn process(
    s: &mut Section<'_>,
    root: &Path,
    sandbox_limits: &Limits,
    command: Vec<String>,
    network_default: bool,
) -> CommandStage {
    let env = env(s);
    let kill_grace = s.duration("kill_grace").or(DEFAULT_KILL_GRACE);
    let max_output = match s.integer("max_output", 1, i64::MAX) {
        // On a 32-bit target a huge limit is as good as no limit.
        Got::Ok(n, _) => usize::try_from(n).unwrap_or(usize::MAX),
        Got::Absent | Got::Bad => DEFAULT_MAX_OUTPUT,
    };
    let sandbox = match s.string("sandbox") {
        Got::Ok(mode, span) => match mode.as_ref() {
            "on" => SandboxMode::On,
            "off" => SandboxMode::Off,
            other => {
                s.invalid(
                    "sandbox",
                    span,
                    format_args!("{other:?} must be \"on\" (the default) or \"off\""),
                );
                SandboxMode::On
            }
        },
        Got::Absent | Got::Bad => SandboxMode::On,
    };
    let network = s.boolean("network").or(network_default);
    let mut pass_env = Vec::new();
    for (name, span) in s.string_list("pass_env") {
        if name.is_empty() || name.contains(['=', '\0']) {
            s.invalid(
                "pass_env",
                span,
                format_args!("{name:?} is not a valid environment variable name"),
            );
        } else {
            pass_env.push(name.into_owned());
        }
    }
    let mut read_only = Vec::new();
    for (path, span) in s.string_list("read_only") {
        if path.is_empty() || path.contains('\0') {
            s.invalid("read_only", span, "an entry is empty or holds a NUL byte");
        } else {
            read_only.push(resolve(root, Path::new(path.as_ref())));
        }
    }
    let limits = match s.section("limits", "limits") {
        Some(table) => {
            // Its messages name the stage, and the keys as `limits.<key>`.
            let mut table = table.with_prefix("limits.");
            table.label = s.label.clone();
            let limits = sandbox::limits(&mut table, sandbox_limits);
            s.absorb(table);
            limits
        }
        None => *sandbox_limits,
    };
    let mut command = command.into_iter();
    CommandStage {
        program: command.next().unwrap_or_default(),
        args: command.collect(),
        env,
        kill_grace,
        max_output,
        sandbox,
        network,
        pass_env,
        read_only,
        limits,
    }
}

/// `command = ["program", "arg", ...]`; None when absent.
pub(super) fn command(s: &mut Section<'_>) -> Option<Vec<String>> {
    let mut command = Vec::new();
    let items = match s.array(
        "command",
        "an array of strings like [\"sh\", \"-c\", \"make\"]",
    ) {
        Got::Ok(items, span) if items.is_empty() => {
            s.invalid(
                "command",
                span,
                "must not be empty: its first element is the program to run",
            );
            return Some(command);
        }
        Got::Ok(items, _) => items,
        Got::Absent => return None,
        Got::Bad => return Some(command),
    };
    for (i, mut item) in items.into_iter().enumerate() {
        let key = format!("command[{i}]");
        match item.take() {
            ValueInner::String(text) if text.contains('\0') => {
                // The OS cannot pass a NUL byte; better said here than at spawn.
                s.invalid(&key, item.span, "contains a NUL byte");
            }
            ValueInner::String(text) if text.is_empty() && i == 0 => {
                s.invalid(&key, item.span, "(the program) must not be empty");
            }
            ValueInner::String(text) => command.push(text.into_owned()),
            other => s.wrong_type(&key, "a string", &other, item.span),
        }
    }
    Some(command)
}

/// `env = { KEY = "value" }`.
fn env(s: &mut Section<'_>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(mut value) = s.take("env") else {
        return env;
    };
    let table = match value.take() {
        ValueInner::Table(table) => table,
        other => {
            s.wrong_type(
                "env",
                "a table like { KEY = \"value\" }",
                &other,
                value.span,
            );
            return env;
        }
    };
    for (key, mut value) in table {
        let name = key.name.as_ref();
        if name.is_empty() || name.contains(['=', '\0']) {
            let message = s.say(format_args!(
                "`env` key {name:?} is not a valid environment variable name \
                 (empty, or contains `=` or a NUL byte)"
            ));
            s.report(key.span, message);
        }
        let key_name = format!("env.{name}");
        match value.take() {
            ValueInner::String(text) if text.contains('\0') => {
                s.invalid(&key_name, value.span, "contains a NUL byte");
            }
            ValueInner::String(text) => {
                env.insert(name.to_owned(), text.into_owned());
            }
            other => s.wrong_type(&key_name, "a string", &other, value.span),
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::testing::{STAGE, check_errors, command, config};

    #[test]
    fn env_and_command() {
        let text = format!(
            "{}\nenv = {{ A = \"1\", \"B C\" = \"2\" }}\n",
            "[[stages]]\nname = \"a\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo $A\"]"
        );
        let config = config(&text);
        let c = command(&config.stages[0]);
        assert_eq!(
            (c.program.as_str(), c.args.as_slice()),
            ("sh", ["-c".to_owned(), "echo $A".to_owned()].as_slice())
        );
        assert_eq!(
            c.env,
            BTreeMap::from([
                ("A".to_owned(), "1".to_owned()),
                ("B C".to_owned(), "2".to_owned())
            ])
        );
        check_errors(
            &format!("{STAGE}env = {{ \"A=B\" = \"1\", C = \"x\\u0000\" }}\n"),
            &[
                "5:9: [[stages]] #1 (\"build\"): `env` key \"A=B\" is not a valid environment variable name (empty, or contains `=` or a NUL byte)",
                "5:26: [[stages]] #1 (\"build\"): `env.C` contains a NUL byte",
            ],
        );
    }
}
