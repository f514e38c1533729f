//! The inbox watcher that `ideamill run` starts inside the engine process.
//!
//! The system ideamill replaces deadlocked because its watcher threads
//! called into the event loop and waited for it while the loop waited on a
//! file they held (see `shared/seed`). Here nothing ever waits across that
//! line:
//!
//! - `notify`'s own thread (inotify) only classifies an event and hands it
//!   to a bounded channel with `try_send`, which never blocks. When the
//!   channel is full, or inotify's queue overflowed, or the watch failed, it
//!   raises a flag instead, and the next turn of the loop rescans the folder.
//! - The intake is one task on the engine's runtime. It shares no lock with
//!   the engine: it talks to the store through the same `Store` handle as
//!   every other task, and all of its filesystem work (stat, read, hash,
//!   parse, move, fsync) runs on the blocking pool, so a slow disk or a
//!   hostile file never holds up the event loop. A stalled loop would still
//!   be caught by the engine's watchdog.
//! - A full rescan on a slow timer is the safety net: a missed event only
//!   delays a file until the next rescan, never loses it.
//! - One process at a time takes a given inbox: it holds an advisory lock
//!   (`flock`) on `inbox/.ideamill-intake.lock`, which the kernel releases if
//!   the process dies. Others wait for it, retrying every few seconds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ideamill_core::Config;
use ideamill_core::machine::{NextJob, first_job};
use ideamill_store::Store;
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::IntakeError;
use crate::inbox::{Layout, Stamp, TakeOutcome, ignored, take_file};
use crate::parse::Limits;

/// The lock file that makes one process the inbox's taker.
pub const LOCK_FILE: &str = ".ideamill-intake.lock";
/// Events waiting for the intake task; past this the watcher asks for a
/// rescan instead of blocking.
const CHANNEL: usize = 4096;
/// Files taken between two syncs of the folders, at most.
const SYNC_EVERY: usize = 64;
/// How often a process that does not hold the inbox lock tries again.
const LOCK_RETRY: Duration = Duration::from_secs(2);
/// Failures in a row after which a first pass stops waiting for a file (it
/// is still tried again, with backoff, while the engine runs).
const GIVE_UP: u32 = 4;

/// The running inbox watcher.
pub struct InboxHandle {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    first_pass: watch::Receiver<bool>,
}

impl InboxHandle {
    /// Wait until the files that were in the inbox at start have been taken
    /// (those still being written once they settle), or the inbox turns out
    /// to be another process's. Returns at once when the inbox is disabled.
    pub async fn first_pass(&mut self) {
        let _ = self.first_pass.wait_for(|done| *done).await;
    }

    /// Stop watching; a file being taken is finished first.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Start the inbox watcher on the current runtime, unless `[inbox]
/// enabled = false`.
pub fn spawn_inbox(config: &Arc<Config>, store: &Arc<dyn Store>) -> InboxHandle {
    let stop = CancellationToken::new();
    let (done_tx, first_pass) = watch::channel(false);
    if !config.inbox.enabled {
        let _ = done_tx.send(true);
        return InboxHandle {
            stop,
            task: None,
            first_pass,
        };
    }
    let intake = Intake::new(config, store.clone());
    let task = tokio::spawn(intake.run(stop.clone(), done_tx));
    InboxHandle {
        stop,
        task: Some(task),
        first_pass,
    }
}

/// What the watcher thread tells the intake task.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signal {
    /// Renamed into the inbox: complete, take it now.
    RenamedIn(PathBuf),
    /// Created or written: take it once it has settled.
    Changed(PathBuf),
    /// Gone from the inbox.
    Gone(PathBuf),
}

