//! The JSON API, one file per resource; `openapi.json` describes all of it,
//! and `wire.rs` holds the shapes it answers with (the CLI's `--json` too).
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a
//! 4xx for bad input and a 503 when the store does not answer.

pub mod activity;
pub mod events;
pub mod items;
pub mod qa;
pub mod status;
pub mod wire;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};

use crate::AppState;
use crate::error::ApiError;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`: the OpenAPI document.
pub async fn openapi() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// Every path of the API (under `/api`) with its handlers. `openapi.json`
/// documents each path and method; `tests/api.rs` checks that both name
/// the same ones.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/openapi.json", get(openapi)),
        ("/status", get(status::get)),
        ("/processes", get(status::processes)),
        ("/events", get(events::list)),
        ("/activity", get(activity::get)),
        ("/qa", get(qa::get)),
        ("/items", get(items::list).post(items::add)),
        ("/items/{id}", get(items::get)),
        ("/items/{id}/files/{*path}", get(items::file)),
        ("/items/retry", post(items::retry_all)),
        ("/items/{id}/retry", post(items::retry)),
        ("/items/{id}/cancel", post(items::cancel)),
        ("/stream", get(crate::live::stream)),
    ]
}

/// The API's router, to nest under `/api`.
pub fn router() -> Router<AppState> {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handlers)| {
            router.route(path, handlers)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(crate::auth::method_not_allowed)
}

/// The answer for an unknown API path: 404 in the API's JSON shape.
pub async fn not_found() -> Response {
    ApiError::not_found("no such API path; /api/openapi.json lists them").into_response()
}
