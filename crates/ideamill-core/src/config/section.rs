//! Parses the text of `ideamill.toml` into a validated [`Config`], reporting
//! every problem at once, each located by line and column.
//!
//! The approach: parse with `toml-span` (which keeps the byte span of every
//! key and value), then walk the tree by hand. Walking by hand rather than
//! deriving lets one pass check every key, keep going after a bad one, and
//! word each message for the table it is in.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml_span::Span;
use toml_span::value::{Table, Value};

use crate::config::{
    AlertKind, AlertTarget, AlertTrigger, ApiKeySource, BudgetConfig, CommandStage, Config,
    ConfigError, ConfigErrors, EngineConfig, HealthConfig, InboxConfig, LlmStage, Price,
    ProviderConfig, ProviderKind, StageConfig, StageKind, StoreConfig, UrlSource, WebConfig,
};
use crate::config::{Limits, SandboxConfig, SandboxMode};
use crate::duration::{format_duration, parse_duration};
use crate::model::{Gate, RetryPolicy};
use crate::size::{format_size, parse_size};

// Key lists in the order the documentation shows them, because they are
// printed in this order when a key is unknown.
const TOP_KEYS: &[&str] = &[
    "store",
    "engine",
    "health",
    "inbox",
    "providers",
    "prices",
    "budget",
    "stages",
    "web",
    "alerts",
    "sandbox",
];
const LIMIT_KEYS: &[&str] = &[
    "memory",
    "processes",
    "cpu_time",
    "file_size",
    "workspace_size",
    "tmp_size",
];
const WEB_KEYS: &[&str] = &["token_file", "require_token", "url"];
const ALERT_KEYS: &[&str] = &[
    "name",
    "kind",
    "url",
    "url_env",
    "headers",
    "on",
    "cooldown",
    "max_tries",
    "backoff",
    "timeout",
];
const ALERT_KINDS: &[&str] = &["webhook", "slack", "ntfy"];
const INBOX_KEYS: &[&str] = &[
    "enabled",
    "events",
    "settle",
    "rescan",
    "max_file_bytes",
    "max_ideas",
    "max_idea_bytes",
];
const HEALTH_KEYS: &[&str] = &[
    "stall_after",
    "listen",
    "min_free_disk_mb",
    "stuck_after",
    "failure_window",
    "max_restarts",
    "restart_window",
];
const STORE_KEYS: &[&str] = &["url"];
const ENGINE_KEYS: &[&str] = &[
    "data_dir",
    "workspace",
    "inbox",
    "lease",
    "heartbeat",
    "shutdown_grace",
    "poll_interval",
    "retention",
];
const STAGE_KEYS: &[&str] = &[
    "name",
    "kind",
    "timeout",
    "max_attempts",
    "backoff",
    "backoff_max",
    "concurrency",
    "gate",
];
const COMMAND_KEYS: &[&str] = &[
    "command",
    "env",
    "kill_grace",
    "max_output",
    "sandbox",
    "network",
    "pass_env",
    "read_only",
    "limits",
];
const LLM_KEYS: &[&str] = &[
    "provider",
    "prompt",
    "system",
    "temperature",
    "max_tokens",
    "files",
    "max_files",
    "max_file_bytes",
];
const PROVIDER_KEYS: &[&str] = &[
    "kind",
    "base_url",
    "model",
    "api_key_env",
    "api_key_file",
    "headers",
    "stream",
    "connect_timeout",
    "idle_timeout",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
];
const PROVIDER_KINDS: &[&str] = &["openai", "anthropic"];
const PRICE_KEYS: &[&str] = &["input", "output"];
const BUDGET_KEYS: &[&str] = &["item_usd", "day_usd", "item_tokens", "day_tokens"];
const GATE_KEYS: &[&str] = &["retry_from", "max_rounds"];
const STAGE_KINDS: &[&str] = &["command", "llm"];

const NO_STAGES: &str = "no [[stages]]: a pipeline needs at least one stage";

const DEFAULT_LEASE: Duration = Duration::from_secs(15);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);
const DEFAULT_CONCURRENCY: u32 = 1;
const MAX_CONCURRENCY: i64 = 1024;
const DEFAULT_MAX_ROUNDS: u32 = 3;
const DEFAULT_MAX_TOKENS: u32 = 1024;
const DEFAULT_MAX_FILES: u32 = 50;
const DEFAULT_MAX_FILE_BYTES: i64 = 256 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_PROVIDER_CONCURRENCY: u32 = 4;

pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let root = normalize(path.parent().unwrap_or(Path::new("")));
    let mut problems = Problems::default();
    let document = match toml_span::parse(text) {
        Ok(document) => document,
        Err(e) => {
            // Without a tree there is nothing more to check.
            problems.add(e.span, format!("invalid toml: {e}"));
            return Err(problems.into_errors(text, path));
        }
    };
    let empty = Table::new();
    let top = Section {
        table: document.as_table().unwrap_or(&empty),
        span: document.span,
        label: String::new(),
        prefix: "",
    };
    top.check_keys(TOP_KEYS, &mut problems);

    // [engine] comes first because the default store url lives in its data_dir.
    let engine = top.sub_table("engine", "[engine]", &mut problems);
    let engine = engine_config(
        &engine.unwrap_or(Section::empty(&empty, "[engine]")),
        &root,
        &mut problems,
    );
    let store = top.sub_table("store", "[store]", &mut problems);
    let store = store_config(
        &store.unwrap_or(Section::empty(&empty, "[store]")),
        &root,
        &engine.data_dir,
        &mut problems,
    );
    let providers = providers(&top, &root, &mut problems);
    let prices = prices(&top, &mut problems);
    let budget = match top.sub_table("budget", "[budget]", &mut problems) {
        Some(s) => budget(&s, &mut problems),
        None => BudgetConfig::default(),
    };
    let sandbox = match top.sub_table("sandbox", "[sandbox]", &mut problems) {
        Some(s) => sandbox_config(&s, &mut problems),
        None => SandboxConfig::default(),
    };
    let stages = stages(&top, &root, &providers, &sandbox.limits, &mut problems);
    let health = match top.sub_table("health", "[health]", &mut problems) {
        Some(s) => health_config(&s, &mut problems),
        None => HealthConfig::default(),
    };
    let inbox = match top.sub_table("inbox", "[inbox]", &mut problems) {
        Some(s) => inbox_config(&s, &mut problems),
        None => InboxConfig::default(),
    };
    let web = web_config(
        &top.sub_table("web", "[web]", &mut problems)
            .unwrap_or(Section::empty(&empty, "[web]")),
        &root,
        &engine.data_dir,
        &mut problems,
    );
    let alerts = alerts(&top, &mut problems);

    if !problems.0.is_empty() {
        return Err(problems.into_errors(text, path));
    }
    Ok(Config {
        path: path.to_owned(),
        root,
        store,
        engine,
        stages,
        providers,
        prices,
        budget,
        health,
        inbox,
        web,
        alerts,
        sandbox,
    })
}

/// Problems found so far, by byte offset; put in file order at the end.
#[derive(Default)]
struct Problems(Vec<(usize, String)>);

impl Problems {
    fn add(&mut self, span: Span, message: String) {
        self.0.push((span.start, message));
    }

    fn into_errors(mut self, text: &str, file: &Path) -> ConfigErrors {
        // Stable, so two problems at one place keep the order they were found in.
        self.0.sort_by_key(|(offset, _)| *offset);
        let errors = self
            .0
            .into_iter()
            .map(|(offset, message)| {
                let (line, column) = line_column(text, opening_quote(text, offset));
                ConfigError {
                    file: file.to_owned(),
                    line,
                    column,
                    message,
                }
            })
            .collect();
        ConfigErrors(errors)
    }
}

