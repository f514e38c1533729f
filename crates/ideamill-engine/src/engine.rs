//! The engine loop: a dispatcher that claims jobs per stage up to each
//! stage's concurrency, job tasks that run executors, one completer that
//! commits finished attempts in batches, and a heartbeat that renews leases,
//! reaps expired ones and delivers cancellations.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ideamill_core::machine::{self, Transition};
use ideamill_core::{AttemptOutcome, Config, FailureClass, ItemState, JobId, Millis};
use ideamill_store::{
    ClaimedJob, Claimer, Finish, FinishEffect, IdleBeat, ItemContext, ProcessInfo, Store,
    StoreError,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use ideamill_health::Health;
use ideamill_telemetry::{SpanId, Telemetry};
use tracing::Instrument;

use crate::calls::{CallCounters, StoreCalls};
use crate::handoff::{HandedOff, LocalClaims};
use crate::traces::{self, AttemptSpans};
use ideamill_stages::executor::{Execution, Executor};
use ideamill_sys::clock::now_millis;
use ideamill_sys::hostname;
use ideamill_sys::process::pid_alive;

/// How a run should behave beyond what the config says.
#[derive(Clone)]
pub struct EngineOptions {
    /// Stop once nothing is runnable or scheduled within `idle_horizon`.
    pub until_idle: bool,
    /// With `until_idle`: how far ahead a scheduled job still counts as work to wait for.
    pub idle_horizon: Duration,
    /// Receives a [`Progress`] for every claim and finish.
    pub progress: Option<mpsc::UnboundedSender<Progress>>,
    /// Health state to keep up to date (jobs in flight, metrics, queue depth).
    pub health: Option<Arc<Health>>,
    /// Where the items' trace spans go; `None`: nowhere.
    pub telemetry: Option<Arc<Telemetry>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            until_idle: false,
            idle_horizon: Duration::from_secs(60),
            progress: None,
            health: None,
            telemetry: None,
        }
    }
}

/// What the engine did, for progress bars and benchmarks.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A job was claimed and is starting.
    Claimed {
        /// The job claimed.
        job: ClaimedJob,
        /// When it was claimed.
        at: Instant,
    },
    /// An attempt ended and its result was committed.
    Finished {
        /// The job that ran.
        job: ClaimedJob,
        /// How the attempt ended.
        outcome: AttemptOutcome,
        /// What the store did with the result, or why it could not.
        effect: Result<FinishEffect, String>,
        /// How long the attempt ran.
        elapsed: Duration,
    },
    /// Jobs of a dead process were recovered.
    Recovered {
        /// What was recovered, for people.
        message: String,
    },
}

/// Totals of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Attempts finished.
    pub attempts: u64,
    /// Items that ended `done`.
    pub items_done: u64,
    /// Items that ended `failed`.
    pub items_failed: u64,
    /// Jobs given back unfinished at shutdown.
    pub released: u64,
    /// The hot-path store calls made, and their time.
    pub store_calls: StoreCalls,
}

/// The engine: claims jobs, runs their stages and commits the results.
pub struct Engine {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    executors: HashMap<String, Arc<dyn Executor>>,
    options: EngineOptions,
    process: ProcessInfo,
}

/// State shared by the engine's tasks.
struct Shared {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    owner: String,
    /// Wakes the dispatcher: a slot freed or new local work was committed.
    wake: Notify,
    /// Cancellation handles of the jobs this process runs.
    running: Mutex<HashMap<JobId, CancellationToken>>,
    /// Jobs a person cancelled (as opposed to work stopped by shutdown).
    cancelled_by_user: Mutex<HashSet<JobId>>,
    /// Set when shutdown's grace ran out and in-flight work was stopped.
    aborting: AtomicBool,
    in_flight: AtomicU64,
    /// Finished attempts handed to the completer and not yet committed.
    committing: AtomicU64,
    idle: Notify,
    attempts: AtomicU64,
    items_done: AtomicU64,
    items_failed: AtomicU64,
    progress: Option<mpsc::UnboundedSender<Progress>>,
    health: Option<Arc<Health>>,
    /// Cross-process wake-ups work: the idle dispatcher needs no timer of its
    /// own, the heartbeat's nudge is its safety net.
    wakeups_on: AtomicBool,
    /// Work may have appeared since the dispatcher last found a stage
    /// drained (see `Shared::new_work`).
    fresh_work: AtomicBool,
    /// Grows whenever the queue may have changed (new work here, a wake-up
    /// from another process): an idle heartbeat reads the queue again only
    /// then (see `heartbeat`).
    queue_changes: AtomicU64,
    /// Where trace spans go (off unless `[telemetry]` says where).
    telemetry: Arc<Telemetry>,
    /// Finished attempts' spans, until their results are committed.
    spans: Mutex<HashMap<JobId, AttemptSpans>>,
    /// The hot-path store calls, counted and timed.
    calls: CallCounters,
    /// Each stage's free slots (its `concurrency`), shared by the dispatcher
    /// and the hand-off (`handoff.rs`).
    slots: HashMap<String, Arc<Semaphore>>,
}

impl Shared {
    /// Wake the dispatcher because jobs may have become runnable (enqueued,
    /// recovered, found by a poll), as opposed to a slot having been freed:
    /// only then does it ask again for the stages it found drained, so that
    /// a busy engine does not send a claim per finished job.
    fn new_work(&self) {
        self.fresh_work.store(true, Ordering::SeqCst);
        self.queue_changes.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn report(&self, p: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(p);
        }
    }

    fn cancel_jobs(&self, ids: &[JobId]) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_user = self
            .cancelled_by_user
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(token) = running.get(id) {
                tracing::info!("Job {id} was cancelled; stopping its work");
                by_user.insert(*id);
                token.cancel();
            }
        }
    }
}

