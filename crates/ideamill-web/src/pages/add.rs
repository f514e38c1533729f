//! `/add`: a form to add ideas, one per line (or JSON, as the API takes
//! them); the answer links to the new items.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use ideamill_core::machine::first_job;
use ideamill_sys::clock::now_millis;
use serde::{Deserialize, Serialize};

use super::{PageError, WithState};
use crate::AppState;
use crate::api::items::{body, ideas_from};
use crate::error::{ApiError, ApiResult};

#[derive(Serialize)]
struct AddView {
    stages: Vec<String>,
}

pub async fn page(State(s): State<AppState>) -> Result<Response, PageError> {
    let view = AddView {
        stages: s.config.stages.iter().map(|st| st.name.clone()).collect(),
    };
    let body = s.templates.render("add.html", view).framed(&s)?;
    super::page(&s, "Add ideas", "add", &body)
}

#[derive(Deserialize)]
struct AddForm {
    ideas: String,
    /// `lines` (one idea per line) or `json`.
    #[serde(default)]
    format: Option<String>,
}

#[derive(Serialize)]
struct Added {
    ids: Vec<i64>,
}

/// The form's submission: the result, as a fragment the form shows.
pub async fn submit(State(s): State<AppState>, request: Request<Body>) -> ApiResult<Response> {
    let (_, bytes) = body(request).await?;
    let form: AddForm = serde_urlencoded::from_bytes(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the form does not read: {e}")))?;
    let content_type = match form.format.as_deref() {
        Some("json") => "application/json",
        _ => "text/plain",
    };
    let items = ideas_from(Some(content_type), form.ideas.as_bytes())?;
    let ids = s
        .call(
            s.store
                .add_items(&items, &first_job(&s.config), now_millis()),
        )
        .await?;
    s.live.poke();
    Ok(super::fragment(s.templates.render(
        "added.html",
        serde_json::json!({ "added": Added { ids } }),
    )?))
}
