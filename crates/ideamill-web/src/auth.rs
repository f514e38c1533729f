//! Who may talk to the server, and from where.
//!
//! - On a loopback address (the default) the server is open to this
//!   machine; only the `Host` header is checked, so that a web page whose
//!   name resolves to 127.0.0.1 (DNS rebinding) cannot read it.
//! - On any other address it needs the access token (`[web] token_file`,
//!   written by `ideamill init` with mode 0600): as `Authorization: Bearer`,
//!   or as a login cookie set by `/login` (HttpOnly, SameSite=Strict) that
//!   holds a hash of the token, never the token. Without a token file the
//!   server refuses to start.
//! - Whatever the address, a request that changes state (POST) must prove it
//!   is not a cross-site form: an `Origin` header naming this server, or a
//!   header a cross-site page cannot send without permission
//!   (`Authorization`, `HX-Request`, `X-Requested-With`, a JSON body).
//!   `Sec-Fetch-Site: cross-site` is refused outright.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use ideamill_core::Config;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// The login cookie's name.
pub const COOKIE: &str = "ideamill_session";

/// How requests are let in.
#[derive(Clone)]
pub enum Access {
    /// Loopback without a token: this machine only.
    Open,
    /// The token, as a bearer header or the login cookie's hash of it.
    Token {
        /// The token itself, as read from `[web] token_file`.
        token: String,
    },
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Open => f.write_str("Open"),
            Access::Token { .. } => f.write_str("Token(***)"),
        }
    }
}

impl Access {
    /// The access a server listening on `addr` needs. Anything but loopback
    /// (or `[web] require_token`) needs the token file; without it this is
    /// an error that says how to make one.
    pub fn for_listen(config: &Config, addr: &SocketAddr) -> Result<Access, String> {
        let path = &config.web.token_file;
        // A public `[web] url` means a proxy forwards to this loopback
        // listener: everyone who reaches the proxy would reach the API.
        let needed =
            !addr.ip().is_loopback() || config.web.require_token || config.web.url.is_some();
        if !needed {
            return Ok(Access::Open);
        }
        let why = if !addr.ip().is_loopback() {
            format!("{addr} is not a loopback address")
        } else if config.web.require_token {
            "[web] require_token is set".to_string()
        } else {
            "[web] url is set: a proxy serves it".to_string()
        };
        match read_token(path) {
            Ok(Some(token)) => Ok(Access::with_token(token)),
            Ok(None) => Err(format!(
                "the HTTP server needs an access token ({why}) and {} is empty: \
                 write one there (e.g. `head -c 32 /dev/urandom | xxd -p -c 64 > {0}; chmod 600 {0}`)",
                path.display()
            )),
            Err(e) => Err(format!(
                "the HTTP server needs an access token ({why}) and {} cannot be read ({e}): \
                 `ideamill init` writes one, or create it yourself with mode 0600",
                path.display()
            )),
        }
    }

    /// Access by `token`.
    pub fn with_token(token: String) -> Access {
        Access::Token { token }
    }

    /// Whether requests need no token.
    pub fn is_open(&self) -> bool {
        matches!(self, Access::Open)
    }
}

/// How long a login lasts.
pub const SESSION_LIFETIME_SECS: u64 = 30 * 24 * 3600;

/// The cookie's value for `token`, valid until `expires` (Unix seconds):
/// `<expires>.<hash of token and expires>`. A stolen cookie store does not
/// give the token away, a cookie stops working when it expires (checked
/// here, not only by the browser), and changing the token revokes every
/// cookie.
pub fn session_of(token: &str, expires: u64) -> String {
    let digest = Sha256::digest(format!("ideamill-session\0{token}\0{expires}").as_bytes());
    format!("{expires}.{}", hex(&digest))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `cookie` is a live session of `token`.
fn valid_session(cookie: &str, token: &str, now: u64) -> bool {
    let Some((expires, _)) = cookie.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return false;
    };
    expires > now
        && expires <= now + SESSION_LIFETIME_SECS
        && same(cookie, &session_of(token, expires))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token in `path`, trimmed; `None` when the file is empty. A file
/// others can read is used, with a warning.
pub fn read_token(path: &Path) -> std::io::Result<Option<String>> {
    let mut f = std::fs::File::open(path)?;
    if let Ok(meta) = f.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "The access token {} can be read by other users: chmod 600 it",
            path.display()
        );
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let token = text.trim().to_string();
    Ok((!token.is_empty()).then_some(token))
}