impl Engine {
    /// An engine for `config`, with an executor per stage; it registers as a process when it runs.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        executors: Vec<(String, Arc<dyn Executor>)>,
        options: EngineOptions,
    ) -> Engine {
        let now = now_millis();
        let host = hostname();
        let pid = std::process::id();
        let process = ProcessInfo {
            id: format!("{host}-{pid}-{:04x}", fastrand::u16(..)),
            host,
            pid,
            version: concat!("ideamill ", env!("CARGO_PKG_VERSION")).to_string(),
            started_at: now,
            last_beat_at: now,
            stopped_at: None,
            held_jobs: 0,
        };
        Engine {
            config,
            store,
            executors: executors.into_iter().collect(),
            options,
            process,
        }
    }

    /// This process's id in the store (`<host>-<pid>-<random>`).
    pub fn process_id(&self) -> &str {
        &self.process.id
    }

    /// Run until `shutdown` fires (or, with `until_idle`, until idle). Then
    /// stop claiming, let in-flight work finish within the grace period,
    /// stop what is left and give its jobs back.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
        let store = self.store.clone();
        let config = self.config.clone();
        let shared = Arc::new(Shared {
            config: config.clone(),
            store: store.clone(),
            owner: self.process.id.clone(),
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            cancelled_by_user: Mutex::new(HashSet::new()),
            aborting: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            committing: AtomicU64::new(0),
            idle: Notify::new(),
            attempts: AtomicU64::new(0),
            items_done: AtomicU64::new(0),
            items_failed: AtomicU64::new(0),
            progress: self.options.progress.clone(),
            health: self.options.health.clone(),
            wakeups_on: AtomicBool::new(false),
            fresh_work: AtomicBool::new(true),
            queue_changes: AtomicU64::new(0),
            telemetry: self
                .options
                .telemetry
                .clone()
                .unwrap_or_else(|| Arc::new(Telemetry::off())),
            spans: Mutex::new(HashMap::new()),
            calls: CallCounters::default(),
            slots: config
                .stages
                .iter()
                .filter(|s| self.executors.contains_key(&s.name))
                .map(|s| {
                    (
                        s.name.clone(),
                        Arc::new(Semaphore::new(s.concurrency as usize)),
                    )
                })
                .collect(),
        });
        if !register(&shared, &self.process, &shutdown).await {
            return Ok(RunSummary::default());
        }
        // From here on the engine counts as started (status file, beats).
        if let Some(h) = &shared.health {
            h.set_process(&self.process);
        }
        recover_dead_processes(&shared, &self.process).await;
        if shared.health.is_some() {
            report_earlier_stalls(&shared).await;
        }
        ideamill_stages::budget::resume_within_caps(&shared.config, shared.store.as_ref()).await;

        let (finish_tx, finish_rx) = mpsc::unbounded_channel::<Finished>();
        let completer = tokio::spawn(complete(shared.clone(), finish_rx));
        let beat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), beat_stop.clone()));

        // Items added in this process start here when a slot is free.
        let (handoff_tx, mut handoffs) = mpsc::unbounded_channel();
        let claims = Arc::new(LocalClaims::new(
            shared.owner.clone(),
            ideamill_core::duration::millis(config.engine.lease),
            shared.slots.clone(),
            handoff_tx,
        ));
        let claimer: Arc<dyn Claimer> = claims.clone();
        store.set_claimer(claimer.clone());

        let stop_claiming = shutdown.child_token();
        let dispatched = dispatch(
            &shared,
            &self.executors,
            &self.options,
            finish_tx,
            &mut handoffs,
            stop_claiming.clone(),
        )
        .await;
        if let Err(e) = &dispatched {
            tracing::error!("The dispatcher stopped: {e:#}");
        }
        claims.close();
        store.unset_claimer(&claimer);

        // Drain: let in-flight work finish within the grace period.
        let grace = config.engine.shutdown_grace;
        let in_flight = shared.in_flight.load(Ordering::SeqCst);
        if in_flight > 0 {
            tracing::info!(
                "Stopping: waiting up to {} for {in_flight} running job(s) to finish",
                ideamill_core::duration::format_duration(grace)
            );
        }
        if tokio::time::timeout(grace, wait_idle(&shared))
            .await
            .is_err()
        {
            tracing::warn!("Grace period over: stopping the remaining jobs and giving them back");
            shared.aborting.store(true, Ordering::SeqCst);
            for token in shared
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                token.cancel();
            }
            let _ = tokio::time::timeout(Duration::from_secs(30), wait_idle(&shared)).await;
        }
        // The completer ends when every job task has dropped its sender.
        let _ = completer.await;
        beat_stop.cancel();
        let _ = heartbeat.await;
        let released = store
            .release(&self.process.id, now_millis())
            .await
            .unwrap_or_else(|e| {
                tracing::error!(
                    "Could not give back held jobs ({e}); they run again when their leases expire"
                );
                0
            });
        // Jobs handed off after the dispatcher stopped were given back with
        // the rest; an add that hands off from now on gives its own back.
        drop(handoffs);
        if let Err(e) = store.stop_process(&self.process.id, now_millis()).await {
            tracing::warn!("Could not record this process as stopped: {e}");
        }
        dispatched?;
        Ok(RunSummary {
            attempts: shared.attempts.load(Ordering::SeqCst),
            items_done: shared.items_done.load(Ordering::SeqCst),
            items_failed: shared.items_failed.load(Ordering::SeqCst),
            released,
            store_calls: shared.calls.snapshot(),
        })
    }
}

async fn wait_idle(shared: &Shared) {
    loop {
        let notified = shared.idle.notified();
        if shared.in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
        notified.await;
    }
}

