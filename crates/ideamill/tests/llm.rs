//! `llm` stages end to end: the real binary against a scripted fake
//! provider on loopback, one fault per test, asserting each attempt's
//! recorded outcome and the item's final state.

// Shared with the monitoring and telemetry tests (a file may be a module
// only once).
#[path = "support/fake_provider.rs"]
pub(crate) mod fake_provider;

use std::time::Duration;

use crate::util::*;
use fake_provider::{FakeProvider, Reply};
use serde_json::Value;

const KEY: &str = "sk-test-secret-4f7a9c";

/// A project with one llm stage against `server`.
fn project(server: &FakeProvider, stage_extra: &str, extra: &str) -> Project {
    let config = format!(
        "{ENGINE}\n[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"fake\"\n\
         api_key_env = \"FAKE_KEY\"\nidle_timeout = \"1s\"\nconnect_timeout = \"2s\"\n\n{extra}\n\
         [[stages]]\nname = \"write\"\nkind = \"llm\"\nprovider = \"fake\"\nprompt = \"prompt.md\"\n\
         max_attempts = 3\nbackoff = \"100ms\"\ntimeout = \"20s\"\n{stage_extra}\n",
        server.url
    );
    let p = Project::new(&config);
    std::fs::write(
        p.file("prompt.md"),
        "Write code for: {{ idea }}{% if feedback %} ({{ feedback }}){% endif %}\n",
    )
    .unwrap();
    p
}

fn run(p: &Project) {
    let log = std::fs::File::create(p.file("run-llm.log")).unwrap();
    let mut child = p
        .cmd(&["run", "--until-idle"])
        .env("FAKE_KEY", KEY)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("run --until-idle finishes");
    assert!(status.success(), "run failed: {status}\n{}", p.logs());
}

/// Ask for whole answers instead of streams.
fn without_streaming(p: &Project) {
    let config = std::fs::read_to_string(p.file("ideamill.toml")).unwrap();
    let config = config.replace("connect_timeout", "stream = false\nconnect_timeout");
    std::fs::write(p.file("ideamill.toml"), config).unwrap();
}

fn outcomes(item: &Value) -> Vec<String> {
    item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_string())
        .collect()
}

fn stream(chunks: &[&str]) -> Reply {
    Reply::Stream {
        chunks: chunks.iter().map(|c| c.to_string()).collect(),
        gap: Duration::ZERO,
    }
}

