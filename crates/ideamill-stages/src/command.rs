//! Runs one external program for a `command` stage: no shell, its own process
//! group, bounded output capture, and a timeout or cancellation that kills the
//! whole group (SIGTERM, a grace period, then SIGKILL).
//!
//! # Process lifetime
//!
//! The child is made the leader of a new process group, so everything it
//! spawns (unless it calls `setsid`/`setpgid` itself) can be signalled at once
//! with `kill(-pgid, ..)`. The group is SIGKILLed after *every* run, including
//! a normal exit, so a background grandchild cannot outlive its item or hold
//! the output pipes open.
//!
//! The child also asks the kernel (`PR_SET_PDEATHSIG`) to SIGKILL it if the
//! engine dies without cleaning up, e.g. when the engine itself is SIGKILLed.
//! Two caveats: grandchildren do not inherit that setting (the kernel clears it
//! on fork), so after an engine crash they can survive, reparented to init;
//! and the kernel's "parent" is the *thread* that spawned the child, so the
//! child is killed if that thread exits while the command still runs. Tokio's
//! worker threads live as long as the runtime, which is what we want; do not
//! call [`run_command`] from a short-lived thread (e.g. `block_on` inside
//! `spawn_blocking`).
//!
//! The group is signalled while its leader is still an unreaped zombie
//! (we learn of the exit through a pidfd, which does not reap), so the pgid
//! cannot have been recycled for an unrelated process group in between. On
//! kernels without `pidfd_open` we fall back to tokio's `wait`, which reaps
//! first and leaves a tiny window for pid reuse.
//!
//! With a [`StallSpec`], the run is also watched for progress
//! ([`crate::stall`]): a job hung for `stall_after` gets an evidence folder
//! and ends [`CommandEnd::Hung`], its group killed as for a timeout. After
//! every run, the processes of the job that left its group are killed too
//! ([`crate::orphans::kill_leftovers`]), and the leader is registered with
//! the engine's reaper so that only we reap it.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::stall::{Hang, OutputTap, Seen, StallSpec};

/// After the group is SIGKILLed, how long the output readers get to reach end
/// of file. Normally the pipes close at once; only a process that escaped the
/// group (e.g. via `setsid`) and kept a pipe open makes us wait this long.
const DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// How long to wait for the kernel to report the group leader's death after
/// SIGKILL. SIGKILL cannot be ignored, but a process stuck in uninterruptible
/// IO (a dead NFS mount) can take arbitrarily long; we'd rather return and
/// leave the reaping to tokio's orphan queue (`kill_on_drop`) than hang.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Once the readers are told to stop, how many more reads each may do to
/// collect what is already buffered in the pipe. Bounded so that an escaped
/// process writing without pause cannot keep a reader busy forever.
const MAX_READS_AFTER_STOP: usize = 64;

/// The variable of a job's environment that marks its processes: one
/// item's workspace is one job's at a time, and a process that left the
/// job's session usually keeps its environment.
const JOB_MARK: &str = "IDEAMILL_WORKSPACE";

/// Size of each read from the child's stdout or stderr.
const READ_CHUNK: usize = 16 * 1024;

/// What to run and how to bound it.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// The program, looked up in `PATH` if it contains no `/`. Never run
    /// through a shell.
    pub program: String,
    /// Arguments, passed exactly as given.
    pub args: Vec<String>,
    /// Working directory of the child.
    pub cwd: PathBuf,
    /// The child's whole environment: nothing of the engine's is inherited.
    pub env: Vec<(String, String)>,
    /// Written to the child's stdin, which is then closed; empty: stdin is
    /// /dev/null.
    pub stdin: Vec<u8>,
    /// How long the child may run before the group is terminated.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL when terminating the group.
    pub kill_grace: Duration,
    /// Bytes of stdout kept (the head); the rest is read, counted and dropped.
    pub max_stdout: usize,
    /// Bytes of stderr kept (the tail, since errors are usually reported
    /// last); the rest is read, counted and dropped.
    pub max_stderr: usize,
    /// Limits the child sets on itself before it runs the program.
    pub confine: Confinement,
    /// Hang detection by progress (`stall_after`); `None` when off.
    pub stall: Option<StallSpec>,
}

/// What the child does to itself between fork and exec, where only
/// async-signal-safe calls are allowed: everything is prepared before.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// Resource limits: (`libc::RLIMIT_*`, soft, hard).
    pub rlimits: Vec<(i32, u64, u64)>,
    /// `cgroup.procs` files open for writing: the child writes "0" to each
    /// to join the job's control groups.
    pub cgroup_procs: Vec<RawFd>,
    /// Fds the program must inherit (everything else above stderr is
    /// closed at exec).
    pub keep_fds: Vec<RawFd>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEnd {
    /// The program exited on its own with this code.
    Exited(i32),
    /// The program was killed by this signal (not sent by us).
    Signaled(i32),
    /// The timeout elapsed and the process group was killed.
    TimedOut,
    /// No progress for `stall_after`: the evidence was saved and the
    /// process tree killed.
    Hung(Hang),
    /// The cancellation token fired and the process group was killed.
    Cancelled,
    /// The program could not be started (or, very rarely, could not be
    /// waited for); the message says why.
    SpawnFailed(String),
}

