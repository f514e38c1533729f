//! `ideamill bench`: throughput and pickup latency on a scratch store (SQLite,
//! or a scratch database on a PostgreSQL server with `--store`), with no-op
//! stages, so the figures are the engine's and the store's own. Throughput
//! can run several engine processes on one store (`--processes`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ideamill_core::Config;
use ideamill_core::machine::first_job;
use ideamill_engine::{CancellationToken, Engine, EngineOptions, Progress};
use ideamill_stages::executor::{Executor, NoopExecutor, executors_for};
use ideamill_store::{ClaimedJob, ItemContext, ItemRow, NewItem};
use ideamill_sys::clock::now_millis;
use tokio::sync::mpsc;

use crate::cli::{BenchArgs, BenchWhat};
use crate::project;

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchWhat::Throughput {
            items,
            concurrency,
            stages,
            store,
            processes,
        } => {
            let shape = Shape {
                items,
                stages,
                concurrency,
                processes: processes.max(1),
            };
            on_scratch_store(store.as_deref(), |url| throughput(shape, url)).await?
        }
        BenchWhat::Pickup {
            samples,
            gap,
            store,
        } => on_scratch_store(store.as_deref(), |url| pickup(samples, gap, url)).await?,
        BenchWhat::Worker { config } => worker(&config).await?,
        BenchWhat::Sandbox { runs, items } => sandbox(runs, items).await?,
        BenchWhat::Telemetry {
            items,
            concurrency,
            runs,
        } => telemetry(items, concurrency, runs).await?,
        BenchWhat::Health { idle, hangs } => super::bench_health::run(&idle, hangs).await?,
        BenchWhat::Adder {
            config,
            samples,
            gap,
        } => adder(&config, samples, gap).await?,
        BenchWhat::Web { items, requests } => return super::bench_web::run(items, requests).await,
        BenchWhat::Saturation(args) => super::bench_saturation::run(args).await?,
        BenchWhat::History(args) => super::bench_history::run(args).await?,
        BenchWhat::Soak(args) => return super::bench_soak::run(args).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `bench` on a scratch database of the PostgreSQL server `server`
/// (dropped afterwards), or on a scratch SQLite store when there is none.
pub(super) async fn on_scratch_store<F, Fut>(server: Option<&str>, bench: F) -> anyhow::Result<()>
where
    F: FnOnce(Option<String>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let Some(server) = server else {
        return bench(None).await;
    };
    anyhow::ensure!(
        ideamill_store::is_postgres_url(server),
        "--store takes a postgres:// URL (without it, the bench uses a scratch SQLite store)"
    );
    let db = ideamill_store::postgres::ScratchDatabase::create(server)
        .await
        .context("cannot create a scratch database for the bench")?;
    let result = bench(Some(db.url().to_string())).await;
    if let Err(e) = db.drop_now().await {
        eprintln!("Could not drop the bench's scratch database: {e}");
    }
    result
}

fn backend(url: &Option<String>) -> &'static str {
    if url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}

/// A scratch project with `stages` no-op stages, on `store` (a URL) or on
/// SQLite in `dir`.
fn scratch(
    dir: &Path,
    stages: usize,
    concurrency: u32,
    store: &Option<String>,
) -> anyhow::Result<Config> {
    let mut text = String::new();
    if let Some(url) = store {
        text.push_str(&format!("[store]\nurl = \"{url}\"\n"));
    }
    text.push_str("[engine]\nlease = \"30s\"\nheartbeat = \"2s\"\n");
    for i in 0..stages {
        text.push_str(&format!(
            "[[stages]]\nname = \"s{i}\"\nkind = \"command\"\ncommand = [\"true\"]\nconcurrency = {concurrency}\n"
        ));
    }
    let path = dir.join("ideamill.toml");
    std::fs::write(&path, &text)?;
    Ok(ideamill_core::config::parse(&text, &path)?)
}

