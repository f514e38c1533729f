//! The chaos driver: at moments drawn from a seeded generator (exponential
//! gaps around `--chaos-every`), one fault at a time, each recorded with
//! when it began and, for outages, when the mill had its parts back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ideamill_core::Millis;
use ideamill_sys::clock::now_millis;
use serde::Serialize;

use super::Shared;
use super::mill::{Backend, STALL_AFTER, signal};

/// The faults, by their `--chaos` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Chaos {
    /// SIGKILL an engine; its supervisor starts another.
    EngineKill,
    /// SIGSTOP an engine for up to 2 × stall_after + 3 s, then SIGCONT.
    EngineStop,
    /// SIGKILL the main supervisor (its engine dies with it); start it
    /// again a few seconds later, as systemd would.
    SupervisorKill,
    /// PostgreSQL: SIGKILL one of the worker processes; start it again.
    WorkerKill,
    /// Own PostgreSQL cluster: stop the server, start it again.
    PgRestart,
    /// Fill the data disk to its last byte, free it 3–15 s later.
    DiskFull,
    /// Drop a malformed or hostile file into the inbox.
    InboxHostile,
    /// Send the API a round of malformed requests.
    ApiMalformed,
}

impl Chaos {
    pub const ALL: [Chaos; 8] = [
        Chaos::EngineKill,
        Chaos::EngineStop,
        Chaos::SupervisorKill,
        Chaos::WorkerKill,
        Chaos::PgRestart,
        Chaos::DiskFull,
        Chaos::InboxHostile,
        Chaos::ApiMalformed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Chaos::EngineKill => "engine-kill",
            Chaos::EngineStop => "engine-stop",
            Chaos::SupervisorKill => "supervisor-kill",
            Chaos::WorkerKill => "worker-kill",
            Chaos::PgRestart => "pg-restart",
            Chaos::DiskFull => "disk-full",
            Chaos::InboxHostile => "inbox-hostile",
            Chaos::ApiMalformed => "api-malformed",
        }
    }

    pub fn parse(name: &str) -> Option<Chaos> {
        Chaos::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether it takes a part of the mill away for a while (so runnable
    /// work may wait without any stall to detect).
    pub fn is_outage(self) -> bool {
        match self {
            Chaos::EngineKill
            | Chaos::SupervisorKill
            | Chaos::WorkerKill
            | Chaos::PgRestart
            | Chaos::DiskFull => true,
            // A stopped engine is a hang: the supervisor must find it.
            Chaos::EngineStop | Chaos::InboxHostile | Chaos::ApiMalformed => false,
        }
    }
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub kind: Chaos,
    pub at: Millis,
    /// When the mill had its parts back (outages and stops).
    pub end: Millis,
    pub detail: String,
}

/// Why some chaos cannot run here; `None` when it can.
pub fn unavailable(
    kind: Chaos,
    backend: &Backend,
    workers: u32,
    tmpfs: bool,
) -> Option<&'static str> {
    match kind {
        Chaos::WorkerKill if matches!(backend, Backend::Sqlite) => {
            Some("SQLite runs one worker process")
        }
        Chaos::WorkerKill if workers < 2 => Some("needs --workers 2 or more"),
        Chaos::PgRestart if !matches!(backend, Backend::OwnCluster(_)) => {
            Some("needs the soak's own PostgreSQL cluster (--store postgres)")
        }
        Chaos::DiskFull if !tmpfs => {
            Some("cannot mount a small tmpfs for the data folder (needs root)")
        }
        Chaos::WorkerKill | Chaos::PgRestart | Chaos::DiskFull => None,
        Chaos::EngineKill
        | Chaos::EngineStop
        | Chaos::SupervisorKill
        | Chaos::InboxHostile
        | Chaos::ApiMalformed => None,
    }
}

