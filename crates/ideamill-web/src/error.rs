//! The one error type of every handler: a stable code, an HTTP status and a
//! message for people. Bad input is a 4xx that says what was wrong; a store
//! failure is a 503 whose cause goes to the log, never to the client; there
//! is no path from a request to a panic.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ideamill_store::StoreError;
use serde::Serialize;

/// An API error: an HTTP status and a JSON body `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable, for scripts: `bad_request`, `not_found`, `conflict`, ...
    pub code: &'static str,
    /// What is wrong, for people; never an internal error's text.
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`: the request cannot be read.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`: the item's state does not allow it.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 `invalid`: the request is well-formed but its content is not acceptable.
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 401 `unauthorized`, saying where the token is.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs its access token: send `Authorization: Bearer <token>` \
             (the token is in the project's .ideamill/token) or log in at /login",
        )
    }

    /// 403 with its own `code`.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    /// The store did not answer in time.
    pub fn store_timeout(secs: u64) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store did not answer within {secs} s; try again"),
        )
    }

    /// Something went wrong on our side: logged with its cause, answered
    /// without it.
    pub fn internal(what: &str, cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!("HTTP: {what}: {cause}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what}; the server's log says why"),
        )
    }

    /// The JSON answer, whatever the request asked for.
    pub fn into_json(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NoSuchItem(id) => ApiError::not_found(format!("no item with id {id}")),
            // The store's refusals are worded for people ("item 3 is running").
            StoreError::InvalidRequest(message) => ApiError::conflict(message),
            other => {
                tracing::warn!("HTTP: the store failed: {other}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store failed to answer; the server's log says why",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_json()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;
