//! A `kind = "agent"` stage: a coding-agent CLI (`claude -p`, `codex exec`,
//! `aider`, `gemini`, `opencode run`, or any program) run like a command
//! stage, in the item's workspace and the sandbox, with a prompt rendered
//! from a template like an `llm` stage's. A `preset` says how to call the
//! CLI: its arguments, where the prompt goes, and how its final message and
//! its usage are read from what it prints.

use std::path::{Path, PathBuf};

use super::command::{self, CommandStage};
use super::llm::DEFAULT_MAX_FILES;
use super::sandbox::Limits;
use super::section::{Got, Section, resolve};

/// A `kind = "agent"` stage: an agent CLI run in the workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStage {
    /// Which CLI, and so the defaults below.
    pub preset: AgentPreset,
    /// The prompt template (minijinja, the variables of `llm` stages), absolute.
    pub prompt: PathBuf,
    /// Passed with the preset's model flag, and used to price tokens by
    /// `[prices]` when the CLI reports tokens but no cost.
    pub model: Option<String>,
    /// Where the rendered prompt goes.
    pub prompt_via: PromptVia,
    /// How the final message and the usage are read from stdout.
    pub output: AgentOutput,
    /// The most workspace files listed on the attempt. Default 50.
    pub max_files: usize,
    /// The program and its arguments (the preset's, or `command`), before
    /// the model flag and the prompt, with the keys every program stage has
    /// (`env`, `kill_grace`, `max_output`, `sandbox`, `network`, `pass_env`,
    /// `read_only`, `limits`).
    pub process: CommandStage,
}

/// `preset = "..."`: a known agent CLI, or `custom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentPreset {
    /// Anthropic's Claude Code: `claude -p --output-format json`.
    Claude,
    /// OpenAI's Codex CLI: `codex exec --json -`.
    Codex,
    /// Aider: `aider --message-file FILE`.
    Aider,
    /// Google's Gemini CLI: `gemini --output-format json -p PROMPT`.
    Gemini,
    /// opencode: `opencode run --format json PROMPT`.
    Opencode,
    /// Any program: `command`, `prompt_via` and `output` say how.
    Custom,
}

/// Where an agent's prompt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptVia {
    /// Written to its stdin, which is then closed.
    Stdin,
    /// Its last argument.
    Argument,
    /// A file in the workspace, whose path is its last argument; removed after.
    File,
}

/// How an agent's stdout is read: its final message and its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOutput {
    /// Stdout is the message; no usage (shown as unknown).
    Text,
    /// One JSON object: `result`, `usage`, `total_cost_usd` (Claude Code).
    Claude,
    /// JSON lines of events: agent messages and token counts (Codex).
    Codex,
    /// Text with `Tokens: 2.1k sent, 310 received. Cost: $0.01 message, ...` lines (aider).
    Aider,
    /// One JSON object: `response` and `stats.models.*.tokens` (Gemini CLI).
    Gemini,
    /// JSON lines of events: `text` parts and `step_finish` tokens and cost (opencode).
    Opencode,
}

/// What a preset calls and how.
struct Preset {
    name: &'static str,
    preset: AgentPreset,
    /// Program and arguments; empty for `custom` (its `command` is required).
    command: &'static [&'static str],
    /// Where the model name goes, if the CLI takes one.
    model_flag: Option<&'static str>,
    /// Arguments after the model flag, right before the prompt (or its file).
    tail: &'static [&'static str],
    prompt_via: PromptVia,
    output: AgentOutput,
    /// The variables holding its API keys: passed by default, with a network.
    keys: &'static [&'static str],
    /// Whose models it calls, as OpenTelemetry's `gen_ai.system` names
    /// them; `_OTHER` for a CLI that calls many.
    vendor: &'static str,
}

