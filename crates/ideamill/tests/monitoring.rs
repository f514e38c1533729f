//! The shipped monitoring files (issue 14): the Prometheus alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), every
//! alert is tested firing and quiet and links to a runbook section that
//! exists, the Grafana dashboard's queries parse, and every metric the rules
//! and the dashboard query is in a real `/metrics` scrape of a running mill.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::llm::fake_provider::{FakeProvider, Reply};
use crate::util::*;
use serde_json::Value;

const RULES: &str = "deploy/prometheus/ideamill.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/ideamill.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/ideamill.json";
const RUNBOOK: &str = "docs/runbook.md";
/// Where every `runbook_url` points (the README says how to change it).
const RUNBOOK_BASE: &str = "https://github.com/ideamill/ideamill/blob/main/docs/runbook.md#";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// `promtool ARGS` in the repository; `None` when promtool is missing
/// outside CI (CI installs it: `.ci/run`; there its absence fails).
fn promtool(args: &[&str]) -> Option<String> {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(out) => out,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not installed ({e}); skipping `promtool {args:?}` outside CI");
            return None;
        }
        Err(e) => panic!("promtool is required in CI (apt-get install prometheus): {e}"),
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{said}",
        out.status
    );
    Some(said)
}

/// One alert of the rules file, read line by line (the file is ours and
/// keeps one key per line).
#[derive(Debug, Default)]
struct Alert {
    name: String,
    severity: Option<String>,
    runbook_url: Option<String>,
    summary: bool,
    description: bool,
}

fn alerts(rules: &str) -> Vec<Alert> {
    let mut all: Vec<Alert> = Vec::new();
    for line in rules.lines() {
        let line = line.trim();
        let value = |key: &str| {
            line.strip_prefix(key)
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        if let Some(name) = value("- alert:") {
            all.push(Alert {
                name,
                ..Alert::default()
            });
        } else if let Some(a) = all.last_mut() {
            if let Some(v) = value("severity:") {
                a.severity = Some(v);
            } else if let Some(v) = value("runbook_url:") {
                a.runbook_url = Some(v);
            } else if line.starts_with("summary:") {
                a.summary = true;
            } else if line.starts_with("description:") {
                a.description = true;
            }
        }
    }
    all
}

/// GitHub's anchor of each `#`-heading: lowercased, punctuation other than
/// `-` and `_` dropped, spaces made hyphens.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    markdown
        .lines()
        .filter(|l| {
            // A `#` line in a fenced block is a shell comment, not a heading.
            if l.starts_with("```") {
                in_code = !in_code;
            }
            !in_code
        })
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// For each alert name of the unit tests: (seen firing, seen quiet).
fn tested(tests: &str) -> std::collections::BTreeMap<String, (bool, bool)> {
    let mut seen = std::collections::BTreeMap::new();
    let mut lines = tests.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix("alertname:") {
            let expected = lines.next().unwrap_or_default();
            let entry = seen
                .entry(name.trim().to_string())
                .or_insert((false, false));
            match expected {
                "exp_alerts: []" => entry.1 = true,
                "exp_alerts:" => entry.0 = true,
                other => panic!("alertname {name} is followed by {other:?}, not exp_alerts"),
            }
        }
    }
    seen
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = read(RULES);
    let all = alerts(&rules);
    assert!(all.len() >= 20, "too few alerts parsed: {all:?}");
    let sections = anchors(&read(RUNBOOK));
    let tests = tested(&read(RULE_TESTS));
    for a in &all {
        assert!(
            matches!(a.severity.as_deref(), Some("critical" | "warning" | "info")),
            "{}: severity {:?}",
            a.name,
            a.severity
        );
        assert!(
            a.summary && a.description,
            "{}: summary and description",
            a.name
        );
        let url = a.runbook_url.as_deref().unwrap_or_default();
        let anchor = url.strip_prefix(RUNBOOK_BASE).unwrap_or_else(|| {
            panic!(
                "{}: runbook_url {url:?} is not under {RUNBOOK_BASE}",
                a.name
            )
        });
        assert!(
            sections.contains(anchor),
            "{}: docs/runbook.md has no section #{anchor}",
            a.name
        );
        assert_eq!(
            tests.get(&a.name),
            Some(&(true, true)),
            "{}: the unit tests must see it fire and stay quiet",
            a.name
        );
    }
    let names: BTreeSet<&str> = all.iter().map(|a| a.name.as_str()).collect();
    for name in tests.keys() {
        assert!(
            names.contains(name.as_str()),
            "the unit tests test {name}, which the rules lack"
        );
    }

    let Some(checked) = promtool(&["check", "rules", RULES]) else {
        return;
    };
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", all.len())),
        "{checked}"
    );
    let said = promtool(&["test", "rules", RULE_TESTS]).unwrap_or_default();
    assert!(said.contains("SUCCESS"), "{said}");
}

/// Every query of the dashboard is PromQL that Prometheus parses: each
/// becomes a recording rule (Grafana's variables given values) for
/// `promtool check rules`.
#[test]
fn the_dashboards_queries_parse() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    panel_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 25, "too few queries: {exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$job", "ideamill")
            .replace("$instance", ".*");
        assert!(!e.contains('$'), "an unknown variable in {e}");
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            Value::String(e)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    if let Some(said) = promtool(&["check", "rules", file.to_str().unwrap()]) {
        assert!(
            said.contains(&format!("SUCCESS: {} rules found", exprs.len())),
            "{said}\n{rules}"
        );
    }
}

/// The panels' queries (`expr`), rows' panels included.
fn panel_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => panel_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| panel_exprs(v, out)),
        _ => {}
    }
}

