//! The dashboard's static files, embedded in the binary: its own stylesheet
//! and script, and the vendored libraries with their licences (no CDN). Each
//! is served with an ETag, so that a browser revalidates with a 304 instead
//! of downloading it again.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// (path under /assets/, content type, bytes)
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../assets/favicon.svg"),
    ),
    (
        "vendor/htmx/htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/htmx/htmx.min.js"),
    ),
    (
        "vendor/htmx/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/vendor/htmx/LICENSE"),
    ),
    (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "vendor/uplot/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/uPlot.min.css"),
    ),
    (
        "vendor/uplot/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/vendor/uplot/LICENSE"),
    ),
];

fn etags() -> &'static Vec<String> {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, _, bytes)| {
                let d = Sha256::digest(bytes);
                format!(
                    "\"{}\"",
                    d[..8]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                )
            })
            .collect()
    })
}

/// A version for asset URLs (`?v=`), so that a new build is fetched at once.
pub fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        let all: String = etags().iter().map(|t| t.trim_matches('"')).collect();
        let d = Sha256::digest(all.as_bytes());
        d[..4].iter().map(|b| format!("{b:02x}")).collect()
    })
}

pub async fn serve(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some(i) = FILES.iter().position(|(p, _, _)| *p == path) else {
        return ApiError::not_found(format!("no asset `{path}`")).into_response();
    };
    let (_, content_type, bytes) = FILES[i];
    let etag = &etags()[i];
    let cache = "public, max-age=300, must-revalidate";
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag.as_str()),
                (header::CACHE_CONTROL, cache),
            ],
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::ETAG, etag.as_str()),
            (header::CACHE_CONTROL, cache),
        ],
        bytes,
    )
        .into_response()
}
