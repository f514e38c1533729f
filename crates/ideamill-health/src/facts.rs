//! The facts the health verdict judges, gathered from the store and this
//! machine's status files: shared by `status`, `doctor`, the dashboard and
//! the alert monitor, so that all of them judge the same things.

use ideamill_core::{Config, Millis};
use ideamill_store::{EventFilter, Store, event_kind};

use ideamill_sys::fs::free_bytes;
use ideamill_sys::hostname;
use ideamill_sys::process::pid_alive;

use crate::StatusFile;
use crate::verdict::{EngineFile, Facts};

/// The cheap facts that `status` shares with `doctor`: status files, failure
/// rates, free disk, recent restarts. Failures to read them are left out.
pub async fn gather(config: &Config, store: &dyn Store, now: Millis) -> Facts {
    let window = ideamill_core::duration::millis(config.health.failure_window);
    let attempts = store.attempt_stats(now - window).await.unwrap_or_default();
    let restarts = store
        .events(&EventFilter {
            kind: Some(event_kind::ENGINE_RESTARTED.into()),
            since: Some(now - window),
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .map_or(0, |e| e.len() as u64);
    let gave_up = store
        .events(&EventFilter {
            kind: Some(event_kind::SUPERVISOR_GAVE_UP.into()),
            since: Some(now - window),
            limit: 1,
            ..EventFilter::default()
        })
        .await
        .ok()
        .and_then(|e| e.last().map(|e| e.message.clone()));
    let store_outages = store
        .events(&EventFilter {
            kind: Some(event_kind::STORE_OUTAGE.into()),
            since: Some(now - window),
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .ok()
        .and_then(|e| Some((e.len() as u64, e.last()?.message.clone())));
    let host = hostname();
    let dead_processes = store
        .processes()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.host == host && !pid_alive(p.pid))
        .map(|p| p.id)
        .collect();
    Facts {
        now,
        dead_processes,
        engines: engine_files(config),
        attempts,
        free_disk: free_bytes(&config.engine.data_dir),
        recent_restarts: restarts,
        gave_up,
        store_outages,
        ..Facts::default()
    }
}

/// This machine's engines, from their status files.
pub fn engine_files(config: &Config) -> Vec<EngineFile> {
    let host = hostname();
    StatusFile::read_all(&config.engine.data_dir)
        .into_iter()
        .filter(|f| f.host == host)
        .map(|f| EngineFile {
            alive: pid_alive(f.pid) && is_ideamill(f.pid),
            beat_age_ms: f.beat_age_ms(),
            file: f,
        })
        .collect()
}

/// Whether `pid` runs this program (a reused pid is not our engine).
fn is_ideamill(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("ideamill"))
        .unwrap_or(true)
}
