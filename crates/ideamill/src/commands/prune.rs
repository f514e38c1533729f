//! `ideamill prune --older-than D`: delete old finished items (with their
//! workspace folders) and events.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ideamill_core::duration::parse_duration;
use ideamill_stages::executor::{WorkspacesRemoved, remove_item_workspaces};
use ideamill_sys::clock::now_millis;

use crate::cli::PruneArgs;
use crate::{output, project};

pub async fn run(config: Option<&Path>, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let age = parse_duration(&args.older_than)
        .map_err(anyhow::Error::msg)
        .context("--older-than")?;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let counts = store
        .prune(now_millis() - ideamill_core::duration::millis(age))
        .await?;
    store.close().await;
    let removed = if args.keep_workspaces {
        WorkspacesRemoved::default()
    } else {
        remove_item_workspaces(&config.engine.workspace, &counts.item_ids)
    };
    if args.json {
        output::json(&serde_json::json!({
            "items": counts.items,
            "events": counts.events,
            "workspace_folders": removed.folders,
            "workspace_failures": removed.failed,
        }))?;
    } else {
        println!(
            "Pruned {} finished items ({} workspace folders) and {} events.",
            counts.items, removed.folders, counts.events
        );
        for failure in &removed.failed {
            eprintln!("ideamill: could not remove a pruned item's workspace: {failure}");
        }
    }
    Ok(if removed.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