fn noop_executors(config: &Config) -> Vec<(String, Arc<dyn Executor>)> {
    config
        .stages
        .iter()
        .map(|s| (s.name.clone(), Arc::new(NoopExecutor) as Arc<dyn Executor>))
        .collect()
}

/// `n` ideas, "idea 0" and on.
pub(super) fn new_items(n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem {
            text: format!("idea {i}"),
            metadata: serde_json::json!({}),
        })
        .collect()
}

/// What a throughput run pushes through the engine.
#[derive(Clone, Copy)]
struct Shape {
    items: u32,
    stages: u32,
    /// Per stage and per process.
    concurrency: u32,
    processes: u32,
}

async fn throughput(shape: Shape, url: Option<String>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Arc::new(scratch(
        dir.path(),
        shape.stages as usize,
        shape.concurrency,
        &url,
    )?);
    let store = project::open_store(&config).await?;
    let first = first_job(&config);
    let clock = Instant::now();
    for chunk in new_items(shape.items as usize).chunks(1000) {
        store.add_items(chunk, &first, now_millis()).await?;
    }
    let enqueue = clock.elapsed();
    // Closed and opened again, so that the server's counters taken next
    // hold the enqueue's work and none of it is counted in the run's.
    store.close().await;
    let server_before = server_counters(&url).await;
    let cpu_before = own_cpu();
    let store = project::open_store(&config).await?;
    let run = if shape.processes > 1 {
        throughput_processes(&config, &store, shape.processes).await?
    } else {
        let (summary, took) = until_idle(&config, &store, noop_executors(&config)).await?;
        Run {
            jobs: summary.attempts,
            took,
            done: summary.items_done,
            calls: Some(summary.store_calls),
            detail: String::new(),
        }
    };
    let cpu = own_cpu().saturating_sub(cpu_before);
    let server = match (server_before, server_counters(&url).await) {
        (Some(before), Some(after)) => Some(ServerDelta { before, after }),
        _ => None,
    };
    report_throughput(&url, shape, enqueue, &run, cpu, server)
}

/// The CPU time this process (and its waited-for children) used so far.
fn own_cpu() -> Duration {
    let ticks = ideamill_sys::process::read_stat(std::process::id()).map_or(0, |s| s.cpu_ticks());
    Duration::from_secs_f64(ticks as f64 / ideamill_sys::process::clock_ticks_per_second() as f64)
}

/// The PostgreSQL server's counters of the bench's database, when it runs on one.
async fn server_counters(url: &Option<String>) -> Option<ideamill_store::postgres::ServerCounters> {
    let url = url.as_deref()?;
    match ideamill_store::postgres::server_counters(url).await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("Could not read the server's counters: {e}");
            None
        }
    }
}

