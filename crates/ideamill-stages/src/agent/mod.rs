//! The `agent` stage kind: a coding-agent CLI (`claude -p`, `codex exec`,
//! aider, gemini, opencode, or any program) run like a `command` stage's
//! program, in the item's workspace and the sandbox, with the prompt of an
//! `llm` stage. Its result is the agent's final message, its files are what
//! it left in the workspace, and its usage is what the CLI reported
//! ([`report`]), so budgets and spend count it; a CLI that reports nothing
//! leaves the usage unknown, never 0.
//!
//! The agent's stdin is /dev/null unless its prompt goes there (then it is
//! the prompt, closed at its end), so a CLI that waits on stdin gets end of
//! file at once. Its `HOME` is the sandbox's private /tmp (when confined),
//! so that what a CLI keeps in its home never lands among the item's files.
//! The folder of its program (found in `PATH`), and the package it links
//! into, are shown to the sandbox read-only, so a CLI installed in a home
//! folder runs confined as it is.

pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ideamill_core::config::{AgentStage, BudgetConfig, PromptVia, SandboxMode, StageConfig};
use ideamill_core::machine::StageResult;
use ideamill_core::{AttemptOutcome, Config, FailureClass, Millis, Usage};
use ideamill_llm::Price;
use ideamill_store::{ClaimedJob, ItemContext, Store};
use ideamill_sys::clock::now_millis;
use tokio_util::sync::CancellationToken;

use crate::executor::{
    CommandExecutor, Execution, Executor, Invocation, ModelCall, workspace_files,
};
use crate::kind::{Build, Kind, find_program, read_template, template_name};

/// The prompt file of `prompt_via = "file"`, in the item's folder while
/// the agent runs.
pub const PROMPT_FILE: &str = ".ideamill-prompt.md";

/// Folders the sandbox shows anyway: a program there needs no mount.
const SYSTEM: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"];

/// The `agent` kind.
impl Kind for AgentStage {
    fn executor(
        &self,
        stage: &StageConfig,
        build: &Build<'_>,
    ) -> Result<Arc<dyn Executor>, String> {
        Ok(Arc::new(AgentExecutor::new(stage, self, build)?))
    }

    fn environment(&self, stage: &StageConfig, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        if find_program(&self.process.program, &config.root).is_none() {
            problems.push(format!(
                "stage `{}`: agent program `{}` ({} preset) not found (relative paths are from {}; \
                 bare names are looked up in PATH)",
                stage.name,
                self.process.program,
                self.preset.name(),
                config.root.display()
            ));
        }
        problems.extend(read_template(stage, &self.prompt, &config.root).err());
        problems
    }
}

/// Runs an `agent` stage: renders the prompt, runs the CLI through the
/// command stage's executor, and reads what it printed.
pub struct AgentExecutor {
    agent: AgentStage,
    program: CommandExecutor,
    template: String,
    template_name: String,
    workspace: PathBuf,
    timeout: std::time::Duration,
    /// The price of the model, for CLIs that report tokens but no cost.
    price: Option<Price>,
    budget: BudgetConfig,
    store: Arc<dyn Store>,
}

impl AgentExecutor {
    /// The executor of `stage`, with its template read and checked.
    pub fn new(
        stage: &StageConfig,
        agent: &AgentStage,
        build: &Build<'_>,
    ) -> Result<AgentExecutor, String> {
        let config = build.config;
        let template = read_template(stage, &agent.prompt, &config.root)?;
        let mut process = agent.process.clone();
        if process.sandbox == SandboxMode::On {
            process
                .read_only
                .extend(program_folders(&process.program, &config.root));
            // What the CLI keeps in its home stays out of the workspace.
            process
                .env
                .entry("HOME".to_owned())
                .or_insert_with(|| "/tmp".to_owned());
        }
        let price = agent
            .model
            .as_ref()
            .and_then(|m| config.prices.get(m))
            .map(|p| Price {
                input_per_million: p.input_per_million,
                output_per_million: p.output_per_million,
            });
        Ok(AgentExecutor {
            agent: agent.clone(),
            program: CommandExecutor::new(stage, &process, config, build.sandbox),
            template,
            template_name: template_name(&agent.prompt, &config.root),
            workspace: config.engine.workspace.clone(),
            timeout: stage.timeout,
            price,
            budget: config.budget,
            store: build.store.clone(),
        })
    }