/// The signals an event means, for files directly in `inbox`.
fn classify(event: &notify::Event, inbox: &Path) -> Vec<Signal> {
    let ours = |p: &PathBuf| {
        p.parent() == Some(inbox)
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !ignored(n))
    };
    let all = |make: fn(PathBuf) -> Signal| {
        event
            .paths
            .iter()
            .filter(|p| ours(p))
            .cloned()
            .map(make)
            .collect()
    };
    match &event.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => all(Signal::RenamedIn),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut out = Vec::new();
            if let Some(from) = event.paths.first().filter(|p| ours(p)) {
                out.push(Signal::Gone(from.clone()));
            }
            if let Some(to) = event.paths.get(1).filter(|p| ours(p)) {
                out.push(Signal::RenamedIn(to.clone()));
            }
            out
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            all(Signal::Gone)
        }
        EventKind::Create(_) | EventKind::Modify(_) => all(Signal::Changed),
        // A close after writing is a change too (it may be the last one).
        EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write)) => {
            all(Signal::Changed)
        }
        _ => Vec::new(),
    }
}

/// Which files are complete. Pure: the caller stats files and passes what
/// it saw, with the time.
#[derive(Debug)]
struct Tracker {
    settle: Duration,
    /// Files seen but not yet settled: the last stamp seen (None until the
    /// first check) and when it last changed.
    pending: HashMap<PathBuf, (Option<Stamp>, Instant)>,
    ready: VecDeque<PathBuf>,
    queued: HashSet<PathBuf>,
    /// Files that could not be taken, with how many times in a row.
    failures: HashMap<PathBuf, u32>,
}

impl Tracker {
    fn new(settle: Duration) -> Tracker {
        Tracker {
            settle,
            pending: HashMap::new(),
            ready: VecDeque::new(),
            queued: HashSet::new(),
            failures: HashMap::new(),
        }
    }

    fn make_ready(&mut self, path: PathBuf) {
        self.pending.remove(&path);
        if self.queued.insert(path.clone()) {
            self.ready.push_back(path);
        }
    }

    fn signal(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::RenamedIn(path) => self.make_ready(path),
            Signal::Changed(path) => self.changed(path, now),
            Signal::Gone(path) => {
                self.pending.remove(&path);
                self.failures.remove(&path);
            }
        }
    }

    /// Written to: wait for it to settle (again).
    fn changed(&mut self, path: PathBuf, now: Instant) {
        if !self.queued.contains(&path) {
            let stamp = self.pending.get(&path).and_then(|(s, _)| *s);
            self.pending.insert(path, (stamp, now));
        }
    }

    /// Pending files whose settle time has passed: stat them, then `checked`.
    fn due(&self, now: Instant) -> Vec<PathBuf> {
        self.pending
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) >= self.settle)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// What a stat of a pending file found: `None` if it is gone; `age` is
    /// the time since its modification time (zero if in the future).
    fn checked(&mut self, path: PathBuf, seen: Option<(Stamp, Duration)>, now: Instant) {
        let Some((stamp, age)) = seen else {
            self.pending.remove(&path);
            return;
        };
        let Some((last, since)) = self.pending.get(&path).copied() else {
            return;
        };
        let quiet = now.saturating_duration_since(since) >= self.settle;
        // Settled: not written for `settle` by its own clock, or unchanged
        // for `settle` by ours (a modification time in the future).
        if quiet && (age >= self.settle || last == Some(stamp)) {
            self.make_ready(path);
        } else if last != Some(stamp) {
            self.pending.insert(path, (Some(stamp), now));
        }
    }

    /// A file found by a full scan.
    fn scanned(&mut self, path: PathBuf, stamp: Stamp, age: Duration, now: Instant) {
        if self.queued.contains(&path) || self.pending.contains_key(&path) {
            return;
        }
        if age >= self.settle {
            self.make_ready(path);
        } else {
            self.pending.insert(path, (Some(stamp), now));
        }
    }

    /// When the next pending file is due for a check.
    fn next_check(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|(_, since)| *since + self.settle)
            .min()
    }

    /// It was taken (or found gone): its failures are forgotten.
    fn done(&mut self, path: &Path) {
        self.failures.remove(path);
    }

    /// Taking it failed (the store or the folder refused for now): it stays
    /// tracked and is tried again after `settle`, doubling with each failure
    /// in a row up to `cap`, instead of waiting for the next rescan.
    fn failed(&mut self, path: PathBuf, now: Instant, cap: Duration) {
        let n = self.failures.entry(path.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let wait = self
            .settle
            .saturating_mul(1 << (*n - 1).min(16))
            .min(cap.max(self.settle));
        // Due once `settle` has passed since this (future) instant.
        let since = now + wait - self.settle;
        self.queued.remove(&path);
        self.pending.insert(path, (None, since));
    }

    /// Nothing waits to settle or to be taken, apart from files that failed
    /// `GIVE_UP` times in a row (they are still tried, but a first pass
    /// does not wait for them forever).
    fn is_idle(&self) -> bool {
        let waiting = |p: &PathBuf| self.failures.get(p).is_none_or(|n| *n < GIVE_UP);
        !self.pending.keys().any(waiting) && !self.ready.iter().any(waiting)
    }

    fn next_ready(&mut self) -> Option<PathBuf> {
        let path = self.ready.pop_front()?;
        self.queued.remove(&path);
        Some(path)
    }
}

