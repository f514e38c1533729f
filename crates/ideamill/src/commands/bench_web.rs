//! `ideamill bench web`: how fast the dashboard's pages and the API answer
//! with a large store (100,000 items by default, with a week of history:
//! every item through three stages, some failed, some still queued), served
//! on a real loopback socket as `ideamill run` serves them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ideamill_core::machine::{NextJob, Transition, first_job};
use ideamill_core::{AttemptOutcome, Config, Millis};
use ideamill_health::{Health, LogRing};
use ideamill_store::{ClaimedJob, Finish, NewItem, Store};
use ideamill_sys::clock::now_millis;

use crate::project;

const DAY: Millis = 86_400_000;
const BATCH: usize = 500;

const FORMATS: &[&str] = &[
    "CSV", "JSON", "YAML", "TOML", "XML", "Markdown", "HTML", "SQL",
];
const THINGS: &[&str] = &[
    "the phase of the moon",
    "tomorrow's weather",
    "a pomodoro timer",
    "git statistics",
    "disk usage",
    "a todo list",
    "train departures",
    "a zebra crossing simulator",
];

fn idea(i: usize) -> String {
    match i % 3 {
        0 => format!(
            "a CLI that converts {} to {} (variant {i})",
            FORMATS[i % FORMATS.len()],
            FORMATS[(i / 8 + 1) % FORMATS.len()]
        ),
        1 => format!(
            "a web page that shows {} (variant {i})",
            THINGS[(i / 3) % THINGS.len()]
        ),
        _ => format!(
            "a Python library for {} with tests (variant {i})",
            THINGS[(i / 7) % THINGS.len()]
        ),
    }
}

/// A scratch project with the scaffold's three stages (no-op commands, a
/// gate on the last), on `store` (a URL) or on SQLite in `dir`.
pub(super) fn scratch(dir: &std::path::Path, store: &Option<String>) -> anyhow::Result<Config> {
    let mut text = String::new();
    if let Some(url) = store {
        text.push_str(&format!("[store]\nurl = \"{url}\"\n"));
    }
    text.push_str("[engine]\nlease = \"30s\"\nheartbeat = \"2s\"\n[health]\nlisten = \"off\"\n");
    for (name, gate) in [
        ("outline", ""),
        ("implement", ""),
        (
            "qa",
            "gate = { retry_from = \"implement\", max_rounds = 3 }\n",
        ),
    ] {
        text.push_str(&format!(
            "[[stages]]\nname = \"{name}\"\nkind = \"command\"\ncommand = [\"true\"]\n{gate}"
        ));
    }
    let path = dir.join("ideamill.toml");
    std::fs::write(&path, &text)?;
    Ok(ideamill_core::config::parse(&text, &path)?)
}

/// A finish as an engine would send it, for a job that ran 20 s until `at`.
pub(super) fn finish(job: ClaimedJob, at: Millis, transition: Transition) -> Finish {
    let (outcome, output, error) = match &transition {
        Transition::Advance { output, .. } => {
            (AttemptOutcome::Succeeded, Some(output.clone()), None)
        }
        Transition::FailItem { reason, .. } => {
            (AttemptOutcome::Permanent, None, Some(reason.clone()))
        }
        _ => (
            AttemptOutcome::Error,
            None,
            Some("exit status 1".to_string()),
        ),
    };
    Finish {
        owner: "bench".into(),
        outcome,
        started_at: at - 20_000,
        finished_at: at,
        exit_code: Some(i32::from(outcome != AttemptOutcome::Succeeded)),
        error,
        output,
        stderr: None,
        usage: None,
        transition,
        round_hash: None,
        job,
    }
}

