//! `/api/activity`: finished attempts and items per time bucket over the
//! last hours, for the overview's charts. Reused for a few seconds.

use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use ideamill_core::Millis;
use ideamill_sys::clock::now_millis;
use serde::Deserialize;

use super::wire::{Activity, convert};
use crate::error::{ApiError, ApiResult};
use crate::view::{self, json};
use crate::{AppState, lock};

/// How long an answer is reused.
const FRESH: Duration = Duration::from_secs(10);
/// The longest window `hours` may ask for: a week.
pub const MAX_HOURS: u32 = 168;

/// The last answer, reused while fresh for the same window.
pub struct Cached {
    at: Instant,
    hours: u32,
    body: Activity,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityQuery {
    hours: Option<u32>,
}

/// About 72 buckets over the window, each a whole number of minutes.
pub fn bucket_for(hours: u32) -> Millis {
    let minutes = (i64::from(hours) * 60 / 72).max(1);
    minutes * 60_000
}

/// `GET /api/activity?hours=`: attempts and items over time, for the charts.
pub async fn get(State(s): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let q: ActivityQuery = view::query(raw.as_deref())?;
    let hours = q.hours.unwrap_or(6);
    if hours == 0 || hours > MAX_HOURS {
        return Err(ApiError::bad_request(format!(
            "hours must be from 1 to {MAX_HOURS}, not {hours}"
        )));
    }
    if let Some(c) = lock(&s.activity).as_ref()
        && c.hours == hours
        && c.at.elapsed() < FRESH
    {
        return Ok(json(StatusCode::OK, &c.body));
    }
    let now = now_millis();
    let bucket = bucket_for(hours);
    // Whole buckets, so that the same bucket always covers the same minutes.
    let since = (now - i64::from(hours) * 3_600_000) / bucket * bucket;
    let buckets = s.call(s.store.activity(since, bucket, now)).await?;
    let body = Activity {
        hours,
        bucket_ms: bucket,
        since,
        now,
        buckets: convert(buckets),
    };
    *lock(&s.activity) = Some(Cached {
        at: Instant::now(),
        hours,
        body: body.clone(),
    });
    Ok(json(StatusCode::OK, &body))
}
