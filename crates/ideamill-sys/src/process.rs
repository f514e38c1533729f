//! Processes on this machine: whether one is alive, a pidfd to learn when it
//! exits, and how much memory this process holds.
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{WaitId, WaitIdOptions, waitid};

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