/// `toml-span` starts a string's span (value or quoted key) after its opening
/// quote; people expect an error to point at the quote itself, as compilers
/// do. Nothing but a string's content starts right after a quote, so moving
/// back over up to three of them (for `"""` and `'''`) is safe.
fn opening_quote(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    let Some(&quote) = offset.checked_sub(1).and_then(|i| bytes.get(i)) else {
        return offset;
    };
    if quote != b'"' && quote != b'\'' {
        return offset;
    }
    let mut start = offset - 1;
    while start > 0 && offset - start < 3 && bytes[start - 1] == quote {
        start -= 1;
    }
    start
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// What a lookup found. `Bad` means present but invalid, and already reported:
/// the caller must not report it again, nor run cross-checks on a default
/// that the user did not ask for.
enum Got<T> {
    Absent,
    Bad,
    Ok(T, Span),
}

impl<T> Got<T> {
    fn or(self, default: T) -> T {
        match self {
            Got::Ok(value, _) => value,
            Got::Absent | Got::Bad => default,
        }
    }

    /// The value to cross-check, with its span when the user wrote it; None
    /// when it was invalid.
    fn checkable(self, default: T) -> Option<(T, Option<Span>)> {
        match self {
            Got::Ok(value, span) => Some((value, Some(span))),
            Got::Absent => Some((default, None)),
            Got::Bad => None,
        }
    }
}

/// A table being checked, with how messages name it.
struct Section<'t, 'de> {
    table: &'t Table<'de>,
    /// Where a missing key is reported.
    span: Span,
    /// `[engine]`, `[[stages]] #2 ("qa")`; empty for the top level.
    label: String,
    /// Put before key names in messages: "gate." for a stage's gate.
    prefix: &'static str,
}

impl<'t, 'de> Section<'t, 'de> {
    /// An absent optional table: everything in it takes its default.
    fn empty(table: &'t Table<'de>, label: &str) -> Self {
        Section {
            table,
            span: Span::default(),
            label: label.to_owned(),
            prefix: "",
        }
    }

    fn say(&self, text: impl Display) -> String {
        if self.label.is_empty() {
            text.to_string()
        } else {
            format!("{}: {text}", self.label)
        }
    }

    fn key(&self, key: &str) -> String {
        format!("`{}{key}`", self.prefix)
    }

    fn check_keys(&self, expected: &[&str], problems: &mut Problems) {
        for key in self.table.keys() {
            if expected.contains(&key.name.as_ref()) {
                continue;
            }
            let place = if self.label.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in {}", self.label)
            };
            let expected = expected
                .iter()
                .map(|k| format!("{}{k}", self.prefix))
                .collect::<Vec<_>>()
                .join(", ");
            problems.add(
                key.span,
                format!(
                    "unknown key {} {place}; expected one of: {expected}",
                    self.key(&key.name)
                ),
            );
        }
    }

    fn get(&self, key: &str) -> Option<&'t Value<'de>> {
        self.table.get(key)
    }

    fn wrong_type(&self, key: &str, wanted: &str, value: &Value<'_>, problems: &mut Problems) {
        let found = type_of(value);
        problems.add(
            value.span,
            self.say(format!("{} must be {wanted}, found {found}", self.key(key))),
        );
    }

    fn missing(&self, key: &str, problems: &mut Problems) {
        problems.add(
            self.span,
            self.say(format!("missing required key {}", self.key(key))),
        );
    }

    fn invalid(&self, key: &str, span: Span, why: impl Display, problems: &mut Problems) {
        problems.add(span, self.say(format!("{} {why}", self.key(key))));
    }

    /// `key` as a section of its own, if present and a table.
    fn sub_table(&self, key: &str, label: &str, problems: &mut Problems) -> Option<Self> {
        let value = self.get(key)?;
        let Some(table) = value.as_table() else {
            self.wrong_type(key, &format!("a table ({label})"), value, problems);
            return None;
        };
        Some(Section {
            table,
            span: value.span,
            label: label.to_owned(),
            prefix: "",
        })
    }

    fn string(&self, key: &str, problems: &mut Problems) -> Got<&'t str> {
        let Some(value) = self.get(key) else {
            return Got::Absent;
        };
        match value.as_str() {
            Some(s) => Got::Ok(s, value.span),
            None => {
                self.wrong_type(key, "a string", value, problems);
                Got::Bad
            }
        }
    }

    fn duration(&self, key: &str, problems: &mut Problems) -> Got<Duration> {
        let Some(value) = self.get(key) else {
            return Got::Absent;
        };
        let Some(text) = value.as_str() else {
            self.wrong_type(key, "a duration string like \"15s\"", value, problems);
            return Got::Bad;
        };
        match parse_duration(text) {
            Ok(duration) => Got::Ok(duration, value.span),
            Err(why) => {
                problems.add(value.span, self.say(format!("{}: {why}", self.key(key))));
                Got::Bad
            }
        }
    }

    /// A duration for which zero makes no sense (a timeout, a poll interval).
    fn nonzero_duration(&self, key: &str, problems: &mut Problems) -> Got<Duration> {
        match self.duration(key, problems) {
            Got::Ok(duration, span) if duration.is_zero() => {
                self.invalid(key, span, "must be greater than 0s", problems);
                Got::Bad
            }
            other => other,
        }
    }

    fn integer(&self, key: &str, min: i64, max: i64, problems: &mut Problems) -> Got<i64> {
        let Some(value) = self.get(key) else {
            return Got::Absent;
        };
        let Some(n) = value.as_integer() else {
            self.wrong_type(key, "an integer", value, problems);
            return Got::Bad;
        };
        if n < min || n > max {
            // A limit set only by the type (u32::MAX) is noise to a reader
            // who wrote 0; it is worth saying only to one who went past it.
            let range = if max < i64::from(u32::MAX) {
                format!("from {min} to {max}")
            } else if n < min {
                format!(">= {min}")
            } else {
                format!("<= {max}")
            };
            self.invalid(
                key,
                value.span,
                format_args!("must be an integer {range}, found {n}"),
                problems,
            );
            return Got::Bad;
        }
        Got::Ok(n, value.span)
    }

    /// A number (integer or float) of at least `min`.
    fn number(&self, key: &str, min: f64, problems: &mut Problems) -> Got<f64> {
        let Some(value) = self.get(key) else {
            return Got::Absent;
        };
        let n = match (value.as_float(), value.as_integer()) {
            (Some(f), _) => f,
            (None, Some(i)) => i as f64,
            (None, None) => {
                self.wrong_type(key, "a number", value, problems);
                return Got::Bad;
            }
        };
        if !n.is_finite() || n < min {
            self.invalid(
                key,
                value.span,
                format_args!("must be a number >= {min}, found {n}"),
                problems,
            );
            return Got::Bad;
        }
        Got::Ok(n, value.span)
    }

    fn boolean(&self, key: &str, problems: &mut Problems) -> Got<bool> {
        let Some(value) = self.get(key) else {
            return Got::Absent;
        };
        match value.as_bool() {
            Some(b) => Got::Ok(b, value.span),
            None => {
                self.wrong_type(key, "true or false", value, problems);
                Got::Bad
            }
        }
    }

    /// A table of string values, such as `headers` or `env`.
    fn string_map(&self, key: &str, problems: &mut Problems) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let Some(value) = self.get(key) else {
            return map;
        };
        let Some(table) = value.as_table() else {
            self.wrong_type(key, "a table like { NAME = \"value\" }", value, problems);
            return map;
        };
        for (k, v) in table {
            match v.as_str() {
                Some(text) if !text.contains(['\0', '\n', '\r']) => {
                    map.insert(k.name.to_string(), text.to_owned());
                }
                Some(_) => self.invalid(
                    &format!("{key}.{}", k.name),
                    v.span,
                    "contains a control character",
                    problems,
                ),
                None => self.wrong_type(&format!("{key}.{}", k.name), "a string", v, problems),
            }
        }
        map
    }

    /// A byte size (`"2GiB"` or an integer of bytes) of at least `min`.
    fn size(&self, key: &str, min: u64, problems: &mut Problems) -> Got<u64> {
        let Some(value) = self.get(key) else {
            return Got::Absent;
        };
        let parsed = match (value.as_str(), value.as_integer()) {
            (Some(text), _) => parse_size(text),
            (None, Some(n)) => u64::try_from(n).map_err(|_| format!("{n} is negative")),
            (None, None) => {
                self.wrong_type(key, "a size like \"2GiB\"", value, problems);
                return Got::Bad;
            }
        };
        match parsed {
            Ok(n) if n >= min => Got::Ok(n, value.span),
            Ok(n) => {
                self.invalid(
                    key,
                    value.span,
                    format_args!(
                        "must be at least {}, found {}",
                        format_size(min),
                        format_size(n)
                    ),
                    problems,
                );
                Got::Bad
            }
            Err(why) => {
                self.invalid(key, value.span, why, problems);
                Got::Bad
            }
        }
    }

    /// An array of strings, each with where it was written.
    fn string_list(&self, key: &str, problems: &mut Problems) -> Vec<(&'t str, Span)> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            self.wrong_type(key, "an array of strings", value, problems);
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(text) => out.push((text, item.span)),
                None => self.wrong_type(&format!("{key}[{i}]"), "a string", item, problems),
            }
        }
        out
    }

    fn count(&self, key: &str, max: i64, default: u32, problems: &mut Problems) -> u32 {
        // The range check keeps n within 1..=u32::MAX, so the fallback never applies.
        let n = self.integer(key, 1, max.min(i64::from(u32::MAX)), problems);
        n.or(i64::from(default)).try_into().unwrap_or(default)
    }

    fn path(&self, key: &str, root: &Path, default: &str, problems: &mut Problems) -> PathBuf {
        match self.string(key, problems) {
            Got::Ok("", span) => {
                self.invalid(key, span, "must not be empty", problems);
                root.join(default)
            }
            Got::Ok(path, _) => resolve(root, Path::new(path)),
            Got::Absent | Got::Bad => root.join(default),
        }
    }
}

fn type_of(value: &Value<'_>) -> &'static str {
    value.as_ref().type_str()
}

fn engine_config(s: &Section<'_, '_>, root: &Path, problems: &mut Problems) -> EngineConfig {
    s.check_keys(ENGINE_KEYS, problems);
    let lease = s.nonzero_duration("lease", problems);
    let heartbeat = s.nonzero_duration("heartbeat", problems);
    let lease = lease.checkable(DEFAULT_LEASE);
    let heartbeat = heartbeat.checkable(DEFAULT_HEARTBEAT);
    if let (Some((lease, lease_span)), Some((heartbeat, heartbeat_span))) = (lease, heartbeat) {
        // A lease renewed no more often than it lasts would expire between
        // renewals, and live jobs would be run twice.
        if heartbeat >= lease {
            let span = heartbeat_span.or(lease_span).unwrap_or(s.span);
            s.invalid(
                "heartbeat",
                span,
                format_args!(
                    "({}) must be less than `lease` ({})",
                    shown(heartbeat, heartbeat_span),
                    shown(lease, lease_span)
                ),
                problems,
            );
        }
    }
    EngineConfig {
        data_dir: s.path("data_dir", root, ".ideamill", problems),
        workspace: s.path("workspace", root, "workspace", problems),
        inbox: s.path("inbox", root, "inbox", problems),
        lease: lease.map_or(DEFAULT_LEASE, |(d, _)| d),
        heartbeat: heartbeat.map_or(DEFAULT_HEARTBEAT, |(d, _)| d),
        shutdown_grace: s
            .duration("shutdown_grace", problems)
            .or(DEFAULT_SHUTDOWN_GRACE),
        poll_interval: s
            .nonzero_duration("poll_interval", problems)
            .or(DEFAULT_POLL_INTERVAL),
        retention: match s.duration("retention", problems) {
            Got::Ok(d, _) => Some(d),
            Got::Absent | Got::Bad => None,
        },
    }
}

fn inbox_config(s: &Section<'_, '_>, problems: &mut Problems) -> InboxConfig {
    s.check_keys(INBOX_KEYS, problems);
    let d = InboxConfig::default();
    InboxConfig {
        enabled: s.boolean("enabled", problems).or(d.enabled),
        events: s.boolean("events", problems).or(d.events),
        settle: s.duration("settle", problems).or(d.settle),
        rescan: s.nonzero_duration("rescan", problems).or(d.rescan),
        max_file_bytes: s
            .integer("max_file_bytes", 1, i64::MAX, problems)
            .or(d.max_file_bytes as i64) as u64,
        max_ideas: s.count("max_ideas", i64::from(u32::MAX), d.max_ideas, problems),
        max_idea_bytes: s
            .integer("max_idea_bytes", 1, i64::MAX, problems)
            .or(d.max_idea_bytes as i64) as u64,
    }
}

fn health_config(s: &Section<'_, '_>, problems: &mut Problems) -> HealthConfig {
    s.check_keys(HEALTH_KEYS, problems);
    let d = HealthConfig::default();
    let listen = match s.string("listen", problems) {
        Got::Ok("off" | "", _) => None,
        Got::Ok(addr, span) => {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                s.invalid(
                    "listen",
                    span,
                    format_args!("{addr:?} must be IP:PORT (e.g. \"127.0.0.1:9464\") or \"off\""),
                    problems,
                );
            }
            Some(addr.to_owned())
        }
        Got::Absent | Got::Bad => d.listen.clone(),
    };
    HealthConfig {
        stall_after: s
            .nonzero_duration("stall_after", problems)
            .or(d.stall_after),
        listen,
        min_free_disk_mb: s
            .integer("min_free_disk_mb", 0, i64::MAX, problems)
            .or(d.min_free_disk_mb as i64) as u64,
        stuck_after: s
            .nonzero_duration("stuck_after", problems)
            .or(d.stuck_after),
        failure_window: s
            .nonzero_duration("failure_window", problems)
            .or(d.failure_window),
        max_restarts: s.count("max_restarts", 1000, d.max_restarts, problems),
        restart_window: s
            .nonzero_duration("restart_window", problems)
            .or(d.restart_window),
    }
}

