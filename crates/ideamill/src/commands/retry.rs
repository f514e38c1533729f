//! `ideamill retry ID [--from STAGE] [--failed CLASS]`: run an item again;
//! `ideamill retry --failed CLASS`: run every item that failed of that class
//! again (e.g. `infra` after a rate-limit storm or an outage).

use std::path::Path;
use std::process::ExitCode;

use ideamill_core::machine::{RetryRefused, retry_job};
use ideamill_core::{Config, FailureClass, ItemId};
use ideamill_store::{ItemFilter, RetryEffect, StateFilter, Store};
use ideamill_sys::clock::now_millis;
use ideamill_web::api::wire::{Retried, RetriedAll};

use crate::cli::RetryArgs;
use crate::{output, project};

/// Failed items read per page when retrying a whole class.
const PAGE: u32 = 500;

pub async fn run(config: Option<&Path>, args: RetryArgs) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config)?;
    let store = project::open_existing_store(&config).await?;
    let result = match args.id.as_deref() {
        Some(id) => one(&config, &*store, id, &args).await,
        None => match args.failed {
            Some(class) => all(&config, &*store, class, args.json).await,
            // clap requires one of the two.
            None => Err(anyhow::anyhow!("name an item, or a class with --failed")),
        },
    };
    store.close().await;
    result
}

async fn one(
    config: &Config,
    store: &dyn Store,
    id: &str,
    args: &RetryArgs,
) -> anyhow::Result<ExitCode> {
    let id = project::parse_id(id)?;
    let effect = retry(config, store, id, args.from.as_deref(), args.failed).await?;
    if args.json {
        output::json(&Retried::new(id, effect))?;
    } else {
        println!(
            "Item {id} will run stage `{}` again (round {}).",
            effect.stage, effect.round
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every item failed of `class`, newest first, each where it stopped. An
/// item retried by another hand since the list was read is left as it is.
async fn all(
    config: &Config,
    store: &dyn Store,
    class: FailureClass,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut filter = ItemFilter {
        state: Some(StateFilter::Failed),
        failure: Some(class),
        limit: PAGE,
        ..ItemFilter::default()
    };
    let mut ids = Vec::new();
    loop {
        let page = store.list_items(&filter).await?;
        ids.extend(page.iter().map(|i| i.id));
        match page.last() {
            Some(last) if page.len() as u32 == PAGE => filter.before_id = Some(last.id),
            _ => break,
        }
    }
    let mut retried = Vec::with_capacity(ids.len());
    let mut refused = 0;
    for id in ids {
        match retry(config, store, id, None, Some(class)).await {
            Ok(effect) => {
                if !json {
                    println!(
                        "Item {id} will run stage `{}` again (round {}).",
                        effect.stage, effect.round
                    );
                }
                retried.push(Retried::new(id, effect));
            }
            Err(e) => {
                refused += 1;
                eprintln!("Item {id} not retried: {e:#}");
            }
        }
    }
    if json {
        output::json(&RetriedAll { retried })?;
    } else if retried.is_empty() && refused == 0 {
        println!("No item failed for {class}.");
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Run item `id` again from `from` (else where it stopped); with `failed`,
/// only if its failure was of that class.
async fn retry(
    config: &Config,
    store: &dyn Store,
    id: ItemId,
    from: Option<&str>,
    failed: Option<FailureClass>,
) -> anyhow::Result<RetryEffect> {
    let detail = store.item(id).await?;
    let item = &detail.item;
    if let Some(class) = failed
        && item.failure_class != Some(class)
    {
        anyhow::bail!(
            "item {id} did not fail for {class} (it is {}{})",
            item.state,
            item.failure_class
                .map(|c| format!(", failed for {c}"))
                .unwrap_or_default()
        );
    }
    let next = retry_job(config, item.state, item.stage.as_deref(), item.round, from).map_err(
        |refused| match refused {
            RetryRefused::DoneNeedsFrom => anyhow::anyhow!(
                "item {id} is done; to run it again, name the stage to start from with --from"
            ),
            RetryRefused::NoStage => anyhow::anyhow!("the item has no stage to resume"),
            RetryRefused::UnknownStage { name, stages } => anyhow::anyhow!(
                "no stage `{name}` in the config; stages: {}",
                stages.join(", ")
            ),
        },
    )?;
    Ok(store.retry_item(id, &next, now_millis()).await?)
}
