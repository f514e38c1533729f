//! The watchdog: a plain OS thread, outside the async runtime, that watches
//! the pulse's beats. When the loop has not beaten for `stall_after`, it
//! saves an evidence bundle and ends the process with [`STALL_EXIT_CODE`],
//! for the supervisor (or systemd) to start a fresh one.
//!
//! It sleeps until the moment the beat would become stale, so an idle engine
//! costs it one wake-up per `stall_after` or so. It never takes a lock the
//! runtime might hold for long (only `try_lock`), never calls into the
//! runtime (tokio's `Handle::dump` cannot finish while a worker is blocked),
//! and leaves with `_exit`, which runs no handler that a stuck thread could
//! block.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use ideamill_core::Millis;
use serde::{Deserialize, Serialize};

use ideamill_health::{Health, STALL_EXIT_CODE, evidence_dir};
use ideamill_sys::clock::{mono_millis, now_millis as wall_millis, utc_stamp};

/// What a stall looked like; `summary.json` in the evidence bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StallSummary {
    /// "watchdog" (the engine saw its own loop stop) or "supervisor".
    pub detected_by: String,
    /// What was seen, for people.
    pub reason: String,
    /// The stalled engine's pid.
    pub pid: u32,
    /// The stalled engine's process id in the store, if it had registered.
    pub process_id: Option<String>,
    /// Wall clock when the stall was detected.
    pub detected_at: Millis,
    /// Wall clock of the last beat.
    pub last_beat_at: Millis,
    /// How long the loop had not beaten when the stall was detected.
    pub stall_ms: u64,
    /// `health.stall_after` then, in milliseconds.
    pub stall_after_ms: u64,
}

/// What the watchdog does once the evidence is saved. The default ends the
/// process; the benchmark records the moment instead.
pub type OnStall = Box<dyn Fn(&StallSummary, Option<&Path>) + Send>;

/// The default action: say so on stderr and `_exit(STALL_EXIT_CODE)`.
pub fn exit_on_stall() -> OnStall {
    Box::new(|summary, evidence| {
        let line = format!(
            "ideamill: the event loop has not beaten for {} ms (limit {} ms); evidence saved in {}; exiting with code {STALL_EXIT_CODE}\n",
            summary.stall_ms,
            summary.stall_after_ms,
            evidence.map_or("(nowhere: could not write it)".into(), |p| p
                .display()
                .to_string())
        );
        // Written from another thread: if stderr is a full pipe, the write
        // blocks that thread, not the exit.
        std::thread::spawn(move || {
            let _ = std::io::stderr().write_all(line.as_bytes());
        });
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: _exit ends the process at once; nothing here relies on
        // destructors or atexit handlers (the evidence is already synced).
        unsafe { libc::_exit(STALL_EXIT_CODE) }
    })
}

/// How long a stale beat must stay stale before the watchdog acts.
const CONFIRM: Duration = Duration::from_millis(250);

/// CLOCK_MONOTONIC ms of the last SIGCONT this process received.
static CONTINUED_AT: AtomicI64 = AtomicI64::new(i64::MIN);

extern "C" fn on_continue(_: libc::c_int) {
    // clock_gettime is async-signal-safe (the clock was read before the
    // handler was installed: see `spawn`).
    CONTINUED_AT.store(mono_millis(), Ordering::SeqCst);
}

/// Note every SIGCONT: a process that was stopped (SIGSTOP, Ctrl-Z, a
/// debugger) gives its loop a fresh `stall_after` when it resumes.
fn watch_continues() {
    // SAFETY: the handler only calls clock_gettime and an atomic store.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_continue as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGCONT, &action, std::ptr::null_mut());
    }
}

/// Start the watchdog thread.
pub fn spawn(
    health: Arc<Health>,
    runtime: Option<tokio::runtime::Handle>,
    on_stall: OnStall,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // The first reading of the monotonic clock looks up the vDSO; doing it
    // here, before the handler exists, keeps the handler async-signal-safe.
    mono_millis();
    watch_continues();
    std::thread::Builder::new()
        .name("ideamill-watchdog".into())
        .spawn(move || watch(&health, runtime.as_ref(), on_stall))
}

