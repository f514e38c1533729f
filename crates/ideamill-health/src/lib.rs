//! Health of an ideamill process, without its runtime: the shared state an
//! engine's tasks write and its watchdog reads (`Health`), the metrics
//! registry and its Prometheus text, the ring of recent log lines, the
//! status file's format, the facts gathered from the store and this
//! machine, giving freed memory back and unmapping idle code (`memory`),
//! and the pure verdict (HEALTHY / DEGRADED / STALLED / DOWN) shared by
//! `status`, `doctor`, the probes, the dashboard and the alerts. The
//! engine produces the beat (`pulse`) and watches it (`watchdog`); the web
//! server and the alert monitor only read, through this crate.

pub mod facts;
pub mod logring;
pub mod memory;
pub mod metrics;
pub mod status_file;
pub mod verdict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ideamill_core::{AttemptOutcome, Config, JobId, Millis};
use ideamill_store::{ClaimedJob, ProcessInfo, StageCounts};
use serde::{Deserialize, Serialize};

use ideamill_sys::clock::{mono_millis, now_millis as wall_millis};

pub use logring::{LogRing, LogRingLayer};
pub use metrics::{LlmCall, Metrics};
pub use status_file::StatusFile;

/// The exit code of an engine whose watchdog found its event loop stalled
/// (EX_SOFTWARE). The supervisor restarts it; under systemd,
/// `Restart=on-failure` does.
pub const STALL_EXIT_CODE: i32 = 70;

/// Set by the supervisor on the engine it starts: the supervisor's pid.
pub const ENV_SUPERVISOR: &str = "IDEAMILL_SUPERVISOR_PID";
/// Set by the supervisor: restarts and stalls so far, so that the engine's
/// metrics count across restarts.
pub const ENV_RESTARTS: &str = "IDEAMILL_RESTARTS";
/// Set by the supervisor: stalls detected so far (see [`ENV_RESTARTS`]).
pub const ENV_STALLS: &str = "IDEAMILL_STALLS";

/// A job this process is running, for status files and evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The job's id in the store.
    pub job_id: JobId,
    /// Its item's id.
    pub item_id: i64,
    /// The stage it runs.
    pub stage: String,
    /// Its try, from 1.
    pub attempt: u32,
    /// Its gate round, from 1.
    pub round: u32,
    /// Wall-clock start, ms since the epoch.
    pub started_at: Millis,
    /// How long it has run, as of the status file's beat.
    #[serde(default)]
    pub running_ms: u64,
}

/// Where the status files of a data folder live.
pub fn status_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("status")
}

/// Where evidence bundles of a data folder live.
pub fn evidence_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("evidence")
}

/// The health state of one engine process, shared by the runtime's tasks
/// (which write it) and the watchdog thread (which only reads it, and never
/// waits for a lock the runtime might hold).
pub struct Health {
    /// `health.stall_after`: a loop that has not beaten for this long is stalled.
    pub stall_after: Duration,
    /// How often the pulse beats: the heartbeat, but at least twice per
    /// `stall_after`.
    pub pulse_every: Duration,
    /// The monotonic instant (ms) from which beats are counted, shared by the
    /// pulse and the engine's heartbeat so that their ticks coincide.
    pub origin_mono: Millis,
    /// The data folder, where status files and evidence bundles go.
    pub data_dir: PathBuf,
    /// Wall clock when this process started, ms since the epoch.
    pub started_at: Millis,
    /// The HTTP listener's address, once it is bound.
    pub listen: Mutex<Option<String>>,
    last_beat_mono: AtomicU64,
    last_beat_wall: AtomicU64,
    beats: AtomicU64,
    lag_last_us: AtomicU64,
    lag_max_us: AtomicU64,
    /// Counters and histograms for `/metrics`.
    pub metrics: Metrics,
    in_flight: Mutex<BTreeMap<JobId, InFlight>>,
    queue: Mutex<Vec<StageCounts>>,
    process: Mutex<Option<ProcessInfo>>,
    /// The last log lines, for evidence bundles.
    pub log: std::sync::Arc<LogRing>,
    /// The config in force, as shown in evidence bundles.
    pub config_text: String,
    /// The supervisor's pid, when a supervisor started this engine.
    pub supervisor_pid: Option<u32>,
    /// When a stage last could not start for lack of resources,
    /// and why: the stage runner's record, read without waiting.
    resource_trouble: ResourceTrouble,
}

