//! `/`: the overview. First the verdict, in colour and plain words, with its
//! reasons; then counts, the charts, the queue per stage, the engines and
//! their heartbeats, the QA lift of each gate, the running jobs and the
//! latest events.

use axum::extract::State;
use axum::response::Response;
use ideamill_core::{ItemId, Millis};
use ideamill_health::verdict::{Level, Verdict};
use ideamill_store::{EventFilter, StatusSnapshot};
use ideamill_sys::clock::now_millis;
use serde::Serialize;

use super::{PageError, WithState};
use crate::AppState;

/// Running jobs shown with their idea's text.
const RUNNING_TEXTS: usize = 8;

#[derive(Serialize)]
struct Reason {
    level: &'static str,
    class: &'static str,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct Banner {
    level: &'static str,
    class: &'static str,
    headline: String,
    summary: String,
    reasons: Vec<Reason>,
}

#[derive(Serialize, Default)]
struct Counts {
    active: u64,
    running: u64,
    queued: u64,
    scheduled: u64,
    paused: u64,
    done: u64,
    failed: u64,
    cancelled: u64,
    tokens: u64,
    cost: f64,
}

#[derive(Serialize)]
struct Stage {
    name: String,
    queued: u64,
    scheduled: u64,
    running: u64,
    concurrency: u64,
    /// Bar lengths in percent of the busiest stage.
    queued_pct: f64,
    scheduled_pct: f64,
    running_pct: f64,
    known: bool,
}

#[derive(Serialize)]
struct Running {
    job_id: i64,
    item_id: ItemId,
    /// The idea, for the first few running jobs.
    text: Option<String>,
    stage: String,
    round: u32,
    attempt: u32,
    owner: String,
    started_at: Millis,
    overdue: bool,
}

#[derive(Serialize)]
struct Engine {
    id: String,
    host: String,
    pid: u32,
    version: String,
    started_at: Millis,
    last_beat_at: Millis,
    held_jobs: u64,
    silent: bool,
}

#[derive(Serialize)]
pub struct EventView {
    pub id: i64,
    pub at: Millis,
    pub kind: String,
    pub label: String,
    pub class: &'static str,
    pub item_id: Option<ItemId>,
    pub message: String,
}

/// One gate and model in the "QA lift" panel, with its figures as shown.
#[derive(Serialize)]
struct QaRow {
    stage: String,
    model: String,
    passed_first: u64,
    passed_later: u64,
    failed: u64,
    no_progress: u64,
    judged: u64,
    first_rate: String,
    final_rate: String,
    lift: String,
}

impl From<ideamill_store::GateLift> for QaRow {
    fn from(g: ideamill_store::GateLift) -> QaRow {
        let pct = |r: Option<f64>| r.map_or("—".into(), |r| format!("{:.0}%", r * 100.0));
        QaRow {
            first_rate: pct(g.first_pass_rate()),
            final_rate: pct(g.final_pass_rate()),
            lift: g.lift().map_or("—".into(), |l| format!("×{l:.2}")),
            passed_first: g.passed_first(),
            passed_later: g.passed_later(),
            judged: g.judged(),
            failed: g.failed,
            no_progress: g.no_progress,
            model: g.model.unwrap_or_else(|| "no model".into()),
            stage: g.stage,
        }
    }
}

#[derive(Serialize)]
struct Qa {
    /// The config has a gate: the panel is shown.
    shown: bool,
    /// The store answered.
    ok: bool,
    rows: Vec<QaRow>,
}

#[derive(Serialize)]
struct Overview {
    now: Millis,
    banner: Banner,
    counts: Counts,
    stages: Vec<Stage>,
    running: Vec<Running>,
    engines: Vec<Engine>,
    events: Vec<EventView>,
    qa: Qa,
    store_ok: bool,
}

