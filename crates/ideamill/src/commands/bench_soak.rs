//! `ideamill bench soak`: the real binary under a steady load and injected
//! faults for a long time, then drained and audited. It starts `ideamill
//! run` (supervisor and engine; on PostgreSQL several worker processes) on
//! a scratch project whose `llm` stage talks to a flaky provider on
//! loopback (`provider.rs`), feeds it ideas through the API and the inbox
//! (`feed.rs`), injects faults at seeded random moments (`chaos.rs`),
//! watches the queue, the processes and the store (`watch.rs`) and at the
//! end checks the invariants from the store (`audit.rs`). Figures are
//! printed every `--report-every` and at the end; the evidence folder
//! (`--out`) gets the summary, the events, the faults, the series and the
//! logs. Exit 0 when every invariant held, 1 when one broke, 2 on error.

mod audit;
mod chaos;
mod feed;
mod mill;
mod provider;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ideamill_core::Millis;
use ideamill_core::duration::parse_duration;
use ideamill_store::{Store, event_kind};
use ideamill_sys::clock::now_millis;

use chaos::{Action, Chaos};
use feed::Intake;
use mill::{Backend, Mill};
use watch::{Series, WaitTracker};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to feed the mill and inject faults; then it drains.
    #[arg(long, default_value = "20m")]
    duration: String,
    /// `sqlite`; `postgres` (a throwaway cluster of its own, which the
    /// chaos restarts); or a postgres:// URL of a server (a scratch
    /// database there, dropped after; the server is never restarted).
    #[arg(long, default_value = "sqlite", value_name = "sqlite|postgres|URL")]
    store: String,
    /// Seeds the faults, their moments, the provider's answers and the feed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Faults to inject, comma-separated (engine-kill, engine-stop,
    /// supervisor-kill, worker-kill, pg-restart, disk-full, inbox-hostile,
    /// api-malformed), `all` or `none`.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    chaos: Vec<String>,
    /// Mean time between faults.
    #[arg(long, default_value = "30s")]
    chaos_every: String,
    /// Ideas per minute, in batches of 1 to 3.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// `ideamill run` processes on PostgreSQL, each with its supervisor
    /// (SQLite runs one).
    #[arg(long, default_value_t = 3)]
    workers: u32,
    /// How often to print the figures.
    #[arg(long, default_value = "5m")]
    report_every: String,
    /// How long the mill may take to finish its work once feeding stops.
    #[arg(long, default_value = "5m")]
    drain: String,
    /// How much longer than `stall_after` runnable work may wait with a
    /// free slot before the wait must be explained (by a fault or a
    /// detected stall).
    #[arg(long, default_value = "10s")]
    margin: String,
    /// The evidence folder [default: ./soak-<UTC time>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout (the running figures
    /// go to stderr).
    #[arg(long)]
    json: bool,
}

/// What the soak's tasks share.
pub struct Shared {
    pub mill: Mutex<Mill>,
    pub intake: Mutex<Intake>,
    pub actions: Mutex<Vec<Action>>,
    pub http: reqwest::Client,
    pub api: String,
    pub started_at: Millis,
    json: bool,
}

impl Shared {
    pub fn say(&self, line: &str) {
        say(self.json, line);
    }
}

/// Running figures: stdout, or stderr when stdout is the JSON summary.
fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