impl CommandEnd {
    /// A short human description, e.g. "exit code 3" or
    /// "killed by signal 9 (SIGKILL)".
    pub fn describe(&self) -> String {
        match self {
            CommandEnd::Exited(code) => format!("exit code {code}"),
            CommandEnd::Signaled(signal) => match signal_name(*signal) {
                Some(name) => format!("killed by signal {signal} ({name})"),
                None => format!("killed by signal {signal}"),
            },
            CommandEnd::TimedOut => "timed out".to_owned(),
            CommandEnd::Hung(hang) => hang.describe(),
            CommandEnd::Cancelled => "cancelled".to_owned(),
            CommandEnd::SpawnFailed(message) => format!("failed to start: {message}"),
        }
    }
}

impl fmt::Display for CommandEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What a command produced.
#[derive(Debug, Clone)]
pub struct CommandResult {
    /// How the process ended.
    pub end: CommandEnd,
    /// Lossy UTF-8 of the first `max_stdout` bytes.
    pub stdout: String,
    /// Stdout bytes read but not kept.
    pub stdout_dropped: u64,
    /// Lossy UTF-8 of the last `max_stderr` bytes.
    pub stderr: String,
    /// Stderr bytes read but not kept.
    pub stderr_dropped: u64,
    /// Wall time from the call to the return.
    pub duration: Duration,
}

