//! `/api/items`: list (filtered, searched, paginated) and add; one item with
//! its stages, attempts, outputs, feedback rounds, files and costs; one
//! workspace file; retry (one item, or every item failed of a class) and
//! cancel.

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ideamill_core::machine::first_job;
use ideamill_health::memory;
use ideamill_intake::{Format, Limits, parse_ideas};
use ideamill_sys::clock::now_millis;
use serde::Deserialize;

use super::wire::{self, Added, Cancelled, ItemView, Retried, RetriedAll, convert};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::view::{self, ItemsQuery, json};

/// A request body of ideas is at most this large.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Ideas one request may add.
pub const MAX_IDEAS: usize = 10_000;

/// `GET /api/items`: a page of items, newest first, filtered by state, stage or text.
pub async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let q: ItemsQuery = view::query(raw.as_deref())?;
    let page = view::list_items(&s, &q).await?;
    let page = wire::ItemsPage {
        items: convert(page.items),
        next_before: page.next_before,
    };
    Ok(json(StatusCode::OK, &page))
}

/// The ideas in a request body, read as `ideamill add --file` reads a file
/// of the same type: JSON (an object, or an array of objects or strings),
/// JSON lines, plain text (one idea per line) or Markdown (one idea).
pub fn ideas_from(
    content_type: Option<&str>,
    body: &[u8],
) -> ApiResult<Vec<ideamill_store::NewItem>> {
    let mime = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match mime.as_str() {
        "application/json" => Format::Json,
        "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => {
            Format::JsonLines
        }
        "text/plain" => Format::Text,
        "text/markdown" => Format::Markdown,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "ideas come as application/json, application/x-ndjson, text/plain or text/markdown{}",
                    if other.is_empty() {
                        String::new()
                    } else {
                        format!(", not {other}")
                    }
                ),
            ));
        }
    };
    let limits = Limits {
        max_file_bytes: MAX_BODY as u64,
        max_ideas: MAX_IDEAS,
        max_idea_bytes: Limits::for_add().max_idea_bytes,
    };
    let items = parse_ideas(body, format, &limits)
        .map_err(|e| ApiError::unprocessable(format!("the ideas do not read: {e}")))?;
    if items.is_empty() {
        return Err(ApiError::unprocessable("no ideas found in the request"));
    }
    Ok(items)
}

/// Read a body of at most `MAX_BODY` bytes (not copied again: a body near
/// the limit is already megabytes the process held at once).
pub async fn body(request: Request<Body>) -> ApiResult<(Option<String>, axum::body::Bytes)> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the request body is larger than {} MiB",
                    MAX_BODY / (1024 * 1024)
                ),
            )
        })?;
    Ok((content_type, bytes))
}

/// `POST /api/items`: add ideas sent as JSON, JSON lines, plain text or Markdown.
pub async fn add(State(s): State<AppState>, request: Request<Body>) -> ApiResult<Response> {
    let (content_type, body) = body(request).await?;
    let large = body.len() >= memory::LARGE_BUFFER;
    let items = ideas_from(content_type.as_deref(), &body);
    drop(body);
    if large {
        memory::give_back_freed();
    }
    let items = items?;
    let ids = s
        .call(
            s.store
                .add_items(&items, &first_job(&s.config), now_millis()),
        )
        .await?;
    Ok(json(StatusCode::CREATED, &Added { ids }))
}

/// `GET /api/items/{id}`: one item's whole story.
pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = view::item_id(&id)?;
    let v = view::item(&s, id).await?;
    let files = v
        .files
        .into_iter()
        .map(|f| wire::File {
            path: f.path,
            bytes: f.bytes,
        })
        .collect();
    let mut view = ItemView::new(v.detail, v.workspace, files);
    view.trace_url = view
        .item
        .trace_id
        .as_deref()
        .and_then(|t| s.config.telemetry.trace_link(t));
    Ok(json(StatusCode::OK, &view))
}

/// `GET /api/items/{id}/files/{path}`: one file of an item's workspace, as text.
pub async fn file(
    State(s): State<AppState>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = view::item_id(&id)?;
    let (bytes, cut) = view::read_file(&s, id, &path).await?;
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        bytes,
    )
        .into_response();
    if cut {
        response.headers_mut().insert(
            "x-ideamill-truncated",
            header::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    from: Option<String>,
    /// Only if the item failed of this class (`quality`, `infra`).
    failed: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryAllBody {
    failed: String,
}

/// `POST /api/items/{id}/retry`: run a finished item again, or a waiting one now.
pub async fn retry(
    State(s): State<AppState>,
    Path(id): Path<String>,
    request: Request<Body>,
) -> ApiResult<Response> {
    let id = view::item_id(&id)?;
    let (_, body) = body(request).await?;
    let options: RetryBody = if body.iter().all(u8::is_ascii_whitespace) {
        RetryBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not {{\"from\": \"STAGE\", \"failed\": \"CLASS\"}}: {e}"
            ))
        })?
    };
    let failed = options
        .failed
        .as_deref()
        .map(view::failure_class)
        .transpose()?;
    let effect = view::retry(&s, id, options.from.as_deref(), failed).await?;
    s.live.poke();
    Ok(json(StatusCode::OK, &Retried::new(id, effect)))
}

/// `POST /api/items/retry` with `{"failed": "infra"}`: every item that
/// failed of that class runs again where it stopped.
pub async fn retry_all(State(s): State<AppState>, request: Request<Body>) -> ApiResult<Response> {
    let (_, body) = body(request).await?;
    let options: RetryAllBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body is not {{\"failed\": \"CLASS\"}}: {e}"))
    })?;
    let class = view::failure_class(&options.failed)?;
    let retried = view::retry_failed(&s, class).await?;
    if !retried.is_empty() {
        s.live.poke();
    }
    let retried = retried
        .into_iter()
        .map(|(id, effect)| Retried::new(id, effect))
        .collect();
    Ok(json(StatusCode::OK, &RetriedAll { retried }))
}

/// `POST /api/items/{id}/cancel`: cancel an unfinished item.
pub async fn cancel(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = view::item_id(&id)?;
    let effect = view::cancel(&s, id).await?;
    s.live.poke();
    Ok(json(StatusCode::OK, &Cancelled::new(id, effect)))
}
