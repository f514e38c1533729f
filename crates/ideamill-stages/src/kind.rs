//! The stage-kind contract, on the running side: what each kind does to
//! run (its [`Executor`]) and what `validate` and `doctor` check of it
//! here. The config side (keys, checks, facts) is
//! `ideamill_core::config::KindConfig`.
//!
//! A kind never times out, cancels or records anything itself: the engine
//! gives every attempt the stage's `timeout`, fires the job's cancellation
//! token at the deadline, by hand or at shutdown, waits the kind's kill
//! grace for [`Executor::run`] to return, and records the outcome. A kind
//! only has to stop its work when the token fires.
//!
//! [`of`] is the registry: one exhaustive match, so a new `StageKind`
//! variant does not compile until it names its implementation here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ideamill_core::Config;
use ideamill_core::config::{StageConfig, StageKind};
use ideamill_llm::Provider;
use ideamill_store::Store;

use crate::executor::Executor;
use crate::sandbox::Sandbox;

/// What every kind's executor may need, built once for all stages.
pub struct Build<'a> {
    /// The validated config.
    pub config: &'a Arc<Config>,
    /// Where usage is reserved and spent.
    pub store: &'a Arc<dyn Store>,
    /// One client per `[providers.NAME]`.
    pub providers: &'a BTreeMap<String, Arc<Provider>>,
    /// The sandbox, probed once.
    pub sandbox: &'a Arc<Sandbox>,
}

/// How a stage kind runs: one implementation per kind, next to its executor.
pub trait Kind {
    /// The executor of `stage` (whose kind is this one), its resources
    /// checked: templates read, keys found. Fails with what to fix.
    fn executor(&self, stage: &StageConfig, build: &Build<'_>)
    -> Result<Arc<dyn Executor>, String>;

    /// What would stop `stage` from running on this machine (a program not
    /// found, a template that does not render), each a sentence naming the
    /// stage. Blocking; no network.
    fn environment(&self, stage: &StageConfig, config: &Config) -> Vec<String>;
}

/// The registry: each kind's implementation.
pub fn of(kind: &StageKind) -> &dyn Kind {
    match kind {
        StageKind::Command(c) => c,
        StageKind::Llm(c) => c,
        StageKind::Agent(c) => c,
    }
}

/// What would stop any stage of `config` from running here.
pub fn environment(config: &Config) -> Vec<String> {
    config
        .stages
        .iter()
        .flat_map(|stage| of(&stage.kind).environment(stage, config))
        .collect()
}

/// Where `program` is: a path (relative to `root`) if it holds a `/`, else
/// the first executable file of that name in `PATH`.
pub fn find_program(program: &str, root: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = if Path::new(program).is_absolute() {
            PathBuf::from(program)
        } else {
            root.join(program)
        };
        return is_exec(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
}

/// A prompt template that cannot be read or does not compile, as a problem
/// of `stage`; its source when it is fine.
pub fn read_template(stage: &StageConfig, path: &Path, root: &Path) -> Result<String, String> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "stage `{}`: cannot read the prompt template {}: {e}",
            stage.name,
            path.display()
        )
    })?;
    let name = template_name(path, root);
    crate::prompt::check(&name, &source).map_err(|e| format!("stage `{}`: {e}", stage.name))?;
    Ok(source)
}

/// A template's name in messages: its path from the project's folder.
pub fn template_name(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
