//! `ideamill.toml`: its validated form, and the parser that turns text into it
//! while reporting every error at once with file, line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{Gate, RetryPolicy};

mod section;

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
    /// Model endpoints for `llm` stages, by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Prices per model, in US dollars per million tokens.
    pub prices: BTreeMap<String, Price>,
    pub budget: BudgetConfig,
    /// Hang detection, the supervisor, probes and the health verdict.
    pub health: HealthConfig,
    /// How `ideamill run` takes idea files from `engine.inbox`.
    pub inbox: InboxConfig,
    /// The dashboard and the HTTP API (served on `health.listen`).
    pub web: WebConfig,
    /// Where alerts go (`[[alerts]]`), in file order; empty: no alerts.
    pub alerts: Vec<AlertTarget>,
    /// How command stages are confined (`[sandbox]`).
    pub sandbox: SandboxConfig,
}

/// `[sandbox]`: the program that confines command stages and the default
/// limits of every confined stage (each stage may override them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The sandbox program (bubblewrap). Default `bwrap`, looked up in `PATH`.
    pub program: String,
    pub limits: Limits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            program: "bwrap".to_owned(),
            limits: Limits::default(),
        }
    }
}

/// What one job of a command stage may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory of all its processes together (a cgroup where the host has
    /// one for us, else each process's address space). Default 2 GiB.
    pub memory: u64,
    /// Processes and threads at once. Default 256.
    pub processes: u32,
    /// CPU time of each process. Default 10m.
    pub cpu_time: Duration,
    /// Largest file it may write. Default 512 MiB.
    pub file_size: u64,
    /// The item's workspace after the stage, all files together. Default 1 GiB.
    pub workspace_size: u64,
    /// Its private `/tmp` (memory-backed). Default 256 MiB.
    pub tmp_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 2 << 30,
            processes: 256,
            cpu_time: Duration::from_secs(10 * 60),
            file_size: 512 << 20,
            workspace_size: 1 << 30,
            tmp_size: 256 << 20,
        }
    }
}

/// Whether a command stage runs confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// The default: confined by `[sandbox] program`.
    On,
    /// Unconfined, by the config's explicit choice (`sandbox = "off"`):
    /// logged at every start and shown as a warning.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat-completions endpoint.
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

/// Where an API key comes from. The key itself is never in the config, the
/// store or a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    None,
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub model: String,
    pub api_key: ApiKeySource,
    pub headers: BTreeMap<String, String>,
    /// Stream responses (SSE). Default true.
    pub stream: bool,
    /// Default 10s.
    pub connect_timeout: Duration,
    /// No bytes for this long aborts the request. Default 60s.
    pub idle_timeout: Duration,
    /// Requests in flight at once, shared by all workers of a process. Default 4.
    pub max_concurrency: u32,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// Spending caps. Reaching one pauses the affected items instead of failing them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetConfig {
    pub item_usd: Option<f64>,
    pub day_usd: Option<f64>,
    pub item_tokens: Option<u64>,
    pub day_tokens: Option<u64>,
}

impl BudgetConfig {
    pub fn is_set(&self) -> bool {
        self.item_usd.is_some()
            || self.day_usd.is_some()
            || self.item_tokens.is_some()
            || self.day_tokens.is_some()
    }
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

/// `[health]`: hang detection, the supervisor, the HTTP probes, and the
/// thresholds of the health verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// An engine whose event loop has not beaten for this long is stalled:
    /// its watchdog saves evidence and ends it, and the supervisor restarts
    /// it. Default 5s.
    pub stall_after: Duration,
    /// The loopback HTTP listener for /healthz, /readyz and /metrics; `None`
    /// when set to "off". Default `127.0.0.1:9464`.
    pub listen: Option<String>,
    /// Free space on the data folder's disk below which health is degraded.
    /// Default 256 MiB.
    pub min_free_disk_mb: u64,
    /// Runnable work older than this while engines have free slots is "not
    /// moving". Default 2m.
    pub stuck_after: Duration,
    /// The window over which failure rates and restarts are judged. Default 15m.
    pub failure_window: Duration,
    /// The supervisor gives up after this many restarts within
    /// `restart_window`. Default 5 in 60s.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            stall_after: Duration::from_secs(5),
            listen: Some("127.0.0.1:9464".to_owned()),
            min_free_disk_mb: 256,
            stuck_after: Duration::from_secs(120),
            failure_window: Duration::from_secs(15 * 60),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
        }
    }
}

/// `[inbox]`: how `ideamill run` takes idea files dropped into the inbox
/// folder (`engine.inbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    /// Watch and take the inbox at all. Default true.
    pub enabled: bool,
    /// Learn of new files from filesystem events (inotify) at once. Without
    /// them (network filesystems, where events of other machines never
    /// arrive) only the rescan finds files. Default true.
    pub events: bool,
    /// A file written in place is taken once its size and modification time
    /// have not changed for this long; a file renamed in is taken at once.
    /// Default 1s.
    pub settle: Duration,
    /// The full rescan of the folder, the safety net for missed events.
    /// Default 30s.
    pub rescan: Duration,
    /// Larger files are rejected unread. Default 16 MiB.
    pub max_file_bytes: u64,
    /// Files with more ideas are rejected. Default 10,000.
    pub max_ideas: u32,
    /// Files with a longer idea are rejected. Default 256 KiB.
    pub max_idea_bytes: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            enabled: true,
            events: true,
            settle: Duration::from_secs(1),
            rescan: Duration::from_secs(30),
            max_file_bytes: 16 * 1024 * 1024,
            max_ideas: 10_000,
            max_idea_bytes: 256 * 1024,
        }
    }
}

