//! Stage executors: what actually runs one attempt of a stage. The engine
//! only knows the [`Executor`] trait; `command` stages use [`CommandExecutor`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ideamill_core::config::{CommandStage, SandboxMode, StageConfig};
use ideamill_core::duration::format_duration;
use ideamill_core::machine::StageResult;
use ideamill_core::{AttemptOutcome, Config, FailureClass, Millis, Usage};
use ideamill_store::{ClaimedJob, ItemContext, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::command::{CommandEnd, CommandSpec, Confinement, run_command};
use crate::sandbox::{self, Sandbox};
use crate::stall::StallSpec;

/// Where evidence bundles of a data folder live: `<data_dir>/evidence`, as
/// `ideamill_health::evidence_dir` says (this crate may not depend on it).
fn evidence_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("evidence")
}

/// What one attempt produced, for the attempt row and the state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// How the attempt ended, for the state machine.
    pub result: StageResult,
    /// The process's exit code, when a process ran and exited.
    pub exit_code: Option<i32>,
    /// The raw output, kept on the attempt whatever the outcome.
    pub output: Option<String>,
    /// What the process wrote to stderr, if anything.
    pub stderr: Option<String>,
    /// A note for the attempt (an error, or a truncation warning).
    pub error: Option<String>,
    /// Tokens and cost, when a model was called.
    pub usage: Option<Usage>,
    /// The model call this attempt made, for its trace span.
    pub model_call: Option<ModelCall>,
}

/// One model call as a trace shows it (OpenTelemetry's GenAI conventions):
/// what was asked of whom, how long it took, what it used. The texts are
/// kept only for `[telemetry] capture_content`; the engine drops them
/// otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCall {
    /// `gen_ai.system`: `openai` or `anthropic` (the API spoken), or for
    /// an agent CLI the vendor of its model (`_OTHER` when unknown).
    pub system: &'static str,
    /// The agent preset when a coding-agent CLI made the call(s)
    /// (`invoke_agent`, as the GenAI conventions name it); `None` for a
    /// direct chat call.
    pub agent: Option<&'static str>,
    /// The provider's name in `[providers]`.
    pub provider: String,
    /// `gen_ai.request.model`.
    pub request_model: String,
    /// `gen_ai.response.model`, when the call answered.
    pub response_model: Option<String>,
    /// When the request was started and when it ended (ms since the epoch).
    pub started_at: Millis,
    /// See `started_at`.
    pub ended_at: Millis,
    /// Tokens in and out, when the call answered.
    pub input_tokens: Option<u64>,
    /// See `input_tokens`.
    pub output_tokens: Option<u64>,
    /// From sending the request to the first text (streamed answers).
    pub first_token_after: Option<std::time::Duration>,
    /// Waiting for the provider's concurrency and rate limits.
    pub limiter_wait: Option<std::time::Duration>,
    /// `stop`, `length`, … as the server said it.
    pub finish_reason: Option<String>,
    /// Why the call failed, and of what class (`rate_limited`, `retryable`,
    /// `permanent`, `cancelled`).
    pub error: Option<(String, &'static str)>,
    /// The prompt (system prompt first, if any) and the answer.
    pub prompt: String,
    /// See `prompt`.
    pub completion: Option<String>,
}

impl Execution {
    /// An attempt that ended with `result` and only a note to show for it.
    pub fn noted(result: StageResult, note: String) -> Execution {
        Execution {
            result,
            exit_code: None,
            output: None,
            stderr: None,
            error: Some(note),
            usage: None,
            model_call: None,
        }
    }

    /// A retryable failure of `class` whose message is also the attempt's
    /// note.
    pub fn failed(outcome: AttemptOutcome, class: FailureClass, message: String) -> Execution {
        Execution::noted(
            StageResult::Failed {
                outcome,
                class,
                message: message.clone(),
            },
            message,
        )
    }

