//! ideamill's HTTP server, inside `ideamill run`: the dashboard (server
//! rendered, live through server-sent events), the JSON API described by
//! `/api/openapi.json`, and the probes (`/healthz`, `/readyz`, `/metrics`).
//!
//! A library rather than a module of the binary so that its handlers are
//! tested through [`app`] with `tower::ServiceExt::oneshot`, without a socket
//! (`tests/api.rs`), like any other crate's API.
//!
//! Handlers run on the engine's event loop (a single-threaded runtime), so
//! nothing here blocks: store calls are async with a deadline, file reads and
//! syntax highlighting go to the blocking pool, and every page is bounded
//! (paginated lists, capped file views). An answer from `/healthz` is itself
//! evidence that the loop runs.
//!
//! Layout: `auth.rs` (tokens, cookies, cross-site checks), `error.rs` (the
//! one `ApiError`), `api/` (one file per JSON resource), `pages/` (one file
//! per page), `live.rs` (the SSE broadcaster), `probes.rs`, `assets.rs`
//! (embedded CSS, JS and vendored libraries), `highlight.rs` (a small syntax
//! highlighter for generated files), `view.rs` (what pages and the API share).

pub mod api;
mod assets;
pub mod auth;
pub mod error;
pub mod highlight;
mod live;
mod pages;
mod probes;
mod view;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use ideamill_core::{Config, Millis};
use ideamill_health::Health;
use ideamill_health::facts;
use ideamill_health::verdict::{Verdict, judge};
use ideamill_store::{GateLift, StatusSnapshot, Store};

pub use auth::Access;
pub use error::{ApiError, ApiResult};

/// How long a request waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[doc(hidden)]
pub struct Inner {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    health: Arc<Health>,
    access: Access,
    live: live::Live,
    templates: pages::Templates,
    /// The charts' data, reused for a few seconds: charts over hours do not
    /// need a fresher read than that, and it is the page's costliest one.
    activity: Mutex<Option<api::activity::Cached>>,
    /// The last verdict with the change marker it was judged at: reused
    /// while nothing changed, for a little while (heartbeats age without
    /// changing the marker).
    judged: Mutex<Option<Judged>>,
    /// The QA lift (`/metrics`, the dashboard, `/api/qa`), reused while no
    /// attempt was added: it reads every finished gate job.
    gates: Mutex<Option<GatesCached>>,
    /// Whether an engine runs in this process (not with `--role web`):
    /// `/readyz` then waits for it to register.
    runs_engine: bool,
}

#[derive(Clone)]
struct Judged {
    at: std::time::Instant,
    marker: ideamill_store::ChangeMarker,
    verdict: Verdict,
    snapshot: Option<StatusSnapshot>,
}

/// How long a verdict is reused while the store's marker stays the same.
const JUDGED_FRESH: Duration = Duration::from_secs(2);

/// The QA lift as of the store's newest attempt.
struct GatesCached {
    at: std::time::Instant,
    attempt: i64,
    lifts: Vec<GateLift>,
}

