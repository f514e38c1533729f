//! The health verdict: HEALTHY, DEGRADED, STALLED or DOWN, with every reason.
//! Pure: the callers (`status`, `doctor`, `/healthz`) gather the facts, this
//! judges them, so that every rule is tested without a process or a store.

use ideamill_core::{Config, Millis};
use ideamill_store::{StageAttempts, StatusSnapshot};
use serde::Serialize;

use crate::StatusFile;

/// How healthy the installation is, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Everything works.
    Healthy,
    /// It works, with problems worth a look.
    Degraded,
    /// An engine is alive but its event loop has stopped.
    Stalled,
    /// Nothing can run: no engine, the supervisor gave up, or the store is unreadable or corrupt.
    Down,
}

impl Level {
    /// The name shown (`HEALTHY`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Healthy => "HEALTHY",
            Level::Degraded => "DEGRADED",
            Level::Stalled => "STALLED",
            Level::Down => "DOWN",
        }
    }

    /// `doctor`'s exit code: 0 healthy, 1 degraded, 2 stalled, 3 down.
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason, with a stable code that `docs/runbook.md` explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// How bad this reason is.
    pub level: Level,
    /// A stable code, explained in `docs/runbook.md`.
    pub code: &'static str,
    /// What was found, for people.
    pub message: String,
}

/// The verdict and every reason for it, worst first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The worst level among the reasons; healthy when there are none.
    pub verdict: Level,
    /// Every reason, worst first.
    pub reasons: Vec<Reason>,
}

impl Verdict {
    /// The verdict of `reasons`, sorted worst first.
    pub fn from_reasons(mut reasons: Vec<Reason>) -> Verdict {
        // The worst first, so that the first reason explains the verdict.
        reasons.sort_by_key(|r| std::cmp::Reverse(r.level));
        Verdict {
            verdict: reasons
                .iter()
                .map(|r| r.level)
                .max()
                .unwrap_or(Level::Healthy),
            reasons,
        }
    }
}

/// A status file as found on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineFile {
    /// What the file says.
    pub file: StatusFile,
    /// The process still exists (and is an ideamill).
    pub alive: bool,
    /// Age of its last beat, by the monotonic clock.
    pub beat_age_ms: Millis,
}

/// Whether a model provider answered (filled by the LLM work; empty until then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderCheck {
    /// The `[providers]` key.
    pub name: String,
    /// Whether it answered.
    pub ok: bool,
    /// What it answered, or why it did not.
    pub message: String,
}

/// Everything the verdict looks at. Optional parts were not checked.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Wall clock, ms.
    pub now: Millis,
    /// The store's view: items, queue and processes; `None` if it could not be read.
    pub snapshot: Option<StatusSnapshot>,
    /// The store could not be opened or read.
    pub store_error: Option<String>,
    /// `quick_check` problems; `None` when not checked.
    pub store_problems: Option<Vec<String>>,
    /// Status files found on this machine.
    pub engines: Vec<EngineFile>,
    /// Attempts per stage within the failure window.
    pub attempts: Vec<StageAttempts>,
    /// Free space on the data folder's disk, in bytes; `None` if unknown.
    pub free_disk: Option<u64>,
    /// Model providers checked.
    pub providers: Vec<ProviderCheck>,
    /// Supervisor restarts within the failure window.
    pub recent_restarts: u64,
    /// The newest supervisor_gave_up event within the window, if any.
    pub gave_up: Option<String>,
    /// Engines that lost the store within the window and reconnected
    /// (`store_outage` events): how many, and the newest's message.
    pub store_outages: Option<(u64, String)>,
    /// Process rows of this machine whose pid is gone: not live, however
    /// recent their last beat.
    pub dead_processes: Vec<String>,
}

/// Loop lag above this in a live engine's last beat is worth saying.
const LAG_WARN_MS: f64 = 500.0;

