//! ideamill's alerts. A monitor inside `ideamill run` reads new events (a
//! stall, a restart, a failed item, a budget) and judges the health verdict
//! (its changes, a stuck queue); each alert goes to the `[[alerts]]` targets
//! that listen for it: a JSON webhook, a Slack-compatible webhook, an ntfy
//! topic.
//!
//! The same alert (same key, same target) is sent once per cooldown; what
//! was held back meanwhile is counted in the next one. Deliveries run in
//! tasks of their own with retries, so nothing the engine does ever waits
//! for a webhook; a delivery that fails for good becomes an `alert_failed`
//! event. What the monitor has seen and sent is kept in
//! `<data_dir>/alerts.json`, so that a restarted engine neither repeats old
//! alerts nor misses the restart itself.

pub mod alert;
mod state;
pub mod target;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ideamill_core::{Config, Millis};
use ideamill_health::facts;
use ideamill_health::verdict::judge;
use ideamill_store::{EventFilter, NewEvent, Store};
use ideamill_sys::clock::now_millis;
use ideamill_sys::hostname;
use tokio_util::sync::CancellationToken;

pub use alert::{Alert, Severity};
use state::State;
pub use target::{Delivery, Origin, Target};

/// Event kinds this crate records.
pub mod event_kind {
    /// An alert was delivered to a target.
    pub const ALERT_SENT: &str = "alert_sent";
    /// An alert could not be delivered to a target after every try.
    pub const ALERT_FAILED: &str = "alert_failed";
}

/// Deliveries in flight at once; more are held back (and counted) rather
/// than queued without bound.
const MAX_IN_FLIGHT: usize = 32;
/// New events read per look; a flood beyond this is summarized by the
/// cooldown anyway.
const EVENTS_PER_LOOK: u32 = 500;

/// How often the monitor looks.
#[derive(Debug, Clone, Copy)]
pub struct MonitorOptions {
    /// New events are read this often.
    pub interval: Duration,
    /// The verdict is judged this often (it reads more).
    pub verdict_every: Duration,
}

impl MonitorOptions {
    /// Twice the heartbeat, within 1–10 s, for events; 15 s for the verdict
    /// (or the event interval, if longer).
    pub fn for_config(config: &Config) -> MonitorOptions {
        let interval =
            (config.engine.heartbeat * 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
        MonitorOptions {
            interval,
            verdict_every: interval.max(Duration::from_secs(15).min(interval * 4)),
        }
    }
}

/// The alert service of one process.
pub struct Alerts {
    targets: Vec<Target>,
    client: reqwest::Client,
    origin: Origin,
    store: Arc<dyn Store>,
    config: Arc<Config>,
    state_path: PathBuf,
    state: Mutex<State>,
    in_flight: AtomicUsize,
    /// Monitor rounds completed.
    looks: AtomicU64,
    /// When this process's alert service began: earlier events are history.
    started_at: Millis,
}

impl Alerts {
    /// The targets of `config`, their URLs resolved. Errors name the target
    /// and the variable, never a URL.
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>) -> Result<Arc<Alerts>, String> {
        let targets = config
            .alerts
            .iter()
            .map(Target::resolve)
            .collect::<Result<Vec<_>, _>>()?;
        ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("ideamill/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client for alerts: {e}"))?;
        let origin = Origin {
            project: config.root.file_name().map_or_else(
                || "ideamill".to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            host: hostname(),
            dashboard: config.web.url.clone(),
        };
        let state_path = config.engine.data_dir.join("alerts.json");
        let state = State::load(&state_path);
        Ok(Arc::new(Alerts {
            targets,
            client,
            origin,
            store,
            config,
            state_path,
            state: Mutex::new(state),
            in_flight: AtomicUsize::new(0),
            looks: AtomicU64::new(0),
            started_at: now_millis(),
        }))
    }

