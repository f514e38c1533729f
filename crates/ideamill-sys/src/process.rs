//! Processes on this machine: whether one is alive, a pidfd to learn when it
//! exits, how much memory this process holds, what `/proc/<pid>/stat` says
//! of a process, and the calls of a child subreaper (become one, reap a
//! zombie, kill a process).
//!
//! "Alive" has one meaning everywhere (engine recovery, `doctor`, `status`,
//! `store copy`, status-file cleanup): the process exists **and is not a
//! zombie**. A zombie has exited and only waits for its parent to reap it: it
//! runs nothing, so its leases can be taken back and its status file is a
//! dead engine's.

use std::io;
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, test_kill_process};

/// Whether process `pid` on this machine runs: it exists (signal 0 reaches
/// it, or is refused for lack of permission, which proves it exists) and is
/// not a zombie. Pid 0 and pids beyond `i32` are never alive. Where `/proc`
/// cannot be read, an existing process counts as alive.
pub fn pid_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    match test_kill_process(p) {
        Ok(()) | Err(Errno::PERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !is_zombie(&stat),
        Err(_) => true,
    }
}

/// Whether a `/proc/<pid>/stat` line is a zombie's: the state is the first
/// field after the command name, which is in parentheses and may itself
/// contain spaces and parentheses.
fn is_zombie(stat: &str) -> bool {
    stat.rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

/// A pidfd for process `pid` (Linux 5.3+): readable once the process exits,
/// without reaping it. Fails on older kernels; callers fall back to polling.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// This process's soft limit on open files (`RLIMIT_NOFILE`); `None` if
/// unlimited.
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Resident memory of this process, from /proc/self/statm (0 if unknown).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * rustix::param::page_size() as u64)
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): a
/// descendant orphaned by its parent is reparented to us rather than to
/// init, so that we can find it, kill it and reap it.
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// Reaps child `pid` if it has exited (`waitpid(pid, WNOHANG)`): true if it
/// was reaped now. Only for children nobody else waits for: reaping one
/// steals its exit status from whoever does.
pub fn reap_exited(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    matches!(
        rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG),
        Ok(Some(_))
    )
}

/// Sends SIGKILL to process `pid` (never a group, never pid 0 or 1); false
/// when it is already gone or not ours to signal.
pub fn kill(pid: u32) -> bool {
    match i32::try_from(pid)
        .ok()
        .filter(|&p| p > 1)
        .and_then(Pid::from_raw)
    {
        Some(p) => rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok(),
        None => false,
    }
}

/// This process's id.
pub fn own_pid() -> u32 {
    rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs()
}

/// This process's session id, as `/proc/<pid>/stat` shows it, so that it
/// compares with [`ProcStat::session`]: 0 when the session's leader is
/// outside our PID namespace (a container whose init did not call
/// `setsid`), where `getsid` answers 0 too.
pub fn own_session() -> u32 {
    read_stat(own_pid()).map_or(0, |s| s.session)
}

/// Clock ticks per second: the unit of [`ProcStat`]'s CPU times.
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// What `/proc/<pid>/stat` says of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Its id.
    pub pid: u32,
    /// Its command name (at most 15 bytes, as the kernel keeps it).
    pub comm: String,
    /// `R` running, `S` sleeping, `D` in uninterruptible wait, `Z` zombie,
    /// `T` stopped, ...
    pub state: char,
    /// Its parent's id.
    pub ppid: u32,
    /// Its process group.
    pub pgrp: u32,
    /// Its session.
    pub session: u32,
    /// CPU time in user mode, in clock ticks.
    pub utime: u64,
    /// CPU time in kernel mode, in clock ticks.
    pub stime: u64,
    /// CPU time of its reaped children, user and kernel, in clock ticks.
    pub children_time: u64,
    /// Threads.
    pub threads: u64,
    /// When it started, in clock ticks after boot: with the pid, it names
    /// one process even after the pid is reused.
    pub start_time: u64,
}

impl ProcStat {
    /// Its own CPU time and its reaped children's, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime + self.children_time
    }
}

/// Parses a `/proc/<pid>/stat` line; `None` if it is not one. The command
/// name is in parentheses and may itself hold spaces and parentheses, so
/// the fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let comm = line.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field n is rest[n - 3].
    let field = |n: usize| rest.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let id = |n: usize| field(n).and_then(|v| u32::try_from(v).ok());
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: id(4)?,
        pgrp: id(5)?,
        session: id(6)?,
        utime: field(14)?,
        stime: field(15)?,
        children_time: field(16)?.saturating_add(field(17)?),
        threads: field(20)?,
        start_time: field(22)?,
    })
}

/// `/proc/<pid>/stat`, parsed; `None` when the process is gone.
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process on this machine (as this process's PID namespace sees it).
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .collect()
}

