//! OpenTelemetry traces and JSON logs end to end: the real binary sends
//! its spans to a loopback OTLP/HTTP receiver that decodes them with the
//! official protobuf definitions (`support/otlp/receiver.py`, the PyPI
//! package `opentelemetry-proto`, installed by the first test that needs it
//! into a venv with pinned hashes); a collector that is down costs the items
//! nothing and its drops are counted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::llm::fake_provider::{FakeProvider, Reply};
use crate::util::*;
use serde_json::Value;

const SUPPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/otlp");

/// The venv's python with `opentelemetry-proto`, made once by
/// `support/otlp/setup.sh` (pip with --require-hashes, wheels only), which
/// `.ci/run` runs before the tests.
fn otlp_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("bash")
            .arg(format!("{SUPPORT}/setup.sh"))
            .output()
            .expect("run support/otlp/setup.sh");
        assert!(
            out.status.success(),
            "cannot set up opentelemetry-proto: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// The receiver, running; its spans are read from `spans`.
struct Receiver {
    _child: Reaped,
    url: String,
    spans: PathBuf,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let spans = dir.join("spans.jsonl");
        let mut child = Command::new(otlp_python())
            .arg(format!("{SUPPORT}/receiver.py"))
            .arg(&spans)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("receiver.log")).unwrap())
            .spawn()
            .expect("start the receiver");
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .expect("the receiver's port");
        Receiver {
            _child: Reaped(child),
            url: format!("http://127.0.0.1:{}", port.trim()),
            spans,
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a span line"))
            .collect()
    }
}

/// An address nothing listens on: a collector that is down.
fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// `write` (llm, fake provider, streamed) then `qa`, a command gate that
/// prints its TRACEPARENT and rejects round 1, passes round 2.
fn project(server: &FakeProvider, telemetry: &str) -> Project {
    let qa = py_stage(
        "qa",
        "import os\nprint('TRACEPARENT=' + os.environ.get('TRACEPARENT', ''))\n\
         raise SystemExit(0 if os.environ['IDEAMILL_ROUND'] == '2' else 1)\n",
        "gate = { retry_from = \"write\", max_rounds = 3 }\n",
    );
    let config = format!(
        "{ENGINE}[health]\nlisten = \"127.0.0.1:0\"\n\
         [providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"fake-model\"\n\n\
         [telemetry]\n{telemetry}\n\
         [[stages]]\nname = \"write\"\nkind = \"llm\"\nprovider = \"fake\"\nprompt = \"prompt.md\"\n\
         max_attempts = 2\nbackoff = \"100ms\"\n\n{qa}",
        server.url
    );
    let p = Project::new(&config);
    std::fs::write(p.file("prompt.md"), "Write code for: {{ idea }}\n").unwrap();
    p
}

