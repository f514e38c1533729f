//! The metrics registry and its Prometheus text exposition. Names follow
//! `ideamill_<name>_<unit>`; labels are bounded: stage and provider names come
//! from the config, outcomes and states from fixed lists.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ideamill_core::{AttemptOutcome, Config};
use ideamill_store::{GateLift, ItemCounts, LIFT_ROUNDS, StageCounts, round_label};
use serde::{Deserialize, Serialize};

use crate::verdict::Verdict;

/// Every reason code the verdict can give (`docs/runbook.md` has a section
/// per code): `ideamill_health_reasons` has a series for each, zero when
/// absent, so that an alert on one is never confused by a missing series. A
/// unit test keeps this list equal to the codes `verdict.rs` and the runbook
/// name.
pub const REASON_CODES: &[&str] = &[
    "no_engine",
    "supervisor_gave_up",
    "store_unreachable",
    "store_corrupt",
    "engine_stalled",
    "engine_silent",
    "engine_restarted",
    "store_outage",
    "loop_lag",
    "expired_leases",
    "job_overdue",
    "queue_not_moving",
    "spawn_failing",
    "stage_failing",
    "failure_rate",
    "job_hung",
    "stage_removed",
    "stage_unconfined",
    "provider_unreachable",
    "disk_low",
];

/// Stage durations: from 100 ms to an hour.
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Pickup latency: from a millisecond to a minute.
const PICKUP_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Clone)]
struct StageMetrics {
    started: u64,
    completed: u64,
    failed: u64,
    /// Of `failed`: ended by the stage's `timeout`.
    timed_out: u64,
    /// Of `failed`: hung (no progress for `stall_after`).
    hung: u64,
    duration: Histogram,
    pickup: Histogram,
}

impl StageMetrics {
    fn new() -> StageMetrics {
        StageMetrics {
            started: 0,
            completed: 0,
            failed: 0,
            timed_out: 0,
            hung: 0,
            duration: Histogram::new(DURATION_BUCKETS),
            pickup: Histogram::new(PICKUP_BUCKETS),
        }
    }
}

/// Model calls of one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderMetrics {
    /// Calls made.
    pub requests: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Of `errors`: answered 429 (rate limited).
    #[serde(default)]
    pub rate_limited: u64,
    /// Prompt (input) tokens used.
    pub prompt_tokens: u64,
    /// Completion (output) tokens used.
    pub completion_tokens: u64,
    /// What the calls cost, in US dollars.
    pub cost_usd: f64,
}

/// One finished model call, as the LLM executor reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LlmCall {
    /// Whether the call succeeded.
    pub ok: bool,
    /// Whether it failed because the provider rate-limited it (HTTP 429).
    pub rate_limited: bool,
    /// Prompt (input) tokens used.
    pub prompt_tokens: u64,
    /// Completion (output) tokens used.
    pub completion_tokens: u64,
    /// What the call cost, in US dollars.
    pub cost_usd: f64,
}

/// Totals kept in the status file, so that they survive a scrape-less life.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Jobs claimed and started.
    pub jobs_started: u64,
    /// Attempts that ended succeeded or rejected.
    pub jobs_completed: u64,
    /// Attempts that ended in an error, a timeout, a hang, a permanent error or a lost lease.
    pub jobs_failed: u64,
    /// Stalls of the event loop detected, across restarts.
    pub stalls_detected: u64,
    /// Engine restarts by the supervisor.
    pub restarts: u64,
    /// Evidence bundles in the data folder.
    pub evidence_bundles: u64,
}

/// The metrics registry of one engine process.
pub struct Metrics {
    stages: Mutex<BTreeMap<String, StageMetrics>>,
    /// `[health] min_free_disk_mb`, in bytes: the disk alert's threshold.
    min_free_disk: u64,
    providers: Mutex<BTreeMap<String, ProviderMetrics>>,
    /// Stalls of the event loop detected, across restarts.
    pub stalls_detected: AtomicU64,
    /// Engine restarts by the supervisor.
    pub restarts: AtomicU64,
    /// Evidence bundles in the data folder.
    pub evidence_bundles: AtomicU64,
    /// Times the event loop's thread was unparked (counted by the runtime's
    /// unpark hook), and how many of those ended a sleep of 10 ms or more: a
    /// wake-up from idle, as opposed to a store reply arriving at once.
    pub loop_wakeups: AtomicU64,
    /// Wake-ups that ended a sleep of 10 ms or more.
    pub loop_idle_wakeups: AtomicU64,
    /// CLOCK_MONOTONIC µs when the loop last parked.
    pub loop_parked_at_us: AtomicU64,
    /// Times the watchdog thread woke.
    pub watchdog_wakeups: AtomicU64,
}

