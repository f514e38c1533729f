//! `ideamill eval` end to end: the real binary, a two-idea suite, and a
//! model on loopback that answers by the idea it is asked about, so that
//! every figure is known in advance.

use std::time::Duration;

use crate::llm::fake_provider::FakeProvider;
use crate::util::*;
use serde_json::{Value, json};

/// `main.py` and the model's own `test_main.py`, as a fenced answer.
fn answer(main: &str, own_test: &str) -> String {
    format!(
        "Here it is.\n\n```python main.py\n{main}\n```\n\n```python test_main.py\nimport unittest\n\
         from main import *\n\nclass T(unittest.TestCase):\n    def test_it(self):\n        \
         {own_test}\n```\n"
    )
}

/// The model: `alpha` (add) is wrong until the gate's report comes back,
/// then right; `beta` (mul) is always wrong, with a test of its own too
/// weak to notice (2 + 2 == 2 * 2), so the gate is fooled; `gamma` (sub) is
/// always right, with a wrong test of its own, so the gate rejects it every
/// round while the hidden tests pass.
fn reply(prompt: &str) -> String {
    if prompt.contains("alpha") && prompt.contains("FEEDBACK") {
        answer(
            // Not the wrong one's size: Python takes a bytecode cache as new
            // as its source, and of the same size, for it.
            "def add(a, b):\n    return a + b + 0",
            "self.assertEqual(add(2, 2), 4)",
        )
    } else if prompt.contains("alpha") {
        answer(
            "def add(a, b):\n    return a - b",
            "self.assertEqual(add(2, 2), 4)",
        )
    } else if prompt.contains("gamma") {
        answer(
            "def sub(a, b):\n    return a - b",
            "self.assertEqual(sub(2, 2), 1)",
        )
    } else {
        answer(
            "def mul(a, b):\n    return a + b",
            "self.assertEqual(mul(2, 2), 4)",
        )
    }
}

fn suite_line(id: &str, idea: &str, tests: &str) -> String {
    json!({"id": id, "idea": idea, "tests": tests}).to_string() + "\n"
}

const HIDDEN_ADD: &str = "import unittest\nfrom main import add\n\nclass H(unittest.TestCase):\n    \
                          def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n";
const HIDDEN_SUB: &str = "import unittest\nfrom main import sub\n\nclass H(unittest.TestCase):\n    \
                          def test_sub(self):\n        self.assertEqual(sub(5, 3), 2)\n";
const HIDDEN_MUL: &str = "import unittest\nfrom main import mul\n\nclass H(unittest.TestCase):\n    \
                          def test_mul(self):\n        self.assertEqual(mul(3, 4), 12)\n";