fn web_config(
    s: &Section<'_, '_>,
    root: &Path,
    data_dir: &Path,
    problems: &mut Problems,
) -> WebConfig {
    s.check_keys(WEB_KEYS, problems);
    let token_file = match s.string("token_file", problems) {
        Got::Ok("", span) => {
            s.invalid("token_file", span, "must not be empty", problems);
            data_dir.join("token")
        }
        Got::Ok(path, _) => resolve(root, Path::new(path)),
        Got::Absent | Got::Bad => data_dir.join("token"),
    };
    let url = match s.string("url", problems) {
        Got::Ok(url, span) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                s.invalid("url", span, "must start with http:// or https://", problems);
            }
            Some(url.trim_end_matches('/').to_owned())
        }
        Got::Absent | Got::Bad => None,
    };
    WebConfig {
        token_file,
        require_token: s.boolean("require_token", problems).or(false),
        url,
    }
}

/// `[[alerts]]`: each a target with its own kind, URL, triggers and cooldown.
fn alerts(top: &Section<'_, '_>, problems: &mut Problems) -> Vec<AlertTarget> {
    let Some(value) = top.get("alerts") else {
        return Vec::new();
    };
    let Some(array) = value.as_array() else {
        top.wrong_type("alerts", "an array of tables ([[alerts]])", value, problems);
        return Vec::new();
    };
    let mut targets: Vec<AlertTarget> = Vec::new();
    for (i, entry) in array.iter().enumerate() {
        let Some(table) = entry.as_table() else {
            problems.add(
                entry.span,
                format!(
                    "[[alerts]] #{}: must be a table, found {}",
                    i + 1,
                    type_of(entry)
                ),
            );
            continue;
        };
        let s = Section {
            table,
            span: entry.span,
            label: format!("[[alerts]] #{}", i + 1),
            prefix: "",
        };
        s.check_keys(ALERT_KEYS, problems);
        let kind = match s.string("kind", problems) {
            Got::Ok("webhook", _) => AlertKind::Webhook,
            Got::Ok("slack", _) => AlertKind::Slack,
            Got::Ok("ntfy", _) => AlertKind::Ntfy,
            Got::Ok(other, span) => {
                s.invalid(
                    "kind",
                    span,
                    format_args!(
                        "{other:?} is not an alert kind; known kinds: {}",
                        ALERT_KINDS.join(", ")
                    ),
                    problems,
                );
                AlertKind::Webhook
            }
            Got::Absent => {
                s.missing("kind", problems);
                AlertKind::Webhook
            }
            Got::Bad => AlertKind::Webhook,
        };
        let url = match (s.string("url", problems), s.string("url_env", problems)) {
            (Got::Ok(_, _), Got::Ok(_, span)) => {
                s.invalid(
                    "url_env",
                    span,
                    "cannot be combined with `url`: choose one",
                    problems,
                );
                UrlSource::Env(String::new())
            }
            (Got::Ok(url, span), _) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    s.invalid("url", span, "must start with http:// or https://", problems);
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
                        problems,
                    );
                }
                UrlSource::Literal(url.to_owned())
            }
            (_, Got::Ok(var, span)) => {
                if var.is_empty() {
                    s.invalid("url_env", span, "must not be empty", problems);
                }
                UrlSource::Env(var.to_owned())
            }
            (Got::Absent, Got::Absent) => {
                problems.add(
                    s.span,
                    s.say("missing required key `url` (or `url_env`, the environment variable holding it)"),
                );
                UrlSource::Literal(String::new())
            }
            _ => UrlSource::Literal(String::new()),
        };
        let on = match s.get("on") {
            None => AlertTrigger::ALL.to_vec(),
            Some(value) => match value.as_array() {
                None => {
                    s.wrong_type("on", "an array of trigger names", value, problems);
                    AlertTrigger::ALL.to_vec()
                }
                Some(names) => {
                    let mut on = Vec::new();
                    for name in names {
                        match name.as_str().map(|n| (n, AlertTrigger::parse(n))) {
                            Some((_, Some(t))) => {
                                if !on.contains(&t) {
                                    on.push(t);
                                }
                            }
                            Some((n, None)) => s.invalid(
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
                                problems,
                            ),
                            None => s.wrong_type("on", "an array of strings", name, problems),
                        }
                    }
                    on
                }
            },
        };
        let name = match s.string("name", problems) {
            Got::Ok(name, span) => {
                if !is_valid_stage_name(name) {
                    s.invalid(
                        "name",
                        span,
                        "must be 1 to 63 lowercase letters, digits, `_` or `-`",
                        problems,
                    );
                } else if targets.iter().any(|t| t.name == name) {
                    s.invalid(
                        "name",
                        span,
                        format_args!("{name:?} is used by an earlier [[alerts]] target"),
                        problems,
                    );
                }
                name.to_owned()
            }
            Got::Absent | Got::Bad => {
                let base = kind.as_str();
                let mut name = base.to_owned();
                let mut n = 1;
                while targets.iter().any(|t| t.name == name) {
                    n += 1;
                    name = format!("{base}-{n}");
                }
                name
            }
        };
        targets.push(AlertTarget {
            name,
            kind,
            url,
            headers: s.string_map("headers", problems),
            on,
            cooldown: s
                .duration("cooldown", problems)
                .or(Duration::from_secs(600)),
            max_tries: s.count("max_tries", 100, 5, problems),
            backoff: s
                .nonzero_duration("backoff", problems)
                .or(Duration::from_secs(2)),
            timeout: s
                .nonzero_duration("timeout", problems)
                .or(Duration::from_secs(10)),
        });
    }
    targets
}

/// A duration for a message, saying when it is a default the user did not write.
fn shown(duration: Duration, written_at: Option<Span>) -> String {
    match written_at {
        Some(_) => format_duration(duration),
        None => format!("default {}", format_duration(duration)),
    }
}

fn store_config(
    s: &Section<'_, '_>,
    root: &Path,
    data_dir: &Path,
    problems: &mut Problems,
) -> StoreConfig {
    s.check_keys(STORE_KEYS, problems);
    let url = match s.string("url", problems) {
        Got::Ok(url, span) => resolve_url(url, root).unwrap_or_else(|why| {
            s.invalid("url", span, why, problems);
            String::new()
        }),
        Got::Absent | Got::Bad => format!("sqlite://{}", data_dir.join("ideamill.db").display()),
    };
    StoreConfig { url }
}

/// Makes a sqlite url's path absolute. Messages never repeat the url itself,
/// which may hold a password.
fn resolve_url(url: &str, root: &Path) -> Result<String, String> {
    let expected = "sqlite://PATH or postgres://HOST/DATABASE";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("is not a url; expected {expected}"));
    };
    if scheme.eq_ignore_ascii_case("sqlite") {
        // Options such as `?mode=ro` are not part of the file's path.
        let (file, options) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
        if file.is_empty() {
            return Err(format!("names no database file; expected {expected}"));
        }
        let file = resolve(root, Path::new(file));
        Ok(format!("sqlite://{}{options}", file.display()))
    } else if scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql") {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "has unsupported scheme \"{scheme}\"; expected {expected}"
        ))
    }
}

/// `path` against `root`, with `.` and `..` removed lexically: the folders
/// need not exist yet, and following symlinks is the OS's business later.
fn resolve(root: &Path, path: &Path) -> PathBuf {
    normalize(&root.join(path))
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                Some(Component::ParentDir | Component::CurDir) | None => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// A gate whose `retry_from` is checked once every stage name is known.
struct PendingGate<'t> {
    stage: usize,
    label: String,
    retry_from: &'t str,
    span: Span,
}

fn stages(
    top: &Section<'_, '_>,
    root: &Path,
    providers: &BTreeMap<String, ProviderConfig>,
    limits: &Limits,
    problems: &mut Problems,
) -> Vec<StageConfig> {
    let Some(value) = top.get("stages") else {
        problems.add(Span::default(), NO_STAGES.to_owned());
        return Vec::new();
    };
    let Some(array) = value.as_array() else {
        top.wrong_type("stages", "an array of tables ([[stages]])", value, problems);
        return Vec::new();
    };
    if array.is_empty() {
        problems.add(value.span, NO_STAGES.to_owned());
    }

    let mut stages = Vec::new();
    // Each stage's name, as written, even if invalid, so that later checks
    // do not pile spurious errors on an already reported one.
    let mut names: Vec<Option<&str>> = Vec::new();
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    let mut gates = Vec::new();
    for (i, value) in array.iter().enumerate() {
        let number = i + 1;
        let Some(table) = value.as_table() else {
            problems.add(
                value.span,
                format!(
                    "[[stages]] #{number} must be a table, found {}",
                    type_of(value)
                ),
            );
            names.push(None);
            continue;
        };
        let (stage, name, gate) =
            stage(number, table, value.span, root, providers, limits, problems);
        if let Some((name, span)) = name {
            if let Some(first) = first_use.get(name) {
                problems.add(
                    span,
                    format!(
                        "[[stages]] #{number} ({name:?}): duplicate stage name {name:?}; \
                         [[stages]] #{first} already has it"
                    ),
                );
            } else {
                first_use.insert(name, number);
            }
        }
        names.push(name.map(|(name, _)| name));
        gates.extend(gate);
        stages.push(stage);
    }

    for gate in gates {
        let earlier: Vec<&str> = names[..gate.stage].iter().flatten().copied().collect();
        if earlier.contains(&gate.retry_from) {
            continue;
        }
        let why = if names[gate.stage] == Some(gate.retry_from) {
            "is this stage itself; a gate sends work back to an earlier stage"
        } else if names.contains(&Some(gate.retry_from)) {
            "is not an earlier stage"
        } else {
            "is not a stage"
        };
        let earlier = if earlier.is_empty() {
            "none, so the first stage cannot be a gate".to_owned()
        } else {
            earlier.join(", ")
        };
        problems.add(
            gate.span,
            format!(
                "{}: gate.retry_from {:?} {why}; earlier stages: {earlier}",
                gate.label, gate.retry_from
            ),
        );
    }
    stages
}

