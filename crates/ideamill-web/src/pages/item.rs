//! `/items/{id}`: one item's whole story. Where it stands in the pipeline,
//! then every round: each attempt with its outcome, timing, tokens, cost and
//! output or error, and the QA feedback that ended the round; the generated
//! files with syntax highlighting; its events; retry and cancel buttons.
//! The live update asks with the version it shows and gets 204 when nothing
//! changed, so an open page costs one cheap answer per change of the mill.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ideamill_core::{AttemptOutcome, FailureClass, ItemId, ItemState, JobState, Millis};
use ideamill_store::{AttemptRow, JobRow};
use ideamill_sys::clock::now_millis;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::overview::{EventView, event_view};
use super::{PageError, WithState};
use crate::error::{ApiError, ApiResult};
use crate::view::{self, ItemView};
use crate::{AppState, highlight};

/// Characters of one output or error shown on the page; the API has all.
const MAX_SHOWN: usize = 64 * 1024;
/// Files shown with their content, and their bytes.
const MAX_FILES_SHOWN: usize = 30;
const MAX_FILE_SHOWN: u64 = 256 * 1024;
const MAX_FILES_TOTAL: u64 = 2 * 1024 * 1024;

#[derive(Serialize)]
struct Step {
    name: String,
    status: &'static str,
    detail: String,
}

#[derive(Serialize)]
struct Text {
    text: String,
    lines: usize,
    cut: usize,
}

fn text(s: &str) -> Text {
    let cut = s.chars().count().saturating_sub(MAX_SHOWN);
    let text: String = s.chars().take(MAX_SHOWN).collect();
    Text {
        lines: text.lines().count(),
        text,
        cut,
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Entry {
    Attempt {
        id: i64,
        job_id: i64,
        stage: String,
        attempt: u32,
        outcome: String,
        class: &'static str,
        started_at: Millis,
        took: Millis,
        exit_code: Option<i32>,
        error: Option<String>,
        output: Option<Text>,
        stderr: Option<Text>,
        tokens: Option<String>,
        cost: Option<f64>,
        model: Option<String>,
    },
    Waiting {
        job_id: i64,
        stage: String,
        state: String,
        class: &'static str,
        attempt: u32,
        since: Millis,
        run_at: Millis,
        owner: Option<String>,
    },
    Feedback {
        stage: String,
        text: Text,
        at: Millis,
    },
    /// Something done by hand (a retry) between attempts.
    Note {
        at: Millis,
        label: String,
        text: String,
    },
}

#[derive(Serialize)]
struct Round {
    round: u32,
    entries: Vec<Entry>,
    rejected: bool,
}

#[derive(Serialize)]
struct File {
    hidden: bool,
    path: String,
    bytes: u64,
    html: Option<String>,
    lines: usize,
    cut: bool,
    known: bool,
}

#[derive(Serialize)]
struct ItemPage {
    now: Millis,
    id: ItemId,
    version: String,
    text: String,
    metadata: Option<String>,
    display_state: String,
    class: &'static str,
    stage: Option<String>,
    round: u32,
    last_error: Option<String>,
    /// A failed item's failure class and what it means.
    failure_class: Option<&'static str>,
    failure_meaning: Option<&'static str>,
    created_at: Millis,
    finished_at: Option<Millis>,
    steps: Vec<Step>,
    rounds: Vec<Round>,
    files: Vec<File>,
    more_files: usize,
    workspace: String,
    /// The item's trace id, and its link when `[telemetry] trace_url` is set.
    trace_id: Option<String>,
    trace_url: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost: f64,
    attempts: usize,
    events: Vec<EventView>,
    can_retry: bool,
    can_cancel: bool,
    stages: Vec<String>,
    retry_from: Option<String>,
}

fn outcome_class(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Succeeded => "done",
        AttemptOutcome::Rejected => "rejected",
        AttemptOutcome::Error
        | AttemptOutcome::Timeout
        | AttemptOutcome::Hung
        | AttemptOutcome::Lost => "retrying",
        AttemptOutcome::Permanent => "failed",
        AttemptOutcome::Cancelled | AttemptOutcome::Released => "cancelled",
        AttemptOutcome::Paused => "paused",
    }
}

fn job_status(j: &JobRow) -> &'static str {
    match j.state {
        JobState::Succeeded => "done",
        JobState::Rejected => "rejected",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Running => "running",
        JobState::Paused => "paused",
        JobState::Queued if j.attempts > 0 => "retrying",
        JobState::Queued => "queued",
    }
}

