//! The supervisor that `ideamill run` is by default: a small synchronous
//! parent (no async runtime, no locks, no store connection of its own while
//! things go well) that runs the engine as a child process and starts a new
//! one when the engine crashes or stops beating.
//!
//! It watches two things, and sleeps in `poll(2)` in between: the child's
//! exit (a pidfd) and the child's status file, whose beat the engine's event
//! loop rewrites every beat. It wakes when the beat would go stale, so an
//! idle mill costs it one wake-up per `stall_after`. A stale beat means the
//! whole engine is stuck (its own watchdog would otherwise have ended it):
//! it saves evidence from /proc, sends SIGABRT (a core, where cores are
//! enabled), then SIGKILL. Restarts back off exponentially; more than
//! `max_restarts` within `restart_window` and it stops, loudly.
//!
//! Events: the parent records each restart in the store itself, through a
//! short-lived helper process of this same binary (`ideamill record-event`)
//! that it waits on for at most a few seconds and then kills. A store that
//! hangs therefore delays nothing, and the event is written when it matters
//! most: when the mill is failing, possibly so badly that no new engine will
//! ever start to write it. The store's code, runtime and connections live
//! only in the helper, so the supervisor stays as small after a hundred
//! restarts as at its start.
//!
//! Leftovers: the supervisor is a child subreaper, so what an engine that
//! died leaves running (a job's process that left its session, a sandbox
//! process that missed its parent's death) lands on it rather than on init,
//! and is killed and reaped before another engine starts.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ideamill_core::Config;
use ideamill_engine::health::beat_pipe;
use ideamill_engine::health::watchdog::{self, StallSummary};
use ideamill_health::{
    ENV_RESTARTS, ENV_STALLS, ENV_SUPERVISOR, STALL_EXIT_CODE, StatusFile, status_file,
};
use ideamill_store::{NewEvent, event_kind};
use ideamill_sys::clock::{mono_millis, now_millis as wall_millis};

use crate::{exit, project};

/// Between the engine's own watchdog (at `stall_after`) and the
/// supervisor's judgement, so that the engine, which can save better
/// evidence, acts first when it can.
const MARGIN: Duration = Duration::from_millis(500);
/// How long an engine may take from start to its first beat.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// How long a stalled engine gets to dump a core after SIGABRT.
const ABORT_GRACE: Duration = Duration::from_secs(3);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The write end of the signal pipe, for the handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// Why an engine ended.
enum End {
    Exited(ExitStatus),
    Stalled {
        stall: Duration,
        evidence: Option<PathBuf>,
        status: ExitStatus,
    },
}