/// Runs `spec` to completion, timeout or cancellation. Never panics on the
/// program's behaviour; when it returns, the child and every process still in
/// its process group have been SIGKILLed.
pub async fn run_command(spec: &CommandSpec, cancel: &CancellationToken) -> CommandResult {
    let started = Instant::now();
    let finish = |end, stdout: Capture, stderr: Capture| CommandResult {
        end,
        stdout: String::from_utf8_lossy(&stdout.kept).into_owned(),
        stdout_dropped: stdout.dropped,
        stderr: String::from_utf8_lossy(&stderr.kept).into_owned(),
        stderr_dropped: stderr.dropped,
        duration: started.elapsed(),
    };

    // Starting a process we'd kill at once is wasted work and noise.
    if cancel.is_cancelled() {
        return finish(
            CommandEnd::Cancelled,
            Capture::default(),
            Capture::default(),
        );
    }

    // A start that fails for lack of resources (file descriptors, processes,
    // memory) is the engine's trouble, not the item's: wait and try again
    // within this attempt.
    let mut wait = crate::resources::ResourceWait::new();
    let mut child = loop {
        let spawned = injected_spawn_failure().map_or_else(
            || crate::orphans::spawn_leader(|| build_command(spec).spawn(), Child::id),
            Err,
        );
        match spawned {
            Ok(child) => break child,
            Err(err)
                if crate::resources::cannot_spawn_for_now(&err)
                    && started.elapsed() + wait.pause() < spec.timeout =>
            {
                let trouble = format!(
                    "a stage's program cannot start for lack of resources (`{}`: {err})",
                    spec.program
                );
                if !wait.wait(trouble, cancel).await {
                    return finish(
                        CommandEnd::Cancelled,
                        Capture::default(),
                        Capture::default(),
                    );
                }
            }
            Err(err) => {
                let message = spawn_error_message(spec, &err);
                tracing::debug!(program = %spec.program, error = %err, "Command failed to start.");
                return finish(
                    CommandEnd::SpawnFailed(message),
                    Capture::default(),
                    Capture::default(),
                );
            }
        }
    };
    // A pid of 0 or 1 would turn `kill(-pgid)` into "our own group" or
    // "every process we may signal", so refuse to go on without a sane one.
    // The child has just been spawned and not waited for, so this cannot
    // really fail; `kill_on_drop` cleans up if it somehow does.
    let Some(pgid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .filter(|&id| id > 1)
    else {
        return finish(
            CommandEnd::SpawnFailed(format!(
                "program {:?} started without a usable pid",
                spec.program
            )),
            Capture::default(),
            Capture::default(),
        );
    };
    tracing::debug!(program = %spec.program, pid = pgid, "Command started.");

    // If this future is dropped half-way, the guard kills the group and the
    // token stops the helper tasks; both are disarmed on the normal path.
    let mut group = GroupGuard { pgid, armed: true };
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let tap = spec.stall.as_ref().map(|_| OutputTap::new());
    let seen: Seen = Seen::default();

    let stdin_task = child.stdin.take().and_then(|pipe| {
        // An empty input needs no writer: dropping the pipe closes it now.
        (!spec.stdin.is_empty())
            .then(|| AbortOnDrop(tokio::spawn(write_stdin(pipe, spec.stdin.clone()))))
    });
    let stdout_task = child.stdout.take().map(|pipe| {
        tokio::spawn(read_capped(
            pipe,
            Keep::Head(spec.max_stdout),
            stop.clone(),
            tap.clone(),
        ))
    });
    let stderr_task = child.stderr.take().map(|pipe| {
        tokio::spawn(read_capped(
            pipe,
            Keep::Tail(spec.max_stderr),
            stop.clone(),
            tap.clone(),
        ))
    });

    let watch = ExitWatch::new(pgid);
    // Biased towards the exit so that a program finishing just as the
    // timeout fires is reported as finished.
    let killed_for = tokio::select! {
        biased;
        result = watch.exited(&mut child) => {
            if let Err(err) = result {
                tracing::warn!(program = %spec.program, error = %err, "Waiting for a command failed; killing its process group.");
            }
            None
        }
        () = tokio::time::sleep(spec.timeout) => Some(CommandEnd::TimedOut),
        () = cancel.cancelled() => Some(CommandEnd::Cancelled),
        hang = watch_stall(spec.stall.as_ref(), pgid, tap.as_ref(), &seen) => Some(CommandEnd::Hung(hang)),
    };

    if let Some(reason) = &killed_for {
        tracing::debug!(program = %spec.program, pid = pgid, reason = %reason, "Terminating command.");
        signal_group(pgid, libc::SIGTERM);
        // Whether the leader exits in time or not, SIGKILL follows: members
        // that ignore SIGTERM must not outlive the run.
        let _ = tokio::time::timeout(spec.kill_grace, watch.exited(&mut child)).await;
    }
    // Also after a normal exit: background stragglers would otherwise keep
    // running and keep our pipes open.
    signal_group(pgid, libc::SIGKILL);
    group.armed = false;
    // What left the group (setsid, or orphaned onto the engine) dies too.
    let seen_now = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let leader = pgid.unsigned_abs();
    let mark = spec
        .env
        .iter()
        .find(|(key, _)| key == JOB_MARK)
        .map(|(key, value)| format!("{key}={value}"));
    let _ = tokio::task::spawn_blocking(move || {
        crate::orphans::kill_leftovers(leader, &seen_now, mark.as_deref())
    })
    .await;

    let status = tokio::time::timeout(REAP_LIMIT, child.wait()).await;
    // Reaped, or given up on (then tokio's orphan queue or the engine's
    // reaper takes it, whichever comes first): no longer ours to wait for.
    crate::orphans::forget_leader(leader);
    // Nobody is left to read the input (an escaped process might be, but it
    // gets no more of it).
    drop(stdin_task);

    let end = match (killed_for, status) {
        (Some(reason), _) => reason,
        (None, Ok(Ok(status))) => end_from_status(status),
        (None, Ok(Err(err))) => CommandEnd::SpawnFailed(format!(
            "waiting for program {:?} failed: {err}",
            spec.program
        )),
        (None, Err(_)) => CommandEnd::SpawnFailed(format!(
            "program {:?} did not exit within {REAP_LIMIT:?} of SIGKILL",
            spec.program
        )),
    };

    // The group is dead, so the pipes normally reach end of file at once;
    // the timer only matters if an escaped process holds one open.
    let _drain_timer = AbortOnDrop(tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(DRAIN_LIMIT).await;
            stop.cancel();
        }
    }));
    let stdout = join_capture(stdout_task, "stdout").await;
    let stderr = join_capture(stderr_task, "stderr").await;
    if stop.is_cancelled() {
        tracing::warn!(
            program = %spec.program,
            "Command output was still open after its process group was killed; a process may have escaped the group."
        );
    }

    let result = finish(end, stdout, stderr);
    tracing::debug!(program = %spec.program, end = %result.end, duration = ?result.duration, "Command finished.");
    result
}

/// Test-only (debug builds): `IDEAMILL_TEST_SPAWN_EMFILE=n` makes the first
/// n starts fail with EMFILE, as a process out of file descriptors would.
#[cfg(debug_assertions)]
fn injected_spawn_failure() -> Option<io::Error> {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LEFT: AtomicI64 = AtomicI64::new(-1);
    if LEFT.load(Ordering::SeqCst) == -1 {
        let n = std::env::var("IDEAMILL_TEST_SPAWN_EMFILE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let _ = LEFT.compare_exchange(-1, n, Ordering::SeqCst, Ordering::SeqCst);
    }
    (LEFT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        (n > 0).then(|| n - 1)
    }))
    .is_ok()
    .then(|| io::Error::from_raw_os_error(libc::EMFILE))
}

#[cfg(not(debug_assertions))]
fn injected_spawn_failure() -> Option<io::Error> {
    None
}

