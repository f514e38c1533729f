//! The `ideamill` binary: parses arguments, sets up logging, runs one
//! subcommand, and maps its result to a documented exit code.

mod cli;
mod commands;
mod output;
mod project;
mod supervisor;
#[cfg(test)]
mod tidy;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Exit codes, documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A negative answer: unhealthy, or work left undone.
    pub const NEGATIVE: u8 = 1;
    /// An error: bad input, missing item, unreachable store.
    pub const ERROR: u8 = 2;
    /// A config error (sysexits EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// The engine's watchdog found its event loop stalled, saved evidence and
    /// ended the engine (EX_SOFTWARE). The supervisor restarts it.
    #[allow(dead_code)]
    pub const STALLED: u8 = ideamill_health::STALL_EXIT_CODE as u8;
    /// The supervisor gave up: too many restarts in too short a time
    /// (EX_UNAVAILABLE).
    pub const GAVE_UP: u8 = 69;
}

/// The soft limit of open files up to the hard one: a mill holds a store,
/// connections and each stage's pipes, and 1024 (a common default) is few.
/// Stages get their own limits from the sandbox.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// glibc's malloc, left to itself, keeps what a burst of large buffers
/// freed (a 4 MiB API body, a huge inbox file, a big result set): after the
/// first such buffer is freed it raises its mmap threshold to that size, so
/// later ones come from a heap that trims rarely, and each thread that
/// allocates may get an arena of its own that holds on to its share. A
/// mill runs for months; bench soak measured its engine's RSS climbing by
/// megabytes an hour this way, in steps at each burst. So: buffers from
/// 128 KiB up are mapped on their own and unmapped when freed, and the
/// process has two arenas. A user's own `MALLOC_*` or `GLIBC_TUNABLES`
/// settings win. Called before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_the_heap_small() {
    let tuned = std::env::vars_os().any(|(name, _)| {
        let name = name.to_string_lossy();
        name.starts_with("MALLOC_") || name == "GLIBC_TUNABLES"
    });
    if tuned {
        return;
    }
    // SAFETY: mallopt only sets malloc's parameters; no thread is running yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_the_heap_small() {}

fn main() -> ExitCode {
    keep_the_heap_small();
    let cli = cli::Cli::parse();
    init_tracing(&cli);
    raise_open_file_limit();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`ideamill list | head`) is not an error.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::from(exit::OK);
            }
            let code = if err
                .chain()
                .any(|e| e.downcast_ref::<ideamill_core::ConfigErrors>().is_some())
                || err.downcast_ref::<project::ConfigMissing>().is_some()
            {
                exit::CONFIG
            } else {
                exit::ERROR
            };
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::from(code)
        }
    }
}

/// Set once at start: log lines are JSON objects (`--log-format json`), so
/// what a command would write to stderr as plain text goes through
/// `tracing` instead.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether log lines are JSON (see [`JSON_LOGS`]).
pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

fn init_tracing(cli: &cli::Cli) {
    JSON_LOGS.store(
        cli.log_format == cli::LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    use tracing_subscriber::EnvFilter;
    let default = match (cli.verbose, cli.command.is_long_running()) {
        (0, true) => "info",
        (0, false) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("IDEAMILL_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},sqlx=warn")));
    let ansi = cli.color.enabled_for_stderr();
    use tracing_subscriber::prelude::*;
    // One of the two formats is `None`: an `Option` of a layer is a layer
    // that does nothing, so the registry's type stays one.
    let (human, json) = match cli.log_format {
        cli::LogFormat::Human => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_target(false),
            ),
            None,
        ),
        cli::LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    // The event's message and fields at the top level, and
                    // the innermost span (a job's: item, job, trace and span
                    // ids) as `span`: what Loki and Elasticsearch index.
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(human)
        .with(json)
        // The last lines stay in memory for the watchdog's evidence bundle.
        .with(ideamill_health::logring::global().layer())
        .init();
}