/// `bench telemetry`: no-op throughput with traces off and with export to
/// a dead collector (a loopback port nothing listens on: every request
/// fails at once, the worst case for the drop path), alternately so both
/// see the same machine. Each item makes 5 spans (root, 3 attempts, end).
async fn telemetry(items: u32, concurrency: u32, runs: u32) -> anyhow::Result<()> {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", listener.local_addr()?)
    };
    println!(
        "bench telemetry: {items} items x 3 no-op stages, concurrency {concurrency}, SQLite; dead collector at {dead}"
    );
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (k, endpoint) in [None, Some(dead.as_str())].into_iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let mut config = scratch(dir.path(), 3, concurrency, &None)?;
            config.telemetry.otlp_endpoint = endpoint.map(str::to_owned);
            let config = Arc::new(config);
            let store = project::open_store(&config).await?;
            let first = first_job(&config);
            for chunk in new_items(items as usize).chunks(1000) {
                store.add_items(chunk, &first, now_millis()).await?;
            }
            let telemetry = Arc::new(
                ideamill_telemetry::Telemetry::start(&config.telemetry)
                    .map_err(|e| anyhow::anyhow!(e))?,
            );
            let before = ideamill_telemetry::stats();
            let engine = Engine::new(
                config.clone(),
                store.clone(),
                noop_executors(&config),
                EngineOptions {
                    until_idle: true,
                    telemetry: Some(telemetry.clone()),
                    ..EngineOptions::default()
                },
            );
            let clock = Instant::now();
            let summary = engine.run(CancellationToken::new()).await?;
            let took = clock.elapsed();
            store.close().await;
            if let Some(t) = Arc::into_inner(telemetry) {
                t.shutdown(Duration::from_secs(10)).await;
            }
            let after = ideamill_telemetry::stats();
            let rate = summary.attempts as f64 / took.as_secs_f64();
            rates[k].push(rate);
            println!(
                "  {:<28} {} jobs in {:.2}s = {rate:.0} jobs/s; spans dropped {}, failed requests {}",
                if endpoint.is_some() {
                    "export to a dead collector"
                } else {
                    "traces off"
                },
                summary.attempts,
                took.as_secs_f64(),
                after.dropped - before.dropped,
                after.failures - before.failures,
            );
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, dead) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "  median: off {off:.0} jobs/s, dead collector {dead:.0} jobs/s ({:+.1}%)",
        (dead / off - 1.0) * 100.0
    );
    Ok(())
}

/// `bench sandbox`: a no-op command (`true`) through the real command
/// executor, confined and not, alternately so that both see the same
/// machine; then 3 confined no-op stages through the engine.
async fn sandbox(runs: u32, items: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let text = "[[stages]]\nname = \"off\"\nkind = \"command\"\ncommand = [\"true\"]\nsandbox = \"off\"\n\
                [[stages]]\nname = \"on\"\nkind = \"command\"\ncommand = [\"true\"]\n";
    let path = dir.path().join("ideamill.toml");
    std::fs::write(&path, text)?;
    let config = Arc::new(ideamill_core::config::parse(text, &path)?);
    let store = project::open_store(&config).await?;
    let executors = executors_for(&config, &store)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let now = now_millis();
    let context = ItemContext {
        item: ItemRow {
            id: 1,
            text: "a no-op".into(),
            metadata: serde_json::json!({}),
            state: ideamill_core::ItemState::Active,
            stage: None,
            round: 1,
            last_error: None,
            failure_class: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            trace_id: None,
        },
        outputs: Vec::new(),
        feedback: Vec::new(),
        traceparent: None,
    };
    let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let cancel = CancellationToken::new();
    for i in 0..runs {
        for (k, (name, executor)) in executors.iter().enumerate() {
            let job = ClaimedJob {
                id: i64::from(i) + 1,
                item_id: 1,
                stage: name.clone(),
                round: 1,
                attempt: 1,
                max_attempts: 1,
                lease_token: 1,
                run_at: now,
                claimed_at: now,
            };
            let clock = Instant::now();
            let done = executor.run(&job, &context, &cancel).await;
            samples[k].push(clock.elapsed());
            anyhow::ensure!(
                matches!(
                    done.result,
                    ideamill_core::machine::StageResult::Passed { .. }
                ),
                "the no-op stage `{name}` did not pass: {:?}",
                done.error
            );
        }
    }
    store.close().await;
    println!("bench sandbox ({runs} runs of `true` each, through the command executor)");
    let [mut off, mut on] = samples;
    report("  sandbox = \"off\": ", &mut off);
    report("  confined:         ", &mut on);
    let p50 = |s: &[Duration]| s[(s.len() - 1) / 2];
    println!(
        "  added at p50: {:.3} ms",
        (p50(&on).as_secs_f64() - p50(&off).as_secs_f64()) * 1e3
    );

    // The engine with confined no-op stages.
    let dir = tempfile::tempdir()?;
    let mut text = String::from("[engine]\nlease = \"30s\"\nheartbeat = \"2s\"\n");
    for i in 0..3 {
        text.push_str(&format!(
            "[[stages]]\nname = \"s{i}\"\nkind = \"command\"\ncommand = [\"true\"]\nconcurrency = 4\n"
        ));
    }
    let path = dir.path().join("ideamill.toml");
    std::fs::write(&path, &text)?;
    let config = Arc::new(ideamill_core::config::parse(&text, &path)?);
    let store = project::open_store(&config).await?;
    store
        .add_items(
            &new_items(items as usize),
            &first_job(&config),
            now_millis(),
        )
        .await?;
    let executors = executors_for(&config, &store)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let (summary, took) = until_idle(&config, &store, executors).await?;
    println!(
        "  engine, 3 confined no-op stages, concurrency 4 each: {} jobs in {:.2}s = {:.0} jobs/s ({} items done)",
        summary.attempts,
        took.as_secs_f64(),
        summary.attempts as f64 / took.as_secs_f64(),
        summary.items_done
    );
    Ok(())
}