/// Every preset. The agents run inside the sandbox, which is the boundary:
/// their own permission prompts are turned off, since nobody is there to
/// answer them.
const PRESETS: &[Preset] = &[
    Preset {
        name: "claude",
        preset: AgentPreset::Claude,
        command: &[
            "claude",
            "-p",
            "--output-format",
            "json",
            "--dangerously-skip-permissions",
        ],
        model_flag: Some("--model"),
        tail: &[],
        prompt_via: PromptVia::Stdin,
        output: AgentOutput::Claude,
        keys: &["ANTHROPIC_API_KEY"],
        vendor: "anthropic",
    },
    Preset {
        name: "codex",
        preset: AgentPreset::Codex,
        command: &[
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
        ],
        model_flag: Some("--model"),
        // `-`: the prompt is read from stdin.
        tail: &["-"],
        prompt_via: PromptVia::Stdin,
        output: AgentOutput::Codex,
        keys: &["OPENAI_API_KEY", "CODEX_API_KEY"],
        vendor: "openai",
    },
    Preset {
        name: "aider",
        preset: AgentPreset::Aider,
        command: &[
            "aider",
            "--yes-always",
            "--no-auto-commits",
            "--no-check-update",
            "--no-pretty",
            "--no-stream",
        ],
        model_flag: Some("--model"),
        tail: &["--message-file"],
        prompt_via: PromptVia::File,
        output: AgentOutput::Aider,
        keys: &["ANTHROPIC_API_KEY", "OPENAI_API_KEY"],
        vendor: "_OTHER",
    },
    Preset {
        name: "gemini",
        preset: AgentPreset::Gemini,
        command: &["gemini", "--output-format", "json", "--yolo"],
        model_flag: Some("--model"),
        tail: &["-p"],
        prompt_via: PromptVia::Argument,
        output: AgentOutput::Gemini,
        keys: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        vendor: "gcp.gemini",
    },
    Preset {
        name: "opencode",
        preset: AgentPreset::Opencode,
        command: &["opencode", "run", "--format", "json"],
        model_flag: Some("--model"),
        tail: &[],
        prompt_via: PromptVia::Argument,
        output: AgentOutput::Opencode,
        keys: &["ANTHROPIC_API_KEY", "OPENAI_API_KEY"],
        vendor: "_OTHER",
    },
    Preset {
        name: "custom",
        preset: AgentPreset::Custom,
        command: &[],
        model_flag: None,
        tail: &[],
        prompt_via: PromptVia::Stdin,
        output: AgentOutput::Text,
        keys: &[],
        vendor: "_OTHER",
    },
];

/// The names `preset` takes, for messages and `init --agent`.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

impl AgentPreset {
    /// The `preset` value naming it.
    pub fn name(self) -> &'static str {
        PRESETS
            .iter()
            .find(|p| p.preset == self)
            .map_or("custom", |p| p.name)
    }

    /// Whose models it calls, as `gen_ai.system` (`_OTHER`: many).
    pub fn vendor(self) -> &'static str {
        PRESETS
            .iter()
            .find(|p| p.preset == self)
            .map_or("_OTHER", |p| p.vendor)
    }

    /// The variables holding its API keys (passed by default).
    pub fn keys(self) -> &'static [&'static str] {
        PRESETS
            .iter()
            .find(|p| p.preset == self)
            .map_or(&[], |p| p.keys)
    }
}

impl AgentStage {
    /// The `kind` value of an agent stage.
    pub const KIND: &str = "agent";

    /// The arguments after the program for one run: the configured ones,
    /// the model flag, the preset's tail, then `prompt` (the text, or the
    /// prompt file's path) unless it goes to stdin.
    pub fn args(&self, prompt: Option<&str>) -> Vec<String> {
        let preset = PRESETS.iter().find(|p| p.preset == self.preset);
        let mut args = self.process.args.clone();
        if let (Some(model), Some(flag)) = (&self.model, preset.and_then(|p| p.model_flag)) {
            args.extend([flag.to_owned(), model.clone()]);
        }
        args.extend(
            preset
                .map_or(&[][..], |p| p.tail)
                .iter()
                .map(|a| (*a).to_owned()),
        );
        if self.prompt_via != PromptVia::Stdin
            && let Some(prompt) = prompt
        {
            args.push(prompt.to_owned());
        }
        args
    }
}