/// Register this process, retrying with backoff while the store cannot
/// take it (a database down, a full disk): the engine waits, DEGRADED,
/// rather than exits. False when shut down first.
async fn register(shared: &Shared, me: &ProcessInfo, shutdown: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(500);
    let mut outage: Option<Outage> = None;
    loop {
        match shared.store.register_process(me).await {
            Ok(()) => {
                if let Some(lost) = outage {
                    store_back(shared, lost, now_millis()).await;
                }
                return true;
            }
            Err(e) => {
                tracing::error!(
                    "DEGRADED: cannot register this engine with the store ({e}); retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                outage.get_or_insert_with(|| Outage {
                    since: Instant::now(),
                    at: now_millis(),
                    error: e.to_string(),
                });
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Processes on this machine that died without stopping (SIGKILL, power
/// loss) hold leases nobody renews: expire them now instead of waiting.
async fn recover_dead_processes(shared: &Shared, me: &ProcessInfo) {
    let processes = match shared.store.processes().await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("Could not list processes to recover: {e}");
            return;
        }
    };
    for p in processes {
        // Our own pid under another id means its old owner is gone (a
        // container restarts with the same pid).
        let dead = p.host == me.host && p.id != me.id && (p.pid == me.pid || !pid_alive(p.pid));
        if !dead {
            continue;
        }
        match shared.store.expire_process(&p.id, now_millis()).await {
            Ok(n) => {
                let message = format!(
                    "Process {} (pid {}) died without stopping; recovering its {n} job(s)",
                    p.id, p.pid
                );
                tracing::warn!("{message}");
                shared.report(Progress::Recovered { message });
            }
            Err(e) => tracing::warn!("Could not recover process {}: {e}", p.id),
        }
    }
    reap(shared, "ideamill.engine_restarted").await;
}

/// How long a process may go without beating before it counts as gone:
/// four leases.
fn silent_for(engine: &ideamill_core::config::EngineConfig) -> Millis {
    4 * ideamill_core::duration::millis(engine.lease)
}

/// A process on another machine that stopped beating long ago is gone
/// (killed, powered off, cut off): mark it so, so that status stops counting
/// it as running. Its jobs are already handled by the lease rules.
async fn expire_silent_processes(shared: &Shared, now: Millis) {
    let silent_for = silent_for(&shared.config.engine);
    let Ok(processes) = shared.store.processes().await else {
        return;
    };
    for p in processes
        .iter()
        .filter(|p| p.id != shared.owner && now - p.last_beat_at > silent_for)
    {
        match shared.store.expire_process(&p.id, now).await {
            Ok(_) => tracing::warn!(
                "Process {} has not beaten for {} ms; recorded as gone",
                p.id,
                now - p.last_beat_at
            ),
            Err(e) => tracing::warn!("Could not mark process {} as gone: {e}", p.id),
        }
    }
}

/// `why` names the recovery in the items' traces: a lease that expired, or
/// the jobs of an engine that died on this host (found at start).
async fn reap(shared: &Shared, why: &'static str) {
    match shared.store.reap_expired(now_millis()).await {
        Ok(reaped) => {
            for r in &reaped {
                let message = format!(
                    "Recovered job {} (item {}, stage `{}`) from {}: {:?}",
                    r.job_id, r.item_id, r.stage, r.owner, r.action
                );
                tracing::warn!("{message}");
                shared.report(Progress::Recovered { message });
                if shared.telemetry.enabled() {
                    trace_recovery(shared, r, why).await;
                }
            }
            if !reaped.is_empty() {
                shared.new_work();
            }
        }
        Err(e) => tracing::warn!("Could not reap expired leases: {e}"),
    }
}

/// A recovery's span in the item's trace (one store read: recoveries are rare).
async fn trace_recovery(shared: &Shared, job: &ideamill_store::ReapedJob, why: &'static str) {
    let Ok(context) = shared.store.context(job.item_id).await else {
        return;
    };
    if let Some(trace) = traces::trace_of(&shared.telemetry, &context.item) {
        shared
            .telemetry
            .record(traces::recovered(trace, now_millis(), why, job));
    }
}

/// While idle, the queue is read again when something may have changed it
/// (a wake-up), else this seldom: its figures (status file, `/metrics`) are
/// for people, and a lost wake-up is still found.
const IDLE_QUEUE_READ: Duration = Duration::from_secs(60);

/// The least time between two unmappings of idle code: each costs the next
/// busy spell a minor fault per code page it runs again.
const UNMAP_CODE_EVERY: Duration = Duration::from_secs(60);

/// One beat per `heartbeat`: renew the leases of the jobs this process runs, deliver
/// cancellations, reap other processes' expired leases, prune old rows. An
/// idle engine (running nothing, nothing runnable when it last looked) does
/// the store's part every `EngineConfig::idle_beat` only, so that with an
/// empty queue it wakes no thread but its loop's between those.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let engine = &shared.config.engine;
    // On the pulse's grid, so that an idle engine wakes once per beat, not twice.
    let mut ticker = crate::health::pulse::Ticker::new(shared.health.as_deref(), engine.heartbeat);
    let mut last_prune: Option<Instant> = None;
    let mut last_silent_check: Option<Instant> = None;
    let mut last_budget_check = Instant::now();
    let mut outage: Option<Outage> = None;
    let idle_every = engine.idle_beat();
    let mut last_store_beat: Option<Instant> = None;
    // When the queue was last read, what had changed it by then, and
    // whether it had runnable work.
    let mut queue_seen: Option<(Instant, (u64, usize))> = None;
    let mut runnable_seen = true;
    // Whether this idle spell unmapped the code it no longer runs, and when
    // that was last done.
    let mut code_unmapped = false;
    let mut last_unmap: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = now_millis();
        // Only the jobs whose work still goes on here: a job whose task ended
        // but whose result is not committed must not be held forever.
        let running: Vec<JobId> = shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        let idle = running.is_empty() && !runnable_seen && outage.is_none();
        // At the first tick at least `idle_every` after the last store beat
        // (a few ms of slack for the timer): at most a beat later than that.
        if idle
            && last_store_beat.is_some_and(|t| t.elapsed() + Duration::from_millis(50) < idle_every)
        {
            continue;
        }
        last_store_beat = Some(Instant::now());
        // Then the reaper, once the store answered (during an outage only
        // the beat tries it). Not at once: on SQLite the writer's and a
        // reader's threads, run together, took turns on SQLite's
        // process-wide file-lock mutex and woke each other a few times a
        // beat.
        let (beat, found) = if idle {
            match shared
                .store
                .idle_beat(&shared.owner, now, now - silent_for(engine))
                .await
            {
                Ok(found) => (Ok(Vec::new()), found),
                Err(e) => (Err(e), IdleBeat::MAYBE),
            }
        } else {
            let beat = shared
                .store
                .heartbeat(
                    &shared.owner,
                    now,
                    now + ideamill_core::duration::millis(engine.lease),
                    &running,
                )
                .await;
            (beat, IdleBeat::MAYBE)
        };
        if beat.is_ok() && found.expired_leases {
            reap(&shared, "ideamill.lease_expired").await;
        }
        match beat {
            Ok(cancels) => {
                if let Some(lost) = outage.take() {
                    store_back(&shared, lost, now).await;
                }
                shared.cancel_jobs(&cancels)
            }
            Err(e) => {
                // The store is unreachable (a dropped connection, a database
                // restart): keep beating until it answers; everything else
                // in this beat would fail the same way.
                match &outage {
                    None => {
                        tracing::error!(
                            "DEGRADED: the store does not answer ({e}); retrying every beat. \
                             Leases expire in {:?} unless it recovers; their jobs then run again",
                            engine.lease
                        );
                        outage = Some(Outage {
                            since: Instant::now(),
                            at: now,
                            error: e.to_string(),
                        });
                    }
                    Some(o) => tracing::warn!(
                        "DEGRADED: the store still does not answer after {:.0?} ({e})",
                        o.since.elapsed()
                    ),
                }
                continue;
            }
        }
        // Idle, with the store answering: the code that starting up and the
        // last jobs ran need not stay mapped (at most once a minute, so a
        // queue that fills and drains often does not pay for it each time).
        if !idle {
            code_unmapped = false;
        } else if !code_unmapped && last_unmap.is_none_or(|t| t.elapsed() >= UNMAP_CODE_EVERY) {
            code_unmapped = true;
            last_unmap = Some(Instant::now());
            let bytes = ideamill_health::memory::unmap_idle_code();
            tracing::debug!("Idle: unmapped {} KiB of code pages", bytes / 1024);
        }
        // Other machines' long-silent processes: once per lease is plenty
        // (while idle, only when the beat saw one).
        if found.silent_processes && last_silent_check.is_none_or(|t| t.elapsed() >= engine.lease) {
            last_silent_check = Some(Instant::now());
            expire_silent_processes(&shared, now).await;
        }
        // Items paused by a budget resume once it allows (a raised cap, a
        // new day); checking once a minute is plenty (while idle, only when
        // the beat saw a paused job).
        if found.paused_jobs && last_budget_check.elapsed() >= Duration::from_secs(60) {
            last_budget_check = Instant::now();
            ideamill_stages::budget::resume_within_caps(&shared.config, shared.store.as_ref())
                .await;
        }
        if let Some(h) = &shared.health {
            let changes = (shared.queue_changes.load(Ordering::SeqCst), running.len());
            let read_queue = !idle
                || queue_seen
                    .is_none_or(|(at, seen)| seen != changes || at.elapsed() >= IDLE_QUEUE_READ);
            if read_queue {
                queue_seen = Some((Instant::now(), changes));
                runnable_seen = match shared.store.queue_depth(now).await {
                    Ok(q) => {
                        let runnable = q.iter().any(|c| c.queued > 0);
                        h.set_queue(q);
                        runnable
                    }
                    Err(e) => {
                        tracing::debug!("Could not read the queue depth: {e}");
                        true
                    }
                };
                if runnable_seen && shared.wakeups_on.load(Ordering::Relaxed) {
                    // The dispatcher's safety net for a lost wake-up rides on
                    // the beat, and only when there is runnable work to find.
                    shared.new_work();
                }
            }
        }
        if let Some(retention) = engine.retention
            && last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(3600))
        {
            last_prune = Some(Instant::now());
            match shared
                .store
                .prune(now - ideamill_core::duration::millis(retention))
                .await
            {
                Ok(c) if c.items > 0 || c.events > 0 => {
                    let workspace = engine.workspace.clone();
                    let removed = tokio::task::spawn_blocking(move || {
                        ideamill_stages::executor::remove_item_workspaces(&workspace, &c.item_ids)
                    })
                    .await
                    .unwrap_or_default();
                    tracing::info!(
                        "Pruned {} finished items ({} workspace folders) and {} events past the retention",
                        c.items,
                        removed.folders,
                        c.events
                    );
                    for failure in &removed.failed {
                        tracing::warn!("Could not remove a pruned item's workspace: {failure}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("Pruning failed: {e}"),
            }
        }
    }
}

/// A time the store did not answer the heartbeat.
struct Outage {
    since: Instant,
    /// Wall clock of the first failed beat.
    at: Millis,
    error: String,
}

/// The store answers again: say so, and record it, so that `status` and
/// `doctor` show the outage (DEGRADED) for a while.
async fn store_back(shared: &Shared, lost: Outage, now: Millis) {
    let took = lost.since.elapsed();
    tracing::info!(
        "The store answers again after {:.1} s; resuming",
        took.as_secs_f64()
    );
    let event = ideamill_store::NewEvent {
        at: now,
        kind: ideamill_store::event_kind::STORE_OUTAGE,
        item_id: None,
        job_id: None,
        process: Some(shared.owner.clone()),
        message: format!(
            "Process {} could not use the store for {:.1} s from {} (first error: {}); it reconnected and resumed",
            shared.owner,
            took.as_secs_f64(),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(lost.at.max(0) as u64)
            ),
            lost.error
        ),
    };
    if let Err(e) = shared.store.record_event(&event).await {
        tracing::warn!("Could not record the store outage: {e}");
    }
    // Work may have piled up, and wake-ups sent meanwhile are lost.
    shared.new_work();
}

struct StageSlot {
    name: String,
    slots: Arc<Semaphore>,
    executor: Arc<dyn Executor>,
}

/// Claim and start jobs until told to stop (or, with `until_idle`, until
/// there is nothing left to do).
async fn dispatch(
    shared: &Arc<Shared>,
    executors: &HashMap<String, Arc<dyn Executor>>,
    options: &EngineOptions,
    finish_tx: mpsc::UnboundedSender<Finished>,
    handoffs: &mut mpsc::UnboundedReceiver<HandedOff>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let config = &shared.config;
    let stages: Vec<StageSlot> = config
        .stages
        .iter()
        .filter_map(|s| {
            Some(StageSlot {
                name: s.name.clone(),
                slots: shared.slots.get(&s.name)?.clone(),
                executor: executors.get(&s.name)?.clone(),
            })
        })
        .collect();
    let stage_names: Vec<String> = stages.iter().map(|s| s.name.clone()).collect();
    let mut signal = match shared.store.subscribe() {
        Ok(s) => {
            shared.wakeups_on.store(true, Ordering::Relaxed);
            Some(s)
        }
        Err(e) => {
            tracing::warn!(
                "Cross-process wake-ups are off ({e}); work added elsewhere is found by polling"
            );
            None
        }
    };
    let lease = ideamill_core::duration::millis(config.engine.lease);
    let mut store_errors = 0u32;
    // Stages that may have runnable jobs: on a database server, a claim
    // that gets fewer jobs than it asked for drains its stage until new work
    // is announced, so that a busy engine does not send a claim per finished
    // job.
    let mut maybe = vec![true; stages.len()];
    let remote = shared.store.is_remote();
    // Woken by a change elsewhere: after claiming, look for cancellations
    // of jobs we hold (claims first, so a wake-up's new work starts sooner).
    let mut look_for_cancels = false;
    while !stop.is_cancelled() {
        while let Ok(handed) = handoffs.try_recv() {
            start_handed_off(shared, &stages, handed, &finish_tx);
        }
        if shared.fresh_work.swap(false, Ordering::SeqCst) {
            maybe.fill(true);
        }
        let mut claimed_any = false;
        let mut failed = false;
        for (stage, maybe) in stages.iter().zip(maybe.iter_mut()) {
            let free = stage.slots.available_permits();
            if free == 0 || !*maybe {
                continue;
            }
            // The slots are taken before the claim: an add's hand-off may
            // reserve some of them while the claim is out.
            let Ok(slots) = stage.slots.clone().try_acquire_many_owned(free as u32) else {
                // An add took some meanwhile: look again at once.
                claimed_any = true;
                continue;
            };
            let now = now_millis();
            let asked = Instant::now();
            let claimed = shared
                .store
                .claim_with_contexts(&stage.name, free as u32, &shared.owner, now, now + lease)
                .await;
            shared.calls.claim(asked);
            let claimed = match claimed {
                Ok(c) => {
                    // An embedded store's claims cost next to nothing: ask
                    // every time a slot frees up.
                    if c.len() < free && remote {
                        *maybe = false;
                    }
                    c
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!("Could not claim jobs of stage `{}`: {e}", stage.name);
                    continue;
                }
            };
            claimed_any |= !claimed.is_empty();
            start_in_slots(shared, &stages, claimed, slots, &finish_tx);
        }
        if std::mem::take(&mut look_for_cancels) && shared.in_flight.load(Ordering::SeqCst) > 0 {
            match shared.store.cancel_requests(&shared.owner).await {
                Ok(ids) => shared.cancel_jobs(&ids),
                Err(e) => tracing::warn!("Could not check for cancellations: {e}"),
            }
        }
        if failed {
            // The store is unreachable or locked: back off, do not spin.
            store_errors = (store_errors + 1).min(6);
            let delay = Duration::from_millis(50 << store_errors);
            tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
            continue;
        }
        store_errors = 0;
        if claimed_any {
            continue;
        }
        // Idle: sleep until woken, until the next scheduled job, or until
        // the safety-net poll.
        let now = now_millis();
        // Results still being committed wake us when they are: until then
        // nothing is settled enough to judge (and the store's pending
        // count is not read once per wake-up while a big batch commits).
        if options.until_idle
            && shared.in_flight.load(Ordering::SeqCst) == 0
            && shared.committing.load(Ordering::SeqCst) == 0
        {
            let pending = match shared
                .store
                .pending(now + ideamill_core::duration::millis(options.idle_horizon))
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    // Not idle as far as we know: back off and look again.
                    tracing::warn!("Could not check for pending work: {e}");
                    store_errors = (store_errors + 1).min(6);
                    let delay = Duration::from_millis(50 << store_errors);
                    tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(delay) => {} }
                    continue;
                }
            };
            if pending.soon == 0 && pending.running == 0 {
                if pending.later > 0 {
                    tracing::info!(
                        "Idle: {} job(s) are scheduled later than {:?} from now; exiting",
                        pending.later,
                        options.idle_horizon
                    );
                }
                break;
            }
            if pending.running == 0
                && let Some(stranded) = only_stranded_work(shared, config, now).await
            {
                tracing::warn!(
                    "Idle: what is left waits on stages the config no longer has: {stranded}; \
                     exiting. `ideamill list --stage NAME` lists those items, \
                     `ideamill retry ID --from STAGE` moves one"
                );
                break;
            }
        }
        // With wake-ups on, the heartbeat nudges the dispatcher every beat,
        // so it needs no timer of its own but the next scheduled job's.
        let mut wait = if signal.is_some() && shared.health.is_some() {
            Duration::from_secs(3600)
        } else {
            config.engine.poll_interval
        };
        // A scheduled job matters only to a stage with a free slot (a full
        // stage is woken when one frees).
        let can_claim = stages.iter().any(|s| s.slots.available_permits() > 0);
        if can_claim
            && let Ok(Some(next)) = shared.store.next_run_at(&stage_names).await
            && next > now
        {
            wait = wait.min(Duration::from_millis((next - now) as u64));
        }
        let local = shared.wake.notified();
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = local => {}
            // The poll, or the next scheduled job's time.
            _ = tokio::time::sleep(wait) => maybe.fill(true),
            Some(handed) = handoffs.recv() => start_handed_off(shared, &stages, handed, &finish_tx),
            _ = async {
                match signal.as_mut() {
                    Some(s) => s.wait().await,
                    None => std::future::pending().await,
                }
            } => {
                // Something changed: new work, or maybe a cancellation of
                // a job we hold.
                maybe.fill(true);
                shared.queue_changes.fetch_add(1, Ordering::SeqCst);
                look_for_cancels = true;
            }
        }
    }
    Ok(())
}