/// Stat a file the way the tracker judges it.
fn stat(path: &Path) -> Option<(Stamp, Duration)> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        return None;
    }
    let stamp = Stamp::of(&meta);
    let age = stamp
        .modified
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    Some((stamp, age))
}

/// Every candidate file directly in the inbox, with its stamp and age.
fn scan(inbox: &Path) -> Result<Vec<(PathBuf, Stamp, Duration)>, IntakeError> {
    let entries = std::fs::read_dir(inbox)
        .map_err(IntakeError::io(format!("cannot list {}", inbox.display())))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        // A name that is not UTF-8 is taken too (its content decides), never
        // left to sit unnoticed.
        if entry.file_name().to_str().is_some_and(ignored) {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {
                if let Some((stamp, age)) = stat(&path) {
                    found.push((path, stamp, age));
                }
            }
            // Links, FIFOs and the like: taken at once, to be rejected.
            Ok(meta) => found.push((path, Stamp::of(&meta), Duration::MAX)),
            Err(_) => {}
        }
    }
    // Oldest first, so files are taken in the order they arrived.
    found.sort_by_key(|(p, s, _)| (s.modified, p.clone()));
    Ok(found)
}

/// Try to become the inbox's one taker.
fn try_lock(inbox: &Path) -> Result<Option<File>, IntakeError> {
    let path = inbox.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(IntakeError::io(format!("cannot open {}", path.display())))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Some(file))
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(IntakeError::io(format!("cannot lock {}", path.display()))(
                e,
            ))
        }
    }
}

struct Intake {
    store: Arc<dyn Store>,
    layout: Layout,
    limits: Limits,
    first: NextJob,
    events: bool,
    rescan: Duration,
    tracker: Tracker,
}

/// The watcher and the end of its channel.
struct Events {
    _watcher: notify::RecommendedWatcher,
}

impl Intake {
    fn new(config: &Config, store: Arc<dyn Store>) -> Intake {
        Intake {
            store,
            layout: Layout::new(&config.engine.inbox),
            limits: Limits::from_config(&config.inbox),
            first: first_job(config),
            events: config.inbox.events,
            rescan: config.inbox.rescan,
            tracker: Tracker::new(config.inbox.settle),
        }
    }

    async fn run(mut self, stop: CancellationToken, first_pass: watch::Sender<bool>) {
        let (tx, mut rx) = mpsc::channel::<Signal>(CHANNEL);
        let missed = Arc::new(AtomicBool::new(false));
        let mut lock: Option<File> = None;
        let mut watcher: Option<Events> = None;
        let mut told_busy = false;
        let mut next_rescan = Instant::now();
        let mut scanned = false;
        loop {
            if lock.is_none() {
                let layout = self.layout.clone();
                let got = tokio::task::spawn_blocking(move || {
                    layout.create()?;
                    try_lock(&layout.inbox)
                })
                .await
                .map_err(IntakeError::from)
                .and_then(|r| r);
                match got {
                    Ok(Some(file)) => {
                        lock = Some(file);
                        next_rescan = Instant::now();
                        tracing::info!("Watching the inbox {}", self.layout.inbox.display());
                    }
                    Ok(None) => {
                        if !told_busy {
                            tracing::info!(
                                "Another process takes the inbox {}; this one waits for its turn",
                                self.layout.inbox.display()
                            );
                            told_busy = true;
                        }
                        let _ = first_pass.send(true);
                    }
                    Err(e) => {
                        tracing::error!("Cannot watch the inbox: {e}");
                        let _ = first_pass.send(true);
                    }
                }
                if lock.is_none() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(LOCK_RETRY) => continue,
                    }
                }
            }

