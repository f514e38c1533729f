//! Command-line arguments. Help text lives next to each flag.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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

    #[command(subcommand)]
    pub command: Command,
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
    /// Measure throughput and pickup latency on a scratch store.
    Bench(BenchArgs),
    /// Print shell completions.
    Completions(CompletionsArgs),
}

impl Command {
    pub fn is_long_running(&self) -> bool {
        matches!(self, Command::Run(_) | Command::Bench(_))
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder to create the project in.
    pub dir: Option<PathBuf>,
    /// Overwrite an existing ideamill.toml.
    #[arg(long)]
    pub force: bool,
    /// The model endpoint: any OpenAI-compatible base URL
    /// [default: the local model server of scripts/llm-server.sh].
    #[arg(long, value_name = "URL")]
    pub provider: Option<String>,
    /// The model name the endpoint knows [default: smollm2].
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// The environment variable holding the API key, if the endpoint needs one.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// A pipeline of placeholder programs that needs no model at all.
    #[arg(long, conflicts_with_all = ["provider", "model", "api_key_env"])]
    pub no_model: bool,
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
    /// active, queued, running, retrying, done, failed or cancelled.
    #[arg(long)]
    pub state: Option<String>,
    /// Items whose current (or last) stage is this one.
    #[arg(long)]
    pub stage: Option<String>,
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
    pub id: String,
    /// Start again at this stage (needed for an item that is done).
    #[arg(long)]
    pub from: Option<String>,
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
    /// The HTTP listener for /healthz, /readyz and /metrics: IP:PORT, or
    /// `off` [default: `[health] listen`, 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
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
        /// Jobs of each stage run at once.
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
    },
    /// Pickup latency: in-process and from another process.
    Pickup {
        #[arg(long, default_value_t = 200)]
        samples: u32,
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
    /// The other process of `bench pickup`: adds items one at a time and
    /// prints when it added each.
    #[command(hide = true)]
    Adder {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        samples: u32,
    },
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}