    /// A retryable error of the machinery around the work (the host, the
    /// store, the sandbox), never of the work itself.
    pub fn infra(message: String) -> Execution {
        Execution::failed(AttemptOutcome::Error, FailureClass::Infra, message)
    }
}

/// Runs one attempt of one stage. Must return promptly once `cancel` fires,
/// having stopped all the work it started.
#[async_trait]
pub trait Executor: Send + Sync {
    /// The model provider this stage calls, for the provider metrics; None
    /// for stages that call none.
    fn provider(&self) -> Option<&str> {
        None
    }

    /// Run the attempt of `job` on `context`'s item; the outcome, never a panic or an error.
    async fn run(
        &self,
        job: &ClaimedJob,
        context: &ItemContext,
        cancel: &CancellationToken,
    ) -> Execution;
}

/// Each stage's executor, by stage name.
pub type Executors = Vec<(String, Arc<dyn Executor>)>;

/// The executors for a config's stages, by stage name. Fails when a stage
/// cannot run here: an unreadable or invalid prompt template, a missing key.
///
/// A confined stage needs a working sandbox: when the probe finds none, this
/// refuses with what to do, rather than run anything unconfined. With one,
/// it first removes what killed engines' jobs left (an event says what).
pub async fn executors_for(
    config: &Arc<Config>,
    store: &Arc<dyn Store>,
) -> Result<Executors, String> {
    let providers = crate::llm_stage::providers(config)?;
    // Model calls alone start no program: no probe (a few runs of the
    // sandbox program, tens of ms before the first job) for a sandbox that
    // no stage would use.
    let starts_programs = config
        .stages
        .iter()
        .any(|s| s.kind.facts().process.is_some());
    let sandbox = Arc::new(if starts_programs {
        let sandbox_config = config.sandbox.clone();
        let (sandbox, abandoned) = tokio::task::spawn_blocking(move || {
            let sandbox = Sandbox::probe(&sandbox_config);
            let abandoned = sandbox.sweep_abandoned();
            (sandbox, abandoned)
        })
        .await
        .map_err(|e| format!("the sandbox probe failed: {e}"))?;
        if let Some(abandoned) = abandoned.filter(|a| !a.groups.is_empty()) {
            record_leftovers(store, &abandoned).await;
        }
        sandbox
    } else {
        Sandbox::unused(&config.sandbox)
    });
    if let Some(refusal) = sandbox::refusal(config, &sandbox) {
        return Err(refusal);
    }
    let build = crate::kind::Build {
        config,
        store,
        providers: &providers,
        sandbox: &sandbox,
    };
    config
        .stages
        .iter()
        .map(|stage| {
            let executor = crate::kind::of(&stage.kind).executor(stage, &build)?;
            Ok((stage.name.clone(), executor))
        })
        .collect()
}

/// Says what a sweep removed, in the log and as an event.
async fn record_leftovers(store: &Arc<dyn Store>, abandoned: &sandbox::cgroup::Abandoned) {
    let shown: Vec<&str> = abandoned
        .groups
        .iter()
        .take(5)
        .map(String::as_str)
        .collect();
    let message = format!(
        "Removed {} job control group(s) left by engines killed before they could remove them \
         ({}{}) and killed {} process(es) still in them",
        abandoned.groups.len(),
        shown.join(", "),
        if abandoned.groups.len() > shown.len() {
            ", …"
        } else {
            ""
        },
        abandoned.processes
    );
    tracing::warn!("{message}");
    let event = ideamill_store::NewEvent {
        at: ideamill_sys::clock::now_millis(),
        kind: ideamill_store::event_kind::SANDBOX_LEFTOVERS_REMOVED,
        item_id: None,
        job_id: None,
        process: None,
        message,
    };
    if let Err(e) = store.record_event(&event).await {
        tracing::warn!("Could not record the removal of sandbox leftovers: {e}");
    }
}

