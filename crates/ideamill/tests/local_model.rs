//! The whole pipeline against a real model: SmolLM2-135M served on loopback
//! by `scripts/llm-server.sh` (set up by `.ci/run`). Asserts the flow and
//! the shapes (non-empty outputs, token counts, rounds), never the model's
//! exact text.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::*;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/llm-server.sh")
}

/// A local model server of this test's own, on a free loopback port,
/// stopped when dropped.
struct LocalModel {
    port: u16,
    url: String,
}

impl LocalModel {
    fn start() -> LocalModel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new("bash")
            .arg(script())
            .args(["start", "--port", &port.to_string()])
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "the local model server did not start (run `bash scripts/llm-server.sh setup`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        LocalModel { port, url }
    }
}

impl Drop for LocalModel {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", "--port", &self.port.to_string()])
            .output();
    }
}

/// `ideamill init proj` in `dir` against the local model at `url`, with
/// `edits` (text replacements) made to its config; the project's folder.
fn scaffold(dir: &Path, url: &str, edits: &[(&str, &str)]) -> PathBuf {
    init_in(dir, &["proj", "--provider", url, "--model", "smollm2"]);
    let root = dir.join("proj");
    let mut config = std::fs::read_to_string(root.join("ideamill.toml")).unwrap();
    for (from, to) in edits {
        config = config.replace(from, to);
    }
    std::fs::write(root.join("ideamill.toml"), config).unwrap();
    root
}

#[test]
fn ideas_go_through_outline_implement_and_qa_with_a_real_model() {
    let model = LocalModel::start();
    let dir = tempfile::tempdir().unwrap();
    // Shorter answers keep the test quick; the pipeline is the scaffold's.
    let root = scaffold(
        dir.path(),
        &model.url,
        &[
            ("max_tokens = 400", "max_tokens = 120"),
            ("max_tokens = 800", "max_tokens = 200"),
            ("max_tokens = 1500", "max_tokens = 300"),
        ],
    );
    let p = Project::at(root);
    p.ok(&["validate"]);
    let id = p.add("a function that reverses a string");
    p.run_until_idle(Duration::from_secs(600));

    let item = p.show(id);
    let state = item["item"]["state"].as_str().unwrap();
    assert!(state == "done" || state == "failed", "{item:#}");
    let outputs = item["outputs"].as_array().unwrap();
    let outline = outputs
        .iter()
        .find(|o| o["stage"] == "outline")
        .expect("an outline");
    assert!(
        !outline["output"].as_str().unwrap().trim().is_empty(),
        "the model said something"
    );
    for a in item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["stage"] != "qa")
    {
        let usage = &a["usage"];
        assert_eq!(usage["provider"], "main", "{a:#}");
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{a:#}");
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{a:#}");
    }
    let round = item["item"]["round"].as_u64().unwrap();
    let rejections = item["feedback"].as_array().unwrap().len() as u64;
    let implements = outputs.iter().filter(|o| o["stage"] == "implement").count() as u64;
    assert!((1..=3).contains(&round), "{item:#}");
    assert_eq!(implements, round, "one implement per round");
    if state == "done" {
        assert_eq!(
            rejections,
            round - 1,
            "every round but the last was rejected"
        );
    } else {
        assert_eq!(
            rejections, 3,
            "failed after max_rounds rejections, each with its report: {item:#}"
        );
        assert!(
            item["item"]["last_error"]
                .as_str()
                .unwrap()
                .contains("rejected by gate `qa` in round 3 of 3")
        );
    }
}

/// The shipped smoke suite (`eval/smoke.jsonl`): three easy ideas of the
/// real suite with their hidden tests, for the eval harness end to end.
const SUITE: &str = include_str!("../../../eval/smoke.jsonl");

#[test]
fn eval_with_the_local_model() {
    let model = LocalModel::start();
    let dir = tempfile::tempdir().unwrap();
    let root = scaffold(
        dir.path(),
        &model.url,
        &[
            ("max_tokens = 400", "max_tokens = 80"),
            ("max_tokens = 1500", "max_tokens = 200"),
        ],
    );
    std::fs::write(root.join("suite.jsonl"), SUITE).unwrap();
    let p = Project::at(root);
    // The harness end to end; no quality threshold: a 135M model may pass none.
    let report = p.json(&[
        "eval",
        "--suite",
        "suite.jsonl",
        "--dir",
        "scratch",
        "--compare",
        "gate.max_rounds=1",
    ]);
    let variants = report["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["loop", "gate.max_rounds=1"], "{report:#}");
    for (v, rounds) in variants.iter().zip([3, 1]) {
        assert_eq!(v["ideas"], 3, "{v:#}");
        assert_eq!(v["final"]["total"], 3, "{v:#}");
        assert_eq!(v["rounds"].as_array().unwrap().len(), rounds, "{v:#}");
        assert!(
            v["tokens"].as_u64().unwrap() > 0,
            "the model was asked: {v:#}"
        );
        let classified = v["failures"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(
            classified + v["final"]["passed"].as_u64().unwrap(),
            3,
            "every idea passes or has a failure class: {v:#}"
        );
    }
}
