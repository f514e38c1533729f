//! `ideamill retry ID [--from STAGE]`: run an item again.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ideamill_core::ItemState;
use ideamill_core::machine::NextJob;
use ideamill_engine::now_millis;

use crate::cli::RetryArgs;
use crate::{output, project};

pub async fn run(config: Option<&Path>, args: RetryArgs) -> anyhow::Result<ExitCode> {
    let id = project::parse_id(&args.id)?;
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let detail = store.item(id).await?;
    let stage_name = match (&args.from, detail.item.state) {
        (Some(from), _) => from.clone(),
        (None, ItemState::Done) => {
            bail!("item {id} is done; to run it again, name the stage to start from with --from")
        }
        (None, _) => detail
            .item
            .stage
            .clone()
            .context("the item has no stage to resume")?,
    };
    let stage = config.stage(&stage_name).with_context(|| {
        let names: Vec<&str> = config.stages.iter().map(|s| s.name.as_str()).collect();
        format!(
            "no stage `{stage_name}` in the config; stages: {}",
            names.join(", ")
        )
    })?;
    let next = NextJob {
        stage: stage.name.clone(),
        round: detail.item.round.max(1),
        max_attempts: stage.retry.max_attempts,
    };
    let effect = store.retry_item(id, &next, now_millis()).await?;
    if args.json {
        output::json(
            &serde_json::json!({ "id": id, "stage": effect.stage, "round": effect.round }),
        )?;
    } else {
        println!(
            "Item {id} will run stage `{}` again (round {}).",
            effect.stage, effect.round
        );
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
