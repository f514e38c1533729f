//! What the JSON API and the pages share: reading query strings, listing
//! items, one item with its workspace files, retrying and cancelling, so that
//! a button on a page and a call to the API do exactly the same thing.

use std::path::{Path, PathBuf};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ideamill_core::machine::{RetryRefused, retry_job};
use ideamill_core::{FailureClass, ItemId};
use ideamill_stages::executor::{item_workspace, workspace_files};
use ideamill_store::{CancelEffect, ItemDetail, ItemFilter, ItemSummary, RetryEffect, StateFilter};
use ideamill_sys::clock::now_millis;
use ideamill_sys::fs::open_regular;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// Items per page unless asked otherwise, and at most.
pub const PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;
/// Workspace files listed for one item.
pub const MAX_FILES: usize = 200;
/// Bytes of one file shown or served.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// `value` as a JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::internal("the answer could not be written as JSON", &e).into_response(),
    }
}

/// A query string read into `T`; empty values count as absent.
pub fn query<T: DeserializeOwned>(raw: Option<&str>) -> ApiResult<T> {
    let raw = raw.unwrap_or("");
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("the query string does not read: {e}")))?;
    let kept: Vec<(String, String)> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let cleaned = serde_urlencoded::to_string(&kept).unwrap_or_default();
    serde_urlencoded::from_str(&cleaned)
        .map_err(|e| ApiError::bad_request(format!("bad query parameter: {e}")))
}

/// An item id from a path.
pub fn item_id(s: &str) -> ApiResult<ItemId> {
    s.trim_start_matches('#')
        .parse::<ItemId>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{s}` is not an item id (ids are positive numbers)"
            ))
        })
}

/// The items list's filters, as the API and the items page take them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    /// active, queued, running, retrying, paused, done, failed, cancelled.
    pub state: Option<String>,
    pub stage: Option<String>,
    /// Failed items whose failure is of this class: quality, infra.
    pub failed: Option<String>,
    /// Words the idea's text holds (each as the start of a word).
    pub q: Option<String>,
    /// Items with an id below this one: the next page.
    pub before: Option<ItemId>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ItemsPage {
    pub items: Vec<ItemSummary>,
    /// Give this as `before` for the next page; `null` on the last page.
    pub next_before: Option<ItemId>,
}

impl ItemsQuery {
    pub fn filter(&self) -> ApiResult<ItemFilter> {
        let state = match self.state.as_deref() {
            None | Some("all") => None,
            Some(s) => Some(StateFilter::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{s}` is not a state; states: {}",
                    StateFilter::ALL.join(", ")
                ))
            })?),
        };
        let failure = self.failed.as_deref().map(failure_class).transpose()?;
        let limit = self.limit.unwrap_or(PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(ApiError::bad_request(format!(
                "limit must be from 1 to {MAX_PAGE}, not {limit}"
            )));
        }
        if let Some(before) = self.before
            && before < 1
        {
            return Err(ApiError::bad_request("before must be a positive item id"));
        }
        Ok(ItemFilter {
            state,
            stage: self.stage.clone(),
            failure,
            before_id: self.before,
            limit,
        })
    }
}

/// One page of items, searched when `q` is given.
pub async fn list_items(s: &AppState, q: &ItemsQuery) -> ApiResult<ItemsPage> {
    let filter = q.filter()?;
    let items = match q.q.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(text) => s.call(s.store.search_items(&filter, text)).await?,
        None => s.call(s.store.list_items(&filter)).await?,
    };
    let next_before = (items.len() as u32 == filter.limit)
        .then(|| items.last().map(|i| i.id))
        .flatten();
    Ok(ItemsPage { items, next_before })
}

/// A file of an item's workspace.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub bytes: u64,
}

/// One item with everything people look at.
#[derive(Debug, Serialize)]
pub struct ItemView {
    #[serde(flatten)]
    pub detail: ItemDetail,
    pub workspace: PathBuf,
    pub files: Vec<FileInfo>,
}