/// The metric names an expression reads: the `ideamill_*` identifiers
/// outside quoted strings (label values, regexes), and `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut unquoted = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None => unquoted.push(c),
        }
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("ideamill_") || *t == "up")
        .map(str::to_string)
        .collect()
}

/// Every PromQL expression of the dashboard: panel targets (nested rows
/// included) and the template variables' queries.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The rules' expressions: each `expr:` value, folded (`>`) or not.
fn rule_exprs(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest == ">" || rest == "|" {
            let indent = line.len() - line.trim_start().len();
            let mut folded = String::new();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.len() - next.trim_start().len() <= indent {
                    break;
                }
                folded.push_str(next.trim());
                folded.push(' ');
                lines.next();
            }
            out.push(folded);
        } else {
            out.push(rest.to_string());
        }
    }
    out
}

/// The names of the series a scrape carries (samples, not just HELP lines).
fn scraped_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The names `wanted` that the scrape lacks; `up` is Prometheus's own.
fn missing(wanted: &BTreeSet<String>, scraped: &BTreeSet<String>) -> Vec<String> {
    wanted
        .iter()
        .filter(|n| *n != "up" && !scraped.contains(*n))
        .cloned()
        .collect()
}

/// Issue 14: no panel or rule reads a metric that is not exported. A mill
/// with a model stage (a fake provider that rate-limits the first call), a
/// command stage and a gate runs two items (one passes the gate at once,
/// one in its second round), so that every labelled series exists; then
/// its `/metrics` is scraped and every name the dashboard's and the rules'
/// PromQL reads must be in it.
#[test]
fn every_metric_the_dashboard_and_the_rules_read_is_exported() {
    let server = FakeProvider::start(vec![
        Reply::Error {
            status: 429,
            body: r#"{"error":{"message":"slow down","type":"rate_limit"}}"#.into(),
            headers: vec![("Retry-After".into(), "1".into())],
        },
        Reply::Json {
            text: "print('hello')".into(),
        },
    ]);
    let url = &server.url;
    let qa = "import json, sys\nctx = json.load(sys.stdin)\n\
              if ctx['item']['text'] == 'later' and ctx['round'] < 2:\n    print('fix it')\n    sys.exit(1)\n\
              print('good')\n";
    let config = format!(
        "{ENGINE}[health]\nstall_after = \"2s\"\nlisten = \"127.0.0.1:0\"\n\
         [providers.main]\nkind = \"openai\"\nbase_url = \"{url}\"\nmodel = \"fake\"\nstream = false\n\n\
         [[stages]]\nname = \"write\"\nkind = \"llm\"\nprovider = \"main\"\nprompt = \"prompt.md\"\nmax_attempts = 3\nbackoff = \"100ms\"\n\n{}{}",
        py_stage("check", "print('checked')", ""),
        py_stage(
            "qa",
            qa,
            "gate = { retry_from = \"write\", max_rounds = 2 }"
        )
    );
    let p = Project::new(&config);
    std::fs::write(p.file("prompt.md"), "Write code for: {{ idea }}\n").unwrap();
    let ids = [p.add("first"), p.add("later")];
    let mut run = p.spawn_run(&["--no-supervisor"]);
    assert!(
        wait_until(Duration::from_secs(60), || ids
            .iter()
            .all(|id| p.show(*id)["item"]["state"] == "done")),
        "{:#}\n{}",
        p.show(ids[1]),
        p.logs()
    );
    let addr = wait_listen_address(&p);
    let (code, exposition) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{exposition}");
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(30)).expect("run stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", p.logs());

    // The figures the new alerts read, from this run: the 429 is counted
    // as an error and as rate limited; nothing waits or is paused.
    for series in [
        "ideamill_llm_requests_total{provider=\"main\"} 4",
        "ideamill_llm_errors_total{provider=\"main\"} 1",
        "ideamill_llm_rate_limited_total{provider=\"main\"} 1",
        "ideamill_paused_jobs 0",
        "ideamill_expired_lease_jobs 0",
        "ideamill_queue_oldest_age_seconds 0",
        "ideamill_health_reasons{code=\"no_engine\"} 0",
        "ideamill_health_verdict ",
        "ideamill_disk_free_bytes ",
    ] {
        assert!(
            exposition.contains(series),
            "{series} missing:\n{exposition}"
        );
    }
    let scraped = scraped_names(&exposition);
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let rules = rule_exprs(&read(RULES));
    for (what, exprs, at_least) in [("dashboard", exprs, 25), ("rules", rules, 20)] {
        assert!(
            exprs.len() >= at_least,
            "{what}: too few expressions: {exprs:?}"
        );
        let wanted: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        // Every name the parse found is a metric name, not a fragment of one.
        assert!(wanted.len() >= 10, "{what}: {wanted:?}");
        assert_eq!(
            missing(&wanted, &scraped),
            Vec::<String>::new(),
            "the {what} reads metrics that /metrics does not export:\n{exposition}"
        );
    }

    // The check can fail: a name that is not exported is reported, in any
    // position of an expression; names inside strings are not names.
    let bogus = metric_names(
        "sum by (stage) (rate(ideamill_bogus_seconds_bucket{job=\"ideamill_x\"}[5m])) / on() up",
    );
    assert_eq!(
        bogus,
        BTreeSet::from([
            "ideamill_bogus_seconds_bucket".to_string(),
            "up".to_string()
        ])
    );
    assert_eq!(missing(&bogus, &scraped), ["ideamill_bogus_seconds_bucket"]);
}