/// The JSON a stage receives: the idea, earlier outputs, feedback, attempt
/// and round. The same document goes to commands on stdin.
pub fn context_json(
    job: &ClaimedJob,
    context: &ItemContext,
    workspace: &Path,
) -> serde_json::Value {
    let outputs: serde_json::Map<String, serde_json::Value> = context
        .outputs
        .iter()
        .map(|o| (o.stage.clone(), json!(o.output)))
        .collect();
    let feedback = context.feedback.last().map(|f| f.feedback.clone());
    json!({
        "item": {
            "id": context.item.id,
            "text": context.item.text,
            "metadata": context.item.metadata,
        },
        "stage": job.stage,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "round": job.round,
        "outputs": outputs,
        "feedback": feedback,
        "feedback_history": context.feedback,
        "workspace": workspace,
    })
}

/// [`prepare_workspace`] on the blocking pool; a failure is the attempt's.
/// A full disk is the machine's trouble, not the item's, and passes: the
/// attempt waits for space (saying so where health is judged) until it is
/// cancelled, instead of spending the item's attempts in a few seconds (found
/// by bench soak: an item failed after a full disk took 6 of its 8).
pub async fn prepare(
    workspace: &Path,
    item: &ideamill_store::ItemRow,
    cancel: &CancellationToken,
) -> Result<PathBuf, Execution> {
    let mut wait = crate::resources::ResourceWait::new();
    loop {
        let (root, row) = (workspace.to_path_buf(), item.clone());
        let prepared = tokio::task::spawn_blocking(move || prepare_workspace(&root, &row)).await;
        let error = match prepared
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
        {
            Ok(dir) => return Ok(dir),
            Err(e) => e,
        };
        let message = format!(
            "cannot prepare the item's workspace {}: {error}",
            item_workspace(workspace, item.id).display()
        );
        if !crate::resources::disk_full(&error)
            || cancel.is_cancelled()
            || !wait.wait(message.clone(), cancel).await
        {
            return Err(Execution::infra(message));
        }
    }
}

/// The regular files under `dir`, relative, sorted; at most `max`. FIFOs,
/// sockets, devices and symlinks are left out: nothing reads them.
pub fn workspace_files(dir: &Path, max: usize) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if files.len() >= max {
                break;
            }
            let path = e.path();
            // `file_type` does not follow links: a link to a folder is not
            // walked, a link to anything is not listed.
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    if let Ok(rel) = path.strip_prefix(dir)
                        && rel != Path::new(OWNER_FILE)
                    {
                        files.push(rel.display().to_string());
                    }
                }
                _ => {}
            }
        }
    }
    files.sort();
    files
}

/// The item's own folder: `<workspace>/<item-id>/`.
pub fn item_workspace(workspace: &Path, item: i64) -> PathBuf {
    workspace.join(item.to_string())
}

/// The file in an item's folder that says whose it is: `<id> <created_at>`.
pub const OWNER_FILE: &str = ".ideamill-item";

/// The item's folder, made if missing and marked as this item's. A folder
/// already there that belongs to another item (an id reused by an older
/// store, a folder left by a pruned item or copied in by hand) is moved
/// aside to `<id>.stale-<ms>`, never inherited and never deleted. A folder
/// without the mark is this item's if it changed after the item was made
/// (it predates the mark), another's if not. Blocking.
pub fn prepare_workspace(
    workspace: &Path,
    item: &ideamill_store::ItemRow,
) -> std::io::Result<PathBuf> {
    let dir = item_workspace(workspace, item.id);
    let mark = format!("{} {}", item.id, item.created_at);
    let owner = dir.join(OWNER_FILE);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(meta) => {
            let ours = if !meta.is_dir() {
                false
            } else {
                let changed_since_made = || {
                    meta.modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .is_some_and(|t| t.as_millis() as i64 + 1000 >= item.created_at)
                };
                match read_mark(&owner) {
                    Some(text) if is_mark(&text) => text == mark,
                    // No mark, or not one (a link, a stage's scribble).
                    _ => changed_since_made(),
                }
            };
            if ours {
                if read_mark(&owner).as_deref() != Some(mark.as_str()) {
                    write_mark(&owner, &mark)?;
                }
                return Ok(dir);
            }
            let aside = workspace.join(format!(
                "{}.stale-{}",
                item.id,
                ideamill_sys::clock::now_millis()
            ));
            std::fs::rename(&dir, &aside)?;
            tracing::warn!(
                item = item.id,
                "The folder {} belonged to another item; moved aside to {}",
                dir.display(),
                aside.display()
            );
        }
    }
    std::fs::create_dir_all(&dir)?;
    write_mark(&owner, &mark)?;
    Ok(dir)
}

