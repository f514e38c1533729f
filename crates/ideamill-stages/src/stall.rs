//! Hung jobs, told by progress rather than by the wall clock: a job whose
//! processes write no byte to stdout or stderr, change nothing in the
//! workspace, start no process and use next to no CPU time for the stage's
//! `stall_after` is *hung*. It gets an evidence folder ([`crate::evidence`])
//! while its processes still exist, then `run_command` kills its whole tree
//! and the attempt ends `hung` (retried like a timeout, told apart from one).
//!
//! # What counts as progress
//!
//! - **Output**: any byte on stdout or stderr ([`OutputTap`], fed by the
//!   readers of `command.rs`).
//! - **The workspace**: a fingerprint of every entry's inode, size and
//!   modification time (folders included, so a file created or removed
//!   counts), walked on the blocking pool, bounded like the sandbox's
//!   usage walk.
//! - **Processes**: a process of the job that was not there before.
//! - **CPU time**: the job's processes (and the children they reaped) used
//!   more than 1% of one core over the last `stall_after` (and more than
//!   two clock ticks). A busy program is working even when it says nothing;
//!   an idle one whose timers wake it now and then (an event loop's
//!   keep-alive) is not, which a rule of "any tick" would miss.
//!
//! # Which processes are the job's
//!
//! Read from the host's `/proc`, every sample: the job's leader (our direct
//! child: the sandbox's `bwrap`, or the program itself when unconfined) and
//! every descendant of it, so the processes inside the sandbox's PID
//! namespace are found as the children of `bwrap` with their host pids;
//! and every process of the leader's session or process group, which
//! catches a descendant orphaned onto the engine (a subreaper, see
//! [`crate::orphans`]) by an exiting parent. The processes seen are kept
//! (pid and start time) so that the end of the job can kill any that
//! escaped the group.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ideamill_sys::process::{ProcStat, all_processes, clock_ticks_per_second};

/// The most output a hung job's evidence keeps: its last 64 KiB.
pub const OUTPUT_TAIL: usize = 64 * 1024;

/// How many workspace entries one fingerprint looks at, at most.
const WALK_BUDGET: usize = 200_000;

/// What stall detection needs of one job.
#[derive(Debug, Clone)]
pub struct StallSpec {
    /// No progress for this long means hung.
    pub after: Duration,
    /// The job's workspace, whose changes count as progress.
    pub workspace: PathBuf,
    /// The folder evidence bundles go in (`<data_dir>/evidence`).
    pub evidence_dir: PathBuf,
    /// Names the bundle, e.g. `job12-attempt1`.
    pub label: String,
    /// What the bundle's `summary.json` says of the job (stage, item, ...).
    pub about: serde_json::Value,
}

impl StallSpec {
    /// The stall detection of `job`'s attempt of `stage` in `workspace`
    /// (`None` when the stage's `stall_after` is off): its evidence goes to
    /// `evidence_dir`, its summary names the job and adds `about` (the
    /// program, its arguments, whether it is confined).
    pub fn for_job(
        stage: &ideamill_core::config::StageConfig,
        job: &ideamill_store::ClaimedJob,
        workspace: &Path,
        evidence_dir: &Path,
        about: serde_json::Value,
    ) -> Option<StallSpec> {
        let after = stage.stall_after?;
        let mut summary = serde_json::json!({
            "stage": job.stage,
            "item": job.item_id,
            "job": job.id,
            "attempt": job.attempt,
            "round": job.round,
            "timeout_ms": u64::try_from(stage.timeout.as_millis()).unwrap_or(u64::MAX),
        });
        if let (Some(summary), serde_json::Value::Object(about)) = (summary.as_object_mut(), about)
        {
            summary.extend(about);
        }
        Some(StallSpec {
            after,
            workspace: workspace.to_path_buf(),
            evidence_dir: evidence_dir.to_path_buf(),
            label: format!("job{}-attempt{}", job.id, job.attempt),
            about: summary,
        })
    }