pub fn level_class(l: Level) -> &'static str {
    match l {
        Level::Healthy => "healthy",
        Level::Degraded => "degraded",
        Level::Stalled => "stalled",
        Level::Down => "down",
    }
}

/// How an event reads and looks: failures red, recoveries amber.
pub fn event_view(e: ideamill_store::Event) -> EventView {
    let class = match e.kind.as_str() {
        "item_failed" | "alert_failed" | "supervisor_gave_up" | "engine_stalled"
        | "inbox_rejected" => "bad",
        "lease_expired"
        | "process_dead"
        | "jobs_released"
        | "stale_completion"
        | "engine_restarted"
        | "store_outage"
        | "budget_reached"
        | "gate_rejected"
        | "retry_scheduled"
        | "sandbox_leftovers_removed" => "warn",
        "item_retried" | "budget_resumed" | "alert_sent" | "inbox_taken" | "imported" => "good",
        _ => "info",
    };
    EventView {
        id: e.id,
        at: e.at,
        label: e.kind.replace('_', " "),
        kind: e.kind,
        class,
        item_id: e.item_id,
        message: e.message,
    }
}

fn banner(v: &Verdict, snapshot: Option<&StatusSnapshot>, live_engines: usize) -> Banner {
    let (running, queued, scheduled) = snapshot.map_or((0, 0, 0), |s| {
        s.stages.iter().fold((0, 0, 0), |(r, q, d), c| {
            (r + c.running, q + c.queued, d + c.scheduled)
        })
    });
    let headline = match v.verdict {
        Level::Healthy if running > 0 => "Healthy — work is moving".to_string(),
        Level::Healthy if queued > 0 => "Healthy — work is about to start".to_string(),
        Level::Healthy if scheduled > 0 => "Healthy — waiting for retries to come due".to_string(),
        Level::Healthy => "Healthy — idle, nothing to do".to_string(),
        Level::Degraded => "Degraded — work goes on, but something needs a look".to_string(),
        Level::Stalled => "Stalled — an engine is hung and is being replaced".to_string(),
        Level::Down => "Down — no work can be done until someone acts".to_string(),
    };
    let mut summary = vec![match live_engines {
        0 => "no engine running".to_string(),
        1 => "1 engine beating".to_string(),
        n => format!("{n} engines beating"),
    }];
    summary.push(format!("{running} running"));
    summary.push(format!("{queued} queued"));
    if scheduled > 0 {
        summary.push(format!("{scheduled} waiting to retry"));
    }
    if let Some(s) = snapshot
        && s.paused > 0
    {
        summary.push(format!("{} paused by a budget", s.paused));
    }
    Banner {
        level: v.verdict.as_str(),
        class: level_class(v.verdict),
        headline,
        summary: summary.join(" · "),
        reasons: v
            .reasons
            .iter()
            .map(|r| Reason {
                level: r.level.as_str(),
                class: level_class(r.level),
                code: r.code,
                message: r.message.clone(),
            })
            .collect(),
    }
}

