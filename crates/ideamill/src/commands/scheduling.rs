//! How the kernel schedules this process's threads: the engine as batch
//! work, a client that hands the engine work on one CPU. Each is set once,
//! before the runtime starts, and inherited by every thread started after.

/// The engine's threads, and the stages' processes they start, are
/// scheduled as batch work (SCHED_BATCH, the same nice level). A thread that
/// wakes another on its CPU then no longer hands it the CPU at once: a
/// store connection's thread sends its reply, the rows and its end in one
/// run, and the loop reads them in one. As ordinary threads each message
/// woke the loop, which took the CPU back and left the connection's thread
/// to be scheduled again: an idle engine's every beat and read went back
/// and forth so, most of its wake-ups (`bench health`, README). Nothing here
/// is interactive: a batch thread still gets its fair share, only its
/// wake-ups wait for the next scheduler tick when the CPU is busy. Not
/// allowed (a seccomp filter, say): the engine runs as before.
pub(crate) fn batch() {
    set_policy(libc::SCHED_BATCH);
}

/// Back to ordinary scheduling, for a client that a batch process started
/// (`bench adder`, which plays `ideamill add`).
pub(crate) fn ordinary() {
    set_policy(libc::SCHED_OTHER);
}

fn set_policy(policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, which outlives the call; pid
    // 0 is this thread, whose policy the threads it starts inherit.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        tracing::debug!(
            "Cannot set the scheduling policy to {policy} ({}); it stays as it was",
            std::io::Error::last_os_error()
        );
    }
}

/// Keep a client that hands the engine work (`add`, `retry`, `cancel`) on
/// the CPU it started on. Its runtime's thread and its SQLite connection's
/// thread take turns (a command, its reply), never run at once; on one CPU
/// each turn is a switch on that CPU, where across two each one woke an idle
/// CPU first (0.1 to 0.2 ms on a VM, `perf sched timehist`). Measured with
/// `bench pickup`, whose adder does the same: the add 0.60 -> 0.52 ms at p50,
/// four pairs (README). Not allowed: the client runs as before.
pub(crate) fn one_cpu() {
    // SAFETY: sched_getcpu reads nothing of ours; `set` is a plain bitmask
    // that sched_setaffinity only reads, for this thread (pid 0), whose
    // mask the threads it starts inherit.
    let done = unsafe {
        let cpu = libc::sched_getcpu();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        cpu >= 0 && {
            libc::CPU_SET(cpu as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    };
    if !done {
        tracing::debug!(
            "Cannot keep this command on one CPU ({}); it runs on any",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs this thread may run on.
    fn allowed_cpus() -> Vec<usize> {
        // SAFETY: `set` is written by the kernel, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect()
        }
    }

    #[test]
    fn a_client_and_the_threads_it_starts_stay_on_the_cpu_it_started_on() {
        // On a thread of its own: the mask is per thread, and the test
        // harness's other threads must keep theirs.
        std::thread::spawn(|| {
            let before = allowed_cpus();
            one_cpu();
            let one = allowed_cpus();
            assert_eq!(one.len(), 1, "{one:?}");
            assert!(before.contains(&one[0]), "{one:?} is not in {before:?}");
            let (cpu, mask) = std::thread::spawn(|| {
                // SAFETY: sched_getcpu reads nothing of ours.
                (unsafe { libc::sched_getcpu() } as usize, allowed_cpus())
            })
            .join()
            .unwrap();
            assert_eq!(mask, one, "a thread started after inherits the mask");
            assert_eq!(cpu, one[0]);
        })
        .join()
        .unwrap();
    }
}