fn watch(health: &Health, runtime: Option<&tokio::runtime::Handle>, on_stall: OnStall) {
    let limit = health.stall_after;
    // After the whole process was paused (SIGSTOP, a debugger), the loop gets
    // a fresh `stall_after` to beat again: its silence was not its fault.
    let mut not_before = mono_millis();
    // A stale beat is confirmed once, CONFIRM later, before the watchdog acts:
    // a process resumed from SIGSTOP runs its SIGCONT handler and its loop on
    // whichever thread the kernel schedules first, maybe after this one.
    let mut suspected = false;
    loop {
        let age = health.beat_age();
        let now = mono_millis();
        not_before = not_before.max(
            CONTINUED_AT
                .load(Ordering::SeqCst)
                .saturating_add(ideamill_core::duration::millis(limit)),
        );
        let stale = age >= limit && now >= not_before;
        if stale && !suspected {
            suspected = true;
            let slept = Instant::now();
            std::thread::sleep(CONFIRM);
            if slept.elapsed() > CONFIRM + Duration::from_secs(1) {
                // Paused again while confirming: the silence is not the loop's.
                not_before = mono_millis() + ideamill_core::duration::millis(limit);
            }
            continue;
        }
        suspected = stale;
        if stale {
            let summary = StallSummary {
                detected_by: "watchdog".into(),
                reason: format!(
                    "the event loop did not beat for {} ms (stall_after {} ms)",
                    age.as_millis(),
                    limit.as_millis()
                ),
                pid: std::process::id(),
                process_id: health.process().map(|p| p.id),
                detected_at: wall_millis(),
                last_beat_at: health.last_beat_wall(),
                stall_ms: age.as_millis() as u64,
                stall_after_ms: limit.as_millis() as u64,
            };
            health
                .metrics
                .stalls_detected
                .fetch_add(1, Ordering::Relaxed);
            health.log.try_push(format!("WATCHDOG {}", summary.reason));
            let evidence = match save_evidence(health, runtime, &summary) {
                Ok(dir) => {
                    health
                        .metrics
                        .evidence_bundles
                        .fetch_add(1, Ordering::Relaxed);
                    Some(dir)
                }
                Err(_) => None,
            };
            on_stall(&summary, evidence.as_deref());
            return;
        }
        let wait = if age >= limit {
            Duration::from_millis((not_before - now).max(1) as u64)
        } else {
            limit - age + Duration::from_millis(10)
        };
        let slept = Instant::now();
        std::thread::sleep(wait);
        health
            .metrics
            .watchdog_wakeups
            .fetch_add(1, Ordering::Relaxed);
        if slept.elapsed() > wait + Duration::from_secs(1) {
            not_before = mono_millis() + ideamill_core::duration::millis(limit);
        }
    }
}

/// A new evidence folder, `<data_dir>/evidence/<UTC time>-pid<pid>.partial/`,
/// named without `.partial` by [`finish_folder`] once complete, so that a
/// reader never sees half a bundle.
pub fn evidence_folder(data_dir: &Path, pid: u32) -> std::io::Result<PathBuf> {
    let base = evidence_dir(data_dir);
    let stamp = utc_stamp(wall_millis());
    let mut name = format!("{stamp}-pid{pid}");
    let mut n = 1;
    while base.join(&name).exists() || base.join(format!("{name}.partial")).exists() {
        n += 1;
        name = format!("{stamp}-pid{pid}-{n}");
    }
    let dir = base.join(format!("{name}.partial"));
    // Private to the mill's user: a bundle holds logs and job details.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(dir)
}

/// The file that says a bundle's stall is in the store's events: written
/// by the supervisor when it records the restart, or by the next engine
/// when nobody did (`--no-supervisor`, restarted by systemd or Kubernetes).
const REPORTED: &str = "reported";

/// Note that `bundle`'s stall has its event now.
pub fn mark_reported(bundle: &Path) {
    if let Err(e) = std::fs::write(bundle.join(REPORTED), b"") {
        tracing::warn!("Could not mark {} as reported: {e}", bundle.display());
    }
}

