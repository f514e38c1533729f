//! `ideamill status`: the verdict first, then counts per stage, running
//! jobs and engine processes. Exit 0 when healthy, 1 when not. The verdict
//! is `doctor`'s (`ideamill_health::verdict`), from its cheap checks.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ideamill_health::verdict::{self, Level};
use ideamill_sys::clock::now_millis;
use ideamill_web::api::wire::Status;

use crate::cli::JsonArgs;
use crate::output::{self, Table};
use crate::{exit, project};

pub async fn run(config: Option<&Path>, args: JsonArgs) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let now = now_millis();
    let snapshot = store.status(now).await?;
    // The cheap checks of `doctor` (not the store's consistency check, not
    // the providers), judged by the same rules.
    let mut facts = super::doctor::gather(&config, &*store, now).await;
    facts.snapshot = Some(snapshot.clone());
    store.close().await;
    let verdict = verdict::judge(&config, &facts);
    let code = if verdict.verdict == Level::Healthy {
        exit::OK
    } else {
        exit::NEGATIVE
    };
    if args.json {
        output::json(&Status::new(verdict, Some(snapshot)))?;
        return Ok(ExitCode::from(code));
    }
    let mut out = std::io::stdout().lock();
    let c = &snapshot.items;
    writeln!(
        out,
        "{}  items: {} active, {} done, {} failed, {} cancelled",
        verdict.verdict, c.active, c.done, c.failed, c.cancelled
    )?;
    for r in &verdict.reasons {
        writeln!(out, "  - {}", r.message)?;
    }
    if snapshot.paused > 0 {
        writeln!(
            out,
            "  {} item(s) paused by a budget: `ideamill list --state paused` shows why; raise the cap or `retry`",
            snapshot.paused
        )?;
    }
    if snapshot.today.tokens() > 0 {
        writeln!(
            out,
            "  model usage today (UTC): {} tokens ({} in, {} out), ${:.4}",
            snapshot.today.tokens(),
            snapshot.today.prompt_tokens,
            snapshot.today.completion_tokens,
            snapshot.today.cost
        )?;
    }
    writeln!(out)?;
    let mut table = Table::new(&["STAGE", "QUEUED", "SCHEDULED", "RUNNING", "CONCURRENCY"]);
    for stage in &config.stages {
        let counts = snapshot.stages.iter().find(|s| s.stage == stage.name);
        table.row(vec![
            stage.name.clone(),
            counts.map_or(0, |c| c.queued).to_string(),
            counts.map_or(0, |c| c.scheduled).to_string(),
            counts.map_or(0, |c| c.running).to_string(),
            stage.concurrency.to_string(),
        ]);
    }
    for other in snapshot
        .stages
        .iter()
        .filter(|s| config.stage(&s.stage).is_none())
    {
        table.row(vec![
            format!("{} (not in config)", other.stage),
            other.queued.to_string(),
            other.scheduled.to_string(),
            other.running.to_string(),
            "-".into(),
        ]);
    }
    table.print(&mut out)?;
    if !snapshot.running.is_empty() {
        writeln!(out, "\nRunning:")?;
        let mut table = Table::new(&[
            "JOB", "ITEM", "STAGE", "ROUND", "TRY", "ELAPSED", "LEASE", "PROCESS",
        ]);
        for j in &snapshot.running {
            table.row(vec![
                j.job_id.to_string(),
                j.item_id.to_string(),
                j.stage.clone(),
                j.round.to_string(),
                j.attempt.to_string(),
                output::elapsed(j.started_at, now),
                if j.lease_expires_at < now {
                    "EXPIRED".into()
                } else {
                    format!("{} left", output::elapsed(now, j.lease_expires_at))
                },
                j.owner.clone(),
            ]);
        }
        table.print(&mut out)?;
    }
    writeln!(out, "\nEngine processes:")?;
    if snapshot.processes.is_empty() {
        writeln!(out, "  none running")?;
    } else {
        let mut table = Table::new(&["PROCESS", "HOST", "PID", "UP", "LAST BEAT", "JOBS"]);
        for p in &snapshot.processes {
            table.row(vec![
                p.id.clone(),
                p.host.clone(),
                p.pid.to_string(),
                output::elapsed(p.started_at, now),
                output::ago(p.last_beat_at, now),
                p.held_jobs.to_string(),
            ]);
        }
        table.print(&mut out)?;
    }
    Ok(ExitCode::from(code))
}