/// The verdict on `f`, judged by `config`'s health settings.
pub fn judge(config: &Config, f: &Facts) -> Verdict {
    let mut reasons = Vec::new();
    let mut say = |level, code, message: String| {
        reasons.push(Reason {
            level,
            code,
            message,
        })
    };
    let health = &config.health;
    let window = short(ideamill_core::duration::millis(health.failure_window));

    if let Some(e) = &f.store_error {
        say(
            Level::Down,
            "store_unreachable",
            format!("the store cannot be read: {e}"),
        );
    }
    if let Some(problems) = &f.store_problems
        && !problems.is_empty()
    {
        say(
            Level::Down,
            "store_corrupt",
            format!(
                "the store's consistency check failed: {}",
                problems
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    }

    // Programs that cannot start for lack of resources: the engine waits and
    // tries again, so items lose nothing, but the machine needs a look.
    for e in &f.engines {
        if let Some((at, message)) = &e.file.resource_trouble
            && e.alive
            && f.now - at <= ideamill_core::duration::millis(health.failure_window)
        {
            say(
                Level::Degraded,
                "spawn_failing",
                format!(
                    "engine pid {}: a stage could not start for lack of resources {} ago ({message}); its job waits and tries again",
                    e.file.pid,
                    short(f.now - at)
                ),
            );
        }
    }

    // Engines that stopped beating while their process still exists are hung.
    for e in &f.engines {
        let limit = e.file.stall_after_ms as Millis;
        if e.alive && e.beat_age_ms > limit {
            say(
                Level::Stalled,
                "engine_stalled",
                format!(
                    "engine pid {} has not beaten for {} (limit {}): its event loop is hung{}",
                    e.file.pid,
                    short(e.beat_age_ms),
                    short(limit),
                    if e.file.supervisor_pid.is_some() {
                        "; its supervisor restarts it"
                    } else {
                        "; with --no-supervisor, stop it so that its jobs run again"
                    }
                ),
            );
        } else if e.alive && e.file.loop_lag_ms > LAG_WARN_MS {
            say(
                Level::Degraded,
                "loop_lag",
                format!(
                    "engine pid {}'s event loop ran {:.0} ms late at its last beat: something blocks it",
                    e.file.pid, e.file.loop_lag_ms
                ),
            );
        }
    }

    if let Some(s) = &f.snapshot {
        let stale_after =
            (ideamill_core::duration::millis(config.engine.heartbeat) * 3).max(10_000);
        let silent = |p: &ideamill_store::ProcessInfo| {
            f.now - p.last_beat_at > stale_after || f.dead_processes.contains(&p.id)
        };
        let live = s.processes.iter().filter(|p| !silent(p)).count();
        let runnable: u64 = s.stages.iter().map(|c| c.queued).sum();
        let running: u64 = s.stages.iter().map(|c| c.running).sum();
        if live == 0 && (runnable > 0 || s.expired_leases > 0 || running > 0) {
            say(
                Level::Down,
                "no_engine",
                format!(
                    "{} job(s) are waiting and no engine is running: start `ideamill run`",
                    runnable + running
                ),
            );
        }
        // Jobs of a stage the config no longer has can never run: say so,
        // with the way out, rather than count them as waiting work.
        for c in s.stages.iter().filter(|c| config.stage(&c.stage).is_none()) {
            let stranded = c.queued + c.scheduled + c.running;
            if stranded > 0 {
                say(
                    Level::Degraded,
                    "stage_removed",
                    format!(
                        "{stranded} job(s) of stage `{}`, which the config no longer has, can never run: \
                         `ideamill list --stage {}` lists their items; `ideamill retry ID --from STAGE` moves one",
                        c.stage, c.stage
                    ),
                );
            }
        }
        if live == 0
            && let Some(message) = &f.gave_up
        {
            say(Level::Down, "supervisor_gave_up", message.clone());
        }
        for p in s.processes.iter().filter(|p| silent(p)) {
            // Reported as engine_stalled already; a local engine that beats
            // but whose row does not cannot reach the store: say so.
            let hung_here = f.engines.iter().any(|e| {
                e.alive
                    && e.beat_age_ms > e.file.stall_after_ms as Millis
                    && e.file.process_id.as_deref() == Some(p.id.as_str())
            });
            if hung_here {
                continue; // Already reported as engine_stalled.
            }
            let level = if p.held_jobs > 0 {
                Level::Stalled
            } else {
                Level::Degraded
            };
            say(
                level,
                "engine_silent",
                format!(
                    "engine process {} (pid {} on {}) {}; {}",
                    p.id,
                    p.pid,
                    p.host,
                    if f.dead_processes.contains(&p.id) {
                        "is gone without stopping cleanly".to_string()
                    } else {
                        format!(
                            "has not beaten for {}: hung, killed or cut off",
                            short(f.now - p.last_beat_at)
                        )
                    },
                    if p.held_jobs > 0 {
                        format!(
                            "its {} job(s) run again when their leases expire",
                            p.held_jobs
                        )
                    } else {
                        "it holds no jobs".into()
                    }
                ),
            );
        }
        if s.expired_leases > 0 {
            say(
                Level::Degraded,
                "expired_leases",
                format!(
                    "{} running job(s) hold expired leases: their process stopped renewing them; a running engine will run them again",
                    s.expired_leases
                ),
            );
        }
        for j in &s.running {
            let Some(stage) = config.stage(&j.stage) else {
                continue;
            };
            // A kind without a process group to signal has no grace: the
            // timeout ends its work at once.
            let grace = ideamill_core::duration::millis(stage.kind.facts().kill_grace());
            let limit = ideamill_core::duration::millis(stage.timeout) + grace + 10_000;
            let elapsed = f.now - j.started_at;
            if elapsed > limit {
                say(
                    Level::Degraded,
                    "job_overdue",
                    format!(
                        "job {} (item {}, stage `{}`) has run for {}, past its timeout of {}, and is still held by {}: the engine failed to stop it",
                        j.job_id,
                        j.item_id,
                        j.stage,
                        short(elapsed),
                        short(ideamill_core::duration::millis(stage.timeout)),
                        j.owner
                    ),
                );
            }
        }
        if live > 0
            && let Some(oldest) = s.oldest_runnable_at
            && f.now - oldest > ideamill_core::duration::millis(health.stuck_after)
        {
            let idle: Vec<&str> = s
                .stages
                .iter()
                .filter(|c| c.queued > 0)
                .filter(|c| {
                    config
                        .stage(&c.stage)
                        .is_some_and(|st| c.running < u64::from(st.concurrency) * live as u64)
                })
                .map(|c| c.stage.as_str())
                .collect();
            if !idle.is_empty() {
                say(
                    Level::Degraded,
                    "queue_not_moving",
                    format!(
                        "runnable work has waited {} while engines have free slots (stage {}): claims are failing or the engines are stuck",
                        short(f.now - oldest),
                        idle.join(", ")
                    ),
                );
            }
        }
    }

    for a in &f.attempts {
        if a.worked == 0 && a.failed >= 3 {
            say(
                Level::Degraded,
                "stage_failing",
                format!(
                    "stage `{}` failed every one of its {} attempt(s) in the last {window}{}",
                    a.stage,
                    a.failed,
                    a.last_error
                        .as_ref()
                        .map_or(String::new(), |e| format!("; last error: {e}"))
                ),
            );
        } else if a.attempts >= 10 && a.failed * 2 >= a.attempts {
            say(
                Level::Degraded,
                "failure_rate",
                format!(
                    "stage `{}` failed {} of {} attempts in the last {window}",
                    a.stage, a.failed, a.attempts
                ),
            );
        }
        if a.hung > 0 {
            say(
                Level::Degraded,
                "job_hung",
                format!(
                    "stage `{}` had {} hung attempt(s) in the last {window}: no output, no change in the workspace and no CPU time for its `stall_after`; each was killed, with evidence in {}",
                    a.stage,
                    a.hung,
                    crate::evidence_dir(&config.engine.data_dir).display()
                ),
            );
        }
    }
    // Never silently unconfined: a warning that leaves the verdict as it is.
    for stage in &config.stages {
        if let Some(c) = stage.kind.facts().process
            && c.sandbox == ideamill_core::config::SandboxMode::Off
        {
            say(
                Level::Healthy,
                "stage_unconfined",
                format!(
                    "stage `{}` runs unconfined (sandbox = \"off\"): what it runs has the engine user's access to files, keys and network",
                    stage.name
                ),
            );
        }
    }
    for p in f.providers.iter().filter(|p| !p.ok) {
        say(
            Level::Degraded,
            "provider_unreachable",
            format!("provider `{}` does not answer: {}", p.name, p.message),
        );
    }
    if let Some(free) = f.free_disk {
        let min = health.min_free_disk_mb * 1024 * 1024;
        if free < min {
            say(
                Level::Degraded,
                "disk_low",
                format!(
                    "{} MiB free on the data folder's disk, below the {} MiB minimum ([health] min_free_disk_mb)",
                    free / (1024 * 1024),
                    health.min_free_disk_mb
                ),
            );
        }
    }
    if let Some((n, newest)) = &f.store_outages {
        say(
            Level::Degraded,
            "store_outage",
            format!(
                "engines lost the store {n} time(s) in the last {window} and reconnected; the newest: {newest}"
            ),
        );
    }
    if f.recent_restarts > 0 {
        say(
            Level::Degraded,
            "engine_restarted",
            format!(
                "the supervisor restarted the engine {} time(s) in the last {window} (`ideamill events --kind engine_restarted`)",
                f.recent_restarts
            ),
        );
    }
    Verdict::from_reasons(reasons)
}

/// A short duration for messages: "850ms", "12s", "3m20s".
pub fn short(ms: Millis) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else if ms < 3_600_000 {
        let (m, s) = (ms / 60_000, (ms % 60_000) / 1000);
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else {
        let (h, m) = (ms / 3_600_000, (ms % 3_600_000) / 60_000);
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m}m")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ideamill_store::{ItemCounts, ProcessInfo, RunningJob, StageCounts};

    const NOW: Millis = 1_000_000_000;

    fn config(extra: &str) -> Config {
        let text = format!(
            "{extra}\n[[stages]]\nname = \"a\"\nkind = \"command\"\ncommand = [\"true\"]\ntimeout = \"1m\"\nkill_grace = \"5s\"\n"
        );
        ideamill_core::config::parse(&text, std::path::Path::new("/p/ideamill.toml")).unwrap()
    }

    fn process(id: &str, beat_ago: Millis, held: u64) -> ProcessInfo {
        ProcessInfo {
            id: id.into(),
            host: "h".into(),
            pid: 42,
            version: "v".into(),
            started_at: NOW - 100_000,
            last_beat_at: NOW - beat_ago,
            stopped_at: None,
            held_jobs: held,
        }
    }

    fn snapshot(queued: u64, running: u64, processes: Vec<ProcessInfo>) -> StatusSnapshot {
        StatusSnapshot {
            now: NOW,
            items: ItemCounts::default(),
            stages: vec![StageCounts {
                stage: "a".into(),
                queued,
                scheduled: 0,
                running,
            }],
            running: Vec::new(),
            processes,
            expired_leases: 0,
            oldest_runnable_at: (queued > 0).then_some(NOW - 1000),
            paused: 0,
            today: Default::default(),
        }
    }

    /// The verdict and the reason codes, worst first.
    fn check(config: &Config, facts: Facts, expected: Level, codes: &[&str]) {
        let v = judge(config, &Facts { now: NOW, ..facts });
        let got: Vec<&str> = v.reasons.iter().map(|r| r.code).collect();
        assert_eq!((v.verdict, got.as_slice()), (expected, codes), "{v:#?}");
    }

    #[test]
    fn healthy_when_idle_or_working() {
        let c = config("");
        check(&c, Facts::default(), Level::Healthy, &[]);
        let s = snapshot(3, 1, vec![process("p", 1000, 1)]);
        check(
            &c,
            Facts {
                snapshot: Some(s),
                ..Facts::default()
            },
            Level::Healthy,
            &[],
        );
    }

    #[test]
    fn down_without_an_engine_while_work_waits() {
        let c = config("");
        let s = snapshot(2, 0, vec![]);
        check(
            &c,
            Facts {
                snapshot: Some(s.clone()),
                gave_up: Some("gave up".into()),
                ..Facts::default()
            },
            Level::Down,
            &["no_engine", "supervisor_gave_up"],
        );
        check(
            &c,
            Facts {
                store_error: Some("locked".into()),
                ..Facts::default()
            },
            Level::Down,
            &["store_unreachable"],
        );
        check(
            &c,
            Facts {
                store_problems: Some(vec!["row 3 missing from index".into()]),
                ..Facts::default()
            },
            Level::Down,
            &["store_corrupt"],
        );
    }

    #[test]
    fn stalled_when_a_live_engine_stops_beating() {
        let c = config("");
        let file = StatusFile {
            pid: 7,
            process_id: Some("p".into()),
            stall_after_ms: 5000,
            ..StatusFile::default()
        };
        let engine = |alive, age| EngineFile {
            file: file.clone(),
            alive,
            beat_age_ms: age,
        };
        // Its row is stale too, but it is reported once.
        let s = snapshot(1, 1, vec![process("p", 20_000, 1), process("q", 500, 0)]);
        check(
            &c,
            Facts {
                snapshot: Some(s.clone()),
                engines: vec![engine(true, 6000)],
                ..Facts::default()
            },
            Level::Stalled,
            &["engine_stalled"],
        );
        // A dead engine's silent row holding jobs: stalled until its leases expire.
        check(
            &c,
            Facts {
                snapshot: Some(s.clone()),
                engines: vec![engine(false, 60_000)],
                ..Facts::default()
            },
            Level::Stalled,
            &["engine_silent"],
        );
        check(
            &c,
            Facts {
                snapshot: Some(s),
                engines: vec![engine(true, 1000)],
                ..Facts::default()
            },
            Level::Stalled,
            &["engine_silent"],
        );
    }

    #[test]
    fn degraded_reasons() {
        let c = config("[health]\nmin_free_disk_mb = 100\nstuck_after = \"10s\"");
        let mut s = snapshot(2, 0, vec![process("p", 500, 1)]);
        s.oldest_runnable_at = Some(NOW - 11_000);
        s.running = vec![RunningJob {
            job_id: 1,
            item_id: 1,
            stage: "a".into(),
            round: 1,
            attempt: 1,
            owner: "p".into(),
            started_at: NOW - 76_000,
            lease_expires_at: NOW + 1000,
        }];
        s.expired_leases = 1;
        let facts = Facts {
            snapshot: Some(s),
            attempts: vec![
                StageAttempts {
                    stage: "a".into(),
                    attempts: 3,
                    worked: 0,
                    failed: 3,
                    hung: 0,
                    last_error: Some("boom".into()),
                },
                StageAttempts {
                    stage: "b".into(),
                    attempts: 10,
                    worked: 5,
                    failed: 5,
                    hung: 2,
                    last_error: None,
                },
            ],
            free_disk: Some(99 * 1024 * 1024),
            providers: vec![ProviderCheck {
                name: "local".into(),
                ok: false,
                message: "connection refused".into(),
            }],
            recent_restarts: 2,
            engines: vec![EngineFile {
                file: StatusFile {
                    pid: 9,
                    stall_after_ms: 5000,
                    loop_lag_ms: 900.0,
                    ..StatusFile::default()
                },
                alive: true,
                beat_age_ms: 100,
            }],
            ..Facts::default()
        };
        check(
            &c,
            facts,
            Level::Degraded,
            &[
                "loop_lag",
                "expired_leases",
                "job_overdue",
                "queue_not_moving",
                "stage_failing",
                "failure_rate",
                "job_hung",
                "provider_unreachable",
                "disk_low",
                "engine_restarted",
            ],
        );
    }

    #[test]
    fn durations_read_well() {
        for (ms, s) in [
            (850, "850ms"),
            (12_400, "12s"),
            (200_000, "3m20s"),
            (7_200_000, "2h"),
        ] {
            assert_eq!(short(ms), s);
        }
    }
}
