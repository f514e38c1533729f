//! `[[alerts]]`: where alerts go, each target with its own kind, URL,
//! triggers and cooldown.

use std::collections::BTreeMap;
use std::time::Duration;

use toml_span::value::{Value, ValueInner};

use super::section::{Got, Problems, Section, is_http_url, is_valid_name};

/// Default `cooldown` of an alert target.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(10 * 60);
/// Default `max_tries` of an alert target.
pub const DEFAULT_MAX_TRIES: u32 = 5;
/// Default `backoff` of an alert target: the first retry's delay.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
/// Default `timeout` of an alert target: one request's whole time.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const ALERT_KINDS: &[&str] = &["webhook", "slack", "ntfy"];

/// What an alert target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A JSON object POSTed to any URL.
    Webhook,
    /// A Slack-compatible incoming webhook (`{"text": ...}`): Slack,
    /// Mattermost, Rocket.Chat, Discord's `/slack` endpoint.
    Slack,
    /// An ntfy topic URL (`https://ntfy.sh/<topic>`).
    Ntfy,
}

impl AlertKind {
    /// The `kind` value naming this kind in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Webhook => "webhook",
            AlertKind::Slack => "slack",
            AlertKind::Ntfy => "ntfy",
        }
    }
}

/// What raises an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertTrigger {
    /// An engine's event loop stopped beating (`engine_stalled`).
    Stall,
    /// The supervisor restarted the engine, or gave up.
    Restart,
    /// An item ended `failed`.
    ItemFailed,
    /// Runnable work is not moving (`queue_not_moving`).
    QueueStuck,
    /// A budget cap paused work.
    Budget,
    /// The health verdict changed (HEALTHY, DEGRADED, STALLED, DOWN).
    Verdict,
}

impl AlertTrigger {
    /// Every trigger, in the order the config documents them.
    pub const ALL: &'static [AlertTrigger] = &[
        AlertTrigger::Stall,
        AlertTrigger::Restart,
        AlertTrigger::ItemFailed,
        AlertTrigger::QueueStuck,
        AlertTrigger::Budget,
        AlertTrigger::Verdict,
    ];

    /// The name of this trigger in `on = [...]`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertTrigger::Stall => "stall",
            AlertTrigger::Restart => "restart",
            AlertTrigger::ItemFailed => "item_failed",
            AlertTrigger::QueueStuck => "queue_stuck",
            AlertTrigger::Budget => "budget",
            AlertTrigger::Verdict => "verdict",
        }
    }

    /// The trigger named `s` in `on = [...]`, if any.
    pub fn parse(s: &str) -> Option<AlertTrigger> {
        AlertTrigger::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

/// Where a target's URL comes from. A webhook URL is often a secret (Slack's
/// are): `url_env` keeps it out of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// The URL itself (`url`).
    Literal(String),
    /// The name of an environment variable holding the URL (`url_env`).
    Env(String),
}

/// One `[[alerts]]` target.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertTarget {
    /// Unique; default `<kind>` or `<kind>-<n>`.
    pub name: String,
    /// What the target speaks.
    pub kind: AlertKind,
    /// Where the URL comes from.
    pub url: UrlSource,
    /// Extra request headers (e.g. an `Authorization` for ntfy).
    pub headers: BTreeMap<String, String>,
    /// What this target hears about. Default: everything.
    pub on: Vec<AlertTrigger>,
    /// The same alert is not sent again within this long; what happens
    /// meanwhile is counted and said in the next one. Default 10m.
    pub cooldown: Duration,
    /// Tries per alert before its failure becomes an event. Default 5.
    pub max_tries: u32,
    /// The first retry's delay, doubled for each next one. Default 2s.
    pub backoff: Duration,
    /// One request's whole time. Default 10s.
    pub timeout: Duration,
}

/// Every `[[alerts]]` target, in file order.
pub(super) fn parse(array: Got<Vec<Value<'_>>>, problems: &mut Problems) -> Vec<AlertTarget> {
    let Got::Ok(array, _) = array else {
        return Vec::new();
    };
    let mut targets: Vec<AlertTarget> = Vec::new();
    for (i, mut entry) in array.into_iter().enumerate() {
        let table = match entry.take() {
            ValueInner::Table(table) => table,
            other => {
                problems.add(
                    entry.span,
                    format!(
                        "[[alerts]] #{}: must be a table, found {}",
                        i + 1,
                        other.type_str()
                    ),
                );
                continue;
            }
        };
        let mut s = Section::new(table, entry.span, format!("[[alerts]] #{}", i + 1));
        let target = target(&mut s, &targets);
        problems.absorb(s);
        targets.push(target);
    }
    targets
}

