//! `ideamill alert test`: a test alert to every `[[alerts]]` target (or the
//! one named), past any cooldown, and how each delivery went. Exit 0 when
//! every target got it, 2 otherwise.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;

use crate::cli::AlertTestArgs;
use crate::{exit, output, project};

pub async fn test(config: Option<&Path>, args: AlertTestArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(project::load_config(config)?);
    if config.alerts.is_empty() {
        bail!(
            "{} has no [[alerts]] targets: add one (kind = \"webhook\", \"slack\" or \"ntfy\", and its url)",
            config.path.display()
        );
    }
    if let Some(name) = &args.target
        && !config.alerts.iter().any(|a| &a.name == name)
    {
        let names: Vec<&str> = config.alerts.iter().map(|a| a.name.as_str()).collect();
        bail!("no alert target `{name}`; targets: {}", names.join(", "));
    }
    let alerts = ideamill_alerts::Alerts::new(config.clone(), open_store(&config).await?)
        .map_err(|e| project::config_problem(&config, e))?;
    let deliveries = alerts.send_test(args.target.as_deref()).await;
    let all_ok = deliveries.iter().all(|d| d.result.is_ok());
    if args.json {
        let rows: Vec<serde_json::Value> = deliveries
            .iter()
            .map(|d| {
                serde_json::json!({
                    "target": d.target,
                    "delivered": d.result.is_ok(),
                    "status": d.result.as_ref().ok(),
                    "error": d.result.as_ref().err(),
                    "tries": d.tries,
                    "ms": d.took.as_millis() as u64,
                })
            })
            .collect();
        output::json(&serde_json::json!({ "deliveries": rows }))?;
    } else {
        for (d, t) in deliveries.iter().zip(
            alerts
                .targets()
                .iter()
                .filter(|t| args.target.as_deref().is_none_or(|n| n == t.name)),
        ) {
            match &d.result {
                Ok(status) => println!(
                    "ok      {} ({}, {}): delivered, HTTP {status}, in {} ms",
                    d.target,
                    t.kind.as_str(),
                    t.host(),
                    d.took.as_millis()
                ),
                Err(e) => println!(
                    "FAILED  {} ({}, {}): {e} (after {} tr{})",
                    d.target,
                    t.kind.as_str(),
                    t.host(),
                    d.tries,
                    if d.tries == 1 { "y" } else { "ies" }
                ),
            }
        }
    }
    Ok(ExitCode::from(if all_ok { exit::OK } else { exit::ERROR }))
}

/// The store, for recording delivery events; a test needs none, so a
/// project without a store yet gets a scratch one.
async fn open_store(
    config: &ideamill_core::Config,
) -> anyhow::Result<Arc<dyn ideamill_store::Store>> {
    match project::open_existing_store(config).await {
        Ok(store) => Ok(store),
        Err(_) => project::open_store(config).await,
    }
}