/// How long the QA lift is reused at most while no attempt was added (so
/// that a prune shows).
const GATES_FRESH: Duration = Duration::from_secs(60);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// The state of a server over `store`, judged by `config`, with `access` deciding who may call.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        health: Arc<Health>,
        access: Access,
    ) -> AppState {
        AppState::build(config, store, health, access, true)
    }

    /// The state of a process that serves HTTP only (`--role web`): ready
    /// once the store answers, with no engine to wait for.
    pub fn without_engine(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        health: Arc<Health>,
        access: Access,
    ) -> AppState {
        AppState::build(config, store, health, access, false)
    }

    fn build(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        health: Arc<Health>,
        access: Access,
        runs_engine: bool,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                live: live::Live::new(),
                config,
                store,
                health,
                access,
                templates: pages::Templates::new(),
                activity: Mutex::new(None),
                judged: Mutex::new(None),
                gates: Mutex::new(None),
                runs_engine,
            }),
        }
    }

    /// Forget what is reused between requests (the verdict, the charts'
    /// data), so that `ideamill bench web` times what a first visit costs.
    #[doc(hidden)]
    pub fn forget_cached(&self) {
        *lock(&self.judged) = None;
        *lock(&self.activity) = None;
        *lock(&self.gates) = None;
    }

    /// The QA lift of the configured gates per model, from the store (so
    /// every engine sharing it shows the same). Every gate judgement adds
    /// an attempt, so the last answer is reused while the store's newest
    /// attempt is the same (one cheap read), for at most [`GATES_FRESH`]:
    /// never stale after a judgement, and read at most once per change
    /// however many pages and scrapers ask.
    async fn gate_lift(&self) -> ApiResult<Vec<GateLift>> {
        let attempt = self.call(self.store.change_marker()).await?.attempt;
        if let Some(c) = lock(&self.gates).as_ref()
            && c.attempt == attempt
            && c.at.elapsed() < GATES_FRESH
        {
            return Ok(c.lifts.clone());
        }
        let gates: Vec<String> = self
            .config
            .stages
            .iter()
            .filter(|s| s.gate.is_some())
            .map(|s| s.name.clone())
            .collect();
        let tallies = self.call(self.store.gate_tallies(&gates)).await?;
        let lifts = ideamill_store::gate_lift(&tallies);
        *lock(&self.gates) = Some(GatesCached {
            at: std::time::Instant::now(),
            attempt,
            lifts: lifts.clone(),
        });
        Ok(lifts)
    }

    /// A store call with the request deadline.
    async fn call<T>(&self, f: impl Future<Output = ideamill_store::Result<T>>) -> ApiResult<T> {
        match tokio::time::timeout(STORE_TIMEOUT, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ApiError::store_timeout(STORE_TIMEOUT.as_secs())),
        }
    }

    /// The health verdict, judged as `ideamill status` judges it, and the
    /// snapshot it saw (none when the store failed).
    async fn verdict(&self, now: Millis) -> (Verdict, Option<StatusSnapshot>) {
        let marker = tokio::time::timeout(STORE_TIMEOUT, self.store.change_marker())
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(m) = marker
            && let Some(j) = lock(&self.judged).as_ref()
            && j.marker == m
            && j.at.elapsed() < JUDGED_FRESH
        {
            return (j.verdict.clone(), j.snapshot.clone());
        }
        let (verdict, snapshot) = self.judge(now).await;
        if let Some(marker) = marker {
            *lock(&self.judged) = Some(Judged {
                at: std::time::Instant::now(),
                marker,
                verdict: verdict.clone(),
                snapshot: snapshot.clone(),
            });
        }
        (verdict, snapshot)
    }

    async fn judge(&self, now: Millis) -> (Verdict, Option<StatusSnapshot>) {
        let gathered = tokio::time::timeout(STORE_TIMEOUT, async {
            let mut f = facts::gather(&self.config, &*self.store, now).await;
            match self.store.status(now).await {
                Ok(s) => f.snapshot = Some(s),
                Err(e) => f.store_error = Some(e.to_string()),
            }
            f
        })
        .await;
        let f = gathered.unwrap_or_else(|_| ideamill_health::verdict::Facts {
            now,
            store_error: Some(format!(
                "the store did not answer within {} s",
                STORE_TIMEOUT.as_secs()
            )),
            ..Default::default()
        });
        (judge(&self.config, &f), f.snapshot)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every route.
pub fn app(state: AppState) -> Router {
    Router::new()
        .nest("/api", api::router())
        .route("/", get(pages::overview::page))
        .route("/items", get(pages::items::page))
        .route("/items/{id}", get(pages::item::page))
        .route("/add", get(pages::add::page).post(pages::add::submit))
        .route("/ui/overview", get(pages::overview::fragment))
        .route("/ui/items", get(pages::items::fragment))
        .route("/ui/items/{id}", get(pages::item::fragment))
        .route("/ui/items/{id}/retry", post(pages::item::retry))
        .route("/ui/items/{id}/cancel", post(pages::item::cancel))
        .route("/login", get(pages::login::page).post(pages::login::submit))
        .route("/logout", post(pages::login::logout))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .route("/assets/{*path}", get(assets::serve))
        .fallback(pages::not_found)
        .method_not_allowed_fallback(auth::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state)
}

/// Bind `addr` and serve in the background; returns the bound address. A
/// listener that cannot bind is a warning, not a reason to stop the engine
/// (another engine on this machine may hold the port).
pub async fn start(addr: SocketAddr, state: AppState) -> Option<SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "The HTTP server (dashboard, API, /healthz, /metrics) is off: cannot listen on {addr}: {e}"
            );
            return None;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        "Dashboard and API on http://{local}/ ({}); probes /healthz, /readyz, /metrics",
        if state.access.is_open() {
            "loopback: this machine only"
        } else {
            "the access token is required"
        }
    );
    *lock(&state.health.listen) = Some(local.to_string());
    tokio::spawn(serve(listener, app(state)));
    Some(local)
}

/// Connections served at once: 256, or a quarter of the open-file limit if
/// that is less; more wait in the kernel's backlog, so that idle clients
/// can never use up the file descriptors stages need.
pub fn max_connections() -> usize {
    let files = ideamill_sys::process::open_files_limit()
        .map_or(1024, |n| usize::try_from(n).unwrap_or(usize::MAX));
    (files / 4).clamp(4, 256)
}

/// A client that sends no complete request head for this long, on a new
/// connection or between requests of a kept-alive one, is disconnected.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `app` on `listener`: HTTP/1 with a header-read timeout (which also
/// ends idle keep-alive connections) and at most [`max_connections`]. An
/// accept that fails for lack of file descriptors waits and tries again.
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections()));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS: the connection waits in the backlog.
                tracing::warn!("The HTTP server cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("An HTTP connection ended: {e}");
            }
        });
    }
}