/// One `[[stages]]` entry; also returns its name and its gate's target for
/// the checks across stages.
fn stage<'t>(
    number: usize,
    table: &'t Table<'_>,
    span: Span,
    root: &Path,
    providers: &BTreeMap<String, ProviderConfig>,
    limits: &Limits,
    problems: &mut Problems,
) -> (
    StageConfig,
    Option<(&'t str, Span)>,
    Option<PendingGate<'t>>,
) {
    let mut s = Section {
        table,
        span,
        label: format!("[[stages]] #{number}"),
        prefix: "",
    };
    let name = match s.string("name", problems) {
        Got::Ok(name, span) => {
            s.label = format!("[[stages]] #{number} ({name:?})");
            if !is_valid_stage_name(name) {
                s.invalid(
                    "name",
                    span,
                    format_args!(
                        "{name:?} must be 1 to 63 lowercase letters, digits, `_` or `-`, \
                         starting with a letter or digit"
                    ),
                    problems,
                );
            }
            Some((name, span))
        }
        Got::Absent => {
            s.missing("name", problems);
            None
        }
        Got::Bad => None,
    };
    let kind_name = s.string("kind", problems);
    // Each kind has its own keys; with the kind unknown, any kind's key passes.
    let kind_keys: &[&[&str]] = match kind_name {
        Got::Ok("command", _) => &[COMMAND_KEYS],
        Got::Ok("llm", _) => &[LLM_KEYS],
        _ => &[COMMAND_KEYS, LLM_KEYS],
    };
    s.check_keys(&[&[STAGE_KEYS], kind_keys].concat().concat(), problems);

    let kind = match kind_name {
        Got::Ok("command", _) => Some(StageKind::Command(command_stage(
            &s, root, limits, problems,
        ))),
        Got::Ok("llm", _) => Some(StageKind::Llm(llm_stage(&s, root, providers, problems))),
        Got::Ok(other, span) => {
            let known = STAGE_KINDS.join(", ");
            problems.add(
                span,
                s.say(format_args!(
                    "unknown stage kind {other:?}; known kinds: {known}"
                )),
            );
            None
        }
        Got::Absent => {
            s.missing("kind", problems);
            None
        }
        Got::Bad => None,
    };
    // With the kind unknown, its own keys cannot be checked; the stage is
    // already in error, and the placeholder below is never returned.
    let kind = kind.unwrap_or_else(|| StageKind::Command(placeholder_command()));

    let timeout = s.nonzero_duration("timeout", problems).or(DEFAULT_TIMEOUT);
    let max_attempts = s.count("max_attempts", i64::MAX, DEFAULT_MAX_ATTEMPTS, problems);
    let backoff = s.duration("backoff", problems).checkable(DEFAULT_BACKOFF);
    let backoff_max = s
        .duration("backoff_max", problems)
        .checkable(DEFAULT_BACKOFF_MAX);
    if let (Some((backoff, backoff_span)), Some((backoff_max, backoff_max_span))) =
        (backoff, backoff_max)
    {
        // A cap below the first delay would silently replace it, which is
        // surely not what was meant.
        if backoff_max < backoff {
            let span = backoff_max_span.or(backoff_span).unwrap_or(s.span);
            s.invalid(
                "backoff_max",
                span,
                format_args!(
                    "({}) must be at least `backoff` ({})",
                    shown(backoff_max, backoff_max_span),
                    shown(backoff, backoff_span)
                ),
                problems,
            );
        }
    }
    let concurrency = s.count(
        "concurrency",
        MAX_CONCURRENCY,
        DEFAULT_CONCURRENCY,
        problems,
    );
    let (gate, pending) = match gate(&s, problems) {
        Some((gate, Some((retry_from, span)))) => {
            let pending = PendingGate {
                stage: number - 1,
                label: s.label.clone(),
                retry_from,
                span,
            };
            (Some(gate), Some(pending))
        }
        Some((gate, None)) => (Some(gate), None),
        None => (None, None),
    };

    let stage = StageConfig {
        name: name.map_or_else(String::new, |(name, _)| name.to_owned()),
        kind,
        timeout,
        retry: RetryPolicy {
            max_attempts,
            backoff: backoff.map_or(DEFAULT_BACKOFF, |(d, _)| d),
            backoff_max: backoff_max.map_or(DEFAULT_BACKOFF_MAX, |(d, _)| d),
        },
        concurrency,
        gate,
    };
    (stage, name, pending)
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: safe in file names, URLs and log lines alike.
fn is_valid_stage_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-';
    match bytes.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() <= 62
                && rest.iter().all(allowed)
        }
        None => false,
    }
}

fn placeholder_command() -> CommandStage {
    CommandStage {
        program: String::new(),
        args: Vec::new(),
        env: BTreeMap::new(),
        kill_grace: DEFAULT_KILL_GRACE,
        max_output: DEFAULT_MAX_OUTPUT,
        sandbox: SandboxMode::On,
        network: false,
        pass_env: Vec::new(),
        read_only: Vec::new(),
        limits: Limits::default(),
    }
}

/// `[sandbox]`: the sandbox program and the default limits.
fn sandbox_config(s: &Section<'_, '_>, problems: &mut Problems) -> SandboxConfig {
    s.check_keys(&[&["program"], LIMIT_KEYS].concat(), problems);
    let program = match s.string("program", problems) {
        Got::Ok("", span) => {
            s.invalid("program", span, "must not be empty", problems);
            String::new()
        }
        Got::Ok(program, span) if program.contains('\0') => {
            s.invalid("program", span, "contains a NUL byte", problems);
            String::new()
        }
        Got::Ok(program, _) => program.to_owned(),
        Got::Absent | Got::Bad => SandboxConfig::default().program,
    };
    SandboxConfig {
        program,
        limits: limits(s, &Limits::default(), problems),
    }
}

/// Limits read from `s`, each defaulting to `defaults`'.
fn limits(s: &Section<'_, '_>, defaults: &Limits, problems: &mut Problems) -> Limits {
    Limits {
        memory: s.size("memory", 16 << 20, problems).or(defaults.memory),
        processes: s.count("processes", 1 << 22, defaults.processes, problems),
        cpu_time: match s.nonzero_duration("cpu_time", problems) {
            Got::Ok(d, span) if d < Duration::from_secs(1) => {
                s.invalid("cpu_time", span, "must be at least 1s", problems);
                defaults.cpu_time
            }
            other => other.or(defaults.cpu_time),
        },
        file_size: s
            .size("file_size", 1 << 10, problems)
            .or(defaults.file_size),
        workspace_size: s
            .size("workspace_size", 1 << 10, problems)
            .or(defaults.workspace_size),
        tmp_size: s.size("tmp_size", 1 << 10, problems).or(defaults.tmp_size),
    }
}

fn command_stage(
    s: &Section<'_, '_>,
    root: &Path,
    sandbox_limits: &Limits,
    problems: &mut Problems,
) -> CommandStage {
    let mut command = Vec::new();
    match s.get("command") {
        None => s.missing("command", problems),
        Some(value) => match value.as_array() {
            None => s.wrong_type(
                "command",
                "an array of strings like [\"sh\", \"-c\", \"make\"]",
                value,
                problems,
            ),
            Some(items) if items.is_empty() => s.invalid(
                "command",
                value.span,
                "must not be empty: its first element is the program to run",
                problems,
            ),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("command[{i}]");
                    match item.as_str() {
                        None => s.wrong_type(&key, "a string", item, problems),
                        // The OS cannot pass a NUL byte; better said here than at spawn.
                        Some(text) if text.contains('\0') => {
                            s.invalid(&key, item.span, "contains a NUL byte", problems);
                        }
                        Some("") if i == 0 => {
                            s.invalid(&key, item.span, "(the program) must not be empty", problems)
                        }
                        Some(text) => command.push(text.to_owned()),
                    }
                }
            }
        },
    }
    let mut env = BTreeMap::new();
    if let Some(value) = s.get("env") {
        match value.as_table() {
            None => s.wrong_type("env", "a table like { KEY = \"value\" }", value, problems),
            Some(table) => {
                for (key, value) in table {
                    let name = key.name.as_ref();
                    if name.is_empty() || name.contains(['=', '\0']) {
                        problems.add(
                            key.span,
                            s.say(format_args!(
                                "`env` key {name:?} is not a valid environment variable name \
                                 (empty, or contains `=` or a NUL byte)"
                            )),
                        );
                    }
                    let key = format!("env.{name}");
                    match value.as_str() {
                        None => s.wrong_type(&key, "a string", value, problems),
                        Some(text) if text.contains('\0') => {
                            s.invalid(&key, value.span, "contains a NUL byte", problems);
                        }
                        Some(text) => {
                            env.insert(name.to_owned(), text.to_owned());
                        }
                    }
                }
            }
        }
    }
    let kill_grace = s.duration("kill_grace", problems).or(DEFAULT_KILL_GRACE);
    let max_output = match s.integer("max_output", 1, i64::MAX, problems) {
        // On a 32-bit target a huge limit is as good as no limit.
        Got::Ok(n, _) => usize::try_from(n).unwrap_or(usize::MAX),
        Got::Absent | Got::Bad => DEFAULT_MAX_OUTPUT,
    };
    let sandbox = match s.string("sandbox", problems) {
        Got::Ok("on", _) | Got::Absent | Got::Bad => SandboxMode::On,
        Got::Ok("off", _) => SandboxMode::Off,
        Got::Ok(other, span) => {
            s.invalid(
                "sandbox",
                span,
                format_args!("{other:?} must be \"on\" (the default) or \"off\""),
                problems,
            );
            SandboxMode::On
        }
    };
    let network = s.boolean("network", problems).or(false);
    let pass_env = s
        .string_list("pass_env", problems)
        .into_iter()
        .filter(|(name, span)| {
            let valid = !name.is_empty() && !name.contains(['=', '\0']);
            if !valid {
                s.invalid(
                    "pass_env",
                    *span,
                    format_args!("{name:?} is not a valid environment variable name"),
                    problems,
                );
            }
            valid
        })
        .map(|(name, _)| name.to_owned())
        .collect();
    let read_only = s
        .string_list("read_only", problems)
        .into_iter()
        .filter_map(|(path, span)| {
            if path.is_empty() || path.contains('\0') {
                s.invalid(
                    "read_only",
                    span,
                    "an entry is empty or holds a NUL byte",
                    problems,
                );
                return None;
            }
            Some(resolve(root, Path::new(path)))
        })
        .collect();
    let limits = match s.sub_table("limits", "limits", problems) {
        Some(table) => {
            let table = Section {
                label: s.label.clone(),
                prefix: "limits.",
                ..table
            };
            table.check_keys(LIMIT_KEYS, problems);
            limits(&table, sandbox_limits, problems)
        }
        None => *sandbox_limits,
    };
    let mut command = command.into_iter();
    CommandStage {
        program: command.next().unwrap_or_default(),
        args: command.collect(),
        env,
        kill_grace,
        max_output,
        sandbox,
        network,
        pass_env,
        read_only,
        limits,
    }
}

