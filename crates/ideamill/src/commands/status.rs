//! `ideamill status`: the verdict first, then counts per stage, running
//! jobs and engine processes. Exit 0 when healthy, 1 when not.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ideamill_core::{Config, Millis};
use ideamill_engine::now_millis;
use ideamill_store::StatusSnapshot;
use serde::Serialize;

use crate::cli::JsonArgs;
use crate::output::{self, Table};
use crate::{exit, project};

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub verdict: &'static str,
    pub reasons: Vec<String>,
}

/// Judge a snapshot. Pure, so that every rule is testable.
pub fn judge(s: &StatusSnapshot, config: &Config, now: Millis) -> Verdict {
    let stale_after = (config.engine.heartbeat.as_millis() as Millis * 3).max(10_000);
    let live = s
        .processes
        .iter()
        .filter(|p| now - p.last_beat_at <= stale_after)
        .count();
    let stale = s.processes.len() - live;
    let runnable: u64 = s.stages.iter().map(|c| c.queued).sum();
    let mut reasons = Vec::new();
    let mut verdict = "HEALTHY";
    if live == 0 && (runnable > 0 || s.expired_leases > 0) {
        verdict = "DOWN";
        reasons.push(format!(
            "{runnable} job(s) are waiting and no engine is running: start `ideamill run`"
        ));
    }
    if s.expired_leases > 0 {
        if verdict == "HEALTHY" {
            verdict = "DEGRADED";
        }
        reasons.push(format!(
            "{} running job(s) hold expired leases: their process stopped renewing them; a running engine will run them again",
            s.expired_leases
        ));
    }
    if stale > 0 {
        if verdict == "HEALTHY" {
            verdict = "DEGRADED";
        }
        reasons.push(format!(
            "{stale} engine process(es) have not beaten for over {}: hung, killed or cut off",
            output::elapsed(0, stale_after)
        ));
    }
    Verdict { verdict, reasons }
}

pub async fn run(config: Option<&Path>, args: JsonArgs) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let now = now_millis();
    let snapshot = store.status(now).await?;
    store.close().await;
    let verdict = judge(&snapshot, &config, now);
    let code = if verdict.verdict == "HEALTHY" {
        exit::OK
    } else {
        exit::NEGATIVE
    };
    if args.json {
        output::json(&serde_json::json!({ "health": verdict, "status": snapshot }))?;
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
        writeln!(out, "  - {r}")?;
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
