//! `ideamill export [--format json|jsonl] [--state S] [--since T] [-o FILE]`:
//! items with their stage outputs, QA feedback rounds, attempts, tokens and
//! cost, and the paths of their generated files.
//!
//! Streamed: items are read a page at a time (newest first, by `before_id`)
//! and written as they come, so a million items never sit in memory. A file
//! given with `-o` is written whole or not at all (temp, fsync, rename).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};
use ideamill_core::Millis;
use ideamill_core::duration::parse_duration;
use ideamill_stages::executor::{item_workspace, workspace_files};
use ideamill_store::{AttemptRow, ItemDetail, ItemFilter, StoreError};
use ideamill_web::api::wire::{Feedback, Item, Output, Usage, UsageTotals, convert};
use serde::Serialize;

use crate::cli::{ExportArgs, ExportFormat};
use crate::project;

/// Items read per page.
const PAGE: u32 = 200;
/// Generated files listed per item, at most.
const MAX_FILES: usize = 10_000;

pub async fn run(config: Option<&Path>, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let state = args.state;
    let since = args
        .since
        .as_deref()
        .map(|t| parse_since(t, SystemTime::now()).with_context(|| format!("--since `{t}`")))
        .transpose()?;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;

    let (sink, temp): (Box<dyn Write>, Option<(tempfile::NamedTempFile, PathBuf)>) =
        match &args.output {
            Some(path) => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let tmp = tempfile::NamedTempFile::new_in(&dir)
                    .with_context(|| format!("cannot write in {}", dir.display()))?;
                let file = tmp.reopen().context("cannot open the temporary file")?;
                (Box::new(file), Some((tmp, path.clone())))
            }
            None => (Box::new(std::io::stdout().lock()), None),
        };
    let mut out = BufWriter::new(sink);
    let json = args.format == ExportFormat::Json;
    if json {
        out.write_all(b"[")?;
    }
    let mut written = 0u64;
    let mut before = None;
    loop {
        let page = store
            .list_items(&ItemFilter {
                state,
                stage: None,
                failure: None,
                before_id: before,
                limit: PAGE,
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        for summary in &page {
            if since.is_some_and(|t| summary.updated_at < t) {
                continue;
            }
            let detail = match store.item(summary.id).await {
                Ok(d) => d,
                // Pruned between the page and now.
                Err(StoreError::NoSuchItem(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let record = exported(detail, &config.engine.workspace);
            if json {
                out.write_all(if written == 0 { b"\n" } else { b",\n" })?;
            }
            serde_json::to_writer(&mut out, &record)?;
            if !json {
                out.write_all(b"\n")?;
            }
            written += 1;
        }
    }
    if json {
        out.write_all(if written == 0 { b"]\n" } else { b"\n]\n" })?;
    }
    out.flush()?;
    drop(out);
    store.close().await;
    if let Some((tmp, path)) = temp {
        tmp.as_file().sync_all().context("cannot sync the export")?;
        tmp.persist(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // The rename survives a crash only once its folder is synced.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        ideamill_sys::fs::sync_dir(dir)
            .with_context(|| format!("cannot sync {}", dir.display()))?;
        eprintln!("Exported {written} item(s) to {}.", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: a duration ago (`7d`), or a date or time in UTC
/// (`2024-01-14`, `2024-01-14T10:00:00Z`).
fn parse_since(t: &str, now: SystemTime) -> anyhow::Result<Millis> {
    let t = t.trim();
    if let Ok(ago) = parse_duration(t) {
        let at = now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH);
        return Ok(millis(at));
    }
    let full = if t.len() == 10 {
        format!("{t}T00:00:00Z")
    } else {
        t.to_string()
    };
    match humantime::parse_rfc3339_weak(full.trim_end_matches(['Z', 'z'])) {
        Ok(at) => Ok(millis(at)),
        Err(_) => {
            bail!("expected a duration like `7d` or a date or time like `2024-01-14T10:00:00Z`")
        }
    }
}

fn millis(t: SystemTime) -> Millis {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// One exported item: the API's shapes (`ideamill_web::api::wire`), but
/// attempts without their output. Field names are part of the interface.
#[derive(Serialize)]
struct Exported {
    #[serde(flatten)]
    item: Item,
    display_state: String,
    /// Every stage output, oldest first (one per passed job).
    outputs: Vec<Output>,
    /// Every QA rejection, oldest first.
    feedback: Vec<Feedback>,
    attempts: Vec<ExportedAttempt>,
    /// Tokens and cost of every attempt.
    usage: UsageTotals,
    /// The item's workspace, when it has one.
    workspace: Option<PathBuf>,
    /// Files in the workspace, relative to it.
    files: Vec<String>,
}

/// An attempt without its (possibly large) stdout and stderr.
#[derive(Serialize)]
struct ExportedAttempt {
    stage: String,
    round: u32,
    attempt: u32,
    outcome: &'static str,
    started_at: Millis,
    finished_at: Millis,
    exit_code: Option<i32>,
    error: Option<String>,
    usage: Option<Usage>,
}

impl From<AttemptRow> for ExportedAttempt {
    fn from(a: AttemptRow) -> Self {
        ExportedAttempt {
            stage: a.stage,
            round: a.round,
            attempt: a.attempt,
            outcome: a.outcome.as_str(),
            started_at: a.started_at,
            finished_at: a.finished_at,
            exit_code: a.exit_code,
            error: a.error,
            usage: a.usage.map(Usage::from),
        }
    }
}

fn exported(d: ItemDetail, workspace: &Path) -> Exported {
    let dir = item_workspace(workspace, d.item.id);
    let (workspace, files) = if dir.is_dir() {
        let files = workspace_files(&dir, MAX_FILES);
        (Some(dir), files)
    } else {
        (None, Vec::new())
    };
    Exported {
        item: d.item.into(),
        display_state: d.display_state,
        outputs: convert(d.outputs),
        feedback: convert(d.feedback),
        attempts: convert(d.attempts),
        usage: d.usage.into(),
        workspace,
        files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_705_300_000);
        let check = |t: &str, want: Millis| assert_eq!(parse_since(t, now).unwrap(), want, "{t}");
        check("1d", 1_705_213_600_000);
        check("90m", 1_705_294_600_000);
        check("2024-01-14", 1_705_190_400_000);
        check("2024-01-14T10:10:00Z", 1_705_227_000_000);
        check("2024-01-14 10:10:00", 1_705_227_000_000);
        assert!(parse_since("last week", now).is_err());
    }
}