    /// Why this item may not spend now, if a cap is already reached. An
    /// agent's cost is known only once it has run: the reservation holds
    /// nothing, it only lets the store check the caps in the same
    /// transaction as every other caller.
    async fn over_budget(&self, job: &ClaimedJob, now: Millis) -> Result<Option<String>, String> {
        if !self.budget.is_set() {
            return Ok(None);
        }
        crate::budget::reserve(
            self.store.as_ref(),
            &self.budget,
            job,
            (0, 0.0),
            self.timeout,
            now,
        )
        .await
    }

    /// The run as a trace shows it: one `invoke_agent` call, with what the
    /// CLI reported of its model and tokens.
    fn model_call(
        &self,
        result: &StageResult,
        reported: Option<&report::Reported>,
        (started_at, ended_at): (Millis, Millis),
        prompt: String,
        message: &str,
    ) -> ModelCall {
        let preset = self.agent.preset;
        let requested = self.agent.model.clone();
        ModelCall {
            system: preset.vendor(),
            agent: Some(preset.name()),
            provider: preset.name().to_owned(),
            request_model: requested
                .clone()
                .unwrap_or_else(|| preset.name().to_owned()),
            response_model: reported.and_then(|r| r.model.clone()).or(requested),
            started_at,
            ended_at,
            input_tokens: reported.map(|r| r.input_tokens),
            output_tokens: reported.map(|r| r.output_tokens),
            first_token_after: None,
            limiter_wait: None,
            finish_reason: None,
            error: match result {
                // `timeout`, `hung`, `error`, …: what ended the run.
                StageResult::Failed {
                    message, outcome, ..
                } => Some((message.clone(), outcome.as_str())),
                _ => None,
            },
            prompt,
            completion: (!message.is_empty()).then(|| message.to_owned()),
        }
    }

    /// The usage of a run, from what the CLI reported.
    fn usage(&self, reported: Option<&report::Reported>) -> Usage {
        let provider = self.agent.preset.name().to_owned();
        let Some(r) = reported else {
            return Usage {
                provider,
                model: self.agent.model.clone().unwrap_or_default(),
                prompt_tokens: 0,
                completion_tokens: 0,
                cost: 0.0,
                counted: false,
                unknown: true,
            };
        };
        let cost = r.cost.unwrap_or_else(|| {
            self.price.map_or(0.0, |p| {
                ideamill_llm::cost(r.input_tokens, r.output_tokens, &p)
            })
        });
        Usage {
            provider,
            model: r
                .model
                .clone()
                .or_else(|| self.agent.model.clone())
                .unwrap_or_default(),
            prompt_tokens: r.input_tokens,
            completion_tokens: r.output_tokens,
            cost,
            counted: false,
            unknown: false,
        }
    }
}