/// The owner file's text, if it is a regular file (never through a link).
fn read_mark(owner: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    ideamill_sys::fs::open_regular(owner)
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    Some(text.trim().to_owned())
}

/// Whether `text` is a mark at all: `<id> <created_at>`.
fn is_mark(text: &str) -> bool {
    text.split_once(' ')
        .is_some_and(|(id, at)| id.parse::<i64>().is_ok() && at.parse::<i64>().is_ok())
}

/// Write the mark whole or not at all (a full disk leaves no empty mark that
/// would make the folder another item's), replacing whatever a stage left
/// at its name (a link is replaced, never followed).
fn write_mark(owner: &Path, mark: &str) -> std::io::Result<()> {
    ideamill_sys::fs::replace_unsynced(owner, mark.as_bytes(), 0o644)
}

/// Workspace folders removed with their pruned items.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkspacesRemoved {
    /// Folders removed.
    pub folders: u64,
    /// What could not be removed, each with its reason.
    pub failed: Vec<String>,
}

/// Remove the workspace folders of `items` (pruned from the store): each
/// `<workspace>/<id>` only, a symlink there as a link, never what it points
/// at. A missing folder is fine: the item may never have run here.
pub fn remove_item_workspaces(workspace: &Path, items: &[i64]) -> WorkspacesRemoved {
    let mut out = WorkspacesRemoved::default();
    for &item in items {
        let dir = item_workspace(workspace, item);
        let removed = match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => Err(e),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dir),
            Ok(_) => std::fs::remove_file(&dir),
        };
        match removed {
            Ok(()) => out.folders += 1,
            Err(e) => out.failed.push(format!("{}: {e}", dir.display())),
        }
    }
    out
}

/// Runs a `command` stage's program, in the sandbox unless the stage turns it off.
pub struct CommandExecutor {
    stage: StageConfig,
    command: CommandStage,
    /// The config's folder: a relative program path like `./stages/qa.py`
    /// means a file there, not in the item's workspace where it runs.
    root: PathBuf,
    workspace: PathBuf,
    /// Where a hung job's evidence folder goes.
    evidence: PathBuf,
    sandbox: Arc<Sandbox>,
}

/// How often a confined job's control group is checked for a limit hit.
const LIMIT_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// A future's output type for a branch that never completes.
fn unreachable_pending() -> crate::command::CommandResult {
    unreachable!("the limit watcher never completes")
}

impl CommandExecutor {
    /// Why `program` cannot start in the sandbox, when it cannot: it must be
    /// in a folder the sandbox shows (the system's, a `read_only` path).
    fn missing_in_sandbox(&self, program: &str, env: &[(String, String)]) -> Option<String> {
        let visible = |path: &Path| {
            ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"]
                .iter()
                .any(|d| path.starts_with(d))
                || self.command.read_only.iter().any(|r| path.starts_with(r))
        };
        let runnable = |path: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if program.contains('/') {
            return (!runnable(Path::new(program)))
                .then(|| format!("program {program:?} not found"));
        }
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(sandbox::DEFAULT_PATH, |(_, v)| v.as_str());
        let found = std::env::split_paths(path)
            .map(|dir| dir.join(program))
            .any(|candidate| visible(&candidate) && runnable(&candidate));
        (!found).then(|| {
            format!(
                "program {program:?} not found in the sandbox: it shows only the system's folders \
                 (/usr, /bin, /lib*, /sbin, /etc) and the stage's `read_only` paths; install it \
                 there or add its folder to `read_only`"
            )
        })
    }

