//! `ideamill.toml`: its validated form, and the parser that turns text into it
//! while reporting every error at once with file, line and column.
//!
//! One file per section holds the section's types, its defaults (a
//! `DEFAULT_*` constant or a `Default` impl next to the field) and its
//! parser; `section.rs` holds what they share.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use section::{Problems, Section};

mod agent;
mod alerts;
mod command;
mod engine;
mod health;
mod inbox;
mod llm;
mod providers;
mod sandbox;
mod section;
mod stages;
mod store;
mod telemetry;
#[cfg(test)]
mod testing;
mod web;

pub use agent::{AgentOutput, AgentPreset, AgentStage, PromptVia, preset_names};
pub use alerts::{AlertKind, AlertTarget, AlertTrigger, UrlSource};
pub use command::CommandStage;
pub use engine::EngineConfig;
pub use health::{HealthConfig, parse_listen};
pub use inbox::InboxConfig;
pub use llm::LlmStage;
pub use providers::{ApiKeySource, BudgetConfig, Price, ProviderConfig, ProviderKind};
pub use sandbox::{Limits, SandboxConfig, SandboxMode};
pub use stages::{KindConfig, KindFacts, StageConfig, StageKind};
pub use store::StoreConfig;
pub use telemetry::{HeaderValue, TelemetryConfig};
pub use web::WebConfig;

/// Each section's defaults, for whatever needs one outside the parser.
pub mod defaults {
    pub use super::alerts::{
        DEFAULT_BACKOFF as ALERT_BACKOFF, DEFAULT_COOLDOWN as ALERT_COOLDOWN,
        DEFAULT_MAX_TRIES as ALERT_MAX_TRIES, DEFAULT_TIMEOUT as ALERT_TIMEOUT,
    };
    pub use super::command::{DEFAULT_KILL_GRACE, DEFAULT_MAX_OUTPUT};
    pub use super::engine::{
        DEFAULT_DATA_DIR, DEFAULT_HEARTBEAT, DEFAULT_INBOX, DEFAULT_LEASE, DEFAULT_POLL_INTERVAL,
        DEFAULT_SHUTDOWN_GRACE, DEFAULT_WORKSPACE,
    };
    pub use super::health::DEFAULT_LISTEN;
    pub use super::llm::{DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_FILES, DEFAULT_MAX_TOKENS};
    pub use super::providers::{
        DEFAULT_ANTHROPIC_URL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
        DEFAULT_MAX_CONCURRENCY as PROVIDER_MAX_CONCURRENCY,
    };
    pub use super::sandbox::DEFAULT_PROGRAM as SANDBOX_PROGRAM;
    pub use super::stages::{
        DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX, DEFAULT_CONCURRENCY, DEFAULT_MAX_ATTEMPTS,
        DEFAULT_MAX_ROUNDS, DEFAULT_TIMEOUT, MAX_CONCURRENCY,
    };
    pub use super::store::DEFAULT_DATABASE;
    pub use super::telemetry::DEFAULT_SERVICE_NAME;
    pub use super::web::DEFAULT_TOKEN_FILE;
}

/// A validated config. Every path is absolute, every default applied: nothing
/// downstream validates again.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The config file itself.
    pub path: PathBuf,
    /// The folder holding the config file; relative paths resolve against it.
    pub root: PathBuf,
    /// `[store]`: the database.
    pub store: StoreConfig,
    /// `[engine]`: folders, leases and timing.
    pub engine: EngineConfig,
    /// In pipeline order; at least one; names unique.
    pub stages: Vec<StageConfig>,
    /// Model endpoints for `llm` stages, by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Prices per model, in US dollars per million tokens.
    pub prices: BTreeMap<String, Price>,
    /// `[budget]`: spending caps.
    pub budget: BudgetConfig,
    /// Hang detection, the supervisor, probes and the health verdict.
    pub health: HealthConfig,
    /// How `ideamill run` takes idea files from `engine.inbox`.
    pub inbox: InboxConfig,
    /// The dashboard and the HTTP API (served on `health.listen`).
    pub web: WebConfig,
    /// Where alerts go (`[[alerts]]`), in file order; empty: no alerts.
    pub alerts: Vec<AlertTarget>,
    /// How command stages are confined (`[sandbox]`).
    pub sandbox: SandboxConfig,
    /// OpenTelemetry traces (`[telemetry]`); off by default.
    pub telemetry: TelemetryConfig,
}

