//! Live updates: `/api/stream`, server-sent events. One poller per process
//! reads the store's change marker every second (and the verdict every few
//! seconds) while anyone is watching, and not at all otherwise; every
//! watcher gets `change` when something people see changed (the pages then
//! fetch their fragments again), the verdict with each, and a `ping` every
//! ten seconds, so that a page can tell a quiet mill from a server that
//! stopped answering.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use futures_util::Stream;
use ideamill_store::ChangeMarker;
use ideamill_sys::clock::now_millis;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::AppState;

/// How often the marker is read while someone watches.
const POLL: Duration = Duration::from_secs(1);
/// How often the verdict is judged while someone watches.
const VERDICT_EVERY: Duration = Duration::from_secs(5);
/// A `ping` when nothing changed for this long.
const PING: Duration = Duration::from_secs(10);

/// What watchers are told.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tick {
    /// Grows with every change.
    pub seq: u64,
    #[serde(skip)]
    marker: Option<ChangeMarker>,
    /// HEALTHY, DEGRADED, STALLED or DOWN.
    pub verdict: String,
    /// The first reason, in plain words (empty when healthy).
    pub reason: String,
}

pub struct Live {
    tx: watch::Sender<Tick>,
    started: AtomicBool,
    /// Wakes the poller: someone started watching, or this server changed
    /// something and the watchers should know at once.
    wake: Arc<Notify>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            tx: watch::Sender::new(Tick::default()),
            started: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Look again now (after a change made through this server).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    fn subscribe(&self, state: &AppState) -> watch::Receiver<Tick> {
        let rx = self.tx.subscribe();
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(poll(state.clone()));
        }
        self.wake.notify_one();
        rx
    }
}

/// The poller: reads only while someone watches.
async fn poll(s: AppState) {
    let mut verdict_at: Option<Instant> = None;
    loop {
        if s.live.tx.receiver_count() == 0 {
            // Idle: no reads, no wake-ups, until a watcher arrives.
            s.live.wake.notified().await;
            verdict_at = None;
            continue;
        }
        let mut tick = s.live.tx.borrow().clone();
        let mut changed = false;
        if let Ok(Ok(marker)) =
            tokio::time::timeout(Duration::from_secs(5), s.store.change_marker()).await
            && tick.marker != Some(marker)
        {
            tick.marker = Some(marker);
            changed = true;
        }
        if verdict_at.is_none_or(|t| t.elapsed() >= VERDICT_EVERY) {
            verdict_at = Some(Instant::now());
            let (v, _) = s.verdict(now_millis()).await;
            let level = v.verdict.as_str().to_string();
            let reason = v
                .reasons
                .first()
                .map_or(String::new(), |r| r.message.clone());
            if level != tick.verdict || reason != tick.reason {
                tick.verdict = level;
                tick.reason = reason;
                changed = true;
            }
        }
        if changed {
            tick.seq += 1;
            s.live.tx.send_replace(tick);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = s.live.wake.notified() => {}
        }
    }
}

fn event(tick: &Tick) -> Event {
    Event::default()
        .event("change")
        .data(serde_json::to_string(tick).unwrap_or_default())
}

/// `GET /api/stream`.
pub async fn stream(
    State(s): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.live.subscribe(&s);
    // The first message says what is, at once.
    let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if first {
            let tick = rx.borrow_and_update().clone();
            return Some((Ok(event(&tick)), (rx, false)));
        }
        tokio::select! {
            changed = rx.changed() => {
                changed.ok()?;
                let tick = rx.borrow_and_update().clone();
                Some((Ok(event(&tick)), (rx, false)))
            }
            _ = tokio::time::sleep(PING) => {
                Some((Ok(Event::default().event("ping").data(now_millis().to_string())), (rx, false)))
            }
        }
    });
    Sse::new(stream)
}
