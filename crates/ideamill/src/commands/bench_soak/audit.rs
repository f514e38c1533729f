//! The soak's verdict, read from the store once the mill has drained:
//! every acknowledged idea is there and finished (nothing lost), no stage
//! output was committed twice, and every long wait of runnable work is
//! explained by a fault the soak caused or a stall the mill detected.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use ideamill_core::{ItemState, Millis};
use ideamill_store::{Event, EventFilter, ItemFilter, ItemSummary, Store, event_kind};

use super::chaos::{Action, Chaos};
use super::feed::Intake;
use super::watch::LongWait;

/// What the store says about the ideas the soak sent.
#[derive(Debug, Default, serde::Serialize)]
pub struct Findings {
    pub ideas_in_api: u64,
    pub ideas_in_inbox: u64,
    pub items_in_store: u64,
    pub done: u64,
    /// Failed items by `class (stage outcome)` of their last attempt.
    pub failed: BTreeMap<String, u64>,
    pub cancelled: u64,
    /// Acknowledged ideas the store does not have.
    pub lost: Vec<i64>,
    /// Acknowledged ideas still unfinished, with their state.
    pub in_flight: Vec<String>,
    /// Good inbox files neither taken nor still waiting, or rejected.
    pub inbox_files_missing: Vec<String>,
    /// `item/stage/round` with more than one output, or a job with more
    /// than one succeeded attempt.
    pub duplicates: Vec<String>,
    /// Pickup (attempt start − runnable), ms, of jobs tried once.
    pub pickup_p50_ms: i64,
    pub pickup_p99_ms: i64,
    pub pickup_samples: usize,
    /// Events by kind over the soak.
    pub events: BTreeMap<String, u64>,
    /// Stalls the mill found (see [`is_detected_stall`]).
    pub stalls_detected: u64,
    /// Long waits of runnable work and what explains each.
    pub long_waits: Vec<(LongWait, String)>,
    /// Where each hostile file ended: `processed`, `rejected`, `inbox` or `gone`.
    pub hostile_files: BTreeMap<String, u64>,
    /// Malformed requests answered with a 500 (bad input is a 4xx).
    pub malformed_500: Vec<String>,
    /// Job control groups of the mill's dead engines still there, with
    /// the processes in them: the next engine removes them.
    pub sandbox_leftovers: Vec<String>,
}

/// The job groups whose engine, one of `engines`, is dead, and what is in
/// them. Any engine that starts removes those, so after the drain none may
/// be left (a killed engine's supervisor always starts another).
pub fn sandbox_leftovers(engines: &BTreeSet<u32>) -> Vec<String> {
    use ideamill_stages::sandbox::cgroup;
    cgroup::job_groups_here()
        .into_iter()
        .filter(|(name, _)| {
            cgroup::engine_of(name).is_some_and(|pid| {
                engines.contains(&pid) && !Path::new(&format!("/proc/{pid}")).exists()
            })
        })
        .map(|(_, dir)| {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            format!("{} ({} processes)", dir.display(), procs.lines().count())
        })
        .collect()
}

