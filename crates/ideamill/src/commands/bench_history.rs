//! `ideamill bench history`: whether a claim, a finish and what people and
//! engines read cost the same with a long history as with a short one. Two
//! scratch stores (SQLite, or scratch databases on a PostgreSQL server with
//! `--store`): one with 1,000 finished jobs and 1,000 queued, one with
//! 1,000,000 finished and 100,000 queued, written by bulk SQL
//! (`ideamill_store::seed`). The history is dated the 30 days before today
//! (UTC), so that windows such as today's spend hold only what the bench
//! itself does in either store.
//!
//! Each claimed job is finished with its item sent to the same stage again,
//! a new queued job at the back of the queue, so the queue keeps its length
//! while the bench runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ideamill_core::machine::{NextJob, Transition};
use ideamill_core::{Config, Millis};
use ideamill_store::Store;
use ideamill_sys::clock::now_millis;

use crate::project;

const DAY: Millis = 86_400_000;
/// The claims' owner, as `bench_web::finish` names it.
const OWNER: &str = "bench";

/// What `bench history` runs.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Jobs claimed and finished, one at a time, in each store.
    #[arg(long, default_value_t = 10_000)]
    jobs: u32,
    /// Times each read is timed in each store.
    #[arg(long, default_value_t = 200)]
    reads: u32,
    /// Finished jobs in the large store (the small one has 1,000).
    #[arg(long, default_value_t = 1_000_000)]
    finished: u64,
    /// Queued jobs in the large store (the small one has 1,000).
    #[arg(long, default_value_t = 100_000)]
    queued: u64,
    /// A PostgreSQL server to measure on, as for `throughput`.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

/// One store's timings, by what was timed.
struct Timings {
    label: String,
    seeded_in: Duration,
    rows: Vec<(&'static str, Vec<Duration>)>,
}

impl Timings {
    fn push(&mut self, what: &'static str, took: Duration) {
        match self.rows.iter_mut().find(|(w, _)| *w == what) {
            Some((_, v)) => v.push(took),
            None => self.rows.push((what, vec![took])),
        }
    }

    fn quantiles(&self, what: &str) -> Option<(f64, f64)> {
        let (_, v) = self.rows.iter().find(|(w, _)| *w == what)?;
        let mut v = v.clone();
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        Some((at(0.5), at(0.99)))
    }
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        println!("note: a debug build; build with --release for representative figures\n");
    }
    let mut stores = Vec::new();
    for (finished, queued) in [(1_000, 1_000), (args.finished, args.queued)] {
        let mut timings = None;
        let (slot, args) = (&mut timings, &args);
        super::bench::on_scratch_store(args.store.as_deref(), |url| async move {
            *slot = Some(measure(args, url, finished, queued).await?);
            Ok(())
        })
        .await?;
        stores.extend(timings);
    }
    let [small, large] = &stores[..] else {
        anyhow::bail!("a store was not measured");
    };
    println!(
        "bench history ({}; p50 / p99 in ms; {} claims+finishes and {} of each read per store)",
        if args.store.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.jobs,
        args.reads
    );
    println!(
        "  store A: {} (seeded in {:.1} s); store B: {} (seeded in {:.1} s)",
        small.label,
        small.seeded_in.as_secs_f64(),
        large.label,
        large.seeded_in.as_secs_f64()
    );
    println!(
        "  {:<44} {:>17} {:>17} {:>13}",
        "", "store A", "store B", "B / A"
    );
    for (what, _) in &small.rows {
        let (Some(a), Some(b)) = (small.quantiles(what), large.quantiles(what)) else {
            continue;
        };
        println!(
            "  {what:<44} {:>7.3} / {:>7.3} {:>7.3} / {:>7.3} {:>5.2} / {:>5.2}",
            a.0,
            a.1,
            b.0,
            b.1,
            b.0 / a.0,
            b.1 / a.1
        );
    }
    println!("  (target: B / A at most 1.5 for every row but the consistency check)");
    Ok(())
}