fn stream(chunks: &[&str]) -> Reply {
    Reply::Stream {
        chunks: chunks.iter().map(|c| c.to_string()).collect(),
        gap: Duration::from_millis(20),
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

#[test]
fn an_item_is_one_trace_with_its_attempts_model_calls_and_gate_rejection() {
    let server = FakeProvider::start(vec![stream(&["print(1)"]), stream(&["print(2)"])]);
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let p = project(
        &server,
        &format!(
            "otlp_endpoint = \"{}\"\nservice_name = \"mill-under-test\"\n\
             resource_attributes = {{ \"deployment.environment\" = \"test\" }}\n\
             headers = {{ \"x-scope-orgid\" = \"tenant-secret\" }}\n\
             trace_url = \"https://tempo.example/trace/{{trace_id}}\"\n",
            receiver.url
        ),
    );
    let id = p.add("trace me");
    p.run_until_idle(Duration::from_secs(60));

    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
    let trace = item["item"]["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    assert_eq!(trace.len(), 32, "{trace}");
    assert_eq!(
        item["trace_url"],
        format!("https://tempo.example/trace/{trace}").as_str()
    );
    let shown = p.ok(&["show", &id.to_string()]);
    assert!(
        shown.contains(&format!(
            "trace:    {trace} (https://tempo.example/trace/{trace})"
        )),
        "{shown}"
    );

    // Root, 2 x (write + its chat), 2 x qa, the end: 8 spans, all sent
    // before `run --until-idle` exits.
    let spans = receiver.spans();
    assert_eq!(spans.len(), 8, "{spans:#?}\n{}", p.logs());
    for s in &spans {
        assert_eq!(s["trace_id"], trace.as_str(), "one trace: {s:#}");
        assert_eq!(s["content_type"], "application/x-protobuf");
        assert_eq!(s["resource"]["service.name"], "mill-under-test");
        assert_eq!(s["resource"]["deployment.environment"], "test");
        assert_eq!(s["scope"], "ideamill");
        assert_eq!(s["flags"], 1, "sampled");
        assert!(s["end"].as_u64() >= s["start"].as_u64(), "{s:#}");
    }
    let named =
        |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let root = named("ideamill.item");
    assert_eq!(root.len(), 1, "{spans:#?}");
    let root = root[0];
    assert_eq!(root["parent_span_id"], "", "the root has no parent");
    assert_eq!(attr(root, "ideamill.item.id"), id);
    let root_id = root["span_id"].as_str().unwrap();

    let writes = named("attempt write");
    let gates = named("attempt qa");
    assert_eq!((writes.len(), gates.len()), (2, 2), "{spans:#?}");
    for a in writes.iter().chain(&gates) {
        assert_eq!(a["parent_span_id"], root_id, "{a:#}");
        assert_eq!(attr(a, "ideamill.item.id"), id);
        assert_eq!(attr(a, "ideamill.attempt"), 1);
        assert!(attr(a, "ideamill.job.id").is_i64(), "{a:#}");
    }
    let round = |a: &&Value| attr(a, "ideamill.round").as_i64().unwrap();
    let mut gates = gates.clone();
    gates.sort_by_key(round);
    assert_eq!(attr(gates[0], "ideamill.outcome"), "rejected");
    let rejected = &gates[0]["events"][0];
    assert_eq!(rejected["name"], "ideamill.gate.rejected", "{:#}", gates[0]);
    assert_eq!(rejected["attributes"]["ideamill.send_back.stage"], "write");
    assert_eq!(rejected["attributes"]["ideamill.send_back.round"], 2);
    assert_eq!(attr(gates[1], "ideamill.outcome"), "succeeded");
    assert_eq!(attr(gates[1], "ideamill.item.state"), "done");

    // A model call under each write attempt, in GenAI terms, no prompt.
    let calls = named("chat fake-model");
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let write_ids: Vec<&str> = writes
        .iter()
        .map(|w| w["span_id"].as_str().unwrap())
        .collect();
    for c in &calls {
        assert!(
            write_ids.contains(&c["parent_span_id"].as_str().unwrap()),
            "{c:#}"
        );
        assert_eq!(c["kind"], 3, "client");
        assert_eq!(attr(c, "gen_ai.system"), "openai");
        assert_eq!(attr(c, "gen_ai.request.model"), "fake-model");
        assert!(
            attr(c, "gen_ai.usage.input_tokens").as_i64().unwrap() > 0,
            "{c:#}"
        );
        assert!(
            attr(c, "gen_ai.usage.output_tokens").as_i64().unwrap() > 0,
            "{c:#}"
        );
        assert!(
            attr(c, "gen_ai.server.time_to_first_token").is_f64(),
            "{c:#}"
        );
        assert!(
            attr(c, "gen_ai.prompt").is_null() && c["events"].as_array().unwrap().is_empty(),
            "no content: {c:#}"
        );
    }

    let end = named("ideamill.item.end");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["parent_span_id"], root_id);
    assert_eq!(attr(end[0], "ideamill.item.state"), "done");

    // The gate's program ran with the W3C context of its own attempt span.
    let outputs: Vec<&str> = item["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["stage"] == "qa")
        .map(|o| o["output"].as_str().unwrap())
        .collect();
    assert_eq!(
        outputs,
        [format!(
            "TRACEPARENT=00-{trace}-{}-01\n",
            gates[1]["span_id"].as_str().unwrap()
        )],
        "{item:#}"
    );
    let feedback = item["feedback"][0]["feedback"].as_str().unwrap();
    assert!(
        feedback.contains(&format!(
            "TRACEPARENT=00-{trace}-{}-01",
            gates[0]["span_id"].as_str().unwrap()
        )),
        "{feedback}"
    );

    // Printed and logged configs hide the header's value.
    assert!(!p.logs().contains("tenant-secret"), "{}", p.logs());

    print_tree(&spans);
}

/// An agent stage's run is one `invoke_agent` span under its attempt, with
/// the model and tokens its CLI reported (the fake `claude`: 150 in, 40 out).
#[test]
fn an_agent_stage_is_one_invoke_agent_span_with_what_its_cli_reported() {
    use crate::agent::{FakeBin, agent_stage, project, run_until_idle};
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path());
    let bin = FakeBin::new(&["claude"]);
    let p = project(
        &agent_stage("implement", "claude", "model = \"fake-sonnet\""),
        &format!(
            "[telemetry]\notlp_endpoint = \"{}\"\ncapture_content = true\n",
            receiver.url
        ),
    );
    let id = p.add("trace the agent");
    run_until_idle(&p, &bin);
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");

    let spans = receiver.spans();
    let attempt = spans
        .iter()
        .find(|s| s["name"] == "attempt implement")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    let calls: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "invoke_agent claude")
        .collect();
    assert_eq!(calls.len(), 1, "{spans:#?}");
    let call = calls[0];
    assert_eq!(call["parent_span_id"], attempt["span_id"], "{call:#}");
    assert_eq!(call["kind"], 3, "a client span: {call:#}");
    assert_eq!(attr(call, "gen_ai.operation.name"), "invoke_agent");
    assert_eq!(attr(call, "gen_ai.agent.name"), "claude");
    assert_eq!(attr(call, "gen_ai.system"), "anthropic");
    assert_eq!(attr(call, "gen_ai.request.model"), "fake-sonnet");
    assert_eq!(attr(call, "gen_ai.usage.input_tokens"), 150);
    assert_eq!(attr(call, "gen_ai.usage.output_tokens"), 40);
    assert!(
        call["end"].as_u64() >= call["start"].as_u64()
            && call["start"].as_u64() >= attempt["start"].as_u64(),
        "{call:#}"
    );
    // With capture_content: the rendered prompt and the final message.
    let events: Vec<&str> = call["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["gen_ai.content.prompt", "gen_ai.content.completion"],
        "{call:#}"
    );
    assert!(
        call["events"][0]["attributes"]["gen_ai.prompt"]
            .as_str()
            .unwrap()
            .starts_with("Build: trace the agent"),
        "{call:#}"
    );
    assert_eq!(
        call["events"][1]["attributes"]["gen_ai.completion"],
        "claude finished: wrote main.py"
    );
}

/// The span tree as the receiver decoded it, for the record.
fn print_tree(spans: &[Value]) {
    let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
    for s in spans {
        children
            .entry(s["parent_span_id"].as_str().unwrap())
            .or_default()
            .push(s);
    }
    fn show(s: &Value, depth: usize, children: &HashMap<&str, Vec<&Value>>) {
        let a = &s["attributes"];
        let mut keys: Vec<String> = a
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "ideamill.process" | "ideamill.item.id"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        keys.sort();
        let events: Vec<&str> = s["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        println!(
            "{}{} [{}] {} {}{}",
            "  ".repeat(depth),
            s["name"].as_str().unwrap(),
            s["span_id"].as_str().unwrap(),
            keys.join(" "),
            if events.is_empty() {
                String::new()
            } else {
                format!("events={events:?}")
            },
            if s["status"]["code"] == 2 {
                " status=ERROR"
            } else {
                ""
            },
        );
        let mut kids = children
            .get(s["span_id"].as_str().unwrap())
            .cloned()
            .unwrap_or_default();
        kids.sort_by_key(|k| k["start"].as_u64());
        for k in kids {
            show(k, depth + 1, children);
        }
    }
    println!("trace {}", spans[0]["trace_id"].as_str().unwrap());
    for root in children.get("").cloned().unwrap_or_default() {
        show(root, 1, &children);
    }
}

#[test]
fn a_collector_that_is_down_stops_no_item_and_its_drops_are_counted() {
    let server = FakeProvider::start(vec![stream(&["print(1)"]), stream(&["print(2)"])]);
    let p = project(
        &server,
        &format!("otlp_endpoint = \"{}\"\n", dead_endpoint()),
    );
    let ids: Vec<i64> = (0..3).map(|i| p.add(&format!("idea {i}"))).collect();
    let _run = p.spawn_run(&["--no-supervisor", "--log-format", "json"]);
    assert!(
        wait_until(Duration::from_secs(60), || ids
            .iter()
            .all(|id| p.show(*id)["item"]["state"] == "done")),
        "items did not finish\n{}",
        p.logs()
    );
    // 3 items x 8 spans, each lost to a failed request and counted.
    let status = || -> Option<Value> {
        let dir = p.file(".ideamill/status");
        let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
        serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()
    };
    assert!(
        wait_until(Duration::from_secs(30), || status()
            .is_some_and(|s| s["telemetry"]["dropped"].as_u64() == Some(24))),
        "{:#?}\n{}",
        status(),
        p.logs()
    );
    let addr = status().unwrap()["listen"].as_str().unwrap().to_string();
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("\nideamill_telemetry_dropped_total 24\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nideamill_telemetry_export_failures_total "),
        "{metrics}"
    );

    let out = p.run(&["doctor", "--json", "--no-providers"]);
    let doctor: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let check = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "telemetry")
        .unwrap_or_else(|| panic!("no telemetry check: {doctor:#}"))
        .clone();
    assert_eq!(check["ok"], false, "{check:#}");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains("the collector is unreachable"), "{detail}");
    assert!(detail.contains("24 dropped"), "{detail}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_jobs_ids() {
    let server = FakeProvider::start(vec![stream(&["print(1)"]), stream(&["print(2)"])]);
    let p = project(
        &server,
        &format!("otlp_endpoint = \"{}\"\n", dead_endpoint()),
    );
    let id = p.add("log me");
    let log = std::fs::File::create(p.file("run-json.log")).unwrap();
    let mut child = p
        .cmd(&["run", "--until-idle", "-v"])
        .env("IDEAMILL_LOG_FORMAT", "json")
        .env_remove("IDEAMILL_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("run finishes");
    assert!(status.success(), "{}", p.logs());
    let trace = p.show(id)["item"]["trace_id"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(p.file("run-json.log")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{text}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
        assert!(l["message"].is_string() && l["target"].is_string(), "{l}");
    }
    // A job's lines carry its item, job, trace and span ids.
    let in_job: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "job")
        .collect();
    assert!(!in_job.is_empty(), "no line from inside a job:\n{text}");
    for l in in_job {
        assert_eq!(l["span"]["item"], id, "{l}");
        assert!(l["span"]["job"].is_i64(), "{l}");
        assert_eq!(l["span"]["trace_id"], trace.as_str(), "{l}");
        assert_eq!(l["span"]["span_id"].as_str().map(str::len), Some(16), "{l}");
    }
}
