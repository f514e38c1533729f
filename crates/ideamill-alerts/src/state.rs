//! What the alert monitor remembers across restarts: the last event it read,
//! the last verdict it saw, and when each (target, key) was last sent, with
//! how many were held back since. Kept in one small JSON file, written
//! temp → fsync → rename → fsync of the folder.

use std::collections::BTreeMap;
use std::path::Path;

use ideamill_core::Millis;
use serde::{Deserialize, Serialize};

use crate::alert::Seen;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct State {
    /// The newest event read: (id, at).
    pub cursor: Option<(i64, Millis)>,
    /// The verdict at the last look.
    #[serde(default)]
    pub seen: Seen,
    /// When each `target\u{1f}key` was last sent (or its delivery started).
    #[serde(default)]
    sent: BTreeMap<String, Millis>,
    /// How many alerts with that key were held back since.
    #[serde(default)]
    held: BTreeMap<String, u64>,
    /// Changed since the last save.
    #[serde(skip)]
    pub dirty: bool,
}

fn slot(target: &str, key: &str) -> String {
    format!("{target}\u{1f}{key}")
}

/// Entries older than this are forgotten (no cooldown is that long).
const FORGET_AFTER: Millis = 7 * 24 * 3_600_000;

impl State {
    /// The saved state, or a fresh one when there is none or it does not
    /// read (the worst that costs is a repeated alert).
    pub fn load(path: &Path) -> State {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "The alert state in {} does not read ({e}); starting afresh",
                    path.display()
                );
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        // 0o666 less the umask, as `File::create` would.
        ideamill_sys::fs::write_atomic(path, &text, 0o666)
    }

    /// Whether an alert with `key` goes to `target` now: `Some(held)` (how
    /// many were held back since the last one sent) and the send is noted,
    /// or `None` while the cooldown holds, and it is counted.
    pub fn admit(&mut self, target: &str, key: &str, cooldown: Millis, now: Millis) -> Option<u64> {
        let slot = slot(target, key);
        self.dirty = true;
        match self.sent.get(&slot) {
            Some(&at) if now - at < cooldown && now >= at => {
                *self.held.entry(slot).or_insert(0) += 1;
                None
            }
            _ => {
                self.sent.insert(slot.clone(), now);
                Some(self.held.remove(&slot).unwrap_or(0))
            }
        }
    }

    /// A delivery failed for good: forget the send, so that the next alert
    /// with this key goes out at once, saying `held` were not delivered.
    pub fn failed(&mut self, target: &str, key: &str, held: u64) {
        let slot = slot(target, key);
        self.sent.remove(&slot);
        *self.held.entry(slot).or_insert(0) += held;
        self.dirty = true;
    }

    pub fn prune(&mut self, now: Millis) {
        self.sent.retain(|_, at| now - *at < FORGET_AFTER);
        let sent = &self.sent;
        self.held.retain(|slot, _| sent.contains_key(slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_holds_back_and_counts() {
        let mut s = State::default();
        assert_eq!(s.admit("a", "k", 100, 1000), Some(0));
        assert_eq!(s.admit("a", "k", 100, 1050), None);
        assert_eq!(s.admit("a", "k", 100, 1099), None);
        // Another target or key is another alert.
        assert_eq!(s.admit("b", "k", 100, 1050), Some(0));
        assert_eq!(s.admit("a", "j", 100, 1050), Some(0));
        // After the cooldown: sent, saying two were held back.
        assert_eq!(s.admit("a", "k", 100, 1100), Some(2));
        assert_eq!(s.admit("a", "k", 100, 1150), None);
        // A failed delivery lets the next one through at once.
        s.failed("a", "k", 1);
        assert_eq!(s.admit("a", "k", 100, 1160), Some(2));
        // A clock that went back does not hold alerts forever.
        assert_eq!(s.admit("a", "k", 100, 500), Some(0));
    }

    #[test]
    fn saved_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/alerts.json");
        let mut s = State {
            cursor: Some((7, 1234)),
            ..State::default()
        };
        s.admit("a", "k", 100, 1000);
        s.admit("a", "k", 100, 1001);
        s.save(&path).unwrap();
        let mut back = State::load(&path);
        assert_eq!(back.cursor, Some((7, 1234)));
        assert_eq!(back.admit("a", "k", 100, 1100), Some(1));
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(State::load(&path).cursor, None);
        let mut old = back.clone();
        old.prune(1100 + FORGET_AFTER);
        assert!(old.sent.is_empty() && old.held.is_empty());
    }
}
