//! `/items`: every item, newest first, filtered by state and stage and
//! searched by text; one page at a time (an indexed query, however many
//! items the store holds).

use axum::extract::{RawQuery, State};
use axum::response::Response;
use ideamill_core::Millis;
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
    let q: ItemsQuery = view::query(raw).framed(s)?;
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
    let q: ItemsQuery = view::query(raw.as_deref()).framed(&s)?;
    if let Ok(url) = format!("/items?{}", query_string(&q)).parse() {
        r.headers_mut().insert("hx-replace-url", url);
    }
    Ok(r)
}
