//! `ideamill bench saturation`: how busy `ideamill run` keeps a provider
//! whose `max_concurrency` is the only limit, under a backlog. A fake
//! OpenAI-compatible provider on loopback (its own thread and runtime)
//! answers each call after a fixed time and notes when each call began and
//! ended; `ideamill run --until-idle` (a child process, as shipped) works a
//! scratch project whose `llm` stages may each run every item at once. The
//! figure is calls in flight over the limit, from the first call's start to
//! the last one's end: ramp-up and tail included.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::routing::post;
use ideamill_core::machine::first_job;
use ideamill_sys::clock::now_millis;

use crate::project;

/// What `bench saturation` runs.
#[derive(Debug, clap::Args)]
pub struct SaturationArgs {
    /// Items in the backlog, added before the engine starts.
    #[arg(long, default_value_t = 60)]
    ideas: u32,
    /// `llm` stages each item goes through.
    #[arg(long, default_value_t = 2)]
    stages: u32,
    /// The provider's `max_concurrency`.
    #[arg(long, default_value_t = 8)]
    limit: u32,
    /// How long the fake provider takes to answer a call.
    #[arg(long, default_value = "400ms")]
    call: String,
    /// Each stage's `concurrency` [default: the number of ideas, so that the
    /// provider's limit is the only one].
    #[arg(long)]
    concurrency: Option<u32>,
    /// Runs, each on a fresh scratch project.
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

/// The fake provider's record: each call's start and end, and how many
/// were in flight at most.
#[derive(Default)]
struct Calls {
    spans: Mutex<Vec<(Instant, Instant)>>,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

struct Fake {
    calls: Arc<Calls>,
    call_time: Duration,
}

async fn chat(State(fake): State<Arc<Fake>>, _body: String) -> axum::response::Response {
    let start = Instant::now();
    let now = fake.calls.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    fake.calls.most.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(fake.call_time).await;
    fake.calls.in_flight.fetch_sub(1, Ordering::SeqCst);
    let end = Instant::now();
    fake.calls
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((start, end));
    let body = serde_json::json!({
        "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    });
    axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    ))
}

/// Serve the fake provider on a thread of its own, so that its timing does
/// not share a runtime with anything measured.
fn start_fake(call_time: Duration) -> anyhow::Result<(SocketAddr, Arc<Calls>)> {
    let calls = Arc::new(Calls::default());
    let fake = Arc::new(Fake {
        calls: calls.clone(),
        call_time,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("fake-provider".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(rt) = rt else { return };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = axum::Router::new()
                    .route("/v1/chat/completions", post(chat))
                    .with_state(fake);
                let _ = axum::serve(listener, app).await;
            });
        })?;
    Ok((addr, calls))
}

fn scratch(dir: &Path, addr: SocketAddr, args: &SaturationArgs) -> anyhow::Result<()> {
    let mut text = format!(
        "[engine]\nlease = \"30s\"\nheartbeat = \"2s\"\n[health]\nlisten = \"off\"\n\
         [providers.fake]\nkind = \"openai\"\nbase_url = \"http://{addr}/v1\"\nmodel = \"fake\"\n\
         stream = false\nmax_concurrency = {}\n",
        args.limit
    );
    for i in 0..args.stages {
        // Each stage may run the whole backlog at once: the provider's
        // limit is the only one.
        text.push_str(&format!(
            "[[stages]]\nname = \"s{i}\"\nkind = \"llm\"\nprovider = \"fake\"\nprompt = \"prompt.md\"\nconcurrency = {}\n",
            stage_concurrency(args)
        ));
    }
    std::fs::write(dir.join("ideamill.toml"), text)?;
    std::fs::write(dir.join("prompt.md"), "Write code for: {{ idea }}\n")?;
    Ok(())
}

fn stage_concurrency(args: &SaturationArgs) -> u32 {
    args.concurrency.unwrap_or(args.ideas).clamp(1, 1024)
}

/// One run's figures.
struct Run {
    calls: usize,
    most: usize,
    window: Duration,
    saturation: f64,
    first_call_after: Duration,
    ramp: Duration,
    tail: Duration,
    handoff: Vec<Duration>,
}

/// Calls in flight over the limit, from the first start to the last end.
fn measure(spans: &mut [(Instant, Instant)], limit: usize, started: Instant) -> Option<Run> {
    spans.sort();
    let first = spans.first()?.0;
    let last = spans.iter().map(|s| s.1).max()?;
    let window = last - first;
    let busy: f64 = spans.iter().map(|(a, b)| (*b - *a).as_secs_f64()).sum();
    // The in-flight count over time, from the starts and ends in order.
    let mut edges: Vec<(Instant, i32)> = spans
        .iter()
        .flat_map(|(a, b)| [(*a, 1), (*b, -1)])
        .collect();
    edges.sort_by_key(|(at, delta)| (*at, *delta));
    let mut level = 0i32;
    let mut full_at = None;
    let mut last_full_end = first;
    for (at, delta) in &edges {
        level += delta;
        if level as usize >= limit {
            full_at.get_or_insert(*at);
        }
        if *delta < 0 && level as usize == limit - 1 {
            last_full_end = *at;
        }
    }
    // A free slot's handoff: from a call's end to the next call's start.
    let mut ends: Vec<Instant> = spans.iter().map(|s| s.1).collect();
    ends.sort();
    let mut starts = spans.iter().map(|s| s.0).peekable();
    let mut handoff = Vec::new();
    for end in ends {
        while starts.peek().is_some_and(|s| *s < end) {
            starts.next();
        }
        if let Some(next) = starts.peek() {
            handoff.push(*next - end);
            starts.next();
        }
    }
    Some(Run {
        calls: spans.len(),
        most: 0,
        window,
        saturation: busy / (limit as f64 * window.as_secs_f64()),
        first_call_after: first.saturating_duration_since(started),
        ramp: full_at.map_or(window, |at| at - first),
        tail: last - last_full_end,
        handoff,
    })
}

pub async fn run(args: SaturationArgs) -> anyhow::Result<()> {
    let call_time = ideamill_core::duration::parse_duration(&args.call)
        .map_err(|e| anyhow::anyhow!("--call: {e}"))?;
    if cfg!(debug_assertions) {
        println!("note: a debug build; build with --release for representative figures\n");
    }
    println!(
        "bench saturation: {} ideas x {} llm stages, a fake provider answering in {:?}, max_concurrency {} stage concurrency {}",
        args.ideas,
        args.stages,
        call_time,
        args.limit,
        stage_concurrency(&args)
    );
    let mut figures = Vec::new();
    for _ in 0..args.runs {
        let (addr, calls) = start_fake(call_time)?;
        let dir = tempfile::tempdir()?;
        scratch(dir.path(), addr, &args)?;
        let config = project::load_config(Some(&dir.path().join("ideamill.toml")))?;
        let store = project::open_store(&config).await?;
        let items = super::bench::new_items(args.ideas as usize);
        store
            .add_items(&items, &first_job(&config), now_millis())
            .await?;
        store.close().await;
        let started = Instant::now();
        let status = tokio::process::Command::new(std::env::current_exe()?)
            .args(["run", "--until-idle", "--no-supervisor"])
            .current_dir(dir.path())
            .env_remove("IDEAMILL_CONFIG")
            .env("IDEAMILL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("cannot start `ideamill run`")?;
        let took = started.elapsed();
        anyhow::ensure!(status.success(), "`ideamill run` failed: {status}");
        let mut spans = std::mem::take(&mut *calls.spans.lock().unwrap_or_else(|e| e.into_inner()));
        let expected = (args.ideas * args.stages) as usize;
        anyhow::ensure!(
            spans.len() == expected,
            "the provider saw {} calls, not {expected}",
            spans.len()
        );
        let mut run = measure(&mut spans, args.limit as usize, started)
            .context("the provider saw no call")?;
        run.most = calls.most.load(Ordering::SeqCst);
        run.handoff.sort();
        let q = |p: f64| {
            run.handoff
                .get(((run.handoff.len().max(1) - 1) as f64 * p).round() as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "  {} calls in {:.2} s (run took {:.2} s); at most {} in flight: saturation {:.1}% \
             (ideal window {:.2} s); first call {:.0} ms after start, {} in flight after {:.0} ms more, \
             tail {:.0} ms; a freed slot's next call after p50 {:.2} ms, p99 {:.2} ms",
            run.calls,
            run.window.as_secs_f64(),
            took.as_secs_f64(),
            run.most,
            run.saturation * 100.0,
            (run.calls as f64 / f64::from(args.limit)).ceil() * call_time.as_secs_f64(),
            run.first_call_after.as_secs_f64() * 1e3,
            args.limit,
            run.ramp.as_secs_f64() * 1e3,
            run.tail.as_secs_f64() * 1e3,
            q(0.5),
            q(0.99),
        );
        figures.push(run.saturation);
    }
    figures.sort_by(f64::total_cmp);
    if let Some(median) = figures.get(figures.len() / 2) {
        println!(
            "  median saturation {:.1}% (target: at least 98%)",
            median * 100.0
        );
    }
    Ok(())
}