/// Write a new random token into `path` (mode 0600, created only if it does
/// not exist). Returns whether it wrote one.
pub fn create_token_file(path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    // Whole or not at all: a crash never leaves an empty token file, which
    // would stop the next `init` from writing one.
    ideamill_sys::fs::create_atomic(path, format!("{}\n", hex(&random)).as_bytes(), 0o600)
}

/// Compare without leaking, through timing, how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Access {
    /// Whether the request carries the token (always, when open).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        match self {
            Access::Open => true,
            Access::Token { token } => {
                bearer(headers).is_some_and(|t| same(t, token))
                    || cookie(headers).is_some_and(|c| valid_session(c, token, unix_now()))
            }
        }
    }

    /// Whether `given` is the token (the login form).
    pub fn is_token(&self, given: &str) -> bool {
        match self {
            Access::Open => true,
            Access::Token { token, .. } => same(given.trim(), token),
        }
    }
}

/// The login cookie for `access`, `Secure` when the dashboard's public
/// address is https.
pub fn login_cookie(access: &Access, secure: bool) -> Option<String> {
    match access {
        Access::Open => None,
        Access::Token { token } => Some(format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_LIFETIME_SECS}{}",
            session_of(token, unix_now() + SESSION_LIFETIME_SECS),
            if secure { "; Secure" } else { "" }
        )),
    }
}

/// The cookie that ends a login.
pub fn logout_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Paths anyone may fetch: the probes, the static assets, the login page.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/login") || path.starts_with("/assets/")
}

/// Whether a proxy's forwarding headers are present.
fn forwarded(headers: &HeaderMap) -> bool {
    const PROXY_HEADERS: [&str; 5] = [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    ];
    PROXY_HEADERS.iter().any(|name| headers.contains_key(*name))
}

/// Whether `host` (a Host header) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` is the one of `[web] url` (a reverse proxy in front of a
/// loopback server that passes the public name on).
fn public_host(url: Option<&str>, host: &str) -> bool {
    url.and_then(|u| u.split_once("://"))
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .is_some_and(|h| !h.is_empty() && h.eq_ignore_ascii_case(host))
}

/// A state-changing request must not come from another site.
fn cross_site_check(headers: &HeaderMap, public_url: Option<&str>) -> Result<(), ApiError> {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site")
    {
        return Err(ApiError::forbidden(
            "cross_site",
            "a page of another site cannot change this mill",
        ));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
        let ours = host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
            || public_url.is_some_and(|u| u.eq_ignore_ascii_case(origin.trim_end_matches('/')));
        return if ours {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "cross_site",
                format!("a request from {origin} cannot change this mill"),
            ))
        };
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let marked = ["hx-request", "x-requested-with", "authorization"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if json || marked {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "cross_site",
            "a request that changes state needs an `Origin` naming this server, an \
             `Authorization` header, a JSON body, or the header `X-Requested-With: ideamill`",
        ))
    }
}

/// The guard in front of every route.
pub async fn guard(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    let headers = request.headers();
    let path = request.uri().path();
    let api = path.starts_with("/api/") || path == "/api" || path == "/metrics";
    if state.access.is_open()
        && let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok())
        && !loopback_host(host)
        && !public_host(state.config.web.url.as_deref(), host)
    {
        return ApiError::forbidden(
            "forbidden_host",
            format!(
                "this server listens on loopback only and does not answer for the name `{host}`"
            ),
        )
        .into_response();
    }
    // Open access is for this machine only; a proxy's forwarding headers
    // say the request came from elsewhere, whatever its Host says.
    if state.access.is_open() && !is_public(path) && forwarded(headers) {
        return ApiError::forbidden(
            "proxied_without_token",
            "this request came through a proxy, and this server has no access token: \
             set `[web] url` to the proxy's address (the token is then required) and sign in",
        )
        .into_response();
    }
    // No route takes another method: such a request is answered as that
    // (405), before the checks that guard state-changing requests, which
    // would call it cross-site trouble.
    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::POST
    ) {
        let mut response = method_not_allowed().await;
        security_headers(response.headers_mut());
        return response;
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && let Err(e) = cross_site_check(headers, state.config.web.url.as_deref()) {
        return e.into_response();
    }
    if !is_public(path) && !state.access.admits(headers) {
        if api || headers.contains_key("hx-request") || !safe {
            return ApiError::unauthorized().into_response();
        }
        let query = request
            .uri()
            .query()
            .map_or(String::new(), |q| format!("?{q}"));
        let next = format!("{path}{query}");
        let encoded: String =
            serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default();
        return Redirect::to(&format!("/login?{encoded}")).into_response();
    }
    let mut response = next.run(request).await;
    security_headers(response.headers_mut());
    response
}

