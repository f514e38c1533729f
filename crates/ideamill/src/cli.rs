//! Command-line arguments. Help text lives next to each flag.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ideamill_core::FailureClass;
use ideamill_store::StateFilter;

#[derive(Debug, Parser)]
#[command(
    name = "ideamill",
    version,
    about = "Turns a queue of ideas into generated, QA-checked code, unattended."
)]
pub struct Cli {
    /// The config file [default: ./ideamill.toml].
    #[arg(long, global = true, env = "IDEAMILL_CONFIG")]
    pub config: Option<PathBuf>,

    /// When to use colours.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    /// More log output (-v debug, -vv trace). `IDEAMILL_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// How log lines are written to stderr: `human` (one readable line) or
    /// `json` (one JSON object per line: timestamp, level, target, message,
    /// fields and the job's span with its item, job, trace and span ids; for
    /// Loki or Elasticsearch).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human,
          env = "IDEAMILL_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    pub fn enabled_for_stderr(self) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create ideamill.toml, stages/, prompts/ and inbox/ in DIR (default: here).
    Init(InitArgs),
    /// Check the config; report every error with its line (exit 78 on errors).
    Validate(ValidateArgs),
    /// Add ideas: TEXT, --file F (.txt: one per line; .json/.jsonl: objects), or - for stdin.
    Add(AddArgs),
    /// Bring in another system's files: `import legacy DIR`.
    Import(ImportArgs),
    /// Items with their outputs, QA feedback, costs and files, as JSON or JSON lines.
    Export(ExportArgs),
    /// List items, newest first.
    List(ListArgs),
    /// One item: every stage, attempt, output, feedback, error and timing.
    Show(ShowArgs),
    /// Run a failed or cancelled item again from where it stopped (or --from a stage).
    Retry(RetryArgs),
    /// Cancel an item; a running job is stopped.
    Cancel(IdArgs),
    /// What is happening and whether it is healthy (exit 0 healthy, 1 not).
    Status(JsonArgs),
    /// Every health check with its verdict: exit 0 HEALTHY, 1 DEGRADED, 2 STALLED, 3 DOWN.
    Doctor(DoctorArgs),
    /// A systemd unit for the engine: print it, or install it.
    Service(ServiceArgs),
    /// Recorded events: recoveries, retries, failures, process starts and stops.
    Events(EventsArgs),
    /// Run the engine.
    Run(RunArgs),
    /// Delete finished items and events older than a duration.
    Prune(PruneArgs),
    /// Whole-store operations: copy a store to another database.
    Store(StoreArgs),
    /// Measure throughput and pickup latency on a scratch store.
    Bench(BenchArgs),
    /// Quality as a number: run a suite of ideas through the pipeline in a
    /// scratch project and judge each by its hidden tests (sandboxed).
    Eval(EvalArgs),
    /// Alerts: `alert test` sends a test alert to every `[[alerts]]` target.
    Alert(AlertArgs),
    /// Print shell completions.
    Completions(CompletionsArgs),
    /// The supervisor's helper: records one of its events in the store,
    /// the message on stdin.
    #[command(hide = true)]
    RecordEvent {
        #[arg(long)]
        kind: String,
    },
}

