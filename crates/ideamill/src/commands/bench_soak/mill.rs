//! The soak's mill: a scratch project (an `llm` stage against the flaky
//! provider, a command stage, a QA gate that rejects a share of rounds),
//! its store and its `ideamill run` processes. The data folder sits on a
//! small tmpfs of its own when one can be mounted (the disk-full chaos
//! fills it). On PostgreSQL the store is a throwaway cluster the soak may
//! restart, or a scratch database on a server given with `--store`.
//!
//! Each `ideamill run` (supervisor and engine) is a child of this process;
//! one that exits is started again, as systemd's `Restart=always` would,
//! once the chaos driver's pause (if it killed it) is over.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use ideamill_core::Config;

// The tests' throwaway cluster, shared by path as the tests share it (it
// allows the dead code of the TLS helpers only the tests use).
#[path = "../../../../ideamill-store/tests/conformance/cluster.rs"]
mod cluster;
pub use cluster::Cluster;

/// Where the store is.
pub enum Backend {
    /// SQLite in the data folder.
    Sqlite,
    /// A cluster of the soak's own, which it may restart.
    OwnCluster(Cluster),
    /// A scratch database on a server it must not restart.
    Server(ideamill_store::postgres::ScratchDatabase),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::OwnCluster(_) => "PostgreSQL (own cluster)",
            Backend::Server(_) => "PostgreSQL (given server)",
        }
    }

    fn url(&self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::OwnCluster(c) => Some(c.url("postgres")),
            Backend::Server(db) => Some(db.url().to_string()),
        }
    }
}

/// A small tmpfs for the data folder, or a plain folder when none can be
/// mounted (then the disk cannot be filled).
pub struct DataDisk {
    path: PathBuf,
    pub mounted: bool,
}

impl DataDisk {
    fn mount(path: PathBuf, size_mib: u64) -> anyhow::Result<(DataDisk, Option<String>)> {
        std::fs::create_dir_all(&path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .stderr(Stdio::piped())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(e.to_string()),
        };
        let mounted = why.is_none();
        Ok((DataDisk { path, mounted }, why))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fill the disk to its last byte.
    pub fn fill(&self) -> std::io::Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.ballast())?;
        let chunk = vec![0u8; 256 * 1024];
        let mut written = 0u64;
        for size in [chunk.len(), 4096, 512, 1] {
            while f.write_all(&chunk[..size]).is_ok() {
                written += size as u64;
            }
        }
        Ok(written)
    }

    pub fn free(&self) {
        let _ = std::fs::remove_file(self.ballast());
    }

    fn ballast(&self) -> PathBuf {
        self.path.join("ballast")
    }
}

impl Drop for DataDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// One `ideamill run` (a supervisor and its engine), started again when it
/// exits.
pub struct Run {
    pub name: String,
    args: Vec<&'static str>,
    child: Option<Child>,
    /// Not before this: the chaos driver's pause after killing it.
    down_until: Option<Instant>,
    /// Started at least once.
    started: bool,
    /// Starts after the first.
    pub restarts: u32,
    /// Exits nobody asked for, with their status.
    pub unexpected_exits: Vec<String>,
}

impl Run {
    pub fn supervisor_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Its engine: the child of its supervisor that runs this same binary
    /// (whatever it is named: the supervisor starts the engine from its
    /// own executable, as this soak starts the supervisor) in a process
    /// group of its own (the supervisor's short-lived event helper, the
    /// same binary too, stays in the supervisor's group).
    pub fn engine_pid(&self) -> Option<u32> {
        let supervisor = self.supervisor_pid()?;
        let ours = own_comm();
        ideamill_sys::process::all_processes()
            .into_iter()
            .find(|p| p.ppid == supervisor && p.comm == ours && p.pgrp == p.pid)
            .map(|p| p.pid)
    }
}

/// This process's name as the kernel keeps it (`/proc/self/comm`: the
/// executable's file name, cut to 15 bytes), which its children share.
fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "ideamill".to_owned())
}