fn start_claimed(
    shared: &Arc<Shared>,
    stage: &StageSlot,
    job: ClaimedJob,
    context: Option<ItemContext>,
    permit: OwnedSemaphorePermit,
    finish_tx: &mpsc::UnboundedSender<Finished>,
) {
    if let Some(h) = &shared.health {
        h.job_started(&job);
    }
    shared.report(Progress::Claimed {
        job: job.clone(),
        at: Instant::now(),
    });
    start_job(
        shared,
        job,
        context,
        stage.executor.clone(),
        finish_tx.clone(),
        permit,
    );
}

/// Start the jobs an add in this process claimed for us, each in one of
/// the slots it reserved.
fn start_handed_off(
    shared: &Arc<Shared>,
    stages: &[StageSlot],
    handed: HandedOff,
    finish_tx: &mpsc::UnboundedSender<Finished>,
) {
    let HandedOff { jobs, slots } = handed;
    shared.queue_changes.fetch_add(1, Ordering::SeqCst);
    shared.calls.handed_off(jobs.len() as u64);
    let jobs = jobs.into_iter().map(|job| (job, None)).collect();
    start_in_slots(shared, stages, jobs, slots, finish_tx);
}

/// Start claimed jobs, each in one of `slots` (held for them), with its
/// context where the claim read it; the slots left over are freed.
fn start_in_slots(
    shared: &Arc<Shared>,
    stages: &[StageSlot],
    jobs: Vec<(ClaimedJob, Option<ItemContext>)>,
    slots: OwnedSemaphorePermit,
    finish_tx: &mpsc::UnboundedSender<Finished>,
) {
    let mut slots = Some(slots);
    for (job, context) in jobs {
        let permit = match slots.as_mut() {
            Some(left) if left.num_permits() > 1 => left.split(1),
            _ => slots.take(),
        };
        let (Some(permit), Some(stage)) = (permit, stages.iter().find(|s| s.name == job.stage))
        else {
            // Cannot happen: slots are held for one of our stages, at
            // least one per job.
            no_slot(&job);
            continue;
        };
        start_claimed(shared, stage, job, context, permit, finish_tx);
    }
}