/// Read every item the store has, newest first.
async fn all_items(store: &dyn Store) -> anyhow::Result<Vec<ItemSummary>> {
    let mut items = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_items(&ItemFilter {
                before_id: before,
                limit: 500,
                ..ItemFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        items.extend(page);
    }
    Ok(items)
}

/// Every event since `since`.
pub async fn events_since(store: &dyn Store, since: Millis) -> anyhow::Result<Vec<Event>> {
    Ok(store
        .events(&EventFilter {
            since: Some(since),
            limit: 1_000_000,
            ..EventFilter::default()
        })
        .await?)
}

/// The ids an inbox file became, from its sidecar in `processed/`; `Err`
/// with where it is otherwise.
fn inbox_ids(inbox: &Path, name: &str) -> Result<Vec<i64>, String> {
    let sidecar = inbox.join("processed").join(format!("{name}.items.json"));
    if let Ok(text) = std::fs::read_to_string(&sidecar) {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{name}: bad sidecar: {e}"))?;
        return Ok(v["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|i| i.as_i64()).collect())
            .unwrap_or_default());
    }
    if inbox.join("rejected").join(name).exists() {
        let why = std::fs::read_to_string(inbox.join("rejected").join(format!("{name}.error.txt")))
            .unwrap_or_default();
        return Err(format!("{name}: rejected: {}", why.trim()));
    }
    if inbox.join(name).exists() {
        return Err(format!("{name}: still in the inbox"));
    }
    Err(format!("{name}: gone"))
}

fn hostile_fate(inbox: &Path, name: &str) -> &'static str {
    let there = |p: std::path::PathBuf| std::fs::symlink_metadata(p).is_ok();
    if there(inbox.join("processed").join(name)) {
        "processed"
    } else if there(inbox.join("rejected").join(name)) {
        "rejected"
    } else if there(inbox.join(name)) {
        "inbox"
    } else {
        "gone"
    }
}

/// The margins the stall check uses.
pub struct Margins {
    pub stall_after: Duration,
    /// After an outage ends: the lease to expire, an engine to start.
    pub recovery: Duration,
    /// The supervisor's longest wait before it starts a new engine (its
    /// backoff grows while engines keep ending within its restart window).
    pub restart_backoff: Duration,
}

pub async fn audit(
    store: &dyn Store,
    intake: &Intake,
    inbox: &Path,
    actions: &[Action],
    long_waits: &[LongWait],
    events: &[Event],
    margins: &Margins,
) -> anyhow::Result<Findings> {
    let mut f = Findings {
        ideas_in_api: intake.api_ids.len() as u64,
        ..Findings::default()
    };
    let mut accepted: Vec<i64> = intake.api_ids.iter().map(|(id, _)| *id).collect();
    for name in &intake.inbox_files {
        match inbox_ids(inbox, name) {
            Ok(ids) => {
                f.ideas_in_inbox += ids.len() as u64;
                accepted.extend(ids);
            }
            Err(why) => f.inbox_files_missing.push(why),
        }
    }
    f.malformed_500 = intake
        .malformed
        .keys()
        .filter(|k| k.ends_with(" 500"))
        .cloned()
        .collect();
    for (name, _) in &intake.hostile_files {
        *f.hostile_files
            .entry(hostile_fate(inbox, name).into())
            .or_default() += 1;
    }

    let items = all_items(store).await?;
    f.items_in_store = items.len() as u64;
    let by_id: HashMap<i64, &ItemSummary> = items.iter().map(|i| (i.id, i)).collect();
    let accepted: HashSet<i64> = accepted.into_iter().collect();
    let mut lost: Vec<i64> = accepted
        .iter()
        .filter(|id| !by_id.contains_key(id))
        .copied()
        .collect();
    lost.sort();
    f.lost = lost;

    let mut pickups = Vec::new();
    for item in &items {
        let detail = store.item(item.id).await?;
        match item.state {
            ItemState::Done => f.done += 1,
            ItemState::Cancelled => f.cancelled += 1,
            ItemState::Failed => {
                let last = detail.attempts.last();
                let reason = format!(
                    "{} ({})",
                    item.failure_class
                        .map_or("unclassified".into(), |c| format!("{c:?}").to_lowercase()),
                    last.map_or("no attempt".into(), |a| format!(
                        "{} {:?}",
                        a.stage, a.outcome
                    )
                    .to_lowercase())
                );
                *f.failed.entry(reason).or_default() += 1;
            }
            ItemState::Active => {
                if accepted.contains(&item.id) {
                    f.in_flight.push(format!(
                        "item {} {} at {}",
                        item.id,
                        item.display_state,
                        item.stage.as_deref().unwrap_or("-")
                    ));
                }
            }
        }
        let mut outputs: HashMap<(&str, u32), u32> = HashMap::new();
        for o in &detail.outputs {
            *outputs.entry((&o.stage, o.round)).or_default() += 1;
        }
        for ((stage, round), n) in outputs {
            if n > 1 {
                f.duplicates.push(format!(
                    "item {}: {n} outputs of {stage} round {round}",
                    item.id
                ));
            }
        }
        let mut succeeded: HashMap<i64, u32> = HashMap::new();
        for a in &detail.attempts {
            if a.outcome == ideamill_core::AttemptOutcome::Succeeded {
                *succeeded.entry(a.job_id).or_default() += 1;
            }
        }
        for (job, n) in succeeded {
            if n > 1 {
                f.duplicates
                    .push(format!("item {}: job {job} succeeded {n} times", item.id));
            }
        }
        for job in detail.jobs.iter().filter(|j| j.attempts == 1) {
            if let Some(a) = detail.attempts.iter().find(|a| a.job_id == job.id) {
                pickups.push((a.started_at - job.run_at).max(0));
            }
        }
    }
    pickups.sort();
    let at = |q: f64| {
        pickups
            .get(((pickups.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    f.pickup_p50_ms = at(0.5);
    f.pickup_p99_ms = at(0.99);
    f.pickup_samples = pickups.len();

    for e in events {
        *f.events.entry(e.kind.clone()).or_default() += 1;
    }
    f.stalls_detected = events.iter().filter(|e| is_detected_stall(e)).count() as u64;
    f.long_waits = long_waits
        .iter()
        .map(|w| (w.clone(), explain(w, actions, events, margins)))
        .collect();
    Ok(f)
}

/// A stall the mill found: an `engine_stalled` event, or a restart by the
/// supervisor for a stale heartbeat (which it records as
/// `engine_restarted` "…; stalled for N ms", the text the alerts read too).
pub fn is_detected_stall(e: &Event) -> bool {
    e.kind == event_kind::ENGINE_STALLED
        || (e.kind == event_kind::ENGINE_RESTARTED && e.message.contains("stalled for"))
}

/// What explains a long wait, or `UNEXPLAINED`.
pub fn explain(w: &LongWait, actions: &[Action], events: &[Event], m: &Margins) -> String {
    let recovery = m.recovery.as_millis() as i64;
    let stall = m.stall_after.as_millis() as i64;
    let overlaps = |start: Millis, end: Millis| start <= w.until && w.since <= end;
    for a in actions {
        let excused = a.kind.is_outage()
            // A stop shorter than stall_after is a pause nobody should detect.
            || (a.kind == Chaos::EngineStop && a.end - a.at < stall);
        if excused && overlaps(a.at, a.end + recovery) {
            return format!("{} at {}", a.kind.name(), a.at);
        }
    }
    let backoff = m.restart_backoff.as_millis() as i64;
    let detected = [
        event_kind::ENGINE_STALLED,
        event_kind::ENGINE_RESTARTED,
        event_kind::STORE_OUTAGE,
    ];
    if let Some(e) = events.iter().find(|e| {
        detected.contains(&e.kind.as_str())
            && overlaps(e.at - stall - recovery, e.at + backoff + recovery)
    }) {
        return format!("{} at {}", e.kind, e.at);
    }
    "UNEXPLAINED".into()
}

impl Findings {
    /// Every broken invariant, in words.
    pub fn violations(&self, drained: bool) -> Vec<String> {
        let mut v = Vec::new();
        if !self.lost.is_empty() {
            v.push(format!(
                "{} acknowledged ideas are not in the store: {:?}",
                self.lost.len(),
                self.lost
            ));
        }
        if !drained || !self.in_flight.is_empty() {
            v.push(format!(
                "the mill did not drain: {} acknowledged ideas unfinished ({})",
                self.in_flight.len(),
                self.in_flight
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if !self.inbox_files_missing.is_empty() {
            v.push(format!(
                "good inbox files not taken: {}",
                self.inbox_files_missing.join("; ")
            ));
        }
        if !self.duplicates.is_empty() {
            v.push(format!(
                "stage outputs committed twice: {}",
                self.duplicates.join("; ")
            ));
        }
        for (w, why) in &self.long_waits {
            if why == "UNEXPLAINED" {
                v.push(format!(
                    "runnable work waited {:.1}s with a free slot ({} to {}) and no stall was detected",
                    (w.until - w.since) as f64 / 1e3,
                    ideamill_sys::clock::utc_stamp(w.since),
                    ideamill_sys::clock::utc_stamp(w.until)
                ));
            }
        }
        if !self.sandbox_leftovers.is_empty() {
            v.push(format!(
                "job control groups of killed engines left behind: {}",
                self.sandbox_leftovers.join("; ")
            ));
        }
        if !self.malformed_500.is_empty() {
            v.push(format!(
                "malformed requests answered 500: {}",
                self.malformed_500.join(", ")
            ));
        }
        // Each is refused (too big, binary, not UTF-8, a link or FIFO,
        // nesting or ideas past the limits, no text): filed in `rejected/`.
        let elsewhere: Vec<String> = self
            .hostile_files
            .iter()
            .filter(|(fate, _)| fate.as_str() != "rejected")
            .map(|(fate, n)| format!("{n} {fate}"))
            .collect();
        if !elsewhere.is_empty() {
            v.push(format!(
                "hostile inbox files not rejected: {}",
                elsewhere.join(", ")
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(kind: Chaos, at: Millis, end: Millis) -> Action {
        Action {
            kind,
            at,
            end,
            detail: String::new(),
        }
    }

    fn event(kind: &str, at: Millis) -> Event {
        Event {
            id: 1,
            at,
            kind: kind.into(),
            item_id: None,
            job_id: None,
            process: None,
            message: String::new(),
        }
    }

    /// `explain` of a wait from `since` to `until` (seconds) against the
    /// faults and events given, with stall_after 5 s and 30 s of recovery.
    fn check(since: i64, until: i64, actions: &[Action], events: &[Event], explained: bool) {
        let margins = Margins {
            stall_after: Duration::from_secs(5),
            recovery: Duration::from_secs(30),
            restart_backoff: Duration::from_secs(30),
        };
        let wait = LongWait {
            since: since * 1000,
            until: until * 1000,
        };
        let why = explain(&wait, actions, events, &margins);
        assert_eq!(why != "UNEXPLAINED", explained, "{since}..{until}: {why}");
    }

    #[test]
    fn a_long_wait_needs_a_fault_or_a_detected_stall() {
        let kill = action(Chaos::EngineKill, 100_000, 101_000);
        // Nothing happened: unexplained.
        check(200, 220, &[], &[], false);
        // During a kill or within its recovery: explained.
        check(100, 120, std::slice::from_ref(&kill), &[], true);
        check(125, 140, std::slice::from_ref(&kill), &[], true);
        // Long after it: not.
        check(200, 220, std::slice::from_ref(&kill), &[], false);
        // A short SIGSTOP is a pause nobody must detect.
        check(
            100,
            118,
            &[action(Chaos::EngineStop, 100_000, 103_000)],
            &[],
            true,
        );
        // A long one must be detected by the mill.
        let long_stop = [action(Chaos::EngineStop, 100_000, 112_000)];
        check(100, 118, &long_stop, &[], false);
        check(
            100,
            118,
            &long_stop,
            &[event(event_kind::ENGINE_STALLED, 105_500)],
            true,
        );
        // After a restart the supervisor may back off before the next engine.
        let restarted = [event(event_kind::ENGINE_RESTARTED, 105_000)];
        check(106, 160, &[], &restarted, true);
        check(170, 190, &[], &restarted, false);
        // Hostile files and requests explain nothing.
        check(
            100,
            118,
            &[action(Chaos::InboxHostile, 100_000, 100_000)],
            &[],
            false,
        );
    }
}
