//! `ideamill bench health`: how fast a hang is found and work resumes, and
//! what an idle mill costs. Figures, not assertions (the tests assert the
//! behaviour; this measures it). Build with `cargo build --release` first.
//!
//! - A blocked event loop, in this process: a runtime thread blocks; the
//!   watchdog's detection time is measured (release builds have no test hook
//!   to do this to a real engine).
//! - A frozen engine, end to end: `ideamill run` (supervisor + engine) on a
//!   scratch project with work queued; the engine is SIGSTOPped; measured are
//!   hang → detection (the evidence's timestamp) and detection → the first
//!   job finished by the new engine.
//! - Idle: supervisor + engine with an empty queue: wake-ups per second
//!   (the event loop's, the watchdog's, the supervisor's, and every thread's
//!   context switches), CPU and RSS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ideamill_core::machine::first_job;
use ideamill_engine::health::pulse;
use ideamill_engine::health::watchdog::{self, StallSummary};
use ideamill_health::{self as health, Health, LogRing, StatusFile};
use ideamill_sys::clock::now_millis;

use crate::project;

pub async fn run(idle: &str, hangs: u32) -> anyhow::Result<()> {
    let idle = ideamill_core::duration::parse_duration(idle)
        .map_err(|e| anyhow::anyhow!("--idle: {e}"))?;
    if cfg!(debug_assertions) {
        println!("note: a debug build; build with --release for representative figures\n");
    }
    blocked_loop_in_process()?;
    frozen_engine(hangs).await?;
    idle_cost(idle).await?;
    Ok(())
}

fn scratch_config(dir: &Path, stage: &str, extra: &str) -> anyhow::Result<ideamill_core::Config> {
    let text = format!(
        "[engine]\nheartbeat = \"2s\"\nlease = \"15s\"\n[health]\nstall_after = \"5s\"\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [[stages]]\nname = \"work\"\nkind = \"command\"\ncommand = {stage}\nconcurrency = 2\n"
    );
    let path = dir.join("ideamill.toml");
    std::fs::write(&path, &text)?;
    Ok(ideamill_core::config::parse(&text, &path)?)
}

/// The watchdog's detection time for a loop blocked in this process.
fn blocked_loop_in_process() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = scratch_config(dir.path(), "[\"true\"]", "")?;
    let health = Arc::new(Health::new(&config, LogRing::new(10)));
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let tx = std::sync::Mutex::new(tx);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    watchdog::spawn(
        health.clone(),
        Some(rt.handle().clone()),
        Box::new(move |_, _| {
            let _ = tx.lock().map(|t| t.send(Instant::now()));
        }),
    )?;
    let (blocked_tx, blocked_rx) = std::sync::mpsc::channel::<Instant>();
    let h = health.clone();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let stop = ideamill_engine::CancellationToken::new();
            tokio::spawn(pulse::run(h, None, stop));
            // Let it beat for a while, then block the loop's only thread.
            tokio::time::sleep(Duration::from_millis(3300)).await;
            let _ = blocked_tx.send(Instant::now());
            std::thread::sleep(Duration::from_secs(30));
        });
    });
    let blocked = blocked_rx.recv_timeout(Duration::from_secs(20))?;
    let detected = rx
        .recv_timeout(Duration::from_secs(20))
        .context("the watchdog did not detect the blocked loop within 20 s")?;
    println!("Blocked event loop (in-process watchdog, stall_after 5s):");
    println!(
        "  hang → detection: {:.2} s (target: within stall_after + 1 s = 6 s)\n",
        (detected - blocked).as_secs_f64()
    );
    Ok(())
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find this program")
}

