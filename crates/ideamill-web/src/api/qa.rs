//! `/api/qa`: the QA lift, per gate and model: items passing at round 1,
//! at later rounds, failing after the last round, and the lift (the pass
//! rate after the last round over the pass rate at round 1). Read from the
//! store, reused until the next attempt; the dashboard's "QA lift" panel and
//! `/metrics` show the same figures.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::wire::{QaLift, convert};
use crate::AppState;
use crate::error::ApiResult;
use crate::view::json;

/// `GET /api/qa`: the QA lift per gate and model.
pub async fn get(State(s): State<AppState>) -> ApiResult<Response> {
    let gates = convert(s.gate_lift().await?);
    Ok(json(StatusCode::OK, &QaLift { gates }))
}
