//! `ideamill cancel ID`: cancel an item; a running job is stopped.

use std::path::Path;
use std::process::ExitCode;

use ideamill_sys::clock::now_millis;

use crate::cli::IdArgs;
use crate::{output, project};

pub async fn run(config: Option<&Path>, args: IdArgs) -> anyhow::Result<ExitCode> {
    let id = project::parse_id(&args.id)?;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let effect = store.cancel_item(id, now_millis()).await?;
    if args.json {
        output::json(
            &serde_json::json!({ "id": id, "cancelled": true, "was_running": effect.was_running }),
        )?;
    } else if effect.was_running {
        println!("Cancelled item {id}; its running job is being stopped.");
    } else {
        println!("Cancelled item {id}.");
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