fn build_command(spec: &CommandSpec) -> Command {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        // Nothing to write: /dev/null, never a pipe the child could wait on.
        .stdin(if spec.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A last resort only: it signals the leader, not the group. The
        // normal paths and `GroupGuard` kill the whole group themselves.
        .kill_on_drop(true);

    // Captured before the fork so the child can tell whether we already died.
    let parent = std::process::id();
    let arm_parent_death_signal = move || {
        // SAFETY: plain syscalls with constant, valid arguments.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // If we died between fork and prctl, the signal was never armed;
        // the child has been reparented, so its parent pid changed.
        // SAFETY: `getppid` cannot fail.
        let current = unsafe { libc::getppid() };
        if u32::try_from(current).ok() != Some(parent) {
            return Err(io::Error::other(
                "engine exited while the command was starting",
            ));
        }
        Ok(())
    };
    let confine = spec.confine.clone();
    let prepare_child = move || {
        // A session of its own: a new process group (killed as one) and no
        // controlling terminal to inject keystrokes into.
        // SAFETY: setsid has no memory-safety preconditions.
        if unsafe { libc::setsid() } == -1 {
            return Err(io::Error::last_os_error());
        }
        for &fd in &confine.cgroup_procs {
            // SAFETY: writes one byte from a static buffer to an fd opened
            // before the fork.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        for &(resource, soft, hard) in &confine.rlimits {
            let value = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: `value` is a valid rlimit that outlives the call.
            if unsafe { libc::setrlimit(resource as _, &value) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        // The engine raised its own soft limit of open files; programs get
        // the usual 1024 back (some walk every possible fd at start).
        let mut files = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 && files.rlim_cur > 1024 {
                files.rlim_cur = files.rlim_max.min(1024);
                libc::setrlimit(libc::RLIMIT_NOFILE, &files);
            }
        }
        close_inherited_fds();
        for &fd in &confine.keep_fds {
            // SAFETY: fcntl on an fd opened before the fork.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        arm_parent_death_signal()
    };
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe functions may be called. It only calls `setsid`,
    // `write`, `getrlimit`/`setrlimit`, `close_range`/`fcntl`, `prctl` and `getppid`,
    // which are, reads data moved into it before the fork, and builds an
    // `io::Error` from an errno without allocating (the `other` error is only
    // built when we are already dead).
    unsafe {
        command.pre_exec(prepare_child);
    }
    command
}

/// Marks every fd above stderr close-on-exec, so that the program inherits
/// none of the engine's (its own inherited ones included, e.g. the beat
/// pipe). Marking rather than closing keeps std's exec-error pipe working.
/// Async-signal-safe.
fn close_inherited_fds() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of this process's fds.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !marked {
        // Kernels before 5.11: one fcntl per possible fd.
        for fd in 3..65_536 {
            // SAFETY: fcntl on an fd that may not be open just fails with EBADF.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// Turns a spawn error into a message naming what is wrong, since the OS
/// error alone ("No such file or directory") doesn't say whether the program
/// or the working directory is missing.
fn spawn_error_message(spec: &CommandSpec, err: &io::Error) -> String {
    let program = &spec.program;
    match std::fs::metadata(&spec.cwd) {
        Err(cwd_err) if cwd_err.kind() == io::ErrorKind::NotFound => {
            return format!("working directory {:?} does not exist", spec.cwd);
        }
        Ok(meta) if !meta.is_dir() => {
            return format!("working directory {:?} is not a directory", spec.cwd);
        }
        _ => {}
    }
    match err.kind() {
        io::ErrorKind::NotFound => {
            // A path that exists but "is not found" is a script whose
            // interpreter (`#!` line) or dynamic loader is missing. A
            // relative path with a slash is resolved after the chdir.
            if program.contains('/') && spec.cwd.join(Path::new(program)).exists() {
                format!("program {program:?} exists but its interpreter or loader was not found")
            } else {
                format!("program {program:?} not found")
            }
        }
        io::ErrorKind::PermissionDenied => {
            format!(
                "permission denied running program {program:?} in {:?}",
                spec.cwd
            )
        }
        _ => format!("cannot run program {program:?}: {err}"),
    }
}

fn end_from_status(status: ExitStatus) -> CommandEnd {
    match (status.code(), status.signal()) {
        (Some(code), _) => CommandEnd::Exited(code),
        (None, Some(signal)) => CommandEnd::Signaled(signal),
        // `wait` only reports terminated processes, which either exited or
        // were signalled; keep the raw status rather than panic.
        (None, None) => CommandEnd::Exited(status.into_raw()),
    }
}

/// Sends `signal` to every process in the group. Failure (ESRCH: the group is
/// already empty) is expected and harmless.
fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: `kill` has no memory-safety preconditions; `-pgid` with
    // pgid > 1 addresses exactly the child's process group.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Kills the process group when dropped while armed, i.e. if `run_command`'s
/// future is dropped before it cleaned up itself.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
            // Tokio's orphan queue reaps it (`kill_on_drop`); so may the
            // engine's reaper now, whichever comes first.
            crate::orphans::forget_leader(self.pgid.unsigned_abs());
        }
    }
}

/// The stall watcher of a run, or a future that never completes when the
/// run has none.
async fn watch_stall(
    stall: Option<&StallSpec>,
    leader: i32,
    tap: Option<&std::sync::Arc<OutputTap>>,
    seen: &Seen,
) -> Hang {
    match (stall, tap) {
        (Some(spec), Some(tap)) => {
            crate::stall::watch(spec, leader.unsigned_abs(), tap, seen).await
        }
        _ => std::future::pending().await,
    }
}

/// Aborts a helper task when dropped, so none outlives `run_command`.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Learns that the child exited *without reaping it*, so its pid (and thus
/// the pgid) stays reserved until we have signalled the group.
struct ExitWatch {
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    fn new(pid: i32) -> ExitWatch {
        let pidfd = match u32::try_from(pid).map(ideamill_sys::process::pidfd_open) {
            Ok(Ok(owned)) => {
                // SAFETY: an `OwnedFd` stays open, and is the same fd, until
                // the `AsyncFd` that owns it is dropped.
                unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
                    .ok()
            }
            _ => None,
        };
        if pidfd.is_none() {
            tracing::debug!(
                pid,
                "No pidfd for the command; falling back to waiting with reaping."
            );
        }
        ExitWatch { pidfd }
    }

    /// Resolves once the child has terminated. With a pidfd the child stays a
    /// zombie until `Child::wait`; without one it is reaped here.
    async fn exited(&self, child: &mut Child) -> io::Result<()> {
        if let Some(pidfd) = &self.pidfd {
            // A pidfd becomes readable when the process terminates. The
            // readiness is never cleared, so later calls return at once.
            if pidfd.readable().await.is_ok() {
                return Ok(());
            }
        }
        child.wait().await.map(drop)
    }
}

async fn write_stdin(mut pipe: ChildStdin, input: Vec<u8>) {
    // A child may exit or close stdin without reading it all; the resulting
    // EPIPE (SIGPIPE is ignored by the Rust runtime) is not an error of ours.
    if let Err(err) = pipe.write_all(&input).await {
        tracing::debug!(error = %err, "Command stopped reading its stdin.");
        return;
    }
    // Dropping the pipe closes it; shutdown just makes that explicit.
    let _ = pipe.shutdown().await;
}

/// Which part of an output stream to keep.
#[derive(Clone, Copy)]
enum Keep {
    Head(usize),
    Tail(usize),
}

#[derive(Default)]
struct Capture {
    kept: Vec<u8>,
    dropped: u64,
}

/// Reads `pipe` to end of file, keeping a bounded part. When `stop` fires,
/// takes what is already buffered (a bounded number of reads) and returns.
async fn read_capped(
    mut pipe: impl AsyncRead + Unpin,
    keep: Keep,
    stop: CancellationToken,
    tap: Option<std::sync::Arc<OutputTap>>,
) -> Capture {
    let mut head = Vec::new();
    let mut tail = VecDeque::new();
    let mut dropped: u64 = 0;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut reads_after_stop = 0;
    loop {
        // Biased towards reading, so data already in the pipe is collected
        // before a stop request is noticed.
        let read = tokio::select! {
            biased;
            read = pipe.read(&mut buf) => read,
            () = stop.cancelled() => break,
        };
        let chunk = match read {
            Ok(0) => break,
            Ok(n) => &buf[..n],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::debug!(error = %err, "Reading command output failed.");
                break;
            }
        };
        if let Some(tap) = &tap {
            tap.record(chunk);
        }
        match keep {
            Keep::Head(max) => {
                let take = chunk.len().min(max.saturating_sub(head.len()));
                head.extend_from_slice(&chunk[..take]);
                dropped += (chunk.len() - take) as u64;
            }
            Keep::Tail(max) => {
                tail.extend(chunk);
                let excess = tail.len().saturating_sub(max);
                tail.drain(..excess);
                dropped += excess as u64;
            }
        }
        if stop.is_cancelled() {
            reads_after_stop += 1;
            if reads_after_stop >= MAX_READS_AFTER_STOP {
                break;
            }
        }
    }
    let kept = match keep {
        Keep::Head(_) => head,
        Keep::Tail(_) => tail.into(),
    };
    Capture { kept, dropped }
}