impl Command {
    pub fn is_long_running(&self) -> bool {
        matches!(self, Command::Run(_) | Command::Bench(_) | Command::Eval(_))
    }
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("endpoint").args(["provider", "local_model"]))]
pub struct InitArgs {
    /// The folder to create the project in.
    pub dir: Option<PathBuf>,
    /// Overwrite an existing ideamill.toml.
    #[arg(long)]
    pub force: bool,
    /// Stages that call this model endpoint: any OpenAI-compatible base URL
    /// (with --model). Without it (or --local-model) the stages are
    /// placeholder programs that need no model.
    #[arg(long, value_name = "URL", requires = "model")]
    pub provider: Option<String>,
    /// The model name the endpoint knows (smollm2 with --local-model).
    #[arg(long, value_name = "M", requires = "endpoint")]
    pub model: Option<String>,
    /// The environment variable holding the API key, if the endpoint needs one.
    #[arg(long, value_name = "VAR", requires = "provider")]
    pub api_key_env: Option<String>,
    /// Stages that call the local SmolLM2 server of scripts/llm-server.sh
    /// (http://127.0.0.1:8089/v1).
    #[arg(long, conflicts_with_all = ["provider", "api_key_env"])]
    pub local_model: bool,
    /// Placeholder programs instead of a model (the default; kept for scripts).
    #[arg(long, conflicts_with_all = ["provider", "model", "api_key_env", "local_model"])]
    pub no_model: bool,
    /// A coding-agent CLI does the work: outline (agent, or llm with
    /// --provider/--local-model) -> implement (agent) -> qa (sandboxed gate).
    #[arg(long, value_name = "PRESET", conflicts_with = "no_model",
          value_parser = ["claude", "codex", "aider", "gemini", "opencode"])]
    pub agent: Option<String>,
}

