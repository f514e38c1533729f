//! The sandbox of `command` stages: bubblewrap around the program, an
//! environment from an allowlist, resource limits, and a control group per
//! job where the host gives us one.
//!
//! What a confined program sees: the system read-only (`/usr`, `/bin`,
//! `/lib*`, `/sbin`, `/etc`), its own workspace read-write, a private
//! memory-backed `/tmp`, a private `/proc` and minimal `/dev`, its stage's
//! `read_only` paths, and nothing else: no project folder, no store, no
//! token, no other item's workspace. New PID, IPC, UTS, cgroup and (unless
//! `network = true`) network namespaces. When the engine runs as root, the
//! program runs as `nobody` (bubblewrap privileged, then `setpriv` drops
//! every id and capability, with no-new-privs), so that files only root may
//! read stay unreadable; otherwise it runs as the engine's user inside a
//! user namespace that may not create further ones.
//!
//! Why bubblewrap rather than our own namespaces + Landlock + seccomp: it is
//! a small, audited, widely packaged program (Flatpak, Codex CLI and Claude
//! Code use it), it runs unprivileged, and it keeps the mount and namespace
//! set-up, the riskiest code, out of ours.

pub mod cgroup;
pub mod seccomp;

use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ideamill_core::config::{CommandStage, Limits, SandboxConfig, SandboxMode};
use ideamill_core::size::format_size;
use serde::Serialize;

use crate::command::Confinement;
use cgroup::{CgroupHost, JobCgroup, LimitHits};

/// The user confined programs run as when the engine is root: `nobody`.
pub const NOBODY: u32 = 65534;

/// Where the system's programs and libraries are, mounted read-only.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// What this host's sandbox can do: probed once, then shared by every job.
#[derive(Debug)]
pub struct Sandbox {
    /// The sandbox program, resolved; `None` when it cannot run here.
    program: Option<PathBuf>,
    /// The engine is root: bubblewrap runs privileged and `setpriv` drops
    /// the program to `nobody`.
    as_root: bool,
    cgroups: Option<CgroupHost>,
    /// The seccomp programs, when they could be built for this machine.
    filters: Option<seccomp::Filters>,
    report: SandboxReport,
}

/// What `validate` and `doctor` say about the sandbox.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SandboxReport {
    /// The configured program, as written.
    pub program: String,
    /// Its version line, when it runs.
    pub version: Option<String>,
    /// Whether a confined program can start here.
    pub works: bool,
    /// Why not, and what to do, when it cannot.
    pub problem: Option<String>,
    /// The namespaces a job gets, and as whom it runs.
    pub isolation: String,
    /// Memory and process limits: a control group, or per-process rlimits.
    pub limits: String,
    /// System call filtering.
    pub seccomp: String,
}

impl Sandbox {
    /// For a pipeline none of whose stages starts a program (model calls
    /// only): not probed, and never used.
    pub fn unused(config: &SandboxConfig) -> Sandbox {
        Sandbox {
            program: None,
            // SAFETY: geteuid cannot fail.
            as_root: unsafe { libc::geteuid() } == 0,
            cgroups: None,
            filters: None,
            report: SandboxReport {
                program: config.program.clone(),
                version: None,
                works: false,
                problem: Some("not probed: no stage starts a program".to_owned()),
                isolation: String::new(),
                limits: String::new(),
                seccomp: String::new(),
            },
        }
    }

    /// Probes the host: finds the program, starts a confined `true`, and
    /// looks for a control group to put jobs in. Blocking (tens of ms).
    pub fn probe(config: &SandboxConfig) -> Sandbox {
        let sandbox = Self::probe_host(config);
        // The probe's programs may have left a process on the engine (a
        // subreaper), now that they are done: its reaper must look.
        crate::orphans::children_may_land();
        sandbox
    }

