//! One alert target: what it hears, what a request to it looks like (a
//! generic JSON webhook, a Slack-compatible webhook, an ntfy topic), and its
//! delivery with retries. A target's URL may be a secret (Slack's are): it
//! never appears in a message, a log or an event.

use std::collections::BTreeMap;
use std::time::Duration;

use ideamill_core::config::{AlertKind, AlertTarget, AlertTrigger, UrlSource};
use ideamill_core::duration::format_duration;

use crate::alert::{Alert, Severity};

/// Retries never wait longer than this.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every alert says about where it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The project's folder name.
    pub project: String,
    /// The machine's hostname.
    pub host: String,
    /// The dashboard's address, for links (`[web] url`).
    pub dashboard: Option<String>,
}

/// A target ready to use: its URL read from the config or the environment.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its `name` in the config, used in messages and events.
    pub name: String,
    /// The request format it receives.
    pub kind: AlertKind,
    url: String,
    headers: BTreeMap<String, String>,
    /// The triggers it hears.
    pub on: Vec<AlertTrigger>,
    /// The same alert key is sent at most once per cooldown.
    pub cooldown: Duration,
    /// Tries per delivery, at least 1.
    pub max_tries: u32,
    /// The first retry's delay, doubled for each next one (at most 5 min).
    pub backoff: Duration,
    /// One try's whole time.
    pub timeout: Duration,
}

/// A request, built without IO so that its shape is tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Lowercase names; the target's own headers come last.
    pub headers: Vec<(String, String)>,
    /// JSON for webhooks and Slack, plain text for ntfy.
    pub body: Vec<u8>,
}

/// How one delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The target's name.
    pub target: String,
    /// Requests sent, retries included.
    pub tries: u32,
    /// `Ok(status)` when delivered, else the last error (without the URL).
    pub result: Result<u16, String>,
    /// From the first try to the last answer, backoff waits included.
    pub took: Duration,
}