    fn program(&self) -> String {
        let program = Path::new(&self.command.program);
        if program.is_relative() && self.command.program.contains('/') {
            self.root.join(program).display().to_string()
        } else {
            self.command.program.clone()
        }
    }
}

// Stderr is diagnostics: its tail is enough.
const MAX_STDERR: usize = 64 * 1024;

/// What one run of a stage's program is given: its arguments after the
/// program, and its stdin (empty: /dev/null).
pub(crate) struct Invocation {
    pub(crate) args: Vec<String>,
    pub(crate) stdin: Vec<u8>,
}

impl CommandExecutor {
    /// The executor of a stage that runs `command` (a `command` stage, or
    /// the program of another kind, like an `agent` stage's CLI).
    pub(crate) fn new(
        stage: &StageConfig,
        command: &CommandStage,
        config: &Config,
        sandbox: &Arc<Sandbox>,
    ) -> CommandExecutor {
        CommandExecutor {
            stage: stage.clone(),
            command: command.clone(),
            root: config.root.clone(),
            workspace: config.engine.workspace.clone(),
            evidence: evidence_dir(&config.engine.data_dir),
            sandbox: sandbox.clone(),
        }
    }

    /// Run the program once in the item's folder `dir` (prepared), confined
    /// unless the stage turns it off.
    pub(crate) async fn run_in(
        &self,
        job: &ClaimedJob,
        dir: &Path,
        invocation: Invocation,
        traceparent: Option<&str>,
        cancel: &CancellationToken,
    ) -> Execution {
        let dir = dir.to_path_buf();
        let Invocation { args, stdin } = invocation;
        let confined = self.command.sandbox == SandboxMode::On;
        let mut context_env = vec![
            ("IDEAMILL_ITEM_ID".to_owned(), job.item_id.to_string()),
            ("IDEAMILL_STAGE".to_owned(), job.stage.clone()),
            ("IDEAMILL_ATTEMPT".to_owned(), job.attempt.to_string()),
            ("IDEAMILL_ROUND".to_owned(), job.round.to_string()),
            ("IDEAMILL_WORKSPACE".to_owned(), dir.display().to_string()),
        ];
        if let Some(traceparent) = traceparent {
            // W3C trace context: a program that speaks OpenTelemetry joins
            // the item's trace under this attempt's span.
            context_env.push(("TRACEPARENT".to_owned(), traceparent.to_owned()));
        }
        if !confined {
            // The project folder is not visible from inside the sandbox.
            context_env.push(("IDEAMILL_ROOT".to_owned(), self.root.display().to_string()));
        }
        let env = sandbox::stage_env(&self.command, &dir, context_env, std::env::vars());
        let program = self.program();
        let mut spec = CommandSpec {
            program: program.clone(),
            args: args.clone(),
            cwd: dir.clone(),
            env,
            stdin,
            timeout: self.stage.timeout,
            kill_grace: self.command.kill_grace,
            max_stdout: self.command.max_output,
            max_stderr: MAX_STDERR,
            confine: Confinement::default(),
            stall: StallSpec::for_job(
                &self.stage,
                job,
                &dir,
                &self.evidence,
                json!({
                    "program": self.command.program,
                    "args": self.command.args,
                    "confined": confined,
                }),
            ),
        };
        let mut group = None;
        // Open until the program has started (it inherits them).
        let mut inherited: Vec<std::os::fd::OwnedFd> = Vec::new();
        if confined {
            if let Some(missing) = self.missing_in_sandbox(&program, &spec.env) {
                return Execution::infra(missing);
            }
            let handed = {
                let sandbox = self.sandbox.clone();
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || sandbox.hand_over(&dir)).await
            };
            if let Err(e) = handed
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r)
            {
                return Execution::infra(format!(
                    "cannot hand the workspace {} to the sandbox: {e}",
                    dir.display()
                ));
            }
            let plan = match self.sandbox.plan(&self.command, &dir, &program, &args) {
                Ok(plan) => plan,
                Err(e) => {
                    return Execution::infra(format!("cannot start the sandbox: {e}"));
                }
            };
            let (confinement, job_group) = self
                .sandbox
                .confine(&self.command.limits, &format!("job{}", job.id));
            spec.program = plan.program;
            spec.args = plan.args;
            spec.confine = confinement;
            spec.confine.keep_fds = plan
                .keep
                .iter()
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .collect();
            inherited = plan.keep;
            group = job_group;
        } else {
            tracing::warn!(
                stage = %job.stage,
                item = job.item_id,
                "Stage runs UNCONFINED (sandbox = \"off\"): generated code has the engine's user's access."
            );
        }

        // A limit hit ends the job at once: a fork bomb held at its process
        // limit would otherwise spin until the timeout.
        let run_cancel = cancel.child_token();
        let watch_limits = async {
            let Some(group) = &group else {
                return std::future::pending::<()>().await;
            };
            loop {
                tokio::time::sleep(LIMIT_CHECK).await;
                let hits = group.hits();
                if hits.oom_kills > 0 || hits.fork_refusals > 0 {
                    run_cancel.cancel();
                    return std::future::pending::<()>().await;
                }
            }
        };
        let done = tokio::select! {
            done = run_command(&spec, &run_cancel) => done,
            () = watch_limits => unreachable_pending(),
        };
        drop(inherited);
        let mut done = done;
        if confined {
            // bubblewrap reports a program killed by a signal as 128 + it.
            if let CommandEnd::Exited(code @ 129..=159) = done.end {
                done.end = CommandEnd::Signaled(code - 128);
            }
        }
        let hits = group.as_ref().map(|g| g.hits()).unwrap_or_default();
        let limit = if confined {
            let signal = match done.end {
                CommandEnd::Signaled(signal) => Some(signal),
                _ => None,
            };
            let limits = self.command.limits;
            let workspace = dir.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(group) = group {
                    group.remove();
                }
                sandbox::limit_reached(&limits, hits, signal, &workspace)
            })
            .await
            .unwrap_or(None)
        } else {
            None
        };
        // A limit is an error of the attempt (retried like others), never a
        // gate's rejection; a cancel by hand stays a cancel. It is the host's
        // (the sandbox's limits), not a verdict on the work.
        if let Some(reason) = limit.filter(|_| !cancel.is_cancelled()) {
            let mut execution = Execution::infra(reason);
            execution.exit_code = match done.end {
                CommandEnd::Exited(code) => Some(code),
                _ => None,
            };
            execution.output = Some(done.stdout);
            execution.stderr = (!done.stderr.is_empty()).then_some(done.stderr);
            return execution;
        }
        let mut notes = Vec::new();
        if done.stdout_dropped > 0 {
            notes.push(format!(
                "output truncated: {} bytes over the {}-byte limit were dropped",
                done.stdout_dropped, self.command.max_output
            ));
        }
        let stderr = (!done.stderr.is_empty()).then(|| done.stderr.clone());
        let last_stderr_line = done.stderr.trim().lines().last().unwrap_or("").to_string();
        let with_stderr = |what: String| {
            if last_stderr_line.is_empty() {
                what
            } else {
                format!("{what}: {last_stderr_line}")
            }
        };
        let is_gate = self.stage.gate.is_some();
        let (result, exit_code) = match &done.end {
            CommandEnd::Exited(0) => (
                StageResult::Passed {
                    output: done.stdout.clone(),
                },
                Some(0),
            ),
            CommandEnd::Exited(1) if is_gate => {
                // A gate's feedback is what it printed; fall back to stderr
                // so that a test runner's report is never lost.
                let feedback = if done.stdout.trim().is_empty() {
                    done.stderr.clone()
                } else {
                    done.stdout.clone()
                };
                (StageResult::Rejected { feedback }, Some(1))
            }
            // The program's own exit, crash or hang is the work's failure;
            // a program that could not be started is the host's.
            CommandEnd::Exited(code) => (
                StageResult::Failed {
                    outcome: AttemptOutcome::Error,
                    class: FailureClass::Quality,
                    message: with_stderr(format!(
                        "`{}` exited with code {code}",
                        self.command.program
                    )),
                },
                Some(*code),
            ),
            CommandEnd::TimedOut => (
                StageResult::Failed {
                    outcome: AttemptOutcome::Timeout,
                    class: FailureClass::Quality,
                    message: format!(
                        "timed out after {}; the process group was killed",
                        format_duration(self.stage.timeout)
                    ),
                },
                None,
            ),
            // Like a timeout, the work's: it stopped moving.
            CommandEnd::Hung(hang) => (
                StageResult::Failed {
                    outcome: AttemptOutcome::Hung,
                    class: FailureClass::Quality,
                    message: hang.describe(),
                },
                None,
            ),
            CommandEnd::Cancelled => (StageResult::Cancelled, None),
            other @ CommandEnd::SpawnFailed(_) => (
                StageResult::Failed {
                    outcome: AttemptOutcome::Error,
                    class: FailureClass::Infra,
                    message: with_stderr(other.describe()),
                },
                None,
            ),
            other @ CommandEnd::Signaled(_) => (
                StageResult::Failed {
                    outcome: AttemptOutcome::Error,
                    class: FailureClass::Quality,
                    message: with_stderr(other.describe()),
                },
                None,
            ),
        };
        if let StageResult::Failed { message, .. } = &result {
            notes.insert(0, message.clone());
        }
        Execution {
            result,
            exit_code,
            output: Some(done.stdout),
            stderr,
            error: (!notes.is_empty()).then(|| notes.join("; ")),
            usage: None,
            model_call: None,
        }
    }
}

