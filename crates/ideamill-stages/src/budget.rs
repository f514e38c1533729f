//! Budgets (`[budget]`): spending caps per item and per day, for every kind
//! of stage that reports usage. A stage that would spend past a cap pauses
//! its item instead of failing it; the engine resumes paused items once the
//! caps allow them again (a raised cap, a new day).

use ideamill_core::Config;
use ideamill_core::config::BudgetConfig;
use ideamill_store::{Spend, Store};
use ideamill_sys::clock::now_millis;

/// The first cap that `spend` has reached, as a reason people can read.
pub fn reached(budget: &BudgetConfig, spend: &Spend) -> Option<String> {
    if let Some(cap) = budget.item_usd
        && spend.item.cost >= cap
    {
        return Some(format!(
            "budget reached: this item has cost ${:.4} of its ${cap:.4} (budget.item_usd)",
            spend.item.cost
        ));
    }
    if let Some(cap) = budget.item_tokens
        && spend.item.tokens() >= cap
    {
        return Some(format!(
            "budget reached: this item has used {} of its {cap} tokens (budget.item_tokens)",
            spend.item.tokens()
        ));
    }
    if let Some(cap) = budget.day_usd
        && spend.day.cost >= cap
    {
        return Some(format!(
            "budget reached: ${:.4} spent today of ${cap:.4} (budget.day_usd)",
            spend.day.cost
        ));
    }
    if let Some(cap) = budget.day_tokens
        && spend.day.tokens() >= cap
    {
        return Some(format!(
            "budget reached: {} tokens used today of {cap} (budget.day_tokens)",
            spend.day.tokens()
        ));
    }
    None
}

/// Resume the jobs paused by a budget that the current caps allow again.
pub async fn resume_within_caps(config: &Config, store: &dyn Store) {
    let paused = match store.paused_jobs().await {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!("Could not list paused jobs: {e}");
            return;
        }
    };
    let now = now_millis();
    let mut resume = Vec::new();
    for job in &paused {
        match store
            .spend(job.item_id, ideamill_store::sqlite::day_start(now))
            .await
        {
            Ok(spend) if reached(&config.budget, &spend).is_none() => resume.push(job.job_id),
            Ok(_) => {}
            Err(e) => tracing::warn!("Could not read the spending of item {}: {e}", job.item_id),
        }
    }
    if resume.is_empty() {
        return;
    }
    match store.resume_jobs(&resume, now).await {
        Ok(n) => tracing::info!("Resumed {n} item(s) paused by a budget that now allows them"),
        Err(e) => tracing::warn!("Could not resume paused jobs: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use ideamill_store::UsageTotals;

    use super::*;

    fn spend(item_cost: f64, item_tokens: u64, day_cost: f64, day_tokens: u64) -> Spend {
        Spend {
            item: UsageTotals {
                prompt_tokens: item_tokens,
                completion_tokens: 0,
                cost: item_cost,
            },
            day: UsageTotals {
                prompt_tokens: day_tokens,
                completion_tokens: 0,
                cost: day_cost,
            },
        }
    }

    #[test]
    fn budgets_pause_at_the_first_cap_reached() {
        let budget = BudgetConfig {
            item_usd: Some(1.0),
            day_usd: Some(10.0),
            item_tokens: Some(1000),
            day_tokens: None,
        };
        let cases: &[(Spend, Option<&str>)] = &[
            (spend(0.5, 10, 5.0, 100), None),
            (spend(1.0, 10, 5.0, 100), Some("budget.item_usd")),
            (spend(0.1, 1000, 5.0, 100), Some("budget.item_tokens")),
            (spend(0.1, 10, 10.5, 100), Some("budget.day_usd")),
        ];
        for (spend, expected) in cases {
            let got = reached(&budget, spend);
            match expected {
                None => assert_eq!(got, None),
                Some(cap) => assert!(
                    got.as_deref().is_some_and(|r| r.contains(cap)),
                    "{got:?} should name {cap}"
                ),
            }
        }
        assert_eq!(
            reached(
                &BudgetConfig::default(),
                &spend(1e9, u64::MAX / 2, 1e9, u64::MAX / 2)
            ),
            None
        );
    }
}