pub async fn drive(
    shared: Arc<Shared>,
    kinds: Vec<Chaos>,
    seed: u64,
    mean_gap: Duration,
    until: Instant,
) {
    if kinds.is_empty() {
        return;
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    loop {
        // Exponential gaps: faults arrive at random, sometimes close together.
        let gap = mean_gap.mul_f64(-(1.0 - rng.f64()).ln()).min(mean_gap * 4);
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(gap.min(left)).await;
        if Instant::now() >= until {
            return;
        }
        let kind = kinds[rng.usize(..kinds.len())];
        let at = now_millis();
        let detail = act(&shared, kind, &mut rng).await;
        let action = Action {
            kind,
            at,
            end: now_millis(),
            detail,
        };
        shared.say(&format!(
            "  chaos {:>7.1}s {}: {}",
            (action.at - shared.started_at) as f64 / 1e3,
            kind.name(),
            action.detail
        ));
        if let Ok(mut log) = shared.actions.lock() {
            log.push(action);
        }
    }
}

async fn act(shared: &Arc<Shared>, kind: Chaos, rng: &mut fastrand::Rng) -> String {
    match kind {
        Chaos::EngineKill => {
            let (index, pid) = match pick_engine(shared, rng) {
                Some(p) => p,
                None => return "no engine running: skipped".into(),
            };
            signal(pid, libc::SIGKILL);
            let back = wait_engine(shared, index, Some(pid)).await;
            format!("SIGKILL engine {pid} of run {index}; {back}")
        }
        Chaos::EngineStop => {
            let (index, pid) = match pick_engine(shared, rng) {
                Some(p) => p,
                None => return "no engine running: skipped".into(),
            };
            let Some(born) = ideamill_sys::process::read_stat(pid).map(|s| s.start_time) else {
                return "the engine had just gone: skipped".into();
            };
            let hold = Duration::from_millis(
                rng.u64(1000..=(STALL_AFTER * 2 + Duration::from_secs(3)).as_millis() as u64),
            );
            signal(pid, libc::SIGSTOP);
            tokio::time::sleep(hold).await;
            let same = ideamill_sys::process::read_stat(pid).is_some_and(|s| s.start_time == born);
            if same {
                signal(pid, libc::SIGCONT);
            }
            let fate = if same {
                "SIGCONT".to_string()
            } else {
                format!(
                    "replaced by its supervisor before SIGCONT; {}",
                    wait_engine(shared, index, Some(pid)).await
                )
            };
            format!(
                "SIGSTOP engine {pid} of run {index} for {:.1}s, {fate}",
                hold.as_secs_f64()
            )
        }
        Chaos::SupervisorKill | Chaos::WorkerKill => {
            let index = match kind {
                Chaos::SupervisorKill => 0,
                _ => {
                    let n = shared.mill.lock().map(|m| m.runs.len()).unwrap_or(1);
                    rng.usize(1..n.max(2))
                }
            };
            let pause = Duration::from_millis(rng.u64(500..5000));
            let killed = shared
                .mill
                .lock()
                .ok()
                .and_then(|mut m| m.kill_run(index, pause));
            let Some(pid) = killed else {
                return format!("run {index} was not running: skipped");
            };
            let back = wait_engine(shared, index, None).await;
            format!(
                "SIGKILL supervisor {pid} of run {index}, started again after {:.1}s; {back}",
                pause.as_secs_f64()
            )
        }
        Chaos::PgRestart => {
            let down = Duration::from_millis(rng.u64(1000..5000));
            let stopped = cluster_call(shared, |c| c.stop()).await;
            tokio::time::sleep(down).await;
            let started = cluster_call(shared, |c| c.start_again()).await;
            format!(
                "PostgreSQL stopped ({}) for {:.1}s, started ({})",
                outcome(&stopped),
                down.as_secs_f64(),
                outcome(&started)
            )
        }
        Chaos::DiskFull => {
            let hold = Duration::from_millis(rng.u64(3000..15000));
            let s = shared.clone();
            let filled = tokio::task::spawn_blocking(move || {
                s.mill.lock().map(|m| m.disk.fill()).map_err(|_| "poisoned")
            })
            .await;
            let filled = match filled {
                Ok(Ok(Ok(bytes))) => format!("{} MiB of ballast", bytes >> 20),
                other => format!("could not fill: {other:?}"),
            };
            tokio::time::sleep(hold).await;
            if let Ok(m) = shared.mill.lock() {
                m.disk.free();
            }
            format!(
                "data disk filled ({filled}) for {:.1}s, freed",
                hold.as_secs_f64()
            )
        }
        Chaos::InboxHostile => {
            let (inbox, max) = match shared.mill.lock() {
                Ok(m) => (m.inbox().to_path_buf(), m.config.inbox.max_file_bytes),
                Err(_) => return "the mill's lock is poisoned".into(),
            };
            // Each kind in turn, so a short soak drops every one.
            let dropped = shared
                .intake
                .lock()
                .map_or(0, |i| i.hostile_files.len() as u64);
            let (name, what) = super::feed::drop_hostile(&inbox, dropped, max);
            if let Ok(mut intake) = shared.intake.lock() {
                intake.hostile_files.push((name.clone(), what));
            }
            format!("{what} file {name}")
        }
        Chaos::ApiMalformed => {
            let mut tally = Default::default();
            super::feed::malformed_requests(&shared.http, &shared.api, &mut tally).await;
            let summary = tally.keys().cloned().collect::<Vec<_>>().join(", ");
            if let Ok(mut intake) = shared.intake.lock() {
                for (k, n) in tally {
                    *intake.malformed.entry(k).or_default() += n;
                }
            }
            summary
        }
    }
}

fn outcome(r: &Result<(), String>) -> &'static str {
    if r.is_ok() { "ok" } else { "failed" }
}

async fn cluster_call(
    shared: &Arc<Shared>,
    call: fn(&super::mill::Cluster) -> Result<(), String>,
) -> Result<(), String> {
    let s = shared.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mill = s.mill.lock().map_err(|_| "poisoned".to_string())?;
        match &mill.backend {
            Backend::OwnCluster(c) => call(c),
            Backend::Sqlite | Backend::Server(_) => Err("not our cluster".into()),
        }
    })
    .await;
    let result = done.map_err(|e| e.to_string()).and_then(|r| r);
    if let Err(e) = &result {
        eprintln!("PostgreSQL chaos failed: {e}");
    }
    result
}

fn pick_engine(shared: &Shared, rng: &mut fastrand::Rng) -> Option<(usize, u32)> {
    let mill = shared.mill.lock().ok()?;
    let engines: Vec<(usize, u32)> = mill
        .runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.engine_pid().map(|p| (i, p)))
        .collect();
    (!engines.is_empty()).then(|| engines[rng.usize(..engines.len())])
}

/// Wait (up to a minute) for run `index` to have an engine other than
/// `not`; says how long it took.
async fn wait_engine(shared: &Shared, index: usize, not: Option<u32>) -> String {
    let clock = Instant::now();
    while clock.elapsed() < Duration::from_secs(60) {
        let engine = shared
            .mill
            .lock()
            .ok()
            .and_then(|m| m.runs.get(index).and_then(|r| r.engine_pid()));
        if engine.is_some() && engine != not {
            return format!("a new engine after {:.1}s", clock.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    "no new engine within 60s".into()
}