/// The stage's gate, if it has one, and where its `retry_from` was written.
fn gate<'t>(
    stage: &Section<'t, '_>,
    problems: &mut Problems,
) -> Option<(Gate, Option<(&'t str, Span)>)> {
    let value = stage.get("gate")?;
    let Some(table) = value.as_table() else {
        stage.wrong_type(
            "gate",
            "a table like { retry_from = \"implement\", max_rounds = 3 }",
            value,
            problems,
        );
        return None;
    };
    let g = Section {
        table,
        span: value.span,
        label: stage.label.clone(),
        prefix: "gate.",
    };
    g.check_keys(GATE_KEYS, problems);
    let retry_from = match g.string("retry_from", problems) {
        Got::Ok(name, span) => Some((name, span)),
        Got::Absent => {
            g.missing("retry_from", problems);
            None
        }
        Got::Bad => None,
    };
    let max_rounds = g.count("max_rounds", i64::MAX, DEFAULT_MAX_ROUNDS, problems);
    let gate = Gate {
        retry_from: retry_from.map_or_else(String::new, |(name, _)| name.to_owned()),
        max_rounds,
    };
    Some((gate, retry_from))
}

fn providers(
    top: &Section<'_, '_>,
    root: &Path,
    problems: &mut Problems,
) -> BTreeMap<String, ProviderConfig> {
    let mut providers = BTreeMap::new();
    let Some(section) = top.sub_table("providers", "[providers]", problems) else {
        return providers;
    };
    for (key, value) in section.table {
        let name = key.name.as_ref();
        let label = format!("[providers.{name}]");
        let Some(table) = value.as_table() else {
            section.wrong_type(name, &format!("a table ({label})"), value, problems);
            continue;
        };
        if !is_valid_stage_name(name) {
            problems.add(
                key.span,
                format!(
                    "{label}: provider names are 1 to 63 lowercase letters, digits, `_` or `-`"
                ),
            );
        }
        let s = Section {
            table,
            span: value.span,
            label,
            prefix: "",
        };
        s.check_keys(PROVIDER_KEYS, problems);
        let kind = match s.string("kind", problems) {
            Got::Ok("openai", _) => ProviderKind::OpenAi,
            Got::Ok("anthropic", _) => ProviderKind::Anthropic,
            Got::Ok(other, span) => {
                s.invalid(
                    "kind",
                    span,
                    format_args!(
                        "{other:?} is not a provider kind; known kinds: {}",
                        PROVIDER_KINDS.join(", ")
                    ),
                    problems,
                );
                ProviderKind::OpenAi
            }
            Got::Absent => {
                s.missing("kind", problems);
                ProviderKind::OpenAi
            }
            Got::Bad => ProviderKind::OpenAi,
        };
        let base_url = match s.string("base_url", problems) {
            Got::Ok(url, span) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    s.invalid(
                        "base_url",
                        span,
                        "must start with http:// or https://",
                        problems,
                    );
                }
                url.trim_end_matches('/').to_owned()
            }
            Got::Absent => match kind {
                ProviderKind::OpenAi => {
                    s.missing("base_url", problems);
                    String::new()
                }
                ProviderKind::Anthropic => "https://api.anthropic.com/v1".to_owned(),
            },
            Got::Bad => String::new(),
        };
        let model = match s.string("model", problems) {
            Got::Ok(model, _) => model.to_owned(),
            Got::Absent => {
                s.missing("model", problems);
                String::new()
            }
            Got::Bad => String::new(),
        };
        let api_key = match (
            s.string("api_key_env", problems),
            s.string("api_key_file", problems),
        ) {
            (Got::Ok(_, _), Got::Ok(_, span)) => {
                s.invalid(
                    "api_key_file",
                    span,
                    "cannot be combined with `api_key_env`: choose one",
                    problems,
                );
                ApiKeySource::None
            }
            (Got::Ok(var, _), _) => ApiKeySource::Env(var.to_owned()),
            (_, Got::Ok(file, _)) => ApiKeySource::File(resolve(root, Path::new(file))),
            _ => ApiKeySource::None,
        };
        let optional_count = |key: &str, problems: &mut Problems| match s.integer(
            key,
            1,
            i64::from(u32::MAX),
            problems,
        ) {
            Got::Ok(n, _) => u32::try_from(n).ok(),
            Got::Absent | Got::Bad => None,
        };
        providers.insert(
            name.to_owned(),
            ProviderConfig {
                name: name.to_owned(),
                kind,
                base_url,
                model,
                api_key,
                headers: s.string_map("headers", problems),
                stream: s.boolean("stream", problems).or(true),
                connect_timeout: s
                    .nonzero_duration("connect_timeout", problems)
                    .or(DEFAULT_CONNECT_TIMEOUT),
                idle_timeout: s
                    .nonzero_duration("idle_timeout", problems)
                    .or(DEFAULT_IDLE_TIMEOUT),
                max_concurrency: s.count(
                    "max_concurrency",
                    MAX_CONCURRENCY,
                    DEFAULT_PROVIDER_CONCURRENCY,
                    problems,
                ),
                requests_per_minute: optional_count("requests_per_minute", problems),
                tokens_per_minute: optional_count("tokens_per_minute", problems),
            },
        );
    }
    providers
}

/// `[prices]`: `"model-name" = { input = 0.15, output = 0.6 }`, US dollars
/// per million tokens.
fn prices(top: &Section<'_, '_>, problems: &mut Problems) -> BTreeMap<String, Price> {
    let mut prices = BTreeMap::new();
    let Some(section) = top.sub_table("prices", "[prices]", problems) else {
        return prices;
    };
    for (key, value) in section.table {
        let model = key.name.as_ref();
        let Some(table) = value.as_table() else {
            section.wrong_type(
                model,
                "a table like { input = 0.15, output = 0.6 }",
                value,
                problems,
            );
            continue;
        };
        let s = Section {
            table,
            span: value.span,
            label: format!("[prices] {model:?}"),
            prefix: "",
        };
        s.check_keys(PRICE_KEYS, problems);
        let mut get = |k: &str| match s.number(k, 0.0, problems) {
            Got::Ok(n, _) => n,
            Got::Absent => {
                s.missing(k, problems);
                0.0
            }
            Got::Bad => 0.0,
        };
        let input_per_million = get("input");
        let output_per_million = get("output");
        prices.insert(
            model.to_owned(),
            Price {
                input_per_million,
                output_per_million,
            },
        );
    }
    prices
}

fn budget(s: &Section<'_, '_>, problems: &mut Problems) -> BudgetConfig {
    s.check_keys(BUDGET_KEYS, problems);
    let usd = |k: &str, problems: &mut Problems| match s.number(k, 0.0, problems) {
        Got::Ok(n, _) => Some(n),
        Got::Absent | Got::Bad => None,
    };
    let tokens = |k: &str, problems: &mut Problems| match s.integer(k, 1, i64::MAX, problems) {
        Got::Ok(n, _) => u64::try_from(n).ok(),
        Got::Absent | Got::Bad => None,
    };
    BudgetConfig {
        item_usd: usd("item_usd", problems),
        day_usd: usd("day_usd", problems),
        item_tokens: tokens("item_tokens", problems),
        day_tokens: tokens("day_tokens", problems),
    }
}

