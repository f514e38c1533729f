//! A control group per confined job: its memory and process limits, whether
//! it hit them, and killing whatever is left of it.
//!
//! Both cgroup versions are supported, because hosts still mount either:
//! v1 (one hierarchy per controller: `memory`, `pids`) or v2 (one unified
//! tree). A job's group is created under the engine's own group, so the
//! host's limits on the engine still bound its jobs. Where neither works
//! (not root, nothing delegated), [`CgroupHost::detect`] says why and the
//! sandbox falls back to per-process rlimits.
//!
//! A group outlives an engine that is SIGKILLed (its `Drop` never runs), and
//! so may a process in it: an engine holds an `flock` on each of its groups,
//! which the kernel drops with the engine, so the next engine finds the
//! groups no one holds and removes them with what is left in them
//! ([`CgroupHost::sweep_abandoned`]). Creating a group (under a shared lock
//! on its parent) and the sweep's look for free ones (under an exclusive
//! one) exclude each other, so a group being made is never taken for one
//! left behind.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where job groups can be made on this host.
#[derive(Debug, Clone)]
pub enum CgroupHost {
    /// v1: the engine's group in the `memory` and in the `pids` hierarchy.
    V1 {
        /// The engine's group in the `memory` hierarchy.
        memory: PathBuf,
        /// The engine's group in the `pids` hierarchy.
        pids: PathBuf,
    },
    /// v2: a group whose subtree has the `memory` and `pids` controllers.
    V2 {
        /// The group under which job groups are made.
        parent: PathBuf,
    },
}

impl CgroupHost {
    /// Finds a place for job groups and proves it by making and removing
    /// one; the error says what is missing.
    pub fn detect() -> Result<CgroupHost, String> {
        let host = Self::locate(true)?;
        let probe = host
            .create("probe", 64 << 20, 16)
            .map_err(|e| format!("cannot create a control group ({host}): {e}"))?;
        probe.remove();
        Ok(host)
    }

    /// Where this process's job groups go. With `prepare`, on v2, moves the
    /// engine into a leaf if that is what lets its group hand controllers
    /// down; without, only reads.
    fn locate(prepare: bool) -> Result<CgroupHost, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        match (
            v1_group(&mountinfo, &own, "memory"),
            v1_group(&mountinfo, &own, "pids"),
        ) {
            (Some(memory), Some(pids)) => Ok(CgroupHost::V1 { memory, pids }),
            _ if prepare => v2_parent(&mountinfo, &own),
            _ => Ok(CgroupHost::V2 {
                parent: v2_own_group(&mountinfo, &own)?,
            }),
        }
    }

    /// Every job group's folder, by name (on v1, one in each hierarchy).
    fn job_dirs(&self) -> io::Result<Vec<(String, PathBuf)>> {
        let mut found = Vec::new();
        for parent in self.parents() {
            for entry in fs::read_dir(parent)?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_job_group(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push((name, entry.path()));
                }
            }
        }
        Ok(found)
    }

    /// Makes the group of one job with these limits.
    pub fn create(&self, tag: &str, memory: u64, processes: u32) -> io::Result<JobCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let _making = ParentLocks::take(self, libc::LOCK_SH)?;
        let mut group = JobCgroup::empty(self.version());
        // Engines in other PID namespaces may share a pid, and so a name:
        // the next number then.
        let name = loop {
            let name = format!(
                "ideamill-{}-{}-{tag}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            match make_dir(self.parents()[0].join(&name), &mut group) {
                Ok(_) => break name,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        // On an error half-way, dropping `group` removes what was made.
        match self {
            CgroupHost::V1 {
                memory: mem_root,
                pids: pids_root,
            } => {
                let mem = mem_root.join(&name);
                write_value(&mem.join("memory.limit_in_bytes"), memory)?;
                // With swap accounting, swap counts too; without it, the
                // file is missing and memory alone is limited.
                let _ = write_value(&mem.join("memory.memsw.limit_in_bytes"), memory);
                let pids = make_dir(pids_root.join(&name), &mut group)?;
                write_value(&pids.join("pids.max"), u64::from(processes))?;
            }
            CgroupHost::V2 { parent } => {
                let dir = parent.join(&name);
                write_value(&dir.join("memory.max"), memory)?;
                let _ = write_value(&dir.join("memory.swap.max"), 0);
                write_value(&dir.join("pids.max"), u64::from(processes))?;
            }
        }
        for dir in group.dirs.clone() {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            group.procs.push(OwnedFd::from(file));
        }
        Ok(group)
    }

    /// Removes the job groups that no live engine holds (their engine was
    /// killed), and kills what is still in them. Blocking (up to about a
    /// second per group that holds processes).
    pub fn sweep_abandoned(&self) -> io::Result<Abandoned> {
        // By name: on v1 a group has a folder in each hierarchy.
        let mut found: BTreeMap<String, JobCgroup> = BTreeMap::new();
        {
            let _looking = ParentLocks::take(self, libc::LOCK_EX)?;
            for (name, dir) in self.job_dirs()? {
                if made_by_a_live_engine(&name) {
                    continue;
                }
                let Ok(hold) = File::open(&dir) else {
                    continue;
                };
                // Free, and still there: its owner, which removes a group
                // before it lets go, is dead.
                if try_lock(&hold, libc::LOCK_EX | libc::LOCK_NB).is_ok() && dir.exists() {
                    let group = found
                        .entry(name)
                        .or_insert_with(|| JobCgroup::empty(self.version()));
                    group.dirs.push(dir);
                    group.holds.push(hold);
                }
            }
        }
        let mut abandoned = Abandoned::default();
        for (name, group) in found {
            abandoned.processes += group.processes().len();
            group.remove();
            abandoned.groups.push(name);
        }
        Ok(abandoned)
    }

    /// The folders job groups are made in: one per hierarchy.
    fn parents(&self) -> Vec<&Path> {
        match self {
            CgroupHost::V1 { memory, pids } => vec![memory, pids],
            CgroupHost::V2 { parent } => vec![parent],
        }
    }

    fn version(&self) -> u8 {
        match self {
            CgroupHost::V1 { .. } => 1,
            CgroupHost::V2 { .. } => 2,
        }
    }
}