fn no_slot(job: &ClaimedJob) {
    tracing::error!(
        "No free slot for claimed job {}; it runs again when its lease expires",
        job.id
    );
}

/// Stalls that an earlier engine's watchdog ended with nobody to report
/// them (`--no-supervisor`: systemd or Kubernetes started this engine
/// again): one `engine_stalled` event each, so no stall goes unrecorded.
/// A supervisor marks the bundles it reported in its restart event.
async fn report_earlier_stalls(shared: &Shared) {
    use crate::health::watchdog::{mark_reported, unreported_stalls};
    for (bundle, stall) in unreported_stalls(&shared.config.engine.data_dir) {
        let event = ideamill_store::NewEvent {
            at: now_millis(),
            kind: ideamill_store::event_kind::ENGINE_STALLED,
            item_id: None,
            job_id: None,
            process: stall.process_id.clone(),
            message: format!(
                "Engine pid {} stalled at {}: {} (found by its {}, which ended it); evidence in {}",
                stall.pid,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(stall.detected_at.max(0) as u64)
                ),
                stall.reason,
                stall.detected_by,
                bundle.display()
            ),
        };
        match shared.store.record_event(&event).await {
            Ok(()) => mark_reported(&bundle),
            Err(e) => tracing::warn!("Could not record an earlier engine's stall: {e}"),
        }
    }
}

