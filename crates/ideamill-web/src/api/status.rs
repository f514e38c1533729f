//! `/api/status`: the health verdict with its reasons and the status
//! snapshot (as `ideamill status --json`); `/api/processes`: engine
//! processes with the age of their last beat.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ideamill_sys::clock::now_millis;

use super::wire::{ProcessBeat, Processes, Status};
use crate::AppState;
use crate::error::ApiResult;
use crate::view::json;

/// `GET /api/status`: the health verdict and the store's snapshot.
pub async fn get(State(s): State<AppState>) -> Response {
    let now = now_millis();
    let (health, status) = s.verdict(now).await;
    json(StatusCode::OK, &Status::new(health, status))
}

/// `GET /api/processes`: engine processes with the age of their last beat.
pub async fn processes(State(s): State<AppState>) -> ApiResult<Response> {
    let now = now_millis();
    let processes = s
        .call(s.store.processes())
        .await?
        .into_iter()
        .map(|info| ProcessBeat {
            beat_age_ms: (now - info.last_beat_at).max(0),
            process: info.into(),
        })
        .collect();
    Ok(json(StatusCode::OK, &Processes { processes }))
}