    /// How often the job is sampled: an eighth of `after`, within 100 ms
    /// and 5 s. A hang is told between `after` and `after` + this.
    pub fn interval(&self) -> Duration {
        (self.after / 8).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// A hung job, as found and recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hang {
    /// The stage's `stall_after`.
    pub after: Duration,
    /// Since the job's last progress, when it was told hung.
    pub quiet_for: Duration,
    /// Since the job started.
    pub elapsed: Duration,
    /// CPU time its processes used, in all.
    pub cpu: Duration,
    /// Whether it ever wrote a byte of output.
    pub wrote_output: bool,
    /// The evidence folder, or why there is none.
    pub evidence: Result<PathBuf, String>,
}

impl Hang {
    /// One line for the attempt: what was seen and where the evidence is.
    pub fn describe(&self) -> String {
        let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        let evidence = match &self.evidence {
            Ok(dir) => format!("evidence in {}", dir.display()),
            Err(why) => format!("no evidence: {why}"),
        };
        format!(
            "hung: no output{}, no change in the workspace and no CPU time for {} \
             (stall_after {}; ran {}, CPU {}); the process tree was killed; {evidence}",
            if self.wrote_output { "" } else { " at all" },
            secs(self.quiet_for),
            ideamill_core::duration::format_duration(self.after),
            secs(self.elapsed),
            secs(self.cpu),
        )
    }
}

/// What the job's readers saw: when its last byte of output came, and its
/// last [`OUTPUT_TAIL`] bytes (stdout and stderr as they came).
#[derive(Debug)]
pub struct OutputTap {
    base: Instant,
    /// Milliseconds after `base` of the last byte, plus one; 0 for none.
    last: AtomicU64,
    tail: Mutex<VecDeque<u8>>,
}

impl OutputTap {
    /// A tap for a job starting now.
    pub fn new() -> Arc<OutputTap> {
        Arc::new(OutputTap {
            base: Instant::now(),
            last: AtomicU64::new(0),
            tail: Mutex::new(VecDeque::new()),
        })
    }

    /// The readers' hook: `chunk` was just read.
    pub fn record(&self, chunk: &[u8]) {
        let at = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last.store(at + 1, Ordering::Relaxed);
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend(chunk.iter().rev().take(OUTPUT_TAIL).rev());
        let excess = tail.len().saturating_sub(OUTPUT_TAIL);
        tail.drain(..excess);
    }

    /// When the last byte came; `None` if none came yet.
    pub fn last_output(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.base + Duration::from_millis(at - 1)),
        }
    }

    /// The last bytes of output.
    pub fn tail(&self) -> Vec<u8> {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().copied().collect()
    }
}

/// The processes of a job seen so far: pid and start time, so that a
/// reused pid is never taken for one of them.
pub type Seen = Arc<Mutex<HashMap<u32, u64>>>;

/// The job's processes among `all`: `leader` and its descendants, and the
/// processes of its session or process group with theirs. Parents before
/// children, the leader first.
pub fn job_processes(all: &[ProcStat], leader: u32) -> Vec<ProcStat> {
    let mut children: HashMap<u32, Vec<&ProcStat>> = HashMap::new();
    for p in all {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut roots: Vec<&ProcStat> = all.iter().filter(|p| p.pid == leader).collect();
    roots.extend(
        all.iter()
            .filter(|p| p.pid != leader && (p.session == leader || p.pgrp == leader)),
    );
    let mut out: Vec<ProcStat> = Vec::new();
    let mut taken: HashSet<u32> = HashSet::new();
    for root in roots {
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            if !taken.insert(p.pid) {
                continue;
            }
            out.push(p.clone());
            if let Some(kids) = children.get(&p.pid) {
                stack.extend(kids.iter().rev().copied());
            }
        }
    }
    out
}

/// A fingerprint of `dir`'s tree: every entry's inode, size and
/// modification time, combined so that their order does not matter.
/// Blocking; at most [`WALK_BUDGET`] entries.
pub fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut sum: u64 = 0;
    let mut budget = WALK_BUDGET;
    let mut stack = vec![dir.to_path_buf()];
    let mut mix = |meta: &std::fs::Metadata, path: &Path| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            path,
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
        )
            .hash(&mut h);
        sum = sum.wrapping_add(h.finish());
    };
    if let Ok(meta) = dir.symlink_metadata() {
        mix(&meta, dir);
    }
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return sum;
            }
            let path = entry.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            mix(&meta, &path);
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    sum
}

/// What one sample saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The job made progress within `after`, or has not run that long.
    Working,
    /// No progress for `quiet_for` (at least `after`).
    Hung {
        /// Since the last progress.
        quiet_for: Duration,
    },
}

/// Judges a job from its samples. Pure: times and samples are arguments.
#[derive(Debug)]
pub struct Tracker {
    after: Duration,
    /// CPU over the window up to which the job is idle, in ticks.
    idle_ticks: u64,
    started: Instant,
    /// Each process's CPU ticks when last seen, by pid and start time.
    cpu: HashMap<(u32, u64), u64>,
    /// CPU ticks used by the job since it started, as sampled.
    used: u64,
    /// (when, `used` then): enough to cover the last `after`.
    window: VecDeque<(Instant, u64)>,
    workspace: Option<u64>,
    /// The last change of the workspace or of the set of processes.
    changed: Instant,
}