pub async fn run(args: SoakArgs) -> anyhow::Result<ExitCode> {
    let length = duration("duration", &args.duration)?;
    let chaos_every = duration("chaos-every", &args.chaos_every)?;
    let report_every = duration("report-every", &args.report_every)?;
    let drain_limit = duration("drain", &args.drain)?;
    let margin = duration("margin", &args.margin)?;
    let wanted = chaos_kinds(&args.chaos)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "soak-{}",
            ideamill_sys::clock::utc_stamp(now_millis()).replace([':', ' '], "-")
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let backend = match args.store.as_str() {
        "sqlite" => Backend::Sqlite,
        "postgres" => Backend::OwnCluster(
            tokio::task::spawn_blocking(mill::Cluster::start)
                .await?
                .map_err(|e| anyhow::anyhow!("cannot start a PostgreSQL cluster: {e}"))?,
        ),
        url if ideamill_store::is_postgres_url(url) => Backend::Server(
            ideamill_store::postgres::ScratchDatabase::create(url)
                .await
                .context("cannot create a scratch database for the soak")?,
        ),
        other => {
            anyhow::bail!("--store takes sqlite, postgres or a postgres:// URL, not {other:?}")
        }
    };
    let workers = if matches!(backend, Backend::Sqlite) {
        1
    } else {
        args.workers.max(1)
    };
    let provider =
        provider::FlakyProvider::start(args.seed.wrapping_add(1), Duration::from_secs(20))?;
    let mill = Mill::create(backend, workers, &provider.url)?;
    let json = args.json;
    let say = |line: &str| say(json, line);
    say(&format!(
        "bench soak: {} for {}, {} worker process(es), seed {}, {} ideas/min, a fault every ~{} (project {})",
        mill.backend.name(),
        args.duration,
        workers,
        args.seed,
        args.rate,
        args.chaos_every,
        mill.root.path().display()
    ));
    let mut kinds = Vec::new();
    for kind in wanted {
        match chaos::unavailable(kind, &mill.backend, workers, mill.disk.mounted) {
            Some(why) => say(&format!("  chaos {} skipped: {why}", kind.name())),
            None => kinds.push(kind),
        }
    }
    if let Some(why) = &mill.no_tmpfs {
        say(&format!("  (no tmpfs for the data folder: {why})"));
    }
    let store = crate::project::open_store(&mill.config).await?;
    let capacity: BTreeMap<String, u64> = mill
        .config
        .stages
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                u64::from(s.concurrency) * u64::from(workers),
            )
        })
        .collect();
    // reqwest is built without a TLS provider of its own; plain HTTP needs
    // none, but the client insists (as in `bench web`).
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let shared = Arc::new(Shared {
        api: mill.api.clone(),
        mill: Mutex::new(mill),
        intake: Mutex::new(Intake::default()),
        actions: Mutex::new(Vec::new()),
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()?,
        started_at: now_millis(),
        json,
    });
    let soaking = soak(
        &shared,
        &store,
        Plan {
            length,
            chaos_every,
            report_every,
            drain_limit,
            threshold: mill::STALL_AFTER + margin,
            kinds,
            seed: args.seed,
            rate: args.rate.max(1),
            capacity,
        },
        &provider,
        &out,
    );
    // Interrupted, it still stops the mill and unmounts its disk (when the
    // tasks holding the mill end with the runtime), rather than leave them.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut interrupt, mut terminate) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    let result = tokio::select! {
        r = soaking => r,
        _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
    };
    let backend = {
        let mut mill = shared
            .mill
            .lock()
            .map_err(|_| anyhow::anyhow!("the mill's lock is poisoned"))?;
        mill.stop_all();
        for log in mill.logs() {
            if let Some(name) = log.file_name() {
                let _ = std::fs::copy(&log, out.join(name));
            }
        }
        std::mem::replace(&mut mill.backend, Backend::Sqlite)
    };
    store.close().await;
    if let Backend::Server(db) = backend
        && let Err(e) = db.drop_now().await
    {
        eprintln!("Could not drop the soak's scratch database: {e}");
    }
    let ok = result?;
    say(&format!("  evidence: {}", out.display()));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::NEGATIVE)
    })
}

fn chaos_kinds(names: &[String]) -> anyhow::Result<Vec<Chaos>> {
    match names {
        [one] if one == "all" => return Ok(Chaos::ALL.to_vec()),
        [one] if one == "none" => return Ok(Vec::new()),
        _ => {}
    }
    names
        .iter()
        .map(|n| {
            Chaos::parse(n.trim()).with_context(|| {
                format!(
                    "--chaos: unknown fault {n:?}; the faults are {}, or all or none",
                    Chaos::ALL.map(Chaos::name).join(", ")
                )
            })
        })
        .collect()
}

struct Plan {
    length: Duration,
    chaos_every: Duration,
    report_every: Duration,
    drain_limit: Duration,
    threshold: Duration,
    kinds: Vec<Chaos>,
    seed: u64,
    rate: u32,
    capacity: BTreeMap<String, u64>,
}