pub fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = project::load_config(config_path)?;
    let signals = SignalPipe::install()?;
    if let Err(e) = ideamill_sys::process::become_subreaper() {
        tracing::warn!(error = %e, "Cannot become a child subreaper: what a killed engine leaves running goes to init");
    }
    let mut recent: Vec<Instant> = Vec::new();
    let mut restarts: u64 = 0;
    let mut stalls: u64 = 0;
    let mut backoff = BACKOFF_FIRST;
    let mut stopping = false;
    loop {
        let started = Instant::now();
        let (child, beats) = spawn_engine(restarts, stalls)?;
        let pid = child.id();
        if restarts == 0 {
            tracing::debug!("Supervisor {} started engine pid {pid}", std::process::id());
        }
        let (end, registered) = watch(&config, child, &beats, &signals, &mut stopping);
        let left = end_leftovers();
        if left > 0 {
            tracing::warn!("Engine pid {pid} left {left} process(es) running; killed them");
        }
        let (status, cause, stall, evidence) = match end {
            End::Exited(status) => {
                if stopping || status.success() {
                    return Ok(exit_code_of(status));
                }
                // An engine that exited before it registered with the store
                // failed to start (a config or store it cannot use): starting
                // it again would only repeat that.
                if !registered && status.code().is_some() && status.code() != Some(STALL_EXIT_CODE)
                {
                    return Ok(exit_code_of(status));
                }
                if status.code() == Some(STALL_EXIT_CODE) {
                    stalls += 1;
                    let evidence = find_evidence(&config.engine.data_dir, pid, false);
                    let stall = evidence
                        .as_deref()
                        .and_then(|e| std::fs::read(e.join("summary.json")).ok())
                        .and_then(|b| serde_json::from_slice::<StallSummary>(&b).ok())
                        .map(|s| Duration::from_millis(s.stall_ms));
                    (
                        status,
                        "its watchdog found the event loop stalled".to_string(),
                        stall,
                        evidence,
                    )
                } else {
                    (status, format!("it {}", describe(status)), None, None)
                }
            }
            End::Stalled {
                stall,
                evidence,
                status,
            } => {
                stalls += 1;
                (
                    status,
                    "its heartbeat went stale (the whole process was stuck)".to_string(),
                    Some(stall),
                    evidence,
                )
            }
        };
        if stopping {
            return Ok(exit_code_of(status));
        }
        // A long healthy run forgets earlier trouble.
        let window = config.health.restart_window;
        if started.elapsed() > window {
            backoff = BACKOFF_FIRST;
        }
        recent.retain(|t| t.elapsed() < window);
        let details = format!(
            "{}{}{}",
            stall.map_or(String::new(), |s| format!(
                "; stalled for {} ms",
                s.as_millis()
            )),
            if left > 0 {
                format!("; killed {left} process(es) it left running")
            } else {
                String::new()
            },
            evidence
                .as_ref()
                .map_or(String::new(), |e| format!("; evidence in {}", e.display()))
        );
        if recent.len() as u32 >= config.health.max_restarts {
            let message = format!(
                "Engine pid {pid} ended ({cause}{details}), the {} failure within {}: the supervisor gave up instead of restarting it again. Read the evidence and `ideamill doctor`, fix the cause, then start `ideamill run` again",
                ordinal(recent.len() + 1),
                ideamill_core::duration::format_duration(window)
            );
            tracing::error!("{message}");
            eprintln!("\nideamill: SUPERVISOR GAVE UP. {message}\n");
            if record_event(config_path, event_kind::SUPERVISOR_GAVE_UP, message)
                && let Some(bundle) = &evidence
            {
                watchdog::mark_reported(bundle);
            }
            return Ok(ExitCode::from(exit::GAVE_UP));
        }
        recent.push(Instant::now());
        restarts += 1;
        let message = format!(
            "Engine pid {pid} ended: {cause}{details}; restarting it in {} ms (restart {} of at most {} within {})",
            backoff.as_millis(),
            recent.len(),
            config.health.max_restarts,
            ideamill_core::duration::format_duration(window)
        );
        tracing::warn!("{message}");
        // The restart's event reports the stall: the next engine must not
        // (unless the store missed it: then the next engine reports it).
        if record_event(config_path, event_kind::ENGINE_RESTARTED, message)
            && let Some(bundle) = &evidence
        {
            watchdog::mark_reported(bundle);
        }
        // Sleep the backoff, but a stop request ends it.
        if signals.wait(backoff).is_some() {
            return Ok(ExitCode::SUCCESS);
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn ordinal(n: usize) -> String {
    match n {
        1 => "1st".into(),
        2 => "2nd".into(),
        3 => "3rd".into(),
        n => format!("{n}th"),
    }
}

fn exit_code_of(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::from(exit::ERROR),
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}{}", signal_name(sig)),
        _ => "ended".into(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

/// Start this same binary as the engine: `... run --no-supervisor`.
/// Start an engine, with the write end of a beat pipe as its fd
/// [`beat_pipe::BEAT_FD`]; returns the child and the pipe's read end.
fn spawn_engine(restarts: u64, stalls: u64) -> anyhow::Result<(Child, std::fs::File)> {
    let exe = std::env::current_exe()?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.push("--no-supervisor".into());
    let parent = std::process::id() as libc::pid_t;
    let (read, write) = ideamill_sys::pipe::nonblocking_pipe()?;
    let read = std::fs::File::from(read);
    let write_fd = write.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(ENV_SUPERVISOR, parent.to_string())
        .env(ENV_RESTARTS, restarts.to_string())
        .env(ENV_STALLS, stalls.to_string())
        .env(beat_pipe::ENV_BEAT_FD, beat_pipe::BEAT_FD.to_string());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The beat pipe at its agreed number, kept across exec (dup2
            // clears close-on-exec; an fd already there needs it cleared).
            if write_fd == beat_pipe::BEAT_FD {
                libc::fcntl(write_fd, libc::F_SETFD, 0);
            } else if libc::dup2(write_fd, beat_pipe::BEAT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Its own process group: a terminal's Ctrl-C reaches the
            // supervisor only, which forwards it once.
            libc::setpgid(0, 0);
            // If the supervisor dies (even by SIGKILL), the engine dies too:
            // no orphan engine runs unsupervised.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor may have died before the line above.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The child holds its own copy of the write end.
    drop(write);
    Ok((child, read))
}

/// The newest beat the engine sent down the pipe since the last call.
fn drain_beats(pipe: &std::fs::File) -> Option<beat_pipe::Beat> {
    // A multiple of the record size, so a read never splits a record.
    let mut buf = [0u8; 64 * beat_pipe::RECORD];
    let mut newest = None;
    loop {
        match (&*pipe).read(&mut buf) {
            Ok(0) | Err(_) => return newest,
            Ok(n) => newest = beat_pipe::newest(&buf[..n]).or(newest),
        }
    }
}

/// Kills and reaps every process that landed on the supervisor. With the
/// engine reaped, each child the supervisor has is one the engine left
/// (the event helper runs only while the supervisor waits for it); their
/// own children land here in turn, so it repeats until none is left, for
/// at most 2 s. Returns how many were still running.
fn end_leftovers() -> usize {
    use ideamill_sys::process as sys;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut running = std::collections::BTreeSet::new();
    loop {
        let children = sys::own_children();
        if children.is_empty() || Instant::now() > deadline {
            return running.len();
        }
        for pid in children {
            // A child of ours: its pid is not reused before we reap it.
            if sys::read_stat(pid).is_some_and(|s| s.state != 'Z') {
                running.insert(pid);
                sys::kill(pid);
            }
            sys::reap_exited(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Watch one engine until it ends. Returns how, and whether it had registered with the store.
fn watch(
    config: &Config,
    mut child: Child,
    beats: &std::fs::File,
    signals: &SignalPipe,
    stopping: &mut bool,
) -> (End, bool) {
    let pid = child.id();
    let data_dir = &config.engine.data_dir;
    let status_path = status_file::path_for(data_dir, pid);
    let stall_limit = config.health.stall_after + MARGIN;
    let pidfd = ideamill_sys::process::pidfd_open(pid).ok();
    let spawned_mono = mono_millis();
    let mut ever_beat = false;
    // Whether the engine got as far as registering with the store: one
    // that exits before that failed to start, and is not started again.
    let mut started = false;
    let mut code_unmapped = false;
    let mut piped_beat: Option<i64> = None;
    loop {
        // The newest beat, by the monotonic clock that parent and child
        // share: from the pipe (which needs no disk) or the status file.
        if let Some(beat) = drain_beats(beats) {
            piped_beat = Some(beat.mono);
            started |= beat.started;
        }
        let file_beat = match StatusFile::read(&status_path) {
            Ok(f) if f.pid == pid => {
                started |= f.process_id.is_some();
                Some(f.beat_mono)
            }
            _ => None,
        };
        let (age, limit) = match piped_beat.max(file_beat) {
            Some(beat) => {
                ever_beat = true;
                ((mono_millis() - beat).max(0), stall_limit)
            }
            None => (
                (mono_millis() - spawned_mono).max(0),
                STARTUP_LIMIT.max(stall_limit),
            ),
        };
        let age = Duration::from_millis(age as u64);
        if let Ok(Some(status)) = child.try_wait() {
            return (End::Exited(status), started);
        }
        if age > limit {
            // Its own watchdog may be saving evidence right now: let it finish.
            if find_evidence(data_dir, pid, true).is_some()
                && let Some(status) = wait_exit(&mut child, Duration::from_secs(5))
            {
                return (End::Exited(status), started);
            }
            return (stall(config, child, age), started);
        }
        // Once the engine is up, all the supervisor does is this loop: the
        // code it ran to start (parsing, configuration) need not stay mapped.
        if started && !code_unmapped {
            code_unmapped = true;
            ideamill_health::memory::unmap_idle_code();
        }
        // Until the first beat, look for the status file often; then sleep
        // until the beat would go stale.
        let timeout = if ever_beat {
            (limit - age + Duration::from_millis(5)).min(Duration::from_secs(60))
        } else {
            Duration::from_millis(100)
        };
        let woke = poll(pidfd.as_ref().map(|f| f.as_raw_fd()), signals, timeout);
        if let Some(sig) = woke.signal {
            // Forward: the first asks for a graceful stop, a second for an
            // immediate one (the engine decides).
            *stopping = true;
            let forward = if sig == libc::SIGHUP {
                libc::SIGTERM
            } else {
                sig
            };
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as libc::pid_t, forward) };
        }
    }
}

/// The engine stopped beating while alive: save what /proc shows, then
/// SIGABRT (for a core) and SIGKILL.
fn stall(config: &Config, mut child: Child, age: Duration) -> End {
    let pid = child.id();
    let data_dir = &config.engine.data_dir;
    let last = StatusFile::read(&status_file::path_for(data_dir, pid)).ok();
    let summary = StallSummary {
        detected_by: "supervisor".into(),
        reason: format!(
            "engine pid {pid} did not beat for {} ms (stall_after {} ms + {} ms margin)",
            age.as_millis(),
            config.health.stall_after.as_millis(),
            MARGIN.as_millis()
        ),
        pid,
        process_id: last.as_ref().and_then(|f| f.process_id.clone()),
        detected_at: wall_millis(),
        last_beat_at: last.as_ref().map_or(0, |f| f.beat_at),
        stall_ms: age.as_millis() as u64,
        stall_after_ms: config.health.stall_after.as_millis() as u64,
    };
    tracing::warn!("Stall: {}; saving evidence and stopping it", summary.reason);
    let evidence = save_evidence(data_dir, &summary, last.as_ref(), config).ok();
    let p = pid as libc::pid_t;
    // SAFETY: signals to our own child. SIGCONT lets a stopped (SIGSTOP)
    // process act on the SIGABRT.
    unsafe {
        libc::kill(p, libc::SIGABRT);
        libc::kill(p, libc::SIGCONT);
    }
    let status = wait_exit(&mut child, ABORT_GRACE).unwrap_or_else(|| {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGKILL) };
        child
            .wait()
            .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL))
    });
    End::Stalled {
        stall: age,
        evidence,
        status,
    }
}

fn save_evidence(
    data_dir: &Path,
    summary: &StallSummary,
    last: Option<&StatusFile>,
    config: &Config,
) -> std::io::Result<PathBuf> {
    let dir = watchdog::evidence_folder(data_dir, summary.pid)?;
    watchdog::write_synced(
        &dir,
        "summary.json",
        &serde_json::to_vec_pretty(summary).unwrap_or_default(),
    )?;
    let pid = summary.pid.to_string();
    watchdog::write_synced(&dir, "threads.txt", watchdog::thread_dump(&pid).as_bytes())?;
    if let Some(f) = last {
        watchdog::write_synced(
            &dir,
            "status.json",
            &serde_json::to_vec_pretty(f).unwrap_or_default(),
        )?;
        watchdog::write_synced(
            &dir,
            "jobs.json",
            &serde_json::to_vec_pretty(&f.in_flight).unwrap_or_default(),
        )?;
    }
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    watchdog::write_synced(&dir, "proc-status.txt", proc_status.as_bytes())?;
    watchdog::write_synced(
        &dir,
        "config.txt",
        format!("{:#?}", config.redacted()).as_bytes(),
    )?;
    watchdog::finish_folder(&dir)
}

/// The newest evidence folder of engine `pid`, if any; with `partial`, also
/// one still being written.
fn find_evidence(data_dir: &Path, pid: u32, partial: bool) -> Option<PathBuf> {
    let tag = format!("-pid{pid}");
    let mut found: Vec<PathBuf> = std::fs::read_dir(ideamill_health::evidence_dir(data_dir))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                let n = match n.strip_suffix(".partial") {
                    Some(n) if partial => n,
                    Some(_) => return false,
                    None => &n,
                };
                n.ends_with(&tag) || n.contains(&format!("{tag}-"))
            })
        })
        .collect();
    found.sort();
    found.pop()
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The events the supervisor records: all that its helper accepts.
const SUPERVISOR_EVENTS: [&str; 2] = [event_kind::ENGINE_RESTARTED, event_kind::SUPERVISOR_GAVE_UP];

