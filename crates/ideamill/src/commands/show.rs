//! `ideamill show ID`: one item's whole story.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ideamill_core::JobState;
use ideamill_stages::executor::{item_workspace, workspace_files};
use ideamill_sys::clock::now_millis;
use ideamill_web::api::wire::ItemView;

use crate::cli::ShowArgs;
use crate::output::{self, Table};
use crate::project;

pub async fn run(config: Option<&Path>, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let id = project::parse_id(&args.id)?;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let d = store.item(id).await?;
    store.close().await;
    let workspace = item_workspace(&config.engine.workspace, id);
    let files = workspace_files(&workspace, 200);
    if args.json {
        // Files by path only, where the API gives their sizes too.
        let mut view = ItemView::new(d, workspace, files);
        view.trace_url = view
            .item
            .trace_id
            .as_deref()
            .and_then(|t| config.telemetry.trace_link(t));
        output::json(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_millis();
    let mut out = std::io::stdout().lock();
    let item = &d.item;
    writeln!(
        out,
        "Item {}: {}",
        item.id,
        output::state_with_class(&d.display_state, item.failure_class)
    )?;
    writeln!(out, "  idea:     {}", output::first_line(&item.text, 100))?;
    if item.metadata.as_object().is_some_and(|m| !m.is_empty()) {
        writeln!(out, "  metadata: {}", item.metadata)?;
    }
    writeln!(
        out,
        "  stage:    {} (round {})",
        item.stage.as_deref().unwrap_or("-"),
        item.round
    )?;
    writeln!(
        out,
        "  created:  {} ({})",
        output::timestamp(item.created_at),
        output::ago(item.created_at, now)
    )?;
    if let Some(f) = item.finished_at {
        writeln!(
            out,
            "  finished: {} (took {})",
            output::timestamp(f),
            output::elapsed(item.created_at, f)
        )?;
    }
    if let Some(e) = &item.last_error {
        writeln!(out, "  error:    {e}")?;
    }
    if let Some(class) = item.failure_class {
        writeln!(out, "  failure:  {}", output::failure_meaning(class))?;
    }
    writeln!(out, "  workspace: {}", workspace.display())?;
    if let Some(trace) = &item.trace_id {
        match config.telemetry.trace_link(trace) {
            Some(link) => writeln!(out, "  trace:    {trace} ({link})")?,
            None => writeln!(out, "  trace:    {trace}")?,
        }
    }
    if d.usage.tokens() > 0 {
        writeln!(
            out,
            "  usage:    {} tokens ({} in, {} out), ${:.4}",
            d.usage.tokens(),
            d.usage.prompt_tokens,
            d.usage.completion_tokens,
            d.usage.cost
        )?;
    }

    writeln!(out, "\nAttempts:")?;
    let mut table = Table::new(&[
        "JOB", "STAGE", "ROUND", "TRY", "OUTCOME", "TOOK", "WHEN", "TOKENS", "NOTE",
    ]);
    for a in &d.attempts {
        table.row(vec![
            a.job_id.to_string(),
            a.stage.clone(),
            a.round.to_string(),
            a.attempt.to_string(),
            a.outcome.to_string(),
            output::elapsed(a.started_at, a.finished_at),
            output::ago(a.finished_at, now),
            a.usage.as_ref().map_or_else(
                || "-".into(),
                |u| match u.known() {
                    Some((prompt, completion, _)) => {
                        let counted = if u.counted { "~" } else { "" };
                        format!("{counted}{prompt}/{completion}")
                    }
                    // Never 0: the stage reported nothing.
                    None => "unknown".into(),
                },
            ),
            a.error
                .as_deref()
                .map(|e| output::first_line(e, 80))
                .unwrap_or_default(),
        ]);
    }
    for j in d.jobs.iter().filter(|j| {
        matches!(
            j.state,
            JobState::Queued | JobState::Running | JobState::Paused
        )
    }) {
        let when = match j.state.as_str() {
            "queued" if j.run_at > now => format!("runs {}", output::ago(j.run_at, now)),
            "running" => format!("held by {}", j.lease_owner.as_deref().unwrap_or("?")),
            _ => String::new(),
        };
        table.row(vec![
            j.id.to_string(),
            j.stage.clone(),
            j.round.to_string(),
            (j.attempts + u32::from(j.state == JobState::Queued)).to_string(),
            j.state.to_string(),
            "-".into(),
            when,
            "-".into(),
            if j.state == JobState::Paused {
                d.item.last_error.clone().unwrap_or_default()
            } else {
                String::new()
            },
        ]);
    }
    if table.is_empty() {
        writeln!(out, "  (none yet)")?;
    } else {
        table.print(&mut out)?;
    }

    if !d.outputs.is_empty() {
        writeln!(out, "\nOutputs:")?;
        for o in &d.outputs {
            writeln!(
                out,
                "--- {} (round {}, job {}) ---",
                o.stage, o.round, o.job_id
            )?;
            write_body(&mut out, &o.output, args.full)?;
        }
    }
    if !d.feedback.is_empty() {
        writeln!(out, "\nQA feedback:")?;
        for f in &d.feedback {
            writeln!(out, "--- {} rejected round {} ---", f.stage, f.round)?;
            write_body(&mut out, &f.feedback, args.full)?;
        }
    }
    let failures: Vec<_> = d
        .attempts
        .iter()
        .filter(|a| a.stderr.is_some() && a.outcome.as_str() != "succeeded")
        .collect();
    if let Some(a) = failures.last() {
        writeln!(
            out,
            "\nLast error output (job {}, try {}):",
            a.job_id, a.attempt
        )?;
        write_body(&mut out, a.stderr.as_deref().unwrap_or(""), args.full)?;
    }
    if !files.is_empty() {
        writeln!(out, "\nFiles:")?;
        for f in &files {
            writeln!(out, "  {f}")?;
        }
    }
    if !d.events.is_empty() {
        writeln!(out, "\nEvents:")?;
        for e in &d.events {
            writeln!(
                out,
                "  {}  {}  {}",
                output::ago(e.at, now),
                e.kind,
                e.message
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

const PREVIEW_LINES: usize = 20;

fn write_body(out: &mut impl Write, body: &str, full: bool) -> std::io::Result<()> {
    let lines: Vec<&str> = body.trim_end().lines().collect();
    let shown = if full {
        lines.len()
    } else {
        lines.len().min(PREVIEW_LINES)
    };
    for line in &lines[..shown] {
        writeln!(out, "  {line}")?;
    }
    if shown < lines.len() {
        writeln!(
            out,
            "  … {} more lines (--full shows them)",
            lines.len() - shown
        )?;
    }
    if lines.is_empty() {
        writeln!(out, "  (empty)")?;
    }
    Ok(())
}
