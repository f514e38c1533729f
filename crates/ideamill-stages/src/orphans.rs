//! No zombies, no orphans: the engine is a child subreaper, reaps every
//! descendant that lands on it, and a job's end kills whatever of the job
//! still runs.
//!
//! # Reaping without stealing an exit status
//!
//! Tokio (and `std`) wait for the children they spawned; a blanket
//! `waitpid(-1)` would steal their exit status. The reaper reaps only a
//! zombie child of ours that is **not in our session** (a job's processes
//! are, since each job's leader starts a session of its own; the engine's
//! other children, such as the sandbox probe or `git`, stay in ours) and is
//! **not a job leader** (`run_command` waits for those itself). Leaders are
//! registered under the same lock the reaper holds while it scans, taken
//! around the spawn itself, so a leader that exits at once is never taken
//! for an orphan. A zombie in our session is reaped once it has stayed one
//! for a whole pass of the reaper (a second): the engine's own waiters
//! (`Command::output`) reap theirs at once, so such a zombie is an orphan
//! of a program the engine ran, such as the sandbox probe's `bwrap`.
//!
//! # A job's end
//!
//! A confined job runs in the sandbox's PID namespace: when `bwrap` dies,
//! the kernel kills everything in it. An unconfined job's processes that
//! left its process group, or were orphaned onto the engine, are found by
//! [`kill_leftovers`]: the leader's session and process group, their
//! descendants, every process the stall watcher saw (by pid and start
//! time, so a reused pid is never killed), and every process orphaned onto
//! the engine whose environment carries the job's mark (its item's
//! `IDEAMILL_WORKSPACE`: one item runs one job at a time), which catches a
//! process that left the session before any sample saw it. Only a process
//! that both left the session and cleared its environment before the
//! first sample escapes an unconfined job; confined ones cannot escape.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Condvar, Mutex, Once};
use std::time::Duration;

use ideamill_sys::process::{self as sys, ProcStat};

/// How often the reaper looks for zombies while the engine has children. A
/// zombie holds only a pid and a process-table slot, so a second is soon
/// enough.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// How long the reaper sleeps while the engine has no child at all. Nothing
/// can land on a subreaper without a child (an orphan is a descendant's),
/// and every spawn of ours wakes the reaper, so this is only the safety
/// net for a spawn that forgot to say so ([`children_may_land`]).
const NO_CHILDREN_NAP: Duration = Duration::from_secs(60);

/// Counts job leaders' spawns, so that a reaper that saw no children wakes
/// for the next one: an idle engine costs the reaper no wake-ups.
static SPAWNS: Mutex<u64> = Mutex::new(0);
static SPAWNED: Condvar = Condvar::new();

/// Job leaders our own code waits for: never reaped here.
static LEADERS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

static STARTED: Once = Once::new();

/// Spawns a job leader with `spawn` and registers it (its pid from
/// `pid_of`) before the reaper can look again.
pub fn spawn_leader<T>(
    spawn: impl FnOnce() -> io::Result<T>,
    pid_of: impl FnOnce(&T) -> Option<u32>,
) -> io::Result<T> {
    let mut leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    let spawned = spawn()?;
    if let Some(pid) = pid_of(&spawned) {
        leaders.insert(pid);
    }
    children_may_land();
    Ok(spawned)
}

/// A program of ours was started, so a process may land on us: the reaper,
/// asleep while the engine had no children, looks again.
pub(crate) fn children_may_land() {
    *SPAWNS.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    SPAWNED.notify_all();
}

/// Leader `pid` was reaped by its waiter (or given up on): the reaper may
/// take it from now on.
pub fn forget_leader(pid: u32) {
    LEADERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
}

/// Makes this process a child subreaper and starts the reaper thread.
/// Once per process; later calls do nothing.
pub fn start_reaper() -> io::Result<()> {
    let mut result = Ok(());
    STARTED.call_once(|| {
        result = sys::become_subreaper().and_then(|()| {
            std::thread::Builder::new()
                .name("ideamill-reaper".to_owned())
                .spawn(reap_forever)
                .map(drop)
        });
    });
    result
}

/// The reaper thread's life.
fn reap_forever() {
    loop {
        let spawns = *SPAWNS.lock().unwrap_or_else(|e| e.into_inner());
        if sys::own_children().is_empty() {
            // Until the next job's leader (counted before the look, so that
            // a spawn meanwhile is not missed), or the safety net.
            let guard = SPAWNS.lock().unwrap_or_else(|e| e.into_inner());
            let napped = SPAWNED
                .wait_timeout_while(guard, NO_CHILDREN_NAP, |n| *n == spawns)
                .is_ok_and(|(_, wait)| wait.timed_out());
            // A whole nap without a spawn or a child: nothing to reap, so
            // no pass (and no second wake-up a second later).
            if napped && sys::own_children().is_empty() {
                continue;
            }
        }
        std::thread::sleep(REAP_EVERY);
        reap_orphans();
    }
}

/// Zombie children of ours in our own session seen by the last pass, by
/// pid and start time.
static LINGERING: Mutex<BTreeSet<(u32, u64)>> = Mutex::new(BTreeSet::new());