#[async_trait]
impl Executor for CommandExecutor {
    async fn run(
        &self,
        job: &ClaimedJob,
        context: &ItemContext,
        cancel: &CancellationToken,
    ) -> Execution {
        let dir = match prepare(&self.workspace, &context.item, cancel).await {
            Ok(dir) => dir,
            Err(failed) => return failed,
        };
        let stdin = context_json(job, context, &dir).to_string().into_bytes();
        let invocation = Invocation {
            args: self.command.args.clone(),
            stdin,
        };
        self.run_in(
            job,
            &dir,
            invocation,
            context.traceparent.as_deref(),
            cancel,
        )
        .await
    }
}

/// The `command` kind: a program, confined unless the stage says otherwise.
impl crate::kind::Kind for CommandStage {
    fn executor(
        &self,
        stage: &StageConfig,
        build: &crate::kind::Build<'_>,
    ) -> Result<Arc<dyn Executor>, String> {
        let config = build.config;
        Ok(Arc::new(CommandExecutor::new(
            stage,
            self,
            config,
            build.sandbox,
        )))
    }

    fn environment(&self, stage: &StageConfig, config: &Config) -> Vec<String> {
        if crate::kind::find_program(&self.program, &config.root).is_some() {
            return Vec::new();
        }
        vec![format!(
            "stage `{}`: program `{}` not found (relative paths are from {}; bare names are looked up in PATH)",
            stage.name,
            self.program,
            config.root.display()
        )]
    }
}