impl Tracker {
    /// A tracker for a job started at `started`, hung after `after`;
    /// `ticks_per_second` is the unit of the CPU times it is fed.
    pub fn new(after: Duration, started: Instant, ticks_per_second: u64) -> Tracker {
        let one_percent = (after.as_secs_f64() * ticks_per_second as f64 / 100.0) as u64;
        Tracker {
            after,
            idle_ticks: one_percent.max(2),
            started,
            cpu: HashMap::new(),
            used: 0,
            // The start, with nothing used yet: the first window's start.
            window: VecDeque::from([(started, 0)]),
            workspace: None,
            changed: started,
        }
    }

    /// CPU ticks the job used, as far as sampled.
    pub fn used_ticks(&self) -> u64 {
        self.used
    }

    /// Takes one sample at `now`: the job's processes, its workspace's
    /// fingerprint and when its last output came.
    pub fn observe(
        &mut self,
        now: Instant,
        processes: &[ProcStat],
        workspace: u64,
        last_output: Option<Instant>,
    ) -> Judgement {
        let mut cpu = HashMap::with_capacity(processes.len());
        for p in processes {
            let key = (p.pid, p.start_time);
            let ticks = p.cpu_ticks();
            match self.cpu.get(&key) {
                Some(&before) => self.used += ticks.saturating_sub(before),
                None => {
                    // A new process is progress; what it used counts too.
                    self.used += ticks;
                    self.changed = now;
                }
            }
            cpu.insert(key, ticks);
        }
        self.cpu = cpu;
        if self.workspace.is_some_and(|before| before != workspace) {
            self.changed = now;
        }
        self.workspace = Some(workspace);

        self.window.push_back((now, self.used));
        let from = now.checked_sub(self.after);
        // Keep the newest sample at or before `now - after` as the
        // window's start, so that it covers at least `after`.
        while let (Some(from), Some(&(second, _))) = (from, self.window.get(1))
            && second <= from
        {
            self.window.pop_front();
        }
        let Some(&(first, used_then)) = self.window.front() else {
            return Judgement::Working;
        };
        let covered = now.duration_since(first) >= self.after;
        let busy = self.used - used_then > self.idle_ticks;
        let last = [Some(self.started), Some(self.changed), last_output]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.started);
        let quiet_for = now.saturating_duration_since(last);
        if covered && !busy && quiet_for >= self.after {
            Judgement::Hung { quiet_for }
        } else {
            Judgement::Working
        }
    }
}

