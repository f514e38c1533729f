//! A control group per confined job: its memory and process limits, whether
//! it hit them, and killing whatever is left of it.
//!
//! Both cgroup versions are supported, because hosts still mount either:
//! v1 (one hierarchy per controller: `memory`, `pids`) or v2 (one unified
//! tree). A job's group is created under the engine's own group, so the
//! host's limits on the engine still bound its jobs. Where neither works
//! (not root, nothing delegated), [`CgroupHost::detect`] says why and the
//! sandbox falls back to per-process rlimits.

use std::fs;
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
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let host = match (
            v1_group(&mountinfo, &own, "memory"),
            v1_group(&mountinfo, &own, "pids"),
        ) {
            (Some(memory), Some(pids)) => CgroupHost::V1 { memory, pids },
            _ => v2_parent(&mountinfo, &own)?,
        };
        let probe = host
            .create("probe", 64 << 20, 16)
            .map_err(|e| format!("cannot create a control group ({host}): {e}"))?;
        probe.remove();
        Ok(host)
    }

    /// Makes the group of one job with these limits.
    pub fn create(&self, tag: &str, memory: u64, processes: u32) -> io::Result<JobCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!(
            "ideamill-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut group = JobCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            version: self.version(),
        };
        // On an error half-way, dropping `group` removes what was made.
        match self {
            CgroupHost::V1 {
                memory: mem_root,
                pids: pids_root,
            } => {
                let mem = make_dir(mem_root.join(&name), &mut group)?;
                write_value(&mem.join("memory.limit_in_bytes"), memory)?;
                // With swap accounting, swap counts too; without it, the
                // file is missing and memory alone is limited.
                let _ = write_value(&mem.join("memory.memsw.limit_in_bytes"), memory);
                let pids = make_dir(pids_root.join(&name), &mut group)?;
                write_value(&pids.join("pids.max"), u64::from(processes))?;
            }
            CgroupHost::V2 { parent } => {
                let dir = make_dir(parent.join(&name), &mut group)?;
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

/// The group of one job; removed (its processes killed) when dropped.
#[derive(Debug)]
pub struct JobCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each hierarchy, open for writing, so that the child
    /// joins by writing "0" between fork and exec (no allocation there).
    procs: Vec<OwnedFd>,
    version: u8,
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

fn make_dir(dir: PathBuf, group: &mut JobCgroup) -> io::Result<PathBuf> {
    fs::create_dir(&dir)?;
    group.dirs.push(dir.clone());
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

/// A v2 group whose children get memory and pids limits: the engine's own
/// group when its subtree has them, else after moving the engine into a
/// leaf of its own (a group with processes cannot hand controllers down).
fn v2_parent(mountinfo: &str, own: &str) -> Result<CgroupHost, String> {
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
    let group = join_cgroup(&point, &root, path);
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
    fn reads_counters() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        fs::write(&file, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(counter(&file, "oom_kill"), Some(2));
        assert_eq!(counter(&file, "max"), Some(3));
        assert_eq!(counter(&file, "absent"), None);
    }
}