/// An executor that passes at once with an empty output: for benchmarks,
/// which measure the engine and the store rather than the work.
pub struct NoopExecutor;

#[async_trait]
impl Executor for NoopExecutor {
    async fn run(
        &self,
        _job: &ClaimedJob,
        _context: &ItemContext,
        _cancel: &CancellationToken,
    ) -> Execution {
        Execution {
            result: StageResult::Passed {
                output: String::new(),
            },
            exit_code: None,
            output: None,
            stderr: None,
            error: None,
            usage: None,
            model_call: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, created_at: i64) -> ideamill_store::ItemRow {
        ideamill_store::ItemRow {
            id,
            text: String::new(),
            metadata: serde_json::json!({}),
            state: ideamill_core::ItemState::Active,
            stage: None,
            round: 1,
            last_error: None,
            failure_class: None,
            created_at,
            updated_at: created_at,
            finished_at: None,
            trace_id: None,
        }
    }

    #[test]
    fn a_mark_is_written_whole_and_never_through_a_link() {
        let root = tempfile::tempdir().unwrap();
        let now = ideamill_sys::clock::now_millis();
        // An empty mark (what a full disk left before) in a folder changed
        // since the item was made: the folder is the item's, and marked.
        let dir = root.path().join("5");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("work.py"), "x").unwrap();
        std::fs::write(dir.join(OWNER_FILE), "").unwrap();
        assert_eq!(
            prepare_workspace(root.path(), &item(5, now - 60_000)).unwrap(),
            dir
        );
        assert!(dir.join("work.py").exists(), "kept");
        assert_eq!(
            std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap(),
            format!("5 {}", now - 60_000)
        );
        // A stage left a link at the mark's name: it is replaced, and what
        // it points at is never written.
        let target = root.path().join("outside");
        std::fs::remove_file(dir.join(OWNER_FILE)).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(OWNER_FILE)).unwrap();
        assert_eq!(
            prepare_workspace(root.path(), &item(5, now - 60_000)).unwrap(),
            dir
        );
        assert!(!target.exists(), "written through the link");
        assert!(
            !std::fs::symlink_metadata(dir.join(OWNER_FILE))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_workspace_is_never_inherited_from_another_item() {
        let root = tempfile::tempdir().unwrap();
        let now = ideamill_sys::clock::now_millis();
        // Item 7 runs and writes a file; its folder is marked as its own.
        let first = prepare_workspace(root.path(), &item(7, now - 60_000)).unwrap();
        std::fs::write(first.join("main.py"), "old").unwrap();
        assert_eq!(
            workspace_files(&first, 10),
            ["main.py"],
            "the mark is not listed"
        );
        assert_eq!(
            prepare_workspace(root.path(), &item(7, now - 60_000)).unwrap(),
            first
        );
        assert!(first.join("main.py").exists(), "its own folder is kept");
        // A new item 7 (the id reused): the old folder is moved aside.
        let second = prepare_workspace(root.path(), &item(7, now)).unwrap();
        assert_eq!(second, first);
        assert!(!second.join("main.py").exists(), "nothing inherited");
        let aside: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("7.stale-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::read_to_string(root.path().join(&aside[0]).join("main.py")).unwrap(),
            "old",
            "moved aside, never deleted"
        );
        // An unmarked folder older than the item is another's too.
        let unmarked = root.path().join("8");
        std::fs::create_dir(&unmarked).unwrap();
        std::fs::write(unmarked.join("x"), "").unwrap();
        prepare_workspace(root.path(), &item(8, now + 60_000)).unwrap();
        assert!(!unmarked.join("x").exists());
        // An unmarked folder changed after the item was made is its own.
        std::fs::create_dir(root.path().join("9")).unwrap();
        std::fs::write(root.path().join("9/y"), "").unwrap();
        prepare_workspace(root.path(), &item(9, now - 60_000)).unwrap();
        assert!(root.path().join("9/y").exists());
    }
}