/// One engine on `store` until nothing is left to do; the store is closed
/// after. Its summary and how long it ran.
async fn until_idle(
    config: &Arc<Config>,
    store: &Arc<dyn ideamill_store::Store>,
    executors: Vec<(String, Arc<dyn Executor>)>,
) -> anyhow::Result<(ideamill_engine::RunSummary, Duration)> {
    let engine = Engine::new(
        config.clone(),
        store.clone(),
        executors,
        EngineOptions {
            until_idle: true,
            ..EngineOptions::default()
        },
    );
    let clock = Instant::now();
    let summary = engine.run(CancellationToken::new()).await?;
    let took = clock.elapsed();
    store.close().await;
    Ok((summary, took))
}

async fn pickup(samples: u32, gap: Duration, url: Option<String>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Arc::new(scratch(dir.path(), 1, 4, &url)?);
    let store = project::open_store(&config).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let engine = Engine::new(
        config.clone(),
        store.clone(),
        noop_executors(&config),
        EngineOptions {
            progress: Some(tx),
            ..EngineOptions::default()
        },
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));
    let first = first_job(&config);

    // In-process: from the call that adds the item to its claim, each after
    // the gap (so that the last job's finish is not still being committed).
    // The add goes through the engine's own store handle, as the API's, the
    // dashboard's and the inbox's do, so a free slot takes the job in the
    // add itself (the hand-off).
    let mut local = Vec::new();
    let mut adds = Vec::new();
    for _ in 0..samples {
        tokio::time::sleep(gap).await;
        let t0 = Instant::now();
        let id = store.add_items(&new_items(1), &first, now_millis()).await?[0];
        adds.push(t0.elapsed());
        let claimed = wait_claim(&mut rx, id).await?;
        local.push(claimed.saturating_duration_since(t0));
    }

    // From another process: a child adds items one at a time and prints the
    // wall-clock time just before each add; we note the wall-clock time of
    // each claim.
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args([
            "bench",
            "adder",
            "--samples",
            &samples.to_string(),
            "--gap",
            &humantime::format_duration(gap).to_string(),
            "--config",
        ])
        .arg(&config.path)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the adder process")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<(i64, u128, u128)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut fields = line.split(' ').map(str::parse::<u128>);
            if let (Some(Ok(id)), Some(Ok(at)), Some(Ok(took))) =
                (fields.next(), fields.next(), fields.next())
            {
                let _ = line_tx.send((id as i64, at, took));
            }
        }
    });
    let mut claimed_at: HashMap<i64, u128> = HashMap::new();
    let mut added_at: HashMap<i64, u128> = HashMap::new();
    let mut remote_adds = Vec::new();
    // One timer for the whole wait: a timer renewed every turn of the loop
    // woke this process in the middle of the samples it measures.
    let deadline =
        tokio::time::sleep(Duration::from_secs(60 + u64::from(samples) / 10) + gap * samples);
    tokio::pin!(deadline);
    while claimed_at.len() < samples as usize || added_at.len() < samples as usize {
        tokio::select! {
            // When the dispatcher claimed it, as in process: not when
            // this task got round to reading the report.
            Some(p) = rx.recv() => if let Progress::Claimed { job, at } = p {
                claimed_at.insert(job.item_id, wall_micros().saturating_sub(at.elapsed().as_micros()));
            },
            Some((id, at, took)) = line_rx.recv() => {
                added_at.insert(id, at);
                remote_adds.push(Duration::from_micros(took as u64));
            },
            _ = &mut deadline => break,
        }
    }
    let _ = child.wait();
    let mut remote: Vec<Duration> = added_at
        .iter()
        .filter_map(|(id, at)| {
            claimed_at
                .get(id)
                .map(|c| Duration::from_micros(c.saturating_sub(*at) as u64))
        })
        .collect();
    shutdown.cancel();
    let summary = running.await??;
    store.close().await;

    println!("bench pickup ({}, {samples} samples each)", backend(&url));
    report("  in-process:    ", &mut local);
    println!(
        "    handed off in the add: {} of {samples} jobs",
        summary.store_calls.handed_off
    );
    report("    of which the add, until it returned: ", &mut adds);
    report("  other process: ", &mut remote);
    report(
        "    of which the add, until it returned: ",
        &mut remote_adds,
    );
    Ok(())
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    if samples.is_empty() {
        println!("{label}no samples");
        return;
    }
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label}p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}