/// What a scrape adds from the store and the beat.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Items by state; `None` when the store did not answer.
    pub items: Option<ItemCounts>,
    /// Jobs by stage and state.
    pub queue: Vec<StageCounts>,
    /// How old the last beat is.
    pub heartbeat_age: Duration,
    /// How late the loop's last timer fired.
    pub loop_lag: Duration,
    /// The worst loop lag since start.
    pub loop_lag_max: Duration,
    /// Jobs this process is running.
    pub in_flight: u64,
    /// When this process started, in seconds since the epoch.
    pub started_at_secs: f64,
    /// The QA lift per gate and model, read from the store; `None` when
    /// the store did not answer (the series are left out).
    pub gates: Option<Vec<GateLift>>,
    /// The health verdict, as `doctor` and the dashboard judge it.
    pub verdict: Option<Verdict>,
    /// What the store's status snapshot adds; `None` when it did not answer.
    pub store: Option<StoreFigures>,
    /// Free bytes on the data folder's disk; `None` when unknown.
    pub free_disk: Option<u64>,
}

/// Figures of the store's status snapshot beyond the item counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreFigures {
    /// Jobs paused because a budget cap was reached.
    pub paused: u64,
    /// Running jobs whose lease expired without a reaper taking them yet.
    pub expired_leases: u64,
    /// How long the oldest runnable job has waited; zero when none waits.
    pub oldest_runnable_age: Duration,
}

impl Metrics {
    /// A registry with series for every stage and provider of `config`.
    pub fn new(config: &Config) -> Metrics {
        let stages = config
            .stages
            .iter()
            .map(|s| (s.name.clone(), StageMetrics::new()))
            .collect();
        let providers = config
            .providers
            .keys()
            .map(|p| (p.clone(), ProviderMetrics::default()))
            .collect();
        Metrics {
            stages: Mutex::new(stages),
            min_free_disk: config.health.min_free_disk_mb.saturating_mul(1024 * 1024),
            providers: Mutex::new(providers),
            stalls_detected: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            evidence_bundles: AtomicU64::new(0),
            loop_wakeups: AtomicU64::new(0),
            loop_idle_wakeups: AtomicU64::new(0),
            loop_parked_at_us: AtomicU64::new(0),
            watchdog_wakeups: AtomicU64::new(0),
        }
    }

    fn with_stage(&self, stage: &str, f: impl FnOnce(&mut StageMetrics)) {
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        // Only configured stages get series: a job of a stage removed from the
        // config must not grow the label set.
        if let Some(m) = stages.get_mut(stage) {
            f(m);
        }
    }

    /// A job of `stage` started, `pickup` after it became runnable.
    pub fn job_started(&self, stage: &str, pickup: Duration) {
        self.with_stage(stage, |m| {
            m.started += 1;
            m.pickup.observe(pickup.as_secs_f64());
        });
    }

    /// An attempt of `stage` ended with `outcome` after running for `took`.
    pub fn job_finished(&self, stage: &str, outcome: AttemptOutcome, took: Duration) {
        use AttemptOutcome as O;
        self.with_stage(stage, |m| {
            match outcome {
                O::Succeeded | O::Rejected => m.completed += 1,
                O::Error | O::Permanent | O::Lost => m.failed += 1,
                O::Timeout => {
                    m.failed += 1;
                    m.timed_out += 1;
                }
                O::Hung => {
                    m.failed += 1;
                    m.hung += 1;
                }
                _ => {}
            }
            m.duration.observe(took.as_secs_f64());
        });
    }

    /// The LLM executor's hook: one finished model call of `provider`.
    pub fn record_llm(&self, provider: &str, call: LlmCall) {
        let mut providers = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = providers.get_mut(provider) {
            p.requests += 1;
            if !call.ok {
                p.errors += 1;
            }
            if call.rate_limited {
                p.rate_limited += 1;
            }
            p.prompt_tokens += call.prompt_tokens;
            p.completion_tokens += call.completion_tokens;
            p.cost_usd += call.cost_usd;
        }
    }