/// Samples the job led by `leader` until it is hung, then saves the
/// evidence (its processes still run) and returns. Never returns while the
/// job makes progress: the caller races it against the job's end.
pub async fn watch(spec: &StallSpec, leader: u32, tap: &Arc<OutputTap>, seen: &Seen) -> Hang {
    let started = Instant::now();
    let ticks = clock_ticks_per_second().max(1);
    let mut tracker = Some(Tracker::new(spec.after, started, ticks));
    loop {
        tokio::time::sleep(spec.interval()).await;
        let Some(mut t) = tracker.take() else {
            return std::future::pending().await;
        };
        let (workspace, tap2, seen2) = (spec.workspace.clone(), tap.clone(), seen.clone());
        let sampled = tokio::task::spawn_blocking(move || {
            let processes = job_processes(&all_processes(), leader);
            {
                let mut seen = seen2.lock().unwrap_or_else(|e| e.into_inner());
                for p in &processes {
                    seen.insert(p.pid, p.start_time);
                }
            }
            let judged = t.observe(
                Instant::now(),
                &processes,
                fingerprint(&workspace),
                tap2.last_output(),
            );
            (t, judged, processes)
        })
        .await;
        let (t, judged, processes) = match sampled {
            Ok(sampled) => sampled,
            Err(e) => {
                tracing::warn!(error = %e, "Sampling a job for hangs failed; it is no longer watched.");
                return std::future::pending().await;
            }
        };
        let Judgement::Hung { quiet_for } = judged else {
            tracker = Some(t);
            continue;
        };
        let cpu = Duration::from_secs_f64(t.used_ticks() as f64 / ticks as f64);
        let mut hang = Hang {
            after: spec.after,
            quiet_for,
            elapsed: started.elapsed(),
            cpu,
            wrote_output: tap.last_output().is_some(),
            evidence: Err(String::new()),
        };
        let (spec2, tap2, hang2) = (spec.clone(), tap.clone(), hang.clone());
        hang.evidence = tokio::task::spawn_blocking(move || {
            crate::evidence::save(&spec2, leader, &processes, &hang2, &tap2.tail())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|saved| saved.map_err(|e| e.to_string()));
        if let Err(why) = &hang.evidence {
            tracing::warn!(error = %why, "Could not save a hung job's evidence.");
        }
        return hang;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, session: u32, ticks: u64) -> ProcStat {
        ProcStat {
            pid,
            comm: format!("p{pid}"),
            state: 'S',
            ppid,
            pgrp: session,
            session,
            utime: ticks,
            stime: 0,
            children_time: 0,
            threads: 1,
            start_time: u64::from(pid) * 10,
        }
    }

    #[test]
    fn the_job_is_its_leaders_tree_and_session() {
        let all = [
            proc(1, 0, 1, 0),
            proc(100, 1, 100, 0),   // the engine
            proc(200, 100, 200, 0), // the leader (bwrap), a session of its own
            proc(201, 200, 200, 0), // bwrap's init in the namespace
            proc(202, 201, 200, 0), // the program
            proc(203, 202, 203, 0), // setsid inside: still a descendant
            proc(300, 100, 200, 0), // orphaned onto the engine, same session
            proc(301, 300, 301, 0), // and its own child
            proc(400, 100, 400, 0), // another job
        ];
        let pids: Vec<u32> = job_processes(&all, 200).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [200, 201, 202, 203, 300, 301]);
        assert!(job_processes(&all, 999).is_empty());
    }

    #[test]
    fn output_tap_keeps_the_last_64_kib() {
        let tap = OutputTap::new();
        assert_eq!(tap.last_output(), None);
        tap.record(&vec![b'a'; OUTPUT_TAIL]);
        tap.record(b"end");
        let tail = tap.tail();
        assert_eq!(tail.len(), OUTPUT_TAIL);
        assert!(tail.ends_with(b"aend"));
        assert!(tap.last_output().is_some());
    }

    /// Feeds a tracker one sample per 250 ms for `secs` seconds; `at(t)`
    /// gives the processes, the workspace and whether output came at t ms.
    fn run(secs: u64, mut at: impl FnMut(u64) -> (Vec<ProcStat>, u64, bool)) -> Option<u64> {
        let start = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(2), start, 100);
        let mut last_output = None;
        for ms in (250..=secs * 1000).step_by(250) {
            let now = start + Duration::from_millis(ms);
            let (procs, ws, output) = at(ms);
            if output {
                last_output = Some(now);
            }
            if let Judgement::Hung { quiet_for } = t.observe(now, &procs, ws, last_output) {
                assert!(quiet_for >= Duration::from_secs(2));
                return Some(ms);
            }
        }
        None
    }

    #[test]
    fn a_quiet_idle_job_is_hung_after_stall_after() {
        // Sleeps from the start: hung 2 s after the first sample found it.
        assert_eq!(run(10, |_| (vec![proc(5, 1, 5, 3)], 7, false)), Some(2250));
        // One line at 1 s, then nothing.
        assert_eq!(
            run(10, |ms| (vec![proc(5, 1, 5, 3)], 7, ms == 1000)),
            Some(3000)
        );
    }

    #[test]
    fn a_busy_job_is_working_until_it_stops() {
        // 25 ticks per 250 ms: a full core, never hung.
        assert_eq!(run(10, |ms| (vec![proc(5, 1, 5, ms / 10)], 7, false)), None);
        // Busy until 3 s, idle after: hung 2 s after the CPU stopped.
        assert_eq!(
            run(10, |ms| (vec![proc(5, 1, 5, ms.min(3000) / 10)], 7, false)),
            Some(5000)
        );
        // A timer's tick now and then (1 tick a second, 0.5%) is idle.
        assert_eq!(
            run(10, |ms| (vec![proc(5, 1, 5, ms / 1000)], 7, false)),
            Some(2250)
        );
    }

    #[test]
    fn workspace_changes_and_new_processes_are_progress() {
        // The workspace changes every second: never hung.
        assert_eq!(
            run(10, |ms| (vec![proc(5, 1, 5, 0)], ms / 1000, false)),
            None
        );
        // A new process at 2 s (a new pid): quiet again from then.
        assert_eq!(
            run(10, |ms| {
                let mut procs = vec![proc(5, 1, 5, 0)];
                if ms >= 2000 {
                    procs.push(proc(6, 5, 5, 0));
                }
                (procs, 7, false)
            }),
            Some(4000)
        );
    }

    #[test]
    fn a_workspace_fingerprint_sees_writes_creations_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("src");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("main.py");
        std::fs::write(&file, "a").unwrap();
        let first = fingerprint(dir.path());
        assert_eq!(
            fingerprint(dir.path()),
            first,
            "stable when nothing changes"
        );
        std::fs::write(&file, "ab").unwrap();
        let written = fingerprint(dir.path());
        assert_ne!(written, first);
        std::fs::write(sub.join("new.py"), "").unwrap();
        let created = fingerprint(dir.path());
        assert_ne!(created, written);
        std::fs::remove_file(sub.join("new.py")).unwrap();
        assert_ne!(fingerprint(dir.path()), created);
    }
}
