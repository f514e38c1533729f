//! `[health]`: hang detection, the supervisor, the HTTP listener and the
//! thresholds of the health verdict.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::section::{Got, Section};

pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(5);
/// Default `health.listen`: the loopback address, port 9464.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 256;
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(120);
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);

/// `[health]`: hang detection, the supervisor, the HTTP probes, and the
/// thresholds of the health verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// An engine whose event loop has not beaten for this long is stalled:
    /// its watchdog saves evidence and ends it, and the supervisor restarts
    /// it. Default 5s.
    pub stall_after: Duration,
    /// The HTTP listener for the dashboard, the API, /healthz, /readyz and
    /// /metrics; `None` when set to "off" (or ""). Default `127.0.0.1:9464`.
    pub listen: Option<SocketAddr>,
    /// Free space on the data folder's disk below which health is degraded.
    /// Default 256 MiB.
    pub min_free_disk_mb: u64,
    /// Runnable work older than this while engines have free slots is "not
    /// moving". Default 2m.
    pub stuck_after: Duration,
    /// The window over which failure rates and restarts are judged. Default 15m.
    pub failure_window: Duration,
    /// The supervisor gives up after this many restarts within
    /// `restart_window`. Default 5 in 60s.
    pub max_restarts: u32,
    /// The window `max_restarts` is counted over.
    pub restart_window: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            stall_after: DEFAULT_STALL_AFTER,
            listen: Some(DEFAULT_LISTEN),
            min_free_disk_mb: DEFAULT_MIN_FREE_DISK_MB,
            stuck_after: DEFAULT_STUCK_AFTER,
            failure_window: DEFAULT_FAILURE_WINDOW,
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_window: DEFAULT_RESTART_WINDOW,
        }
    }
}

/// What `listen` (or `ideamill run --listen`) says: an address, or `None`
/// for "off" (and ""); `Err` says what else it may be.
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    match text {
        "off" | "" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|_| format!("{addr:?} must be IP:PORT (e.g. \"127.0.0.1:9464\") or \"off\"")),
    }
}

pub(super) fn parse(s: &mut Section<'_>) -> HealthConfig {
    let d = HealthConfig::default();
    HealthConfig {
        stall_after: s.nonzero_duration("stall_after").or(d.stall_after),
        listen: match s.string("listen") {
            Got::Ok(text, span) => parse_listen(&text).unwrap_or_else(|why| {
                s.invalid("listen", span, why);
                d.listen
            }),
            Got::Absent | Got::Bad => d.listen,
        },
        min_free_disk_mb: s
            .integer("min_free_disk_mb", 0, i64::MAX)
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(d.min_free_disk_mb),
        stuck_after: s.nonzero_duration("stuck_after").or(d.stuck_after),
        failure_window: s.nonzero_duration("failure_window").or(d.failure_window),
        max_restarts: s.count("max_restarts", 1000, d.max_restarts),
        restart_window: s.nonzero_duration("restart_window").or(d.restart_window),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::testing::{STAGE, check_errors, config};

    #[test]
    fn health_table() {
        let c = config(&format!(
            "[health]\nstall_after = \"2s\"\nlisten = \"off\"\nmin_free_disk_mb = 0\nmax_restarts = 2\n{STAGE}"
        ));
        assert_eq!(
            c.health,
            HealthConfig {
                stall_after: Duration::from_secs(2),
                listen: None,
                min_free_disk_mb: 0,
                max_restarts: 2,
                ..HealthConfig::default()
            }
        );
        assert_eq!(config(STAGE).health, HealthConfig::default());
        check_errors(
            &format!("[health]\nlisten = \"localhost\"\nstall_after = \"0s\"\nbeat = 1\n{STAGE}"),
            &[
                "2:10: [health]: `listen` \"localhost\" must be IP:PORT (e.g. \"127.0.0.1:9464\") or \"off\"",
                "3:15: [health]: `stall_after` must be greater than 0s",
                "4:1: unknown key `beat` in [health]; expected one of: stall_after, listen, \
                 min_free_disk_mb, stuck_after, failure_window, max_restarts, restart_window",
            ],
        );
    }

    #[test]
    fn listen_is_an_address() {
        let c = config(&format!("[health]\nlisten = \"[::1]:0\"\n{STAGE}"));
        assert_eq!(c.health.listen, Some("[::1]:0".parse().unwrap()));
        assert_eq!(
            config(&format!("[health]\nlisten = \"\"\n{STAGE}"))
                .health
                .listen,
            None
        );
        assert_eq!(parse_listen("127.0.0.1:9464"), Ok(Some(DEFAULT_LISTEN)));
    }
}
