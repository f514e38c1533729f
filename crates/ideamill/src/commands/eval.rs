//! `ideamill eval`: quality as a number. Every idea of a suite goes through
//! the pipeline in a scratch project (one per variant: the config as it is,
//! "loop", and one per `--compare KEY=VALUE`), then its hidden tests run,
//! confined, on the files it had after each round and on its final
//! workspace. The figures: hidden pass rate per round and final, how often
//! the gate was fooled, tokens, cost and wall time per passing idea, and
//! why the others failed.
//!
//! The pipeline runs as the real binary (`add`, then `run --until-idle`)
//! in the scratch folder, one variant after the other, since a local model
//! serves one request at a time. The scratch folder is kept, so that every
//! workspace, log and store can be looked at afterwards.

mod judge;
mod overrides;
mod suite;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ideamill_core::Config;
use ideamill_core::config::{CommandStage, Limits, SandboxMode};
use ideamill_llm::{FileBlock, FileLimits};
use ideamill_stages::command::{CommandResult, CommandSpec, Confinement, run_command};
use ideamill_stages::sandbox::{self, Sandbox};
use ideamill_store::{ItemDetail, ItemFilter, Store};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::judge::{Files, Hidden};
use self::overrides::Override;
use self::suite::Case;
use crate::cli::EvalArgs;
use crate::{output, project};

/// The hidden tests' module, written next to the generated files. It does
/// not match unittest discovery's pattern (`test*.py`), so a gate that runs
/// `unittest discover` never picks it up (eval/README.md).
const HIDDEN_MODULE: &str = "ideamill_hidden_tests";
/// How long the hidden tests of one workspace may run.
const HIDDEN_TIMEOUT: Duration = Duration::from_secs(60);
/// The name of the variant that runs the config unchanged.
const LOOP: &str = "loop";

