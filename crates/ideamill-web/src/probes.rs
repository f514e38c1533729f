//! The probes: `/healthz` (the event loop beats), `/readyz` (the store
//! answers and the engine is registered) and `/metrics` (Prometheus text).
//! Handlers run on the engine's event loop, so an answer from `/healthz` is
//! itself evidence that the loop runs; it also checks the pulse's beat age.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ideamill_health::metrics::{Live, StoreFigures};
use ideamill_sys::clock::now_millis;

use crate::AppState;

/// How long a probe waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// 200 while the event loop beats within `stall_after`; 503 otherwise.
pub async fn healthz(State(s): State<AppState>) -> Response {
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

/// 200 when the store answers (it was opened, so its migrations are applied)
/// and this process's engine, if it runs one, is registered.
pub async fn readyz(State(s): State<AppState>) -> Response {
    match tokio::time::timeout(STORE_TIMEOUT, s.store.queue_depth(now_millis())).await {
        Ok(Ok(_)) if !s.runs_engine => text(
            StatusCode::OK,
            "ready: store reachable (HTTP only: no engine in this process)\n".into(),
        ),
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

/// The Prometheus text. The verdict and its snapshot are the dashboard's
/// (judged at most once per change, within the store's deadline), so that
/// Prometheus alerts on the same reasons `doctor` gives.
pub async fn metrics(State(s): State<AppState>) -> Response {
    let now = now_millis();
    let ((verdict, snapshot), gates) = tokio::join!(
        s.verdict(now),
        tokio::time::timeout(STORE_TIMEOUT, s.gate_lift()),
    );
    let store = snapshot.as_ref().map(|snap| StoreFigures {
        paused: snap.paused,
        expired_leases: snap.expired_leases,
        oldest_runnable_age: snap.oldest_runnable_at.map_or(Duration::ZERO, |at| {
            Duration::from_millis(u64::try_from(now - at).unwrap_or(0))
        }),
    });
    let (lag, lag_max) = s.health.lag();
    let live = Live {
        items: snapshot.map(|snap| snap.items),
        queue: s.health.queue(),
        heartbeat_age: s.health.beat_age(),
        loop_lag: lag,
        loop_lag_max: lag_max,
        in_flight: s.health.in_flight(now).map_or(0, |j| j.len() as u64),
        started_at_secs: s.health.started_at as f64 / 1000.0,
        gates: gates.ok().and_then(Result::ok),
        verdict: Some(verdict),
        store,
        free_disk: ideamill_sys::fs::free_bytes(&s.config.engine.data_dir),
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