/// What the watcher collects over the run.
#[derive(Default)]
struct Watch {
    waits: WaitTracker,
    series: Vec<Series>,
    /// `(seconds, bytes)`.
    store_bytes: Vec<(f64, u64)>,
    /// `(seconds, rows per table)`.
    rows: Vec<(f64, BTreeMap<String, u64>)>,
    /// Runs this process started again, by name.
    restarts: BTreeMap<String, u64>,
    /// Every engine pid seen, sampled each second: whose job groups must
    /// not outlive them.
    engines: BTreeSet<u32>,
    last_status: Option<ideamill_store::StatusSnapshot>,
}

/// Feed, inject, watch, drain, audit. True when every invariant held.
async fn soak(
    shared: &Arc<Shared>,
    store: &Arc<dyn Store>,
    plan: Plan,
    provider: &provider::FlakyProvider,
    out: &Path,
) -> anyhow::Result<bool> {
    shared
        .mill
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .keep_running()?;
    wait_ready(shared).await?;
    let start = Instant::now();
    let until = start + plan.length;
    let chaos = tokio::spawn(chaos::drive(
        shared.clone(),
        plan.kinds.clone(),
        plan.seed,
        plan.chaos_every,
        until,
    ));
    let feeder = tokio::spawn(feed_until(
        shared.clone(),
        plan.seed.wrapping_add(2),
        plan.rate,
        until,
    ));

    let mut w = Watch::default();
    let mut tick = 0u64;
    let mut next_report = start + plan.report_every;
    while Instant::now() < until {
        sample(shared, store, &plan, &mut w, tick).await;
        if Instant::now() >= next_report {
            report(shared, store, &w, provider).await;
            next_report += plan.report_every;
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = feeder.await;
    // The fault in progress ends and puts back what it took.
    let _ = chaos.await;
    shared.say("  feeding and faults stopped; draining");
    let drain_start = Instant::now();
    let mut drained = false;
    while drain_start.elapsed() < plan.drain_limit {
        sample(shared, store, &plan, &mut w, tick).await;
        tick += 1;
        let idle = w.last_status.as_ref().is_some_and(|s| s.items.active == 0);
        if idle && inbox_settled(shared) {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    shared.say(&format!(
        "  {} after {:.0}s",
        if drained { "drained" } else { "NOT drained" },
        drain_start.elapsed().as_secs_f64()
    ));
    count_rows(shared, &mut w).await;
    report(shared, store, &w, provider).await;

    let events = audit::events_since(&**store, shared.started_at).await?;
    let actions = shared.actions.lock().map(|a| a.clone()).unwrap_or_default();
    let inbox = shared
        .mill
        .lock()
        .map(|m| m.inbox().to_path_buf())
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let margins = audit::Margins {
        stall_after: mill::STALL_AFTER,
        recovery: mill::LEASE + mill::STALL_AFTER + Duration::from_secs(15),
        restart_backoff: crate::supervisor::BACKOFF_MAX,
    };
    let mut findings = {
        let intake = std::mem::take(
            &mut *shared
                .intake
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?,
        );
        let f = audit::audit(
            &**store,
            &intake,
            &inbox,
            &actions,
            &w.waits.long_waits,
            &events,
            &margins,
        )
        .await?;
        *shared
            .intake
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = intake;
        f
    };
    findings.sandbox_leftovers = audit::sandbox_leftovers(&w.engines);
    let violations = findings.violations(drained);
    let summary = summary(
        shared,
        &w,
        &findings,
        &violations,
        &actions,
        provider,
        plan.threshold,
    );
    write_evidence(out, &summary, &events, &actions, &w)?;
    print_final(shared, &findings, &violations, &w);
    if shared.json {
        println!("{summary}");
    }
    Ok(violations.is_empty())
}

async fn feed_until(shared: Arc<Shared>, seed: u64, rate: u32, until: Instant) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let inbox = match shared.mill.lock() {
        Ok(m) => m.inbox().to_path_buf(),
        Err(_) => return,
    };
    // Batches average 2 ideas.
    let gap = Duration::from_secs_f64(120.0 / f64::from(rate));
    let mut serial = 0;
    while Instant::now() < until {
        serial += 1;
        feed::send_batch(
            &shared.http,
            &shared.api,
            &inbox,
            &mut rng,
            serial,
            &shared.intake,
        )
        .await;
        tokio::time::sleep(gap.mul_f64(0.5 + rng.f64())).await;
    }
}

/// Wait for the API of the first run to answer.
async fn wait_ready(shared: &Shared) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(r) = shared
            .http
            .get(format!("{}/healthz", shared.api))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        shared
            .mill
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .keep_running()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the mill's API did not answer within 90 s (see run-main.log in the project)")
}

/// No file the soak dropped is left waiting in the inbox.
fn inbox_settled(shared: &Shared) -> bool {
    let (Ok(mill), Ok(intake)) = (shared.mill.lock(), shared.intake.lock()) else {
        return false;
    };
    let waiting = |n: &String| std::fs::symlink_metadata(mill.inbox().join(n)).is_ok();
    !intake.inbox_files.iter().any(waiting) && !intake.hostile_files.iter().any(|(n, _)| waiting(n))
}

/// One second of watching: restart what died, follow the queue; every
/// 10 s the processes and the store's size, every 60 s its rows.
async fn sample(shared: &Shared, store: &Arc<dyn Store>, plan: &Plan, w: &mut Watch, tick: u64) {
    let restarted = shared.mill.lock().ok().map(|mut m| m.keep_running());
    if let Some(Ok(names)) = restarted {
        for name in names {
            *w.restarts.entry(name).or_default() += 1;
        }
    }
    if let Ok(Ok(status)) =
        tokio::time::timeout(Duration::from_secs(3), store.status(now_millis())).await
    {
        w.waits
            .observe(&status, &plan.capacity, plan.threshold.as_millis() as i64);
        w.last_status = Some(status);
    }
    if let Ok(m) = shared.mill.lock() {
        w.engines
            .extend(m.runs.iter().filter_map(|r| r.engine_pid()));
    }
    let at = (now_millis() - shared.started_at) as f64 / 1e3;
    if tick.is_multiple_of(10) {
        let (processes, bytes) = match shared.mill.lock() {
            Ok(m) => (processes(&m), store_bytes(&m)),
            Err(_) => return,
        };
        for (label, pid) in processes {
            let Some(sample) = watch::sample_process(pid, at) else {
                continue;
            };
            match w
                .series
                .iter_mut()
                .find(|s| s.pid == pid && s.label == label)
            {
                Some(s) => s.points.push(sample),
                None => w.series.push(Series {
                    label,
                    pid,
                    points: vec![sample],
                }),
            }
        }
        if let Some(bytes) = bytes {
            w.store_bytes.push((at, bytes));
        }
    }
    if tick.is_multiple_of(60) {
        count_rows(shared, w).await;
    }
}

/// Rows per table, now.
async fn count_rows(shared: &Shared, w: &mut Watch) {
    let at = (now_millis() - shared.started_at) as f64 / 1e3;
    let url = shared
        .mill
        .lock()
        .map(|m| m.config.store.url.clone())
        .unwrap_or_default();
    if let Ok(Ok(rows)) = tokio::time::timeout(
        Duration::from_secs(10),
        ideamill_store::transfer::target_rows(&url),
    )
    .await
    {
        w.rows
            .push((at, rows.into_iter().map(|t| (t.table, t.rows)).collect()));
    }
}

/// Every process of the mill: `(label, pid)`.
fn processes(m: &Mill) -> Vec<(String, u32)> {
    let mut all = Vec::new();
    for run in &m.runs {
        if let Some(pid) = run.supervisor_pid() {
            all.push((format!("supervisor {}", run.name), pid));
        }
        if let Some(pid) = run.engine_pid() {
            all.push((format!("engine {}", run.name), pid));
        }
    }
    if let Some(pid) = m.postmaster_pid() {
        all.push(("postgres".into(), pid));
    }
    all
}

/// The store's bytes on disk: the SQLite files, or our cluster's folder.
fn store_bytes(m: &Mill) -> Option<u64> {
    match &m.backend {
        Backend::Sqlite => {
            let dir = &m.config.engine.data_dir;
            let files = std::fs::read_dir(dir).ok()?;
            Some(
                files
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("ideamill.db"))
                    .map(|e| watch::tree_bytes(&e.path()))
                    .sum(),
            )
        }
        Backend::OwnCluster(c) => Some(watch::tree_bytes(&c.dir().join("data"))),
        Backend::Server(_) => None,
    }
}

/// Engine restarts and, among them and beside them, the stalls the mill
/// detected, since `since`.
async fn restarts_and_stalls(store: &Arc<dyn Store>, since: Millis) -> (u64, u64) {
    let Ok(events) = audit::events_since(&**store, since).await else {
        return (0, 0);
    };
    let restarts = events
        .iter()
        .filter(|e| e.kind == event_kind::ENGINE_RESTARTED)
        .count() as u64;
    let stalls = events
        .iter()
        .filter(|e| audit::is_detected_stall(e))
        .count() as u64;
    (restarts, stalls)
}

const MIB: f64 = 1024.0 * 1024.0;

/// The figures so far.
async fn report(
    shared: &Shared,
    store: &Arc<dyn Store>,
    w: &Watch,
    provider: &provider::FlakyProvider,
) {
    let elapsed = (now_millis() - shared.started_at) / 1000;
    let (api, inbox, refused) = shared
        .intake
        .lock()
        .map(|i| {
            (
                i.api_ids.len(),
                i.inbox_ideas,
                i.api_refused.values().sum::<u64>(),
            )
        })
        .unwrap_or_default();
    let chaos: BTreeMap<&str, u64> = shared.actions.lock().map_or_else(
        |_| BTreeMap::new(),
        |a| {
            a.iter().fold(BTreeMap::new(), |mut m, x| {
                *m.entry(x.kind.name()).or_default() += 1;
                m
            })
        },
    );
    let since = shared.started_at;
    let (restarted, stalled) = restarts_and_stalls(store, since).await;
    let items = w.last_status.as_ref().map(|s| s.items).unwrap_or_default();
    let mut lines = vec![
        format!("[{}m{:02}s]", elapsed / 60, elapsed % 60),
        format!(
            "  ideas in: {} by API ({refused} calls refused), {inbox} in inbox files; done {}, failed {}, unfinished {}",
            api, items.done, items.failed, items.active
        ),
        format!("  faults: {chaos:?}"),
        format!(
            "  restarts: engines by their supervisor {restarted}, runs by the soak {:?}; stalls detected {stalled}",
            w.restarts
        ),
        format!(
            "  longest wait of runnable work with a free slot: {:.1}s ({} over the threshold)",
            w.waits.longest_ms as f64 / 1e3,
            w.waits.long_waits.len()
        ),
        format!("  provider: {:?}", provider.tally()),
    ];
    if let Some((_, bytes)) = w.store_bytes.last() {
        lines.push(format!("  store: {:.1} MiB on disk", *bytes as f64 / MIB));
    }
    if let Some((_, rows)) = w.rows.last() {
        lines.push(format!("  rows: {rows:?}"));
    }
    // Processes the faults ended have their series in the evidence; the
    // report shows the mill's processes now (not whatever reused the pid
    // of one that ended).
    let now: Vec<(String, u32)> = shared.mill.lock().map_or(Vec::new(), |m| processes(&m));
    let (living, ended): (Vec<&Series>, Vec<&Series>) = w.series.iter().partition(|s| {
        now.iter()
            .any(|(label, pid)| *pid == s.pid && *label == s.label)
    });
    for s in living {
        let Some(last) = s.points.last() else {
            continue;
        };
        let slope = s
            .slopes_per_hour()
            .map_or(String::new(), |g| format!(", {}", growth(&g)));
        lines.push(format!(
            "  {} (pid {}, {:.0} min): {:.1} MiB ({:.1} anonymous), {} fds{slope}",
            s.label,
            s.pid,
            (last.at - s.points[0].at) / 60.0,
            last.rss as f64 / MIB,
            last.anon as f64 / MIB,
            last.fds,
        ));
    }
    if !ended.is_empty() {
        lines.push(format!(
            "  {} processes ended by faults (series in series.json)",
            ended.len()
        ));
    }
    for r in watch::roles(&w.series) {
        let slope = r.slopes_after_warm_up.map_or(
            format!(
                "no slope, as it needs {:.0} min",
                watch::WARM_UP_SECS / 60.0 + 1.0
            ),
            |g| {
                format!(
                    "after its first {:.0} min {}",
                    watch::WARM_UP_SECS / 60.0,
                    growth(&g)
                )
            },
        );
        let slope = match r.slopes_last_half {
            Some(g) if r.longest_seconds >= 2.0 * watch::WARM_UP_SECS => format!(
                "{slope}; over its last {:.0} min {}",
                r.longest_seconds / 120.0,
                growth(&g)
            ),
            _ => slope,
        };
        lines.push(format!(
            "  every {} ({} processes): at most {:.1} MiB and {} fds; the longest-lived (pid {}, {:.0} min): {slope}",
            r.role,
            r.processes,
            r.peak_rss as f64 / MIB,
            r.peak_fds,
            r.longest_pid,
            r.longest_seconds / 60.0,
        ));
    }
    shared.say(&lines.join("\n"));
}

/// A process's growth per hour, as the report prints it.
fn growth(g: &watch::Slopes) -> String {
    let window = watch::FDS_WINDOW_SECS / 60.0;
    let fds = match g.fds_floor {
        Some(f) => format!("{f:+.1} fds/h (the floor of each {window:.0} min)"),
        None => format!("fds: no slope yet (3 windows of {window:.0} min)"),
    };
    format!(
        "{:+.1} MiB/h ({:+.1} anonymous), {fds}",
        g.rss_bytes / MIB,
        g.anon_bytes / MIB,
    )
}

fn summary(
    shared: &Shared,
    w: &Watch,
    f: &audit::Findings,
    violations: &[String],
    actions: &[Action],
    provider: &provider::FlakyProvider,
    threshold: Duration,
) -> serde_json::Value {
    let (intake, runs) = match (shared.intake.lock(), shared.mill.lock()) {
        (Ok(i), Ok(m)) => (
            serde_json::json!({
                "api_refused": i.api_refused,
                "malformed_requests": i.malformed,
                "hostile_files": i.hostile_files.len(),
            }),
            m.runs
                .iter()
                .map(|r| serde_json::json!({"name": r.name, "restarts": r.restarts, "unexpected_exits": r.unexpected_exits}))
                .collect::<Vec<_>>(),
        ),
        _ => (serde_json::Value::Null, Vec::new()),
    };
    let mut chaos: BTreeMap<&str, u64> = BTreeMap::new();
    for a in actions {
        *chaos.entry(a.kind.name()).or_default() += 1;
    }
    let processes: Vec<serde_json::Value> = w
        .series
        .iter()
        .map(|s| {
            let first = s.points.first().copied().unwrap_or_default();
            let last = s.points.last().copied().unwrap_or_default();
            serde_json::json!({
                "label": s.label, "pid": s.pid, "samples": s.points.len(),
                "seconds": last.at - first.at,
                "first": first, "last": last,
                "per_hour": s.slopes_per_hour(),
            })
        })
        .collect();
    let store_slope = (w.store_bytes.len() >= 3).then(|| {
        let xs: Vec<f64> = w.store_bytes.iter().map(|p| p.0).collect();
        let ys: Vec<f64> = w.store_bytes.iter().map(|p| p.1 as f64).collect();
        watch::slope(&xs, &ys) * 3600.0
    });
    serde_json::json!({
        "ok": violations.is_empty(),
        "violations": violations,
        "ideas_in": f.ideas_in_api + f.ideas_in_inbox,
        "ideas_in_api": f.ideas_in_api,
        "ideas_in_inbox": f.ideas_in_inbox,
        "items_in_store": f.items_in_store,
        "done": f.done,
        "failed": f.failed,
        "cancelled": f.cancelled,
        "lost": f.lost.len(),
        "in_flight": f.in_flight.len(),
        "duplicated_outputs": f.duplicates.len(),
        "stalls_detected": f.stalls_detected,
        "jobs_hung": f.events.get(event_kind::JOB_HUNG).copied().unwrap_or(0),
        "engine_restarts": f.events.get(event_kind::ENGINE_RESTARTED).copied().unwrap_or(0),
        "runs_restarted_by_soak": w.restarts,
        "runs": runs,
        "longest_runnable_wait_ms": w.waits.longest_ms,
        "wait_threshold_ms": threshold.as_millis() as u64,
        "long_waits": f.long_waits,
        "pickup_p50_ms": f.pickup_p50_ms,
        "pickup_p99_ms": f.pickup_p99_ms,
        "pickup_samples": f.pickup_samples,
        "events": f.events,
        "chaos": chaos,
        "provider": provider.tally().into_iter().collect::<BTreeMap<_, _>>(),
        "intake": intake,
        "hostile_file_fates": f.hostile_files,
        "engines_seen": w.engines.len(),
        "sandbox_leftovers": f.sandbox_leftovers,
        "processes": processes,
        "roles": watch::roles(&w.series),
        "store_bytes_first": w.store_bytes.first().map(|p| p.1),
        "store_bytes_last": w.store_bytes.last().map(|p| p.1),
        "store_bytes_per_hour": store_slope,
        "rows_first": w.rows.first().map(|r| &r.1),
        "rows_last": w.rows.last().map(|r| &r.1),
    })
}

fn write_evidence(
    out: &Path,
    summary: &serde_json::Value,
    events: &[ideamill_store::Event],
    actions: &[Action],
    w: &Watch,
) -> anyhow::Result<()> {
    let write = |name: &str, text: String| {
        std::fs::write(out.join(name), text)
            .with_context(|| format!("cannot write {name} in {}", out.display()))
    };
    write("summary.json", serde_json::to_string_pretty(summary)?)?;
    write(
        "events.jsonl",
        events
            .iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    write("faults.json", serde_json::to_string_pretty(actions)?)?;
    write(
        "series.json",
        serde_json::to_string(&serde_json::json!({
            "processes": w.series,
            "store_bytes": w.store_bytes,
            "rows": w.rows,
            "long_waits": w.waits.long_waits,
            "last_status": w.last_status,
        }))?,
    )?;
    Ok(())
}

fn print_final(shared: &Shared, f: &audit::Findings, violations: &[String], w: &Watch) {
    let mut lines = vec![
        "bench soak: result".to_string(),
        format!(
            "  ideas in {} (API {}, inbox {}); done {}, failed {} {:?}, cancelled {}",
            f.ideas_in_api + f.ideas_in_inbox,
            f.ideas_in_api,
            f.ideas_in_inbox,
            f.done,
            f.failed.values().sum::<u64>(),
            f.failed,
            f.cancelled
        ),
        format!(
            "  lost {}, unfinished {}, outputs committed twice {}",
            f.lost.len(),
            f.in_flight.len(),
            f.duplicates.len()
        ),
        format!(
            "  stalls detected {}, jobs hung {}, engine restarts {}, runs restarted by the soak {:?}",
            f.stalls_detected,
            f.events.get(event_kind::JOB_HUNG).copied().unwrap_or(0),
            f.events
                .get(event_kind::ENGINE_RESTARTED)
                .copied()
                .unwrap_or(0),
            w.restarts
        ),
        format!(
            "  longest wait of runnable work with a free slot {:.1}s; waits over the threshold: {}",
            w.waits.longest_ms as f64 / 1e3,
            f.long_waits
                .iter()
                .map(|(l, why)| format!("{:.1}s ({why})", (l.until - l.since) as f64 / 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "  pickup of jobs tried once: p50 {} ms, p99 {} ms ({} jobs)",
            f.pickup_p50_ms, f.pickup_p99_ms, f.pickup_samples
        ),
        format!("  hostile inbox files ended: {:?}", f.hostile_files),
        format!(
            "  job control groups of dead engines left: {} (of {} engines)",
            f.sandbox_leftovers.len(),
            w.engines.len()
        ),
    ];
    if violations.is_empty() {
        lines.push("  every invariant held".into());
    } else {
        lines.push(format!("  BROKEN ({}):", violations.len()));
        lines.extend(violations.iter().map(|v| format!("    - {v}")));
    }
    shared.say(&lines.join("\n"));
}