impl std::fmt::Display for CgroupHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupHost::V1 { memory, pids } => write!(
                f,
                "cgroup v1, memory under {}, pids under {}",
                memory.display(),
                pids.display()
            ),
            CgroupHost::V2 { parent } => write!(f, "cgroup v2 under {}", parent.display()),
        }
    }
}

/// What [`CgroupHost::sweep_abandoned`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Abandoned {
    /// The groups' names (`ideamill-<engine pid>-<n>-<job>`).
    pub groups: Vec<String>,
    /// Processes that were still in them, now killed.
    pub processes: usize,
}

/// The group of one job; removed (its processes killed) when dropped.
#[derive(Debug)]
pub struct JobCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each hierarchy, open for writing, so that the child
    /// joins by writing "0" between fork and exec (no allocation there).
    procs: Vec<OwnedFd>,
    /// Each folder, open and `flock`ed: held while the group is its engine's.
    holds: Vec<File>,
    version: u8,
}

/// Shared or exclusive `flock`s on the folders groups are made in, so that a
/// sweep never sees a group between its `mkdir` and its owner's lock.
struct ParentLocks(#[allow(dead_code)] Vec<File>);

impl ParentLocks {
    fn take(host: &CgroupHost, how: i32) -> io::Result<ParentLocks> {
        let mut held = Vec::new();
        for parent in host.parents() {
            let dir = File::open(parent)?;
            try_lock(&dir, how)?;
            held.push(dir);
        }
        Ok(ParentLocks(held))
    }
}

fn try_lock(file: &File, how: i32) -> io::Result<()> {
    // SAFETY: flock(2) on an fd this function borrows.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ideamill-<pid>-<n>-<tag>`: a job's (or a probe's) group, never the
/// engines' own leaf (`ideamill-engine`).
fn is_job_group(name: &str) -> bool {
    let mut parts = name.splitn(4, '-');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    parts.next() == Some("ideamill")
        && digits(parts.next())
        && digits(parts.next())
        && parts.next().is_some_and(|t| !t.is_empty())
}

/// What a job's group saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LimitHits {
    /// Processes the kernel killed for the memory limit.
    pub oom_kills: u64,
    /// Forks refused for the process limit.
    pub fork_refusals: u64,
}

impl JobCgroup {
    /// No folder yet: each is added as it is made (or found by a sweep).
    fn empty(version: u8) -> JobCgroup {
        JobCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            holds: Vec::new(),
            version,
        }
    }

    /// The fds the child writes "0" to, to join every hierarchy.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The limits it ran into so far.
    pub fn hits(&self) -> LimitHits {
        let mut hits = LimitHits::default();
        for dir in &self.dirs {
            // v1 keeps the OOM count in memory.oom_control, v2 in memory.events.
            for file in ["memory.oom_control", "memory.events"] {
                if let Some(n) = counter(&dir.join(file), "oom_kill") {
                    hits.oom_kills = hits.oom_kills.max(n);
                }
            }
            if let Some(n) = counter(&dir.join("pids.events"), "max") {
                hits.fork_refusals = hits.fork_refusals.max(n);
            }
        }
        hits
    }

    /// The processes in it now.
    pub fn processes(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process in it, until none is left or a second passes.
    pub fn kill_all(&self) {
        if self.version == 2 {
            for dir in &self.dirs {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let pids = self.processes();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in pids.into_iter().filter(|&pid| pid > 1) {
                // SAFETY: kill(2) on a pid read from the job's own group.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left and removes the group. Blocking (up to about a
    /// second): call it from the blocking pool.
    pub fn remove(mut self) {
        self.remove_now();
    }

    fn remove_now(&mut self) {
        self.procs.clear();
        if self.dirs.is_empty() {
            return;
        }
        // Held to the end: a folder that cannot be removed is then left for
        // a later sweep.
        let _holds = std::mem::take(&mut self.holds);
        self.kill_all();
        let deadline = Instant::now() + Duration::from_secs(1);
        for dir in std::mem::take(&mut self.dirs) {
            // A group is removable once its last process is reaped.
            while let Err(e) = fs::remove_dir(&dir) {
                if e.kind() == io::ErrorKind::NotFound || Instant::now() > deadline {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(group = %dir.display(), error = %e, "A job's control group could not be removed.");
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        self.remove_now();
    }
}

/// Makes a group's folder in one hierarchy and holds it.
fn make_dir(dir: PathBuf, group: &mut JobCgroup) -> io::Result<PathBuf> {
    fs::create_dir(&dir)?;
    group.dirs.push(dir.clone());
    let hold = File::open(&dir)?;
    try_lock(&hold, libc::LOCK_EX | libc::LOCK_NB)?;
    group.holds.push(hold);
    Ok(dir)
}

fn write_value(file: &Path, value: u64) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(file)?;
    f.write_all(value.to_string().as_bytes())
}

/// `key N` from a flat-keyed cgroup file.
fn counter(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The engine's group in the v1 hierarchy of `controller`, if mounted.
fn v1_group(mountinfo: &str, own: &str, controller: &str) -> Option<PathBuf> {
    let mount = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
        let point = left.split(' ').nth(4)?;
        let root = left.split(' ').nth(3)?;
        (fstype == "cgroup" && options.split(',').any(|o| o == controller))
            .then(|| (PathBuf::from(point), root.to_owned()))
    })?;
    let path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })?;
    Some(join_cgroup(&mount.0, &mount.1, &path))
}

/// The job groups (`ideamill-<pid>-<n>-<tag>`) made under this process's
/// own groups, where an engine started from here makes them: `(name,
/// folder)`, one per hierarchy. Reads only; for audits.
pub fn job_groups_here() -> Vec<(String, PathBuf)> {
    CgroupHost::locate(false)
        .ok()
        .and_then(|host| host.job_dirs().ok())
        .unwrap_or_default()
}

/// Whether the pid a group's name carries is an engine's (a process named
/// as this one is) that still runs. Its lock says more, but a version of
/// the engine from before the locks holds none: its groups are left alone.
fn made_by_a_live_engine(name: &str) -> bool {
    let comm = |pid: &str| fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    engine_of(name).is_some_and(|pid| {
        pid != std::process::id()
            && comm(&pid.to_string()).is_some_and(|theirs| Some(theirs) == comm("self"))
    })
}

/// The pid of the engine that made a job group, from its name.
pub fn engine_of(name: &str) -> Option<u32> {
    is_job_group(name)
        .then(|| name.split('-').nth(1)?.parse().ok())
        .flatten()
}

/// This process's group in the cgroup v2 tree.
fn v2_own_group(mountinfo: &str, own: &str) -> Result<PathBuf, String> {
    let (point, root) = mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mut fields = left.split(' ');
            let root = fields.nth(3)?;
            let point = fields.next()?;
            (fstype == "cgroup2").then(|| (PathBuf::from(point), root.to_owned()))
        })
        .ok_or("no cgroup v1 memory and pids hierarchies and no cgroup v2 mount")?;
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("this process is in no cgroup v2 group")?;
    Ok(join_cgroup(&point, &root, path))
}

/// A v2 group whose children get memory and pids limits: the engine's own
/// group when its subtree has them, else after moving the engine into a
/// leaf of its own (a group with processes cannot hand controllers down).
fn v2_parent(mountinfo: &str, own: &str) -> Result<CgroupHost, String> {
    let group = v2_own_group(mountinfo, own)?;
    let controllers = fs::read_to_string(group.join("cgroup.controllers"))
        .map_err(|e| format!("cannot read {}/cgroup.controllers: {e}", group.display()))?;
    for needed in ["memory", "pids"] {
        if !controllers.split_whitespace().any(|c| c == needed) {
            return Err(format!(
                "the {needed} controller is not available to {} (not delegated)",
                group.display()
            ));
        }
    }
    let enable = |dir: &Path| fs::write(dir.join("cgroup.subtree_control"), "+memory +pids");
    if enable(&group).is_err() {
        let leaf = group.join("ideamill-engine");
        match fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
        }
        fs::write(leaf.join("cgroup.procs"), "0")
            .map_err(|e| format!("cannot move the engine into {}: {e}", leaf.display()))?;
        enable(&group).map_err(|e| {
            format!(
                "cannot enable memory and pids for the children of {}: {e}",
                group.display()
            )
        })?;
    }
    Ok(CgroupHost::V2 { parent: group })
}

/// A group's folder: the mount point plus the group's path below the
/// mount's own root (in a container the mount may show a subtree).
fn join_cgroup(point: &Path, mount_root: &str, path: &str) -> PathBuf {
    let below = path
        .strip_prefix(mount_root)
        .filter(|_| mount_root != "/")
        .unwrap_or(path);
    point.join(below.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_groups_in_mountinfo() {
        let mountinfo = "35 30 0:31 / /sys/fs/cgroup/memory rw,relatime shared:1 - cgroup cgroup rw,memory\n\
                         36 30 0:32 / /sys/fs/cgroup/pids rw,relatime shared:2 - cgroup cgroup rw,pids\n";
        let own = "8:pids:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(
            v1_group(mountinfo, own, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(
            v1_group(mountinfo, own, "pids"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/"))
        );
        assert_eq!(v1_group(mountinfo, own, "cpu"), None);
    }

    #[test]
    fn tells_job_groups_from_other_groups() {
        for job in ["ideamill-123-4-job56", "ideamill-1-1-probe"] {
            assert!(is_job_group(job), "{job}");
        }
        for other in [
            "ideamill-engine",
            "ideamill-123-job5",
            "ideamill-12a-4-job5",
            "ideamill-123-4-",
            "ideamill--4-job5",
            "other-123-4-job5",
            "system.slice",
        ] {
            assert!(!is_job_group(other), "{other}");
        }
        assert_eq!(engine_of("ideamill-123-4-job56"), Some(123));
        assert_eq!(engine_of("ideamill-engine"), None);
    }

    /// Engines start (and sweep) while others make groups for their jobs:
    /// a sweep must never take a group being made, or one still held.
    #[test]
    fn a_sweep_never_takes_a_group_being_made_or_held() {
        let host = match CgroupHost::detect() {
            Ok(host) => host,
            Err(why) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "no control groups in CI: {why}"
                );
                eprintln!("skipped: {why}");
                return;
            }
        };
        let ours = format!("ideamill-{}-", std::process::id());
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let sweeper = s.spawn(|| {
                let mut sweeps = 0;
                while !done.load(Ordering::Relaxed) {
                    let swept = host.sweep_abandoned().expect("a sweep");
                    let taken: Vec<_> = swept
                        .groups
                        .iter()
                        .filter(|g| g.starts_with(&ours))
                        .collect();
                    assert!(taken.is_empty(), "a sweep took live groups: {taken:?}");
                    sweeps += 1;
                }
                sweeps
            });
            for _ in 0..300 {
                let group = host.create("job0", 64 << 20, 16).expect("a group");
                assert!(group.dirs.iter().all(|d| d.exists()), "{:?}", group.dirs);
                group.remove();
            }
            done.store(true, Ordering::Relaxed);
            assert!(sweeper.join().expect("the sweeper") > 0);
        });
    }

    #[test]
    fn reads_counters() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        fs::write(&file, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(counter(&file, "oom_kill"), Some(2));
        assert_eq!(counter(&file, "max"), Some(3));
        assert_eq!(counter(&file, "absent"), None);
    }
}
