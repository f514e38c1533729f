//! The JSON API, one file per resource; `openapi.json` describes all of it.
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a
//! 4xx for bad input and a 503 when the store does not answer.

pub mod activity;
pub mod events;
pub mod items;
pub mod status;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn openapi() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

pub async fn not_found() -> Response {
    ApiError::not_found("no such API path; /api/openapi.json lists them").into_response()
}
