//! `ideamill.toml`: its validated form, and the parser that turns text into it
//! while reporting every error at once with file, line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{Gate, RetryPolicy};

/// A validated config. Every path is absolute, every default applied: nothing
/// downstream validates again.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file itself.
    pub path: PathBuf,
    /// The folder holding the config file; relative paths resolve against it.
    pub root: PathBuf,
    pub store: StoreConfig,
    pub engine: EngineConfig,
    /// In pipeline order; at least one; names unique.
    pub stages: Vec<StageConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `sqlite://<absolute path>` or `postgres://…`, as given otherwise.
    /// Default: `sqlite://<data_dir>/ideamill.db`.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Where the database (by default), status files and wake sockets live.
    /// Default `<root>/.ideamill`.
    pub data_dir: PathBuf,
    /// Each item gets `<workspace>/<item-id>/`. Default `<root>/workspace`.
    pub workspace: PathBuf,
    /// Default `<root>/inbox`.
    pub inbox: PathBuf,
    /// A job whose process stops renewing its lease for this long runs again. Default 15s.
    pub lease: Duration,
    /// How often a process renews its leases and beats. Default 2s; must be below `lease`.
    pub heartbeat: Duration,
    /// On SIGINT/SIGTERM, how long in-flight work may finish. Default 30s.
    pub shutdown_grace: Duration,
    /// The slow safety-net poll for work; wake-ups normally come sooner. Default 1s.
    pub poll_interval: Duration,
    /// Finished items older than this are pruned. Default: never.
    pub retention: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig {
    pub name: String,
    pub kind: StageKind,
    /// Default 10m.
    pub timeout: Duration,
    /// Defaults: max_attempts 3, backoff 2s, backoff_max 10m.
    pub retry: RetryPolicy,
    /// Jobs of this stage one process runs at once. Default 1.
    pub concurrency: u32,
    pub gate: Option<Gate>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StageKind {
    Command(CommandStage),
}

impl StageKind {
    pub fn name(&self) -> &'static str {
        match self {
            StageKind::Command(_) => "command",
        }
    }
}

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
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (e.g. it is missing).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every error found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Config {
    pub fn stage(&self, name: &str) -> Option<&StageConfig> {
        self.stages.iter().find(|s| s.name == name)
    }
    pub fn first_stage(&self) -> &StageConfig {
        &self.stages[0]
    }
    /// The stage after `name` in pipeline order, if any.
    pub fn next_stage(&self, name: &str) -> Option<&StageConfig> {
        let i = self.stages.iter().position(|s| s.name == name)?;
        self.stages.get(i + 1)
    }
}

/// Parse and validate config `text` read from `path` (used for messages and
/// to resolve relative paths; `path` should be absolute). Pure: no IO.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    crate::config_parse::parse(text, path)
}