impl Target {
    /// Read the URL. An `url_env` variable that is unset or empty is an error
    /// naming the variable (never its value).
    pub fn resolve(config: &AlertTarget) -> Result<Target, String> {
        let url = match &config.url {
            UrlSource::Literal(url) => url.clone(),
            UrlSource::Env(var) => match std::env::var(var) {
                Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
                _ => {
                    return Err(format!(
                        "alert target `{}`: the environment variable {var} (its url_env) is not set",
                        config.name
                    ));
                }
            },
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "alert target `{}`: its URL must start with http:// or https://",
                config.name
            ));
        }
        Ok(Target {
            name: config.name.clone(),
            kind: config.kind,
            url,
            headers: config.headers.clone(),
            on: config.on.clone(),
            cooldown: config.cooldown,
            max_tries: config.max_tries.max(1),
            backoff: config.backoff,
            timeout: config.timeout,
        })
    }

    /// Whether this target hears `alert`.
    pub fn hears(&self, alert: &Alert) -> bool {
        alert.test || alert.triggers.iter().any(|t| self.on.contains(t))
    }

    /// Where the URL points, without its path or query (which may be secret).
    pub fn host(&self) -> String {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        // Credentials in the authority are secret too.
        host.rsplit('@').next().unwrap_or("").to_string()
    }

    /// The request for `alert`; `held` alerts with its key were held back by
    /// the cooldown since the last one sent.
    pub fn request(&self, alert: &Alert, held: u64, origin: &Origin) -> Request {
        let link = origin.dashboard.as_ref().map(|d| match alert.item_id {
            Some(id) => format!("{d}/items/{id}"),
            None => d.clone(),
        });
        let held_line = (held > 0).then(|| {
            format!(
                "{held} more alert(s) like this were held back by the cooldown ({})",
                format_duration(self.cooldown)
            )
        });
        let mut headers: Vec<(String, String)> = Vec::new();
        let body = match self.kind {
            AlertKind::Webhook => {
                headers.push(("content-type".into(), "application/json".into()));
                let value = serde_json::json!({
                    "source": "ideamill",
                    "project": origin.project,
                    "host": origin.host,
                    "test": alert.test,
                    "key": alert.key,
                    "triggers": alert.triggers.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                    "severity": alert.severity.as_str(),
                    "title": alert.title,
                    "message": alert.message,
                    "item_id": alert.item_id,
                    "at": alert.at,
                    "time": rfc3339(alert.at),
                    "held_back": held,
                    "dashboard": link,
                });
                value.to_string().into_bytes()
            }
            AlertKind::Slack => {
                headers.push(("content-type".into(), "application/json".into()));
                let icon = match alert.severity {
                    Severity::Critical => ":rotating_light:",
                    Severity::Warning => ":warning:",
                    Severity::Info => ":information_source:",
                    Severity::Resolved => ":white_check_mark:",
                };
                let mut text = format!(
                    "{icon} *{}* ({} on {})\n{}",
                    slack_escape(&alert.title),
                    slack_escape(&origin.project),
                    slack_escape(&origin.host),
                    slack_escape(&alert.message)
                );
                if let Some(line) = &held_line {
                    text.push_str(&format!("\n_{line}_"));
                }
                if let Some(link) = &link {
                    text.push_str(&format!("\n<{link}|Open the dashboard>"));
                }
                serde_json::json!({ "text": text }).to_string().into_bytes()
            }
            AlertKind::Ntfy => {
                let (priority, tags) = match alert.severity {
                    Severity::Critical => ("urgent", "rotating_light"),
                    Severity::Warning => ("high", "warning"),
                    Severity::Info => ("default", "information_source"),
                    Severity::Resolved => ("default", "white_check_mark"),
                };
                headers.push((
                    "title".into(),
                    header_text(&format!("{} ({})", alert.title, origin.project)),
                ));
                headers.push(("priority".into(), priority.into()));
                headers.push(("tags".into(), tags.into()));
                if let Some(link) = &link {
                    headers.push(("click".into(), header_text(link)));
                }
                headers.push(("content-type".into(), "text/plain; charset=utf-8".into()));
                let mut text = alert.message.clone();
                if let Some(line) = &held_line {
                    text.push_str(&format!("\n{line}"));
                }
                text.into_bytes()
            }
        };
        for (k, v) in &self.headers {
            headers.push((k.to_ascii_lowercase(), v.clone()));
        }
        Request { headers, body }
    }

    /// Send `request`, retrying with backoff (doubled each time) on
    /// connection errors, timeouts, 408, 429 and 5xx, up to `max_tries`.
    /// Other answers are final: retrying a wrong URL does not help.
    pub async fn deliver(&self, client: &reqwest::Client, request: &Request) -> Delivery {
        let started = std::time::Instant::now();
        let mut wait = self.backoff;
        let mut tries = 0;
        loop {
            tries += 1;
            let (result, retry) = self.send_once(client, request).await;
            if result.is_ok() || !retry || tries >= self.max_tries {
                return Delivery {
                    target: self.name.clone(),
                    tries,
                    result,
                    took: started.elapsed(),
                };
            }
            tracing::debug!(
                "Alert to `{}` failed (try {tries} of {}), retrying in {}: {}",
                self.name,
                self.max_tries,
                format_duration(wait),
                result.as_ref().err().map_or("", String::as_str)
            );
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    }

    /// One try: the status when delivered, else the error and whether a
    /// retry may help.
    async fn send_once(
        &self,
        client: &reqwest::Client,
        request: &Request,
    ) -> (Result<u16, String>, bool) {
        let mut builder = client
            .post(&self.url)
            .timeout(self.timeout)
            .body(request.body.clone());
        for (k, v) in &request.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        match builder.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                if response.status().is_success() {
                    (Ok(status), false)
                } else {
                    let retry = status == 408 || status == 429 || status >= 500;
                    (
                        Err(format!("{} answered HTTP {status}", self.host())),
                        retry,
                    )
                }
            }
            // The error's own text would name the URL: say only what failed.
            Err(e) => {
                let what = if e.is_timeout() {
                    format!("no answer within {}", format_duration(self.timeout))
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    "the request failed".to_string()
                };
                let cause = error_chain(&e.without_url());
                (Err(format!("{}: {what} ({cause})", self.host())), true)
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// HTTP header values are ASCII without control characters; ntfy shows
/// what is left.
fn header_text(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '—' | '–' => out.push('-'),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c if c.is_whitespace() => out.push(' '),
            _ => out.push('?'),
        }
    }
    out.chars().take(250).collect()
}

