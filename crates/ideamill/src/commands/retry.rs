//! `ideamill retry ID [--from STAGE]`: run an item again.

use std::path::Path;
use std::process::ExitCode;

use ideamill_core::machine::{RetryRefused, retry_job};
use ideamill_sys::clock::now_millis;
use ideamill_web::api::wire::Retried;

use crate::cli::RetryArgs;
use crate::{output, project};

pub async fn run(config: Option<&Path>, args: RetryArgs) -> anyhow::Result<ExitCode> {
    let id = project::parse_id(&args.id)?;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let detail = store.item(id).await?;
    let item = &detail.item;
    let next = retry_job(
        &config,
        item.state,
        item.stage.as_deref(),
        item.round,
        args.from.as_deref(),
    )
    .map_err(|refused| match refused {
        RetryRefused::DoneNeedsFrom => anyhow::anyhow!(
            "item {id} is done; to run it again, name the stage to start from with --from"
        ),
        RetryRefused::NoStage => anyhow::anyhow!("the item has no stage to resume"),
        RetryRefused::UnknownStage { name, stages } => anyhow::anyhow!(
            "no stage `{name}` in the config; stages: {}",
            stages.join(", ")
        ),
    })?;
    let effect = store.retry_item(id, &next, now_millis()).await?;
    if args.json {
        output::json(&Retried::new(id, effect))?;
    } else {
        println!(
            "Item {id} will run stage `{}` again (round {}).",
            effect.stage, effect.round
        );
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