/// The version of what the page shows: equal versions, equal pages (but
/// for relative times, which the browser keeps current).
fn version(v: &ItemView) -> String {
    let json = serde_json::to_vec(v).unwrap_or_default();
    Sha256::digest(&json)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the item stands at each stage of the pipeline.
fn steps(s: &AppState, v: &ItemView) -> Vec<Step> {
    let d = &v.detail;
    let current = d.item.stage.as_deref();
    let current_index = current.and_then(|c| s.config.stages.iter().position(|st| st.name == c));
    s.config
        .stages
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let latest = d
                .jobs
                .iter()
                .filter(|j| j.stage == st.name)
                .max_by_key(|j| j.id);
            let (status, detail) = match latest {
                // A later stage not yet run in this round waits, whatever an
                // earlier round did.
                Some(j)
                    if d.item.state == ItemState::Active
                        && current_index.is_some_and(|c| i > c)
                        && j.round < d.item.round =>
                {
                    ("pending", format!("round {} next", d.item.round))
                }
                Some(j) => (
                    job_status(j),
                    match j.round {
                        1 => String::new(),
                        r => format!("round {r}"),
                    },
                ),
                None if d.item.state == ItemState::Active => ("pending", String::new()),
                None => ("skipped", String::new()),
            };
            Step {
                name: st.name.clone(),
                status,
                detail,
            }
        })
        .collect()
}

fn attempt_entry(a: &AttemptRow, feedback_shown: bool) -> Entry {
    Entry::Attempt {
        id: a.id,
        job_id: a.job_id,
        stage: a.stage.clone(),
        attempt: a.attempt,
        outcome: a.outcome.to_string(),
        class: outcome_class(a.outcome),
        started_at: a.started_at,
        took: (a.finished_at - a.started_at).max(0),
        exit_code: a.exit_code,
        error: a.error.clone(),
        // A gate's rejection is its feedback, shown right after it.
        output: a
            .output
            .as_deref()
            .filter(|o| !o.trim().is_empty() && !feedback_shown)
            .map(text),
        stderr: a
            .stderr
            .as_deref()
            .filter(|o| !o.trim().is_empty())
            .map(text),
        tokens: a.usage.as_ref().map(|u| match u.known() {
            Some((prompt, completion, _)) => format!(
                "{}{prompt} in, {completion} out",
                if u.counted { "~" } else { "" },
            ),
            // Never 0: the stage reported nothing.
            None => "unknown".to_owned(),
        }),
        cost: a.usage.as_ref().and_then(|u| u.known()).map(|k| k.2),
        model: a.usage.as_ref().map(|u| u.model.clone()),
    }
}

