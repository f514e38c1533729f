//! `/items`: every item, newest first, filtered by state and stage and
//! searched by text; one page at a time (an indexed query, however many
//! items the store holds).

use axum::extract::{RawQuery, State};
use axum::response::Response;
use ideamill_core::{FailureClass, Millis};
use ideamill_store::{ItemSummary, StateFilter};
use ideamill_sys::clock::now_millis;
use serde::Serialize;

use super::{PageError, WithState};
use crate::AppState;
use crate::view::{self, ItemsQuery};

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    item: ItemSummary,
    class: &'static str,
    /// What a failed item's failure class means, for the badge's title.
    failure_meaning: Option<&'static str>,
}

#[derive(Serialize)]
struct ItemsView {
    now: Millis,
    rows: Vec<Row>,
    query: ItemsQuery,
    /// The query string of this page, for the live refresh.
    this: String,
    /// The next (older) page's query string, if any.
    older: Option<String>,
    /// The first page with the same filters.
    newest: String,
    first_page: bool,
    states: &'static [&'static str],
    stages: Vec<String>,
    searching: bool,
}

/// What a failure class says about the work, as the pages explain it.
pub fn failure_meaning(class: FailureClass) -> &'static str {
    match class {
        FailureClass::Infra => "the provider or the host failed, not the model's work",
        FailureClass::Quality => {
            "the work was judged and found wanting (a gate rejected it, or a stage or the model's answer failed)"
        }
    }
}

/// The state filter's choice `failed:CLASS` read as `state=failed` and
/// `failed=CLASS`, the filters the API takes, so that one select offers
/// both.
fn split_failed(mut q: ItemsQuery) -> ItemsQuery {
    if let Some(class) = q.state.as_deref().and_then(|s| s.strip_prefix("failed:")) {
        q.failed = Some(class.to_string());
        q.state = Some("failed".into());
    }
    q
}

/// A state's badge colour.
pub fn state_class(display_state: &str) -> &'static str {
    match display_state {
        "done" => "done",
        "failed" => "failed",
        "cancelled" => "cancelled",
        "running" => "running",
        "retrying" => "retrying",
        "paused" => "paused",
        _ => "queued",
    }
}

fn query_string(q: &ItemsQuery) -> String {
    serde_urlencoded::to_string(q).unwrap_or_default()
}

async fn render(s: &AppState, raw: Option<&str>, fragment: bool) -> Result<String, PageError> {
    let q = split_failed(view::query(raw).framed(s)?);
    let page = view::list_items(s, &q).await.framed(s)?;
    let older = page.next_before.map(|before| {
        query_string(&ItemsQuery {
            before: Some(before),
            ..q.clone()
        })
    });
    let view = ItemsView {
        now: now_millis(),
        rows: page
            .items
            .into_iter()
            .map(|item| Row {
                class: state_class(&item.display_state),
                failure_meaning: item.failure_class.map(failure_meaning),
                item,
            })
            .collect(),
        this: query_string(&q),
        newest: query_string(&ItemsQuery {
            before: None,
            ..q.clone()
        }),
        older,
        first_page: q.before.is_none(),
        states: StateFilter::ALL,
        stages: s.config.stages.iter().map(|st| st.name.clone()).collect(),
        searching: q.q.as_deref().is_some_and(|t| !t.trim().is_empty()),
        query: q,
    };
    if fragment {
        s.templates.render("items_results.html", view).framed(s)
    } else {
        s.templates.render("items.html", view).framed(s)
    }
}

pub async fn page(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let body = render(&s, raw.as_deref(), false).await?;
    super::page(&s, "Items", "items", &body)
}

/// The results alone; the address bar follows the filters (replaced, not
/// pushed, so that live refreshes add no history).
pub async fn fragment(
    State(s): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let mut r = super::fragment(render(&s, raw.as_deref(), true).await?);
    let q = split_failed(view::query(raw.as_deref()).framed(&s)?);
    if let Ok(url) = format!("/items?{}", query_string(&q)).parse() {
        r.headers_mut().insert("hx-replace-url", url);
    }
    Ok(r)
}
