//! The pulse: a task inside the engine's event loop that, every
//! `pulse_every`, measures how late its timer fired (loop lag), marks the
//! loop alive for the watchdog, tells the supervisor (the beat pipe),
//! rewrites the status file (unsynced, on the loop) and tells systemd.
//! Because it runs on the loop, a beat proves the loop is alive.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use tokio_util::sync::CancellationToken;

use super::systemd::Notifier;
use ideamill_health::Health;
use ideamill_sys::clock::{mono_micros, mono_millis, now_millis};

/// Ticks every `period` on the beat grid shared by the pulse and the
/// engine's heartbeat, so that both wake the loop at once instead of twice.
/// A kernel timer (timerfd) wakes the loop once a tick; a tokio interval
/// woke it up to three times for a 2 s tick (its timer wheel moves a far
/// deadline down its levels, waking at each): most of an idle engine's
/// wake-ups. Without a timerfd, a tokio interval.
pub struct Ticker {
    period_ms: i64,
    clock: TickClock,
}

enum TickClock {
    Kernel {
        timer: AsyncFd<OwnedFd>,
        /// CLOCK_MONOTONIC ms of the next expiry.
        next: i64,
    },
    Tokio(tokio::time::Interval),
}

impl Ticker {
    /// On `health`'s grid (its origin plus whole periods), or from now.
    pub fn new(health: Option<&Health>, period: Duration) -> Ticker {
        let period_ms = period.as_millis().max(1) as i64;
        let now = mono_millis();
        let origin = health.map_or(now, |h| h.origin_mono);
        let first = origin + ((now - origin).max(0) / period_ms + 1) * period_ms;
        let registered = ideamill_sys::clock::periodic_timer(first, period).and_then(|timer| {
            // SAFETY: an `OwnedFd` is open, and names the same descriptor,
            // for as long as it is owned, here by the `AsyncFd`.
            unsafe { AsyncFd::register_with_interest(timer, Interest::READABLE) }
                .map_err(std::io::Error::from)
        });
        let clock = match registered {
            Ok(timer) => TickClock::Kernel { timer, next: first },
            Err(e) => {
                tracing::debug!("No kernel timer for the beat ({e}); using the runtime's");
                let start = tokio::time::Instant::now()
                    + Duration::from_millis((first - now).max(0) as u64);
                let mut interval = tokio::time::interval_at(start, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                TickClock::Tokio(interval)
            }
        };
        Ticker { period_ms, clock }
    }

    /// Waits for the next tick (ticks missed meanwhile are skipped); how
    /// late it came.
    pub async fn tick(&mut self) -> Duration {
        match &mut self.clock {
            TickClock::Kernel { timer, next } => loop {
                let Ok(mut ready) = timer.readable().await else {
                    // The runtime is shutting down.
                    tokio::time::sleep(Duration::from_millis(self.period_ms as u64)).await;
                    return Duration::ZERO;
                };
                let expired = ideamill_sys::clock::timer_expirations(ready.get_inner());
                ready.clear_ready();
                if let Ok(n @ 1..) = expired {
                    let scheduled = *next + (n as i64 - 1) * self.period_ms;
                    *next = scheduled + self.period_ms;
                    return Duration::from_millis((mono_millis() - scheduled).max(0) as u64);
                }
            },
            TickClock::Tokio(interval) => {
                let scheduled = interval.tick().await;
                tokio::time::Instant::now().saturating_duration_since(scheduled)
            }
        }
    }
}

/// Run until `stop`; then remove the status file (a clean stop leaves none).
pub async fn run(health: Arc<Health>, notifier: Option<Notifier>, stop: CancellationToken) {
    let period = health.pulse_every;
    let mut ticker = Ticker::new(Some(&health), period);
    let mut beat_pipe = super::beat_pipe::from_env();
    // The first beat at once, so that the status file exists from the start.
    health.beat(Duration::ZERO);
    if let Some(pipe) = &mut beat_pipe {
        send_beat(pipe, &health);
    }
    let path = health.status_path();
    let mut ready_sent = false;
    let mut last_status = String::new();
    let mut writing_failed = false;
    loop {
        let lag = tokio::select! {
            _ = stop.cancelled() => break,
            lag = ticker.tick() => lag,
        };
        health.beat(lag);
        if let Some(pipe) = &mut beat_pipe {
            send_beat(pipe, &health);
        }
        if lag > period {
            tracing::warn!(
                "The event loop was {} ms late: something blocked it",
                lag.as_millis()
            );
        }
        // On the loop itself: the write is not synced, so it waits for no
        // device and wakes no other thread (a blocking-pool write woke two
        // threads a beat, a large share of an idle engine's wake-ups). A
        // disk so hung that even this blocks stalls the beat, and the
        // watchdog acts, as when the beat waited for a synced write.
        match health.snapshot().write(&path) {
            Ok(()) => writing_failed = false,
            Err(e) if !writing_failed => {
                writing_failed = true;
                tracing::warn!("Could not write the status file {}: {e}", path.display());
            }
            Err(_) => {}
        }
        if let Some(n) = &notifier {
            let mut message = String::from("WATCHDOG=1\n");
            if !ready_sent && health.process().is_some() {
                ready_sent = true;
                message.push_str("READY=1\n");
            }
            let status = systemd_status(&health);
            if status != last_status {
                message.push_str(&format!("STATUS={status}\n"));
                last_status = status;
            }
            n.send(&message);
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn systemd_status(health: &Health) -> String {
    let queued: u64 = health.queue().iter().map(|c| c.queued).sum();
    let running = health.in_flight(now_millis()).map_or(0, |j| j.len());
    if health.process().is_none() {
        "Starting".to_string()
    } else {
        format!("Running {running} job(s); {queued} waiting")
    }
}

/// Test-only: `IDEAMILL_TEST_BLOCK_LOOP_AFTER=2s` blocks the event loop's
/// thread for good after that long, as a deadlocked task would; with
/// `IDEAMILL_TEST_BLOCK_LOOP_COUNT=n`, only in the first n engines a
/// supervisor starts. Compiled only into debug builds, so a release build
/// ignores both variables.
///
/// `IDEAMILL_TEST_BLOCK_LOOP_HOLDING=log|metrics|queue|listen|in_flight|process`
/// makes the blocked loop hold that lock, one the watchdog reads.
#[cfg(debug_assertions)]
pub fn spawn_test_hooks(health: &Arc<Health>) {
    let number = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let restarts = number(ideamill_health::ENV_RESTARTS).unwrap_or(0);
    if number("IDEAMILL_TEST_BLOCK_LOOP_COUNT").is_some_and(|n| restarts >= n) {
        return;
    }
    if let Some(after) = std::env::var("IDEAMILL_TEST_BLOCK_LOOP_AFTER")
        .ok()
        .and_then(|v| ideamill_core::duration::parse_duration(&v).ok())
    {
        let holding = std::env::var("IDEAMILL_TEST_BLOCK_LOOP_HOLDING").ok();
        let health = health.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::warn!(holding = ?holding, "Test hook: blocking the event loop for good");
            if let Some(lock) = holding {
                health.hold_forever(&lock);
            }
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        });
    }
}

/// Release builds have no test hooks: nothing to start.
#[cfg(not(debug_assertions))]
pub fn spawn_test_hooks(_health: &Arc<Health>) {}

/// The runtime's unpark hook: count wake-ups (for the idle-cost figures).
pub fn count_wakeup(health: &Arc<Health>) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &health.metrics;
    m.loop_wakeups.fetch_add(1, Relaxed);
    let parked = m.loop_parked_at_us.load(Relaxed);
    if mono_micros().saturating_sub(parked) >= 10_000 {
        m.loop_idle_wakeups.fetch_add(1, Relaxed);
    }
}

/// The runtime's park hook.
pub fn note_park(health: &Arc<Health>) {
    health
        .metrics
        .loop_parked_at_us
        .store(mono_micros(), std::sync::atomic::Ordering::Relaxed);
}

fn send_beat(pipe: &mut std::fs::File, health: &Health) {
    let beat = super::beat_pipe::Beat {
        mono: health.last_beat_mono(),
        started: health.process().is_some(),
    };
    super::beat_pipe::send(pipe, beat);
}