/// `items` items with a week of history, most of them done.
async fn fill(config: &Config, store: &dyn Store, items: usize) -> anyhow::Result<()> {
    let now = now_millis();
    let first = first_job(config);
    let stages: Vec<String> = config.stages.iter().map(|s| s.name.clone()).collect();
    // The newest 3% stay queued (added last, so that claims never take them).
    let queued = items * 3 / 100;
    let history = items - queued;
    let batches = history.div_ceil(BATCH);
    let mut done = 0usize;
    let clock = Instant::now();
    for b in 0..batches {
        let n = BATCH.min(history - b * BATCH);
        let t0 = now - 7 * DAY + (b as Millis) * (7 * DAY - 3_600_000) / batches as Millis;
        let new: Vec<NewItem> = (0..n)
            .map(|k| NewItem {
                text: idea(b * BATCH + k),
                metadata: serde_json::json!({}),
            })
            .collect();
        store.add_items(&new, &first, t0).await?;
        for (s, stage) in stages.iter().enumerate() {
            let at = t0 + (s as Millis + 1) * 60_000;
            let jobs = store
                .claim(stage, n as u32, "bench", at - 30_000, at + 600_000)
                .await?;
            let finishes: Vec<Finish> = jobs
                .into_iter()
                .map(|job| {
                    let fail = job.item_id % 13 == 0 && s == 1;
                    let transition = if fail {
                        Transition::FailItem {
                            reason:
                                "stage `implement` failed: exit status 2 (SyntaxError in main.py)"
                                    .into(),
                            feedback: None,
                            class: ideamill_core::FailureClass::Quality,
                        }
                    } else {
                        Transition::Advance {
                            output: format!("{stage} of item {} went fine\n", job.item_id),
                            next: stages.get(s + 1).map(|next| NextJob {
                                stage: next.clone(),
                                round: job.round,
                                max_attempts: 3,
                            }),
                        }
                    };
                    finish(job, at, transition)
                })
                .collect();
            for r in store.finish(&finishes).await? {
                r.context("a bench finish was refused")?;
            }
        }
        done += n;
        if b % 20 == 19 {
            eprintln!(
                "  … {done} items with history ({:.0}/s)",
                done as f64 / clock.elapsed().as_secs_f64()
            );
        }
    }
    let new: Vec<NewItem> = (history..items)
        .map(|i| NewItem {
            text: idea(i),
            metadata: serde_json::json!({}),
        })
        .collect();
    for chunk in new.chunks(BATCH) {
        store.add_items(chunk, &first, now_millis()).await?;
    }
    Ok(())
}

struct Figure {
    what: &'static str,
    path: String,
    bytes: usize,
    times: Vec<Duration>,
}

/// The dashboard and API over `store` on a loopback port, with open
/// access; its state (to forget what it caches) and a client for it.
pub(super) async fn serve(
    config: &Arc<Config>,
    store: &Arc<dyn Store>,
) -> anyhow::Result<(
    std::net::SocketAddr,
    ideamill_web::AppState,
    reqwest::Client,
)> {
    let health = Arc::new(Health::new(config, LogRing::new(10)));
    let state = ideamill_web::AppState::new(
        config.clone(),
        store.clone(),
        health,
        ideamill_web::Access::Open,
    );
    let addr = ideamill_web::start("127.0.0.1:0".parse()?, state.clone())
        .await
        .context("cannot listen on 127.0.0.1")?;
    // reqwest is built without a TLS provider of its own (ring, as the
    // model providers use); plain HTTP needs none, but the client insists.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    Ok((addr, state, client))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Figure {
    fn line(&self) -> String {
        let mut t = self.times.clone();
        t.sort();
        let q = |p: f64| t[((t.len() - 1) as f64 * p).round() as usize];
        format!(
            "  {:<34} {:>8.1} {:>8.1} {:>8.1} {:>9}   {}",
            self.what,
            ms(q(0.5)),
            ms(q(0.95)),
            ms(t[t.len() - 1]),
            self.bytes,
            self.path
        )
    }
}

async fn time_get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let r = client.get(format!("{base}{path}")).send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    anyhow::ensure!(status.is_success(), "GET {path} answered {status}");
    Ok((t.elapsed(), body.len()))
}