    fn probe_host(config: &SandboxConfig) -> Sandbox {
        // SAFETY: geteuid cannot fail.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut report = SandboxReport {
            program: config.program.clone(),
            version: None,
            works: false,
            problem: None,
            isolation: if as_root {
                "namespaces: mount, pid, ipc, uts, cgroup, network (unless network = true); \
                 runs as nobody (65534) with no capabilities and no-new-privs (the engine is root)"
                    .to_owned()
            } else {
                "namespaces: user (no nested ones), mount, pid, ipc, uts, cgroup, network \
                 (unless network = true); runs as the engine's user with no capabilities"
                    .to_owned()
            },
            limits: String::new(),
            seccomp: String::new(),
        };
        let filters = match seccomp::Filters::build() {
            Ok(filters) => {
                report.seccomp = "a filter denies new namespaces (clone, unshare, setns), \
                                  ptrace, keyrings, bpf, perf events, userfaultfd, io_uring, \
                                  modules, kexec, mounts, reboot, swap, the clock and TIOCSTI"
                    .to_owned();
                Some(filters)
            }
            Err(why) => {
                report.seccomp = format!("not applied ({why})");
                None
            }
        };
        let cgroups = match CgroupHost::detect() {
            Ok(host) => {
                report.limits = format!(
                    "memory and processes per job by {host}; CPU time, file size by rlimits"
                );
                Some(host)
            }
            Err(why) => {
                report.limits = format!(
                    "no control group ({why}): memory by RLIMIT_AS, processes by RLIMIT_NPROC{}, \
                     CPU time and file size by rlimits",
                    if as_root {
                        " (counted for all of nobody's processes)"
                    } else {
                        " (counted for all of the engine user's processes)"
                    }
                );
                None
            }
        };
        let program = match find_program(&config.program) {
            Some(path) => path,
            None => {
                report.problem = Some(format!(
                    "the sandbox program {:?} was not found; install bubblewrap (Debian, Ubuntu: \
                     `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`), set \
                     `[sandbox] program`, or run a stage unconfined with `sandbox = \"off\"`",
                    config.program
                ));
                return Sandbox {
                    program: None,
                    as_root,
                    cgroups,
                    filters,
                    report,
                };
            }
        };
        report.version = Command::new(&program)
            .arg("--version")
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|v| !v.is_empty());
        let mut sandbox = Sandbox {
            program: Some(program),
            as_root,
            cgroups,
            filters,
            report,
        };
        match sandbox.try_true() {
            Ok(()) => sandbox.report.works = true,
            Err(why) => {
                sandbox.report.problem = Some(format!(
                    "the sandbox cannot start a program here: {why}. Allow unprivileged user \
                     namespaces (`sysctl kernel.unprivileged_userns_clone=1`, or on Ubuntu an \
                     AppArmor profile for bwrap), run the engine where namespaces are allowed \
                     (a container needs `--privileged` or a seccomp profile that allows them), \
                     or run a stage unconfined with `sandbox = \"off\"`"
                ));
                sandbox.program = None;
            }
        }
        sandbox
    }

    /// Removes the job control groups that engines killed before they could
    /// remove them left behind, with what is still in them (a confined
    /// program that missed its parent's death). `None` without groups.
    /// Blocking.
    pub fn sweep_abandoned(&self) -> Option<cgroup::Abandoned> {
        match self.cgroups.as_ref()?.sweep_abandoned() {
            Ok(abandoned) => Some(abandoned),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot look for the job control groups that killed engines left behind.");
                None
            }
        }
    }

    /// What was found out about the sandbox on this host.
    pub fn report(&self) -> &SandboxReport {
        &self.report
    }

    /// Whether a confined command can run here.
    pub fn works(&self) -> bool {
        self.program.is_some()
    }

    /// Runs `true` confined, as a job would run.
    fn try_true(&self) -> Result<(), String> {
        let dir = tempfile_dir().map_err(|e| format!("no scratch folder: {e}"))?;
        let plan = self
            .plan(&probe_stage(), &dir, "true", &[])
            .map_err(|e| e.to_string())?;
        let keep: Vec<i32> = plan.keep.iter().map(AsRawFd::as_raw_fd).collect();
        let mut command = Command::new(&plan.program);
        command
            .args(&plan.args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .current_dir(&dir)
            .stdin(Stdio::null());
        // SAFETY: only fcntl on fds that are open, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                for &fd in &keep {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
                Ok(())
            });
        }
        let out = command.output();
        drop(plan);
        let _ = std::fs::remove_dir(&dir);
        match out {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            )),
            Err(e) => Err(format!("cannot run it: {e}")),
        }
    }

    /// The program and arguments that run `program args` confined in
    /// `workspace`, as `stage` says.
    pub fn plan(
        &self,
        stage: &CommandStage,
        workspace: &Path,
        program: &str,
        args: &[String],
    ) -> io::Result<Plan> {
        let Some(sandbox) = &self.program else {
            return Err(io::Error::other(
                self.report
                    .problem
                    .clone()
                    .unwrap_or_else(|| "the sandbox does not work here".to_owned()),
            ));
        };
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        push(&[
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
        ]);
        push(&["--unshare-cgroup-try", "--hostname", "sandbox"]);
        if !stage.network {
            push(&["--unshare-net"]);
        }
        if !self.as_root {
            push(&["--unshare-user", "--disable-userns"]);
        }
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(path) {
                        a.extend([
                            "--symlink".to_owned(),
                            target.display().to_string(),
                            (*dir).to_owned(),
                        ]);
                    }
                }
                Ok(m) if m.is_dir() => {
                    a.extend(["--ro-bind".to_owned(), (*dir).to_owned(), (*dir).to_owned()])
                }
                _ => {}
            }
        }
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        push(&["--ro-bind", "/etc", "/etc"]);
        if stage.network {
            // Where /etc/resolv.conf often points.
            push(&[
                "--ro-bind-try",
                "/run/systemd/resolve",
                "/run/systemd/resolve",
            ]);
        }
        push(&["--proc", "/proc", "--dev", "/dev"]);
        let tmp = stage.limits.tmp_size.to_string();
        push(&["--perms", "1777", "--size", &tmp, "--tmpfs", "/tmp"]);

        // Each mount point's parents, made traversable for the program's user.
        let mut mounts: Vec<(&str, &Path)> = Vec::new();
        for path in &stage.read_only {
            mounts.push(("--ro-bind", path));
        }
        let program_path = Path::new(program);
        if program_path.is_absolute() && !is_system_path(program_path) {
            mounts.push(("--ro-bind", program_path));
        }
        mounts.push(("--bind", workspace));
        let mut made: Vec<PathBuf> = Vec::new();
        for (how, path) in &mounts {
            if !path.exists() {
                if *how == "--bind" {
                    return Err(io::Error::other(format!(
                        "the workspace {} does not exist",
                        path.display()
                    )));
                }
                return Err(io::Error::other(format!(
                    "the read-only path {} does not exist",
                    path.display()
                )));
            }
            for parent in path
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                if parent == Path::new("/")
                    || made.iter().any(|m| m == parent)
                    || is_system_path(parent)
                {
                    continue;
                }
                a.extend([
                    "--perms".to_owned(),
                    "0755".to_owned(),
                    "--dir".to_owned(),
                    parent.display().to_string(),
                ]);
                made.push(parent.to_owned());
            }
            let shown = path.display().to_string();
            a.extend([(*how).to_owned(), shown.clone(), shown]);
        }
        a.extend(["--chdir".to_owned(), workspace.display().to_string()]);
        let keep = match &self.filters {
            Some(filters) => filters.pipes()?,
            None => Vec::new(),
        };
        for fd in &keep {
            a.extend(["--add-seccomp-fd".to_owned(), fd.as_raw_fd().to_string()]);
        }
        a.push("--".to_owned());
        if self.as_root {
            let id = NOBODY.to_string();
            a.extend(
                [
                    "/usr/bin/setpriv",
                    "--reuid",
                    &id,
                    "--regid",
                    &id,
                    "--clear-groups",
                    "--inh-caps=-all",
                    "--bounding-set=-all",
                    "--no-new-privs",
                    "--",
                ]
                .map(str::to_owned),
            );
        }
        a.push(program.to_owned());
        a.extend(args.iter().cloned());
        Ok(Plan {
            program: sandbox.display().to_string(),
            args: a,
            keep,
        })
    }

    /// The control group and rlimits of one job of `stage`.
    pub fn confine(&self, limits: &Limits, tag: &str) -> (Confinement, Option<JobCgroup>) {
        let mut rlimits = vec![
            (libc::RLIMIT_CORE as i32, 0, 0),
            (
                libc::RLIMIT_CPU as i32,
                limits.cpu_time.as_secs().max(1),
                limits.cpu_time.as_secs().max(1) + 2,
            ),
            (
                libc::RLIMIT_FSIZE as i32,
                limits.file_size,
                limits.file_size,
            ),
        ];
        let group = self.cgroups.as_ref().and_then(|host| {
            host.create(tag, limits.memory, limits.processes)
                .map_err(|e| {
                    tracing::warn!(error = %e, "Cannot create a job's control group; its memory and processes are limited by rlimits.");
                })
                .ok()
        });
        if group.is_none() {
            rlimits.push((libc::RLIMIT_AS as i32, limits.memory, limits.memory));
            // RLIMIT_NPROC counts every task of the user, not the job's: on
            // top of what that user already runs, so that a busy desktop
            // does not starve the job.
            let user = if self.as_root {
                NOBODY
            } else {
                // SAFETY: getuid cannot fail.
                unsafe { libc::getuid() }
            };
            let processes = u64::from(limits.processes) + tasks_of(user);
            rlimits.push((libc::RLIMIT_NPROC as i32, processes, processes));
        }
        let confinement = Confinement {
            rlimits,
            cgroup_procs: group.as_ref().map(JobCgroup::procs_fds).unwrap_or_default(),
            keep_fds: Vec::new(),
        };
        (confinement, group)
    }

    /// Makes `workspace` the confined user's (only when that is `nobody`),
    /// without following links. Blocking.
    pub fn hand_over(&self, workspace: &Path) -> io::Result<()> {
        if !self.as_root {
            return Ok(());
        }
        chown_tree(workspace, NOBODY)
    }
}