async fn render(s: &AppState) -> Result<String, PageError> {
    let now = now_millis();
    let recent = EventFilter {
        limit: 12,
        ..EventFilter::default()
    };
    let ((verdict, snapshot), events, gates) = tokio::join!(
        s.verdict(now),
        s.call(s.store.events(&recent)),
        s.gate_lift()
    );
    let events = events.unwrap_or_default();
    let qa = Qa {
        shown: s.config.stages.iter().any(|st| st.gate.is_some()),
        ok: gates.is_ok(),
        rows: gates
            .unwrap_or_default()
            .into_iter()
            .map(QaRow::from)
            .collect(),
    };
    let stale_after = (ideamill_core::duration::millis(s.config.engine.heartbeat) * 3).max(10_000);
    let engines: Vec<Engine> = snapshot
        .as_ref()
        .map(|sn| {
            sn.processes
                .iter()
                .map(|p| Engine {
                    id: p.id.clone(),
                    host: p.host.clone(),
                    pid: p.pid,
                    version: p.version.clone(),
                    started_at: p.started_at,
                    last_beat_at: p.last_beat_at,
                    held_jobs: p.held_jobs,
                    silent: now - p.last_beat_at > stale_after,
                })
                .collect()
        })
        .unwrap_or_default();
    let live = engines.iter().filter(|e| !e.silent).count();
    let banner = banner(&verdict, snapshot.as_ref(), live);
    let mut counts = Counts::default();
    let mut stages = Vec::new();
    let mut running = Vec::new();
    if let Some(sn) = &snapshot {
        counts = Counts {
            active: sn.items.active,
            done: sn.items.done,
            failed: sn.items.failed,
            cancelled: sn.items.cancelled,
            paused: sn.paused,
            tokens: sn.today.tokens(),
            cost: sn.today.cost,
            ..Counts::default()
        };
        // Every configured stage in pipeline order, then any the store still
        // holds work for that the config no longer names.
        let mut rows: Vec<(String, u64, u64, u64, u64, bool)> = s
            .config
            .stages
            .iter()
            .map(|st| {
                let c = sn.stages.iter().find(|c| c.stage == st.name);
                (
                    st.name.clone(),
                    c.map_or(0, |c| c.queued),
                    c.map_or(0, |c| c.scheduled),
                    c.map_or(0, |c| c.running),
                    u64::from(st.concurrency),
                    true,
                )
            })
            .collect();
        for c in sn
            .stages
            .iter()
            .filter(|c| s.config.stage(&c.stage).is_none())
        {
            rows.push((c.stage.clone(), c.queued, c.scheduled, c.running, 0, false));
        }
        let max = rows
            .iter()
            .map(|r| r.1 + r.2 + r.3)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        for (name, queued, scheduled, run, concurrency, known) in rows {
            counts.queued += queued;
            counts.scheduled += scheduled;
            counts.running += run;
            stages.push(Stage {
                queued_pct: queued as f64 * 100.0 / max,
                scheduled_pct: scheduled as f64 * 100.0 / max,
                running_pct: run as f64 * 100.0 / max,
                name,
                queued,
                scheduled,
                running: run,
                concurrency,
                known,
            });
        }
        running = sn
            .running
            .iter()
            .map(|j| {
                let limit = s.config.stage(&j.stage).map_or(Millis::MAX, |st| {
                    ideamill_core::duration::millis(st.timeout)
                });
                Running {
                    text: None,
                    job_id: j.job_id,
                    item_id: j.item_id,
                    stage: j.stage.clone(),
                    round: j.round,
                    attempt: j.attempt,
                    owner: j.owner.clone(),
                    started_at: j.started_at,
                    overdue: now - j.started_at > limit,
                }
            })
            .collect();
    }
    // What the first running jobs work on, in words (one read each).
    let shown: Vec<ItemId> = running
        .iter()
        .take(RUNNING_TEXTS)
        .map(|r| r.item_id)
        .collect();
    let texts =
        futures_util::future::join_all(shown.iter().map(|id| s.call(s.store.item(*id)))).await;
    for (id, detail) in shown.iter().zip(texts) {
        if let Ok(d) = detail {
            for r in running.iter_mut().filter(|r| r.item_id == *id) {
                r.text = Some(d.item.text.clone());
            }
        }
    }
    let view = Overview {
        now,
        banner,
        counts,
        stages,
        running,
        engines,
        events: events.into_iter().rev().map(event_view).collect(),
        qa,
        store_ok: snapshot.is_some(),
    };
    s.templates.render("overview.html", view).framed(s)
}

pub async fn page(State(s): State<AppState>) -> Result<Response, PageError> {
    let body = render(&s).await?;
    super::page(&s, "Overview", "overview", &body)
}

pub async fn fragment(State(s): State<AppState>) -> Result<Response, PageError> {
    Ok(super::fragment(render(&s).await?))
}
