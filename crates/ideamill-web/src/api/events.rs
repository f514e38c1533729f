//! `/api/events`: recoveries, retries, rejections, failures, restarts,
//! alerts; filtered by item, kind and time, newest last.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use ideamill_core::{ItemId, Millis};
use ideamill_store::EventFilter;
use serde::Deserialize;

use super::wire::{Events, convert};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::view::{self, json};

/// The most events one request may ask for.
pub const MAX_EVENTS: u32 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    item: Option<ItemId>,
    kind: Option<String>,
    since: Option<Millis>,
    limit: Option<u32>,
}

/// `GET /api/events`: newest first, filtered by item, kind and time.
pub async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let q: EventsQuery = view::query(raw.as_deref())?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_EVENTS {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_EVENTS}, not {limit}"
        )));
    }
    let events = s
        .call(s.store.events(&EventFilter {
            item: q.item,
            kind: q.kind,
            since: q.since,
            limit,
        }))
        .await?;
    Ok(json(
        StatusCode::OK,
        &Events {
            events: convert(events),
        },
    ))
}