            if self.events && watcher.is_none() {
                match start_watcher(&self.layout.inbox, tx.clone(), missed.clone()) {
                    Ok(w) => watcher = Some(w),
                    Err(e) => {
                        // The rescan still finds every file, only later.
                        tracing::warn!(
                            "Cannot watch {} for events ({e}); finding files by rescanning every {}",
                            self.layout.inbox.display(),
                            ideamill_core::duration::format_duration(self.rescan)
                        );
                        self.events = false;
                    }
                }
            }

            if missed.swap(false, Ordering::Relaxed) {
                next_rescan = Instant::now();
            }
            if Instant::now() >= next_rescan {
                let inbox = self.layout.inbox.clone();
                match tokio::task::spawn_blocking(move || scan(&inbox)).await {
                    Ok(Ok(found)) => {
                        let now = Instant::now();
                        for (path, stamp, age) in found {
                            self.tracker.scanned(path, stamp, age, now);
                        }
                    }
                    Ok(Err(e)) => tracing::warn!("Cannot rescan the inbox: {e}"),
                    Err(e) => tracing::warn!("Cannot rescan the inbox: {e}"),
                }
                next_rescan = Instant::now() + self.rescan;
                scanned = true;
            }

            // Take what is ready, one file at a time, stopping between files.
            let mut moved = 0;
            while let Some(path) = self.tracker.next_ready() {
                if stop.is_cancelled() {
                    break;
                }
                moved += 1;
                if moved % SYNC_EVERY == 0 {
                    self.sync().await;
                }
                match take_file(&*self.store, &self.first, &self.layout, &path, &self.limits).await
                {
                    Ok(TakeOutcome::Changing) => self.tracker.changed(path, Instant::now()),
                    Ok(_) => self.tracker.done(&path),
                    // The file stays in the inbox and tracked: tried again soon.
                    Err(e) => {
                        tracing::warn!(
                            "Cannot take {} from the inbox now ({e}); it stays there and is tried again",
                            path.display()
                        );
                        self.tracker.failed(path, Instant::now(), self.rescan);
                    }
                }
                // Events that arrived meanwhile (the file's own move among them).
                while let Ok(signal) = rx.try_recv() {
                    self.tracker.signal(signal, Instant::now());
                }
            }
            if moved > 0 {
                self.sync().await;
            }
            if stop.is_cancelled() {
                return;
            }
            // The files there at start are all taken, settled ones and
            // those that were still being written alike.
            if !*first_pass.borrow() && scanned && self.tracker.is_idle() {
                let _ = first_pass.send(true);
            }