pub struct Mill {
    // Dropped in this order: the tmpfs is unmounted before its folder goes.
    pub disk: DataDisk,
    pub root: tempfile::TempDir,
    pub config: Config,
    pub backend: Backend,
    /// `http://127.0.0.1:PORT`, served by the first run.
    pub api: String,
    pub runs: Vec<Run>,
    /// Why the data disk is a plain folder, if it is.
    pub no_tmpfs: Option<String>,
}

/// The mill's timings, which the checks derive their margins from.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
pub const LEASE: Duration = Duration::from_secs(10);
/// Gate: a round is rejected when (item id × 7 + round) mod 10 falls under
/// this: 3 rejects about 30% of rounds, and the items whose first round
/// lands on 0 (about 10%) are rejected in all three rounds and fail.
const REJECT_TENTHS: u32 = 3;

impl Mill {
    /// Make the project and its store; nothing runs yet.
    pub fn create(backend: Backend, workers: u32, provider_url: &str) -> anyhow::Result<Mill> {
        let root = tempfile::Builder::new()
            .prefix("ideamill-soak-")
            .tempdir()?;
        let (disk, no_tmpfs) = DataDisk::mount(root.path().join("disk"), 256)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store = backend
            .url()
            .map(|u| format!("[store]\nurl = \"{u}\"\n"))
            .unwrap_or_default();
        let build = "cat >/dev/null; echo \"built $IDEAMILL_ITEM_ID round $IDEAMILL_ROUND\" > build.txt; cat build.txt";
        let qa = format!(
            "cat >/dev/null; h=$(( (IDEAMILL_ITEM_ID * 7 + IDEAMILL_ROUND) % 10 )); \
             if [ $h -lt {REJECT_TENTHS} ]; then echo \"round $IDEAMILL_ROUND: the plan misses a step\"; exit 1; fi; echo passed"
        );
        let text = format!(
            "{store}[engine]\ndata_dir = \"{data}\"\nworkspace = \"{work}\"\nlease = \"{lease}s\"\n\
             heartbeat = \"2s\"\nshutdown_grace = \"5s\"\n\
             [health]\nstall_after = \"{stall}s\"\nlisten = \"127.0.0.1:{port}\"\nmin_free_disk_mb = 1\n\
             max_restarts = 10\nrestart_window = \"60s\"\n\
             [inbox]\nmax_file_bytes = 1048576\nsettle = \"500ms\"\nrescan = \"10s\"\n\
             [providers.flaky]\nkind = \"openai\"\nbase_url = \"{provider_url}\"\nmodel = \"soak\"\n\
             stream = true\nidle_timeout = \"3s\"\nconnect_timeout = \"2s\"\nmax_concurrency = 4\n\
             [[stages]]\nname = \"draft\"\nkind = \"llm\"\nprovider = \"flaky\"\nprompt = \"draft.md\"\n\
             max_tokens = 256\ntimeout = \"30s\"\nmax_attempts = 8\nbackoff = \"500ms\"\nbackoff_max = \"4s\"\nconcurrency = 4\n\
             [[stages]]\nname = \"build\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", {build:?}]\n\
             timeout = \"30s\"\nmax_attempts = 5\nbackoff = \"500ms\"\nconcurrency = 4\n\
             [[stages]]\nname = \"qa\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", {qa:?}]\n\
             timeout = \"30s\"\nmax_attempts = 5\nbackoff = \"500ms\"\nconcurrency = 4\n\
             gate = {{ retry_from = \"draft\", max_rounds = 3 }}\n",
            data = disk.path().join("data").display(),
            work = disk.path().join("workspace").display(),
            lease = LEASE.as_secs(),
            stall = STALL_AFTER.as_secs(),
        );
        let path = root.path().join("ideamill.toml");
        std::fs::write(&path, &text)?;
        std::fs::write(
            root.path().join("draft.md"),
            "Plan the program for: {{ idea }}\n{% if feedback %}The QA said: {{ feedback }}{% endif %}\n",
        )?;
        let config = ideamill_core::config::parse(&text, &path)?;
        std::fs::create_dir_all(&config.engine.inbox)?;
        let runs = (0..workers.max(1))
            .map(|i| Run {
                name: if i == 0 {
                    "main".into()
                } else {
                    format!("worker{i}")
                },
                args: if i == 0 {
                    vec!["run"]
                } else {
                    vec!["run", "--role", "worker"]
                },
                child: None,
                down_until: None,
                started: false,
                restarts: 0,
                unexpected_exits: Vec::new(),
            })
            .collect();
        Ok(Mill {
            root,
            disk,
            config,
            backend,
            api: format!("http://127.0.0.1:{port}"),
            runs,
            no_tmpfs,
        })
    }

    pub fn inbox(&self) -> &Path {
        &self.config.engine.inbox
    }

    /// Start every run that is not running and not in a chaos pause; note
    /// the exits nobody asked for. Returns the names it (re)started.
    pub fn keep_running(&mut self) -> anyhow::Result<Vec<String>> {
        let root = self.root.path().to_path_buf();
        let mut started = Vec::new();
        for run in &mut self.runs {
            if let Some(child) = &mut run.child
                && let Some(status) = child.try_wait()?
            {
                run.child = None;
                if run.down_until.is_none() {
                    run.unexpected_exits.push(status.to_string());
                }
            }
            if run.child.is_some() || run.down_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            run.down_until = None;
            run.child = Some(spawn(&root, &run.name, &run.args)?);
            if run.started {
                run.restarts += 1;
                started.push(run.name.clone());
            }
            run.started = true;
        }
        Ok(started)
    }

    /// SIGKILL run `index`'s supervisor (its engine dies with it) and keep
    /// it down for `pause`.
    pub fn kill_run(&mut self, index: usize, pause: Duration) -> Option<u32> {
        let run = self.runs.get_mut(index)?;
        let child = run.child.as_mut()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        run.child = None;
        run.down_until = Some(Instant::now() + pause);
        Some(pid)
    }

    /// Stop every run: SIGTERM, then SIGKILL after the grace.
    pub fn stop_all(&mut self) {
        for run in &mut self.runs {
            if let Some(child) = &mut run.child {
                signal(child.id(), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for run in &mut self.runs {
            if let Some(mut child) = run.child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The files of each run's output, for the evidence.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.runs
            .iter()
            .map(|r| self.root.path().join(format!("run-{}.log", r.name)))
            .collect()
    }

    /// The PostgreSQL server's main process, when the cluster is ours.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let Backend::OwnCluster(c) = &self.backend else {
            return None;
        };
        let text = std::fs::read_to_string(c.dir().join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

fn spawn(root: &Path, name: &str, args: &[&str]) -> anyhow::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join(format!("run-{name}.log")))?;
    Command::new(std::env::current_exe().context("cannot find this program")?)
        .args(args)
        .current_dir(root)
        .env_remove("IDEAMILL_CONFIG")
        .env("IDEAMILL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start `ideamill {}`", args.join(" ")))
}

/// Send `sig` to `pid`; false when it is gone.
pub fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory preconditions; the pid is one of our
    // children or theirs, checked alive just before.
    unsafe { libc::kill(pid, sig) == 0 }
}

#[cfg(test)]
mod tests {
    /// The name the engine is looked for by is this binary's own, as the
    /// process table shows it, so a renamed binary's engine is found too.
    #[test]
    fn own_comm_is_this_process_name_in_the_process_table() {
        let me = std::process::id();
        let listed = ideamill_sys::process::all_processes()
            .into_iter()
            .find(|p| p.pid == me)
            .expect("this process is listed");
        assert_eq!(super::own_comm(), listed.comm);
        assert!(!listed.comm.is_empty());
    }
}