#[test]
fn a_streamed_answer_is_the_output_with_counted_tokens() {
    let server = FakeProvider::start(vec![stream(&["Hello", ", ", "world"])]);
    let p = project(&server, "", "");
    let id = p.add("greet");
    run(&p);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(item["outputs"][0]["output"], "Hello, world");
    let usage = &item["attempts"][0]["usage"];
    assert_eq!(usage["provider"], "fake");
    assert_eq!(
        usage["counted"], true,
        "the stream sent no usage, so it was counted"
    );
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    assert!(item["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // The rendered template reached the server, with max_tokens always sent.
    let request: Value = serde_json::from_str(&server.requests.lock().unwrap()[0]).unwrap();
    assert_eq!(request["messages"][0]["content"], "Write code for: greet\n");
    assert!(request["max_tokens"].as_u64().is_some());
}

#[test]
fn a_non_streamed_answer_records_the_servers_usage_and_cost() {
    let server = FakeProvider::start(vec![Reply::Json {
        text: "done".into(),
    }]);
    let p = project(
        &server,
        "",
        "[prices]\n\"fake\" = { input = 1000000, output = 2000000 }\n",
    );
    without_streaming(&p);
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    let usage = &item["attempts"][0]["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(11), Some(7))
    );
    assert_eq!(usage["counted"], false);
    assert_eq!(
        usage["cost"].as_f64(),
        Some(11.0 + 14.0),
        "priced per million tokens"
    );
}

#[test]
fn a_429_waits_for_retry_after_then_succeeds() {
    let server = FakeProvider::start(vec![
        Reply::Error {
            status: 429,
            body: r#"{"error":{"message":"slow down","type":"rate_limit"}}"#.into(),
            headers: vec![("Retry-After".into(), "1".into())],
        },
        stream(&["ok"]),
    ]);
    let p = project(&server, "", "");
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(outcomes(&item), ["error", "succeeded"]);
    let a = &item["attempts"];
    assert!(
        a[0]["error"]
            .as_str()
            .unwrap()
            .contains("rate limited (http 429): slow down"),
        "{a:#}"
    );
    let gap = a[1]["started_at"].as_i64().unwrap() - a[0]["finished_at"].as_i64().unwrap();
    assert!(gap >= 950, "waited {gap} ms, the server asked for 1 s");
}

#[test]
fn a_500_is_retried_and_then_succeeds() {
    let server = FakeProvider::start(vec![
        Reply::Error {
            status: 500,
            body: r#"{"error":{"message":"boom"}}"#.into(),
            headers: vec![],
        },
        stream(&["fine"]),
    ]);
    let p = project(&server, "", "");
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(outcomes(&item), ["error", "succeeded"]);
    assert!(
        item["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    assert_eq!(item["item"]["state"], "done");
}

#[test]
fn a_stream_that_stops_sending_hits_the_idle_timeout_and_is_retried() {
    let server = FakeProvider::start(vec![
        Reply::StreamThenHang {
            chunks: vec!["par".into()],
            hang: Duration::from_secs(30),
        },
        stream(&["whole"]),
    ]);
    let p = project(&server, "", "");
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(outcomes(&item), ["timeout", "succeeded"], "{item:#}");
    let a = &item["attempts"][0];
    assert!(
        a["error"].as_str().unwrap().contains("idle timeout"),
        "{a:#}"
    );
    let took = a["finished_at"].as_i64().unwrap() - a["started_at"].as_i64().unwrap();
    assert!(took < 10_000, "the idle timeout (1s) fired after {took} ms");
    assert_eq!(
        item["outputs"][0]["output"], "whole",
        "the partial answer was never used"
    );
}

#[test]
fn a_truncated_stream_is_an_error_never_a_partial_output() {
    let server = FakeProvider::start(vec![
        Reply::StreamThenClose {
            chunks: vec!["half an ans".into()],
        },
        stream(&["all"]),
    ]);
    let p = project(&server, "", "");
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(outcomes(&item), ["error", "succeeded"], "{item:#}");
    assert!(
        item["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("truncated")
    );
    assert_eq!(item["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(item["outputs"][0]["output"], "all");
}

#[test]
fn malformed_json_is_retried_then_fails_with_a_clear_error() {
    let server = FakeProvider::start(vec![Reply::Garbage]);
    let p = project(&server, "", "");
    without_streaming(&p);
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(outcomes(&item), ["error", "error", "error"], "{item:#}");
    assert_eq!(item["item"]["state"], "failed");
    assert!(
        item["item"]["last_error"]
            .as_str()
            .unwrap()
            .contains("failed after 3 attempts")
    );
}

#[test]
fn a_slow_drip_under_the_idle_timeout_succeeds() {
    let chunks = (0..5).map(|i| format!("{i} ")).collect();
    let server = FakeProvider::start(vec![Reply::Stream {
        chunks,
        gap: Duration::from_millis(400),
    }]);
    let p = project(&server, "", "");
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(outcomes(&item), ["succeeded"], "{item:#}");
    assert_eq!(item["outputs"][0]["output"], "0 1 2 3 4 ");
}

#[test]
fn a_401_fails_at_once_with_the_providers_message_and_never_the_key() {
    let body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {KEY}","code":"invalid_api_key"}}}}"#
    );
    let server = FakeProvider::start(vec![Reply::Error {
        status: 401,
        body,
        headers: vec![],
    }]);
    let p = project(&server, "", "");
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(outcomes(&item), ["permanent"], "one attempt only: {item:#}");
    assert_eq!(item["item"]["state"], "failed");
    let error = item["item"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("401") && error.contains("Incorrect API key provided"),
        "{error}"
    );
    let everything = format!(
        "{}{}{}",
        p.ok(&["show", &id.to_string()]),
        p.ok(&["events", "--limit", "100"]),
        p.logs()
    );
    assert!(!everything.contains(KEY), "the key leaked");
    let db = std::fs::read(p.file(".ideamill/ideamill.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(KEY),
        "the key reached the store"
    );
}

#[test]
fn generated_files_land_in_the_workspace_and_hostile_paths_are_refused() {
    let answer = "Here:\n```python app/main.py\nprint('hi')\n```\n\n```python ../escape.py\nboom\n```\n\
                  /etc/passwd\n```\nroot\n```\n";
    let server = FakeProvider::start(vec![stream(&[answer])]);
    let p = project(&server, "files = true", "");
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    let ws = p.file(&format!("workspace/{id}"));
    assert_eq!(
        std::fs::read_to_string(ws.join("app/main.py")).unwrap(),
        "print('hi')\n"
    );
    assert!(!p.file("workspace/escape.py").exists() && !p.file("escape.py").exists());
    let note = item["attempts"][0]["error"].as_str().unwrap();
    assert!(
        note.contains("wrote app/main.py") && note.contains("refused ../escape.py"),
        "{note}"
    );
    assert!(
        note.contains("/etc/passwd"),
        "the absolute path is listed too: {note}"
    );
}

#[test]
fn reaching_a_budget_pauses_the_item_and_raising_it_resumes() {
    let server = FakeProvider::start(vec![
        Reply::Json { text: "one".into() },
        Reply::Json { text: "two".into() },
    ]);
    let two_stages = "[[stages]]\nname = \"more\"\nkind = \"llm\"\nprovider = \"fake\"\nprompt = \"prompt.md\"\n";
    // The first call reserves 5 + 20 tokens and uses 18; the second would
    // reserve 5 + 1024 (the default max_tokens), past the cap of 30.
    let p = project(
        &server,
        &format!("max_tokens = 20\n{two_stages}"),
        "[budget]\nitem_tokens = 30\n",
    );
    without_streaming(&p);
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(
        item["display_state"], "paused",
        "18 tokens used, and the next call may use 1029, past the cap of 30: {item:#}"
    );
    assert!(
        item["item"]["last_error"]
            .as_str()
            .unwrap()
            .contains("budget.item_tokens")
    );
    assert_eq!(item["jobs"][1]["state"], "paused");
    assert_eq!(server.request_count(), 1, "no call is made past the budget");
    let status = p.status();
    assert_eq!(status["status"]["paused"], 1);
    // Raise the cap: the next run resumes the item.
    let config = std::fs::read_to_string(p.file("ideamill.toml")).unwrap();
    std::fs::write(
        p.file("ideamill.toml"),
        config.replace("item_tokens = 30", "item_tokens = 2000"),
    )
    .unwrap();
    run(&p);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    let kinds: Vec<String> = p
        .json(&["events", "--item", &id.to_string()])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains(&"budget_reached".to_string())
            && kinds.contains(&"budget_resumed".to_string()),
        "{kinds:?}"
    );
}

#[test]
fn issue_13_concurrent_calls_never_pass_a_budget_cap() {
    // Every call reserves about 6 + 20 tokens and uses 18 (the fake's usage):
    // with the day capped at 100, however many of the 8 items run at once,
    // the calls made never use more than the cap.
    let server = FakeProvider::start(vec![Reply::Json { text: "ok".into() }]);
    let p = project(
        &server,
        "max_tokens = 20\nconcurrency = 8",
        "max_concurrency = 8\n[budget]\nday_tokens = 100\n",
    );
    without_streaming(&p);
    let ids: Vec<i64> = (0..8).map(|i| p.add(&format!("idea {i}"))).collect();
    run(&p);
    let mut used = 0;
    let mut paused = 0;
    for id in &ids {
        let item = p.show(*id);
        for a in item["attempts"].as_array().unwrap() {
            let u = &a["usage"];
            used += u["prompt_tokens"].as_u64().unwrap_or(0)
                + u["completion_tokens"].as_u64().unwrap_or(0);
        }
        if item["display_state"] == "paused" {
            paused += 1;
            assert!(
                item["item"]["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("budget.day_tokens"),
                "{item:#}"
            );
        }
    }
    let calls = server.request_count() as u64;
    assert!(calls >= 1, "calls that fit are made");
    assert_eq!(used, 18 * calls, "every call made is recorded");
    assert!(used <= 100, "{used} tokens used, past the cap of 100");
    assert_eq!(paused as u64, 8 - calls, "the calls that did not fit wait");
}

#[test]
fn issue_13_a_round_that_changes_nothing_ends_the_loop_as_no_progress() {
    // The model gives the same answer every round and the gate the same
    // report: round 2 repeats round 1, so the item fails there, not after
    // all 5 rounds.
    let answer = "```python main.py\nprint('hi')\n```\n";
    let server = FakeProvider::start(vec![Reply::Json {
        text: answer.into(),
    }]);
    let qa = "[[stages]]\nname = \"qa\"\nkind = \"command\"\n\
              command = [\"sh\", \"-c\", \"echo No tests found; exit 1\"]\n\
              sandbox = \"off\"\n\
              gate = { retry_from = \"write\", max_rounds = 5 }\n";
    let p = project(&server, &format!("files = true\n{qa}"), "");
    without_streaming(&p);
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "failed", "{item:#}");
    // The work was judged, twice alike: a quality failure, not infra.
    assert_eq!(item["item"]["failure_class"], "quality", "{item:#}");
    let reason = item["item"]["last_error"].as_str().unwrap();
    assert!(
        reason.contains(
            "no_progress: round 2 changed nothing: same files and same gate feedback as round 1"
        ),
        "{reason}"
    );
    assert_eq!(server.request_count(), 2, "no round is spent after round 2");
    assert_eq!(item["feedback"].as_array().unwrap().len(), 2, "{item:#}");
    let events = p.json(&["events", "--item", &id.to_string()]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "item_failed"
                && e["message"].as_str().unwrap().contains("no_progress")),
        "{events:#}"
    );
}

#[test]
fn issue_13_a_round_that_changes_its_files_is_not_cut_short() {
    // The answers differ each round while the report stays the same: every
    // round is progress, so the gate's rounds run out as before.
    let reply = |n: u32| Reply::Json {
        text: format!("```python main.py\nprint({n})\n```\n"),
    };
    let server = FakeProvider::start(vec![reply(1), reply(2), reply(3)]);
    let qa = "[[stages]]\nname = \"qa\"\nkind = \"command\"\n\
              command = [\"sh\", \"-c\", \"echo No tests found; exit 1\"]\n\
              sandbox = \"off\"\n\
              gate = { retry_from = \"write\", max_rounds = 3 }\n";
    let p = project(&server, &format!("files = true\n{qa}"), "");
    without_streaming(&p);
    let id = p.add("x");
    run(&p);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "failed", "{item:#}");
    let reason = item["item"]["last_error"].as_str().unwrap();
    assert!(
        reason.contains("rejected by gate `qa` in round 3 of 3"),
        "{reason}"
    );
    assert_eq!(server.request_count(), 3);
}

#[test]
fn validate_refuses_templates_with_unknown_variables() {
    let server = FakeProvider::start(vec![stream(&["x"])]);
    let p = project(&server, "", "");
    std::fs::write(p.file("prompt.md"), "{{ idae }}").unwrap();
    let out = p.cmd(&["validate"]).env("FAKE_KEY", KEY).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unknown variable `idae`"), "{text}");
    // `run` refuses to start with it, as a config error.
    let out = p
        .cmd(&["run", "--until-idle"])
        .env("FAKE_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 13: an item the provider failed (429s until its tries ran out) is
/// marked `infra`, one whose own stage failed is marked `quality`; `list`
/// and `show` say so, and `retry --failed infra` runs only the first again.
#[test]
fn issue_13_a_rate_limit_storm_is_an_infra_failure_and_retried_alone() {
    let limited = Reply::Error {
        status: 429,
        body: r#"{"error":{"message":"slow down","type":"rate_limit"}}"#.into(),
        headers: vec![],
    };
    // The only item that reaches the model meets three 429s (its three
    // tries), then, once retried, an answer.
    let server = FakeProvider::start(vec![
        limited.clone(),
        limited.clone(),
        limited,
        stream(&["done at last"]),
    ]);
    // A stage of its own before the model: the idea "bad" fails it.
    let check = py_stage(
        "check",
        "import json, sys\nidea = json.load(sys.stdin)['item']['text']\nsys.exit(3 if idea == 'bad' else 0)\n",
        "max_attempts = 1\nsandbox = \"off\"", // reads only its stdin
    );
    // (`extra` comes before the llm stage, so `check` runs first.)
    let p = project(&server, "", &check);
    let infra = p.add("good");
    let quality = p.add("bad");
    run(&p);

    let item = p.show(infra);
    assert_eq!(
        outcomes(&item)[1..],
        ["error", "error", "error"],
        "{item:#}"
    );
    assert_eq!(
        (&item["item"]["state"], &item["item"]["failure_class"]),
        (&Value::from("failed"), &Value::from("infra")),
        "{item:#}"
    );
    let item = p.show(quality);
    assert_eq!(
        (&item["item"]["state"], &item["item"]["failure_class"]),
        (&Value::from("failed"), &Value::from("quality")),
        "{item:#}"
    );
    assert_eq!(
        server.request_count(),
        3,
        "the bad idea never reached the model"
    );

    let classes = |args: &[&str]| -> Vec<(i64, Value)> {
        p.json(args)
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].as_i64().unwrap(), i["failure_class"].clone()))
            .collect()
    };
    assert_eq!(
        classes(&["list"]),
        [(quality, "quality".into()), (infra, "infra".into())]
    );
    assert_eq!(
        classes(&["list", "--failed", "infra"]),
        [(infra, "infra".into())]
    );
    let listed = p.ok(&["list"]);
    assert!(listed.contains("failed (infra)"), "{listed}");
    assert!(listed.contains("failed (quality)"), "{listed}");
    let shown = p.ok(&["show", &infra.to_string()]);
    assert!(
        shown.contains(&format!("Item {infra}: failed (infra)")),
        "{shown}"
    );
    assert!(shown.contains("failure:  infra:"), "{shown}");
    let exported = p.ok(&["export", "--format", "jsonl"]);
    let exported: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        exported
            .iter()
            .map(|e| (e["id"].as_i64().unwrap(), e["failure_class"].clone()))
            .collect::<Vec<_>>(),
        [(quality, "quality".into()), (infra, "infra".into())]
    );

    // The bad idea is not the infrastructure's to retry.
    let refused = p.run(&["retry", &quality.to_string(), "--failed", "infra"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("did not fail for infra"),
        "{refused:?}"
    );
    let retried = p.json(&["retry", "--failed", "infra"]);
    assert_eq!(
        retried,
        serde_json::json!({"retried": [{"id": infra, "stage": "write", "round": 1}]})
    );
    assert_eq!(p.show(quality)["item"]["state"], "failed");
    assert_eq!(p.show(infra)["item"]["failure_class"], Value::Null);
    assert_eq!(
        p.ok(&["retry", "--failed", "infra"]).trim(),
        "No item failed for infra."
    );

    run(&p);
    let item = p.show(infra);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(p.show(quality)["item"]["failure_class"], "quality");
}
