//! `ideamill import legacy DIR [--dry-run]`: the old system's files
//! (`ideas_log.json`, `QAissue.json`, `implementations/*.json`) as items in
//! the states they had there. The mapping is `ideamill_intake::legacy`;
//! this prints its plan and applies it. Exit 1 when some file could not be
//! read or some record could not be mapped (the rest is imported).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ideamill_intake::legacy::{Mapping, Plan};
use ideamill_store::{ImportOutcome, NewEvent, event_kind};
use ideamill_sys::clock::now_millis;
use serde_json::json;

use crate::cli::ImportLegacyArgs;
use crate::{exit, output, project};

/// Records per transaction: each batch is atomic, and the whole import is
/// idempotent, so an interrupted import is finished by running it again.
const BATCH: usize = 1000;

pub async fn legacy(config: Option<&Path>, args: ImportLegacyArgs) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config)?;
    let now = now_millis();
    let dir = std::path::absolute(&args.dir).unwrap_or_else(|_| args.dir.clone());
    let plan = ideamill_intake::legacy::plan(&dir, &config, now)
        .with_context(|| format!("cannot import {}", dir.display()))?;
    let items = plan.items();
    let outcomes = if args.dry_run {
        None
    } else {
        let store = project::open_store(&config).await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for batch in items.chunks(BATCH) {
            outcomes.extend(store.import_items(batch, now).await?);
        }
        let imported = count(&outcomes, true);
        store
            .record_event(&NewEvent {
                at: now_millis(),
                kind: event_kind::IMPORTED,
                item_id: None,
                job_id: None,
                process: None,
                message: format!(
                    "Imported {imported} item(s) from the legacy folder {} ({} already imported)",
                    dir.display(),
                    count(&outcomes, false)
                ),
            })
            .await?;
        store.close().await;
        Some(outcomes)
    };
    if args.json {
        output::json(&as_json(&plan, outcomes.as_deref(), args.dry_run))?;
    } else {
        print_report(&mut std::io::stdout().lock(), &plan, outcomes.as_deref())?;
    }
    Ok(ExitCode::from(if plan.incomplete() {
        exit::NEGATIVE
    } else {
        exit::OK
    }))
}

fn count(outcomes: &[ImportOutcome], imported: bool) -> usize {
    outcomes
        .iter()
        .filter(|o| matches!(o, ImportOutcome::Imported(_)) == imported)
        .count()
}

/// The outcome of each record that maps to an item, by record index.
fn outcomes_by_record<'a>(
    plan: &Plan,
    outcomes: Option<&'a [ImportOutcome]>,
) -> BTreeMap<usize, &'a ImportOutcome> {
    let Some(outcomes) = outcomes else {
        return BTreeMap::new();
    };
    plan.records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.mapping, Mapping::Item { .. }))
        .map(|(i, _)| i)
        .zip(outcomes)
        .collect()
}

fn as_json(plan: &Plan, outcomes: Option<&[ImportOutcome]>, dry_run: bool) -> serde_json::Value {
    let by_record = outcomes_by_record(plan, outcomes);
    let records: Vec<serde_json::Value> = plan
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            match by_record.get(&i) {
                Some(ImportOutcome::Imported(id)) => {
                    v["outcome"] = json!("imported");
                    v["item_id"] = json!(id);
                }
                Some(ImportOutcome::Skipped(record)) => {
                    v["outcome"] = json!("already_imported");
                    v["item_id"] = json!(record.item_ids.first());
                }
                None => {}
            }
            v
        })
        .collect();
    let kinds = |k: &str| {
        plan.records
            .iter()
            .filter(|r| mapping_kind(&r.mapping) == k)
            .count()
    };
    json!({
        "dir": plan.dir,
        "dry_run": dry_run,
        "files": plan.files,
        "records": records,
        "summary": {
            "items": kinds("item"),
            "imported": outcomes.map(|o| count(o, true)),
            "already_imported": outcomes.map(|o| count(o, false)),
            "merged": kinds("merged"),
            "skipped": kinds("skipped"),
            "unmapped": kinds("unmapped"),
            "unreadable_files": plan.files.iter().filter(|f| f.problem.is_some()).count(),
        },
    })
}

fn mapping_kind(m: &Mapping) -> &'static str {
    match m {
        Mapping::Item { .. } => "item",
        Mapping::Merged { .. } => "merged",
        Mapping::Skipped { .. } => "skipped",
        Mapping::Unmapped { .. } => "unmapped",
    }
}

fn print_report(
    out: &mut impl Write,
    plan: &Plan,
    outcomes: Option<&[ImportOutcome]>,
) -> std::io::Result<()> {
    let mut files = output::Table::new(&["file", "records", ""]);
    for f in &plan.files {
        files.row(vec![
            f.file.clone(),
            f.records.to_string(),
            f.problem
                .as_ref()
                .map(|p| format!("not read: {p}"))
                .unwrap_or_default(),
        ]);
    }
    writeln!(out, "Legacy folder {}:", plan.dir.display())?;
    files.print(out)?;

    // What the items are, by state.
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for r in &plan.records {
        if let Mapping::Item { state, stage, .. } = &r.mapping {
            let key = match (*state, stage) {
                ("resumes after QA", Some(stage)) => format!("resume at `{stage}` after QA"),
                (state, _) => state.to_string(),
            };
            *states.entry(key).or_default() += 1;
        }
    }
    let n = states.values().sum::<usize>();
    let by_state = states
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        out,
        "\n{n} item(s) in the folder{}",
        if n > 0 {
            format!(": {by_state}.")
        } else {
            ".".into()
        }
    )?;
    match outcomes {
        None => writeln!(out, "Dry run: nothing was written.")?,
        Some(outcomes) => {
            let (new, old) = (count(outcomes, true), count(outcomes, false));
            write!(out, "Imported {new} new item(s)")?;
            if old > 0 {
                write!(
                    out,
                    "; {old} were imported before, and nothing new was created for them"
                )?;
            }
            writeln!(out, ".")?;
        }
    }

    let mut list = |title: &str, lines: Vec<String>| -> std::io::Result<()> {
        if !lines.is_empty() {
            writeln!(out, "\n{title} ({}):", lines.len())?;
            for line in lines {
                writeln!(out, "  {line}")?;
            }
        }
        Ok(())
    };
    let of = |kind: &str| -> Vec<String> {
        plan.records
            .iter()
            .filter_map(|r| match &r.mapping {
                Mapping::Unmapped { reason } if kind == "unmapped" => {
                    Some(format!("{}: {reason}", r.source))
                }
                Mapping::Skipped { reason } if kind == "skipped" => {
                    Some(format!("{}: {reason}", r.source))
                }
                Mapping::Merged { into } if kind == "merged" => {
                    Some(format!("{} into {into}", r.source))
                }
                _ => None,
            })
            .collect()
    };
    list("Merged into another record", of("merged"))?;
    list("Not imported on purpose", of("skipped"))?;
    list("Could not be mapped", of("unmapped"))?;
    list(
        "Files that could not be read",
        plan.files
            .iter()
            .filter_map(|f| Some(format!("{}: {}", f.file, f.problem.as_ref()?)))
            .collect(),
    )?;
    let mut notes: Vec<String> = plan
        .files
        .iter()
        .flat_map(|f| f.notes.iter().map(move |n| format!("{}: {n}", f.file)))
        .collect();
    notes.extend(
        plan.records
            .iter()
            .flat_map(|r| r.notes.iter().map(move |n| format!("{}: {n}", r.source))),
    );
    list("Notes", notes)
}