/// Every round, oldest first: its attempts in the order they started, the
/// jobs still waiting, and the feedback that ended it.
fn rounds(v: &ItemView) -> Vec<Round> {
    let d = &v.detail;
    let mut by_round: BTreeMap<u32, Vec<(Millis, i64, Entry)>> = BTreeMap::new();
    for a in &d.attempts {
        let feedback_shown = a.outcome == AttemptOutcome::Rejected
            && d.feedback
                .iter()
                .any(|f| f.round == a.round && f.stage == a.stage);
        by_round.entry(a.round).or_default().push((
            a.started_at,
            a.id,
            attempt_entry(a, feedback_shown),
        ));
    }
    // Retries by hand, in the round of the first attempt after them.
    for e in d.events.iter().filter(|e| e.kind == "item_retried") {
        let round = d
            .attempts
            .iter()
            .filter(|a| a.started_at >= e.at)
            .min_by_key(|a| a.started_at)
            .map(|a| a.round)
            .or_else(|| d.jobs.iter().map(|j| j.round).max())
            .unwrap_or(1);
        by_round.entry(round).or_default().push((
            e.at,
            e.id,
            Entry::Note {
                at: e.at,
                label: "retried by hand".into(),
                text: e.message.clone(),
            },
        ));
    }
    for j in d.jobs.iter().filter(|j| {
        matches!(
            j.state,
            JobState::Queued | JobState::Running | JobState::Paused
        )
    }) {
        let attempt = j.attempts + u32::from(j.state != JobState::Running);
        by_round.entry(j.round).or_default().push((
            Millis::MAX,
            j.id,
            Entry::Waiting {
                job_id: j.id,
                stage: j.stage.clone(),
                state: job_status(j).to_string(),
                class: job_status(j),
                attempt: attempt.max(1),
                since: j.created_at,
                run_at: j.run_at,
                owner: j.lease_owner.clone(),
            },
        ));
    }
    let mut rejected_rounds = Vec::new();
    for f in &d.feedback {
        rejected_rounds.push(f.round);
        by_round.entry(f.round).or_default().push((
            f.created_at,
            i64::MAX,
            Entry::Feedback {
                stage: f.stage.clone(),
                text: text(&f.feedback),
                at: f.created_at,
            },
        ));
    }
    by_round
        .into_iter()
        .map(|(round, mut entries)| {
            // In time order (feedback comes after the attempt it judged),
            // jobs still waiting last.
            entries.sort_by_key(|(at, id, e)| (matches!(e, Entry::Waiting { .. }), *at, *id));
            Round {
                round,
                rejected: rejected_rounds.contains(&round),
                entries: entries.into_iter().map(|(_, _, e)| e).collect(),
            }
        })
        .collect()
}