/// Reaps every zombie child of ours that nobody waits for; how many.
///
/// Outside our session (a job's): at once, unless a leader. In our session
/// (a program the engine ran itself, such as the sandbox probe's `bwrap`,
/// may leave a process of its own that lands on us): only once it has
/// stayed a zombie for a whole pass, since whoever spawned one of our own
/// children waits for it at once, well within a second.
pub fn reap_orphans() -> usize {
    let session = sys::own_session();
    let leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    let mut lingering = LINGERING.lock().unwrap_or_else(|e| e.into_inner());
    let mut still = BTreeSet::new();
    let mut reaped = 0;
    for pid in sys::own_children() {
        if leaders.contains(&pid) {
            continue;
        }
        let Some(stat) = sys::read_stat(pid) else {
            continue;
        };
        if stat.state != 'Z' {
            continue;
        }
        let key = (pid, stat.start_time);
        let due = stat.session != session || lingering.contains(&key);
        if due && sys::reap_exited(pid) {
            reaped += 1;
        } else if !due {
            still.insert(key);
        }
    }
    *lingering = still;
    drop(lingering);
    drop(leaders);
    if reaped > 0 {
        tracing::debug!(reaped, "Reaped orphaned processes of jobs.");
    }
    reaped
}

/// Kills (SIGKILL) every process left of the job led by `leader`: its
/// session, its process group, their descendants, the processes in `seen`
/// (pid → start time), and our orphans whose environment holds `mark`
/// (`KEY=VALUE`). Repeats until none is left (a process may fork while it
/// is being killed), at most a few rounds; how many were killed. Blocking.
pub fn kill_leftovers(leader: u32, seen: &HashMap<u32, u64>, mark: Option<&str>) -> usize {
    let mut killed = 0;
    for _ in 0..8 {
        let all = sys::all_processes();
        let mut seen = seen.clone();
        if let Some(mark) = mark {
            for p in marked_orphans(&all, mark) {
                seen.insert(p.pid, p.start_time);
            }
        }
        let left = leftovers(&all, leader, &seen);
        if left.is_empty() {
            break;
        }
        for p in &left {
            if sys::kill(p.pid) {
                killed += 1;
            }
        }
    }
    if killed > 0 {
        tracing::debug!(leader, killed, "Killed processes a job left behind.");
    }
    killed
}

/// Our children outside our session whose environment holds `mark`.
fn marked_orphans<'a>(all: &'a [ProcStat], mark: &str) -> Vec<&'a ProcStat> {
    let (own, session) = (sys::own_pid(), sys::own_session());
    all.iter()
        .filter(|p| p.ppid == own && p.session != session && p.state != 'Z')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/environ", p.pid))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == mark.as_bytes()))
        })
        .collect()
}

/// The live processes of the job led by `leader` among `all` (zombies have
/// ended already and are left to their parent or the reaper).
fn leftovers(all: &[ProcStat], leader: u32, seen: &HashMap<u32, u64>) -> Vec<ProcStat> {
    let mut left = crate::stall::job_processes(all, leader);
    let by_pid: HashMap<u32, &ProcStat> = all.iter().map(|p| (p.pid, p)).collect();
    for (pid, start) in seen {
        if let Some(p) = by_pid.get(pid).filter(|p| p.start_time == *start)
            && !left.iter().any(|l| l.pid == *pid)
        {
            // It may have children of its own that are not in the tree above.
            for q in crate::stall::job_processes(all, p.pid) {
                if !left.iter().any(|l| l.pid == q.pid) {
                    left.push(q);
                }
            }
        }
    }
    let own = sys::own_pid();
    left.retain(|p| p.state != 'Z' && p.pid != own && p.pid > 1);
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, session: u32, state: char, start: u64) -> ProcStat {
        ProcStat {
            pid,
            comm: String::new(),
            state,
            ppid,
            pgrp: session,
            session,
            utime: 0,
            stime: 0,
            children_time: 0,
            threads: 1,
            start_time: start,
        }
    }

    #[test]
    fn leftovers_are_the_jobs_live_processes_only() {
        let all = [
            proc(200, 100, 200, 'Z', 1), // the leader, exited
            proc(201, 100, 200, 'S', 1), // orphaned onto us, same session
            proc(202, 100, 202, 'S', 5), // setsid'd away, seen by the watcher
            proc(203, 202, 202, 'S', 6), // its child
            proc(204, 100, 204, 'S', 9), // a reused pid the watcher saw once
            proc(205, 200, 200, 'Z', 1), // a zombie: the reaper's
            proc(300, 100, 300, 'S', 1), // another job
        ];
        let seen = HashMap::from([(202, 5), (204, 8)]);
        let mut pids: Vec<u32> = leftovers(&all, 200, &seen).iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        assert_eq!(pids, [201, 202, 203]);
    }

    #[test]
    fn a_job_leader_is_never_reaped_here() {
        start_reaper().unwrap();
        let mut child = spawn_leader(
            || {
                use std::os::unix::process::CommandExt;
                let mut command = std::process::Command::new("true");
                // SAFETY: setsid has no memory-safety preconditions.
                unsafe {
                    command.pre_exec(|| {
                        libc::setsid();
                        Ok(())
                    });
                }
                command.spawn()
            },
            |c| Some(c.id()),
        )
        .unwrap();
        // The leader is a zombie in a session of its own: an orphan's looks.
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sys::read_stat(pid).is_some_and(|s| s.state != 'Z') {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        reap_orphans();
        assert!(
            child.wait().unwrap().success(),
            "its status is its waiter's"
        );
        forget_leader(pid);
    }
}