#[test]
fn eval_measures_pass_rates_per_round_against_the_single_shot_baseline() {
    let provider = FakeProvider::answering(reply);
    let url = provider.url.clone();
    let config = format!(
        "{ENGINE}\n[providers.fake]\nkind = \"openai\"\nbase_url = \"{url}\"\nmodel = \"fake\"\n\
         stream = false\nidle_timeout = \"5s\"\n\n\
         [[stages]]\nname = \"implement\"\nkind = \"llm\"\nprovider = \"fake\"\n\
         prompt = \"prompts/implement.md\"\nfiles = true\ntimeout = \"20s\"\n\n\
         [[stages]]\nname = \"qa\"\nkind = \"command\"\n\
         command = [\"python3\", \"-m\", \"unittest\", \"-q\", \"test_main\"]\ntimeout = \"30s\"\n\
         gate = {{ retry_from = \"implement\", max_rounds = 2 }}\n"
    );
    let p = Project::new(&config);
    std::fs::create_dir(p.file("prompts")).unwrap();
    std::fs::write(
        p.file("prompts/implement.md"),
        "IDEA: {{ idea }}{% if feedback %}\nFEEDBACK: {{ feedback }}{% endif %}\n",
    )
    .unwrap();
    let suite = suite_line("alpha", "alpha: add(a, b) in main.py", HIDDEN_ADD)
        + &suite_line("beta", "beta: mul(a, b) in main.py", HIDDEN_MUL)
        + &suite_line("gamma", "gamma: sub(a, b) in main.py", HIDDEN_SUB);
    std::fs::write(p.file("suite.jsonl"), suite).unwrap();
    let args = [
        "eval",
        "--suite",
        "suite.jsonl",
        "--dir",
        "scratch",
        "--compare",
        "gate.max_rounds=1",
    ];
    let report = p.json(&args);
    let text = p.ok(&[
        &args[..3],
        &["--dir", "scratch-text", "--compare", "gate.max_rounds=1"],
    ]
    .concat());
    eprintln!("{text}");

    let v = &report["variants"];
    let rate = |passed: u32, total: u32| json!({"passed": passed, "total": total, "rate": f64::from(passed) / f64::from(total)});
    let figures = |v: &Value| {
        json!({
            "name": v["name"], "ideas": v["ideas"], "rounds": v["rounds"], "final": v["final"],
            "gate_done": v["gate_done"], "gate_fooled": v["gate_fooled"],
            "gate_rejected_passing": v["gate_rejected_passing"], "tokens": v["tokens"],
            "tokens_per_pass": v["tokens_per_pass"], "failures": v["failures"], "lift": v["lift"],
        })
    };
    assert_eq!(
        figures(&v[0]),
        json!({
            "name": "loop", "ideas": 3, "rounds": [rate(1, 3), rate(2, 3)], "final": rate(2, 3),
            "gate_done": 2, "gate_fooled": 1, "gate_rejected_passing": 1,
            "tokens": 90, "tokens_per_pass": 45.0,
            "failures": {"done but hidden tests fail (hidden: assertion failures)": 1},
            "lift": null,
        }),
        "{report:#}"
    );
    assert_eq!(
        figures(&v[1]),
        json!({
            "name": "gate.max_rounds=1", "ideas": 3, "rounds": [rate(1, 3)], "final": rate(1, 3),
            "gate_done": 1, "gate_fooled": 1, "gate_rejected_passing": 1,
            "tokens": 54, "tokens_per_pass": 54.0,
            "failures": {
                "done but hidden tests fail (hidden: assertion failures)": 1,
                "failed: own tests failing": 1,
            },
            "lift": 2.0,
        }),
        "{report:#}"
    );
    let items = |v: &Value| -> Vec<Value> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| json!([i["id"], i["state"], i["rounds"], i["passed"]]))
            .collect()
    };
    assert_eq!(
        items(&v[0]),
        [
            json!(["alpha", "done", [false, true], true]),
            json!(["beta", "done", [false, false], false]),
            json!(["gamma", "failed", [true, true], true])
        ]
    );
    assert_eq!(
        items(&v[1]),
        [
            json!(["alpha", "failed", [false], false]),
            json!(["beta", "done", [false], false]),
            json!(["gamma", "failed", [true], true])
        ]
    );
    // Each round's files are kept where people can look at them.
    let judged = p.file("scratch/loop/judge/alpha");
    let main = |round: &str| std::fs::read_to_string(judged.join(round).join("main.py")).unwrap();
    assert!(main("round-1").contains("a - b"));
    assert!(main("round-2").contains("a + b + 0"));
    assert!(main("final").contains("a + b"));
    // The baseline's config has every gate at one round; the loop's is as given.
    let baseline =
        std::fs::read_to_string(p.file("scratch/gate.max_rounds-1/ideamill.toml")).unwrap();
    assert!(baseline.contains("max_rounds = 1 }"), "{baseline}");
    assert!(text.contains("hidden pass, round 2    2/3 66.7%"), "{text}");
    assert!(text.contains("gate rejected, passing"), "{text}");
    assert!(text.contains("loop / gate.max_rounds=1): 2.00x"), "{text}");
    assert!(text.contains("gate fooled"), "{text}");
}

#[test]
fn a_bad_suite_line_is_an_error_naming_the_file_and_line() {
    let p = Project::new("[[stages]]\nname = \"a\"\nkind = \"command\"\ncommand = [\"true\"]\n");
    let good = suite_line("alpha", "x", HIDDEN_ADD);
    std::fs::write(p.file("suite.jsonl"), format!("{good}{good}")).unwrap();
    let out = p.run(&["eval", "--suite", "suite.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: suite.jsonl:2: the id `alpha` is already used on line 1"
    );
    std::fs::write(p.file("suite.jsonl"), good).unwrap();
    let out = p.run(&[
        "eval",
        "--suite",
        "suite.jsonl",
        "--compare",
        "gate.max_rounds=1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: --compare gate.max_rounds=1: no stage has a gate"
    );
}

/// The processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_killed_eval_leaves_no_mill_running() {
    // A model that accepts and never answers: the mill waits on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    let config = format!(
        "{ENGINE}\n[providers.fake]\nkind = \"openai\"\nbase_url = \"{url}\"\nmodel = \"fake\"\n\
         stream = false\nidle_timeout = \"5m\"\n\n\
         [[stages]]\nname = \"implement\"\nkind = \"llm\"\nprovider = \"fake\"\n\
         prompt = \"prompts/implement.md\"\nfiles = true\ntimeout = \"10m\"\n"
    );
    let p = Project::new(&config);
    std::fs::create_dir(p.file("prompts")).unwrap();
    std::fs::write(p.file("prompts/implement.md"), "IDEA: {{ idea }}\n").unwrap();
    std::fs::write(
        p.file("suite.jsonl"),
        suite_line("alpha", "alpha: add(a, b) in main.py", HIDDEN_ADD),
    )
    .unwrap();
    let scratch = p.file("scratch");
    let scratch = scratch.to_str().unwrap();
    let mut eval = p
        .cmd(&["eval", "--suite", "suite.jsonl", "--dir", scratch])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its mill (a supervisor and an engine, both named by the scratch
    // project's config, as eval itself is) starts...
    assert!(
        wait_until(Duration::from_secs(30), || processes_naming(scratch).len()
            >= 3),
        "the eval's mill did not start"
    );
    // ...and stops when eval is killed outright.
    eval.kill().unwrap();
    eval.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || processes_naming(scratch)
            .is_empty()),
        "still running after eval was killed: {:?}",
        processes_naming(scratch)
    );
}
