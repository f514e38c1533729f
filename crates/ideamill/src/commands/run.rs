//! `ideamill run`: the engine, until SIGINT/SIGTERM (or, with `--until-idle`,
//! until there is nothing left to do). By default under the supervisor
//! (`supervisor.rs`), which runs this same command with `--no-supervisor` as
//! its child.
//!
//! The engine's event loop is a single-threaded runtime: stage programs run
//! as child processes, SQLite on its own connection threads and file writes
//! on the blocking pool, so one thread is plenty, and then a beat of the loop
//! proves that nothing in it is blocked. The watchdog thread watches those
//! beats from outside.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ideamill_core::{Config, ItemState};
use ideamill_engine::CancellationToken;
use ideamill_engine::health::{pulse, systemd, watchdog};
use ideamill_engine::{Engine, EngineOptions, Progress};
use ideamill_health::{self as health, Health};
use ideamill_stages::executor::executors_for;
use ideamill_sys::clock::now_millis;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use super::scheduling;
use crate::cli::{Role, RunArgs};
use crate::output;
use crate::project;

/// The supervisor, or (with `--no-supervisor`, or as the supervisor's
/// child) the engine itself.
pub fn main(config: Option<&Path>, args: RunArgs) -> anyhow::Result<ExitCode> {
    if !args.no_supervisor && std::env::var_os(health::ENV_SUPERVISOR).is_none() {
        return crate::supervisor::run(config);
    }
    let config = Arc::new(project::load_config(config)?);
    scheduling::batch();
    let health = Arc::new(
        Health::new(&config, health::logring::global())
            .with_resource_trouble(ideamill_stages::resources::resource_trouble),
    );
    let (counted, parked) = (health.clone(), health.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || pulse::note_park(&parked))
        .on_thread_unpark(move || pulse::count_wakeup(&counted))
        .build()?;
    watchdog::spawn(
        health.clone(),
        Some(runtime.handle().clone()),
        watchdog::exit_on_stall(),
    )?;
    runtime.block_on(run(config, args, health))
}