async fn wait_claim(
    rx: &mut mpsc::UnboundedReceiver<Progress>,
    id: i64,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            p = rx.recv() => match p {
                Some(Progress::Claimed { job, at }) if job.item_id == id => return Ok(at),
                Some(_) => {}
                None => anyhow::bail!("the engine stopped"),
            },
            _ = &mut deadline => anyhow::bail!("item {id} was not picked up within 10 s"),
        }
    }
}

fn wall_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

async fn adder(config: &Path, samples: u32, gap: Duration) -> anyhow::Result<()> {
    let config = project::load_config(Some(config))?;
    let store = project::open_store(&config).await?;
    let first = first_job(&config);
    let mut out = std::io::stdout().lock();
    for _ in 0..samples {
        // Spaced out, so each sample measures a pickup from idle.
        tokio::time::sleep(gap).await;
        let at = wall_micros();
        let clock = Instant::now();
        let id = store.add_items(&new_items(1), &first, now_millis()).await?[0];
        writeln!(out, "{id} {at} {}", clock.elapsed().as_micros())?;
        out.flush()?;
    }
    store.close().await;
    Ok(())
}

/// What a throughput run did.
struct Run {
    jobs: u64,
    took: Duration,
    /// Items done in the store at the end.
    done: u64,
    /// The engine's store calls (one process only).
    calls: Option<ideamill_engine::StoreCalls>,
    detail: String,
}