/// Where [`Health`] learns of the last failure to start a stage's program
/// (the stages crate keeps it); it must not wait for a lock.
pub type ResourceTrouble = fn() -> Option<(Millis, String)>;

impl Health {
    /// The state of a process that runs `config`; it reports no spawn
    /// trouble until [`with_resource_trouble`](Self::with_resource_trouble) says
    /// where to find it.
    pub fn new(config: &Config, log: std::sync::Arc<LogRing>) -> Health {
        let stall_after = config.health.stall_after;
        let pulse_every = config
            .engine
            .heartbeat
            .min(stall_after / 2)
            .max(Duration::from_millis(50));
        let now_mono = mono_millis();
        let env_u64 = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let metrics = Metrics::new(config);
        metrics
            .restarts
            .store(env_u64(ENV_RESTARTS), Ordering::Relaxed);
        metrics
            .stalls_detected
            .store(env_u64(ENV_STALLS), Ordering::Relaxed);
        metrics.evidence_bundles.store(
            count_dirs(&evidence_dir(&config.engine.data_dir)),
            Ordering::Relaxed,
        );
        Health {
            stall_after,
            pulse_every,
            origin_mono: now_mono,
            data_dir: config.engine.data_dir.clone(),
            started_at: wall_millis(),
            listen: Mutex::new(None),
            last_beat_mono: AtomicU64::new(now_mono as u64),
            last_beat_wall: AtomicU64::new(wall_millis() as u64),
            beats: AtomicU64::new(0),
            lag_last_us: AtomicU64::new(0),
            lag_max_us: AtomicU64::new(0),
            metrics,
            in_flight: Mutex::new(BTreeMap::new()),
            queue: Mutex::new(Vec::new()),
            process: Mutex::new(None),
            log,
            config_text: format!("{:#?}", config.redacted()),
            supervisor_pid: std::env::var(ENV_SUPERVISOR)
                .ok()
                .and_then(|v| v.parse().ok()),
            resource_trouble: || None,
        }
    }

    /// Report `source`'s spawn trouble in status files and evidence.
    pub fn with_resource_trouble(mut self, source: ResourceTrouble) -> Health {
        self.resource_trouble = source;
        self
    }