async fn run(config: Arc<Config>, args: RunArgs, health: Arc<Health>) -> anyhow::Result<ExitCode> {
    // The pulse starts first, so that the watchdog guards the start too.
    health::status_file::remove_dead(&config.engine.data_dir);
    let pulse_stop = CancellationToken::new();
    let pulse = tokio::spawn(pulse::run(
        health.clone(),
        systemd::Notifier::from_env(),
        pulse_stop.clone(),
    ));
    pulse::spawn_test_hooks(&health);
    let store = open_store_waiting(&config).await?;
    let listen = match args.listen.as_deref() {
        // A worker leaves HTTP to the `web` (or `all`) processes unless told
        // to listen: Kubernetes probes each worker's /healthz and /readyz.
        None if args.role == Role::Worker => None,
        Some(text) => ideamill_core::config::parse_listen(text)
            .map_err(|why| anyhow::anyhow!("--listen {why}"))?,
        None => config.health.listen,
    };
    if args.role == Role::Web {
        anyhow::ensure!(
            !args.until_idle,
            "--until-idle waits for the engine, which --role web does not run"
        );
        anyhow::ensure!(
            listen.is_some(),
            "--role web runs only the HTTP listener, and it is off: give --listen IP:PORT"
        );
    }
    // The dashboard, the API and the probes: one server, loopback unless
    // told otherwise, and then only with the access token.
    if let Some(addr) = listen {
        let access = ideamill_web::Access::for_listen(&config, &addr)
            .map_err(|e| project::config_problem(&config, e))?;
        let (config, store, health) = (config.clone(), store.clone(), health.clone());
        let state = if args.role == Role::Web {
            ideamill_web::AppState::without_engine(config, store, health, access)
        } else {
            ideamill_web::AppState::new(config, store, health, access)
        };
        ideamill_web::start(addr, state).await;
    }
    // Alerts go out from the processes that serve HTTP (`all`, `web`), so
    // that extra `--role worker` machines do not repeat them.
    let alerts_stop = CancellationToken::new();
    if args.role != Role::Worker && !config.alerts.is_empty() {
        let alerts = ideamill_alerts::Alerts::new(config.clone(), store.clone())
            .map_err(|e| project::config_problem(&config, e))?;
        tokio::spawn(alerts.monitor(
            ideamill_alerts::MonitorOptions::for_config(&config),
            alerts_stop.clone(),
        ));
    }
    if args.role == Role::Web {
        return serve_only(store, &health, pulse_stop, pulse).await;
    }
    std::fs::create_dir_all(&config.engine.workspace).ok();
    // A child subreaper: a job's orphaned descendants land on this process,
    // which kills what a job leaves behind and reaps every zombie.
    if let Err(e) = ideamill_stages::orphans::start_reaper() {
        tracing::warn!(error = %e, "DEGRADED: cannot become a child subreaper; a job's orphans go to init");
    }

    let telemetry = Arc::new(
        ideamill_telemetry::Telemetry::start(&config.telemetry)
            .map_err(|e| project::config_problem(&config, e))?,
    );
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        tracing::info!(
            "Sending traces to {}/v1/traces (OTLP/HTTP)",
            ideamill_core::config::redact_url_secret(endpoint)
        );
    }
    let (progress_tx, progress_rx) = mpsc::unbounded_channel();
    let options = EngineOptions {
        until_idle: args.until_idle,
        progress: Some(progress_tx),
        health: Some(health.clone()),
        telemetry: Some(telemetry.clone()),
        ..EngineOptions::default()
    };
    let executors = executors_for(&config, &store)
        .await
        .map_err(|e| project::config_problem(&config, e))?;
    let engine = Engine::new(config.clone(), store.clone(), executors, options);
    tracing::info!(
        "Engine {} started: {} stage(s), store {}",
        engine.process_id(),
        config.stages.len(),
        ideamill_store::redact_url(&config.store.url)
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    // The inbox watcher: a task of this loop that shares no lock with the
    // engine (ideamill-intake's `watch.rs` says why that matters).
    let mut inbox = ideamill_intake::spawn_inbox(&config, &store);
    if args.until_idle {
        inbox.first_pass().await;
    }
    let active = store
        .status(now_millis())
        .await
        .map(|s| s.items.active)
        .unwrap_or(0);
    let reporter = tokio::spawn(report(
        progress_rx,
        args.until_idle && std::io::stderr().is_terminal(),
        active,
    ));
    let summary = engine.run(shutdown).await;
    // The engine holds the other handle; it is gone once `run` returns.
    if let Some(telemetry) = Arc::into_inner(telemetry) {
        telemetry.shutdown(Duration::from_secs(5)).await;
    }
    inbox.stop().await;
    let _ = reporter.await;
    alerts_stop.cancel();
    pulse_stop.cancel();
    let _ = pulse.await;
    store.close().await;
    let summary = summary?;
    let line = format!(
        "Engine stopped: {} attempt(s), {} item(s) done, {} failed{}.",
        summary.attempts,
        summary.items_done,
        summary.items_failed,
        if summary.released > 0 {
            format!(", {} job(s) given back", summary.released)
        } else {
            String::new()
        }
    );
    if args.until_idle {
        let _ = writeln!(std::io::stdout(), "{line}");
    } else {
        tracing::info!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `--role web`: the HTTP listener alone, until SIGINT/SIGTERM. It claims
/// no jobs; engines elsewhere (`--role worker`) share the store.
async fn serve_only(
    store: Arc<dyn ideamill_store::Store>,
    health: &Health,
    pulse_stop: CancellationToken,
    pulse: tokio::task::JoinHandle<()>,
) -> anyhow::Result<ExitCode> {
    let bound = health
        .listen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(addr) = bound else {
        pulse_stop.cancel();
        store.close().await;
        anyhow::bail!(
            "--role web runs only the HTTP listener, and it could not listen (see above)"
        );
    };
    tracing::info!("Serving HTTP on {addr} only (--role web): this process runs no jobs");
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    shutdown.cancelled().await;
    pulse_stop.cancel();
    let _ = pulse.await;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// First SIGINT/SIGTERM: stop gracefully. A second one: exit now (leases
/// then expire and other processes take the jobs).
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot listen for signals; stop the engine with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("Stopping: finishing running jobs (signal again to stop at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("Stopping at once; unfinished jobs run again when their leases expire");
    std::process::exit(130);
}

/// A progress bar on a terminal; one plain line per finished attempt otherwise.
async fn report(mut rx: mpsc::UnboundedReceiver<Progress>, bar: bool, active: u64) {
    let bar = bar.then(|| {
        let b = ProgressBar::new(active);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} items  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    while let Some(p) = rx.recv().await {
        match p {
            Progress::Claimed { job, .. } => {
                if let Some(b) = &bar {
                    b.set_message(format!("item {} → {}", job.item_id, job.stage));
                }
            }
            Progress::Finished {
                job,
                outcome,
                effect,
                elapsed,
            } => {
                let finished_item = matches!(
                    &effect,
                    Ok(e) if matches!(e.item_state, ItemState::Done | ItemState::Failed | ItemState::Cancelled)
                );
                match &bar {
                    Some(b) => {
                        if finished_item {
                            b.inc(1);
                        }
                    }
                    None => {
                        let state = match &effect {
                            Ok(e) if e.item_state != ItemState::Active => {
                                format!(" → item {}", e.item_state)
                            }
                            Ok(_) => String::new(),
                            Err(e) => format!(" (not recorded: {e})"),
                        };
                        let took = output::elapsed(0, elapsed.as_millis() as i64);
                        if crate::json_logs() {
                            tracing::info!(
                                item = job.item_id,
                                job = job.id,
                                stage = %job.stage,
                                round = job.round,
                                attempt = job.attempt,
                                outcome = %outcome,
                                elapsed_ms = elapsed.as_millis() as u64,
                                "Item {} · {} · round {} try {} · {outcome} in {took}{state}",
                                job.item_id,
                                job.stage,
                                job.round,
                                job.attempt
                            );
                            continue;
                        }
                        // Never a panic on a full disk or a closed pipe.
                        let _ = writeln!(
                            std::io::stderr(),
                            "item {} · {} · round {} try {} · {outcome} in {took}{state}",
                            job.item_id,
                            job.stage,
                            job.round,
                            job.attempt
                        );
                    }
                }
            }
            Progress::Recovered { message } => match &bar {
                Some(b) => b.println(message),
                // Logged by the engine already.
                None if crate::json_logs() => {}
                None => {
                    let _ = writeln!(std::io::stderr(), "{message}");
                }
            },
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// Open the store, waiting (DEGRADED, with backoff) while it is unavailable:
/// a database server not up yet, a full disk. Anything else (a newer
/// schema, a refused login) ends the run at once: waiting would not fix it.
async fn open_store_waiting(config: &Config) -> anyhow::Result<Arc<dyn ideamill_store::Store>> {
    let mut delay = Duration::from_millis(500);
    let mut first_failure: Option<(std::time::Instant, i64, String)> = None;
    loop {
        match project::open_store(config).await {
            Ok(store) => {
                if let Some((since, at, error)) = first_failure {
                    // A recovery, recorded like any other.
                    let waited = since.elapsed().as_secs_f64();
                    tracing::info!("The store opened after {waited:.1} s; starting");
                    let event = ideamill_store::NewEvent {
                        at: now_millis(),
                        kind: ideamill_store::event_kind::STORE_OUTAGE,
                        item_id: None,
                        job_id: None,
                        process: None,
                        message: format!(
                            "Engine pid {} could not open the store for {waited:.1} s from {} (first error: {error}); it opened it and started",
                            std::process::id(),
                            output::timestamp(at)
                        ),
                    };
                    if let Err(e) = store.record_event(&event).await {
                        tracing::warn!("Could not record the store outage: {e}");
                    }
                }
                return Ok(store);
            }
            Err(e) => match e.downcast_ref::<ideamill_store::StoreError>() {
                Some(ideamill_store::StoreError::Unavailable(_)) => {
                    first_failure.get_or_insert_with(|| {
                        (std::time::Instant::now(), now_millis(), format!("{e:#}"))
                    });
                    tracing::error!("DEGRADED: {e:#}; retrying in {:.1} s", delay.as_secs_f64());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                _ => return Err(e),
            },
        }
    }
}