/// `scheme://user:***@host/…`: a URL's password hidden.
pub fn redact_url_secret(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!(
                    "{}{}:{REDACTED}{}",
                    &url[..s + 3],
                    &userinfo[..c],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `scheme://host/***`: only where a URL goes, not its path or query (where
/// webhooks keep their secret) nor its user.
pub fn redact_url_path(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return REDACTED.to_owned();
    };
    let rest = &url[s + 3..];
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{}{host}/{REDACTED}", &url[..s + 3])
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file the problem is in.
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (e.g. it is missing).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// What is wrong, as a lowercase fragment.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every error found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// What stands in for a secret in a redacted config.
pub const REDACTED: &str = "***";

impl Config {
    /// A copy fit for evidence bundles and logs: the store's password,
    /// alert URLs (a Slack webhook's path is its secret), every header value
    /// and every stage `env` value replaced by `***`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.store.url = redact_url_secret(&c.store.url);
        for provider in c.providers.values_mut() {
            provider
                .headers
                .values_mut()
                .for_each(|v| *v = REDACTED.to_owned());
        }
        for alert in &mut c.alerts {
            alert
                .headers
                .values_mut()
                .for_each(|v| *v = REDACTED.to_owned());
            if let UrlSource::Literal(url) = &mut alert.url {
                *url = redact_url_path(url);
            }
        }
        for stage in &mut c.stages {
            stage.kind.redact(REDACTED);
        }
        for value in c.telemetry.headers.values_mut() {
            if let HeaderValue::Literal(v) = value {
                *v = REDACTED.to_owned();
            }
        }
        if let Some(url) = &mut c.telemetry.otlp_endpoint {
            *url = redact_url_secret(url);
        }
        c
    }

    /// The stage called `name`, if any.
    pub fn stage(&self, name: &str) -> Option<&StageConfig> {
        self.stages.iter().find(|s| s.name == name)
    }
    /// The pipeline's first stage, where new items start (a config has at least one).
    pub fn first_stage(&self) -> &StageConfig {
        &self.stages[0]
    }
    /// The stage after `name` in pipeline order, if any.
    pub fn next_stage(&self, name: &str) -> Option<&StageConfig> {
        let i = self.stages.iter().position(|s| s.name == name)?;
        self.stages.get(i + 1)
    }
}

/// Parse and validate config `text` read from `path` (used for messages and
/// to resolve relative paths; `path` should be absolute). Pure: no IO.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let root = section::normalize(path.parent().unwrap_or(Path::new("")));
    let mut problems = Problems::default();
    let document = match toml_span::parse(text) {
        Ok(document) => document,
        Err(e) => {
            // Without a tree there is nothing more to check.
            problems.add(e.span, format!("invalid toml: {e}"));
            return Err(problems.into_errors(text, path));
        }
    };
    let mut top = Section::top(document);
    // Read in the order the documentation shows them, the order an unknown
    // key's message lists them in.
    let store = top.section("store", "[store]");
    let engine = top.section("engine", "[engine]");
    let health = top.section("health", "[health]");
    let inbox = top.section("inbox", "[inbox]");
    let providers = top.section("providers", "[providers]");
    let prices = top.section("prices", "[prices]");
    let budget = top.section("budget", "[budget]");
    let stages = top.array("stages", "an array of tables ([[stages]])");
    let web = top.section("web", "[web]");
    let alerts = top.array("alerts", "an array of tables ([[alerts]])");
    let sandbox = top.section("sandbox", "[sandbox]");
    let telemetry = top.section("telemetry", "[telemetry]");
    problems.absorb(top);

    // [engine] comes first because the default store url and token file
    // live in its data_dir.
    let engine = read(engine, "[engine]", &mut problems, |s| {
        engine::parse(s, &root)
    });
    let store = read(store, "[store]", &mut problems, |s| {
        store::parse(s, &root, &engine.data_dir)
    });
    let providers = read(providers, "[providers]", &mut problems, |s| {
        providers::parse(s, &root)
    });
    let prices = read(prices, "[prices]", &mut problems, providers::prices);
    let budget = read(budget, "[budget]", &mut problems, providers::budget);
    let sandbox = read(sandbox, "[sandbox]", &mut problems, sandbox::parse);
    let context = stages::Context {
        root: &root,
        providers: &providers,
        limits: &sandbox.limits,
    };
    let stages = stages::parse(stages, &context, &mut problems);
    let health = read(health, "[health]", &mut problems, health::parse);
    let inbox = read(inbox, "[inbox]", &mut problems, inbox::parse);
    let web = read(web, "[web]", &mut problems, |s| {
        web::parse(s, &root, &engine.data_dir)
    });
    let alerts = alerts::parse(alerts, &mut problems);
    let telemetry = read(telemetry, "[telemetry]", &mut problems, telemetry::parse);

    if !problems.is_empty() {
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
        telemetry,
    })
}

