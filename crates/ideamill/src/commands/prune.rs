//! `ideamill prune --older-than D`: delete old finished items and events.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ideamill_core::duration::parse_duration;
use ideamill_engine::now_millis;

use crate::cli::PruneArgs;
use crate::{output, project};

pub async fn run(config: Option<&Path>, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let age = parse_duration(&args.older_than)
        .map_err(anyhow::Error::msg)
        .context("--older-than")?;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let counts = store.prune(now_millis() - age.as_millis() as i64).await?;
    if args.json {
        output::json(&counts)?;
    } else {
        println!(
            "Pruned {} finished items and {} events.",
            counts.items, counts.events
        );
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