impl InitArgs {
    /// The endpoint and model the stages call; `None` for placeholders.
    pub fn model_endpoint(&self) -> Option<(&str, &str)> {
        const LOCAL_MODEL_URL: &str = "http://127.0.0.1:8089/v1";
        const LOCAL_MODEL: &str = "smollm2";
        match (&self.provider, self.local_model) {
            (Some(url), _) => Some((url, self.model.as_deref().unwrap_or(LOCAL_MODEL))),
            (None, true) => Some((
                LOCAL_MODEL_URL,
                self.model.as_deref().unwrap_or(LOCAL_MODEL),
            )),
            (None, false) => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Only check the config file, not the environment (programs, folders).
    #[arg(long)]
    pub no_environment: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The idea, or `-` to read ideas from stdin (one per non-empty line).
    pub text: Option<String>,
    /// A file of ideas: .txt (one per non-empty line), .json (an object, or an
    /// array of objects or strings) or .jsonl (one per line).
    #[arg(long, short, conflicts_with = "text")]
    pub file: Option<PathBuf>,
    /// Metadata for every idea added, as KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// active, queued, running, retrying, paused, done, failed or cancelled.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<StateFilter>,
    /// Items whose current (or last) stage is this one.
    #[arg(long)]
    pub stage: Option<String>,
    /// Failed items whose failure is of this class: `quality` (the work was
    /// found wanting) or `infra` (the provider or the host failed).
    #[arg(long, value_parser = parse_failure_class, value_name = "CLASS")]
    pub failed: Option<FailureClass>,
    /// At most this many items.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Items with an id below this one (the next page).
    #[arg(long)]
    pub before: Option<i64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: String,
    /// Print outputs in full instead of their first lines.
    #[arg(long)]
    pub full: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The item; without it, `--failed CLASS` runs every item failed of
    /// that class again.
    #[arg(required_unless_present = "failed")]
    pub id: Option<String>,
    /// Start again at this stage (needed for an item that is done).
    #[arg(long, requires = "id")]
    pub from: Option<String>,
    /// Only items that failed of this class: `infra` (the provider or the
    /// host failed: rate limits, 5xx, timeouts, sandbox limits, ...) or
    /// `quality`. With an ID, that item only if it did; without, every one.
    #[arg(long, value_parser = parse_failure_class, value_name = "CLASS")]
    pub failed: Option<FailureClass>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this item's events.
    #[arg(long)]
    pub item: Option<i64>,
    /// Only events of this kind (e.g. lease_expired, item_failed).
    #[arg(long)]
    pub kind: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Exit 0 once nothing is runnable or scheduled within a minute.
    #[arg(long)]
    pub until_idle: bool,
    /// Run the engine alone, without the supervisor that restarts it when it
    /// crashes or hangs (for systemd, Kubernetes, or debugging).
    #[arg(long)]
    pub no_supervisor: bool,
    /// The HTTP server (dashboard, API, /healthz, /readyz, /metrics):
    /// IP:PORT, or `off` [default: `[health] listen`, 127.0.0.1:9464]. Any
    /// address but loopback needs the access token (`[web] token_file`).
    /// `--role worker` listens only when given this flag (for its probes).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// What this process runs: `all` (engine and HTTP listener), `worker`
    /// (the engine only: for extra machines sharing a PostgreSQL store) or
    /// `web` (the HTTP listener only, no jobs).
    #[arg(long, value_enum, default_value_t = Role::All)]
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    All,
    Worker,
    Web,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub what: StoreWhat,
}

#[derive(Debug, Subcommand)]
pub enum StoreWhat {
    /// Copy every item, job, attempt, output, feedback, event and process
    /// row (ids kept) from one store to another, e.g. SQLite to PostgreSQL.
    /// Stop the engines first; the row counts are verified.
    Copy(StoreCopyArgs),
}

#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// The store to copy: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The store to fill; created and migrated when needed.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Replace what the target already holds (otherwise a target with any
    /// row is refused).
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Do not try to reach the model providers.
    #[arg(long)]
    pub no_providers: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub what: ServiceWhat,
}

#[derive(Debug, Subcommand)]
pub enum ServiceWhat {
    /// Print the unit for this project.
    Print(ServiceUnitArgs),
    /// Write the unit to /etc/systemd/system (or ~/.config/systemd/user with
    /// --user) and say how to enable it. Does not run systemctl.
    Install(ServiceInstallArgs),
}

#[derive(Debug, Args)]
pub struct ServiceUnitArgs {
    /// The unit's name, without `.service` [default: ideamill-<folder>].
    #[arg(long)]
    pub name: Option<String>,
    /// A user unit (systemctl --user) rather than a system one.
    #[arg(long)]
    pub user: bool,
}

#[derive(Debug, Args)]
pub struct ServiceInstallArgs {
    #[command(flatten)]
    pub unit: ServiceUnitArgs,
    /// Write the unit into this folder instead of systemd's.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Replace an existing unit file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete finished items and events older than this (e.g. 30d).
    #[arg(long)]
    pub older_than: String,
    /// Keep the pruned items' workspace folders (their generated files).
    #[arg(long)]
    pub keep_workspaces: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// No-op throughput through a three-stage pipeline.
    Throughput {
        #[arg(long, default_value_t = 20_000)]
        items: u32,
        /// Jobs of each stage run at once (per process).
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
        /// No-op stages each item goes through (1: one job per item, the
        /// shape of a plain job queue's benchmark).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        stages: u32,
        /// A PostgreSQL server to measure on (postgres://…): the bench makes
        /// a scratch database there and drops it after [default: a scratch
        /// SQLite store].
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// Engine processes sharing the store (above 1: child processes).
        #[arg(long, default_value_t = 1)]
        processes: u32,
    },
    /// What sending traces costs the engine: no-op throughput with
    /// `[telemetry]` off and with export to a collector that is down,
    /// alternately, on fresh scratch SQLite stores.
    Telemetry {
        #[arg(long, default_value_t = 5_000)]
        items: u32,
        /// Jobs of each stage run at once.
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
        /// Runs of each kind.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// What the sandbox adds to a command stage's start: a no-op command
    /// run through the real executor, confined and with `sandbox = "off"`,
    /// alternately; then a confined no-op pipeline's throughput.
    Sandbox {
        /// Runs of each kind.
        #[arg(long, default_value_t = 500)]
        runs: u32,
        /// Items for the throughput part (3 confined no-op stages).
        #[arg(long, default_value_t = 300)]
        items: u32,
    },
    /// Pickup latency: in-process and from another process.
    Pickup {
        #[arg(long, default_value_t = 200)]
        samples: u32,
        /// The pause before each sample, so that each measures a pickup by
        /// an idle engine (River's harness pauses 250 ms).
        #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
        gap: std::time::Duration,
        /// A PostgreSQL server to measure on, as for `throughput`.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// One engine process of `bench throughput --processes N`: no-op stages
    /// until idle; prints its attempts.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Hang detection and recovery times, and the idle cost (wake-ups, RSS)
    /// of supervisor plus engine.
    Health {
        /// How long to measure the idle engine.
        #[arg(long, default_value = "20s")]
        idle: String,
        /// Hangs to time.
        #[arg(long, default_value_t = 3)]
        hangs: u32,
    },
    /// Hours of load and injected faults on the real binary, then drained
    /// and audited: nothing lost, nothing committed twice, no undetected stall.
    Soak(crate::commands::bench_soak::SoakArgs),
    /// Page and API load times of the dashboard with a large store (a
    /// scratch SQLite store filled with a week of history).
    Web {
        /// Items in the store.
        #[arg(long, default_value_t = 100_000)]
        items: u32,
        /// Requests timed per page.
        #[arg(long, default_value_t = 20)]
        requests: u32,
    },
    /// How busy a provider is kept under a backlog when its `max_concurrency`
    /// is the only limit (a fake provider on loopback, `ideamill run`).
    Saturation(crate::commands::bench_saturation::SaturationArgs),
    /// Whether claims, finishes and reads cost the same with a million
    /// finished jobs as with a thousand (scratch stores filled by bulk SQL).
    History(crate::commands::bench_history::HistoryArgs),
    /// The other process of `bench pickup`: adds items one at a time and
    /// prints when it added each.
    #[command(hide = true)]
    Adder {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        samples: u32,
        #[arg(long, value_parser = humantime::parse_duration)]
        gap: std::time::Duration,
    },
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The suite: JSON lines of {"id", "idea", "tests"}, the tests a Python
    /// unittest file that imports from `main` (see eval/README.md).
    #[arg(long, value_name = "FILE")]
    pub suite: PathBuf,
    /// Run a variant with this config change side by side with the config
    /// as it is ("loop"), e.g. `gate.max_rounds=1` (every gate),
    /// `stages.NAME.KEY=VALUE`, `providers.main.model="m"`. VALUE is TOML.
    /// Repeatable: one variant each.
    #[arg(long, value_name = "KEY=VALUE")]
    pub compare: Vec<String>,
    /// The scratch folder, kept afterwards [default: a new one in the
    /// system's temp folder].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Only these ideas of the suite.
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Run the hidden tests without the sandbox (generated code then has
    /// your user's access).
    #[arg(long)]
    pub unconfined: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AlertArgs {
    #[command(subcommand)]
    pub what: AlertWhat,
}

#[derive(Debug, Subcommand)]
pub enum AlertWhat {
    /// Send a test alert to every target (or one) and say how each went
    /// (exit 0 when all were delivered, 2 otherwise).
    Test(AlertTestArgs),
}

#[derive(Debug, Args)]
pub struct AlertTestArgs {
    /// Only the target with this name.
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub what: ImportWhat,
}

#[derive(Debug, Subcommand)]
pub enum ImportWhat {
    /// The old system's folder: ideas_log.json, QAissue.json and
    /// implementations/*.json. Importing it again creates nothing new.
    Legacy(ImportLegacyArgs),
}

#[derive(Debug, Args)]
pub struct ImportLegacyArgs {
    /// The folder holding the old system's files.
    pub dir: PathBuf,
    /// Show what would be imported, and what could not be mapped; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// `json`: one array; `jsonl`: one item per line.
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    pub format: ExportFormat,
    /// Only items in this state: active, queued, running, retrying, paused,
    /// done, failed or cancelled.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<StateFilter>,
    /// Only items changed at or after T: a duration ago (`7d`) or a date or
    /// time (`2024-01-14`, `2024-01-14T10:00:00Z`).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Write to FILE (whole or not at all) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Json,
    Jsonl,
}

/// `--state`: one of [`StateFilter::ALL`].
fn parse_failure_class(s: &str) -> Result<FailureClass, String> {
    FailureClass::parse(s)
        .ok_or_else(|| format!("unknown failure class `{s}`; classes: quality, infra"))
}

fn parse_state(s: &str) -> Result<StateFilter, String> {
    StateFilter::parse(s).ok_or_else(|| {
        format!(
            "unknown state `{s}`; states: {}",
            StateFilter::ALL.join(", ")
        )
    })
}