#[async_trait]
impl Executor for AgentExecutor {
    async fn run(
        &self,
        job: &ClaimedJob,
        context: &ItemContext,
        cancel: &CancellationToken,
    ) -> Execution {
        let dir = match crate::executor::prepare(&self.workspace, &context.item, cancel).await {
            Ok(dir) => dir,
            Err(failed) => return failed,
        };
        let vars = crate::llm_stage::prompt_vars(job, context, &dir);
        let prompt = match crate::prompt::render(&self.template_name, &self.template, &vars) {
            Ok(p) => p,
            Err(e) => {
                return crate::llm_stage::permanent(format!("cannot render the prompt: {e}"));
            }
        };
        match self.over_budget(job, now_millis()).await {
            Ok(Some(reason)) => return crate::llm_stage::paused(reason),
            Ok(None) => {}
            Err(e) => return Execution::infra(e),
        }
        let prompt_file = dir.join(PROMPT_FILE);
        let invocation = match self.agent.prompt_via {
            PromptVia::Stdin => Invocation {
                args: self.agent.args(None),
                stdin: prompt.clone().into_bytes(),
            },
            PromptVia::Argument => Invocation {
                args: self.agent.args(Some(&prompt)),
                stdin: Vec::new(),
            },
            PromptVia::File => {
                if let Err(e) = std::fs::write(&prompt_file, &prompt) {
                    return Execution::infra(format!(
                        "cannot write the prompt file {}: {e}",
                        prompt_file.display()
                    ));
                }
                Invocation {
                    args: self.agent.args(Some(&prompt_file.display().to_string())),
                    stdin: Vec::new(),
                }
            }
        };
        let started_at = now_millis();
        let mut execution = self
            .program
            .run_in(
                job,
                &dir,
                invocation,
                context.traceparent.as_deref(),
                cancel,
            )
            .await;
        if self.agent.prompt_via == PromptVia::File {
            let _ = std::fs::remove_file(&prompt_file);
        }
        let stdout = execution.output.take().unwrap_or_default();
        let read = report::read(self.agent.output, &stdout);
        let ran = execution.exit_code.is_some() || !stdout.is_empty();
        if ran {
            execution.usage = Some(self.usage(read.usage.as_ref()));
        }
        let mut notes: Vec<String> = execution.error.take().into_iter().collect();
        if ran && read.usage.is_none() {
            notes.push(format!(
                "usage unknown: `{}` reported none",
                self.agent.process.program
            ));
        }
        let message = match read.message {
            Some(message) => message,
            None => {
                if !stdout.trim().is_empty() {
                    notes.push(
                        "no final message found in the agent's output: kept as printed".into(),
                    );
                }
                stdout.trim().to_owned()
            }
        };
        execution.result = match execution.result {
            StageResult::Passed { .. } => match read.error {
                // Exit 0 with an error reported: the agent's run failed.
                Some(error) => StageResult::Failed {
                    outcome: AttemptOutcome::Error,
                    class: FailureClass::Quality,
                    message: error,
                },
                None => StageResult::Passed {
                    output: message.clone(),
                },
            },
            StageResult::Rejected { feedback } => StageResult::Rejected {
                feedback: if message.is_empty() {
                    feedback
                } else {
                    message.clone()
                },
            },
            other => other,
        };
        if let StageResult::Failed { message, .. } = &execution.result
            && !notes.iter().any(|n| n.contains(message.as_str()))
        {
            notes.insert(0, message.clone());
        }
        let listed = {
            let (dir, max) = (dir.clone(), self.agent.max_files);
            tokio::task::spawn_blocking(move || workspace_files(&dir, max))
                .await
                .unwrap_or_default()
        };
        if !listed.is_empty() {
            notes.push(format!("files: {}", listed.join(", ")));
        }
        if ran {
            execution.model_call = Some(self.model_call(
                &execution.result,
                read.usage.as_ref(),
                (started_at, now_millis()),
                prompt,
                &message,
            ));
        }
        execution.output = Some(message);
        execution.error = (!notes.is_empty()).then(|| notes.join("; "));
        execution
    }
}

/// The folders a program needs shown in the sandbox: the `PATH` folder it
/// is found in, and, when that is a link (a CLI installed by npm or pipx),
/// the package it links into. System folders are shown anyway.
fn program_folders(program: &str, root: &Path) -> Vec<PathBuf> {
    let Some(found) = find_program(program, root) else {
        return Vec::new();
    };
    let mut folders = Vec::new();
    let mut add = |dir: &Path| {
        if !SYSTEM.iter().any(|s| dir.starts_with(s)) && !folders.iter().any(|f| dir.starts_with(f))
        {
            folders.push(dir.to_path_buf());
        }
    };
    if let Some(dir) = found.parent() {
        add(dir);
    }
    if let Ok(real) = std::fs::canonicalize(&found)
        && real != found
    {
        // npm: <prefix>/lib/node_modules/<package>/...: the whole tree, so
        // its dependencies resolve; pipx: <venv>/bin/<program>: the venv.
        let package = real
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "node_modules"))
            .or_else(|| real.parent().and_then(Path::parent))
            .map(Path::to_path_buf);
        if let Some(package) = package {
            add(&package);
        }
    }
    folders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_program_brings_its_package() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        let package = home.path().join("lib/node_modules/agent-cli/dist");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&package).unwrap();
        let script = package.join("cli.js");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&script, bin.join("agent-cli")).unwrap();
        let program = bin.join("agent-cli").display().to_string();
        let home = std::fs::canonicalize(home.path()).unwrap();
        assert_eq!(
            program_folders(&program, Path::new("/")),
            [bin.clone(), home.join("lib/node_modules")]
                .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
                .to_vec()
        );
        assert!(program_folders("/usr/bin/env", Path::new("/")).is_empty());
        assert!(program_folders("no-such-agent-cli", Path::new("/")).is_empty());
    }
}