/// The agent stage's own keys, after those every stage has.
pub(super) fn parse(s: &mut Section<'_>, root: &Path, sandbox_limits: &Limits) -> AgentStage {
    // An unknown or missing preset is already reported: nothing is asked of
    // the stage beyond what every preset takes.
    let mut known = true;
    let preset = match s.required_string("preset") {
        Got::Ok(name, span) => match PRESETS.iter().find(|p| p.name == name) {
            Some(preset) => preset,
            None => {
                known = false;
                let presets = preset_names().join(", ");
                s.invalid(
                    "preset",
                    span,
                    format_args!("{name:?} is not a preset; presets: {presets}"),
                );
                &PRESETS[PRESETS.len() - 1]
            }
        },
        Got::Absent | Got::Bad => {
            known = false;
            &PRESETS[PRESETS.len() - 1]
        }
    };

    let prompt = match s.required_string("prompt") {
        Got::Ok(path, span) if path.is_empty() => {
            s.invalid("prompt", span, "must name a template file");
            PathBuf::new()
        }
        Got::Ok(path, _) => resolve(root, Path::new(path.as_ref())),
        Got::Absent | Got::Bad => PathBuf::new(),
    };
    let model = match s.string("model") {
        Got::Ok(model, span) if model.is_empty() || model.contains('\0') => {
            s.invalid("model", span, "must be a model name");
            None
        }
        Got::Ok(model, _) => Some(model.into_owned()),
        Got::Absent | Got::Bad => None,
    };
    let command = match command::command(s) {
        Some(command) => command,
        None if preset.preset == AgentPreset::Custom => {
            if known {
                s.missing("command");
            }
            Vec::new()
        }
        None => preset.command.iter().map(|a| (*a).to_owned()).collect(),
    };
    let prompt_via = match s.string("prompt_via") {
        Got::Ok(via, span) => match via.as_ref() {
            "stdin" => PromptVia::Stdin,
            "argument" => PromptVia::Argument,
            "file" => PromptVia::File,
            other => {
                s.invalid(
                    "prompt_via",
                    span,
                    format_args!("{other:?} must be \"stdin\", \"argument\" or \"file\""),
                );
                preset.prompt_via
            }
        },
        Got::Absent | Got::Bad => preset.prompt_via,
    };
    let output = match s.string("output") {
        Got::Ok(format, span) => match format.as_ref() {
            "text" => AgentOutput::Text,
            "claude" => AgentOutput::Claude,
            "codex" => AgentOutput::Codex,
            "aider" => AgentOutput::Aider,
            "gemini" => AgentOutput::Gemini,
            "opencode" => AgentOutput::Opencode,
            other => {
                s.invalid(
                    "output",
                    span,
                    format_args!(
                        "{other:?} must be \"text\" or a preset's format: claude, codex, aider, \
                         gemini, opencode"
                    ),
                );
                preset.output
            }
        },
        Got::Absent | Got::Bad => preset.output,
    };
    let max_files = s.count("max_files", 100_000, DEFAULT_MAX_FILES) as usize;
    // A preset that calls a remote API needs a network and its key.
    let remote = !preset.keys.is_empty();
    let mut process = command::process(s, root, sandbox_limits, command, remote);
    for key in preset.keys.iter().rev() {
        if !process.pass_env.iter().any(|k| k == key) {
            process.pass_env.insert(0, (*key).to_owned());
        }
    }
    AgentStage {
        preset: preset.preset,
        prompt,
        model,
        prompt_via,
        output,
        max_files,
        process,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StageKind;
    use crate::config::testing::{check_errors, config};

    fn agent(extra: &str) -> AgentStage {
        let text =
            format!("[[stages]]\nname = \"a\"\nkind = \"agent\"\nprompt = \"p.md\"\n{extra}\n");
        match config(&text).stages.remove(0).kind {
            StageKind::Agent(agent) => agent,
            other => panic!("not an agent stage: {other:?}"),
        }
    }

    #[test]
    fn presets_fill_in_the_command_network_and_keys() {
        let claude = agent("preset = \"claude\"\nmodel = \"sonnet\"");
        assert_eq!(claude.process.program, "claude");
        assert_eq!(
            claude.args(Some("the prompt")),
            [
                "-p",
                "--output-format",
                "json",
                "--dangerously-skip-permissions",
                "--model",
                "sonnet"
            ],
            "claude reads its prompt on stdin"
        );
        assert!(claude.process.network);
        assert_eq!(claude.process.pass_env, ["ANTHROPIC_API_KEY"]);
        assert_eq!(claude.output, AgentOutput::Claude);

        let aider = agent("preset = \"aider\"\npass_env = [\"OPENAI_API_KEY\", \"EXTRA\"]");
        assert_eq!(aider.prompt_via, PromptVia::File);
        assert_eq!(
            aider.args(Some("/w/.prompt")).last().map(String::as_str),
            Some("/w/.prompt")
        );
        assert_eq!(
            aider.process.pass_env,
            ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "EXTRA"],
            "the preset's keys first, each once"
        );

        let gemini = agent("preset = \"gemini\"\ncommand = [\"/opt/gemini\"]\nnetwork = false");
        assert_eq!(gemini.process.program, "/opt/gemini");
        assert_eq!(gemini.args(Some("hi")), ["-p", "hi"]);
        assert!(!gemini.process.network, "network = false wins");

        let custom = agent(
            "preset = \"custom\"\ncommand = [\"my-agent\", \"--go\"]\nprompt_via = \"argument\"\noutput = \"codex\"",
        );
        assert_eq!(custom.args(Some("x")), ["--go", "x"]);
        assert_eq!(custom.output, AgentOutput::Codex);
        assert!(!custom.process.network, "custom calls nothing by default");
        assert!(custom.process.pass_env.is_empty());
    }

    #[test]
    fn agent_errors() {
        check_errors(
            "[[stages]]\nname = \"a\"\nkind = \"agent\"\npreset = \"cursor\"\nprompt = \"\"\n\
             prompt_via = \"pipe\"\noutput = \"xml\"\n\
             [[stages]]\nname = \"b\"\nkind = \"agent\"\npreset = \"custom\"\nprompt = \"p.md\"\n",
            &[
                "4:10: [[stages]] #1 (\"a\"): `preset` \"cursor\" is not a preset; presets: \
                 claude, codex, aider, gemini, opencode, custom",
                "5:10: [[stages]] #1 (\"a\"): `prompt` must name a template file",
                "6:14: [[stages]] #1 (\"a\"): `prompt_via` \"pipe\" must be \"stdin\", \
                 \"argument\" or \"file\"",
                "7:10: [[stages]] #1 (\"a\"): `output` \"xml\" must be \"text\" or a preset's \
                 format: claude, codex, aider, gemini, opencode",
                "8:1: [[stages]] #2 (\"b\"): missing required key `command`",
            ],
        );
    }
}