/// How long the supervisor waits for its event helper before killing it.
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// The longest message the helper reads from its stdin.
const EVENT_MESSAGE_MAX: u64 = 64 * 1024;

/// Record an event in the store through a helper process, `ideamill
/// record-event`, waited for at most [`EVENT_WAIT`] and killed after. A
/// process and not a thread: opening a store loads its code and creates
/// process-wide state (tokio's signal socket pair, allocator arenas) that
/// would stay in the supervisor for the rest of its life (the soak saw 2
/// more descriptors and 2.4 MiB more RSS after the first restart); and a
/// helper stuck on a hung store can be killed, where a thread cannot.
fn record_event(config_path: Option<&Path>, kind: &'static str, message: String) -> bool {
    let mut cmd = match std::env::current_exe() {
        Ok(exe) => Command::new(exe),
        Err(e) => {
            tracing::warn!("Could not record the {kind} event: cannot find this binary: {e}");
            return false;
        }
    };
    if let Some(path) = config_path {
        cmd.arg("--config").arg(path);
    }
    if crate::json_logs() {
        cmd.args(["--log-format", "json"]);
    }
    // Its warnings go to the supervisor's stderr.
    cmd.args(["record-event", "--kind", kind])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!("Could not record the {kind} event: cannot start its helper: {e}");
            return false;
        }
    };
    // Far smaller than a pipe's buffer: this write does not wait on the
    // helper. Dropping stdin is its end of input.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(message.as_bytes());
    }
    match wait_exit(&mut child, EVENT_WAIT) {
        Some(status) if status.success() => true,
        Some(status) => {
            tracing::warn!(
                "Could not record the {kind} event: its helper {}",
                describe(status)
            );
            false
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            tracing::warn!(
                "Could not record the {kind} event: the store did not answer within {} s",
                EVENT_WAIT.as_secs()
            );
            false
        }
    }
}