/// `[web]`: the dashboard and the HTTP API, served by `ideamill run` on
/// `[health] listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// The access token (`ideamill init` writes one, mode 0600). Required
    /// when the listener is not on a loopback address. Default
    /// `<data_dir>/token`.
    pub token_file: PathBuf,
    /// Ask for the token on loopback too. Default false.
    pub require_token: bool,
    /// The dashboard's address as people reach it (e.g. behind a proxy), for
    /// links in alerts. Optional.
    pub url: Option<String>,
}

/// What an alert target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A JSON object POSTed to any URL.
    Webhook,
    /// A Slack-compatible incoming webhook (`{"text": ...}`): Slack,
    /// Mattermost, Rocket.Chat, Discord's `/slack` endpoint.
    Slack,
    /// An ntfy topic URL (`https://ntfy.sh/<topic>`).
    Ntfy,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Webhook => "webhook",
            AlertKind::Slack => "slack",
            AlertKind::Ntfy => "ntfy",
        }
    }
}

/// What raises an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertTrigger {
    /// An engine's event loop stopped beating (`engine_stalled`).
    Stall,
    /// The supervisor restarted the engine, or gave up.
    Restart,
    /// An item ended `failed`.
    ItemFailed,
    /// Runnable work is not moving (`queue_not_moving`).
    QueueStuck,
    /// A budget cap paused work.
    Budget,
    /// The health verdict changed (HEALTHY, DEGRADED, STALLED, DOWN).
    Verdict,
}

impl AlertTrigger {
    pub const ALL: &'static [AlertTrigger] = &[
        AlertTrigger::Stall,
        AlertTrigger::Restart,
        AlertTrigger::ItemFailed,
        AlertTrigger::QueueStuck,
        AlertTrigger::Budget,
        AlertTrigger::Verdict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertTrigger::Stall => "stall",
            AlertTrigger::Restart => "restart",
            AlertTrigger::ItemFailed => "item_failed",
            AlertTrigger::QueueStuck => "queue_stuck",
            AlertTrigger::Budget => "budget",
            AlertTrigger::Verdict => "verdict",
        }
    }

    pub fn parse(s: &str) -> Option<AlertTrigger> {
        AlertTrigger::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

/// Where a target's URL comes from. A webhook URL is often a secret (Slack's
/// are): `url_env` keeps it out of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    Literal(String),
    Env(String),
}

/// One `[[alerts]]` target.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertTarget {
    /// Unique; default `<kind>` or `<kind>-<n>`.
    pub name: String,
    pub kind: AlertKind,
    pub url: UrlSource,
    /// Extra request headers (e.g. an `Authorization` for ntfy).
    pub headers: BTreeMap<String, String>,
    /// What this target hears about. Default: everything.
    pub on: Vec<AlertTrigger>,
    /// The same alert is not sent again within this long; what happens
    /// meanwhile is counted and said in the next one. Default 10m.
    pub cooldown: Duration,
    /// Tries per alert before its failure becomes an event. Default 5.
    pub max_tries: u32,
    /// The first retry's delay, doubled for each next one. Default 2s.
    pub backoff: Duration,
    /// One request's whole time. Default 10s.
    pub timeout: Duration,
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
    Llm(LlmStage),
}

impl StageKind {
    pub fn name(&self) -> &'static str {
        match self {
            StageKind::Command(_) => "command",
            StageKind::Llm(_) => "llm",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmStage {
    /// A key of `Config::providers`.
    pub provider: String,
    /// The prompt template (minijinja), absolute.
    pub prompt: PathBuf,
    /// A system prompt template, if any: inline text.
    pub system: Option<String>,
    pub temperature: Option<f32>,
    /// Always sent. Default 1024.
    pub max_tokens: u32,
    /// Write fenced code blocks that name a file into the item's workspace.
    pub files: bool,
    /// Default 50.
    pub max_files: usize,
    /// Default 256 KiB.
    pub max_file_bytes: usize,
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

/// `scheme://user:***@host/…`: a URL's password hidden.
pub fn redact_url_secret(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!(
                    "{}{}:{REDACTED}{}",
                    &url[..s + 3],
                    &userinfo[..c],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `scheme://host/***`: only where a URL goes, not its path or query (where
/// webhooks keep their secret) nor its user.
pub fn redact_url_path(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return REDACTED.to_owned();
    };
    let rest = &url[s + 3..];
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{}{host}/{REDACTED}", &url[..s + 3])
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

/// What stands in for a secret in a redacted config.
pub const REDACTED: &str = "***";

impl Config {
    /// A copy fit for evidence bundles and logs: the store's password,
    /// alert URLs (a Slack webhook's path is its secret), every header value
    /// and every stage `env` value replaced by `***`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.store.url = redact_url_secret(&c.store.url);
        for provider in c.providers.values_mut() {
            provider
                .headers
                .values_mut()
                .for_each(|v| *v = REDACTED.to_owned());
        }
        for alert in &mut c.alerts {
            alert
                .headers
                .values_mut()
                .for_each(|v| *v = REDACTED.to_owned());
            if let UrlSource::Literal(url) = &mut alert.url {
                *url = redact_url_path(url);
            }
        }
        for stage in &mut c.stages {
            if let StageKind::Command(command) = &mut stage.kind {
                command
                    .env
                    .values_mut()
                    .for_each(|v| *v = REDACTED.to_owned());
            }
        }
        c
    }

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
    section::parse(text, path)
}