fn start_job(
    shared: &Arc<Shared>,
    job: ClaimedJob,
    context: Option<ItemContext>,
    executor: Arc<dyn Executor>,
    finish_tx: mpsc::UnboundedSender<Finished>,
    permit: OwnedSemaphorePermit,
) {
    let token = CancellationToken::new();
    shared
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(job.id, token.clone());
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    let shared = shared.clone();
    // Every log line of the job's work carries its ids (the JSON log
    // format writes them as fields); the trace's are filled in below.
    let span = tracing::info_span!(
        "job",
        item = job.item_id,
        job = job.id,
        stage = %job.stage,
        attempt = job.attempt,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let mut permit = Some(permit);
    let work = async move {
        let started = now_millis();
        let clock = Instant::now();
        let mut trace = None;
        let attempt_span = SpanId::random();
        let context = match context {
            Some(context) => Ok(context),
            None => {
                let asked = Instant::now();
                let context = shared.store.context(job.item_id).await;
                shared.calls.context(asked);
                context
            }
        };
        let (execution, round) = match context {
            Ok(mut context) => {
                trace = traces::trace_of(&shared.telemetry, &context.item);
                if let Some(trace) = trace {
                    let current = tracing::Span::current();
                    current.record("trace_id", tracing::field::display(trace));
                    current.record("span_id", tracing::field::display(attempt_span));
                    context.traceparent =
                        Some(ideamill_telemetry::span::traceparent(&trace, &attempt_span));
                    // The item's first pickup sends its root span.
                    if job.round == 1
                        && job.attempt == 1
                        && job.stage == shared.config.first_stage().name
                    {
                        shared.telemetry.record(traces::item_root(
                            trace,
                            &context.item,
                            &job,
                            shared.telemetry.capture_content(),
                        ));
                    }
                }
                let files = crate::rounds::files_before_gate(&shared.config, &job).await;
                let run = executor.run(&job, &context, &token);
                let execution = match shared.config.stage(&job.stage) {
                    Some(stage) => crate::deadline::bounded(run, &token, stage).await,
                    None => run.await,
                };
                (execution, Some((context, files)))
            }
            Err(e) => (
                Execution::infra(format!("could not load the item's context: {e}")),
                None,
            ),
        };
        let by_user = shared
            .cancelled_by_user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.id);
        shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.id);
        let interrupted = execution.result == machine::StageResult::Cancelled && !by_user;
        if interrupted && shared.aborting.load(Ordering::SeqCst) {
            // Shutdown stopped this work: no outcome to record; the job is
            // given back by `release`.
        } else if let Some(stage) = shared.config.stage(&job.stage) {
            let now = now_millis();
            let outcome = execution.result.outcome();
            let rate_limited = matches!(execution.result, machine::StageResult::RateLimited { .. });
            if outcome == AttemptOutcome::Hung {
                record_hung(
                    &shared,
                    &job,
                    execution.error.as_deref().unwrap_or("hung"),
                    now,
                )
                .await;
            }
            let round_hash = round.as_ref().and_then(|(_, files)| {
                crate::rounds::round_hash(files.as_deref(), &execution.result)
            });
            let transition = machine::decide(
                &shared.config,
                stage,
                job.attempt,
                job.round,
                execution.result,
                now,
                fastrand::f64(),
            );
            let transition = match (&round, &round_hash) {
                (Some((context, _)), Some(hash)) => {
                    crate::rounds::judge(&job, context, hash, transition)
                }
                _ => transition,
            };
            let finish = Finish {
                job: job.clone(),
                owner: shared.owner.clone(),
                outcome,
                started_at: started,
                finished_at: now,
                exit_code: execution.exit_code,
                error: execution.error,
                output: execution.output,
                stderr: execution.stderr,
                usage: execution.usage,
                transition,
                round_hash,
            };
            if let Some(trace) = trace {
                let spans = AttemptSpans {
                    trace,
                    attempt: traces::attempt(trace, attempt_span, &finish, started, &shared.owner),
                    call: execution.model_call.as_ref().map(|call| {
                        traces::model_call(
                            trace,
                            attempt_span,
                            call,
                            shared.telemetry.capture_content(),
                        )
                    }),
                };
                shared
                    .spans
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(job.id, spans);
            }
            if let (Some(h), Some(provider)) = (&shared.health, executor.provider()) {
                let usage = finish.usage.as_ref();
                h.metrics.record_llm(
                    provider,
                    ideamill_health::metrics::LlmCall {
                        ok: usage.is_some(),
                        rate_limited,
                        prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
                        completion_tokens: usage.map_or(0, |u| u.completion_tokens),
                        cost_usd: usage.map_or(0.0, |u| u.cost),
                    },
                );
            }
            // An embedded store's slot is held until the result is
            // committed (see `Finished`); a server's is freed now, so that
            // more work runs while a commit waits for its WAL flush.
            let slot = if shared.store.is_remote() {
                None
            } else {
                permit.take()
            };
            shared.committing.fetch_add(1, Ordering::SeqCst);
            if finish_tx.send(Finished { finish, slot }).is_err() {
                shared.committing.fetch_sub(1, Ordering::SeqCst);
            }
        }
        tracing::debug!(
            "Job {} ({}) ran for {:?}",
            job.id,
            job.stage,
            clock.elapsed()
        );
        if let Some(h) = &shared.health {
            h.job_ended(job.id);
        }
        drop(permit);
        drop(finish_tx);
        if shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            shared.idle.notify_waiters();
        }
        shared.wake.notify_one();
    };
    tokio::spawn(work.instrument(span));
}