    /// The runtime is alive: called by the pulse, from inside the runtime.
    pub fn beat(&self, lag: Duration) {
        self.last_beat_mono
            .store(mono_millis() as u64, Ordering::SeqCst);
        self.last_beat_wall
            .store(wall_millis() as u64, Ordering::SeqCst);
        self.beats.fetch_add(1, Ordering::Relaxed);
        let us = lag.as_micros() as u64;
        self.lag_last_us.store(us, Ordering::Relaxed);
        self.lag_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Monotonic ms of the last beat.
    pub fn last_beat_mono(&self) -> Millis {
        self.last_beat_mono.load(Ordering::SeqCst) as Millis
    }

    /// Wall clock of the last beat, ms since the epoch.
    pub fn last_beat_wall(&self) -> Millis {
        self.last_beat_wall.load(Ordering::SeqCst) as Millis
    }

    /// How long ago the runtime last beat.
    pub fn beat_age(&self) -> Duration {
        Duration::from_millis((mono_millis() - self.last_beat_mono()).max(0) as u64)
    }

    /// Beats since the process started.
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// The last measured loop lag and the largest since the last call to
    /// `take_lag_max`.
    pub fn lag(&self) -> (Duration, Duration) {
        (
            Duration::from_micros(self.lag_last_us.load(Ordering::Relaxed)),
            Duration::from_micros(self.lag_max_us.load(Ordering::Relaxed)),
        )
    }

    /// Record the process row this engine registered.
    pub fn set_process(&self, p: &ProcessInfo) {
        *lock(&self.process) = Some(p.clone());
    }

    /// The process row, if registered and the lock is free (never waits).
    pub fn process(&self) -> Option<ProcessInfo> {
        self.process.try_lock().ok().and_then(|p| p.clone())
    }

    /// Record the queue's counts per stage, as last read from the store.
    pub fn set_queue(&self, queue: Vec<StageCounts>) {
        *lock(&self.queue) = queue;
    }

    /// The queue's counts per stage, as last read from the store.
    pub fn queue(&self) -> Vec<StageCounts> {
        lock(&self.queue).clone()
    }

    /// A job was claimed and is about to run.
    pub fn job_started(&self, job: &ClaimedJob) {
        self.metrics.job_started(
            &job.stage,
            Duration::from_millis((job.claimed_at - job.run_at).max(0) as u64),
        );
        lock(&self.in_flight).insert(
            job.id,
            InFlight {
                job_id: job.id,
                item_id: job.item_id,
                stage: job.stage.clone(),
                attempt: job.attempt,
                round: job.round,
                started_at: job.claimed_at,
                running_ms: 0,
            },
        );
    }

    /// A job's task ended (finished, cancelled or given back).
    pub fn job_ended(&self, job: JobId) {
        lock(&self.in_flight).remove(&job);
    }

    /// An attempt's outcome was committed.
    pub fn job_finished(&self, stage: &str, outcome: AttemptOutcome, took: Duration) {
        self.metrics.job_finished(stage, outcome, took);
    }

    /// The jobs in flight, as of `now`. `None` when the list is locked (the
    /// watchdog must never wait for the runtime).
    pub fn in_flight(&self, now: Millis) -> Option<Vec<InFlight>> {
        let map = self.in_flight.try_lock().ok()?;
        Some(
            map.values()
                .map(|j| InFlight {
                    running_ms: (now - j.started_at).max(0) as u64,
                    ..j.clone()
                })
                .collect(),
        )
    }

    /// The status file's content without waiting for any lock: what
    /// another thread holds is left empty. For the watchdog.
    pub fn snapshot_without_waiting(&self) -> StatusFile {
        self.snapshot_with(false)
    }

    /// Test-only (debug builds): hold one of the locks the watchdog reads,
    /// for good, as a loop stuck while holding it would.
    #[cfg(debug_assertions)]
    pub fn hold_forever(&self, which: &str) {
        fn hold<T>(m: &Mutex<T>) -> ! {
            let _held = lock(m);
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        match which {
            "log" => self.log.hold_forever(),
            "metrics" => self.metrics.hold_forever(),
            "queue" => hold(&self.queue),
            "listen" => hold(&self.listen),
            "in_flight" => hold(&self.in_flight),
            "process" => hold(&self.process),
            _ => {}
        }
    }

    /// This process's status file.
    pub fn status_path(&self) -> PathBuf {
        status_file::path_for(&self.data_dir, std::process::id())
    }

    /// The status file's content now.
    pub fn snapshot(&self) -> StatusFile {
        self.snapshot_with(true)
    }

    fn snapshot_with(&self, wait: bool) -> StatusFile {
        let now = wall_millis();
        let (lag, lag_max) = self.lag();
        let process = self.process();
        StatusFile {
            pid: std::process::id(),
            process_id: process.as_ref().map(|p| p.id.clone()),
            host: ideamill_sys::hostname(),
            version: concat!("ideamill ", env!("CARGO_PKG_VERSION")).to_string(),
            started_at: self.started_at,
            beat_at: self.last_beat_wall(),
            beat_mono: self.last_beat_mono(),
            beats: self.beats(),
            pulse_ms: self.pulse_every.as_millis() as u64,
            stall_after_ms: self.stall_after.as_millis() as u64,
            loop_lag_ms: lag.as_secs_f64() * 1000.0,
            loop_lag_max_ms: lag_max.as_secs_f64() * 1000.0,
            loop_wakeups: self.metrics.loop_wakeups.load(Ordering::Relaxed),
            loop_idle_wakeups: self.metrics.loop_idle_wakeups.load(Ordering::Relaxed),
            watchdog_wakeups: self.metrics.watchdog_wakeups.load(Ordering::Relaxed),
            queue: if wait {
                self.queue()
            } else {
                self.queue.try_lock().map(|q| q.clone()).unwrap_or_default()
            },
            in_flight: self.in_flight(now).unwrap_or_default(),
            counters: if wait {
                self.metrics.counters()
            } else {
                self.metrics.try_counters().unwrap_or_default()
            },
            listen: if wait {
                lock(&self.listen).clone()
            } else {
                self.listen.try_lock().ok().and_then(|l| l.clone())
            },
            supervisor_pid: self.supervisor_pid,
            rss_bytes: ideamill_sys::process::rss_bytes(),
            written_at: now,
            resource_trouble: (self.resource_trouble)(),
            telemetry: {
                let t = ideamill_telemetry::stats();
                (t.exported + t.dropped + t.failures > 0).then_some(status_file::TelemetryCounts {
                    exported: t.exported,
                    dropped: t.dropped,
                    failures: t.failures,
                    last_error: t.last_error,
                })
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn count_dirs(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count() as u64)
        .unwrap_or(0)
}