fn llm_stage(
    s: &Section<'_, '_>,
    root: &Path,
    providers: &BTreeMap<String, ProviderConfig>,
    problems: &mut Problems,
) -> LlmStage {
    let provider = match s.string("provider", problems) {
        Got::Ok(name, span) => {
            if !providers.contains_key(name) {
                let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "none is defined".to_owned()
                } else {
                    known.join(", ")
                };
                s.invalid(
                    "provider",
                    span,
                    format_args!(
                        "{name:?} is not a provider; add [providers.{name}] (providers: {known})"
                    ),
                    problems,
                );
            }
            name.to_owned()
        }
        Got::Absent => {
            s.missing("provider", problems);
            String::new()
        }
        Got::Bad => String::new(),
    };
    let prompt = match s.string("prompt", problems) {
        Got::Ok("", span) => {
            s.invalid("prompt", span, "must name a template file", problems);
            PathBuf::new()
        }
        Got::Ok(path, _) => resolve(root, Path::new(path)),
        Got::Absent => {
            s.missing("prompt", problems);
            PathBuf::new()
        }
        Got::Bad => PathBuf::new(),
    };
    let system = match s.string("system", problems) {
        Got::Ok(text, _) => Some(text.to_owned()),
        Got::Absent | Got::Bad => None,
    };
    let temperature = match s.number("temperature", 0.0, problems) {
        Got::Ok(t, span) if t > 2.0 => {
            s.invalid(
                "temperature",
                span,
                format_args!("must be from 0 to 2, found {t}"),
                problems,
            );
            None
        }
        Got::Ok(t, _) => Some(t as f32),
        Got::Absent | Got::Bad => None,
    };
    LlmStage {
        provider,
        prompt,
        system,
        temperature,
        max_tokens: s.count(
            "max_tokens",
            i64::from(u32::MAX),
            DEFAULT_MAX_TOKENS,
            problems,
        ),
        files: s.boolean("files", problems).or(false),
        max_files: s.count("max_files", 100_000, DEFAULT_MAX_FILES, problems) as usize,
        max_file_bytes: match s.integer("max_file_bytes", 1, i64::MAX, problems) {
            Got::Ok(n, _) => usize::try_from(n).unwrap_or(usize::MAX),
            Got::Absent | Got::Bad => DEFAULT_MAX_FILE_BYTES as usize,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeySource, ProviderKind};

    const FILE: &str = "/proj/ideamill.toml";

    /// Every error as "line:column: message".
    fn errors(text: &str) -> Vec<String> {
        match parse(text, Path::new(FILE)) {
            Ok(config) => panic!("expected errors, got {config:#?}"),
            Err(ConfigErrors(errors)) => errors
                .iter()
                .map(|e| {
                    assert_eq!(e.file, Path::new(FILE));
                    format!("{}:{}: {}", e.line, e.column, e.message)
                })
                .collect(),
        }
    }

    fn check_errors(text: &str, expected: &[&str]) {
        assert_eq!(errors(text), expected, "config:\n{text}");
    }

    fn config(text: &str) -> Config {
        parse(text, Path::new(FILE))
            .unwrap_or_else(|e| panic!("unexpected errors:\n{e}\nconfig:\n{text}"))
    }

    const STAGE: &str = "[[stages]]\nname = \"build\"\nkind = \"command\"\ncommand = [\"make\"]\n";

    fn command(stage: &StageConfig) -> &CommandStage {
        match &stage.kind {
            StageKind::Command(command) => command,
            StageKind::Llm(_) => panic!("stage {} is not a command stage", stage.name),
        }
    }

    #[test]
    fn full_example_with_defaults() {
        let text = r#"
[store]
url = "sqlite://.ideamill/ideamill.db"
[engine]
data_dir = ".ideamill"
workspace = "workspace"
inbox = "inbox"
lease = "15s"
heartbeat = "2s"
shutdown_grace = "30s"
poll_interval = "1s"
retention = "30d"

[[stages]]
name = "implement"
kind = "command"
command = ["sh", "-c", "echo hi"]
env = { KEY = "value" }
timeout = "10m"
kill_grace = "5s"
max_output = 1048576
max_attempts = 3
backoff = "2s"
backoff_max = "10m"
concurrency = 1

[[stages]]
name = "review"
kind = "command"
command = ["./review.sh"]
gate = { retry_from = "implement" }
"#;
        let root = PathBuf::from("/proj");
        let expected = Config {
            path: PathBuf::from(FILE),
            root: root.clone(),
            health: HealthConfig::default(),
            inbox: InboxConfig::default(),
            web: WebConfig {
                token_file: root.join(".ideamill/token"),
                require_token: false,
                url: None,
            },
            alerts: Vec::new(),
            sandbox: SandboxConfig::default(),
            providers: BTreeMap::new(),
            prices: BTreeMap::new(),
            budget: BudgetConfig::default(),
            store: StoreConfig {
                url: "sqlite:///proj/.ideamill/ideamill.db".to_owned(),
            },
            engine: EngineConfig {
                data_dir: root.join(".ideamill"),
                workspace: root.join("workspace"),
                inbox: root.join("inbox"),
                lease: Duration::from_secs(15),
                heartbeat: Duration::from_secs(2),
                shutdown_grace: Duration::from_secs(30),
                poll_interval: Duration::from_secs(1),
                retention: Some(Duration::from_secs(30 * 86_400)),
            },
            stages: vec![
                StageConfig {
                    name: "implement".to_owned(),
                    kind: StageKind::Command(CommandStage {
                        program: "sh".to_owned(),
                        args: vec!["-c".to_owned(), "echo hi".to_owned()],
                        env: BTreeMap::from([("KEY".to_owned(), "value".to_owned())]),
                        kill_grace: Duration::from_secs(5),
                        max_output: 1024 * 1024,
                        sandbox: SandboxMode::On,
                        network: false,
                        pass_env: Vec::new(),
                        read_only: Vec::new(),
                        limits: Limits::default(),
                    }),
                    timeout: Duration::from_secs(600),
                    retry: RetryPolicy {
                        max_attempts: 3,
                        backoff: Duration::from_secs(2),
                        backoff_max: Duration::from_secs(600),
                    },
                    concurrency: 1,
                    gate: None,
                },
                StageConfig {
                    name: "review".to_owned(),
                    kind: StageKind::Command(CommandStage {
                        program: "./review.sh".to_owned(),
                        args: Vec::new(),
                        env: BTreeMap::new(),
                        kill_grace: Duration::from_secs(5),
                        max_output: 1024 * 1024,
                        sandbox: SandboxMode::On,
                        network: false,
                        pass_env: Vec::new(),
                        read_only: Vec::new(),
                        limits: Limits::default(),
                    }),
                    timeout: Duration::from_secs(600),
                    retry: RetryPolicy {
                        max_attempts: 3,
                        backoff: Duration::from_secs(2),
                        backoff_max: Duration::from_secs(600),
                    },
                    concurrency: 1,
                    gate: Some(Gate {
                        retry_from: "implement".to_owned(),
                        max_rounds: 3,
                    }),
                },
            ],
        };
        assert_eq!(config(text), expected);

        // The same file with every optional key left out means the same thing,
        // except for retention, which defaults to never.
        let minimal = r#"
[[stages]]
name = "implement"
kind = "command"
command = ["sh", "-c", "echo hi"]
env = { KEY = "value" }

[[stages]]
name = "review"
kind = "command"
command = ["./review.sh"]
gate = { retry_from = "implement" }
"#;
        let mut expected = expected;
        expected.engine.retention = None;
        assert_eq!(config(minimal), expected);
    }

    #[test]
    fn every_error_is_reported_in_file_order() {
        check_errors(
            r#"[engine]
lease = 15
heartbeat = "2x"

[[stages]]
name = "build"
kind = "command"
command = []
  max_attempts = 0
"#,
            &[
                r#"2:9: [engine]: `lease` must be a duration string like "15s", found integer"#,
                r#"3:13: [engine]: `heartbeat`: invalid duration "2x": unknown unit "x" (use ms, s, m, h or d)"#,
                r#"8:11: [[stages]] #1 ("build"): `command` must not be empty: its first element is the program to run"#,
                r#"9:18: [[stages]] #1 ("build"): `max_attempts` must be an integer >= 1, found 0"#,
            ],
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        check_errors(
            &format!("{STAGE}env = {{ \"é\" = \"x\", K = 1 }}\n"),
            &[r#"5:24: [[stages]] #1 ("build"): `env.K` must be a string, found integer"#],
        );
    }

    #[test]
    fn unknown_keys() {
        check_errors(
            &format!("colour = \"red\"\n{STAGE}"),
            &[
                "1:1: unknown key `colour` at the top level; expected one of: store, engine, health, inbox, providers, prices, budget, stages, web, alerts, sandbox",
            ],
        );
        check_errors(
            &format!("{STAGE}retries = 3\n"),
            &[
                "5:1: unknown key `retries` in [[stages]] #1 (\"build\"); expected one of: \
                 name, kind, timeout, max_attempts, backoff, backoff_max, concurrency, gate, \
                 command, env, kill_grace, max_output, sandbox, network, pass_env, read_only, limits",
            ],
        );
        check_errors(
            &format!("[engine]\nfoo = 1\n[store]\nuri = \"x\"\n{STAGE}"),
            &[
                "2:1: unknown key `foo` in [engine]; expected one of: data_dir, workspace, \
                 inbox, lease, heartbeat, shutdown_grace, poll_interval, retention",
                "4:1: unknown key `uri` in [store]; expected one of: url",
            ],
        );
        check_errors(
            &format!("{STAGE}gate = {{ retry_from = \"build\", rounds = 2 }}\n"),
            &[
                "5:23: [[stages]] #1 (\"build\"): gate.retry_from \"build\" is this stage itself; \
                 a gate sends work back to an earlier stage; earlier stages: none, so the first \
                 stage cannot be a gate",
                "5:32: unknown key `gate.rounds` in [[stages]] #1 (\"build\"); expected one of: \
                 gate.retry_from, gate.max_rounds",
            ],
        );
    }

    #[test]
    fn wrong_types() {
        check_errors(
            &format!("engine = \"fast\"\nstore = 1\n{STAGE}"),
            &[
                "1:10: `engine` must be a table ([engine]), found string",
                "2:9: `store` must be a table ([store]), found integer",
            ],
        );
        check_errors(
            "[stages]\nname = \"x\"\n",
            &["1:1: `stages` must be an array of tables ([[stages]]), found table"],
        );
        check_errors(
            "stages = [\"build\"]\n",
            &["1:11: [[stages]] #1 must be a table, found string"],
        );
        check_errors(
            "[[stages]]\nname = 1\nkind = \"command\"\ncommand = \"make\"\nenv = []\nconcurrency = \"2\"\ngate = \"build\"\n",
            &[
                "2:8: [[stages]] #1: `name` must be a string, found integer",
                "4:11: [[stages]] #1: `command` must be an array of strings like [\"sh\", \"-c\", \"make\"], found string",
                "5:7: [[stages]] #1: `env` must be a table like { KEY = \"value\" }, found array",
                "6:15: [[stages]] #1: `concurrency` must be an integer, found string",
                "7:8: [[stages]] #1: `gate` must be a table like { retry_from = \"implement\", max_rounds = 3 }, found string",
            ],
        );
        check_errors(
            "[[stages]]\nname = \"a\"\nkind = \"command\"\ncommand = [\"\", 2]\nmax_output = 1.5\n",
            &[
                "4:12: [[stages]] #1 (\"a\"): `command[0]` (the program) must not be empty",
                "4:16: [[stages]] #1 (\"a\"): `command[1]` must be a string, found integer",
                "5:14: [[stages]] #1 (\"a\"): `max_output` must be an integer, found float",
            ],
        );
    }

    #[test]
    fn missing_keys_and_stages() {
        check_errors(
            "",
            &["1:1: no [[stages]]: a pipeline needs at least one stage"],
        );
        check_errors(
            "[engine]\nlease = \"20s\"\n",
            &["1:1: no [[stages]]: a pipeline needs at least one stage"],
        );
        check_errors(
            "stages = []\n",
            &["1:10: no [[stages]]: a pipeline needs at least one stage"],
        );
        check_errors(
            &format!("{STAGE}\n[[stages]]\ntimeout = \"1m\"\n"),
            &[
                "6:1: [[stages]] #2: missing required key `name`",
                "6:1: [[stages]] #2: missing required key `kind`",
            ],
        );
        check_errors(
            "[[stages]]\nname = \"a\"\nkind = \"command\"\n",
            &["1:1: [[stages]] #1 (\"a\"): missing required key `command`"],
        );
        check_errors(
            &format!("{STAGE}gate = {{ max_rounds = 2 }}\n"),
            &["5:8: [[stages]] #1 (\"build\"): missing required key `gate.retry_from`"],
        );
    }

    #[test]
    fn stage_kinds_and_names() {
        check_errors(
            "[[stages]]\nname = \"a\"\nkind = \"wasm\"\nmodel = \"x\"\n",
            &[
                "3:8: [[stages]] #1 (\"a\"): unknown stage kind \"wasm\"; known kinds: command, llm",
                "4:1: unknown key `model` in [[stages]] #1 (\"a\"); expected one of: name, kind, \
                 timeout, max_attempts, backoff, backoff_max, concurrency, gate, command, env, \
                 kill_grace, max_output, sandbox, network, pass_env, read_only, limits, provider, prompt, system, temperature, max_tokens, files, \
                 max_files, max_file_bytes",
            ],
        );
        for bad in ["Build", "-x", "a b", "", &"a".repeat(64)] {
            let text =
                format!("[[stages]]\nname = {bad:?}\nkind = \"command\"\ncommand = [\"x\"]\n");
            check_errors(
                &text,
                &[&format!(
                    "2:8: [[stages]] #1 ({bad:?}): `name` {bad:?} must be 1 to 63 lowercase \
                     letters, digits, `_` or `-`, starting with a letter or digit"
                )],
            );
        }
        for good in ["a", "0", "build-2_x", &"a".repeat(63)] {
            let text =
                format!("[[stages]]\nname = {good:?}\nkind = \"command\"\ncommand = [\"x\"]\n");
            assert_eq!(config(&text).stages[0].name, good);
        }
    }

    #[test]
    fn llm_stages_providers_prices_and_budgets() {
        let text = r#"
[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:8089/v1/"
model = "smollm2"
api_key_env = "KEY"
headers = { "X-Title" = "ideamill" }
idle_timeout = "30s"
tokens_per_minute = 1000

[providers.claude]
kind = "anthropic"
model = "claude-x"
api_key_file = "secrets/key"

[prices]
"claude-x" = { input = 3, output = 15.5 }

[budget]
item_usd = 0.5
day_tokens = 100000

[[stages]]
name = "implement"
kind = "llm"
provider = "local"
prompt = "prompts/implement.md"
files = true
temperature = 0.2
max_tokens = 2000
"#;
        let config = config(text);
        let local = &config.providers["local"];
        assert_eq!(local.kind, ProviderKind::OpenAi);
        assert_eq!(local.base_url, "http://127.0.0.1:8089/v1");
        assert_eq!(local.api_key, ApiKeySource::Env("KEY".into()));
        assert_eq!(local.headers["X-Title"], "ideamill");
        assert_eq!(
            (local.idle_timeout, local.tokens_per_minute, local.stream),
            (Duration::from_secs(30), Some(1000), true)
        );
        let claude = &config.providers["claude"];
        assert_eq!(claude.base_url, "https://api.anthropic.com/v1");
        assert_eq!(
            claude.api_key,
            ApiKeySource::File(PathBuf::from("/proj/secrets/key"))
        );
        assert_eq!(
            config.prices["claude-x"],
            Price {
                input_per_million: 3.0,
                output_per_million: 15.5
            }
        );
        assert_eq!(config.budget.item_usd, Some(0.5));
        assert_eq!(config.budget.day_tokens, Some(100_000));
        let StageKind::Llm(llm) = &config.stages[0].kind else {
            panic!("an llm stage")
        };
        assert_eq!(llm.prompt, PathBuf::from("/proj/prompts/implement.md"));
        assert_eq!(
            (llm.files, llm.max_tokens, llm.temperature),
            (true, 2000, Some(0.2))
        );

        check_errors(
            "[providers.p]\nkind = \"gemini\"\nbase_url = \"ftp://x\"\n\n\
             [[stages]]\nname = \"a\"\nkind = \"llm\"\nprovider = \"q\"\nprompt = \"p.md\"\ntemperature = 3\n",
            &[
                "1:1: [providers.p]: missing required key `model`",
                "2:8: [providers.p]: `kind` \"gemini\" is not a provider kind; known kinds: openai, anthropic",
                "3:12: [providers.p]: `base_url` must start with http:// or https://",
                "8:12: [[stages]] #1 (\"a\"): `provider` \"q\" is not a provider; add [providers.q] (providers: p)",
                "10:15: [[stages]] #1 (\"a\"): `temperature` must be from 0 to 2, found 3",
            ],
        );
    }

    #[test]
    fn duplicate_stage_names() {
        check_errors(
            &format!("{STAGE}{STAGE}{STAGE}"),
            &[
                "6:8: [[stages]] #2 (\"build\"): duplicate stage name \"build\"; [[stages]] #1 already has it",
                "10:8: [[stages]] #3 (\"build\"): duplicate stage name \"build\"; [[stages]] #1 already has it",
            ],
        );
    }

    fn check_durations(engine: &str, stage: &str, expected: &[&str]) {
        check_errors(&format!("[engine]\n{engine}\n{STAGE}{stage}\n"), expected);
    }

    #[test]
    fn bad_durations() {
        check_durations(
            "lease = \"15\"",
            "",
            &[
                r#"2:9: [engine]: `lease`: invalid duration "15": missing unit (did you mean "15s"?)"#,
            ],
        );
        check_durations(
            "poll_interval = \"0s\"",
            "timeout = \"0ms\"",
            &[
                "2:17: [engine]: `poll_interval` must be greater than 0s",
                "7:11: [[stages]] #1 (\"build\"): `timeout` must be greater than 0s",
            ],
        );
        check_durations(
            "heartbeat = \"0s\"",
            "kill_grace = \"-1s\"",
            &[
                "2:13: [engine]: `heartbeat` must be greater than 0s",
                r#"7:14: [[stages]] #1 ("build"): `kill_grace`: invalid duration "-1s": negative durations are not allowed"#,
            ],
        );
        check_durations(
            "heartbeat = \"15s\"",
            "",
            &["2:13: [engine]: `heartbeat` (15s) must be less than `lease` (default 15s)"],
        );
        // Located at heartbeat when it is written, even if lease comes later.
        check_durations(
            "heartbeat = \"5s\"\nlease = \"3s\"",
            "",
            &["2:13: [engine]: `heartbeat` (5s) must be less than `lease` (3s)"],
        );
        check_durations(
            "lease = \"1s\"",
            "",
            &["2:9: [engine]: `heartbeat` (default 2s) must be less than `lease` (1s)"],
        );
        // An invalid lease is one error, not two.
        check_durations(
            "lease = \"1\"",
            "",
            &[r#"2:9: [engine]: `lease`: invalid duration "1": missing unit (did you mean "1s"?)"#],
        );
        check_durations(
            "",
            "backoff = \"1m\"\nbackoff_max = \"30s\"",
            &[
                "8:15: [[stages]] #1 (\"build\"): `backoff_max` (30s) must be at least `backoff` (1m)",
            ],
        );
        check_durations(
            "",
            "backoff = \"1h\"",
            &[
                "7:11: [[stages]] #1 (\"build\"): `backoff_max` (default 10m) must be at least `backoff` (1h)",
            ],
        );
    }

    #[test]
    fn integer_ranges() {
        check_errors(
            &format!(
                "{STAGE}concurrency = 1025\nmax_output = 0\ngate = {{ retry_from = \"x\", max_rounds = 0 }}\n"
            ),
            &[
                "5:15: [[stages]] #1 (\"build\"): `concurrency` must be an integer from 1 to 1024, found 1025",
                "6:14: [[stages]] #1 (\"build\"): `max_output` must be an integer >= 1, found 0",
                "7:23: [[stages]] #1 (\"build\"): gate.retry_from \"x\" is not a stage; earlier stages: none, so the first stage cannot be a gate",
                "7:41: [[stages]] #1 (\"build\"): `gate.max_rounds` must be an integer >= 1, found 0",
            ],
        );
        check_errors(
            &format!("{STAGE}max_attempts = 4294967296\n"),
            &[
                "5:16: [[stages]] #1 (\"build\"): `max_attempts` must be an integer <= 4294967295, found 4294967296",
            ],
        );
        let text = format!("{STAGE}concurrency = 1024\nmax_attempts = 1\nmax_output = 10\n");
        let stage = &config(&text).stages[0];
        assert_eq!(
            (
                stage.concurrency,
                stage.retry.max_attempts,
                command(stage).max_output
            ),
            (1024, 1, 10)
        );
    }

    fn check_gate(retry_from: &str, expected: &[&str]) {
        let text = format!(
            "{}\n{}\n[[stages]]\nname = \"qa\"\nkind = \"command\"\ncommand = [\"qa\"]\ngate = {{ retry_from = {retry_from:?} }}\n{}",
            stage_named("outline"),
            stage_named("implement"),
            stage_named("deploy"),
        );
        if expected.is_empty() {
            let config = config(&text);
            let gate = config.stage("qa").and_then(|s| s.gate.clone());
            assert_eq!(
                gate,
                Some(Gate {
                    retry_from: retry_from.to_owned(),
                    max_rounds: 3
                })
            );
        } else {
            check_errors(&text, expected);
        }
    }

    fn stage_named(name: &str) -> String {
        format!("[[stages]]\nname = {name:?}\nkind = \"command\"\ncommand = [\"x\"]")
    }

    #[test]
    fn gate_retry_from() {
        check_gate("outline", &[]);
        check_gate("implement", &[]);
        check_gate(
            "deploy",
            &[
                "13:23: [[stages]] #3 (\"qa\"): gate.retry_from \"deploy\" is not an earlier stage; earlier stages: outline, implement",
            ],
        );
        check_gate(
            "nope",
            &[
                "13:23: [[stages]] #3 (\"qa\"): gate.retry_from \"nope\" is not a stage; earlier stages: outline, implement",
            ],
        );
        check_gate(
            "qa",
            &[
                "13:23: [[stages]] #3 (\"qa\"): gate.retry_from \"qa\" is this stage itself; a gate sends work back to an earlier stage; earlier stages: outline, implement",
            ],
        );
    }

    /// A gate may be written as an inline table, with dotted keys or as a
    /// sub-table; all mean the same.
    fn check_gate_form(gate: &str, expected: Result<Gate, &str>) {
        let text = format!("{}\n{STAGE}{gate}\n", stage_named("draft"));
        match expected {
            Ok(gate) => assert_eq!(config(&text).stages[1].gate, Some(gate), "config:\n{text}"),
            Err(message) => check_errors(&text, &[message]),
        }
    }

    #[test]
    fn gate_forms() {
        let gate = |max_rounds| Gate {
            retry_from: "draft".to_owned(),
            max_rounds,
        };
        check_gate_form("gate = { retry_from = \"draft\" }", Ok(gate(3)));
        check_gate_form(
            "gate.retry_from = \"draft\"\ngate.max_rounds = 5",
            Ok(gate(5)),
        );
        check_gate_form(
            "[stages.gate]\nretry_from = \"draft\"\nmax_rounds = 2",
            Ok(gate(2)),
        );
        check_gate_form(
            "[stages.gate]\nmax_rounds = 2",
            Err("9:1: [[stages]] #2 (\"build\"): missing required key `gate.retry_from`"),
        );
    }

    #[test]
    fn toml_syntax_error() {
        check_errors(
            "[engine]\nlease = \"15s\"\nheartbeat = 2s\n",
            &["3:13: invalid toml: invalid number"],
        );
        check_errors(
            "[[stages]]\nname = \"a\"\nkind = command\n",
            &["3:8: invalid toml: invalid TOML value, did you mean to use a quoted string?"],
        );
        check_errors(
            "[engine]\nlease = \"15s\"\nlease = \"16s\"\n",
            &["3:1: invalid toml: duplicate key: `lease`"],
        );
        check_errors(
            "[engine\n",
            &["1:8: invalid toml: expected a right bracket, found a newline"],
        );
    }

    fn check_paths(path: &str, engine: &str, expected: [&str; 3]) {
        let text = format!("[engine]\n{engine}\n{STAGE}");
        let config = parse(&text, Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
        let engine = &config.engine;
        let actual =
            [&engine.data_dir, &engine.workspace, &engine.inbox].map(|p| p.display().to_string());
        assert_eq!(actual, expected, "config:\n{text}");
    }

    #[test]
    fn path_resolution() {
        check_paths(
            "/proj/ideamill.toml",
            "",
            ["/proj/.ideamill", "/proj/workspace", "/proj/inbox"],
        );
        check_paths(
            "/proj/ideamill.toml",
            "data_dir = \"state\"\nworkspace = \"./work/../ws\"\ninbox = \"../shared/inbox\"",
            ["/proj/state", "/proj/ws", "/shared/inbox"],
        );
        check_paths(
            "/proj/ideamill.toml",
            "data_dir = \"/var/lib/ideamill\"\nworkspace = \"/tmp/ws/\"\ninbox = \"/../../in\"",
            ["/var/lib/ideamill", "/tmp/ws", "/in"],
        );
        check_paths(
            "/a/./b/ideamill.toml",
            "inbox = \"c\"",
            ["/a/b/.ideamill", "/a/b/workspace", "/a/b/c"],
        );
        check_errors(
            &format!("[engine]\ninbox = \"\"\n{STAGE}"),
            &["2:9: [engine]: `inbox` must not be empty"],
        );
    }

    fn check_url(store: &str, expected: Result<&str, &str>) {
        let text = format!("[engine]\ndata_dir = \"data\"\n[store]\n{store}\n{STAGE}");
        match expected {
            Ok(url) => assert_eq!(config(&text).store.url, url, "config:\n{text}"),
            Err(message) => check_errors(&text, &[message]),
        }
    }

    #[test]
    fn store_url() {
        check_url("", Ok("sqlite:///proj/data/ideamill.db"));
        check_url("url = \"sqlite://db/x.db\"", Ok("sqlite:///proj/db/x.db"));
        check_url(
            "url = \"sqlite://../x.db?mode=rwc\"",
            Ok("sqlite:///x.db?mode=rwc"),
        );
        check_url("url = \"sqlite:///srv/x.db\"", Ok("sqlite:///srv/x.db"));
        check_url("url = \"SQLite://x.db\"", Ok("sqlite:///proj/x.db"));
        check_url(
            "url = \"postgres://user:pw@db.local:5432/ideamill\"",
            Ok("postgres://user:pw@db.local:5432/ideamill"),
        );
        check_url(
            "url = \"postgresql://db/ideamill\"",
            Ok("postgresql://db/ideamill"),
        );
        check_url(
            "url = \"mysql://user:secret@host/db\"",
            Err(
                "4:7: [store]: `url` has unsupported scheme \"mysql\"; expected sqlite://PATH or postgres://HOST/DATABASE",
            ),
        );
        check_url(
            "url = \"ideamill.db\"",
            Err(
                "4:7: [store]: `url` is not a url; expected sqlite://PATH or postgres://HOST/DATABASE",
            ),
        );
        check_url(
            "url = \"sqlite://?mode=ro\"",
            Err(
                "4:7: [store]: `url` names no database file; expected sqlite://PATH or postgres://HOST/DATABASE",
            ),
        );
    }

    #[test]
    fn redacted_configs_hold_no_secret() {
        let c = config(&format!(
            "[store]\nurl = \"postgres://mill:pw-secret@db.example/mill\"\n\
             [providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n\
             headers = {{ Authorization = \"Bearer hdr-secret\" }}\n\
             [[alerts]]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/hook-secret\"\n\
             headers = {{ X = \"alert-secret\" }}\n\
             {STAGE}env = {{ TOKEN = \"env-secret\" }}\n"
        ));
        let shown = format!("{:#?}", c.redacted());
        for secret in [
            "pw-secret",
            "hdr-secret",
            "hook-secret",
            "alert-secret",
            "env-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://mill:***@db.example/mill"),
            "{shown}"
        );
        assert!(shown.contains("https://hooks.slack.com/***"), "{shown}");
    }

    #[test]
    fn sandbox_and_limits() {
        let c = config(&format!(
            "[sandbox]\nprogram = \"/opt/bwrap\"\nmemory = \"1GiB\"\nprocesses = 64\n\
             {STAGE}network = true\npass_env = [\"X\"]\nread_only = [\"tests\"]\n\
             limits = {{ memory = \"512MiB\", cpu_time = \"30s\" }}\n\
             [[stages]]\nname = \"free\"\nkind = \"command\"\ncommand = [\"true\"]\nsandbox = \"off\"\n"
        ));
        assert_eq!(c.sandbox.program, "/opt/bwrap");
        let build = command(&c.stages[0]);
        assert_eq!(build.sandbox, SandboxMode::On);
        assert!(build.network);
        assert_eq!(build.pass_env, ["X"]);
        assert_eq!(build.read_only, [c.root.join("tests")]);
        // The stage's own limits win; the rest come from [sandbox], then defaults.
        assert_eq!(build.limits.memory, 512 << 20);
        assert_eq!(build.limits.cpu_time, Duration::from_secs(30));
        assert_eq!(build.limits.processes, 64);
        assert_eq!(
            build.limits.workspace_size,
            Limits::default().workspace_size
        );
        let free = command(&c.stages[1]);
        assert_eq!(free.sandbox, SandboxMode::Off);
        assert!(!free.network);
        assert_eq!(free.limits.memory, 1 << 30);

        check_errors(
            &format!(
                "{STAGE}sandbox = \"maybe\"\npass_env = [\"A=B\"]\nlimits = {{ memory = \"2 gigs\", disk = 1 }}\n"
            ),
            &[
                r#"5:11: [[stages]] #1 ("build"): `sandbox` "maybe" must be "on" (the default) or "off""#,
                r#"6:13: [[stages]] #1 ("build"): `pass_env` "A=B" is not a valid environment variable name"#,
                r#"7:21: [[stages]] #1 ("build"): `limits.memory` unknown size unit "gigs" in "2 gigs"; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"#,
                r#"7:31: unknown key `limits.disk` in [[stages]] #1 ("build"); expected one of: limits.memory, limits.processes, limits.cpu_time, limits.file_size, limits.workspace_size, limits.tmp_size"#,
            ],
        );
    }

    #[test]
    fn env_and_command() {
        let text = format!(
            "{}\nenv = {{ A = \"1\", \"B C\" = \"2\" }}\n",
            "[[stages]]\nname = \"a\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo $A\"]"
        );
        let config = config(&text);
        let c = command(&config.stages[0]);
        assert_eq!(
            (c.program.as_str(), c.args.as_slice()),
            ("sh", ["-c".to_owned(), "echo $A".to_owned()].as_slice())
        );
        assert_eq!(
            c.env,
            BTreeMap::from([
                ("A".to_owned(), "1".to_owned()),
                ("B C".to_owned(), "2".to_owned())
            ])
        );
        check_errors(
            &format!("{STAGE}env = {{ \"A=B\" = \"1\", C = \"x\\u0000\" }}\n"),
            &[
                "5:9: [[stages]] #1 (\"build\"): `env` key \"A=B\" is not a valid environment variable name (empty, or contains `=` or a NUL byte)",
                "5:26: [[stages]] #1 (\"build\"): `env.C` contains a NUL byte",
            ],
        );
    }

    #[test]
    fn line_columns() {
        let check = |text: &str, offset: usize, expected: (usize, usize)| {
            assert_eq!(line_column(text, offset), expected, "{text:?} @ {offset}");
        };
        check("", 0, (1, 1));
        check("abc", 2, (1, 3));
        check("a\nb", 2, (2, 1));
        check("a\r\nb", 3, (2, 1));
        check("éé", 2, (1, 2));
        check("éé", 3, (1, 2));
        check("ab", 99, (1, 3));
    }

    #[test]
    fn health_table() {
        let c = config(&format!(
            "[health]\nstall_after = \"2s\"\nlisten = \"off\"\nmin_free_disk_mb = 0\nmax_restarts = 2\n{STAGE}"
        ));
        assert_eq!(
            c.health,
            HealthConfig {
                stall_after: Duration::from_secs(2),
                listen: None,
                min_free_disk_mb: 0,
                max_restarts: 2,
                ..HealthConfig::default()
            }
        );
        assert_eq!(config(STAGE).health, HealthConfig::default());
        check_errors(
            &format!("[health]\nlisten = \"localhost\"\nstall_after = \"0s\"\nbeat = 1\n{STAGE}"),
            &[
                "2:10: [health]: `listen` \"localhost\" must be IP:PORT (e.g. \"127.0.0.1:9464\") or \"off\"",
                "3:15: [health]: `stall_after` must be greater than 0s",
                "4:1: unknown key `beat` in [health]; expected one of: stall_after, listen, \
                 min_free_disk_mb, stuck_after, failure_window, max_restarts, restart_window",
            ],
        );
    }

    #[test]
    fn inbox_table() {
        let c = config(&format!(
            "[inbox]\nevents = false\nsettle = \"200ms\"\nrescan = \"5s\"\nmax_ideas = 3\n{STAGE}"
        ));
        assert_eq!(
            c.inbox,
            InboxConfig {
                events: false,
                settle: Duration::from_millis(200),
                rescan: Duration::from_secs(5),
                max_ideas: 3,
                ..InboxConfig::default()
            }
        );
        assert_eq!(config(STAGE).inbox, InboxConfig::default());
        check_errors(
            &format!(
                "[inbox]\nrescan = \"0s\"\nmax_file_bytes = 0\nenabled = \"yes\"\nwatch = 1\n{STAGE}"
            ),
            &[
                "2:10: [inbox]: `rescan` must be greater than 0s",
                "3:18: [inbox]: `max_file_bytes` must be an integer >= 1, found 0",
                "4:11: [inbox]: `enabled` must be true or false, found string",
                "5:1: unknown key `watch` in [inbox]; expected one of: enabled, events, settle, \
                 rescan, max_file_bytes, max_ideas, max_idea_bytes",
            ],
        );
    }

    #[test]
    fn web_table() {
        let c = config(&format!(
            "[web]\ntoken_file = \"secrets/token\"\nrequire_token = true\nurl = \"https://mill.example.org/\"\n{STAGE}"
        ));
        assert_eq!(
            c.web,
            WebConfig {
                token_file: PathBuf::from("/proj/secrets/token"),
                require_token: true,
                url: Some("https://mill.example.org".into()),
            }
        );
        assert_eq!(
            config(STAGE).web.token_file,
            PathBuf::from("/proj/.ideamill/token")
        );
        check_errors(
            &format!("[web]\nurl = \"mill.local\"\ntoken = \"x\"\n{STAGE}"),
            &[
                "2:7: [web]: `url` must start with http:// or https://",
                "3:1: unknown key `token` in [web]; expected one of: token_file, require_token, url",
            ],
        );
    }

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