    /// The configured targets, in config order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Deliveries running now (at most 32). Zero means every alert
    /// dispatched so far has reached its receiver or failed for good.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// How many rounds [`Alerts::monitor`] has completed: new events read,
    /// the verdict judged when due, their alerts dispatched and the state
    /// saved. What has been seen can be waited on by this count instead of
    /// by a guessed time.
    pub fn looks(&self) -> u64 {
        self.looks.load(Ordering::SeqCst)
    }

    /// Send `alert` to every target that hears it, unless its cooldown holds
    /// it back. Returns at once: deliveries run in tasks of their own.
    pub fn dispatch(self: &Arc<Self>, alert: &Alert) {
        let now = now_millis();
        for (i, target) in self.targets.iter().enumerate() {
            if !target.hears(alert) {
                continue;
            }
            let cooldown = ideamill_core::duration::millis(target.cooldown);
            let Some(held) = lock(&self.state).admit(&target.name, &alert.key, cooldown, now)
            else {
                tracing::debug!(
                    "Alert `{}` to `{}` held back by its cooldown",
                    alert.key,
                    target.name
                );
                continue;
            };
            if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                lock(&self.state).failed(&target.name, &alert.key, held + 1);
                tracing::warn!(
                    "Alert `{}` to `{}` held back: {MAX_IN_FLIGHT} deliveries are already in flight",
                    alert.key,
                    target.name
                );
                continue;
            }
            let this = self.clone();
            let alert = alert.clone();
            tokio::spawn(async move {
                let target = &this.targets[i];
                let request = target.request(&alert, held, &this.origin);
                let delivery = target.deliver(&this.client, &request).await;
                this.in_flight.fetch_sub(1, Ordering::SeqCst);
                this.delivered(&alert, &delivery, held).await;
            });
        }
    }

    /// Record how a delivery went: an event either way; a failure also lets
    /// the next alert with this key go out at once.
    async fn delivered(&self, alert: &Alert, d: &Delivery, held: u64) {
        let (kind, message) = match &d.result {
            Ok(status) => {
                tracing::info!(
                    "Alert \"{}\" sent to `{}` (HTTP {status})",
                    alert.title,
                    d.target
                );
                (
                    event_kind::ALERT_SENT,
                    format!(
                        "Alert \"{}\" sent to `{}`{}",
                        alert.title,
                        d.target,
                        if held > 0 {
                            format!(" ({held} like it held back by the cooldown)")
                        } else {
                            String::new()
                        }
                    ),
                )
            }
            Err(e) => {
                lock(&self.state).failed(&d.target, &alert.key, held + 1);
                tracing::warn!(
                    "Alert \"{}\" could not be sent to `{}` after {} tr{}: {e}",
                    alert.title,
                    d.target,
                    d.tries,
                    if d.tries == 1 { "y" } else { "ies" }
                );
                (
                    event_kind::ALERT_FAILED,
                    format!(
                        "Alert \"{}\" could not be sent to `{}` after {} tr{}: {e}",
                        alert.title,
                        d.target,
                        d.tries,
                        if d.tries == 1 { "y" } else { "ies" }
                    ),
                )
            }
        };
        let event = NewEvent {
            at: now_millis(),
            kind,
            item_id: alert.item_id,
            job_id: None,
            process: None,
            message,
        };
        if let Err(e) = self.store.record_event(&event).await {
            tracing::warn!("Could not record the alert's event: {e}");
        }
    }

    /// `ideamill alert test`: a test alert to every target (or the one
    /// named), past any cooldown; waits for each delivery.
    pub async fn send_test(&self, only: Option<&str>) -> Vec<Delivery> {
        let alert = alert::test_alert(now_millis());
        let targets: Vec<&Target> = self
            .targets
            .iter()
            .filter(|t| only.is_none_or(|n| n == t.name))
            .collect();
        let requests: Vec<_> = targets
            .iter()
            .map(|t| t.request(&alert, 0, &self.origin))
            .collect();
        // All targets at once: one slow target does not delay the others.
        let deliveries = targets
            .iter()
            .zip(&requests)
            .map(|(t, r)| t.deliver(&self.client, r));
        futures_util::future::join_all(deliveries).await
    }

    /// Watch events and the verdict until `stop`, dispatching what they call
    /// for. Runs as a task of the engine's loop; its store reads are the
    /// cheap ones `status` makes.
    pub async fn monitor(self: Arc<Self>, options: MonitorOptions, stop: CancellationToken) {
        if self.targets.is_empty() {
            return;
        }
        tracing::info!(
            "Alerts go to {}",
            self.targets
                .iter()
                .map(|t| format!("`{}` ({}, {})", t.name, t.kind.as_str(), t.host()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut last_verdict: Option<tokio::time::Instant> = None;
        loop {
            let now = now_millis();
            self.look_at_events().await;
            if last_verdict.is_none_or(|t| t.elapsed() >= options.verdict_every) {
                last_verdict = Some(tokio::time::Instant::now());
                self.look_at_verdict(now).await;
            }
            self.save().await;
            self.looks.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(options.interval) => {}
            }
        }
        self.save().await;
    }

    async fn look_at_events(self: &Arc<Self>) {
        let cursor = lock(&self.state).cursor;
        let (cursor_id, cursor_at) = match cursor {
            Some(c) => c,
            None => match self.first_cursor().await {
                Some(c) => {
                    let mut s = lock(&self.state);
                    s.cursor = Some(c);
                    s.dirty = true;
                    c
                }
                None => return,
            },
        };
        // Events are stamped by the process that records them: look a minute
        // further back than the cursor's own time, and go by id.
        let events = match self
            .store
            .events(&EventFilter {
                since: Some(cursor_at - 60_000),
                limit: EVENTS_PER_LOOK,
                ..EventFilter::default()
            })
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("Alerts: cannot read events: {e}");
                return;
            }
        };
        let mut newest = (cursor_id, cursor_at);
        for e in events.iter().filter(|e| e.id > cursor_id) {
            newest = newest.max((e.id, e.at));
            if let Some(alert) = alert::from_event(e) {
                self.dispatch(&alert);
            }
        }
        if newest.0 > cursor_id {
            let mut s = lock(&self.state);
            s.cursor = Some(newest);
            s.dirty = true;
        }
    }

    /// Where the first look ever starts: after the last event recorded
    /// before this service began (history is not news; what happened since
    /// is, even if it came before the first look).
    async fn first_cursor(&self) -> Option<(i64, Millis)> {
        let fresh = self
            .store
            .events(&EventFilter {
                since: Some(self.started_at),
                limit: EVENTS_PER_LOOK,
                ..EventFilter::default()
            })
            .await
            .ok()?;
        if let Some(first) = fresh.first() {
            return Some((first.id - 1, self.started_at));
        }
        let newest = self
            .store
            .events(&EventFilter {
                limit: 1,
                ..EventFilter::default()
            })
            .await
            .ok()?;
        Some(newest.last().map_or((0, self.started_at), |e| (e.id, e.at)))
    }

    async fn look_at_verdict(self: &Arc<Self>, now: Millis) {
        let mut f = facts::gather(&self.config, &*self.store, now).await;
        match self.store.status(now).await {
            Ok(s) => f.snapshot = Some(s),
            Err(e) => f.store_error = Some(e.to_string()),
        }
        let verdict = judge(&self.config, &f);
        let seen = lock(&self.state).seen.clone();
        for alert in alert::from_verdict(&seen, &verdict, now) {
            self.dispatch(&alert);
        }
        let mut s = lock(&self.state);
        let now_seen = alert::Seen::of(&verdict);
        if s.seen != now_seen {
            s.seen = now_seen;
            s.dirty = true;
        }
    }

    /// Write the state when it changed, off the loop.
    async fn save(&self) {
        let snapshot = {
            let mut s = lock(&self.state);
            if !s.dirty {
                return;
            }
            s.dirty = false;
            s.prune(now_millis());
            s.clone()
        };
        let path = self.state_path.clone();
        let problem = match tokio::task::spawn_blocking(move || snapshot.save(&path)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            "Could not save the alert state in {}: {problem}",
            self.state_path.display()
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// rustls needs a process-wide crypto provider when reqwest is built without
/// its own (ring, as for the model providers).
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