    /// Totals per provider.
    pub fn providers(&self) -> BTreeMap<String, ProviderMetrics> {
        self.providers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The counters, or `None` when another thread holds the stage table:
    /// for the watchdog, which must never wait.
    pub fn try_counters(&self) -> Option<Counters> {
        let stages = self.stages.try_lock().ok()?;
        Some(self.counters_of(&stages))
    }

    /// Test-only (debug builds): hold the stage table's lock for good.
    #[cfg(debug_assertions)]
    pub fn hold_forever(&self) -> ! {
        let _held = self.stages.lock();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }

    /// The counters, waiting for the stage table's lock.
    pub fn counters(&self) -> Counters {
        let stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        self.counters_of(&stages)
    }

    fn counters_of(&self, stages: &BTreeMap<String, StageMetrics>) -> Counters {
        Counters {
            jobs_started: stages.values().map(|m| m.started).sum(),
            jobs_completed: stages.values().map(|m| m.completed).sum(),
            jobs_failed: stages.values().map(|m| m.failed).sum(),
            stalls_detected: self.stalls_detected.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            evidence_bundles: self.evidence_bundles.load(Ordering::Relaxed),
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, live: &Live) -> String {
        let telemetry = ideamill_telemetry::stats();
        let mut out = String::with_capacity(8192);
        let o = &mut out;
        header(
            o,
            "ideamill_up",
            "gauge",
            "1 while this engine process runs.",
        );
        let _ = writeln!(o, "ideamill_up 1");
        header(
            o,
            "ideamill_start_time_seconds",
            "gauge",
            "When this engine process started, in seconds since the Unix epoch.",
        );
        let _ = writeln!(o, "ideamill_start_time_seconds {}", live.started_at_secs);
        if let Some(v) = &live.verdict {
            verdict_series(o, v);
        }

        header(o, "ideamill_items", "gauge", "Items by state.");
        if let Some(items) = &live.items {
            for (state, n) in [
                ("active", items.active),
                ("done", items.done),
                ("failed", items.failed),
                ("cancelled", items.cancelled),
            ] {
                let _ = writeln!(o, "ideamill_items{{state=\"{state}\"}} {n}");
            }
        }
        header(
            o,
            "ideamill_queue_jobs",
            "gauge",
            "Jobs per stage: queued (runnable now), scheduled (waiting for a backoff) and running.",
        );
        let stages = self
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for name in stages.keys() {
            let c = live.queue.iter().find(|c| &c.stage == name);
            for (state, n) in [
                ("queued", c.map_or(0, |c| c.queued)),
                ("scheduled", c.map_or(0, |c| c.scheduled)),
                ("running", c.map_or(0, |c| c.running)),
            ] {
                let _ = writeln!(
                    o,
                    "ideamill_queue_jobs{{stage=\"{}\",state=\"{state}\"}} {n}",
                    escape(name)
                );
            }
        }
        if let Some(f) = &live.store {
            store_series(o, f);
        }
        header(
            o,
            "ideamill_jobs_in_flight",
            "gauge",
            "Jobs this engine process is running now.",
        );
        let _ = writeln!(o, "ideamill_jobs_in_flight {}", live.in_flight);

        for (name, help, pick) in [
            (
                "ideamill_jobs_started_total",
                "Jobs claimed and started, per stage.",
                (|m: &StageMetrics| m.started) as fn(&StageMetrics) -> u64,
            ),
            (
                "ideamill_jobs_completed_total",
                "Attempts whose stage worked (passed, or rejected by a gate), per stage.",
                |m| m.completed,
            ),
            (
                "ideamill_jobs_failed_total",
                "Attempts that failed (error, timeout, hung, permanent error, lost), per stage.",
                |m| m.failed,
            ),
            (
                "ideamill_jobs_timed_out_total",
                "Attempts ended by their stage's wall-clock `timeout`, per stage.",
                |m| m.timed_out,
            ),
            (
                "ideamill_jobs_hung_total",
                "Attempts killed as hung: no output, no change in the workspace and no CPU time for their stage's `stall_after`, per stage.",
                |m| m.hung,
            ),
        ] {
            header(o, name, "counter", help);
            for (stage, m) in &stages {
                let _ = writeln!(o, "{name}{{stage=\"{}\"}} {}", escape(stage), pick(m));
            }
        }
        header(
            o,
            "ideamill_stage_duration_seconds",
            "histogram",
            "How long attempts took, per stage.",
        );
        for (stage, m) in &stages {
            histogram(o, "ideamill_stage_duration_seconds", stage, &m.duration);
        }
        header(
            o,
            "ideamill_pickup_latency_seconds",
            "histogram",
            "From a job becoming runnable to its claim, per stage.",
        );
        for (stage, m) in &stages {
            histogram(o, "ideamill_pickup_latency_seconds", stage, &m.pickup);
        }

        header(
            o,
            "ideamill_heartbeat_age_seconds",
            "gauge",
            "Time since the event loop last beat.",
        );
        let _ = writeln!(
            o,
            "ideamill_heartbeat_age_seconds {}",
            live.heartbeat_age.as_secs_f64()
        );
        header(
            o,
            "ideamill_loop_lag_seconds",
            "gauge",
            "How late the event loop's last timer fired.",
        );
        let _ = writeln!(
            o,
            "ideamill_loop_lag_seconds {}",
            live.loop_lag.as_secs_f64()
        );
        header(
            o,
            "ideamill_loop_lag_max_seconds",
            "gauge",
            "The largest loop lag since this process started.",
        );
        let _ = writeln!(
            o,
            "ideamill_loop_lag_max_seconds {}",
            live.loop_lag_max.as_secs_f64()
        );
        for (name, help, v) in [
            (
                "ideamill_stalls_detected_total",
                "Stalled event loops detected (by the watchdog or the supervisor), across restarts.",
                self.stalls_detected.load(Ordering::Relaxed),
            ),
            (
                "ideamill_restarts_total",
                "Engine restarts by the supervisor.",
                self.restarts.load(Ordering::Relaxed),
            ),
            (
                "ideamill_evidence_bundles_total",
                "Evidence bundles in the data folder.",
                self.evidence_bundles.load(Ordering::Relaxed),
            ),
            (
                "ideamill_loop_wakeups_total",
                "Times the event loop woke from idle.",
                self.loop_wakeups.load(Ordering::Relaxed),
            ),
            // This process's trace exporter ([telemetry]); zero when off.
            (
                "ideamill_telemetry_exported_total",
                "Trace spans the OTLP collector accepted.",
                telemetry.exported,
            ),
            (
                "ideamill_telemetry_dropped_total",
                "Trace spans lost: the export queue was full or their request failed.",
                telemetry.dropped,
            ),
            (
                "ideamill_telemetry_export_failures_total",
                "Trace export requests that failed (collector unreachable, slow or refusing).",
                telemetry.failures,
            ),
        ] {
            header(o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }

        if let Some(free) = live.free_disk {
            header(
                o,
                "ideamill_disk_free_bytes",
                "gauge",
                "Free bytes on the disk of the data folder.",
            );
            let _ = writeln!(o, "ideamill_disk_free_bytes {free}");
            header(
                o,
                "ideamill_disk_min_free_bytes",
                "gauge",
                "The free space below which the verdict says disk_low ([health] min_free_disk_mb).",
            );
            let _ = writeln!(o, "ideamill_disk_min_free_bytes {}", self.min_free_disk);
        }

        if let Some(gates) = &live.gates {
            gate_series(o, gates);
        }

        // LLM series: registered for every configured provider, zero until
        // the LLM executor reports calls through `record_llm`.
        let providers = self.providers();
        for (name, help, pick) in [
            (
                "ideamill_llm_requests_total",
                "Model requests, per provider.",
                (|p: &ProviderMetrics| p.requests as f64) as fn(&ProviderMetrics) -> f64,
            ),
            (
                "ideamill_llm_errors_total",
                "Model requests that failed, per provider.",
                |p| p.errors as f64,
            ),
            (
                "ideamill_llm_rate_limited_total",
                "Model requests the provider rate-limited (HTTP 429), per provider; counted in the errors too.",
                |p| p.rate_limited as f64,
            ),
            (
                "ideamill_llm_cost_dollars_total",
                "Estimated model cost in US dollars, per provider.",
                |p| p.cost_usd,
            ),
        ] {
            header(o, name, "counter", help);
            for (provider, p) in &providers {
                let _ = writeln!(o, "{name}{{provider=\"{}\"}} {}", escape(provider), pick(p));
            }
        }
        header(
            o,
            "ideamill_llm_tokens_total",
            "counter",
            "Model tokens, per provider and kind (prompt or completion).",
        );
        for (provider, p) in &providers {
            for (kind, n) in [
                ("prompt", p.prompt_tokens),
                ("completion", p.completion_tokens),
            ] {
                let _ = writeln!(
                    o,
                    "ideamill_llm_tokens_total{{provider=\"{}\",kind=\"{kind}\"}} {n}",
                    escape(provider)
                );
            }
        }
        out
    }
}

/// The verdict's series: its level, and how many reasons of each code it
/// gives (every known code, zero when absent).
fn verdict_series(o: &mut String, v: &Verdict) {
    header(
        o,
        "ideamill_health_verdict",
        "gauge",
        "The health verdict, as doctor judges it: 0 healthy, 1 degraded, 2 stalled, 3 down.",
    );
    let _ = writeln!(o, "ideamill_health_verdict {}", v.verdict.exit_code());
    header(
        o,
        "ideamill_health_reasons",
        "gauge",
        "Reasons the verdict gives now, per code (docs/runbook.md has a section per code).",
    );
    for code in REASON_CODES {
        let n = v.reasons.iter().filter(|r| r.code == *code).count();
        let _ = writeln!(o, "ideamill_health_reasons{{code=\"{code}\"}} {n}");
    }
}

/// The store snapshot's series: paused work, expired leases, queue age.
fn store_series(o: &mut String, f: &StoreFigures) {
    header(
        o,
        "ideamill_paused_jobs",
        "gauge",
        "Jobs paused because a budget cap ([budget]) was reached.",
    );
    let _ = writeln!(o, "ideamill_paused_jobs {}", f.paused);
    header(
        o,
        "ideamill_expired_lease_jobs",
        "gauge",
        "Running jobs whose lease expired and that no reaper has taken yet.",
    );
    let _ = writeln!(o, "ideamill_expired_lease_jobs {}", f.expired_leases);
    header(
        o,
        "ideamill_queue_oldest_age_seconds",
        "gauge",
        "How long the oldest runnable job has waited to be claimed; 0 when none waits.",
    );
    let _ = writeln!(
        o,
        "ideamill_queue_oldest_age_seconds {}",
        f.oldest_runnable_age.as_secs_f64()
    );
}

/// The QA lift's series. They are gauges, not counters: they are read from
/// the store (so every engine sharing it reports the same figures, across
/// restarts), and pruning old items lowers them.
fn gate_series(o: &mut String, gates: &[GateLift]) {
    let model = |g: &GateLift| escape(g.model.as_deref().unwrap_or("none"));
    header(
        o,
        "ideamill_gate_passed_items",
        "gauge",
        "Items a gate passed, per gate stage, model (of the item's newest model call before the gate; none without one) and round (1, 2, 3, 4+), over the items the store holds.",
    );
    for g in gates {
        for (i, n) in g.passed.iter().enumerate().take(LIFT_ROUNDS) {
            let _ = writeln!(
                o,
                "ideamill_gate_passed_items{{stage=\"{}\",model=\"{}\",round=\"{}\"}} {n}",
                escape(&g.stage),
                model(g),
                round_label(i as u32 + 1),
            );
        }
    }
    header(
        o,
        "ideamill_gate_failed_items",
        "gauge",
        "Items failed at a gate, per gate stage, model and reason: last_round (rejected in the last round) or no_progress (a round changed nothing).",
    );
    for g in gates {
        for (reason, n) in [("last_round", g.failed), ("no_progress", g.no_progress)] {
            let _ = writeln!(
                o,
                "ideamill_gate_failed_items{{stage=\"{}\",model=\"{}\",reason=\"{reason}\"}} {n}",
                escape(&g.stage),
                model(g),
            );
        }
    }
    header(
        o,
        "ideamill_gate_lift_ratio",
        "gauge",
        "The QA lift per gate stage and model: the pass rate after the last round over the pass rate at round 1 (absent until an item passes at round 1).",
    );
    for g in gates {
        if let Some(lift) = g.lift() {
            let _ = writeln!(
                o,
                "ideamill_gate_lift_ratio{{stage=\"{}\",model=\"{}\"}} {lift}",
                escape(&g.stage),
                model(g),
            );
        }
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn histogram(o: &mut String, name: &str, stage: &str, h: &Histogram) {
    let stage = escape(stage);
    for (b, n) in h.bounds.iter().zip(&h.counts) {
        let _ = writeln!(o, "{name}_bucket{{stage=\"{stage}\",le=\"{b}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "{name}_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(o, "{name}_sum{{stage=\"{stage}\"}} {}", h.sum);
    let _ = writeln!(o, "{name}_count{{stage=\"{stage}\"}} {}", h.count);
}

/// A label value: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 5.0]);
        for v in [0.5, 2.0, 7.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![1, 2]);
        assert_eq!(h.count, 3);
        let mut out = String::new();
        histogram(&mut out, "x_seconds", "s", &h);
        assert_eq!(
            out,
            "x_seconds_bucket{stage=\"s\",le=\"1\"} 1\nx_seconds_bucket{stage=\"s\",le=\"5\"} 2\n\
             x_seconds_bucket{stage=\"s\",le=\"+Inf\"} 3\nx_seconds_sum{stage=\"s\"} 9.5\n\
             x_seconds_count{stage=\"s\"} 3\n"
        );
    }

    #[test]
    fn gate_series_per_gate_model_and_round() {
        let mut out = String::new();
        gate_series(
            &mut out,
            &[GateLift {
                stage: "qa".into(),
                model: None,
                passed: [1, 1, 0, 0],
                failed: 2,
                no_progress: 0,
            }],
        );
        let series: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            series,
            [
                "ideamill_gate_passed_items{stage=\"qa\",model=\"none\",round=\"1\"} 1",
                "ideamill_gate_passed_items{stage=\"qa\",model=\"none\",round=\"2\"} 1",
                "ideamill_gate_passed_items{stage=\"qa\",model=\"none\",round=\"3\"} 0",
                "ideamill_gate_passed_items{stage=\"qa\",model=\"none\",round=\"4+\"} 0",
                "ideamill_gate_failed_items{stage=\"qa\",model=\"none\",reason=\"last_round\"} 2",
                "ideamill_gate_failed_items{stage=\"qa\",model=\"none\",reason=\"no_progress\"} 0",
                "ideamill_gate_lift_ratio{stage=\"qa\",model=\"none\"} 2",
            ]
        );
    }

    #[test]
    fn hung_and_timed_out_attempts_are_counted_apart() {
        let config = ideamill_core::config::parse(
            "[[stages]]\nname = \"qa\"\nkind = \"command\"\ncommand = [\"true\"]\n",
            std::path::Path::new("/p/ideamill.toml"),
        )
        .unwrap();
        let m = Metrics::new(&config);
        let took = Duration::from_secs(1);
        m.job_finished("qa", AttemptOutcome::Hung, took);
        m.job_finished("qa", AttemptOutcome::Hung, took);
        m.job_finished("qa", AttemptOutcome::Timeout, took);
        m.job_finished("qa", AttemptOutcome::Succeeded, took);
        let text = m.render(&Live::default());
        for line in [
            "ideamill_jobs_failed_total{stage=\"qa\"} 3",
            "ideamill_jobs_timed_out_total{stage=\"qa\"} 1",
            "ideamill_jobs_hung_total{stage=\"qa\"} 2",
            "ideamill_jobs_completed_total{stage=\"qa\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    /// `REASON_CODES` is exactly the codes `judge` can give, and the
    /// runbook has a section for each (the alert rules link to them).
    #[test]
    fn reason_codes_are_the_verdicts_and_the_runbooks() {
        let source = include_str!("verdict.rs");
        let source = source.split("#[cfg(test)]").next().unwrap_or(source);
        let mut judged: Vec<&str> = source
            .split("say(")
            .skip(1)
            .map(|call| {
                let (_, rest) = call.split_once(',').expect("say(level, code, ...)");
                let rest = rest.trim_start().strip_prefix('"').expect("a code literal");
                rest.split('"').next().unwrap_or_default()
            })
            .collect();
        judged.sort_unstable();
        judged.dedup();
        let mut listed = REASON_CODES.to_vec();
        listed.sort_unstable();
        assert_eq!(listed, judged);
        let runbook = include_str!("../../../docs/runbook.md");
        for code in REASON_CODES {
            assert!(
                runbook
                    .lines()
                    .any(|l| l.starts_with(&format!("### `{code}`"))),
                "docs/runbook.md has no section for {code}"
            );
        }
    }

    fn check(live: &Live, expected: &[&str]) {
        let config = ideamill_core::config::parse(
            "[health]\nmin_free_disk_mb = 2\n[[stages]]\nname = \"qa\"\nkind = \"command\"\ncommand = [\"true\"]\n",
            std::path::Path::new("/p/ideamill.toml"),
        )
        .unwrap();
        let text = Metrics::new(&config).render(live);
        for line in expected {
            assert!(text.lines().any(|l| l == *line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn the_verdict_has_a_series_per_reason_code() {
        use crate::verdict::{Level, Reason};
        let reason = |level, code| Reason {
            level,
            code,
            message: String::new(),
        };
        let verdict = Verdict::from_reasons(vec![
            reason(Level::Degraded, "disk_low"),
            reason(Level::Degraded, "job_hung"),
            reason(Level::Degraded, "job_hung"),
        ]);
        check(
            &Live {
                verdict: Some(verdict),
                ..Live::default()
            },
            &[
                "ideamill_health_verdict 1",
                "ideamill_health_reasons{code=\"disk_low\"} 1",
                "ideamill_health_reasons{code=\"job_hung\"} 2",
                "ideamill_health_reasons{code=\"no_engine\"} 0",
            ],
        );
        let healthy = Verdict::from_reasons(Vec::new());
        let live = Live {
            verdict: Some(healthy),
            ..Live::default()
        };
        check(&live, &["ideamill_health_verdict 0"]);
    }

    #[test]
    fn store_figures_disk_and_rate_limits_are_rendered() {
        let live = Live {
            store: Some(StoreFigures {
                paused: 2,
                expired_leases: 1,
                oldest_runnable_age: Duration::from_millis(1500),
            }),
            free_disk: Some(1_000_000),
            ..Live::default()
        };
        check(
            &live,
            &[
                "ideamill_paused_jobs 2",
                "ideamill_expired_lease_jobs 1",
                "ideamill_queue_oldest_age_seconds 1.5",
                "ideamill_disk_free_bytes 1000000",
                "ideamill_disk_min_free_bytes 2097152",
            ],
        );
        // Left out, not zero, when unknown: an alert must not read "no disk".
        let config = ideamill_core::config::parse(
            "[[stages]]\nname = \"qa\"\nkind = \"command\"\ncommand = [\"true\"]\n",
            std::path::Path::new("/p/ideamill.toml"),
        )
        .unwrap();
        let text = Metrics::new(&config).render(&Live::default());
        assert!(!text.contains("ideamill_disk_free_bytes "), "{text}");
        assert!(!text.contains("ideamill_paused_jobs "), "{text}");
    }

    #[test]
    fn rate_limited_calls_are_counted_among_the_errors() {
        let config = ideamill_core::config::parse(
            "[providers.main]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n\
             [[stages]]\nname = \"qa\"\nkind = \"command\"\ncommand = [\"true\"]\n",
            std::path::Path::new("/p/ideamill.toml"),
        )
        .unwrap();
        let m = Metrics::new(&config);
        let limited = LlmCall {
            ok: false,
            rate_limited: true,
            ..LlmCall::default()
        };
        m.record_llm("main", limited);
        m.record_llm("main", limited);
        m.record_llm(
            "main",
            LlmCall {
                ok: true,
                ..LlmCall::default()
            },
        );
        // An unknown provider grows no series.
        m.record_llm("other", limited);
        let text = m.render(&Live::default());
        for line in [
            "ideamill_llm_requests_total{provider=\"main\"} 3",
            "ideamill_llm_errors_total{provider=\"main\"} 2",
            "ideamill_llm_rate_limited_total{provider=\"main\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("other"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
