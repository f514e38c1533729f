//! `ideamill list`: items, newest first, filtered by state, stage or
//! failure class.

use std::path::Path;
use std::process::ExitCode;

use ideamill_store::ItemFilter;
use ideamill_sys::clock::now_millis;
use ideamill_web::api::wire::{ItemSummary, convert};

use crate::cli::ListArgs;
use crate::output::{self, Table};
use crate::project;

pub async fn run(config: Option<&Path>, args: ListArgs) -> anyhow::Result<ExitCode> {
    let state = args.state;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let items = store
        .list_items(&ItemFilter {
            state,
            stage: args.stage.clone(),
            failure: args.failed,
            before_id: args.before,
            limit: args.limit,
        })
        .await?;
    store.close().await;
    if args.json {
        output::json(&convert::<_, ItemSummary>(items))?;
        return Ok(ExitCode::SUCCESS);
    }
    if items.is_empty() {
        println!("No items.");
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_millis();
    let mut table = Table::new(&["ID", "STATE", "STAGE", "ROUND", "TRIES", "UPDATED", "IDEA"]);
    for i in &items {
        table.row(vec![
            i.id.to_string(),
            output::state_with_class(&i.display_state, i.failure_class),
            i.stage.clone().unwrap_or_else(|| "-".into()),
            i.round.to_string(),
            i.attempts.to_string(),
            output::ago(i.updated_at, now),
            output::first_line(&i.text, 60),
        ]);
    }
    table.print(&mut std::io::stdout().lock())?;
    if items.len() as u32 == args.limit
        && let Some(last) = items.last()
    {
        println!("(more: ideamill list --before {})", last.id);
    }
    Ok(ExitCode::SUCCESS)
}
