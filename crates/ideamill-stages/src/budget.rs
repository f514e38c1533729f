//! Budgets (`[budget]`): spending caps per item and per day, for every kind
//! of stage that reports usage. A stage that would spend past a cap pauses
//! its item instead of failing it; the engine resumes paused items once the
//! caps allow them again (a raised cap, a new day).
//!
//! A model call reserves its worst case before it is made ([`Reserve`]):
//! estimated prompt tokens plus `max_tokens`, at the model's price. The
//! store checks the reservation against the caps and records it in one
//! transaction that concurrent callers take one at a time, in every engine,
//! and the finish that records the call's actual usage deletes it. So a call
//! that could pass a cap is never made, and no cap is passed (beyond the
//! error of the prompt's estimate).

use ideamill_core::Config;
use ideamill_core::config::BudgetConfig;
use ideamill_store::{Caps, ClaimedJob, Reservation, Spend, Store};
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

/// The first cap that reserving `tokens` and `cost` on top of `spend` would
/// pass, as a reason people can read.
pub fn would_pass(budget: &BudgetConfig, spend: &Spend, tokens: u64, cost: f64) -> Option<String> {
    let usd = [
        (
            budget.item_usd,
            spend.item.cost,
            "this item",
            "budget.item_usd",
        ),
        (budget.day_usd, spend.day.cost, "today", "budget.day_usd"),
    ];
    for (cap, spent, whose, name) in usd {
        if let Some(cap) = cap
            && spent + cost > cap
        {
            return Some(format!(
                "budget reached: this call may cost up to ${cost:.4}, and ${spent:.4} of {whose}'s \
                 ${cap:.4} is spent or reserved ({name})"
            ));
        }
    }
    let counts = [
        (
            budget.item_tokens,
            spend.item.tokens(),
            "this item",
            "budget.item_tokens",
        ),
        (
            budget.day_tokens,
            spend.day.tokens(),
            "today",
            "budget.day_tokens",
        ),
    ];
    for (cap, used, whose, name) in counts {
        if let Some(cap) = cap
            && used.saturating_add(tokens) > cap
        {
            return Some(format!(
                "budget reached: this call may use up to {tokens} tokens, and {used} of {whose}'s \
                 {cap} are used or reserved ({name})"
            ));
        }
    }
    None
}

/// The worst case of a call: `prompt_tokens` (estimated) plus `max_tokens`
/// completion tokens, in tokens and at `price`.
pub fn worst_case(
    prompt_tokens: u64,
    max_tokens: u32,
    price: Option<&ideamill_llm::Price>,
) -> (u64, f64) {
    let completion = u64::from(max_tokens);
    (
        prompt_tokens + completion,
        price.map_or(0.0, |p| ideamill_llm::cost(prompt_tokens, completion, p)),
    )
}

/// The budget's rule for the store's [`Store::reserve`]: a cap already
/// reached, or one the reservation would pass, refuses it.
pub struct Reserve<'a>(pub &'a BudgetConfig);

impl Reserve<'_> {
    /// Why `r` may not be reserved on top of `spend`, if it may not.
    pub fn refusal(&self, spend: &Spend, r: &Reservation) -> Option<String> {
        reached(self.0, spend).or_else(|| would_pass(self.0, spend, r.tokens, r.cost))
    }
}

impl Caps for Reserve<'_> {
    fn admit(&self, spend: &Spend, r: &Reservation) -> bool {
        self.refusal(spend, r).is_none()
    }
}

/// Reserve `tokens` and `cost` for `job` against the caps, until the
/// stage's `timeout` (plus a margin) has surely passed; why the job may not
/// spend, if it may not. The job's finish releases the reservation and
/// records what it actually used.
pub async fn reserve(
    store: &dyn Store,
    budget: &BudgetConfig,
    job: &ClaimedJob,
    (tokens, cost): (u64, f64),
    timeout: std::time::Duration,
    now: ideamill_core::Millis,
) -> Result<Option<String>, String> {
    let reservation = Reservation {
        job_id: job.id,
        item_id: job.item_id,
        tokens,
        cost,
        now,
        // Past the stage's timeout the work is over: a reservation its
        // finish never deleted (a process that died) stops counting.
        expires_at: now + ideamill_core::duration::millis(timeout) + 10 * 60_000,
        day_start: ideamill_store::sqlite::day_start(now),
    };
    let rule = Reserve(budget);
    let (admitted, spend) = store
        .reserve(&reservation, &rule)
        .await
        .map_err(|e| format!("cannot check the budget: {e}"))?;
    Ok((!admitted).then(|| {
        rule.refusal(&spend, &reservation)
            .unwrap_or_else(|| "budget reached".into())
    }))
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
    fn a_reservation_that_would_pass_a_cap_is_refused() {
        let budget = BudgetConfig {
            item_usd: Some(1.0),
            day_usd: Some(10.0),
            item_tokens: Some(1000),
            day_tokens: Some(5000),
        };
        // (spend, reserved tokens, reserved cost, the cap it would pass)
        let cases: &[(Spend, u64, f64, Option<&str>)] = &[
            (spend(0.5, 10, 5.0, 100), 990, 0.5, None),
            (
                spend(0.5, 10, 5.0, 100),
                991,
                0.1,
                Some("budget.item_tokens"),
            ),
            (spend(0.5, 10, 5.0, 100), 10, 0.51, Some("budget.item_usd")),
            (spend(0.1, 10, 9.9, 100), 10, 0.2, Some("budget.day_usd")),
            (
                spend(0.1, 10, 1.0, 4500),
                501,
                0.0,
                Some("budget.day_tokens"),
            ),
            (spend(0.1, 10, 1.0, 4500), 500, 0.0, None),
        ];
        for (spend, tokens, cost, expected) in cases {
            let got = would_pass(&budget, spend, *tokens, *cost);
            match expected {
                None => assert_eq!(got, None, "{spend:?} + {tokens}"),
                Some(cap) => assert!(
                    got.as_deref().is_some_and(|r| r.contains(cap)),
                    "{got:?} should name {cap}"
                ),
            }
        }
        // A cap already reached refuses even a free call.
        let r = Reservation {
            job_id: 1,
            item_id: 1,
            tokens: 0,
            cost: 0.0,
            now: 0,
            expires_at: 1,
            day_start: 0,
        };
        assert!(!Reserve(&budget).admit(&spend(1.0, 0, 0.0, 0), &r));
        assert!(Reserve(&budget).admit(&spend(0.9, 0, 0.0, 0), &r));
    }

    #[test]
    fn the_worst_case_is_the_prompt_and_all_of_max_tokens() {
        let price = ideamill_llm::Price {
            input_per_million: 1.0,
            output_per_million: 2.0,
        };
        assert_eq!(worst_case(1000, 500, None), (1500, 0.0));
        let (tokens, cost) = worst_case(1_000_000, 1_000_000, Some(&price));
        assert_eq!(tokens, 2_000_000);
        assert!((cost - 3.0).abs() < 1e-9, "{cost}");
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