pub async fn item(s: &AppState, id: ItemId) -> ApiResult<ItemView> {
    let detail = s.call(s.store.item(id)).await?;
    let workspace = item_workspace(&s.config.engine.workspace, id);
    let dir = workspace.clone();
    let files = tokio::task::spawn_blocking(move || {
        workspace_files(&dir, MAX_FILES)
            .into_iter()
            .map(|path| FileInfo {
                bytes: std::fs::symlink_metadata(dir.join(&path)).map_or(0, |m| m.len()),
                path,
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    Ok(ItemView {
        detail,
        workspace,
        files,
    })
}

/// A workspace file's bytes (at most `MAX_FILE_BYTES`, and whether it was
/// cut), refusing any path that leaves the item's folder, symlinks included.
pub async fn read_file(s: &AppState, id: ItemId, rel: &str) -> ApiResult<(Vec<u8>, bool)> {
    let dir = item_workspace(&s.config.engine.workspace, id);
    let rel = rel.to_string();
    tokio::task::spawn_blocking(move || read_inside(&dir, &rel))
        .await
        .map_err(|e| ApiError::internal("reading the file failed", &e))?
}

fn read_inside(dir: &Path, rel: &str) -> ApiResult<(Vec<u8>, bool)> {
    use std::io::Read;
    let missing = || ApiError::not_found(format!("no file `{rel}` in this item's workspace"));
    if rel.is_empty() || Path::new(rel).is_absolute() || rel.split('/').any(|c| c == "..") {
        return Err(ApiError::bad_request(format!(
            "`{rel}` is not a path inside the workspace"
        )));
    }
    let root = dir.canonicalize().map_err(|_| missing())?;
    let path = root.join(rel).canonicalize().map_err(|_| missing())?;
    if !path.starts_with(&root) {
        return Err(ApiError::forbidden(
            "outside_workspace",
            format!("`{rel}` leads outside the item's workspace"),
        ));
    }
    let f = open_regular(&path).map_err(|_| missing())?;
    let meta = f.metadata().map_err(|_| missing())?;
    if !meta.is_file() {
        return Err(missing());
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::internal("the file could not be read", &e))?;
    Ok((bytes, meta.len() > MAX_FILE_BYTES))
}

/// A failure class as the API names it (`quality`, `infra`).
pub fn failure_class(s: &str) -> ApiResult<FailureClass> {
    FailureClass::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{s}` is not a failure class; classes: quality, infra"
        ))
    })
}

/// Run an item again, as `ideamill retry` does: where it stopped, or from
/// `from`; a done item needs `from`. With `failed`, only an item that
/// failed of that class runs again; any other is a conflict.
pub async fn retry(
    s: &AppState,
    id: ItemId,
    from: Option<&str>,
    failed: Option<FailureClass>,
) -> ApiResult<RetryEffect> {
    let detail = s.call(s.store.item(id)).await?;
    let item = &detail.item;
    if let Some(class) = failed
        && item.failure_class != Some(class)
    {
        return Err(ApiError::conflict(format!(
            "item {id} did not fail for {class} (it is {}{})",
            item.state,
            item.failure_class
                .map(|c| format!(", failed for {c}"))
                .unwrap_or_default()
        )));
    }
    let next = retry_job(
        &s.config,
        item.state,
        item.stage.as_deref(),
        item.round,
        from,
    )
    .map_err(|refused| match refused {
        RetryRefused::DoneNeedsFrom => ApiError::unprocessable(format!(
            "item {id} is done; to run it again, name the stage to start from (`from`)"
        )),
        RetryRefused::NoStage => ApiError::conflict(format!("item {id} has no stage to resume")),
        RetryRefused::UnknownStage { name, stages } => ApiError::unprocessable(format!(
            "no stage `{name}` in the config; stages: {}",
            stages.join(", ")
        )),
    })?;
    s.call(s.store.retry_item(id, &next, now_millis())).await
}

/// Run every item that failed of `class` again, where each stopped; newest
/// first. An item another hand retried meanwhile is left as it is.
pub async fn retry_failed(
    s: &AppState,
    class: FailureClass,
) -> ApiResult<Vec<(ItemId, RetryEffect)>> {
    let mut filter = ItemFilter {
        state: Some(StateFilter::Failed),
        failure: Some(class),
        limit: MAX_PAGE,
        ..ItemFilter::default()
    };
    let mut ids = Vec::new();
    loop {
        let page = s.call(s.store.list_items(&filter)).await?;
        ids.extend(page.iter().map(|i| i.id));
        match page.last() {
            Some(last) if page.len() as u32 == filter.limit => filter.before_id = Some(last.id),
            _ => break,
        }
    }
    let mut retried = Vec::with_capacity(ids.len());
    for id in ids {
        match retry(s, id, None, Some(class)).await {
            Ok(effect) => retried.push((id, effect)),
            // Retried or removed by another hand since the list was read.
            Err(e) if e.status == StatusCode::CONFLICT || e.status == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(retried)
}

pub async fn cancel(s: &AppState, id: ItemId) -> ApiResult<CancelEffect> {
    s.call(s.store.cancel_item(id, now_millis())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q: ItemsQuery =
            query(Some("state=failed&q=csv+json&before=10&limit=5&stage=")).unwrap();
        assert_eq!(
            q,
            ItemsQuery {
                state: Some("failed".into()),
                stage: None,
                failed: None,
                q: Some("csv json".into()),
                before: Some(10),
                limit: Some(5),
            }
        );
        assert_eq!(query::<ItemsQuery>(None).unwrap(), ItemsQuery::default());
        let bad = |raw: &str| query::<ItemsQuery>(Some(raw)).unwrap_err().message;
        assert!(
            bad("limit=ten").contains("invalid digit"),
            "{}",
            bad("limit=ten")
        );
        assert!(bad("colour=red").contains("unknown field `colour`"));
        let filter = |raw: &str| {
            query::<ItemsQuery>(Some(raw))
                .unwrap()
                .filter()
                .map_err(|e| e.message)
        };
        assert_eq!(
            filter("state=nope").unwrap_err(),
            "`nope` is not a state; states: active, queued, running, retrying, paused, done, failed, cancelled"
        );
        assert_eq!(
            filter("limit=0").unwrap_err(),
            "limit must be from 1 to 500, not 0"
        );
        assert_eq!(
            filter("before=-3").unwrap_err(),
            "before must be a positive item id"
        );
        assert_eq!(filter("state=all").unwrap().state, None);
    }

    #[test]
    fn ids() {
        assert_eq!(item_id("42"), Ok(42));
        assert_eq!(item_id("#42"), Ok(42));
        assert_eq!(item_id("0").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(
            item_id("x").unwrap_err().message,
            "`x` is not an item id (ids are positive numbers)"
        );
    }

    #[test]
    fn files_stay_inside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::write(ws.join("src/main.py"), "print(1)\n").unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), ws.join("link")).unwrap();
        assert_eq!(
            read_inside(&ws, "src/main.py").unwrap(),
            (b"print(1)\n".to_vec(), false)
        );
        assert_eq!(
            read_inside(&ws, "../secret").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            read_inside(&ws, "/etc/passwd").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            read_inside(&ws, "link").unwrap_err().code,
            "outside_workspace"
        );
        assert_eq!(
            read_inside(&ws, "nope.txt").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            read_inside(&ws, "src").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