/// A finished attempt on its way to the store. On an embedded store it
/// holds its stage slot until its result is committed: the store has one
/// writer, so a claim made meanwhile would only wait for the commit; after
/// it, one claim takes all the slots the batch freed, rather than one claim
/// per finished job. A database server commits while other work goes on,
/// and its commits wait for a WAL flush: there the slot is freed at once.
struct Finished {
    finish: Finish,
    slot: Option<OwnedSemaphorePermit>,
}

/// Commit finished attempts. Whatever has piled up is committed in one
/// transaction (group commit); a single job commits at once. On a database
/// server two batches may commit at the same time (their jobs are distinct,
/// and each finish is fenced by its own lease token), so that one batch's
/// round trips and flush overlap the next one's work.
async fn complete(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Finished>) {
    let committers = if shared.store.is_remote() { 2 } else { 1 };
    let slots = Arc::new(Semaphore::new(committers));
    let mut commits = tokio::task::JoinSet::new();
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let (batch, held): (Vec<Finish>, Vec<Option<OwnedSemaphorePermit>>) =
            batch.into_iter().map(|f| (f.finish, f.slot)).unzip();
        let shared = shared.clone();
        commits.spawn(async move {
            let n = batch.len() as u64;
            commit_batch(&shared, batch).await;
            drop(slot);
            drop(held);
            shared.committing.fetch_sub(n, Ordering::SeqCst);
            shared.wake.notify_one();
        });
        // Reap finished commits as we go, so the set stays small.
        while commits.try_join_next().is_some() {}
    }
    while commits.join_next().await.is_some() {}
}

/// Commit one batch, waiting while the store is unavailable. A batch the
/// store refuses (data it cannot hold, a constraint: it would fail the same
/// way on every try) is never retried as a whole: each finish is committed
/// alone, and one the store still refuses ends as an error attempt instead
/// ([`refused`]), so that a poisoned result can neither hold the others
/// back nor keep the engine retrying forever.
async fn commit_batch(shared: &Shared, batch: Vec<Finish>) {
    let committed: Vec<(Finish, Result<FinishEffect, StoreError>)> = match finish_waiting(
        shared, &batch,
    )
    .await
    {
        Ok(results) => batch.into_iter().zip(results).collect(),
        Err(e) if batch.len() == 1 => {
            let mut committed = Vec::with_capacity(1);
            if let Some(f) = batch.into_iter().next() {
                committed.push(refused(shared, f, e).await);
            }
            committed
        }
        Err(e) => {
            tracing::warn!(
                "The store refused a batch of {} finished attempts ({e}); committing them one by one",
                batch.len()
            );
            let mut committed = Vec::with_capacity(batch.len());
            for f in batch {
                let result = finish_waiting(shared, std::slice::from_ref(&f)).await;
                committed.push(match result {
                    Ok(mut r) if r.len() == 1 => (f, r.remove(0)),
                    Ok(_) => (f, Err(StoreError::InvalidRequest("no result".into()))),
                    Err(e) => refused(shared, f, e).await,
                });
            }
            committed
        }
    };
    report_batch(shared, committed);
}

/// `Store::finish`, retried with backoff while the store does not answer.
/// Results stay in memory meanwhile; if the store never comes back the
/// leases expire and the work runs again elsewhere, so nothing is lost.
/// Returns the error of a request the store refuses
/// ([`StoreError::is_refusal`]): retrying that cannot help.
/// When every waiting job belongs to a stage the config no longer has (so
/// none can ever run here), those stages with their job counts.
async fn only_stranded_work(shared: &Shared, config: &Config, now: Millis) -> Option<String> {
    let status = shared.store.status(now).await.ok()?;
    let (known, removed): (Vec<_>, Vec<_>) = status
        .stages
        .iter()
        .partition(|c| config.stage(&c.stage).is_some());
    if known.iter().any(|c| c.queued + c.scheduled + c.running > 0) {
        return None;
    }
    let removed: Vec<String> = removed
        .iter()
        .filter(|c| c.queued + c.scheduled > 0)
        .map(|c| format!("`{}` ({} job(s))", c.stage, c.queued + c.scheduled))
        .collect();
    (!removed.is_empty()).then(|| removed.join(", "))
}

