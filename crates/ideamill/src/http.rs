//! The engine's small HTTP listener (loopback by default): `/healthz`,
//! `/readyz` and `/metrics` in Prometheus text format. The dashboard and API
//! will join this router later.
//!
//! Handlers run on the engine's event loop, so an answer from `/healthz` is
//! itself evidence that the loop runs; it also checks the pulse's beat age.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ideamill_core::Config;
use ideamill_engine::health::Health;
use ideamill_engine::health::metrics::Live;
use ideamill_engine::now_millis;
use ideamill_store::Store;

/// How long a probe waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AppState {
    /// Unused by the probes; the dashboard's routes will need it.
    #[allow(dead_code)]
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub health: Arc<Health>,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Bind `addr` and serve in the background. A listener that cannot bind is
/// a warning, not a reason to stop the engine (another engine on this
/// machine may hold the port).
pub async fn start(addr: &str, state: AppState) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "The HTTP listener (/healthz, /metrics) is off: cannot listen on {addr}: {e}"
            );
            return;
        }
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    tracing::info!("Serving /healthz, /readyz and /metrics on http://{local}");
    *state
        .health
        .listen
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(local);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app(state)).await {
            tracing::warn!("The HTTP listener stopped: {e}");
        }
    });
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// 200 while the event loop beats within `stall_after`; 503 otherwise.
async fn healthz(State(s): State<AppState>) -> Response {
    let age = s.health.beat_age();
    if age <= s.health.stall_after {
        text(
            StatusCode::OK,
            format!("ok: the event loop beat {} ms ago\n", age.as_millis()),
        )
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: the event loop has not beaten for {} ms\n",
                age.as_millis()
            ),
        )
    }
}

/// 200 when the store answers (it was opened, so its migrations are applied).
async fn readyz(State(s): State<AppState>) -> Response {
    match tokio::time::timeout(STORE_TIMEOUT, s.store.queue_depth(now_millis())).await {
        Ok(Ok(_)) if s.health.process().is_some() => text(
            StatusCode::OK,
            "ready: store reachable, engine registered\n".into(),
        ),
        Ok(Ok(_)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the engine is still starting\n".into(),
        ),
        Ok(Err(e)) => {
            tracing::warn!("Readiness check: the store failed: {e}");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the store failed (see the engine's log)\n".into(),
            )
        }
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store did not answer within {} s\n",
                STORE_TIMEOUT.as_secs()
            ),
        ),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let now = now_millis();
    let items = match tokio::time::timeout(STORE_TIMEOUT, s.store.status(now)).await {
        Ok(Ok(snapshot)) => Some(snapshot.items),
        _ => None,
    };
    let (lag, lag_max) = s.health.lag();
    let live = Live {
        items,
        queue: s.health.queue(),
        heartbeat_age: s.health.beat_age(),
        loop_lag: lag,
        loop_lag_max: lag_max,
        in_flight: s.health.in_flight(now).map_or(0, |j| j.len() as u64),
        started_at_secs: s.health.started_at as f64 / 1000.0,
    };
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.health.metrics.render(&live),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn state() -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ideamill.toml");
        let text = "[[stages]]\nname = \"a\"\nkind = \"command\"\ncommand = [\"true\"]\n";
        let config = Arc::new(ideamill_core::config::parse(text, &path).unwrap());
        let store = crate::project::open_store(&config).await.unwrap();
        let health = Arc::new(Health::new(
            &config,
            ideamill_engine::health::LogRing::new(10),
        ));
        (
            dir,
            AppState {
                config,
                store,
                health,
            },
        )
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let (_dir, s) = state().await;
        let (status, body) = get(app(s.clone()), "/healthz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Not registered yet: alive but not ready.
        let (status, _) = get(app(s.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, body) = get(app(s.clone()), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for series in [
            "ideamill_items{state=\"active\"} 0",
            "ideamill_queue_jobs{stage=\"a\",state=\"queued\"} 0",
            "ideamill_jobs_started_total{stage=\"a\"} 0",
            "ideamill_stage_duration_seconds_bucket{stage=\"a\",le=\"+Inf\"} 0",
            "ideamill_pickup_latency_seconds_count{stage=\"a\"} 0",
            "ideamill_stalls_detected_total 0",
            "ideamill_restarts_total 0",
            "ideamill_evidence_bundles_total 0",
            "# TYPE ideamill_llm_requests_total counter",
        ] {
            assert!(body.contains(series), "{series} missing:\n{body}");
        }
        let (status, _) = get(app(s), "/nothing").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