pub async fn run(config: Option<&Path>, args: EvalArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.suite)
        .with_context(|| format!("cannot read the suite {}", args.suite.display()))?;
    let mut cases = suite::parse(&text, &args.suite).map_err(anyhow::Error::msg)?;
    if !args.only.is_empty() {
        if let Some(unknown) = args
            .only
            .iter()
            .find(|id| !cases.iter().any(|c| &c.id == *id))
        {
            bail!("--only: the suite has no idea `{unknown}`");
        }
        cases.retain(|c| args.only.contains(&c.id));
    }
    let compares = args
        .compare
        .iter()
        .map(|c| Override::parse(c).map_err(|e| anyhow::anyhow!("--compare {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let base = project::load_config(config)?;
    let base_text = std::fs::read_to_string(&base.path)
        .with_context(|| format!("cannot read {}", base.path.display()))?;

    // A change that cannot apply is found before anything runs.
    for o in &compares {
        overrides::apply(&base_text, o).map_err(|e| anyhow::anyhow!("--compare {e}"))?;
    }
    let judge = Judge::new(&base, args.unconfined).await?;
    let scratch = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::path::absolute(dir).context("cannot read the current folder")?
        }
        None => tempfile::Builder::new()
            .prefix("ideamill-eval-")
            .tempdir()
            .context("cannot create a scratch folder")?
            .keep(),
    };
    let say = |line: String| {
        if !args.json {
            eprintln!("{line}");
        }
    };
    say(format!(
        "Evaluating {} ideas of {}; the scratch folder {} is kept.",
        cases.len(),
        args.suite.display(),
        scratch.display()
    ));

    let mut variants = vec![(LOOP.to_owned(), None)];
    variants.extend(compares.iter().map(|o| (o.text.clone(), Some(o))));
    let mut reports = Vec::new();
    for (name, change) in variants {
        let dir = scratch.join(dir_name(&name));
        let config = scratch_project(&base, &base_text, &dir, change)?;
        say(format!(
            "Variant {name}: running the pipeline in {}.",
            dir.display()
        ));
        let details = run_pipeline(&config, &dir, &cases, !args.json).await?;
        say(format!("Variant {name}: running the hidden tests."));
        let report = judge
            .variant(&name, change, &config, &dir, &cases, &details)
            .await?;
        reports.push(report);
    }
    let loop_rate = reports.first().map_or(0.0, |r| r.final_pass.rate);
    for r in reports.iter_mut().skip(1) {
        r.lift = (r.final_pass.rate > 0.0).then(|| loop_rate / r.final_pass.rate);
    }
    let report = Report {
        suite: args.suite.clone(),
        dir: scratch,
        confined: !args.unconfined,
        variants: reports,
    };
    if args.json {
        output::json(&report)?;
    } else {
        print_report(&report, &mut std::io::stdout().lock())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A folder name for a variant: `gate.max_rounds=1` → `gate.max_rounds-1`.
fn dir_name(variant: &str) -> String {
    variant
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect()
}

/// `dir` made a project of its own: the config (its store, data and
/// workspaces moved inside `dir`, `change` applied) and the `prompts/` and
/// `stages/` folders next to it.
fn scratch_project(
    base: &Config,
    text: &str,
    dir: &Path,
    change: Option<&Override>,
) -> anyhow::Result<Config> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty: give --dir a new folder (an evaluation does not mix with an older one)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for folder in ["prompts", "stages"] {
        let from = base.root.join(folder);
        if from.is_dir() {
            copy_tree(&from, &dir.join(folder))
                .with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
    let own = [
        "store.url=\"sqlite://.ideamill/ideamill.db\"",
        "engine.data_dir=\".ideamill\"",
        "engine.workspace=\"workspace\"",
    ];
    let mut text = text.to_owned();
    for o in own.iter().map(|o| Override::parse(o)) {
        let o = o.map_err(anyhow::Error::msg)?;
        text = overrides::apply(&text, &o).map_err(anyhow::Error::msg)?;
    }
    if let Some(o) = change {
        text = overrides::apply(&text, o).map_err(|e| anyhow::anyhow!("--compare {e}"))?;
    }
    let path = dir.join("ideamill.toml");
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(ideamill_core::config::parse(&text, &path)?)
}

/// Copies files and folders; links, special files and Python's bytecode
/// caches are left out (a cache as new as a rewritten source of the same
/// size would be taken for it).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if entry.file_name() == "__pycache__" {
            continue;
        }
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Adds the ideas and runs the mill until idle; returns every item's detail
/// with the id of its case.
async fn run_pipeline(
    config: &Config,
    dir: &Path,
    cases: &[Case],
    progress: bool,
) -> anyhow::Result<Vec<(String, ItemDetail)>> {
    let exe = std::env::current_exe().context("cannot find this program")?;
    let ideas: String = cases
        .iter()
        .map(|c| {
            serde_json::json!({"text": c.idea, "metadata": {"eval_id": c.id}}).to_string() + "\n"
        })
        .collect();
    std::fs::write(dir.join("ideas.jsonl"), ideas).context("cannot write ideas.jsonl")?;
    let ideamill = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("--config")
            .arg(&config.path)
            .arg("--color")
            .arg("never")
            .args(args)
            .current_dir(dir)
            .env_remove("IDEAMILL_CONFIG")
            .stdin(Stdio::null());
        cmd
    };
    let added = ideamill(&["add", "--file", "ideas.jsonl", "--json"])
        .output()
        .context("cannot run ideamill add")?;
    if !added.status.success() {
        bail!(
            "ideamill add failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&added.stderr).trim()
        );
    }
    let log_path = dir.join("run.log");
    let log = std::fs::File::create(&log_path).context("cannot create run.log")?;
    let mut run = ideamill(&["run", "--until-idle", "--listen", "off"]);
    run.stdout(log.try_clone()?).stderr(log);
    // If eval dies (Ctrl-C, kill), its mill stops too, gracefully: left
    // running it would go on spending the model for a report nobody gets.
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between
    // fork and exec.
    unsafe {
        run.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // eval may have died before the line above.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = run.spawn().context("cannot run ideamill run")?;
    let store = project::open_existing_store(config).await?;
    let bar = (progress && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(cases.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} ideas finished")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for ideamill run")? {
            break status;
        }
        if let Some(bar) = &bar
            && let Ok(s) = store.status(ideamill_sys::clock::now_millis()).await
        {
            bar.set_position(s.items.done + s.items.failed + s.items.cancelled);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !status.success() {
        store.close().await;
        bail!(
            "ideamill run --until-idle ended with {status}; its log is {}",
            log_path.display()
        );
    }
    let details = details(store.as_ref()).await;
    store.close().await;
    let details = details?;
    Ok(details
        .into_iter()
        .filter_map(|d| {
            let id = d.item.metadata.get("eval_id")?.as_str()?.to_owned();
            Some((id, d))
        })
        .collect())
}

/// Every item of the store, oldest first.
async fn details(store: &dyn Store) -> anyhow::Result<Vec<ItemDetail>> {
    const PAGE: u32 = 500;
    let mut ids = Vec::new();
    let mut before_id = None;
    loop {
        let page = store
            .list_items(&ItemFilter {
                before_id,
                limit: PAGE,
                ..ItemFilter::default()
            })
            .await?;
        ids.extend(page.iter().map(|i| i.id));
        before_id = page.last().map(|i| i.id);
        if page.len() < PAGE as usize {
            break;
        }
    }
    ids.sort_unstable();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(store.item(id).await?);
    }
    Ok(out)
}

/// Runs hidden tests: confined by the project's sandbox unless told not to.
struct Judge {
    /// `None`: unconfined (`--unconfined`).
    sandbox: Option<Arc<Sandbox>>,
    limits: Limits,
}

impl Judge {
    async fn new(config: &Config, unconfined: bool) -> anyhow::Result<Judge> {
        if unconfined {
            tracing::warn!(
                "The hidden tests run UNCONFINED (--unconfined): generated code has your user's access."
            );
            return Ok(Judge {
                sandbox: None,
                limits: config.sandbox.limits,
            });
        }
        let sandbox_config = config.sandbox.clone();
        let sandbox = tokio::task::spawn_blocking(move || Sandbox::probe(&sandbox_config)).await?;
        if !sandbox.works() {
            bail!(
                "the hidden tests must run confined, but {}; pass --unconfined to run them \
                 without a sandbox",
                sandbox
                    .report()
                    .problem
                    .as_deref()
                    .unwrap_or("the sandbox does not work here")
            );
        }
        Ok(Judge {
            sandbox: Some(Arc::new(sandbox)),
            limits: config.sandbox.limits,
        })
    }

    /// Runs the hidden tests in `dir`, which holds them as HIDDEN_MODULE.
    async fn hidden_tests(&self, dir: &Path) -> anyhow::Result<CommandResult> {
        let args: Vec<String> = ["-m", "unittest", "-q", HIDDEN_MODULE]
            .map(str::to_owned)
            .to_vec();
        let stage = CommandStage {
            program: "python3".to_owned(),
            args: args.clone(),
            env: [("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned())].into(),
            kill_grace: Duration::from_secs(1),
            max_output: 64 * 1024,
            sandbox: if self.sandbox.is_some() {
                SandboxMode::On
            } else {
                SandboxMode::Off
            },
            network: false,
            pass_env: Vec::new(),
            read_only: Vec::new(),
            limits: self.limits,
        };
        let mut spec = CommandSpec {
            program: stage.program.clone(),
            args: args.clone(),
            cwd: dir.to_path_buf(),
            env: sandbox::stage_env(&stage, dir, Vec::new(), std::env::vars()),
            stdin: Vec::new(),
            timeout: HIDDEN_TIMEOUT,
            kill_grace: stage.kill_grace,
            max_stdout: stage.max_output,
            max_stderr: stage.max_output,
            confine: Confinement::default(),
            stall: None,
        };
        let Some(sandbox) = &self.sandbox else {
            return Ok(run_command(&spec, &CancellationToken::new()).await);
        };
        sandbox
            .hand_over(dir)
            .with_context(|| format!("cannot hand {} to the sandbox", dir.display()))?;
        let plan = sandbox
            .plan(&stage, dir, &stage.program, &args)
            .context("cannot start the sandbox")?;
        let tag = format!("eval{}", std::process::id());
        let (confinement, group) = sandbox.confine(&self.limits, &tag);
        spec.program = plan.program;
        spec.args = plan.args;
        spec.confine = Confinement {
            keep_fds: plan
                .keep
                .iter()
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .collect(),
            ..confinement
        };
        let mut done: CommandResult = run_command(&spec, &CancellationToken::new()).await;
        drop(plan.keep);
        if let Some(group) = group {
            group.remove();
        }
        // bubblewrap reports a program killed by a signal as 128 + it.
        if let ideamill_stages::command::CommandEnd::Exited(code @ 129..=159) = done.end {
            done.end = ideamill_stages::command::CommandEnd::Signaled(code - 128);
        }
        Ok(done)
    }

    /// Writes `files` and the hidden tests into `dir` and runs them.
    async fn judge_files(&self, dir: &Path, files: &Files, case: &Case) -> anyhow::Result<Hidden> {
        let blocks: Vec<FileBlock> = files
            .iter()
            .map(|(path, content)| FileBlock {
                path: path.clone(),
                content: content.clone(),
                lang: None,
            })
            .collect();
        // The stage refused what it could not write; so does this.
        let limits = FileLimits {
            max_file_bytes: u64::MAX,
            max_files: usize::MAX,
        };
        ideamill_llm::write_files(dir, &blocks, &limits)?;
        self.judge_dir(dir, case).await
    }

    async fn judge_dir(&self, dir: &Path, case: &Case) -> anyhow::Result<Hidden> {
        let tests = dir.join(format!("{HIDDEN_MODULE}.py"));
        std::fs::write(&tests, &case.tests)
            .with_context(|| format!("cannot write {}", tests.display()))?;
        let run = self.hidden_tests(dir).await?;
        let hidden = Hidden::from_run(&run);
        // Next to the files, for whoever wants to know why.
        let log = dir.with_extension("log");
        let text = format!(
            "{}: {}\n\n{}{}",
            hidden.label(),
            run.end,
            run.stdout,
            run.stderr
        );
        std::fs::write(&log, text).with_context(|| format!("cannot write {}", log.display()))?;
        Ok(hidden)
    }

    /// The figures of one variant.
    async fn variant(
        &self,
        name: &str,
        change: Option<&Override>,
        config: &Config,
        dir: &Path,
        cases: &[Case],
        details: &[(String, ItemDetail)],
    ) -> anyhow::Result<VariantReport> {
        let files_stages: Vec<&str> = config
            .stages
            .iter()
            .filter(|s| s.kind.facts().writes_files)
            .map(|s| s.name.as_str())
            .collect();
        let rounds = config
            .stages
            .iter()
            .filter_map(|s| s.gate.as_ref().map(|g| g.max_rounds))
            .max()
            .unwrap_or(1);
        let mut items = Vec::new();
        for case in cases {
            let Some((_, detail)) = details.iter().find(|(id, _)| id == &case.id) else {
                bail!(
                    "the idea `{}` is not in the store of {}",
                    case.id,
                    dir.display()
                );
            };
            let base = dir.join("judge").join(&case.id);
            let mut per_round = Vec::new();
            if !files_stages.is_empty() {
                let states = judge::round_states(&detail.outputs, &files_stages, rounds);
                let mut last: Option<(&Files, bool)> = None;
                for (i, files) in states.iter().enumerate() {
                    // An unchanged state has the same verdict.
                    let passed = match last {
                        Some((before, passed)) if before == files => passed,
                        _ => {
                            let round_dir = base.join(format!("round-{}", i + 1));
                            self.judge_files(&round_dir, files, case).await?.passed()
                        }
                    };
                    per_round.push(passed);
                    last = Some((files, passed));
                }
            }
            let final_dir = base.join("final");
            let workspace = config.engine.workspace.join(detail.item.id.to_string());
            if workspace.is_dir() {
                copy_tree(&workspace, &final_dir)
                    .with_context(|| format!("cannot copy {}", workspace.display()))?;
            } else {
                std::fs::create_dir_all(&final_dir)?;
            }
            let hidden = self.judge_dir(&final_dir, case).await?;
            let started = detail.attempts.iter().map(|a| a.started_at).min();
            let finished = detail.attempts.iter().map(|a| a.finished_at).max();
            let wall_ms = match (started, finished) {
                (Some(s), Some(f)) => (f - s).max(0),
                _ => 0,
            };
            let infra = judge::failed_for_infra(detail);
            items.push(ItemReport {
                id: case.id.clone(),
                item: detail.item.id,
                state: detail.item.state.as_str().to_owned(),
                rounds_run: detail.item.round,
                rounds: (!files_stages.is_empty()).then_some(per_round),
                passed: hidden.passed(),
                infra,
                failure: (infra || !hidden.passed()).then(|| judge::failure_class(detail, &hidden)),
                hidden: hidden.label(),
                tokens: detail.usage.tokens(),
                cost: detail.usage.cost,
                wall_seconds: wall_ms as f64 / 1000.0,
            });
        }
        Ok(VariantReport::new(name, change, dir, rounds, items))
    }
}

#[derive(Debug, Serialize)]
struct Report {
    suite: PathBuf,
    dir: PathBuf,
    /// Whether the hidden tests ran in the sandbox.
    confined: bool,
    variants: Vec<VariantReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Rate {
    passed: u32,
    total: u32,
    rate: f64,
}

impl Rate {
    fn of(passed: usize, total: usize) -> Rate {
        Rate {
            passed: passed as u32,
            total: total as u32,
            rate: if total == 0 {
                0.0
            } else {
                passed as f64 / total as f64
            },
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} {:.1}%",
            self.passed,
            self.total,
            self.rate * 100.0
        )
    }
}

#[derive(Debug, Serialize)]
struct VariantReport {
    name: String,
    /// The override, for a compared variant.
    change: Option<String>,
    dir: PathBuf,
    ideas: u32,
    /// Ideas whose item failed for the infrastructure (the provider or the
    /// host, see `FailureClass::Infra`): left out of every pass rate (its
    /// `total` is `ideas - infra_failed`), and counted here instead, so that
    /// a rate-limit storm never scores as the model's failure.
    infra_failed: u32,
    /// Hidden pass rate after rounds 1..=max_rounds, over the scored ideas;
    /// `None` when no stage writes files from a model's answer (only the
    /// final workspace is judged).
    rounds: Option<Vec<Rate>>,
    /// Hidden pass rate of the final workspaces, over the scored ideas.
    #[serde(rename = "final")]
    final_pass: Rate,
    /// Items the pipeline finished as done.
    gate_done: u32,
    /// Done, but failing the hidden tests.
    gate_fooled: u32,
    /// Failed by the gate (not for the infrastructure), yet passing the
    /// hidden tests: the gate's false rejections, the other side of fooled.
    gate_rejected_passing: u32,
    tokens: u64,
    cost: f64,
    wall_seconds: f64,
    tokens_per_pass: Option<f64>,
    cost_per_pass: Option<f64>,
    wall_seconds_per_pass: Option<f64>,
    /// Why the ideas that do not pass failed, with their counts (those that
    /// failed for the infrastructure as `infra: ...`).
    failures: BTreeMap<String, u32>,
    /// The loop's final pass rate over this variant's (compared variants).
    lift: Option<f64>,
    items: Vec<ItemReport>,
}

impl VariantReport {
    fn new(
        name: &str,
        change: Option<&Override>,
        dir: &Path,
        rounds: u32,
        items: Vec<ItemReport>,
    ) -> VariantReport {
        // Only ideas the infrastructure let the pipeline finish are scored.
        let scored: Vec<&ItemReport> = items.iter().filter(|i| !i.infra).collect();
        let n = scored.len();
        let passes = scored.iter().filter(|i| i.passed).count();
        let per_round = items.first().and_then(|i| i.rounds.as_ref()).map(|_| {
            (0..rounds as usize)
                .map(|r| {
                    let passed = scored
                        .iter()
                        .filter(|i| i.rounds.as_ref().is_some_and(|p| p[r]))
                        .count();
                    Rate::of(passed, n)
                })
                .collect()
        });
        let done: Vec<&ItemReport> = items.iter().filter(|i| i.state == "done").collect();
        let tokens: u64 = items.iter().map(|i| i.tokens).sum();
        let cost: f64 = items.iter().map(|i| i.cost).sum();
        let wall: f64 = items.iter().map(|i| i.wall_seconds).sum();
        let per_pass = |total: f64| (passes > 0).then(|| total / passes as f64);
        let mut failures = BTreeMap::new();
        for class in items.iter().filter_map(|i| i.failure.clone()) {
            *failures.entry(class).or_insert(0) += 1;
        }
        VariantReport {
            name: name.to_owned(),
            change: change.map(|c| c.text.clone()),
            dir: dir.to_path_buf(),
            ideas: items.len() as u32,
            infra_failed: (items.len() - n) as u32,
            rounds: per_round,
            final_pass: Rate::of(passes, n),
            gate_done: done.len() as u32,
            gate_fooled: done.iter().filter(|i| !i.passed).count() as u32,
            gate_rejected_passing: scored
                .iter()
                .filter(|i| i.state == "failed" && i.passed)
                .count() as u32,
            tokens,
            cost,
            wall_seconds: wall,
            tokens_per_pass: per_pass(tokens as f64),
            cost_per_pass: per_pass(cost),
            wall_seconds_per_pass: per_pass(wall),
            failures,
            lift: None,
            items,
        }
    }
}

#[derive(Debug, Serialize)]
struct ItemReport {
    /// The suite's id.
    id: String,
    /// The store's id, in the variant's scratch project.
    item: i64,
    state: String,
    rounds_run: u32,
    /// Hidden tests passed after each round.
    rounds: Option<Vec<bool>>,
    passed: bool,
    /// The item failed for the infrastructure: not scored.
    infra: bool,
    hidden: String,
    failure: Option<String>,
    tokens: u64,
    cost: f64,
    wall_seconds: f64,
}

fn print_report(report: &Report, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let v = &report.variants;
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once(String::new())
            .chain(v.iter().map(|r| r.name.clone()))
            .collect(),
    ];
    let max_rounds = v
        .iter()
        .filter_map(|r| r.rounds.as_ref().map(Vec::len))
        .max()
        .unwrap_or(0);
    for round in 0..max_rounds {
        rows.push(
            std::iter::once(format!("hidden pass, round {}", round + 1))
                .chain(v.iter().map(|r| match &r.rounds {
                    Some(rates) => rates.get(round).map_or("-".to_owned(), Rate::to_string),
                    None => "n/a".to_owned(),
                }))
                .collect(),
        );
    }
    let mut row = |label: &str, cell: &dyn Fn(&VariantReport) -> String| {
        rows.push(
            std::iter::once(label.to_owned())
                .chain(v.iter().map(cell))
                .collect(),
        );
    };
    let or_na = |x: Option<String>| x.unwrap_or_else(|| "n/a".to_owned());
    row("hidden pass, final", &|r| r.final_pass.to_string());
    row("infra, not scored", &|r| r.infra_failed.to_string());
    row("done by the gate", &|r| {
        format!("{}/{}", r.gate_done, r.ideas)
    });
    row("gate fooled", &|r| r.gate_fooled.to_string());
    row("gate rejected, passing", &|r| {
        r.gate_rejected_passing.to_string()
    });
    row("tokens per pass", &|r| {
        or_na(r.tokens_per_pass.map(|t| format!("{t:.0}")))
    });
    row("cost per pass", &|r| {
        or_na(r.cost_per_pass.map(|c| format!("${c:.4}")))
    });
    row("wall time per pass", &|r| {
        or_na(r.wall_seconds_per_pass.map(|s| format!("{s:.1}s")))
    });
    print_rows(&rows, out)?;
    for r in v.iter().skip(1) {
        match r.lift {
            Some(lift) => writeln!(
                out,
                "\nLift (final pass rate, {LOOP} / {}): {lift:.2}x",
                r.name
            )?,
            None => writeln!(
                out,
                "\nLift (final pass rate, {LOOP} / {}): n/a ({} passed none)",
                r.name, r.name
            )?,
        }
    }
    for r in v {
        if r.failures.is_empty() {
            continue;
        }
        writeln!(out, "\nNot passing, {}:", r.name)?;
        for (class, n) in &r.failures {
            writeln!(out, "  {n:>3}  {class}")?;
        }
    }
    writeln!(out, "\nPer idea:")?;
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("idea".to_owned())
            .chain(v.iter().map(|r| r.name.clone()))
            .collect(),
    ];
    if let Some(first) = v.first() {
        for (i, item) in first.items.iter().enumerate() {
            rows.push(
                std::iter::once(item.id.clone())
                    .chain(v.iter().map(|r| match r.items.get(i) {
                        Some(it) if it.passed && !it.infra => {
                            format!("pass ({} rounds)", it.rounds_run)
                        }
                        Some(it) => it.failure.clone().unwrap_or_default(),
                        None => String::new(),
                    }))
                    .collect(),
            );
        }
    }
    print_rows(&rows, out)?;
    writeln!(out, "\nEverything is kept in {}.", report.dir.display())?;
    if !report.confined {
        writeln!(out, "The hidden tests ran UNCONFINED (--unconfined).")?;
    }
    Ok(())
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn print_rows(rows: &[Vec<String>], out: &mut impl std::io::Write) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, passed: bool, infra: bool, failure: Option<&str>) -> ItemReport {
        ItemReport {
            id: id.into(),
            item: 1,
            state: if infra || !passed { "failed" } else { "done" }.into(),
            rounds_run: 1,
            rounds: Some(vec![passed]),
            passed,
            infra,
            hidden: String::new(),
            failure: failure.map(str::to_owned),
            tokens: 10,
            cost: 0.0,
            wall_seconds: 1.0,
        }
    }

    /// Issue 13: ideas failed for the infrastructure (a rate-limit storm)
    /// are counted apart and left out of every pass rate.
    #[test]
    fn infra_failures_are_not_scored() {
        let items = vec![
            item("a", true, false, None),
            item("b", false, false, Some("failed: own tests failing")),
            item("c", false, true, Some("infra: implement (error)")),
            // Even a workspace that happens to pass is not scored.
            item("d", true, true, Some("infra: qa (error)")),
        ];
        let r = VariantReport::new("loop", None, Path::new("/x"), 1, items);
        assert_eq!((r.ideas, r.infra_failed), (4, 2));
        assert_eq!(r.final_pass, Rate::of(1, 2));
        assert_eq!(r.rounds, Some(vec![Rate::of(1, 2)]));
        assert_eq!(
            r.failures,
            BTreeMap::from([
                ("failed: own tests failing".to_owned(), 1),
                ("infra: implement (error)".to_owned(), 1),
                ("infra: qa (error)".to_owned(), 1),
            ])
        );
        let mut out = Vec::new();
        let report = Report {
            suite: "s".into(),
            dir: "/x".into(),
            confined: true,
            variants: vec![r],
        };
        print_report(&report, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let line = |label: &str| {
            out.lines()
                .find(|l| l.starts_with(label))
                .map(|l| l[label.len()..].trim().to_owned())
        };
        assert_eq!(
            line("hidden pass, final").as_deref(),
            Some("1/2 50.0%"),
            "{out}"
        );
        assert_eq!(line("infra, not scored").as_deref(), Some("2"), "{out}");
        assert_eq!(line("d ").as_deref(), Some("infra: qa (error)"), "{out}");
    }

    #[test]
    fn variant_folders_are_plain_names() {
        assert_eq!(dir_name("loop"), "loop");
        assert_eq!(dir_name("gate.max_rounds=1"), "gate.max_rounds-1");
        assert_eq!(
            dir_name("providers.main.model=\"a/b c\""),
            "providers.main.model--a-b-c-"
        );
    }
}