/// Reads one section with `parse`. An absent table (or one of the wrong
/// type, already reported) reads as empty: every key takes its default, so
/// that each default is written once, in its section's parser.
fn read<'de, T>(
    section: Option<Section<'de>>,
    label: &str,
    problems: &mut Problems,
    parse: impl FnOnce(&mut Section<'de>) -> T,
) -> T {
    let mut section = section.unwrap_or_else(|| Section::empty(label));
    let value = parse(&mut section);
    problems.absorb(section);
    value
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::testing::{FILE, STAGE, check_errors, config};
    use super::*;
    use crate::model::{Gate, RetryPolicy};

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
            telemetry: TelemetryConfig::default(),
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
                    stall_after: None,
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
                    stall_after: None,
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
                "1:1: unknown key `colour` at the top level; expected one of: store, engine, health, inbox, providers, prices, budget, stages, web, alerts, sandbox, telemetry",
            ],
        );
        check_errors(
            &format!("{STAGE}retries = 3\n"),
            &[
                "5:1: unknown key `retries` in [[stages]] #1 (\"build\"); expected one of: \
                 name, kind, timeout, stall_after, max_attempts, backoff, backoff_max, concurrency, gate, \
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

    #[test]
    fn redacted_configs_hold_no_secret() {
        let c = config(&format!(
            "[store]\nurl = \"postgres://mill:pw-secret@db.example/mill\"\n\
             [providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n\
             headers = {{ Authorization = \"Bearer hdr-secret\" }}\n\
             [[alerts]]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/hook-secret\"\n\
             headers = {{ X = \"alert-secret\" }}\n\
             [telemetry]\notlp_endpoint = \"https://u:otlp-pw-secret@otlp.example\"\n\
             headers = {{ authorization = \"Basic otlp-secret\" }}\n\
             {STAGE}env = {{ TOKEN = \"env-secret\" }}\n"
        ));
        let shown = format!("{:#?}", c.redacted());
        assert!(
            !format!("{c:?}").contains("otlp-secret"),
            "Debug hides it too"
        );
        for secret in [
            "pw-secret",
            "hdr-secret",
            "hook-secret",
            "alert-secret",
            "env-secret",
            "otlp-secret",
            "otlp-pw-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://mill:***@db.example/mill"),
            "{shown}"
        );
        assert!(shown.contains("https://hooks.slack.com/***"), "{shown}");
    }

    /// Each parser reads its keys in the order the documentation shows
    /// them, and an unknown key's message lists them in that order: a
    /// parser that reads a key earlier or later changes the list.
    #[test]
    fn unknown_keys_list_each_sections_keys_in_documented_order() {
        let cases = [
            (
                "[[alerts]]\nkind = \"slack\"\nurl = \"https://x/y\"\nzz = 1\n",
                "4:1: unknown key `zz` in [[alerts]] #1; expected one of: name, kind, url, \
                 url_env, headers, on, cooldown, max_tries, backoff, timeout",
            ),
            (
                "[providers.p]\nkind = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\nzz = 1\n",
                "5:1: unknown key `zz` in [providers.p]; expected one of: kind, base_url, model, \
                 api_key_env, api_key_file, headers, stream, connect_timeout, idle_timeout, \
                 max_concurrency, requests_per_minute, tokens_per_minute",
            ),
            (
                "[prices]\nm = { input = 1, output = 2, zz = 1 }\n",
                "2:30: unknown key `zz` in [prices] \"m\"; expected one of: input, output",
            ),
            (
                "[budget]\nzz = 1\n",
                "2:1: unknown key `zz` in [budget]; expected one of: item_usd, day_usd, \
                 item_tokens, day_tokens",
            ),
            (
                "[sandbox]\nzz = 1\n",
                "2:1: unknown key `zz` in [sandbox]; expected one of: program, memory, \
                 processes, cpu_time, file_size, workspace_size, tmp_size",
            ),
        ];
        for (text, expected) in cases {
            check_errors(&format!("{text}{STAGE}"), &[expected]);
        }
        check_errors(
            "[providers.p]\nkind = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\n\
             [[stages]]\nname = \"a\"\nkind = \"llm\"\nprovider = \"p\"\nprompt = \"x\"\nzz = 1\n",
            &[
                "10:1: unknown key `zz` in [[stages]] #1 (\"a\"); expected one of: name, kind, \
               timeout, stall_after, max_attempts, backoff, backoff_max, concurrency, gate, provider, prompt, \
               system, temperature, max_tokens, files, max_files, max_file_bytes",
            ],
        );
    }
}