/// This process's children, from `/proc/self/task/*/children` (each thread
/// lists the children it forked, or adopted as a subreaper).
pub fn own_children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{WaitId, WaitIdOptions, waitid};

    #[test]
    fn stat_lines() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    7 3 2 1 20 0 3 0 98765 1000 50 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                comm: "a (b) c".to_owned(),
                state: 'S',
                ppid: 17,
                pgrp: 4242,
                session: 4242,
                utime: 7,
                stime: 3,
                children_time: 3,
                threads: 3,
                start_time: 98765,
            }
        );
        assert_eq!(stat.cpu_ticks(), 13);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0"), None);
        // The process's state is its main thread's, which may be waiting
        // for this test's thread.
        let me = read_stat(own_pid()).unwrap();
        assert_eq!(me.pid, own_pid());
        assert!("RS".contains(me.state), "{me:?}");
        assert_eq!(me.session, own_session());
        assert!(all_processes().iter().any(|p| p.pid == own_pid()));
    }

    /// In a container whose init did not call `setsid`, the session's
    /// leader is outside our PID namespace and the kernel shows our session
    /// as 0 (CI's runner is such a place; `getsid` answered 0 there and
    /// rustix panicked on it). The test reruns itself in a new PID namespace
    /// with `unshare`, which needs root or user namespaces: a machine with
    /// neither says so and passes.
    #[test]
    fn own_session_is_zero_when_the_leader_is_outside_our_pid_namespace() {
        const INSIDE: &str = "IDEAMILL_TEST_INSIDE_PID_NAMESPACE";
        if std::env::var_os(INSIDE).is_some() {
            assert_eq!(own_session(), 0);
            assert_eq!(read_stat(own_pid()).unwrap().session, own_session());
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let name =
            "process::tests::own_session_is_zero_when_the_leader_is_outside_our_pid_namespace";
        let run = |userns: bool| {
            let mut cmd = std::process::Command::new("unshare");
            if userns {
                cmd.args(["--user", "--map-root-user"]);
            }
            cmd.args(["--pid", "--fork", "--mount-proc"])
                .arg(&exe)
                .args(["--exact", name, "--test-threads=1"])
                .env(INSIDE, "1")
                .output()
        };
        let out = match run(false) {
            Ok(out) if out.status.success() => out,
            _ => match run(true) {
                Ok(out) => out,
                Err(e) => {
                    eprintln!("SKIPPED: no unshare here ({e})");
                    return;
                }
            },
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && text.contains("unshare failed") {
            eprintln!("SKIPPED: no PID namespace for this user here: {text}");
            return;
        }
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("1 passed"),
            "the test did not run inside: {text}"
        );
    }

    #[test]
    fn a_subreaper_adopts_and_reaps_an_orphan() {
        become_subreaper().unwrap();
        // sh starts a grandchild and exits at once: the grandchild is ours.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        let orphan: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(read_stat(orphan).unwrap().ppid, own_pid());
        assert!(own_children().contains(&orphan));
        assert!(!reap_exited(orphan), "it still runs");
        assert!(kill(orphan));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !reap_exited(orphan) {
            assert!(std::time::Instant::now() < deadline, "never reaped");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(read_stat(orphan).is_none(), "reaped, gone");
        assert!(!kill(1) && !kill(0), "never init, never a group");
    }

    #[test]
    fn zombie_stat_lines() {
        let check = |line: &str, expected: bool| assert_eq!(is_zombie(line), expected, "{line}");
        check("42 (ideamill) S 1 42 42 0", false);
        check("42 (ideamill) Z 1 42 42 0", true);
        // A name with spaces and parentheses is not misread.
        check("42 (a) Z (b) R 1 42", false);
        check("42 (x) Z) R 1", false);
        check("42 (sh) Z", true);
    }

    #[test]
    fn a_running_child_is_alive_and_a_zombie_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(pid_alive(pid));
        let pidfd = pidfd_open(pid).unwrap();
        child.kill().unwrap();
        // Wait for its exit without reaping it: it stays a zombie.
        waitid(
            WaitId::PidFd(std::os::fd::AsFd::as_fd(&pidfd)),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        )
        .unwrap();
        assert!(std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| is_zombie(&s)));
        assert!(!pid_alive(pid), "a zombie counts as dead");
        child.wait().unwrap();
        assert!(!pid_alive(pid), "a reaped process is dead");
    }

    #[test]
    fn the_open_files_limit_is_the_kernels() {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let soft = line.split_whitespace().nth(3).unwrap();
        assert_eq!(
            open_files_limit().map_or("unlimited".to_string(), |n| n.to_string()),
            soft
        );
    }

    #[test]
    fn rss_is_measured() {
        assert!(rss_bytes() > 0);
    }
}