async fn finish_waiting(
    shared: &Shared,
    batch: &[Finish],
) -> Result<Vec<Result<FinishEffect, StoreError>>, StoreError> {
    let mut delay = Duration::from_millis(100);
    loop {
        let asked = Instant::now();
        let finished = shared.store.finish(batch).await;
        shared.calls.finish(asked);
        match finished {
            Ok(r) => return Ok(r),
            Err(e) if e.is_refusal() => return Err(e),
            Err(e) => {
                tracing::error!(
                    "Could not commit {} finished attempt(s): {e}; retrying",
                    batch.len()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The store refused to record `f`: record the attempt as an error that
/// names the store's message instead (retried or failed like any error,
/// without the refused texts, and of the infrastructure: the work was never
/// judged), with an event, and go on.
async fn refused(
    shared: &Shared,
    f: Finish,
    error: StoreError,
) -> (Finish, Result<FinishEffect, StoreError>) {
    let job = &f.job;
    let message = format!("the store refused to record this attempt's result: {error}");
    tracing::error!(
        "Job {} (item {}, stage `{}`): {message}; recording the attempt as an error",
        job.id,
        job.item_id,
        job.stage
    );
    let transition = match shared.config.stage(&job.stage) {
        Some(stage) => machine::decide(
            &shared.config,
            stage,
            job.attempt,
            job.round,
            machine::StageResult::Failed {
                outcome: AttemptOutcome::Error,
                class: FailureClass::Infra,
                message: message.clone(),
            },
            f.finished_at,
            fastrand::f64(),
        ),
        None => Transition::FailItem {
            reason: message.clone(),
            feedback: None,
            class: FailureClass::Infra,
        },
    };
    let fallback = Finish {
        outcome: AttemptOutcome::Error,
        error: Some(message.clone()),
        output: None,
        stderr: None,
        transition,
        ..f
    };
    let result = match finish_waiting(shared, std::slice::from_ref(&fallback)).await {
        Ok(mut r) if r.len() == 1 => r.remove(0),
        Ok(_) => Err(StoreError::InvalidRequest("no result".into())),
        Err(e) => {
            tracing::error!(
                "Job {}: the store refused its error attempt too ({e}); the job is given back when \
                 this process stops",
                fallback.job.id
            );
            Err(e)
        }
    };
    let event = ideamill_store::NewEvent {
        at: now_millis(),
        kind: ideamill_store::event_kind::RESULT_REFUSED,
        item_id: Some(fallback.job.item_id),
        job_id: Some(fallback.job.id),
        process: Some(shared.owner.clone()),
        message: format!(
            "The store refused the result of attempt {} of job {} (stage `{}`): {error}; {}",
            fallback.job.attempt,
            fallback.job.id,
            fallback.job.stage,
            if result.is_ok() {
                "recorded as an error attempt instead"
            } else {
                "nothing was recorded"
            }
        ),
    };
    if let Err(e) = shared.store.record_event(&event).await {
        tracing::warn!("Could not record the refused result: {e}");
    }
    (fallback, result)
}

/// A `job_hung` event: the attempt's note says what was seen and where the
/// evidence is.
async fn record_hung(shared: &Shared, job: &ClaimedJob, note: &str, now: i64) {
    let event = ideamill_store::NewEvent {
        at: now,
        kind: ideamill_store::event_kind::JOB_HUNG,
        item_id: Some(job.item_id),
        job_id: Some(job.id),
        process: Some(shared.owner.clone()),
        message: format!(
            "Job {} (item {}, stage `{}`), attempt {} of {}: {note}",
            job.id, job.item_id, job.stage, job.attempt, job.max_attempts
        ),
    };
    tracing::warn!("{}", event.message);
    if let Err(e) = shared.store.record_event(&event).await {
        tracing::warn!("Could not record a hung job's event: {e}");
    }
}

/// Count, log and report what a batch's commit did.
fn report_batch(shared: &Shared, committed: Vec<(Finish, Result<FinishEffect, StoreError>)>) {
    let mut local_work = false;
    for (finish, result) in committed {
        shared.attempts.fetch_add(1, Ordering::Relaxed);
        let effect = match result {
            Ok(effect) => {
                match effect.item_state {
                    ItemState::Done => shared.items_done.fetch_add(1, Ordering::Relaxed),
                    ItemState::Failed => shared.items_failed.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                local_work |= effect.enqueued;
                log_finish(&finish, &effect);
                Ok(effect)
            }
            Err(StoreError::LeaseLost) => {
                tracing::warn!(
                    "Job {} (item {}, stage `{}`): lease lost before completion; the result was discarded",
                    finish.job.id,
                    finish.job.item_id,
                    finish.job.stage
                );
                Err("lease lost".to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let elapsed = Duration::from_millis((finish.finished_at - finish.started_at).max(0) as u64);
        if let Some(h) = &shared.health {
            h.job_finished(&finish.job.stage, finish.outcome, elapsed);
        }
        send_spans(shared, &finish, &effect);
        shared.report(Progress::Finished {
            job: finish.job,
            outcome: finish.outcome,
            effect,
            elapsed,
        });
    }
    // New local work, or the last running job's result is now committed:
    // the dispatcher looks again (`--until-idle` decides only once
    // nothing is running in the store either, and nothing else would
    // wake it then).
    if local_work {
        shared.new_work();
    } else if shared.in_flight.load(Ordering::SeqCst) == 0 {
        shared.wake.notify_one();
    }
}

/// Send the spans of a committed attempt (and the item's end, if it ended).
fn send_spans(shared: &Shared, finish: &Finish, effect: &Result<FinishEffect, String>) {
    let spans = shared
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&finish.job.id);
    let Some(mut spans) = spans else { return };
    let end = traces::committed(&mut spans, effect, finish);
    if let Some(call) = spans.call {
        shared.telemetry.record(call);
    }
    shared.telemetry.record(spans.attempt);
    if let Some(end) = end {
        shared.telemetry.record(end);
    }
}

fn log_finish(finish: &Finish, effect: &FinishEffect) {
    let job = &finish.job;
    match &finish.transition {
        Transition::RetryAt { error, .. } => tracing::info!(
            "Item {} stage `{}` attempt {}/{} failed: {error}; retry scheduled",
            job.item_id,
            job.stage,
            job.attempt,
            job.max_attempts
        ),
        Transition::FailItem { reason, .. } => {
            tracing::warn!("Item {} failed: {reason}", job.item_id)
        }
        Transition::SendBack { to, .. } => tracing::info!(
            "Item {}: gate `{}` rejected round {}; back to `{}`",
            job.item_id,
            job.stage,
            job.round,
            to.stage
        ),
        _ if effect.cancelled => tracing::info!("Item {} cancelled", job.item_id),
        _ => tracing::debug!(
            "Item {} stage `{}` {}",
            job.item_id,
            job.stage,
            finish.outcome
        ),
    }
}