/// One target; `earlier` ones hold the names already taken.
fn target(s: &mut Section<'_>, earlier: &[AlertTarget]) -> AlertTarget {
    let name = match s.string("name") {
        Got::Ok(name, span) => {
            if !is_valid_name(&name) {
                s.invalid(
                    "name",
                    span,
                    "must be 1 to 63 lowercase letters, digits, `_` or `-`",
                );
            } else if earlier.iter().any(|t| t.name == name) {
                s.invalid(
                    "name",
                    span,
                    format_args!("{name:?} is used by an earlier [[alerts]] target"),
                );
            }
            Some(name.into_owned())
        }
        Got::Absent | Got::Bad => None,
    };
    let kind = match s.required_string("kind") {
        Got::Ok(kind, span) => match kind.as_ref() {
            "webhook" => AlertKind::Webhook,
            "slack" => AlertKind::Slack,
            "ntfy" => AlertKind::Ntfy,
            other => {
                s.invalid(
                    "kind",
                    span,
                    format_args!(
                        "{other:?} is not an alert kind; known kinds: {}",
                        ALERT_KINDS.join(", ")
                    ),
                );
                AlertKind::Webhook
            }
        },
        Got::Absent | Got::Bad => AlertKind::Webhook,
    };
    // Unnamed targets are named after their kind, numbered from the second on.
    let name = name.unwrap_or_else(|| {
        let base = kind.as_str();
        let mut name = base.to_owned();
        let mut n = 1;
        while earlier.iter().any(|t| t.name == name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        name
    });
    let url = match (s.string("url"), s.string("url_env")) {
        (Got::Ok(_, _), Got::Ok(_, span)) => {
            s.invalid("url_env", span, "cannot be combined with `url`: choose one");
            UrlSource::Env(String::new())
        }
        (Got::Ok(url, span), _) => {
            if !is_http_url(&url) {
                s.invalid("url", span, "must start with http:// or https://");
            } else if kind == AlertKind::Ntfy
                && url
                    .split("://")
                    .nth(1)
                    .is_none_or(|rest| !rest.trim_end_matches('/').contains('/'))
            {
                s.invalid(
                    "url",
                    span,
                    "must name the ntfy topic, as in \"https://ntfy.sh/my-topic\"",
                );
            }
            UrlSource::Literal(url.into_owned())
        }
        (_, Got::Ok(var, span)) => {
            if var.is_empty() {
                s.invalid("url_env", span, "must not be empty");
            }
            UrlSource::Env(var.into_owned())
        }
        (Got::Absent, Got::Absent) => {
            let message = s.say(
                "missing required key `url` (or `url_env`, the environment variable holding it)",
            );
            s.report(s.span, message);
            UrlSource::Literal(String::new())
        }
        _ => UrlSource::Literal(String::new()),
    };
    let headers = s.string_map("headers");
    let on = triggers(s);
    AlertTarget {
        name,
        kind,
        url,
        headers,
        on,
        cooldown: s.duration("cooldown").or(DEFAULT_COOLDOWN),
        max_tries: s.count("max_tries", 100, DEFAULT_MAX_TRIES),
        backoff: s.nonzero_duration("backoff").or(DEFAULT_BACKOFF),
        timeout: s.nonzero_duration("timeout").or(DEFAULT_TIMEOUT),
    }
}

/// `on = ["stall", ...]`: what the target hears about; default everything.
fn triggers(s: &mut Section<'_>) -> Vec<AlertTrigger> {
    let names = match s.array("on", "an array of trigger names") {
        Got::Ok(names, _) => names,
        Got::Absent | Got::Bad => return AlertTrigger::ALL.to_vec(),
    };
    let mut on = Vec::new();
    for mut name in names {
        match name.take() {
            ValueInner::String(n) => match AlertTrigger::parse(&n) {
                Some(t) => {
                    if !on.contains(&t) {
                        on.push(t);
                    }
                }
                None => s.invalid(
                    "on",
                    name.span,
                    format_args!(
                        "{n:?} is not a trigger; known triggers: {}",
                        AlertTrigger::ALL
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            },
            other => s.wrong_type("on", "an array of strings", &other, name.span),
        }
    }
    on
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::testing::{STAGE, check_errors, config};

    #[test]
    fn alert_targets() {
        let c = config(&format!(
            "[[alerts]]\nkind = \"slack\"\nurl_env = \"SLACK_URL\"\non = [\"stall\", \"item_failed\"]\ncooldown = \"1m\"\n\
             [[alerts]]\nkind = \"ntfy\"\nurl = \"https://ntfy.sh/mill\"\nheaders = {{ Authorization = \"Bearer t\" }}\n\
             [[alerts]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nmax_tries = 2\nbackoff = \"100ms\"\n\
             [[alerts]]\nkind = \"slack\"\nurl = \"https://hooks.example.org/x\"\n{STAGE}"
        ));
        let names: Vec<&str> = c.alerts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["slack", "ntfy", "ops", "slack-2"]);
        let slack = &c.alerts[0];
        assert_eq!(slack.url, UrlSource::Env("SLACK_URL".into()));
        assert_eq!(slack.on, [AlertTrigger::Stall, AlertTrigger::ItemFailed]);
        assert_eq!(slack.cooldown, Duration::from_secs(60));
        assert_eq!(c.alerts[1].on, AlertTrigger::ALL);
        assert_eq!(c.alerts[1].headers["Authorization"], "Bearer t");
        assert_eq!(
            (c.alerts[2].max_tries, c.alerts[2].backoff),
            (2, Duration::from_millis(100))
        );
        assert_eq!(c.alerts[3].timeout, Duration::from_secs(10));
        check_errors(
            &format!(
                "[[alerts]]\nkind = \"pager\"\nurl = \"ftp://x\"\n\
                 [[alerts]]\nkind = \"ntfy\"\nurl = \"https://ntfy.sh\"\non = [\"stall\", \"fire\"]\n\
                 [[alerts]]\nkind = \"webhook\"\n{STAGE}"
            ),
            &[
                "2:8: [[alerts]] #1: `kind` \"pager\" is not an alert kind; known kinds: webhook, slack, ntfy",
                "3:7: [[alerts]] #1: `url` must start with http:// or https://",
                "6:7: [[alerts]] #2: `url` must name the ntfy topic, as in \"https://ntfy.sh/my-topic\"",
                "7:16: [[alerts]] #2: `on` \"fire\" is not a trigger; known triggers: stall, restart, item_failed, queue_stuck, budget, verdict",
                "8:1: [[alerts]] #3: missing required key `url` (or `url_env`, the environment variable holding it)",
            ],
        );
    }
}