/// The names of the stages that run a program (command and agent stages)
/// whose sandbox is `mode`.
pub fn stages_with(config: &ideamill_core::Config, mode: SandboxMode) -> Vec<&str> {
    config
        .stages
        .iter()
        .filter(|s| s.kind.facts().process.is_some_and(|c| c.sandbox == mode))
        .map(|s| s.name.as_str())
        .collect()
}

/// Why the confined stages of `config` cannot run here, when they cannot:
/// `run` refuses to start them, `validate` and `doctor` say so.
pub fn refusal(config: &ideamill_core::Config, sandbox: &Sandbox) -> Option<String> {
    let confined = stages_with(config, SandboxMode::On);
    (!confined.is_empty() && !sandbox.works()).then(|| {
        format!(
            "stages {} must run confined, but {}",
            confined.join(", "),
            sandbox
                .report()
                .problem
                .as_deref()
                .unwrap_or("the sandbox does not work here")
        )
    })
}

/// The program to start and its arguments, and the fds it must inherit
/// (the seccomp programs' pipes), open until it has started.
#[derive(Debug)]
pub struct Plan {
    /// The program to run (the sandbox, or the command itself).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// File descriptors the program inherits, kept open until it has started.
    pub keep: Vec<OwnedFd>,
}

/// `PATH` when the engine has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The environment of a command stage's program, sandboxed or not: the
/// allowlist (`PATH`, `LANG`, `LC_*`, `TERM`, `TZ`; `HOME` is the workspace
/// when confined), then `context` (the `IDEAMILL_*` variables), the stage's
/// `env`, and the variables it names in `pass_env`. Nothing else of the
/// engine's, so internal variables (`IDEAMILL_BEAT_FD`, `NOTIFY_SOCKET`, …)
/// and secrets never reach a stage unless named.
pub fn stage_env(
    stage: &CommandStage,
    workspace: &Path,
    context: Vec<(String, String)>,
    engine_env: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let confined = stage.sandbox == SandboxMode::On;
    for (key, value) in engine_env {
        let allowed = matches!(key.as_str(), "PATH" | "LANG" | "TERM" | "TZ")
            || key.starts_with("LC_")
            || (!confined && matches!(key.as_str(), "HOME" | "USER" | "LOGNAME"))
            || stage.pass_env.contains(&key);
        if allowed {
            env.push((key, value));
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    if confined {
        env.push(("HOME".to_owned(), workspace.display().to_string()));
    }
    env.extend(context);
    env.extend(stage.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Later entries win: keep each name's last value only.
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(String, String)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    out.reverse();
    out
}

/// Why a confined job ended early or failed for its limits, if it did.
pub fn limit_reached(
    limits: &Limits,
    hits: LimitHits,
    exit_signal: Option<i32>,
    workspace: &Path,
) -> Option<String> {
    if hits.oom_kills > 0 {
        return Some(format!(
            "memory limit {} reached",
            format_size(limits.memory)
        ));
    }
    if hits.fork_refusals > 0 {
        return Some(format!("process limit {} reached", limits.processes));
    }
    match exit_signal {
        Some(libc::SIGXCPU) => {
            return Some(format!(
                "CPU time limit {} reached",
                ideamill_core::duration::format_duration(limits.cpu_time)
            ));
        }
        Some(libc::SIGXFSZ) => {
            return Some(format!(
                "file size limit {} reached",
                format_size(limits.file_size)
            ));
        }
        _ => {}
    }
    let usage = workspace_usage(workspace, limits.file_size);
    if let Some(path) = usage.at_file_limit {
        return Some(format!(
            "file size limit {} reached ({})",
            format_size(limits.file_size),
            path
        ));
    }
    if usage.bytes > limits.workspace_size {
        return Some(format!(
            "workspace over {} ({} after the stage)",
            format_size(limits.workspace_size),
            format_size(usage.bytes)
        ));
    }
    None
}

/// What a workspace holds: the apparent size of its regular files (a sparse
/// file counts at its full length) and the first file at the size limit.
#[derive(Debug, Default)]
struct Usage {
    bytes: u64,
    at_file_limit: Option<String>,
}

fn workspace_usage(root: &Path, file_limit: u64) -> Usage {
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    // Bounded, so that a workspace of a million entries cannot stall a job.
    let mut budget = 200_000usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return usage;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                usage.bytes = usage.bytes.saturating_add(meta.len());
                if meta.len() >= file_limit && usage.at_file_limit.is_none() {
                    let rel = entry.path();
                    let rel = rel.strip_prefix(root).unwrap_or(&rel);
                    usage.at_file_limit = Some(rel.display().to_string());
                }
            }
        }
    }
    usage
}