/// The same run with `processes` engine processes sharing the store: child
/// processes of this binary (`bench worker`), started together.
async fn throughput_processes(
    config: &Config,
    store: &Arc<dyn ideamill_store::Store>,
    processes: u32,
) -> anyhow::Result<Run> {
    let exe = std::env::current_exe()?;
    let clock = Instant::now();
    let children = (0..processes)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["bench", "worker", "--config"])
                .arg(&config.path)
                .stdout(Stdio::piped())
                .spawn()
                .context("cannot start a bench worker process")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output())
            .collect::<std::io::Result<Vec<_>>>()
    })
    .await??;
    let took = clock.elapsed();
    let mut per_process = Vec::new();
    for out in &outputs {
        anyhow::ensure!(
            out.status.success(),
            "a bench worker failed: {}",
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let attempts: u64 = text
            .trim()
            .strip_prefix("attempts ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("a bench worker printed {text:?}"))?;
        per_process.push(attempts);
    }
    let done = store.status(now_millis()).await?.items.done;
    store.close().await;
    Ok(Run {
        jobs: per_process.iter().sum(),
        took,
        done,
        calls: None,
        detail: format!("; per process {per_process:?}"),
    })
}

/// The server's counters before and after a run.
struct ServerDelta {
    before: ideamill_store::postgres::ServerCounters,
    after: ideamill_store::postgres::ServerCounters,
}

/// Print a throughput run's figures; an error if some items did not finish.
/// The line with the rate is the one scripts read (`jobs/s`, after `= `):
/// the lines after it name neither.
fn report_throughput(
    url: &Option<String>,
    shape: Shape,
    enqueue: Duration,
    run: &Run,
    cpu: Duration,
    server: Option<ServerDelta>,
) -> anyhow::Result<()> {
    let Shape {
        items,
        stages,
        concurrency,
        processes,
    } = shape;
    let processes = match processes {
        1 => "1 process".to_string(),
        n => format!("{n} processes"),
    };
    println!(
        "bench throughput ({}, {stages} no-op stage{}, concurrency {concurrency} per stage, {processes})",
        backend(url),
        if stages == 1 { "" } else { "s" },
    );
    println!(
        "  enqueue: {items} items in {:.2}s ({:.0} items/s)",
        enqueue.as_secs_f64(),
        items as f64 / enqueue.as_secs_f64()
    );
    let (jobs, took, done) = (run.jobs, run.took, run.done);
    println!(
        "  run:     {jobs} jobs in {:.2}s = {:.0} jobs/s ({done} items done{})",
        took.as_secs_f64(),
        jobs as f64 / took.as_secs_f64(),
        run.detail
    );
    let per_job = |n: f64| n / jobs.max(1) as f64;
    let share = |t: Duration| 100.0 * t.as_secs_f64() / took.as_secs_f64();
    if let Some(c) = run.calls {
        println!(
            "  engine:  per job {:.3} claims, {:.3} finish batches ({:.1} attempts each), {:.2} context reads apart from the claim \
             ({:.0} µs each); dispatcher in claims {:.0}% of the run, completer in finishes {:.0}%",
            per_job(c.claims as f64),
            per_job(c.finish_batches as f64),
            jobs as f64 / c.finish_batches.max(1) as f64,
            per_job(c.context_reads as f64),
            c.context_time.as_secs_f64() * 1e6 / c.context_reads.max(1) as f64,
            share(c.claim_time),
            share(c.finish_time),
        );
    }
    println!(
        "  cpu:     {:.1} µs per job in ideamill ({:.0}% of one core)",
        cpu.as_secs_f64() * 1e6 / jobs.max(1) as f64,
        share(cpu)
    );
    if let Some(ServerDelta { before, after }) = server {
        let secs = took.as_secs_f64();
        let commits = (after.commits - before.commits) as f64;
        println!(
            "  server:  per job {:.3} transactions, {:.2} rows written, {:.0} WAL bytes; {:.0} commits and {:.0} WAL flushes per second",
            per_job(commits),
            per_job((after.rows_written - before.rows_written) as f64),
            per_job((after.wal_bytes - before.wal_bytes) as f64),
            commits / secs,
            (after.wal_syncs - before.wal_syncs) as f64 / secs,
        );
    }
    anyhow::ensure!(
        done == u64::from(items),
        "only {done} of {items} items finished"
    );
    Ok(())
}

/// `bench worker`: one engine of `throughput --processes N`.
async fn worker(config: &Path) -> anyhow::Result<()> {
    let config = Arc::new(project::load_config(Some(config))?);
    let store = project::open_store(&config).await?;
    let engine = Engine::new(
        config.clone(),
        store.clone(),
        noop_executors(&config),
        EngineOptions {
            until_idle: true,
            ..EngineOptions::default()
        },
    );
    let summary = engine.run(CancellationToken::new()).await?;
    store.close().await;
    println!("attempts {}", summary.attempts);
    Ok(())
}