fn spawn_run(dir: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(exe()?)
        .args(["run"])
        .current_dir(dir)
        .env_remove("IDEAMILL_CONFIG")
        .env("IDEAMILL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Wait for the status file of an engine other than `not`, and return it.
fn wait_engine(data_dir: &Path, not: Option<u32>, limit: Duration) -> anyhow::Result<StatusFile> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(f) = StatusFile::read_all(data_dir).into_iter().find(|f| {
            Some(f.pid) != not && f.process_id.is_some() && ideamill_sys::process::pid_alive(f.pid)
        }) {
            return Ok(f);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no engine started within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process we started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// SIGSTOP the engine under its supervisor; time detection and recovery.
async fn frozen_engine(hangs: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Arc::new(scratch_config(
        dir.path(),
        "[\"sh\", \"-c\", \"sleep 0.1\"]",
        "max_restarts = 100",
    )?);
    let store = project::open_store(&config).await?;
    store
        .add_items(
            &super::bench::new_items(5000),
            &first_job(&config),
            now_millis(),
        )
        .await?;
    let mut supervisor = spawn_run(dir.path())?;
    let data_dir = config.engine.data_dir.clone();
    let mut detect = Vec::new();
    let mut resume = Vec::new();
    let mut previous = None;
    let result: anyhow::Result<()> = async {
        for _ in 0..hangs {
            let engine = wait_engine(&data_dir, previous, Duration::from_secs(60))?;
            // Let it work a little first.
            let done_before = store.status(now_millis()).await?.items.done;
            let deadline = Instant::now() + Duration::from_secs(30);
            while store.status(now_millis()).await?.items.done < done_before + 5 {
                anyhow::ensure!(Instant::now() < deadline, "the engine does no work");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let hung_at = now_millis();
            signal(engine.pid, libc::SIGSTOP);
            let summary = wait_evidence(&data_dir, engine.pid, Duration::from_secs(30)).await?;
            let done_at_detection = store.status(now_millis()).await?.items.done;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let done = store.status(now_millis()).await?.items.done;
                if done > done_at_detection {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no job finished within 60 s of the restart"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let resumed_at = now_millis();
            detect.push((summary.detected_at - hung_at) as f64 / 1000.0);
            resume.push((resumed_at - summary.detected_at) as f64 / 1000.0);
            previous = Some(engine.pid);
        }
        Ok(())
    }
    .await;
    signal(supervisor.id(), libc::SIGTERM);
    let _ = wait_child(&mut supervisor, Duration::from_secs(30));
    store.close().await;
    result?;
    println!("Frozen engine (SIGSTOP) under the supervisor, stall_after 5s, {hangs} hang(s):");
    println!(
        "  hang → detection:             {} s (target: within 6 s)",
        figures(&detect)
    );
    println!(
        "  detection → first job done:   {} s (target: within 10 s)\n",
        figures(&resume)
    );
    Ok(())
}

fn figures(v: &[f64]) -> String {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(0.0, f64::max);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    format!("mean {mean:.2}, min {min:.2}, max {max:.2}")
}

async fn wait_evidence(data_dir: &Path, pid: u32, limit: Duration) -> anyhow::Result<StallSummary> {
    let deadline = Instant::now() + limit;
    let tag = format!("-pid{pid}");
    loop {
        if let Ok(entries) = std::fs::read_dir(health::evidence_dir(data_dir)) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(&tag)
                    && let Ok(bytes) = std::fs::read(e.path().join("summary.json"))
                    && let Ok(s) = serde_json::from_slice::<StallSummary>(&bytes)
                {
                    return Ok(s);
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stall of pid {pid} was not detected within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Per-process counters from /proc (the threads' own: [`thread_counters`]).
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    cpu_ticks: u64,
    rss_kib: u64,
    /// The anonymous part of RSS: memory only this process holds.
    anon_kib: u64,
    /// Proportional set size: each page shared with other processes counted
    /// as its share, so that supervisor and engine, one binary, add up to
    /// the memory they cost together.
    pss_kib: u64,
}

fn sample(pid: u32) -> ProcSample {
    let mut s = ProcSample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some(rest) = stat.rsplit(')').next()
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        s.cpu_ticks = ticks(11) + ticks(12);
    }
    let kib = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    if let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        s.rss_kib = kib(&st, "VmRSS:");
        s.anon_kib = kib(&st, "RssAnon:");
    }
    if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        s.pss_kib = kib(&rollup, "Pss:");
    }
    s
}

/// Each thread of `pid`, by thread id: its name, the times it was
/// scheduled onto a CPU (schedstat's 3rd field) and its context switches.
fn thread_counters(pid: u32) -> BTreeMap<u32, (String, u64, u64)> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let p = t.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let slices = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|ss| ss.split_whitespace().nth(2)?.parse::<u64>().ok())
            .unwrap_or(0);
        let switches: u64 = std::fs::read_to_string(p.join("status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        threads.insert(tid, (name.trim().to_owned(), slices, switches));
    }
    threads
}

/// What each thread alive at `after` did since `before` (one started
/// meanwhile, from zero), summed by thread name: timeslices and context
/// switches. A thread that exited in between counts for nothing: a sum over
/// the live threads at each end took a thread's whole life off the total
/// when it exited in the window (a blocking thread of start-up, say).
fn grown(
    before: &BTreeMap<u32, (String, u64, u64)>,
    after: &BTreeMap<u32, (String, u64, u64)>,
) -> BTreeMap<String, (u64, u64)> {
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (tid, (name, slices, switches)) in after {
        let (_, was_slices, was_switches) = before.get(tid).cloned().unwrap_or_default();
        let e = by_name.entry(name.clone()).or_default();
        e.0 += slices.saturating_sub(was_slices);
        e.1 += switches.saturating_sub(was_switches);
    }
    by_name
}

/// Timeslices and context switches over every name.
fn total(by_name: &BTreeMap<String, (u64, u64)>) -> (u64, u64) {
    by_name
        .values()
        .fold((0, 0), |(a, b), (s, c)| (a + s, b + c))
}

/// Supervisor + engine with nothing to do.
async fn idle_cost(idle: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = scratch_config(dir.path(), "[\"true\"]", "")?;
    // Create the store first, as `ideamill add` would have.
    project::open_store(&config).await?.close().await;
    let mut supervisor = spawn_run(dir.path())?;
    let data_dir = config.engine.data_dir.clone();
    let result: anyhow::Result<()> = async {
        let engine = wait_engine(&data_dir, None, Duration::from_secs(60))?;
        // Settle: start-up work (migrations, recovery) is not idle cost.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let threads_before = (thread_counters(supervisor.id()), thread_counters(engine.pid));
        let before = (
            sample(supervisor.id()),
            sample(engine.pid),
            StatusFile::read(&health::status_file::path_for(&data_dir, engine.pid))?,
            Instant::now(),
        );
        tokio::time::sleep(idle).await;
        let threads_after = (thread_counters(supervisor.id()), thread_counters(engine.pid));
        let after = (
            sample(supervisor.id()),
            sample(engine.pid),
            StatusFile::read(&health::status_file::path_for(&data_dir, engine.pid))?,
            Instant::now(),
        );
        let secs = (after.3 - before.3).as_secs_f64();
        // The status file is as of its last beat: rate over the beats' span.
        let file_secs = ((after.2.beat_mono - before.2.beat_mono) as f64 / 1000.0).max(0.001);
        let per_secs = |n: u64| n as f64 / secs;
        let sup_threads = grown(&threads_before.0, &threads_after.0);
        let engine_threads = grown(&threads_before.1, &threads_after.1);
        let (sup_slices, sup_switches) = total(&sup_threads);
        let (engine_slices, engine_switches) = total(&engine_threads);
        let loop_all = (after.2.loop_wakeups - before.2.loop_wakeups) as f64 / file_secs;
        let loop_w = (after.2.loop_idle_wakeups - before.2.loop_idle_wakeups) as f64 / file_secs;
        let dog_w = (after.2.watchdog_wakeups - before.2.watchdog_wakeups) as f64 / file_secs;
        let sup_w = per_secs(sup_slices);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu = (after.0.cpu_ticks + after.1.cpu_ticks)
            .saturating_sub(before.0.cpu_ticks + before.1.cpu_ticks) as f64
            / hz
            / secs
            * 100.0;
        println!("Idle supervisor + engine, empty queue, heartbeat 2s, stall_after 5s, {secs:.0} s:");
        println!(
            "  wake-ups from idle: {:.2}/s  (event loop {loop_w:.2}, watchdog {dog_w:.2}, supervisor {sup_w:.2}; target: at most 2)",
            loop_w + dog_w + sup_w
        );
        println!(
            "  event-loop unparks: {loop_all:.2}/s (every store reply and file write wakes it too)"
        );
        println!(
            "  thread wake-ups: {:.1}/s  (every thread of both processes scheduled in; supervisor {:.2}, engine {:.1} incl. SQLite's connection threads)",
            per_secs(sup_slices + engine_slices),
            sup_w,
            per_secs(engine_slices)
        );
        let per_thread: Vec<String> = engine_threads
            .iter()
            .map(|(name, (n, _))| format!("{name} {:.2}", per_secs(*n)))
            .collect();
        println!("  engine threads, by name: {}", per_thread.join(", "));
        println!(
            "  context switches: {:.1}/s;  CPU: {cpu:.3}%",
            per_secs(sup_switches + engine_switches)
        );
        println!(
            "  RSS: supervisor {:.1} MiB + engine {:.1} MiB = {:.1} MiB (target: under 20 MiB)",
            after.0.rss_kib as f64 / 1024.0,
            after.1.rss_kib as f64 / 1024.0,
            (after.0.rss_kib + after.1.rss_kib) as f64 / 1024.0
        );
        // RSS counts the binary's pages in both processes (the supervisor's
        // are mostly the engine's own page-cache pages, mapped again).
        println!(
            "  of that, anonymous (private): {:.1} + {:.1} MiB; PSS, shared pages counted once: {:.1} + {:.1} = {:.1} MiB",
            after.0.anon_kib as f64 / 1024.0,
            after.1.anon_kib as f64 / 1024.0,
            after.0.pss_kib as f64 / 1024.0,
            after.1.pss_kib as f64 / 1024.0,
            (after.0.pss_kib + after.1.pss_kib) as f64 / 1024.0
        );
        Ok(())
    }
    .await;
    signal(supervisor.id(), libc::SIGTERM);
    let _ = wait_child(&mut supervisor, Duration::from_secs(30));
    result
}