/// Tasks (threads) whose real user is `uid`, from `/proc`.
fn tasks_of(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut tasks = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            tasks += field("Threads:").unwrap_or(1);
        }
    }
    tasks
}

fn chown_tree(root: &Path, id: u32) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = path.symlink_metadata()?;
        if meta.uid() != id || meta.gid() != id {
            std::os::unix::fs::lchown(&path, Some(id), Some(id))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

fn is_system_path(path: &Path) -> bool {
    SYSTEM_DIRS
        .iter()
        .chain(&["/etc"])
        .any(|dir| path.starts_with(dir))
}

/// `name` as found in `PATH` (or as given, when it has a slash).
fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// A fresh empty folder for the probe.
fn tempfile_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let started = Instant::now();
    loop {
        let dir = base.join(format!(
            "ideamill-sandbox-probe-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && started.elapsed() < Duration::from_secs(1) => {}
            Err(e) => return Err(e),
        }
    }
}

fn probe_stage() -> CommandStage {
    CommandStage {
        program: "true".to_owned(),
        args: Vec::new(),
        env: Default::default(),
        kill_grace: Duration::from_secs(1),
        max_output: 1024,
        sandbox: SandboxMode::On,
        network: false,
        pass_env: Vec::new(),
        read_only: Vec::new(),
        limits: Limits::default(),
    }
}

impl SandboxReport {
    /// A few lines for `validate` and `doctor`.
    pub fn lines(&self) -> String {
        let mut out = String::new();
        let version = self.version.as_deref().unwrap_or("version unknown");
        if self.works {
            let _ = writeln!(out, "works ({} at {version})", self.program);
        } else {
            let _ = writeln!(
                out,
                "DOES NOT WORK: {}",
                self.problem.as_deref().unwrap_or("unknown reason")
            );
        }
        let _ = writeln!(out, "  isolation: {}", self.isolation);
        let _ = writeln!(out, "  limits: {}", self.limits);
        let _ = write!(out, "  seccomp: {}", self.seccomp);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_environment_is_an_allowlist() {
        let mut stage = probe_stage();
        stage.pass_env = vec!["X".to_owned()];
        stage.env = [("K".to_owned(), "stage".to_owned())].into();
        let engine = vars(&[
            ("PATH", "/usr/bin"),
            ("LC_ALL", "C"),
            ("HOME", "/root"),
            ("OPENAI_API_KEY", "sk-secret"),
            ("IDEAMILL_BEAT_FD", "3"),
            ("NOTIFY_SOCKET", "/run/notify"),
            ("X", "passed"),
            ("K", "engine"),
        ]);
        let context = vars(&[("IDEAMILL_ITEM_ID", "7")]);
        let env = stage_env(
            &stage,
            Path::new("/ws/7"),
            context.clone(),
            engine.clone().into_iter(),
        );
        assert_eq!(
            env,
            vars(&[
                ("PATH", "/usr/bin"),
                ("LC_ALL", "C"),
                ("X", "passed"),
                ("HOME", "/ws/7"),
                ("IDEAMILL_ITEM_ID", "7"),
                ("K", "stage"),
            ])
        );
        // Unconfined: the engine's HOME, still nothing else.
        stage.sandbox = SandboxMode::Off;
        let env = stage_env(&stage, Path::new("/ws/7"), context, engine.into_iter());
        assert!(env.contains(&("HOME".to_owned(), "/root".to_owned())));
        assert!(
            !env.iter()
                .any(|(k, _)| k == "OPENAI_API_KEY" || k == "IDEAMILL_BEAT_FD")
        );
    }

    #[test]
    fn counts_a_users_tasks() {
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        assert!(tasks_of(me) >= 1);
    }

    #[test]
    fn limits_name_what_was_reached() {
        let limits = Limits::default();
        let dir = tempfile::tempdir().unwrap();
        let hits = |oom_kills, fork_refusals| LimitHits {
            oom_kills,
            fork_refusals,
        };
        let reached = |hits, signal| limit_reached(&limits, hits, signal, dir.path());
        assert_eq!(
            reached(hits(1, 0), None).unwrap(),
            "memory limit 2 GiB reached"
        );
        assert_eq!(
            reached(hits(0, 4), None).unwrap(),
            "process limit 256 reached"
        );
        assert_eq!(
            reached(hits(0, 0), Some(libc::SIGXCPU)).unwrap(),
            "CPU time limit 10m reached"
        );
        assert_eq!(reached(hits(0, 0), None), None);
        let big = std::fs::File::create(dir.path().join("sparse.bin")).unwrap();
        big.set_len(3 << 30).unwrap();
        assert_eq!(
            reached(hits(0, 0), None).unwrap(),
            "file size limit 512 MiB reached (sparse.bin)"
        );
    }
}