/// Headers every answer carries: no framing, no sniffing, scripts and
/// styles from this server only.
fn security_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        if !h.contains_key(k) {
            h.insert(k, axum::http::HeaderValue::from_static(v));
        }
    };
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "same-origin");
    set(
        h,
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
}

/// An answer for a method a route does not take.
pub async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method (see /api/openapi.json)",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:9464",
            "127.0.0.1:9464",
            "127.1.2.3",
            "[::1]:9464",
            "app.localhost:1",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:9464",
            "10.0.0.5:9464",
            "[fe80::1]:80",
            "localhost.evil.example",
            "",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_proxy_may_pass_the_public_name() {
        assert!(public_host(
            Some("https://mill.example.org"),
            "mill.example.org"
        ));
        assert!(public_host(
            Some("https://mill.example.org/base"),
            "MILL.example.org"
        ));
        assert!(!public_host(
            Some("https://mill.example.org"),
            "evil.example"
        ));
        assert!(!public_host(None, "mill.example.org"));
    }

    #[test]
    fn cross_site_requests() {
        let ok = |pairs: &[(&'static str, &'static str)]| {
            cross_site_check(&headers(pairs), Some("https://mill.example.org")).is_ok()
        };
        assert!(ok(&[("host", "mill:9464"), ("origin", "http://mill:9464")]));
        assert!(ok(&[("hx-request", "true")]));
        assert!(ok(&[("x-requested-with", "ideamill")]));
        assert!(ok(&[("content-type", "application/json")]));
        assert!(ok(&[("authorization", "Bearer x")]));
        assert!(!ok(&[]), "a plain form from nowhere");
        assert!(!ok(&[(
            "content-type",
            "application/x-www-form-urlencoded"
        )]));
        assert!(!ok(&[
            ("host", "mill:9464"),
            ("origin", "http://evil.example"),
            ("hx-request", "true")
        ]));
        assert!(!ok(&[
            ("sec-fetch-site", "cross-site"),
            ("content-type", "application/json")
        ]));
        assert!(!ok(&[("origin", "null")]));
        // Behind a proxy that passes its own Host: the public origin is ours.
        assert!(ok(&[
            ("host", "127.0.0.1:9464"),
            ("origin", "https://mill.example.org")
        ]));
    }

    #[test]
    fn tokens_and_cookies() {
        let access = Access::with_token("s3cret".into());
        let session = session_of("s3cret", unix_now() + 60);
        assert!(access.admits(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(access.admits(&headers(&[("authorization", "bearer s3cret")])));
        assert!(!access.admits(&headers(&[("authorization", "Bearer s3cre")])));
        let cookie = format!("a=b; {COOKIE}={session}");
        let mut h = HeaderMap::new();
        h.insert("cookie", cookie.parse().unwrap());
        assert!(access.admits(&h));
        assert!(
            !access.admits(&headers(&[("cookie", "ideamill_session=s3cret")])),
            "the token itself is not the cookie"
        );
        // Expired, too far ahead, another token's, or tampered: refused.
        for bad in [
            session_of("s3cret", unix_now() - 1),
            session_of("s3cret", unix_now() + SESSION_LIFETIME_SECS + 3600),
            session_of("old-token", unix_now() + 60),
            session.replacen('.', "0.", 1),
        ] {
            let cookie = format!("{COOKIE}={bad}");
            assert!(
                !access.admits(&headers(&[("cookie", cookie.leak())])),
                "{bad}"
            );
        }
        assert!(Access::Open.admits(&HeaderMap::new()));
        assert!(access.is_token(" s3cret\n") && !access.is_token("nope"));
        let set = login_cookie(&access, true).unwrap();
        assert!(
            set.contains("HttpOnly")
                && set.contains("SameSite=Strict")
                && set.ends_with("; Secure")
        );
        assert!(!set.contains("s3cret"));
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/token");
        assert!(create_token_file(&path).unwrap());
        assert!(!create_token_file(&path).unwrap(), "never overwritten");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = read_token(&path).unwrap().unwrap();
        assert_eq!(token.len(), 64);
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), None);
    }
}
