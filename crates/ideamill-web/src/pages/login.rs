//! `/login`: the access token, once, for a cookie (HttpOnly,
//! SameSite=Strict) that lets this browser in; `/logout` forgets it. Only
//! useful when the server needs the token (not on loopback).

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use super::{PageError, WithState};
use crate::AppState;
use crate::auth;
use crate::error::ApiError;

#[derive(Deserialize, Default)]
struct Next {
    next: Option<String>,
}

/// Only a path of this server: never an open redirect.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

#[derive(Serialize)]
struct LoginView {
    next: String,
    error: Option<String>,
    open: bool,
}

fn render(s: &AppState, next: String, error: Option<String>) -> Result<Response, PageError> {
    let body = s
        .templates
        .render(
            "login.html",
            LoginView {
                next,
                error,
                open: s.access.is_open(),
            },
        )
        .framed(s)?;
    super::page(s, "Log in", "", &body)
}

pub async fn page(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let q: Next = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    render(&s, safe_next(q.next.as_deref()), None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

pub async fn submit(
    State(s): State<AppState>,
    request: Request<Body>,
) -> Result<Response, PageError> {
    let forwarded_https = request
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
        || request
            .headers()
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    let (_, bytes) = crate::api::items::body(request).await.framed(&s)?;
    let form: LoginForm = serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the form does not read: {e}")))
        .framed(&s)?;
    let next = safe_next(form.next.as_deref());
    if !s.access.is_token(&form.token) {
        let mut r = render(&s, next, Some("That is not this server's token.".into()))?;
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(r);
    }
    // Secure when people reach us over https: the public address says so,
    // or the proxy in front of us does.
    let secure = s
        .config
        .web
        .url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
        || forwarded_https;
    let mut r = Redirect::to(&next).into_response();
    if let Some(cookie) = auth::login_cookie(&s.access, secure)
        && let Ok(v) = cookie.parse()
    {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

pub async fn logout() -> Response {
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = auth::logout_cookie().parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_here() {
        assert_eq!(
            safe_next(Some("/items?state=failed")),
            "/items?state=failed"
        );
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
