//! The last log lines, kept in memory by a `tracing` layer so that an
//! evidence bundle can show what the engine said just before it stalled,
//! even when nobody kept its stderr.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// A bounded ring of formatted log lines.
pub struct LogRing {
    lines: Mutex<VecDeque<String>>,
    capacity: usize,
}

impl LogRing {
    /// A ring that keeps the last `capacity` lines.
    pub fn new(capacity: usize) -> Arc<LogRing> {
        Arc::new(LogRing {
            lines: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        })
    }

    /// Add a line, dropping the oldest when full.
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Like [`push`](Self::push), but gives up (false) rather than wait
    /// long for a lock another thread holds: for the watchdog.
    pub fn try_push(&self, line: String) -> bool {
        for _ in 0..50 {
            if let Ok(mut lines) = self.lines.try_lock() {
                if lines.len() == self.capacity {
                    lines.pop_front();
                }
                lines.push_back(line);
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        false
    }

    /// Test-only (debug builds): hold the lock for good, as a thread stuck
    /// while logging would.
    #[cfg(debug_assertions)]
    pub fn hold_forever(&self) -> ! {
        let _held = self.lines.lock();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }

    /// The lines, oldest first; `None` if another thread holds the lock (a
    /// reader that must never block, like the watchdog, tries a few times).
    pub fn try_lines(&self) -> Option<Vec<String>> {
        for _ in 0..50 {
            if let Ok(lines) = self.lines.try_lock() {
                return Some(lines.iter().cloned().collect());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        None
    }

    /// A layer that records every event it sees into this ring.
    pub fn layer(self: &Arc<Self>) -> LogRingLayer {
        LogRingLayer { ring: self.clone() }
    }
}

/// The `tracing` layer that writes into a [`LogRing`].
pub struct LogRingLayer {
    ring: Arc<LogRing>,
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogRingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let now = ideamill_sys::clock::now_millis();
        let mut line = Line(format!(
            "{}.{:03} {:>5} {}",
            ideamill_sys::clock::utc_stamp(now),
            now.rem_euclid(1000),
            meta.level(),
            meta.target()
        ));
        event.record(&mut line);
        self.ring.push(line.0);
    }
}

/// The process's ring, shared by the tracing layer that `main` installs and
/// the watchdog that reads it.
pub fn global() -> Arc<LogRing> {
    static RING: std::sync::OnceLock<Arc<LogRing>> = std::sync::OnceLock::new();
    RING.get_or_init(|| LogRing::new(200)).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            ring.push(format!("line {i}"));
        }
        assert_eq!(
            ring.try_lines().unwrap(),
            vec!["line 2", "line 3", "line 4"]
        );
    }
}
