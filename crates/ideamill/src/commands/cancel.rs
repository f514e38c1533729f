//! `ideamill cancel ID`: cancel an item; a running job is stopped.

use std::path::Path;
use std::process::ExitCode;

use ideamill_sys::clock::now_millis;
use ideamill_web::api::wire::Cancelled;

use crate::cli::IdArgs;
use crate::{output, project};

pub async fn run(config: Option<&Path>, args: IdArgs) -> anyhow::Result<ExitCode> {
    let id = project::parse_id(&args.id)?;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let effect = store.cancel_item(id, now_millis()).await?;
    if args.json {
        output::json(&Cancelled::new(id, effect))?;
    } else if effect.was_running {
        println!("Cancelled item {id}; its running job is being stopped.");
    } else {
        println!("Cancelled item {id}.");
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
