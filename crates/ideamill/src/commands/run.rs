//! `ideamill run`: the engine, until SIGINT/SIGTERM (or, with `--until-idle`,
//! until there is nothing left to do).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use ideamill_core::ItemState;
use ideamill_engine::CancellationToken;
use ideamill_engine::executor::executors_for;
use ideamill_engine::{Engine, EngineOptions, Progress, now_millis};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use crate::cli::RunArgs;
use crate::output;
use crate::project;

pub async fn run(config: Option<&Path>, args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(project::load_config(config)?);
    let store = project::open_store(&config).await?;
    std::fs::create_dir_all(&config.engine.workspace).ok();

    let (progress_tx, progress_rx) = mpsc::unbounded_channel();
    let options = EngineOptions {
        until_idle: args.until_idle,
        progress: Some(progress_tx),
        ..EngineOptions::default()
    };
    let engine = Engine::new(
        config.clone(),
        store.clone(),
        executors_for(&config),
        options,
    );
    tracing::info!(
        "Engine {} started: {} stage(s), store {}",
        engine.process_id(),
        config.stages.len(),
        ideamill_store::redact_url(&config.store.url)
    );

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
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
    let _ = reporter.await;
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
        println!("{line}");
    } else {
        tracing::info!("{line}");
    }
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
                        eprintln!(
                            "item {} · {} · round {} try {} · {outcome} in {took}{state}",
                            job.item_id, job.stage, job.round, job.attempt
                        );
                    }
                }
            }
            Progress::Recovered { message } => match &bar {
                Some(b) => b.println(message),
                None => eprintln!("{message}"),
            },
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