async fn join_capture(task: Option<JoinHandle<Capture>>, stream: &str) -> Capture {
    let Some(task) = task else {
        return Capture::default();
    };
    match task.await {
        Ok(capture) => capture,
        Err(err) => {
            tracing::warn!(stream, error = %err, "Command output reader failed; its output is lost.");
            Capture::default()
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// Upper bound for conditions the tests wait on; generous because the
    /// machine may be busy, while the happy path returns in milliseconds.
    const PATIENCE: Duration = Duration::from_secs(2);

    fn spec(program: &str, args: &[&str]) -> CommandSpec {
        CommandSpec {
            program: program.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            cwd: PathBuf::from("/"),
            env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
            stdin: Vec::new(),
            timeout: Duration::from_secs(2),
            kill_grace: Duration::from_millis(300),
            max_stdout: 64 * 1024,
            max_stderr: 64 * 1024,
            confine: Confinement::default(),
            stall: None,
        }
    }

    /// `sh -c SCRIPT sh ARGS...`: the script sees ARGS as `$1`, `$2`, ...
    fn sh(script: &str, args: &[&str]) -> CommandSpec {
        let mut all = vec!["-c", script, "sh"];
        all.extend_from_slice(args);
        spec("sh", &all)
    }

    async fn run(spec: &CommandSpec) -> CommandResult {
        run_command(spec, &CancellationToken::new()).await
    }

    /// Polls `condition` until it holds or `PATIENCE` runs out.
    async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if condition() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// True if `pid` no longer runs: gone entirely, or a zombie that init
    /// has not reaped yet (some container init processes never do).
    fn is_dead(pid: i32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        if unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            return true;
        }
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        }
    }

    fn read_pid(path: &Path) -> i32 {
        let text = fs::read_to_string(path).expect("the script should have written its pid file");
        text.trim().parse().expect("the pid file should hold a pid")
    }

    #[tokio::test]
    async fn exit_codes_are_reported() {
        assert_eq!(run(&sh("exit 0", &[])).await.end, CommandEnd::Exited(0));
        assert_eq!(run(&sh("exit 3", &[])).await.end, CommandEnd::Exited(3));
        let killed = run(&sh("kill -9 $$", &[])).await;
        assert_eq!(killed.end, CommandEnd::Signaled(libc::SIGKILL));
        assert_eq!(killed.end.describe(), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn describe_is_readable() {
        fn check(end: CommandEnd, expected: &str) {
            assert_eq!(end.describe(), expected);
        }
        check(CommandEnd::Exited(3), "exit code 3");
        check(CommandEnd::Signaled(15), "killed by signal 15 (SIGTERM)");
        check(CommandEnd::Signaled(77), "killed by signal 77");
        check(CommandEnd::TimedOut, "timed out");
        check(CommandEnd::Cancelled, "cancelled");
        check(
            CommandEnd::SpawnFailed("program \"nope\" not found".to_owned()),
            "failed to start: program \"nope\" not found",
        );
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_captured_separately() {
        let result = run(&sh("echo out; echo err >&2; exit 1", &[])).await;
        assert_eq!(result.end, CommandEnd::Exited(1));
        assert_eq!(result.stdout, "out\n");
        assert_eq!(result.stderr, "err\n");
        assert_eq!((result.stdout_dropped, result.stderr_dropped), (0, 0));
    }

    #[tokio::test]
    async fn arguments_are_passed_verbatim_without_a_shell() {
        let result = run(&spec("printf", &["%s|", "a b", "$HOME", "*", ""])).await;
        assert_eq!(result.end, CommandEnd::Exited(0));
        assert_eq!(result.stdout, "a b|$HOME|*||");
    }

    #[tokio::test]
    async fn stdin_is_delivered_and_closed() {
        let mut cat = spec("cat", &[]);
        cat.stdin = b"hello\nworld\n".to_vec();
        let result = run(&cat).await;
        assert_eq!(result.end, CommandEnd::Exited(0));
        assert_eq!(result.stdout, "hello\nworld\n");
    }

    #[tokio::test]
    async fn unread_large_stdin_does_not_block() {
        let mut ignores_input = sh("echo done", &[]);
        ignores_input.stdin = vec![b'x'; 8 * 1024 * 1024];
        let result = run(&ignores_input).await;
        assert_eq!(result.end, CommandEnd::Exited(0));
        assert_eq!(result.stdout, "done\n");
        assert!(result.duration < PATIENCE, "took {:?}", result.duration);
    }

    #[tokio::test]
    async fn env_is_exactly_the_specs() {
        // SAFETY: a test-only variable no other test reads.
        unsafe { std::env::set_var("IDEAMILL_TEST_ENGINE_SECRET", "leaked") };
        let mut printenv = spec(
            "/bin/sh",
            &[
                "-c",
                r#"printf '%s|%s' "$IDEAMILL_TEST_VAR" "$IDEAMILL_TEST_ENGINE_SECRET""#,
            ],
        );
        printenv.env = vec![("IDEAMILL_TEST_VAR".to_owned(), "set by spec".to_owned())];
        let result = run(&printenv).await;
        assert_eq!(result.stdout, "set by spec|");
    }

    #[tokio::test]
    async fn no_fd_beyond_stdio_is_inherited_and_limits_apply() {
        // An fd the engine holds without close-on-exec, like an inherited one.
        let (read, _write) = std::io::pipe().unwrap();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&read);
        // SAFETY: clearing FD_CLOEXEC on an fd we own.
        unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
        let mut probe = sh(r#"ls /proc/self/fd | tr '\n' ' '; echo; ulimit -f"#, &[]);
        probe.env = vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        probe.confine.rlimits = vec![(libc::RLIMIT_FSIZE as i32, 1024 * 512, 1024 * 512)];
        let result = run(&probe).await;
        // 0-2 and the fd `ls` itself opens to read the folder.
        let fds: Vec<&str> = result
            .stdout
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(fds, ["0", "1", "2", "3"], "{}", result.stdout);
        assert_ne!(raw, 3, "the test's pipe should not take the fd ls reports");
        assert_eq!(
            result.stdout.lines().nth(1),
            Some("1024"),
            "{}",
            result.stdout
        );
    }

    #[tokio::test]
    async fn cwd_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut pwd = sh("pwd -P", &[]);
        pwd.cwd = dir.path().to_owned();
        let result = run(&pwd).await;
        let expected = dir.path().canonicalize().unwrap();
        assert_eq!(result.stdout.trim_end(), expected.to_str().unwrap());
    }

    #[tokio::test]
    async fn spawn_failures_are_explained() {
        let missing = run(&spec("ideamill-no-such-program", &[])).await;
        assert_eq!(
            missing.end,
            CommandEnd::SpawnFailed("program \"ideamill-no-such-program\" not found".to_owned())
        );

        let dir = tempfile::tempdir().unwrap();
        let mut bad_cwd = spec("true", &[]);
        bad_cwd.cwd = dir.path().join("missing");
        let CommandEnd::SpawnFailed(message) = run(&bad_cwd).await.end else {
            panic!("a missing cwd should fail to spawn");
        };
        assert!(
            message.starts_with("working directory") && message.ends_with("does not exist"),
            "{message}"
        );

        // Even root cannot exec a file without any execute bit.
        let script = dir.path().join("not-executable");
        fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
        let CommandEnd::SpawnFailed(message) = run(&spec(script.to_str().unwrap(), &[])).await.end
        else {
            panic!("a non-executable file should fail to spawn");
        };
        assert!(
            message.starts_with("permission denied running program"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn stdout_keeps_the_head_and_counts_the_rest() {
        let expected: String = (1..=5000).map(|i| format!("{i}\n")).collect();
        let mut seq = spec("seq", &["1", "5000"]);
        seq.max_stdout = 100;
        let result = run(&seq).await;
        assert_eq!(result.end, CommandEnd::Exited(0));
        assert_eq!(result.stdout, expected[..100]);
        assert_eq!(result.stdout_dropped, (expected.len() - 100) as u64);
    }

    #[tokio::test]
    async fn stderr_keeps_the_tail_and_counts_the_rest() {
        let expected: String = (1..=5000).map(|i| format!("{i}\n")).collect();
        let mut seq = sh("seq 1 5000 >&2", &[]);
        seq.max_stderr = 20;
        let result = run(&seq).await;
        assert_eq!(result.end, CommandEnd::Exited(0));
        assert_eq!(result.stderr, expected[expected.len() - 20..]);
        assert_eq!(result.stderr_dropped, (expected.len() - 20) as u64);
    }

    #[tokio::test]
    async fn timeout_kills_a_term_ignoring_child_and_its_grandchild() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let mut stubborn = sh(
            r#"trap "" TERM; sleep 1000 & echo $! > "$1"; echo started; sleep 1000"#,
            &[pid_file.to_str().unwrap()],
        );
        // Long enough for `sh` to write the pid file even on a busy machine.
        stubborn.timeout = Duration::from_millis(800);
        stubborn.kill_grace = Duration::from_millis(300);

        let result = run(&stubborn).await;
        assert_eq!(result.end, CommandEnd::TimedOut);
        assert_eq!(result.stdout, "started\n");
        // SIGTERM was ignored, so only SIGKILL after the grace ended it.
        assert!(
            result.duration >= Duration::from_millis(1100),
            "took {:?}",
            result.duration
        );
        assert!(
            result.duration < Duration::from_millis(2500),
            "took {:?}",
            result.duration
        );

        let grandchild = read_pid(&pid_file);
        assert!(
            eventually(|| is_dead(grandchild)).await,
            "grandchild {grandchild} survived"
        );
    }

    #[tokio::test]
    async fn cancellation_stops_a_running_child_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("started");
        let mut sleeper = sh(
            r#"echo $$ > "$1"; exec sleep 1000"#,
            &[marker.to_str().unwrap()],
        );
        sleeper.timeout = Duration::from_secs(60);
        // Long, so that a prompt return shows SIGTERM did the job.
        sleeper.kill_grace = Duration::from_secs(2);
        let cancel = CancellationToken::new();

        let (result, cancelled_at) = tokio::join!(run_command(&sleeper, &cancel), async {
            let started =
                eventually(|| fs::read_to_string(&marker).is_ok_and(|text| text.ends_with('\n')))
                    .await;
            cancel.cancel();
            assert!(started, "the child never started");
            Instant::now()
        });
        assert_eq!(result.end, CommandEnd::Cancelled);
        // `sleep` dies of SIGTERM, well before the grace period ends.
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "took {:?}",
            cancelled_at.elapsed()
        );
        assert!(is_dead(read_pid(&marker)));
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let spec = sh(
            r#"sleep 1000 & echo $! > "$1"; sleep 1000"#,
            &[pid_file.to_str().unwrap()],
        );
        let mut running = Box::pin(run(&spec));
        let started = tokio::select! {
            result = &mut running => panic!("the command ended early: {:?}", result.end),
            started = eventually(|| fs::read_to_string(&pid_file).is_ok_and(|text| text.ends_with('\n'))) => started,
        };
        assert!(started, "the child never started");
        drop(running);
        let grandchild = read_pid(&pid_file);
        assert!(
            eventually(|| is_dead(grandchild)).await,
            "grandchild {grandchild} survived"
        );
    }

    #[tokio::test]
    async fn an_already_cancelled_token_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let result = run_command(&sh(r#"touch "$1""#, &[marker.to_str().unwrap()]), &cancel).await;
        assert_eq!(result.end, CommandEnd::Cancelled);
        assert!(!marker.exists());
    }

    fn stalling(script: &str, dir: &Path, timeout: Duration) -> CommandSpec {
        let mut spec = sh(script, &[]);
        spec.cwd = dir.to_owned();
        spec.timeout = timeout;
        spec.stall = Some(StallSpec {
            after: Duration::from_secs(1),
            workspace: dir.to_owned(),
            evidence_dir: dir.join("evidence"),
            label: "job1-attempt1".to_owned(),
            about: serde_json::json!({"stage": "test"}),
        });
        spec
    }

    #[tokio::test]
    async fn a_quiet_idle_program_is_hung_with_evidence_and_its_tree_killed() {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"sleep 1000 & echo $! > grandchild.pid; echo "one line"; exec sleep 1000"#;
        let result = run(&stalling(script, dir.path(), Duration::from_secs(30))).await;
        let CommandEnd::Hung(hang) = &result.end else {
            panic!("not hung: {:?}", result.end);
        };
        assert!(hang.quiet_for >= Duration::from_secs(1), "{hang:?}");
        assert!(
            result.duration < Duration::from_secs(10),
            "{:?}",
            result.duration
        );
        assert!(hang.wrote_output);
        assert_eq!(result.stdout, "one line\n");
        let evidence = hang.evidence.clone().unwrap();
        assert!(
            evidence
                .file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with("-job1-attempt1")
        );
        assert_eq!(
            fs::read_to_string(evidence.join("output.txt")).unwrap(),
            "one line\n"
        );
        let processes = fs::read_to_string(evidence.join("processes.txt")).unwrap();
        assert!(processes.matches("=== pid").count() >= 2, "{processes}");
        assert!(
            result
                .end
                .describe()
                .starts_with("hung: no output, no change"),
            "{}",
            result.end
        );
        let grandchild = read_pid(&dir.path().join("grandchild.pid"));
        assert!(
            eventually(|| is_dead(grandchild)).await,
            "grandchild {grandchild} survived"
        );
    }

    #[tokio::test]
    async fn a_busy_program_is_not_hung_and_a_writing_one_neither() {
        let dir = tempfile::tempdir().unwrap();
        let busy = run(&stalling(
            "while :; do :; done",
            dir.path(),
            Duration::from_secs(3),
        ))
        .await;
        assert_eq!(busy.end, CommandEnd::TimedOut);
        // Quiet on its pipes, but it keeps changing the workspace.
        // (One process: a new one would count as progress by itself.)
        let writing = "exec python3 -c 'import time\nfor i in range(6): time.sleep(0.4); open(\"progress\", \"w\").write(str(i))'";
        let result = run(&stalling(writing, dir.path(), Duration::from_secs(30))).await;
        assert_eq!(result.end, CommandEnd::Exited(0));
        assert!(!dir.path().join("evidence").exists());
    }

    #[tokio::test]
    async fn a_grandchild_holding_stdout_does_not_hang_a_normal_exit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let result = run(&sh(
            r#"sleep 1000 & echo $! > "$1"; echo done"#,
            &[pid_file.to_str().unwrap()],
        ))
        .await;
        assert_eq!(result.end, CommandEnd::Exited(0));
        assert_eq!(result.stdout, "done\n");
        assert!(result.duration < PATIENCE, "took {:?}", result.duration);
        let grandchild = read_pid(&pid_file);
        assert!(
            eventually(|| is_dead(grandchild)).await,
            "grandchild {grandchild} survived"
        );
    }
}