/// The complete bundles of engine stalls that no event reports yet, oldest
/// first, each with its summary (bundles of hung jobs are not engine
/// stalls: they have no `summary.json` of this shape).
pub fn unreported_stalls(data_dir: &Path) -> Vec<(PathBuf, StallSummary)> {
    let Ok(entries) = std::fs::read_dir(evidence_dir(data_dir)) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, StallSummary)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_none_or(|x| x != "partial")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("-pid"))
                && !p.join(REPORTED).exists()
        })
        .filter_map(|p| {
            let summary = std::fs::read(p.join("summary.json")).ok()?;
            let summary = serde_json::from_slice::<StallSummary>(&summary).ok()?;
            Some((p, summary))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Give a complete bundle its final name and sync it; returns that name.
pub fn finish_folder(partial: &Path) -> std::io::Result<PathBuf> {
    sync_dirs(partial);
    let done = partial.with_extension("");
    std::fs::rename(partial, &done)?;
    sync_dirs(&done);
    Ok(done)
}

/// Write one file of a bundle and sync it.
pub fn write_synced(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<()> {
    ideamill_sys::fs::write_synced(&dir.join(name), content, 0o600)
}

/// Sync a bundle's folder and its parent, so that the bundle survives a crash.
pub fn sync_dirs(dir: &Path) {
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let _ = ideamill_sys::fs::sync_dir(d);
    }
}

fn save_evidence(
    health: &Health,
    runtime: Option<&tokio::runtime::Handle>,
    summary: &StallSummary,
) -> std::io::Result<PathBuf> {
    let dir = evidence_folder(&health.data_dir, std::process::id())?;
    let now = wall_millis();
    write_synced(
        &dir,
        "summary.json",
        &serde_json::to_vec_pretty(summary).unwrap_or_default(),
    )?;
    let jobs = match health.in_flight(now) {
        Some(jobs) => serde_json::to_vec_pretty(&jobs).unwrap_or_default(),
        None => b"\"unavailable: the list was locked by a stuck thread\"".to_vec(),
    };
    write_synced(&dir, "jobs.json", &jobs)?;
    write_synced(&dir, "threads.txt", thread_dump("self").as_bytes())?;
    let backtrace = std::backtrace::Backtrace::force_capture();
    write_synced(
        &dir,
        "watchdog-backtrace.txt",
        format!(
            "The watchdog thread's own stack when it acted (the stuck thread's kernel\nstack and wait channel are in threads.txt):\n\n{backtrace}\n"
        )
        .as_bytes(),
    )?;
    let log = match health.log.try_lines() {
        Some(lines) => lines.join("\n") + "\n",
        None => "unavailable: the log buffer was locked by a stuck thread\n".into(),
    };
    write_synced(&dir, "log.txt", log.as_bytes())?;
    write_synced(&dir, "config.txt", health.config_text.as_bytes())?;
    write_synced(
        &dir,
        "status.json",
        &serde_json::to_vec_pretty(&health.snapshot_without_waiting()).unwrap_or_default(),
    )?;
    if let Some(rt) = runtime {
        let m = rt.metrics();
        let text = format!(
            "runtime flavor: {:?}\nworkers: {}\nalive tasks: {}\nglobal queue depth: {}\n",
            rt.runtime_flavor(),
            m.num_workers(),
            m.num_alive_tasks(),
            m.global_queue_depth()
        );
        write_synced(&dir, "runtime.txt", text.as_bytes())?;
    }
    finish_folder(&dir)
}

/// Every thread of process `pid` ("self" for this one): name, state, wait
/// channel, current system call and kernel stack, from /proc.
pub fn thread_dump(pid: &str) -> String {
    let mut out = String::new();
    let base = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(entries) = std::fs::read_dir(&base) else {
        return format!("cannot read {}\n", base.display());
    };
    let mut tids: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    tids.sort_by_key(|t| t.parse::<u64>().unwrap_or(0));
    let read = |tid: &str, f: &str| {
        std::fs::read_to_string(base.join(tid).join(f))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|e| format!("(unreadable: {e})"))
    };
    for tid in tids {
        let stat = read(&tid, "stat");
        // The state is the first field after the parenthesised name.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        out.push_str(&format!(
            "=== thread {tid} `{}` state {state} wchan {}\nsyscall: {}\nstat: {stat}\nkernel stack:\n{}\n\n",
            read(&tid, "comm"),
            read(&tid, "wchan"),
            read(&tid, "syscall"),
            read(&tid, "stack"),
        ));
    }
    out
}