pub async fn run(items: u32, requests: u32) -> anyhow::Result<ExitCode> {
    let items = items.max(10) as usize;
    let dir = tempfile::tempdir()?;
    let config = Arc::new(scratch(dir.path(), &None)?);
    let store = project::open_store(&config).await?;
    eprintln!("bench web: filling a scratch SQLite store with {items} items (a week of history)…");
    let clock = Instant::now();
    fill(&config, &*store, items).await?;
    eprintln!("  filled in {:.1}s", clock.elapsed().as_secs_f64());
    // What the verdict's reads cost, one by one.
    let now = now_millis();
    let t = Instant::now();
    store.status(now).await?;
    let status = t.elapsed();
    let t = Instant::now();
    store.attempt_stats(now - 15 * 60_000).await?;
    let stats = t.elapsed();
    let t = Instant::now();
    let _ = ideamill_health::facts::gather(&config, &*store, now).await;
    let gather = t.elapsed();
    eprintln!(
        "  the verdict's reads: status {:.1} ms, attempt stats {:.1} ms, all facts {:.1} ms",
        ms(status),
        ms(stats),
        ms(gather)
    );
    let (addr, state, client) = serve(&config, &store).await?;
    let base = format!("http://{addr}");
    let mid = (items / 2) as i64;
    let pages: Vec<(&'static str, String)> = vec![
        ("overview (/)", "/".into()),
        ("items, first page", "/items".into()),
        ("items, failed", "/items?state=failed".into()),
        ("items, stage qa", "/items?stage=qa".into()),
        ("items, search “csv json”", "/items?q=csv+json".into()),
        (
            "items, search “variant 4242” (rare)",
            "/items?q=variant+4242".into(),
        ),
        (
            "items, a deep page (before)",
            format!("/items?before={}", (items as i64 / 20).max(2)),
        ),
        ("one item", format!("/items/{mid}")),
        ("API: items", "/api/items?limit=50".into()),
        ("API: status and verdict", "/api/status".into()),
        ("API: one item", format!("/api/items/{mid}")),
        ("live fragment: overview", "/ui/overview".into()),
    ];
    println!(
        "bench web: {items} items in a SQLite store ({} attempts of history), {requests} requests per page, one connection, release build: {}",
        (items * 97 / 100) * 3,
        !cfg!(debug_assertions)
    );
    println!(
        "  {:<34} {:>8} {:>8} {:>8} {:>9}   path",
        "page", "p50 ms", "p95 ms", "max ms", "bytes"
    );
    // Every timed request finds nothing reused from the one before (the
    // verdict is reused for 2 s, the charts' data for 10 s): what a first
    // visit costs.
    let mut overview_p50 = Duration::ZERO;
    let charts: Vec<(&'static str, String)> = vec![
        ("API: charts, 6 hours", "/api/activity?hours=6".into()),
        ("API: charts, 7 days", "/api/activity?hours=168".into()),
    ];
    for (what, path) in pages.iter().chain(&charts) {
        time_get(&client, &base, path).await?;
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..requests.max(1) {
            state.forget_cached();
            let (t, b) = time_get(&client, &base, path).await?;
            times.push(t);
            bytes = b;
        }
        let f = Figure {
            what,
            path: path.clone(),
            bytes,
            times,
        };
        if path == "/" {
            let mut t = f.times.clone();
            t.sort();
            overview_p50 = t[t.len() / 2];
        }
        println!("{}", f.line());
    }
    // What a browser fetches to show the overview the first time: the page,
    // its stylesheets and scripts, and the charts' data (one after another,
    // as a lower bound of a cold load over one connection).
    let mut cold_times = Vec::new();
    for _ in 0..requests.clamp(1, 5) {
        state.forget_cached();
        let t = Instant::now();
        for path in [
            "/",
            "/assets/app.css",
            "/assets/vendor/uplot/uPlot.min.css",
            "/assets/vendor/htmx/htmx.min.js",
            "/assets/vendor/uplot/uPlot.iife.min.js",
            "/assets/app.js",
            "/api/activity?hours=6",
        ] {
            time_get(&client, &base, path).await?;
        }
        cold_times.push(t.elapsed());
    }
    cold_times.sort();
    println!(
        "  overview with its assets and chart data, fetched one by one: {:.1} ms (median of {})",
        ms(cold_times[cold_times.len() / 2]),
        cold_times.len()
    );
    println!(
        "  page load (overview HTML, p50, nothing cached): {:.1} ms",
        ms(overview_p50)
    );
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
