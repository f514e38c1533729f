//! What an alert says, and when one is due: from a recorded event (a
//! restart, a failed item, a budget) or from a change of the health verdict.
//! Pure: the monitor feeds these functions what it read.

use ideamill_core::config::AlertTrigger;
use ideamill_core::{ItemId, Millis};
use ideamill_health::verdict::{Level, Verdict};
use ideamill_store::{Event, event_kind};
use serde::{Deserialize, Serialize};

/// How urgent an alert is; it sets ntfy's priority and the webhook's field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Someone must act now: an engine hung, nothing runs.
    Critical,
    /// Work goes on, but something needs a look.
    Warning,
    /// Nothing is wrong: a test alert.
    Info,
    /// A problem alerted before is gone.
    Resolved,
}

impl Severity {
    /// The lowercase name the webhook's `severity` field carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
            Severity::Resolved => "resolved",
        }
    }
}

/// One alert, before it meets its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// A target hears it when it listens to any of these.
    pub triggers: Vec<AlertTrigger>,
    /// Alerts with the same key are one alert for the cooldown.
    pub key: String,
    /// How urgent it is.
    pub severity: Severity,
    /// One line, plain words.
    pub title: String,
    /// The details: the event's message, or the verdict's reasons.
    pub message: String,
    /// The item it concerns, for the dashboard link.
    pub item_id: Option<ItemId>,
    /// When it happened (the event's time, or the verdict's).
    pub at: Millis,
    /// Sent by `ideamill alert test`.
    pub test: bool,
}

/// The alert a recorded event calls for, if any.
pub fn from_event(e: &Event) -> Option<Alert> {
    let (triggers, key, severity, title) = match e.kind.as_str() {
        event_kind::ENGINE_STALLED => (
            vec![AlertTrigger::Stall],
            "engine_stalled",
            Severity::Critical,
            "An engine stalled".to_string(),
        ),
        // The supervisor's restart after a hang is a stall alert too, and
        // one alert (not two) for one incident.
        event_kind::ENGINE_RESTARTED if e.message.contains("stalled for") => (
            vec![AlertTrigger::Stall, AlertTrigger::Restart],
            "engine_stalled",
            Severity::Critical,
            "An engine stalled and was restarted".to_string(),
        ),
        event_kind::ENGINE_RESTARTED => (
            vec![AlertTrigger::Restart],
            "engine_restarted",
            Severity::Warning,
            "The engine was restarted".to_string(),
        ),
        event_kind::SUPERVISOR_GAVE_UP => (
            vec![AlertTrigger::Restart],
            "supervisor_gave_up",
            Severity::Critical,
            "The supervisor gave up: no engine runs".to_string(),
        ),
        event_kind::ITEM_FAILED => (
            vec![AlertTrigger::ItemFailed],
            "item_failed",
            Severity::Warning,
            match e.item_id {
                Some(id) => format!("Item {id} failed"),
                None => "An item failed".to_string(),
            },
        ),
        // A job's hang is a stall too, of one job rather than the engine:
        // a warning (the job is retried), one alert per cooldown.
        event_kind::JOB_HUNG => (
            vec![AlertTrigger::Stall],
            "job_hung",
            Severity::Warning,
            match e.item_id {
                Some(id) => format!("A job of item {id} hung and was killed"),
                None => "A job hung and was killed".to_string(),
            },
        ),
        event_kind::BUDGET_REACHED => (
            vec![AlertTrigger::Budget],
            "budget_reached",
            Severity::Warning,
            "A budget cap paused work".to_string(),
        ),
        _ => return None,
    };
    Some(Alert {
        triggers,
        key: key.to_string(),
        severity,
        title,
        message: e.message.clone(),
        item_id: e.item_id,
        at: e.at,
        test: false,
    })
}

/// What the monitor remembers of the last verdict it saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// HEALTHY, DEGRADED, STALLED or DOWN.
    pub level: Option<String>,
    /// Reason codes of that verdict.
    pub codes: Vec<String>,
}

impl Seen {
    /// What to remember of `v`.
    pub fn of(v: &Verdict) -> Seen {
        Seen {
            level: Some(v.verdict.as_str().to_string()),
            codes: v.reasons.iter().map(|r| r.code.to_string()).collect(),
        }
    }
}