fn rfc3339(at: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(at.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: AlertKind, url: &str) -> Target {
        Target::resolve(&AlertTarget {
            name: "t".into(),
            kind,
            url: UrlSource::Literal(url.into()),
            headers: [("X-Token".to_string(), "s".to_string())].into(),
            on: vec![AlertTrigger::ItemFailed],
            cooldown: Duration::from_secs(600),
            max_tries: 3,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    fn alert() -> Alert {
        Alert {
            triggers: vec![AlertTrigger::ItemFailed],
            key: "item_failed".into(),
            severity: Severity::Warning,
            title: "Item 7 failed — badly".into(),
            message: "Item 7 failed: <boom> & more".into(),
            item_id: Some(7),
            at: 1_700_000_000_000,
            test: false,
        }
    }

    fn origin() -> Origin {
        Origin {
            project: "mill".into(),
            host: "pi".into(),
            dashboard: Some("http://pi:9464".into()),
        }
    }

    #[test]
    fn webhook_request() {
        let r = target(AlertKind::Webhook, "http://h/hook").request(&alert(), 2, &origin());
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["source"], "ideamill");
        assert_eq!(body["triggers"], serde_json::json!(["item_failed"]));
        assert_eq!(body["severity"], "warning");
        assert_eq!(body["held_back"], 2);
        assert_eq!(body["item_id"], 7);
        assert_eq!(body["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(body["dashboard"], "http://pi:9464/items/7");
        assert!(r.headers.contains(&("x-token".into(), "s".into())));
    }

    #[test]
    fn slack_request() {
        let r = target(AlertKind::Slack, "https://hooks.slack.com/services/SECRET").request(
            &alert(),
            0,
            &origin(),
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body["text"],
            ":warning: *Item 7 failed — badly* (mill on pi)\nItem 7 failed: &lt;boom&gt; &amp; more\n<http://pi:9464/items/7|Open the dashboard>"
        );
    }

    #[test]
    fn ntfy_request() {
        let mut t = target(AlertKind::Ntfy, "https://ntfy.sh/mill");
        // The product's one duration format: "1h30m", not "1h 30m".
        t.cooldown = Duration::from_secs(90 * 60);
        let r = t.request(&alert(), 1, &origin());
        let header = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("title"), Some("Item 7 failed - badly (mill)"));
        assert_eq!(header("priority"), Some("high"));
        assert_eq!(header("click"), Some("http://pi:9464/items/7"));
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "Item 7 failed: <boom> & more\n1 more alert(s) like this were held back by the cooldown (1h30m)"
        );
    }

    #[test]
    fn urls_stay_secret() {
        let t = target(
            AlertKind::Slack,
            "https://user:pw@hooks.slack.com/services/T0/B0/XYZ?x=1",
        );
        assert_eq!(t.host(), "hooks.slack.com");
        let env = AlertTarget {
            url: UrlSource::Env("IDEAMILL_TEST_UNSET_ALERT_URL".into()),
            ..AlertTarget {
                name: "ops".into(),
                kind: AlertKind::Webhook,
                url: UrlSource::Literal(String::new()),
                headers: BTreeMap::new(),
                on: vec![],
                cooldown: Duration::ZERO,
                max_tries: 1,
                backoff: Duration::ZERO,
                timeout: Duration::ZERO,
            }
        };
        assert_eq!(
            Target::resolve(&env).unwrap_err(),
            "alert target `ops`: the environment variable IDEAMILL_TEST_UNSET_ALERT_URL (its url_env) is not set"
        );
    }

    #[test]
    fn who_hears_what() {
        let t = target(AlertKind::Webhook, "http://h/");
        assert!(t.hears(&alert()));
        let other = Alert {
            triggers: vec![AlertTrigger::Budget],
            ..alert()
        };
        assert!(!t.hears(&other));
        assert!(t.hears(&crate::alert::test_alert(1)));
    }
}
