//! The status file: one per engine process, `<data_dir>/status/engine-<pid>.json`,
//! rewritten on every beat (in place under a `flock`, no fsync: it
//! describes a live process, which a crash makes stale anyway; see
//! `ideamill_sys::fs::overwrite_locked`), so that a supervisor,
//! `doctor` or a person can see, without the store, that the loop is alive
//! and what it is doing.

use std::path::{Path, PathBuf};

use ideamill_core::Millis;
use ideamill_store::StageCounts;
use serde::{Deserialize, Serialize};

use crate::InFlight;
use crate::metrics::Counters;

/// What `<data_dir>/status/engine-<pid>.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    /// The engine's OS process id.
    pub pid: u32,
    /// The engine's process id in the store, once registered.
    pub process_id: Option<String>,
    /// The host name.
    pub host: String,
    /// `ideamill <version>` of the binary.
    pub version: String,
    /// Wall clock, ms since the epoch.
    pub started_at: Millis,
    /// Wall clock of the last beat of the event loop.
    pub beat_at: Millis,
    /// CLOCK_MONOTONIC ms of the last beat: what ages are computed from on
    /// this machine, immune to clock changes.
    pub beat_mono: Millis,
    /// Beats since start.
    pub beats: u64,
    /// How often the loop beats, in ms.
    pub pulse_ms: u64,
    /// `health.stall_after` in ms.
    pub stall_after_ms: u64,
    /// How late the loop's last timer fired, and the worst since start.
    pub loop_lag_ms: f64,
    /// The worst loop lag since start, in ms.
    pub loop_lag_max_ms: f64,
    /// Times the event loop and the watchdog thread woke (idle cost).
    pub loop_wakeups: u64,
    /// Loop wake-ups that ended a sleep of 10 ms or more.
    #[serde(default)]
    pub loop_idle_wakeups: u64,
    /// Times the watchdog thread woke.
    pub watchdog_wakeups: u64,
    /// Jobs by stage and state, as last read from the store.
    pub queue: Vec<StageCounts>,
    /// Jobs this process is running.
    pub in_flight: Vec<InFlight>,
    /// Totals since start, across restarts.
    pub counters: Counters,
    /// The HTTP listener's address, if it runs.
    pub listen: Option<String>,
    /// The supervisor's pid, when a supervisor started this engine.
    pub supervisor_pid: Option<u32>,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// Wall clock when the file was written, ms since the epoch.
    pub written_at: Millis,
    /// When a stage last could not start for lack of resources
    /// (file descriptors, processes, memory, disk space), and the error.
    /// (Written as `spawn_trouble` before 2026-12; read either way.)
    #[serde(default, alias = "spawn_trouble")]
    pub resource_trouble: Option<(Millis, String)>,
    /// What the trace exporter did (`[telemetry]`): spans exported and
    /// dropped, failed requests and the last failure; `None` while it has
    /// done nothing (or is off).
    #[serde(default)]
    pub telemetry: Option<TelemetryCounts>,
}

/// The trace exporter's figures, as `doctor` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryCounts {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans lost (full queue or failed request).
    pub dropped: u64,
    /// Failed export requests.
    pub failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// The status file of engine `pid` in `data_dir`.
pub fn path_for(data_dir: &Path, pid: u32) -> PathBuf {
    crate::status_dir(data_dir).join(format!("engine-{pid}.json"))
}

impl StatusFile {
    /// How old the beat is, by the monotonic clock.
    pub fn beat_age_ms(&self) -> Millis {
        (ideamill_sys::clock::mono_millis() - self.beat_mono).max(0)
    }

    /// Read and parse one status file.
    pub fn read(path: &Path) -> std::io::Result<StatusFile> {
        // A status file is a few KiB; anything far larger is not ours.
        let bytes = ideamill_sys::fs::read_locked(path, 1 << 20)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Every status file in a data folder (unreadable ones skipped: a file
    /// is read whole under its writer's lock, so a bad one is not ours).
    pub fn read_all(data_dir: &Path) -> Vec<StatusFile> {
        let Ok(entries) = std::fs::read_dir(crate::status_dir(data_dir)) else {
            return Vec::new();
        };
        let mut files: Vec<StatusFile> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("engine-") && name.ends_with(".json")
            })
            .filter_map(|e| StatusFile::read(&e.path()).ok())
            .collect();
        files.sort_by_key(|f| f.pid);
        files
    }

    /// Write so that a reader ([`StatusFile::read`]) sees the old content
    /// or the new, never a part, without putting the beat to sleep. Not
    /// synced: after a crash the file may be the old one or gone, and the
    /// process it describes is gone too.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        // Private to the mill's user: it names jobs, items and addresses.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        ideamill_sys::fs::overwrite_locked(path, &text, 0o600)
    }
}

/// Remove the status files of processes on this machine that are gone.
pub fn remove_dead(data_dir: &Path) {
    let host = ideamill_sys::hostname();
    for f in StatusFile::read_all(data_dir) {
        if f.host == host && !ideamill_sys::process::pid_alive(f.pid) {
            let _ = std::fs::remove_file(path_for(data_dir, f.pid));
        }
    }
}
