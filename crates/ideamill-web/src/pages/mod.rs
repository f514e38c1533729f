//! The dashboard's pages, rendered on the server from the templates in
//! `templates/` (minijinja, HTML-escaped by default). One file per page;
//! each has a full page and the fragment that htmx fetches again when the
//! live stream says something changed.

pub mod add;
pub mod item;
pub mod items;
pub mod login;
pub mod overview;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ideamill_core::Millis;
use ideamill_health::verdict::short;
use minijinja::{Environment, Value};
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;

const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../../templates/layout.html")),
    (
        "overview.html",
        include_str!("../../templates/overview.html"),
    ),
    ("items.html", include_str!("../../templates/items.html")),
    (
        "items_results.html",
        include_str!("../../templates/items_results.html"),
    ),
    ("item.html", include_str!("../../templates/item.html")),
    ("add.html", include_str!("../../templates/add.html")),
    ("added.html", include_str!("../../templates/added.html")),
    ("login.html", include_str!("../../templates/login.html")),
    ("error.html", include_str!("../../templates/error.html")),
];

pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // The templates are part of the binary and tested: one that does
            // not parse fails every page test.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!("Template {name} does not parse: {e:#}");
            }
        }
        env.add_filter("ago", |at: Millis, now: Millis| ago(at, now));
        env.add_filter("dur", |ms: Millis| short(ms));
        env.add_filter("ts", |ms: Millis| timestamp(ms));
        env.add_filter("num", |n: i64| thousands(n));
        env.add_filter("bytes", |n: u64| bytes(n));
        env.add_filter("money", |x: f64| money(x));
        env.add_filter("first_line", |s: String, max: usize| first_line(&s, max));
        env.add_filter("lines", |s: String| s.lines().count());
        Templates { env }
    }

    pub fn render<S: Serialize>(&self, name: &str, ctx: S) -> Result<String, ApiError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| ApiError::internal("a page template is missing", &e))?;
        template
            .render(Value::from_serialize(&ctx))
            .map_err(|e| ApiError::internal("the page could not be rendered", &format!("{e:#}")))
    }
}

/// "3s ago", "in 2m".
pub fn ago(at: Millis, now: Millis) -> String {
    let d = now - at;
    if d >= 0 {
        if d < 1000 {
            "just now".into()
        } else {
            format!("{} ago", short(d))
        }
    } else {
        format!("in {}", short(-d))
    }
}

pub fn timestamp(at: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.replace('T', " ").replace('Z', " UTC")
}

pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// "812 B", "12.4 KB", "3.1 MB".
pub fn bytes(n: u64) -> String {
    match n {
        0..1000 => format!("{n} B"),
        1000..1_000_000 => format!("{:.1} KB", n as f64 / 1000.0),
        _ => format!("{:.1} MB", n as f64 / 1_000_000.0),
    }
}

pub fn money(x: f64) -> String {
    if x == 0.0 {
        "$0".into()
    } else if x < 0.01 {
        format!("${x:.4}")
    } else {
        format!("${x:.2}")
    }
}

pub use ideamill_core::text::first_line;

/// What every page's frame shows.
#[derive(Serialize)]
struct Frame<'a> {
    title: &'a str,
    nav: &'a str,
    project: String,
    body: &'a str,
    v: &'static str,
    version: &'static str,
    /// Whether a logout button makes sense.
    token: bool,
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The project's name: its folder.
fn project(s: &AppState) -> String {
    s.config.root.file_name().map_or_else(
        || "ideamill".to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `body` in the page frame.
pub fn page(s: &AppState, title: &str, nav: &str, body: &str) -> Result<Response, PageError> {
    let frame = Frame {
        title,
        nav,
        project: project(s),
        body,
        v: crate::assets::version(),
        version: env!("CARGO_PKG_VERSION"),
        token: !s.access.is_open(),
    };
    Ok(html(
        StatusCode::OK,
        s.templates.render("layout.html", frame)?,
    ))
}

pub fn fragment(body: String) -> Response {
    html(StatusCode::OK, body)
}

/// A page's error, as a page (for people) with the error's status.
pub struct PageError(pub ApiError, pub Option<AppState>);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> PageError {
        PageError(e, None)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let PageError(e, state) = self;
        let Some(s) = state else {
            // Without the templates at hand: a plain, still readable page.
            let body = format!(
                "<!doctype html><meta charset=utf-8><title>Error</title><h1>{}</h1><p>{}</p><p><a href=\"/\">Overview</a></p>",
                e.status,
                crate::highlight::escape(&e.message)
            );
            return html(e.status, body);
        };
        let body = s
            .templates
            .render(
                "error.html",
                serde_json::json!({
                    "status": e.status.as_u16(),
                    "reason": e.status.canonical_reason().unwrap_or(""),
                    "code": e.code,
                    "message": e.message,
                }),
            )
            .unwrap_or_else(|_| crate::highlight::escape(&e.message));
        match page(&s, "Error", "", &body) {
            Ok(mut r) => {
                *r.status_mut() = e.status;
                r
            }
            Err(_) => html(e.status, body),
        }
    }
}

/// Attach the state to an error so that it renders in the page frame.
pub trait WithState<T> {
    fn framed(self, s: &AppState) -> Result<T, PageError>;
}

impl<T> WithState<T> for Result<T, ApiError> {
    fn framed(self, s: &AppState) -> Result<T, PageError> {
        self.map_err(|e| PageError(e, Some(s.clone())))
    }
}

pub async fn not_found(axum::extract::State(s): axum::extract::State<AppState>) -> Response {
    PageError(
        ApiError::not_found("there is no page here: the overview, the items and the form to add ideas are in the menu"),
        Some(s),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-999), "-999");
        assert_eq!(money(0.0), "$0");
        assert_eq!(money(0.00123), "$0.0012");
        assert_eq!(money(12.5), "$12.50");
        assert_eq!(ago(1000, 1500), "just now");
        assert_eq!(ago(1000, 13_500), "12s ago");
        assert_eq!(ago(70_000, 10_000), "in 1m");
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(first_line("a\nb", 10), "a …");
        assert_eq!(
            (bytes(1), bytes(12_400), bytes(3_100_000)),
            ("1 B".into(), "12.4 KB".into(), "3.1 MB".into())
        );
    }

    #[test]
    fn every_template_parses() {
        let t = Templates::new();
        for (name, _) in TEMPLATES {
            assert!(t.env.get_template(name).is_ok(), "{name}");
        }
    }
}
