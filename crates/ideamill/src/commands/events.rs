//! `ideamill events`: what the mill recorded (recoveries, retries, failures).

use std::path::Path;
use std::process::ExitCode;

use ideamill_store::EventFilter;
use ideamill_sys::clock::now_millis;
use ideamill_web::api::wire::{Event, convert};

use crate::cli::EventsArgs;
use crate::output::{self, Table};
use crate::project;

pub async fn run(config: Option<&Path>, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let events = store
        .events(&EventFilter {
            item: args.item,
            kind: args.kind.clone(),
            since: None,
            limit: args.limit,
        })
        .await?;
    store.close().await;
    if args.json {
        output::json(&convert::<_, Event>(events))?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_millis();
    let mut table = Table::new(&["ID", "WHEN", "KIND", "ITEM", "MESSAGE"]);
    for e in &events {
        table.row(vec![
            e.id.to_string(),
            output::ago(e.at, now),
            e.kind.clone(),
            e.item_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            e.message.clone(),
        ]);
    }
    if table.is_empty() {
        println!("No events.");
    } else {
        table.print(&mut std::io::stdout().lock())?;
    }
    Ok(ExitCode::SUCCESS)
}