/// `ideamill record-event --kind KIND`, the message on stdin: the
/// supervisor's helper (see [`record_event`]). Only the supervisor's own
/// events are accepted.
pub fn record_event_helper(config_path: Option<&Path>, kind: &str) -> anyhow::Result<ExitCode> {
    let Some(kind) = SUPERVISOR_EVENTS.into_iter().find(|k| *k == kind) else {
        anyhow::bail!(
            "record-event records the supervisor's events ({}), not {kind:?}",
            SUPERVISOR_EVENTS.join(", ")
        );
    };
    let mut message = String::new();
    std::io::stdin()
        .take(EVENT_MESSAGE_MAX)
        .read_to_string(&mut message)
        .context("the event's message on stdin")?;
    let config = project::load_config(config_path)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let store = project::open_store(&config).await?;
            let event = NewEvent {
                at: wall_millis(),
                kind,
                item_id: None,
                job_id: None,
                process: None,
                message,
            };
            let recorded = store.record_event(&event).await;
            store.close().await;
            recorded?;
            Ok(ExitCode::SUCCESS)
        })
}

struct Woke {
    signal: Option<i32>,
}

/// Sleep until the child's pidfd is readable (it exited), a signal arrives,
/// or `timeout` passes. Without a pidfd (old kernels), wake every 250 ms.
fn poll(pidfd: Option<RawFd>, signals: &SignalPipe, timeout: Duration) -> Woke {
    let timeout = if pidfd.is_some() {
        timeout
    } else {
        timeout.min(Duration::from_millis(250))
    };
    let mut fds = vec![libc::pollfd {
        fd: signals.read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if let Some(fd) = pidfd {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // SAFETY: `fds` is a valid array of its length.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        )
    };
    Woke {
        signal: signals.take(),
    }
}

/// The self-pipe that SIGINT, SIGTERM and SIGHUP write to.
struct SignalPipe {
    read: std::fs::File,
}

impl SignalPipe {
    fn install() -> std::io::Result<SignalPipe> {
        let (read, write) = ideamill_sys::pipe::nonblocking_pipe()?;
        // The write end stays open for the life of the process: the
        // handler may run at any time.
        SIGNAL_PIPE.store(write.into_raw_fd(), Ordering::Relaxed);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installing a handler that only calls write(2).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
        Ok(SignalPipe {
            read: std::fs::File::from(read),
        })
    }

    /// A signal received since the last call, if any.
    fn take(&self) -> Option<i32> {
        let mut buf = [0u8; 16];
        match (&self.read).read(&mut buf) {
            Ok(n) if n > 0 => Some(i32::from(buf[n - 1])),
            _ => None,
        }
    }

    /// Wait up to `limit` for a signal.
    fn wait(&self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(sig) = self.take() {
                return Some(sig);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Some(sig) = poll(None, self, left).signal {
                return Some(sig);
            }
        }
    }
}