async fn measure(
    args: &HistoryArgs,
    url: Option<String>,
    finished: u64,
    queued: u64,
) -> anyhow::Result<Timings> {
    let dir = tempfile::tempdir()?;
    let config = Arc::new(super::bench_web::scratch(dir.path(), &url)?);
    let store = project::open_store(&config).await?;
    let stages: Vec<String> = config.stages.iter().map(|s| s.name.clone()).collect();
    let today = ideamill_store::day_start(now_millis());
    let clock = Instant::now();
    ideamill_store::seed::history(
        &config.store.url,
        &ideamill_store::seed::History {
            done_items: finished / stages.len() as u64,
            queued_items: queued,
            stages: stages.clone(),
            from: today - 30 * DAY,
            to: today - 3_600_000,
            now: now_millis(),
            items_per_event: 10,
        },
    )
    .await
    .context("cannot write the bench's history")?;
    let mut t = Timings {
        label: format!("{finished} finished jobs, {queued} queued"),
        seeded_in: clock.elapsed(),
        rows: Vec::new(),
    };
    eprintln!(
        "  {}: seeded in {:.1} s",
        t.label,
        t.seeded_in.as_secs_f64()
    );
    let result = timed(args, &config, &store, &stages[0], &mut t).await;
    store.close().await;
    result?;
    Ok(t)
}

async fn timed(
    args: &HistoryArgs,
    config: &Arc<Config>,
    store: &Arc<dyn Store>,
    stage: &str,
    t: &mut Timings,
) -> anyhow::Result<()> {
    let me = ideamill_store::ProcessInfo {
        id: OWNER.into(),
        host: ideamill_sys::hostname(),
        pid: std::process::id(),
        version: "bench".into(),
        started_at: now_millis(),
        last_beat_at: now_millis(),
        stopped_at: None,
        held_jobs: 0,
    };
    store.register_process(&me).await?;
    // A warm-up, untimed: the first statements prepare and fill caches.
    for i in 0..(args.jobs / 10).max(1) + args.jobs {
        let now = now_millis();
        let started = Instant::now();
        let jobs = store.claim(stage, 1, OWNER, now, now + 30_000).await?;
        let claimed = started.elapsed();
        let job = jobs.into_iter().next().context("the queue ran dry")?;
        let next = NextJob {
            stage: stage.to_string(),
            round: job.round,
            max_attempts: 3,
        };
        let finish = super::bench_web::finish(
            job,
            now_millis(),
            Transition::Advance {
                output: "a bench output".into(),
                next: Some(next),
            },
        );
        let finishing = Instant::now();
        for r in store.finish(std::slice::from_ref(&finish)).await? {
            r.context("a bench finish was refused")?;
        }
        if i >= args.jobs / 10 {
            t.push("claim + finish (one job)", started.elapsed());
            t.push("  claim", claimed);
            t.push("  finish (output, next job)", finishing.elapsed());
        }
    }
    let (addr, state, client) = super::bench_web::serve(config, store).await?;
    let metrics = format!("http://{addr}/metrics");
    for i in 0..args.reads + 1 {
        let keep = i > 0;
        let now = now_millis();
        let started = Instant::now();
        let running = Vec::new();
        store.heartbeat(OWNER, now, now + 30_000, &running).await?;
        store.reap_expired(now).await?;
        store.queue_depth(now).await?;
        let beat = started.elapsed();
        let started = Instant::now();
        store.status(now).await?;
        let _ = ideamill_health::facts::gather(config, &**store, now).await;
        let status = started.elapsed();
        state.forget_cached();
        let started = Instant::now();
        let r = client.get(&metrics).send().await?;
        anyhow::ensure!(r.status().is_success(), "/metrics answered {}", r.status());
        r.bytes().await?;
        let scrape = started.elapsed();
        let started = Instant::now();
        store.pending(now + 1_000).await?;
        let pending = started.elapsed();
        if keep {
            t.push("engine beat (heartbeat, reaper, queue depth)", beat);
            t.push("status / doctor reads (snapshot, facts)", status);
            t.push("/metrics (nothing reused)", scrape);
            t.push("--until-idle check (pending work)", pending);
        }
    }
    for _ in 0..3 {
        let started = Instant::now();
        store.quick_check().await?;
        t.push("doctor's consistency check", started.elapsed());
    }
    Ok(())
}