            let wake = self
                .tracker
                .next_check()
                .map_or(next_rescan, |t| t.min(next_rescan));
            tokio::select! {
                _ = stop.cancelled() => return,
                signal = rx.recv() => {
                    let now = Instant::now();
                    if let Some(signal) = signal {
                        self.tracker.signal(signal, now);
                    }
                    while let Ok(signal) = rx.try_recv() {
                        self.tracker.signal(signal, now);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            self.check_due().await;
        }
    }

    /// Make the moves so far durable (see `Layout::sync`).
    async fn sync(&self) {
        let layout = self.layout.clone();
        match tokio::task::spawn_blocking(move || layout.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("Cannot sync the inbox folders: {e}"),
            Err(e) => tracing::warn!("Cannot sync the inbox folders: {e}"),
        }
    }

    /// Stat the pending files whose settle time has passed.
    async fn check_due(&mut self) {
        let due = self.tracker.due(Instant::now());
        if due.is_empty() {
            return;
        }
        let seen = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|p| {
                    let s = stat(&p);
                    (p, s)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let now = Instant::now();
        for (path, s) in seen {
            self.tracker.checked(path, s, now);
        }
    }
}

fn start_watcher(
    inbox: &Path,
    tx: mpsc::Sender<Signal>,
    missed: Arc<AtomicBool>,
) -> notify::Result<Events> {
    let dir = inbox.to_path_buf();
    // Runs on notify's own thread. It never blocks and never touches the
    // engine: a signal that does not fit becomes a rescan.
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            if event.need_rescan() {
                missed.store(true, Ordering::Relaxed);
            }
            for signal in classify(&event, &dir) {
                if tx.try_send(signal).is_err() {
                    missed.store(true, Ordering::Relaxed);
                }
            }
        }
        Err(_) => missed.store(true, Ordering::Relaxed),
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(inbox, RecursiveMode::NonRecursive)?;
    Ok(Events { _watcher: watcher })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_millis(1000);

    fn stamp(len: u64) -> Stamp {
        Stamp {
            len,
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(len)),
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn ready(t: &mut Tracker) -> Vec<PathBuf> {
        std::iter::from_fn(|| t.next_ready()).collect()
    }

    #[test]
    fn renamed_in_is_ready_at_once_and_only_once() {
        let t0 = Instant::now();
        let mut t = Tracker::new(SETTLE);
        let p = PathBuf::from("/in/a.json");
        t.signal(Signal::Changed(p.clone()), t0);
        t.signal(Signal::RenamedIn(p.clone()), t0);
        t.scanned(p.clone(), stamp(1), Duration::from_secs(60), t0);
        assert_eq!(ready(&mut t), [p]);
        assert_eq!(t.next_check(), None);
    }

    #[test]
    fn written_in_place_waits_until_it_settles() {
        let t0 = Instant::now();
        let mut t = Tracker::new(SETTLE);
        let p = PathBuf::from("/in/a.txt");
        t.signal(Signal::Changed(p.clone()), t0);
        assert_eq!(t.due(ms(t0, 999)), Vec::<PathBuf>::new());
        assert_eq!(t.next_check(), Some(ms(t0, 1000)));
        // Still being written: its modification time is recent and it grew.
        t.checked(
            p.clone(),
            Some((stamp(10), Duration::from_millis(5))),
            ms(t0, 1000),
        );
        assert!(ready(&mut t).is_empty());
        // More writes push the check back.
        t.signal(Signal::Changed(p.clone()), ms(t0, 1500));
        assert_eq!(t.due(ms(t0, 2000)), Vec::<PathBuf>::new());
        assert_eq!(t.due(ms(t0, 2500)), std::slice::from_ref(&p));
        t.checked(
            p.clone(),
            Some((stamp(20), Duration::from_millis(1000))),
            ms(t0, 2500),
        );
        assert_eq!(ready(&mut t), [p]);
    }

    #[test]
    fn a_file_that_could_not_be_taken_is_tried_again_with_backoff() {
        let t0 = Instant::now();
        let cap = Duration::from_secs(30);
        let mut t = Tracker::new(SETTLE);
        let p = PathBuf::from("/in/a.txt");
        let old = Duration::from_secs(60);
        t.scanned(p.clone(), stamp(5), old, t0);
        assert_eq!(ready(&mut t), std::slice::from_ref(&p));
        // The take failed: not forgotten, so a first pass waits for it.
        t.failed(p.clone(), t0, cap);
        assert!(!t.is_idle());
        assert_eq!(t.next_check(), Some(ms(t0, 1000)));
        t.checked(p.clone(), Some((stamp(5), old)), ms(t0, 1000));
        assert_eq!(ready(&mut t), std::slice::from_ref(&p));
        // Each failure in a row doubles the wait.
        t.failed(p.clone(), ms(t0, 1000), cap);
        assert_eq!(t.next_check(), Some(ms(t0, 3000)));
        assert_eq!(t.due(ms(t0, 2999)), Vec::<PathBuf>::new());
        t.checked(p.clone(), Some((stamp(5), old)), ms(t0, 3000));
        assert_eq!(ready(&mut t), std::slice::from_ref(&p));
        t.failed(p.clone(), ms(t0, 3000), cap);
        t.checked(p.clone(), Some((stamp(5), old)), ms(t0, 7000));
        assert_eq!(ready(&mut t), std::slice::from_ref(&p));
        // After GIVE_UP failures a first pass stops waiting, but the file is
        // still tried again.
        t.failed(p.clone(), ms(t0, 7000), cap);
        assert!(t.is_idle());
        assert_eq!(t.next_check(), Some(ms(t0, 15000)));
        t.checked(p.clone(), Some((stamp(5), old)), ms(t0, 15000));
        assert_eq!(ready(&mut t), std::slice::from_ref(&p));
        t.done(&p);
        assert!(t.is_idle());
        assert!(t.failures.is_empty());
    }

    #[test]
    fn a_future_modification_time_settles_by_our_clock() {
        let t0 = Instant::now();
        let mut t = Tracker::new(SETTLE);
        let p = PathBuf::from("/in/skewed.txt");
        t.scanned(p.clone(), stamp(5), Duration::ZERO, t0);
        t.checked(p.clone(), Some((stamp(5), Duration::ZERO)), ms(t0, 1000));
        assert_eq!(ready(&mut t), [p]);
    }

    #[test]
    fn a_file_that_vanished_is_forgotten() {
        let t0 = Instant::now();
        let mut t = Tracker::new(SETTLE);
        let p = PathBuf::from("/in/gone.txt");
        t.signal(Signal::Changed(p.clone()), t0);
        t.checked(p.clone(), None, ms(t0, 1000));
        assert_eq!(t.next_check(), None);
        t.signal(Signal::Changed(p.clone()), t0);
        t.signal(Signal::Gone(p), t0);
        assert_eq!(t.next_check(), None);
    }

    #[test]
    fn old_files_found_by_a_scan_are_ready() {
        let t0 = Instant::now();
        let mut t = Tracker::new(SETTLE);
        let (old, new) = (PathBuf::from("/in/old.txt"), PathBuf::from("/in/new.txt"));
        t.scanned(old.clone(), stamp(1), Duration::from_secs(5), t0);
        t.scanned(new.clone(), stamp(1), Duration::from_millis(10), t0);
        assert_eq!(ready(&mut t), [old]);
        assert_eq!(t.next_check(), Some(ms(t0, 1000)));
        t.checked(
            new.clone(),
            Some((stamp(1), Duration::from_millis(1010))),
            ms(t0, 1000),
        );
        assert_eq!(ready(&mut t), [new]);
    }

    #[test]
    fn events_are_classified() {
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, RemoveKind};
        let inbox = Path::new("/in");
        let ev = |kind: EventKind, paths: &[&str]| notify::Event {
            kind,
            paths: paths.iter().map(PathBuf::from).collect(),
            attrs: Default::default(),
        };
        let p = |s: &str| PathBuf::from(s);
        let check = |e: notify::Event, want: Vec<Signal>| assert_eq!(classify(&e, inbox), want);
        check(
            ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                &["/in/a.json"],
            ),
            vec![Signal::RenamedIn(p("/in/a.json"))],
        );
        check(
            ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/in/a.json.tmp", "/in/a.json"],
            ),
            vec![Signal::RenamedIn(p("/in/a.json"))],
        );
        check(
            ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/in/a.json", "/in/processed/a.json"],
            ),
            vec![Signal::Gone(p("/in/a.json"))],
        );
        check(
            ev(EventKind::Create(CreateKind::File), &["/in/b.txt"]),
            vec![Signal::Changed(p("/in/b.txt"))],
        );
        check(
            ev(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["/in/b.txt"],
            ),
            vec![Signal::Changed(p("/in/b.txt"))],
        );
        check(
            ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/in/b.txt"],
            ),
            vec![Signal::Changed(p("/in/b.txt"))],
        );
        check(
            ev(EventKind::Remove(RemoveKind::File), &["/in/b.txt"]),
            vec![Signal::Gone(p("/in/b.txt"))],
        );
        // Ignored names, other folders, reads.
        check(
            ev(EventKind::Create(CreateKind::File), &["/in/.hidden"]),
            vec![],
        );
        check(
            ev(EventKind::Create(CreateKind::File), &["/in/x.part"]),
            vec![],
        );
        check(
            ev(
                EventKind::Create(CreateKind::File),
                &["/in/processed/x.txt"],
            ),
            vec![],
        );
        check(
            ev(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                &["/in/b.txt"],
            ),
            vec![],
        );
    }
}