/// The alerts a new verdict calls for, given the last one seen (`None` at
/// the first look, when only trouble is worth saying).
pub fn from_verdict(before: &Seen, now: &Verdict, at: Millis) -> Vec<Alert> {
    let reasons = || {
        now.reasons
            .iter()
            .map(|r| format!("- {} [{}]", r.message, r.code))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let stuck_now = now.reasons.iter().any(|r| r.code == "queue_not_moving");
    let stuck_before = before.codes.iter().any(|c| c == "queue_not_moving");
    let mut alerts = Vec::new();
    let changed = before.level.as_deref() != Some(now.verdict.as_str())
        && !(before.level.is_none() && now.verdict == Level::Healthy);
    if changed {
        let mut triggers = vec![AlertTrigger::Verdict];
        if now.verdict == Level::Stalled {
            triggers.push(AlertTrigger::Stall);
        }
        if stuck_now && !stuck_before {
            triggers.push(AlertTrigger::QueueStuck);
        }
        let (severity, title, message) = match now.verdict {
            Level::Healthy => (
                Severity::Resolved,
                "ideamill is HEALTHY again".to_string(),
                match &before.level {
                    Some(l) => format!("It was {l}; nothing needs a look now."),
                    None => "Nothing needs a look.".to_string(),
                },
            ),
            Level::Degraded => (
                Severity::Warning,
                "ideamill is DEGRADED: work goes on, something needs a look".to_string(),
                reasons(),
            ),
            Level::Stalled => (
                Severity::Critical,
                "ideamill is STALLED: an engine is hung".to_string(),
                reasons(),
            ),
            Level::Down => (
                Severity::Critical,
                "ideamill is DOWN: no work can be done until someone acts".to_string(),
                reasons(),
            ),
        };
        alerts.push(Alert {
            triggers,
            key: format!("verdict:{}", now.verdict),
            severity,
            title,
            message,
            item_id: None,
            at,
            test: false,
        });
    } else if stuck_now && !stuck_before {
        alerts.push(Alert {
            triggers: vec![AlertTrigger::QueueStuck],
            key: "queue_stuck".to_string(),
            severity: Severity::Warning,
            title: "The queue is stuck: runnable work is not moving".to_string(),
            message: reasons(),
            item_id: None,
            at,
            test: false,
        });
    }
    alerts
}

/// What `ideamill alert test` sends.
pub fn test_alert(at: Millis) -> Alert {
    Alert {
        triggers: AlertTrigger::ALL.to_vec(),
        key: format!("test:{at}"),
        severity: Severity::Info,
        title: "Test alert from ideamill".to_string(),
        message: "If you can read this, this target receives ideamill's alerts.".to_string(),
        item_id: None,
        at,
        test: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ideamill_health::verdict::Reason;

    fn event(kind: &str, message: &str) -> Event {
        Event {
            id: 1,
            at: 5,
            kind: kind.into(),
            item_id: Some(7),
            job_id: None,
            process: None,
            message: message.into(),
        }
    }

    fn check_event(kind: &str, message: &str, expected: Option<(&[AlertTrigger], &str, Severity)>) {
        let got = from_event(&event(kind, message));
        let got = got
            .as_ref()
            .map(|a| (a.triggers.as_slice(), a.key.as_str(), a.severity));
        assert_eq!(got, expected, "{kind}: {message}");
    }

    #[test]
    fn events_that_alert() {
        use AlertTrigger::*;
        check_event(
            "engine_restarted",
            "Engine pid 9 ended: its heartbeat went stale; stalled for 5200 ms; restarting",
            Some((&[Stall, Restart], "engine_stalled", Severity::Critical)),
        );
        check_event(
            "engine_restarted",
            "Engine pid 9 ended: exited with code 101; restarting",
            Some((&[Restart], "engine_restarted", Severity::Warning)),
        );
        check_event(
            "supervisor_gave_up",
            "gave up",
            Some((&[Restart], "supervisor_gave_up", Severity::Critical)),
        );
        check_event(
            "item_failed",
            "Item 7 failed: boom",
            Some((&[ItemFailed], "item_failed", Severity::Warning)),
        );
        check_event(
            "budget_reached",
            "Item 7 paused",
            Some((&[Budget], "budget_reached", Severity::Warning)),
        );
        check_event(
            "job_hung",
            "Job 3 (item 7, stage `impl`), attempt 1 of 3: hung: ...",
            Some((&[Stall], "job_hung", Severity::Warning)),
        );
        check_event("retry_scheduled", "retry", None);
        check_event("alert_failed", "could not deliver", None);
        assert_eq!(
            from_event(&event("item_failed", "x")).unwrap().title,
            "Item 7 failed"
        );
    }

    fn verdict(level: Level, codes: &[&'static str]) -> Verdict {
        Verdict::from_reasons(
            codes
                .iter()
                .map(|c| Reason {
                    level,
                    code: c,
                    message: format!("{c} happened"),
                })
                .collect(),
        )
    }

    fn check_verdict(before: Seen, now: Verdict, expected: &[(&str, &[AlertTrigger])]) {
        let got = from_verdict(&before, &now, 1);
        let got: Vec<(&str, &[AlertTrigger])> = got
            .iter()
            .map(|a| (a.key.as_str(), a.triggers.as_slice()))
            .collect();
        assert_eq!(got, expected, "{before:?} -> {now:?}");
    }

    #[test]
    fn verdict_changes_that_alert() {
        use AlertTrigger::*;
        let healthy = verdict(Level::Healthy, &[]);
        let stuck = verdict(Level::Degraded, &["queue_not_moving"]);
        let lag = verdict(Level::Degraded, &["loop_lag"]);
        let stalled = verdict(Level::Stalled, &["engine_stalled"]);
        // The first look says only trouble.
        check_verdict(Seen::default(), healthy.clone(), &[]);
        check_verdict(
            Seen::default(),
            lag.clone(),
            &[("verdict:DEGRADED", &[Verdict])],
        );
        // A change says the new verdict; a stuck queue rides along.
        check_verdict(
            Seen::of(&healthy),
            stuck.clone(),
            &[("verdict:DEGRADED", &[Verdict, QueueStuck])],
        );
        check_verdict(
            Seen::of(&lag),
            stuck.clone(),
            &[("queue_stuck", &[QueueStuck])],
        );
        check_verdict(Seen::of(&stuck), stuck.clone(), &[]);
        check_verdict(
            Seen::of(&healthy),
            stalled.clone(),
            &[("verdict:STALLED", &[Verdict, Stall])],
        );
        check_verdict(
            Seen::of(&stalled),
            healthy,
            &[("verdict:HEALTHY", &[Verdict])],
        );
        let back = from_verdict(&Seen::of(&stalled), &verdict(Level::Healthy, &[]), 1);
        assert_eq!(back[0].severity, Severity::Resolved);
        assert_eq!(back[0].message, "It was STALLED; nothing needs a look now.");
        let down = from_verdict(&Seen::of(&lag), &verdict(Level::Down, &["no_engine"]), 1);
        assert_eq!(down[0].message, "- no_engine happened [no_engine]");
    }
}
