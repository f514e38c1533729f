//! `[engine]`: where the mill keeps its state and work, and the timing of
//! leases, heartbeats, shutdown and polling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::section::{Section, shown};

/// Default `engine.data_dir`, relative to the config's folder.
pub const DEFAULT_DATA_DIR: &str = ".ideamill";
/// Default `engine.workspace`, relative to the config's folder.
pub const DEFAULT_WORKSPACE: &str = "workspace";
/// Default `engine.inbox`, relative to the config's folder.
pub const DEFAULT_INBOX: &str = "inbox";
/// Default `engine.lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Default `engine.heartbeat`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// Default `engine.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default `engine.poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// `[engine]`: folders, leases and timing of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Where the database (by default), status files and wake sockets live.
    /// Default `<root>/.ideamill`.
    pub data_dir: PathBuf,
    /// Each item gets `<workspace>/<item-id>/`. Default `<root>/workspace`.
    pub workspace: PathBuf,
    /// Default `<root>/inbox`.
    pub inbox: PathBuf,
    /// A job whose process stops renewing its lease for this long runs again. Default 15s.
    pub lease: Duration,
    /// How often a process renews its leases and beats. Default 2s; must be below `lease`.
    pub heartbeat: Duration,
    /// On SIGINT/SIGTERM, how long in-flight work may finish. Default 30s.
    pub shutdown_grace: Duration,
    /// The slow safety-net poll for work; wake-ups normally come sooner. Default 1s.
    pub poll_interval: Duration,
    /// Finished items older than this are pruned. Default: never.
    pub retention: Option<Duration>,
}

pub(super) fn parse(s: &mut Section<'_>, root: &Path) -> EngineConfig {
    let data_dir = s.path("data_dir", root, root.join(DEFAULT_DATA_DIR));
    let workspace = s.path("workspace", root, root.join(DEFAULT_WORKSPACE));
    let inbox = s.path("inbox", root, root.join(DEFAULT_INBOX));
    let lease = s.nonzero_duration("lease").checkable(DEFAULT_LEASE);
    let heartbeat = s.nonzero_duration("heartbeat").checkable(DEFAULT_HEARTBEAT);
    if let (Some((lease, lease_span)), Some((heartbeat, heartbeat_span))) = (lease, heartbeat) {
        // A lease renewed no more often than it lasts would expire between
        // renewals, and live jobs would be run twice.
        if heartbeat >= lease {
            let span = heartbeat_span.or(lease_span).unwrap_or(s.span);
            s.invalid(
                "heartbeat",
                span,
                format_args!(
                    "({}) must be less than `lease` ({})",
                    shown(heartbeat, heartbeat_span),
                    shown(lease, lease_span)
                ),
            );
        }
    }
    EngineConfig {
        data_dir,
        workspace,
        inbox,
        lease: lease.map_or(DEFAULT_LEASE, |(d, _)| d),
        heartbeat: heartbeat.map_or(DEFAULT_HEARTBEAT, |(d, _)| d),
        shutdown_grace: s.duration("shutdown_grace").or(DEFAULT_SHUTDOWN_GRACE),
        poll_interval: s
            .nonzero_duration("poll_interval")
            .or(DEFAULT_POLL_INTERVAL),
        retention: s.duration("retention").ok(),
    }
}

impl EngineConfig {
    /// How often an engine that runs nothing, and saw nothing runnable,
    /// touches the store: a third of `lease` (other processes' expired
    /// leases are then reaped at most that late), at most 5 s (its row
    /// stays fresh well within what `status` calls silent: 3 beats, at least
    /// 10 s), and never more often than `heartbeat`.
    pub fn idle_beat(&self) -> Duration {
        (self.lease / 3)
            .min(Duration::from_secs(5))
            .max(self.heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::parse;
    use crate::config::testing::{STAGE, check_errors};

    fn check_paths(path: &str, engine: &str, expected: [&str; 3]) {
        let text = format!("[engine]\n{engine}\n{STAGE}");
        let config = parse(&text, Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
        let engine = &config.engine;
        let actual =
            [&engine.data_dir, &engine.workspace, &engine.inbox].map(|p| p.display().to_string());
        assert_eq!(actual, expected, "config:\n{text}");
    }

    #[test]
    fn path_resolution() {
        check_paths(
            "/proj/ideamill.toml",
            "",
            ["/proj/.ideamill", "/proj/workspace", "/proj/inbox"],
        );
        check_paths(
            "/proj/ideamill.toml",
            "data_dir = \"state\"\nworkspace = \"./work/../ws\"\ninbox = \"../shared/inbox\"",
            ["/proj/state", "/proj/ws", "/shared/inbox"],
        );
        check_paths(
            "/proj/ideamill.toml",
            "data_dir = \"/var/lib/ideamill\"\nworkspace = \"/tmp/ws/\"\ninbox = \"/../../in\"",
            ["/var/lib/ideamill", "/tmp/ws", "/in"],
        );
        check_paths(
            "/a/./b/ideamill.toml",
            "inbox = \"c\"",
            ["/a/b/.ideamill", "/a/b/workspace", "/a/b/c"],
        );
        check_errors(
            &format!("[engine]\ninbox = \"\"\n{STAGE}"),
            &["2:9: [engine]: `inbox` must not be empty"],
        );
    }

    fn check_idle_beat(engine: &str, expected_ms: u64) {
        let text = format!("[engine]\n{engine}\n{STAGE}");
        let config = parse(&text, Path::new("/p/ideamill.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.engine.idle_beat(),
            Duration::from_millis(expected_ms),
            "config:\n{text}"
        );
    }

    #[test]
    fn idle_beat() {
        check_idle_beat("", 5_000);
        check_idle_beat("lease = \"3s\"\nheartbeat = \"200ms\"", 1_000);
        check_idle_beat("lease = \"60s\"\nheartbeat = \"10s\"", 10_000);
        check_idle_beat("lease = \"60s\"\nheartbeat = \"1s\"", 5_000);
    }
}
