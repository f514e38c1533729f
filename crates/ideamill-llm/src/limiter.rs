//! `Limiter`: concurrency, requests-per-minute and tokens-per-minute limits
//! shared by every worker of a process that calls one provider.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::LlmError;

/// The longest a rate-limit answer pauses every caller of the limiter: a
/// hostile or mistaken `Retry-After: 86400` must not freeze the process.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Shared limits for one provider. Cheap to share: put it in an `Arc`.
///
/// Rates are token buckets that start full (a minute's worth may be sent at
/// once) and refill continuously. A call reserves one request and its token
/// estimate; when it ends, [`Reservation::settle`] replaces the estimate
/// with the tokens actually used (an unsettled reservation keeps the estimate).
#[derive(Debug)]
pub struct Limiter {
    concurrency: Semaphore,
    rates: Mutex<Rates>,
}

#[derive(Debug)]
struct Rates {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    paused_until: Option<Instant>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn per_minute(n: u32, now: Instant) -> Bucket {
        let capacity = f64::from(n.max(1));
        Bucket {
            capacity,
            per_second: capacity / 60.0,
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// How long until `n` is available (zero if it is now).
    fn wait_for(&self, n: f64) -> Duration {
        if self.level >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.level) / self.per_second)
        }
    }
}

/// A call's place in the limiter: holds a concurrency slot until dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    limiter: &'a Limiter,
    reserved_tokens: f64,
    _permit: SemaphorePermit<'a>,
}

impl Reservation<'_> {
    /// Corrects the tokens-per-minute account with the tokens actually used.
    pub fn settle(self, actual_tokens: u64) {
        let mut rates = self.limiter.lock();
        if let Some(bucket) = rates.tokens.as_mut() {
            // Give back an over-estimate, or go into debt for an under-estimate.
            bucket.level =
                (bucket.level + self.reserved_tokens - actual_tokens as f64).min(bucket.capacity);
        }
    }
}

impl Limiter {
    /// `max_concurrency` calls at once (at least one), and optional
    /// requests- and tokens-per-minute rates.
    pub fn new(
        max_concurrency: u32,
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u32>,
    ) -> Limiter {
        let now = Instant::now();
        Limiter {
            concurrency: Semaphore::new(max_concurrency.max(1) as usize),
            rates: Mutex::new(Rates {
                requests: requests_per_minute.map(|n| Bucket::per_minute(n, now)),
                tokens: tokens_per_minute.map(|n| Bucket::per_minute(n, now)),
                paused_until: None,
            }),
        }
    }

    /// Waits for a concurrency slot, one request and `estimated_tokens`
    /// (capped at the bucket's size, so one huge call cannot wait forever).
    pub async fn acquire(
        &self,
        estimated_tokens: u64,
        cancel: &CancellationToken,
    ) -> Result<Reservation<'_>, LlmError> {
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(LlmError::Cancelled),
            permit = self.concurrency.acquire() => permit,
        };
        // The semaphore is never closed, so this cannot fail; treat it as
        // cancellation rather than panic if it ever did.
        let permit = permit.map_err(|_| LlmError::Cancelled)?;
        loop {
            let wait = {
                let now = Instant::now();
                let mut rates = self.lock();
                match self.try_take(&mut rates, estimated_tokens, now) {
                    Ok(reserved_tokens) => {
                        return Ok(Reservation {
                            limiter: self,
                            reserved_tokens,
                            _permit: permit,
                        });
                    }
                    Err(wait) => wait,
                }
            };
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "Waiting for the rate limit"
            );
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
            }
        }
    }

    /// Makes every caller wait `for_how_long` (at most a minute) before its
    /// next request: the server said it is rate limiting this process.
    pub fn pause(&self, for_how_long: Duration) {
        let until = Instant::now() + for_how_long.min(MAX_PAUSE);
        let mut rates = self.lock();
        if rates.paused_until.is_none_or(|t| t < until) {
            rates.paused_until = Some(until);
        }
    }

    /// Takes one request and the token estimate if all are available now,
    /// else says how long to wait. Takes nothing unless it can take all.
    fn try_take(&self, rates: &mut Rates, estimated: u64, now: Instant) -> Result<f64, Duration> {
        if let Some(until) = rates.paused_until {
            if until > now {
                return Err(until - now);
            }
            rates.paused_until = None;
        }
        let mut wait = Duration::ZERO;
        if let Some(b) = rates.requests.as_mut() {
            b.refill(now);
            wait = wait.max(b.wait_for(1.0));
        }
        let mut tokens = 0.0;
        if let Some(b) = rates.tokens.as_mut() {
            b.refill(now);
            tokens = (estimated as f64).min(b.capacity);
            wait = wait.max(b.wait_for(tokens));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(b) = rates.requests.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = rates.tokens.as_mut() {
            b.level -= tokens;
        }
        Ok(tokens)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rates> {
        // The state is plain numbers, always consistent: a panic elsewhere
        // while holding the lock cannot leave it half-updated.
        self.rates.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn acquire_at(limiter: &Limiter, tokens: u64) -> Duration {
        let start = Instant::now();
        let r = limiter
            .acquire(tokens, &CancellationToken::new())
            .await
            .unwrap();
        r.settle(tokens);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_spreads_calls() {
        let limiter = Limiter::new(10, Some(2), None);
        assert_eq!(acquire_at(&limiter, 0).await, Duration::ZERO);
        assert_eq!(acquire_at(&limiter, 0).await, Duration::ZERO);
        let waited = acquire_at(&limiter, 0).await;
        assert!(
            waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_settles_with_actual_usage() {
        let limiter = Limiter::new(10, None, Some(600));
        // Reserve 500, use only 100: 500 stay available.
        let r = limiter
            .acquire(500, &CancellationToken::new())
            .await
            .unwrap();
        r.settle(100);
        assert_eq!(acquire_at(&limiter, 500).await, Duration::ZERO);
        // Now 0 left; 100 more need 10 s at 10 tokens/s.
        let waited = acquire_at(&limiter, 100).await;
        assert!(
            waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_estimate_larger_than_the_bucket_does_not_wait_forever() {
        let limiter = Limiter::new(1, None, Some(100));
        let waited = acquire_at(&limiter, 10_000).await;
        assert_eq!(waited, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_everyone_and_is_capped() {
        let limiter = Limiter::new(1, None, None);
        limiter.pause(Duration::from_secs(3600));
        let waited = acquire_at(&limiter, 0).await;
        assert!(
            waited >= Duration::from_secs(59) && waited <= Duration::from_secs(61),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_and_cancellation() {
        let limiter = Limiter::new(1, None, None);
        let cancel = CancellationToken::new();
        let held = limiter.acquire(0, &cancel).await.unwrap();
        let waiting = CancellationToken::new();
        waiting.cancel();
        let second = limiter.acquire(0, &waiting).await;
        assert_eq!(second.err(), Some(LlmError::Cancelled));
        drop(held);
        assert!(limiter.acquire(0, &cancel).await.is_ok());
    }
}