/// The workspace files with their highlighted content (bounded), read and
/// highlighted off the event loop.
async fn files(s: &AppState, v: &ItemView) -> Vec<File> {
    let dir = v.workspace.clone();
    let mut list = v.files.clone();
    // What a stage wrote for people first; hidden files (a stage's own
    // bookkeeping) last.
    list.sort_by_key(|f| {
        (
            f.path.split('/').any(|c| c.starts_with('.')),
            f.path.clone(),
        )
    });
    let _ = s;
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        list.into_iter()
            .enumerate()
            .map(|(i, f)| {
                let known = highlight::knows(&f.path);
                let mut file = File {
                    hidden: f.path.split('/').any(|c| c.starts_with('.')),
                    path: f.path.clone(),
                    bytes: f.bytes,
                    html: None,
                    lines: 0,
                    cut: false,
                    known,
                };
                if i < MAX_FILES_SHOWN && total < MAX_FILES_TOTAL {
                    let path = dir.join(&f.path);
                    let inside = path
                        .canonicalize()
                        .ok()
                        .zip(dir.canonicalize().ok())
                        .is_some_and(|(p, d)| p.starts_with(d));
                    if inside && let Ok(bytes) = read_prefix(&path, MAX_FILE_SHOWN) {
                        total += bytes.len() as u64;
                        if !bytes.contains(&0) {
                            let text = String::from_utf8_lossy(&bytes);
                            file.lines = text.lines().count();
                            file.cut = f.bytes > MAX_FILE_SHOWN;
                            file.html = Some(highlight::highlight(&f.path, &text));
                        }
                    }
                }
                file
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

fn read_prefix(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    ideamill_sys::fs::open_regular(path)?
        .take(max)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

async fn view(s: &AppState, id: ItemId) -> ApiResult<(ItemPage, String)> {
    let v = view::item(s, id).await?;
    let version = version(&v);
    let files = files(s, &v).await;
    let d = &v.detail;
    let can_cancel = d.item.state == ItemState::Active;
    let waiting_retry = d
        .jobs
        .iter()
        .any(|j| (j.state == JobState::Queued && j.attempts > 0) || j.state == JobState::Paused);
    let can_retry = d.item.state != ItemState::Active || waiting_retry;
    let metadata = d
        .item
        .metadata
        .as_object()
        .filter(|m| !m.is_empty())
        .and_then(|m| serde_json::to_string_pretty(m).ok());
    let failure = d
        .item
        .failure_class
        .filter(|_| d.item.state == ItemState::Failed);
    let page = ItemPage {
        now: now_millis(),
        id,
        version: version.clone(),
        text: d.item.text.clone(),
        metadata,
        display_state: d.display_state.clone(),
        class: super::items::state_class(&d.display_state),
        stage: d.item.stage.clone(),
        round: d.item.round,
        last_error: d.item.last_error.clone(),
        failure_class: failure.map(FailureClass::as_str),
        failure_meaning: failure.map(super::items::failure_meaning),
        created_at: d.item.created_at,
        finished_at: d.item.finished_at,
        steps: steps(s, &v),
        rounds: rounds(&v),
        more_files: v.files.len().saturating_sub(MAX_FILES_SHOWN),
        files,
        workspace: v.workspace.display().to_string(),
        trace_id: d.item.trace_id.clone(),
        trace_url: d
            .item
            .trace_id
            .as_deref()
            .and_then(|t| s.config.telemetry.trace_link(t)),
        prompt_tokens: d.usage.prompt_tokens,
        completion_tokens: d.usage.completion_tokens,
        cost: d.usage.cost,
        attempts: d.attempts.len(),
        events: d.events.iter().rev().cloned().map(event_view).collect(),
        can_retry,
        can_cancel,
        stages: s.config.stages.iter().map(|st| st.name.clone()).collect(),
        retry_from: match d.item.state {
            ItemState::Done => s.config.stages.first().map(|st| st.name.clone()),
            _ => d.item.stage.clone(),
        },
    };
    Ok((page, version))
}

pub async fn page(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = view::item_id(&id).framed(&s)?;
    let (page, _) = view(&s, id).await.framed(&s)?;
    let body = s.templates.render("item.html", &page).framed(&s)?;
    super::page(&s, &format!("Item {id}"), "items", &body)
}

#[derive(Deserialize, Default)]
struct Since {
    v: Option<String>,
}

/// The item's part of the page, or 204 when it shows version `v` already.
pub async fn fragment(
    State(s): State<AppState>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let id = view::item_id(&id)?;
    let since: Since = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let (page, version) = view(&s, id).await?;
    if since.v.as_deref() == Some(version.as_str()) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(super::fragment(s.templates.render("item.html", &page)?))
}

#[derive(Deserialize, Default)]
struct RetryForm {
    from: Option<String>,
}

/// The retry button: as `POST /api/items/{id}/retry`, answered with the
/// item's part of the page as it now is.
pub async fn retry(
    State(s): State<AppState>,
    Path(id): Path<String>,
    request: Request<Body>,
) -> ApiResult<Response> {
    let id = view::item_id(&id)?;
    let (_, body) = crate::api::items::body(request).await?;
    let form: RetryForm = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::bad_request(format!("the form does not read: {e}")))?;
    let from = form.from.filter(|f| !f.is_empty());
    view::retry(&s, id, from.as_deref(), None).await?;
    s.live.poke();
    let (page, _) = view(&s, id).await?;
    Ok(super::fragment(s.templates.render("item.html", &page)?))
}

pub async fn cancel(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = view::item_id(&id)?;
    view::cancel(&s, id).await?;
    s.live.poke();
    let (page, _) = view(&s, id).await?;
    Ok(super::fragment(s.templates.render("item.html", &page)?))
}
