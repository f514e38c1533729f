//! The exporter: spans go into a bounded queue with `try_send` (a full
//! queue drops the span and counts it, never waits), and a task of its own
//! sends them in batches to `<otlp_endpoint>/v1/traces`, each request
//! bounded by a timeout. A collector that is down or slow costs the engine
//! a failed `try_send` per span at most; what was lost is counted
//! ([`stats`]: `/metrics`, `doctor`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ideamill_core::config::{HeaderValue, TelemetryConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::proto::{Origin, export_request};
use crate::span::{Attr, SpanRecord, TraceId};

/// Spans waiting to be sent; past this many, new ones are dropped.
const QUEUE: usize = 4096;
/// Spans per request at most.
const BATCH: usize = 512;
/// How long a span may wait for others to fill its batch.
const LINGER: Duration = Duration::from_millis(500);
/// One request's whole time.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the exporter of this process did since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans lost: the queue was full, or their request failed.
    pub dropped: u64,
    /// Requests that failed (collector unreachable, slow or refusing).
    pub failures: u64,
    /// The last failure, for `doctor` and the log.
    pub last_error: Option<String>,
}

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// This process's exporter figures (one exporter per process, so these are
/// process-wide, like the metrics that show them).
pub fn stats() -> Stats {
    Stats {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        failures: FAILURES.load(Ordering::Relaxed),
        // Never waits: the watchdog's snapshot reads this too.
        last_error: LAST_ERROR.try_lock().ok().and_then(|e| e.clone()),
    }
}

/// Traces on or off; cheap to share (`Arc`) and to ask.
pub struct Telemetry {
    on: Option<On>,
}

struct On {
    tx: mpsc::Sender<SpanRecord>,
    task: JoinHandle<()>,
    sample_ratio: f64,
    capture_content: bool,
}

impl Telemetry {
    /// No traces.
    pub fn off() -> Telemetry {
        Telemetry { on: None }
    }

    /// The exporter `config` asks for, its task spawned on the current
    /// runtime; off when `otlp_endpoint` is unset. An error names a header
    /// whose variable is unset, never a value.
    pub fn start(config: &TelemetryConfig) -> Result<Telemetry, String> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(Telemetry::off());
        };
        let client = client(config)?;
        let url = format!("{endpoint}/v1/traces");
        let origin = origin(config);
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(send_batches(client, url, origin, rx));
        Ok(Telemetry {
            on: Some(On {
                tx,
                task,
                sample_ratio: config.sample_ratio,
                capture_content: config.capture_content,
            }),
        })
    }

    /// Whether spans are sent at all.
    pub fn enabled(&self) -> bool {
        self.on.is_some()
    }

    /// Whether spans of `trace` are sent: on, and the trace sampled.
    pub fn traced(&self, trace: &TraceId) -> bool {
        self.on
            .as_ref()
            .is_some_and(|on| trace.sampled(on.sample_ratio))
    }

    /// Whether model-call spans carry prompts and completions.
    pub fn capture_content(&self) -> bool {
        self.on.as_ref().is_some_and(|on| on.capture_content)
    }

    /// Queue `span` for export; never waits. A full queue drops it, counted.
    pub fn record(&self, span: SpanRecord) {
        let Some(on) = &self.on else { return };
        if !span.trace_id.sampled(on.sample_ratio) {
            return;
        }
        if on.tx.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Send what is queued, waiting at most `limit`; what is left is
    /// dropped and counted.
    pub async fn shutdown(self, limit: Duration) {
        let Some(On { tx, mut task, .. }) = self.on else {
            return;
        };
        drop(tx);
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("Traces not sent within {limit:?} of stopping were dropped");
        }
    }
}

fn client(config: &TelemetryConfig) -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/x-protobuf"),
    );
    for (name, value) in &config.headers {
        let value = match value {
            HeaderValue::Literal(v) => v.clone(),
            HeaderValue::Env(var) => std::env::var(var).map_err(|_| {
                format!("[telemetry] header `{name}`: the environment variable {var} is not set")
            })?,
        };
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("[telemetry] header `{name}` is not a valid header name"))?;
        let mut value = reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| format!("[telemetry] header `{name}` has a value no header can hold"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
        .user_agent(concat!("ideamill/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| format!("cannot set up the HTTP client for traces: {e}"))
}

fn origin(config: &TelemetryConfig) -> Origin {
    let mut resource: Vec<(String, Attr)> = vec![
        ("service.name".into(), config.service_name.clone().into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        (
            "host.name".into(),
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default()
                .into(),
        ),
        ("process.pid".into(), std::process::id().into()),
    ];
    for (k, v) in &config.resource_attributes {
        resource.retain(|(key, _)| key != k);
        resource.push((k.clone(), v.clone().into()));
    }
    Origin {
        resource,
        scope: ("ideamill".into(), env!("CARGO_PKG_VERSION").into()),
    }
}

async fn send_batches(
    client: reqwest::Client,
    url: String,
    origin: Origin,
    mut rx: mpsc::Receiver<SpanRecord>,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        let body = export_request(&origin, &batch);
        let n = batch.len() as u64;
        match send(&client, &url, body).await {
            Ok(()) => {
                EXPORTED.fetch_add(n, Ordering::Relaxed);
                if failing {
                    tracing::info!("Traces reach the collector again");
                    failing = false;
                }
            }
            Err(e) => {
                DROPPED.fetch_add(n, Ordering::Relaxed);
                FAILURES.fetch_add(1, Ordering::Relaxed);
                // Once per outage in the log; every failure in the counters.
                if !failing {
                    tracing::warn!("Could not send {n} span(s) to the collector: {e}");
                    failing = true;
                }
                *LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    }
}

async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let response = client
        .post(url)
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

/// A request error without its URL (it may hold a password).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    }
}

/// Send an empty export request to the collector `config` names (what
/// `doctor` does): `Ok` when it answers with success.
pub async fn probe(config: &TelemetryConfig) -> Result<(), String> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(());
    };
    let client = client(config)?;
    send(&client, &format!("{endpoint}/v1/traces"), Vec::new()).await
}
