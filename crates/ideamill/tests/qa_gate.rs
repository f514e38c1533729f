//! The scaffolded model pipeline's gate (`stages/qa.py`) end to end: the
//! real binary, the project `init` writes, and a model on loopback that
//! answers each stage's prompt with known code, so that which acceptance
//! tests the gate sets aside is known in advance.

use std::time::Duration;

use crate::llm::fake_provider::FakeProvider;
use crate::util::*;
use serde_json::Value;

/// Acceptance tests with one wrong expected value (-10 °C is 14 °F) and one
/// right, for `c2f`; one right test for `half`.
const TESTS_C2F: &str = "```python test_acceptance.py\nimport unittest\nfrom main import c2f\n\n\
    class TestAcceptance(unittest.TestCase):\n    def test_minus_ten(self):\n        \
    self.assertEqual(c2f(-10), -14)\n\n    def test_boiling(self):\n        \
    self.assertEqual(c2f(100), 212)\n```\n";
const TESTS_HALF: &str = "```python test_acceptance.py\nimport unittest\nfrom main import half\n\n\
    class TestAcceptance(unittest.TestCase):\n    def test_four(self):\n        \
    self.assertEqual(half(4), 2)\n```\n";

fn main_py(code: &str) -> String {
    format!("```python main.py\n{code}\n```\n")
}

fn implementation(code: &str, own_test: &str) -> String {
    format!(
        "{}\n```python test_main.py\nimport unittest\nfrom main import *\n\n\
         class T(unittest.TestCase):\n    def test_own(self):\n        {own_test}\n```\n",
        main_py(code)
    )
}

/// The model, by stage (each scaffold prompt has its own wording) and idea.
/// `c2f`: both implementations are right, so the wrong acceptance test and
/// the implementation's own wrong test fail the same way on both and are
/// set aside. `half`: the reference is right
/// and the first implementation wrong, so its failure is the item's own and
/// rejects the round, as does its own test's error; with the report, the
/// implementation is right.
fn reply(prompt: &str) -> String {
    if prompt.contains("triples") {
        return reply_triple(prompt);
    }
    // Acceptance tests that do not parse could never pass: dropped.
    if prompt.contains("quad(n)") && prompt.contains("writing the acceptance tests") {
        return "```python\nimport unittest\nfrom main import quad\n\nclass T(unittest.TestCase):\n    \
                def test_two(self):\n        self.assertEqual(quad(2), {8)\n```\n"
            .to_owned();
    }
    // Acceptance tests of a module other than main.py judge nothing: dropped.
    if prompt.contains("penta(n)") && prompt.contains("writing the acceptance tests") {
        return "```python\nimport unittest\nfrom helpers import penta\n\nclass T(unittest.TestCase):\n    \
                def test_two(self):\n        self.assertEqual(penta(2), 10)\n```\n"
            .to_owned();
    }
    if prompt.contains("penta(n)") && prompt.contains("acceptance tests will be run") {
        return implementation(
            "def penta(n):\n    return 5 * n",
            "self.assertEqual(penta(2), 10)",
        );
    }
    // Its own test uses `sept` without importing it: the gate adds the
    // import (else every round would end in the same NameError).
    if prompt.contains("sept(n)") && prompt.contains("acceptance tests will be run") {
        return format!(
            "{}\n```python test_main.py\nimport unittest\n\n\
             class T(unittest.TestCase):\n    def test_own(self):\n        \
             self.assertEqual(sept(2), 14)\n```\n",
            main_py("def sept(n):\n    return 7 * n")
        );
    }
    // Its first own test fills memory: a MemoryError sent back as feedback,
    // not the sandbox's limit ending the gate as an error on every retry.
    if prompt.contains("octo(n)") && prompt.contains("acceptance tests will be run") {
        let own_test = if prompt.contains("failed its tests") {
            "self.assertEqual(octo(2), 16)"
        } else {
            "x = [bytearray(1 << 20) for _ in iter(int, 1)]"
        };
        return implementation("def octo(n):\n    return 8 * n", own_test);
    }
    // Its first own test nests deeper than Python's parser can go: the
    // gate's repair must not crash on it, the test run reports it.
    if prompt.contains("nona(n)") && prompt.contains("acceptance tests will be run") {
        let own_test = if prompt.contains("failed its tests") {
            "self.assertEqual(nona(2), 18)".to_owned()
        } else {
            format!("x = {}1", "-".repeat(200_000))
        };
        return implementation("def nona(n):\n    return 9 * n", &own_test);
    }
    if prompt.contains("quad(n)") && prompt.contains("acceptance tests will be run") {
        return implementation(
            "def quad(n):\n    return 4 * n",
            "self.assertEqual(quad(2), 8)",
        );
    }
    let c2f = prompt.contains("c2f");
    if prompt.contains("writing the acceptance tests") {
        (if c2f { TESTS_C2F } else { TESTS_HALF }).to_owned()
    } else if prompt.contains("Use exactly the names the idea gives") {
        main_py(if c2f {
            "def c2f(c):\n    return c * 9 / 5 + 32"
        } else {
            "def half(n):\n    return n / 2"
        })
    } else if prompt.contains("acceptance tests will be run") {
        if c2f {
            // Its own test is wrong too (0 °C is 32 °F).
            implementation(
                "def c2f(celsius):\n    return celsius * 1.8 + 32",
                "self.assertEqual(c2f(0), 0)",
            )
        } else if prompt.contains("failed its tests") {
            implementation(
                "def half(n):\n    return n / 2.0",
                "self.assertEqual(half(2), 1)",
            )
        } else {
            // Its own test calls a name that nothing defines: an error that
            // repeats on the reference, but the implementation's to fix.
            implementation(
                "def half(n):\n    return n * 2",
                "self.assertEqual(halve(4), 2)",
            )
        }
    } else {
        "1. Write the function.\n2. Test it.".to_owned()
    }
}

/// An idea that names no function: the plan names `triple`, and the
/// acceptance tests may use the plan's name; the reference (which never
/// sees the plan) calls it `times_three` and still witnesses.
fn reply_triple(prompt: &str) -> String {
    if prompt.contains("writing the acceptance tests") {
        "```python test_acceptance.py\nimport unittest\nfrom main import triple\n\n\
         class TestAcceptance(unittest.TestCase):\n    def test_three(self):\n        \
         self.assertEqual(triple(3), 9)\n\n    def test_two(self):\n        \
         self.assertEqual(triple(2), 5)\n```\n"
            .to_owned()
    } else if prompt.contains("Use exactly the names the idea gives") {
        // It names its function differently: the gate binds the tests' name.
        main_py("def times_three(n):\n    return 3 * n")
    } else if prompt.contains("acceptance tests will be run") {
        implementation(
            "def triple(n):\n    return n * 3",
            "self.assertEqual(triple(1), 3)",
        )
    } else {
        "1. Define `triple(n)` in main.py.\n2. Test it.".to_owned()
    }
}

fn qa_outputs(item: &Value) -> Vec<String> {
    item["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["stage"] == "qa")
        .map(|o| o["output"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_gate_sets_aside_only_tests_that_the_independent_reference_fails_the_same_way() {
    let provider = FakeProvider::answering(reply);
    let url = provider.url.clone();
    let dir = tempfile::tempdir().unwrap();
    init_in(dir.path(), &["proj", "--provider", &url, "--model", "fake"]);
    let p = Project::at(dir.path().join("proj"));
    // The fake model answers whole, not as a stream.
    let config = std::fs::read_to_string(p.file("ideamill.toml")).unwrap();
    let config = config.replacen(
        "model = \"fake\"\n",
        "model = \"fake\"\nstream = false\n",
        1,
    );
    std::fs::write(p.file("ideamill.toml"), config).unwrap();

    let c2f = p.add("a function c2f(c) that converts Celsius to Fahrenheit");
    let half = p.add("a function half(n) that returns half of n");
    let triple = p.add("a function that triples a number");
    let quad = p.add("a function quad(n) that returns four times n");
    let penta = p.add("a function penta(n) that returns five times n");
    let sept = p.add("a function sept(n) that returns seven times n");
    let octo = p.add("a function octo(n) that returns eight times n");
    let nona = p.add("a function nona(n) that returns nine times n");
    p.run_until_idle(Duration::from_secs(120));

    let item = p.show(c2f);
    assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
    assert_eq!(item["item"]["round"], 1, "{item:#}");
    let report = qa_outputs(&item).join("\n");
    assert!(
        report.contains("1 passed, 0 failed, 2 set aside"),
        "{report}"
    );
    assert!(
        report.contains("test_minus_ten: AssertionError: 14.0 != -14"),
        "{report}"
    );
    assert!(
        report.contains("test_own: AssertionError: 32.0 != 0"),
        "{report}"
    );
    assert!(
        report.contains("ok: test_acceptance.TestAcceptance.test_boiling"),
        "{report}"
    );

    // Tests that import the plan's name, not the idea's, still count.
    let item = p.show(triple);
    assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
    let report = qa_outputs(&item).join("\n");
    assert!(
        report.contains("ok: test_acceptance.TestAcceptance.test_three"),
        "{report}"
    );
    assert!(
        report.contains("test_two: AssertionError: 6 != 5"),
        "{report}"
    );

    for id in [quad, penta] {
        let item = p.show(id);
        assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
        assert_eq!(item["item"]["round"], 1, "{item:#}");
    }

    let item = p.show(sept);
    assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
    assert_eq!(item["item"]["round"], 1, "{item:#}");
    let report = qa_outputs(&item).join("\n");
    assert!(
        report.contains(
            "Repaired test_main.py: it used sept from main.py without importing it \
             (added `from main import sept`)."
        ) && report.contains("ok: test_main.T.test_own"),
        "{report}"
    );
    let own = std::fs::read_to_string(p.file(&format!("workspace/{sept}/test_main.py"))).unwrap();
    assert!(
        own.starts_with("from main import sept\nimport unittest\n"),
        "{own}"
    );

    let item = p.show(octo);
    assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
    assert_eq!(item["item"]["round"], 2, "{item:#}");
    let rejected = item["feedback"][0]["feedback"].as_str().unwrap_or_default();
    assert!(rejected.contains("MemoryError"), "{item:#}");

    let item = p.show(nona);
    assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
    assert_eq!(item["item"]["round"], 2, "{item:#}");
    let rejected = item["feedback"][0]["feedback"].as_str().unwrap_or_default();
    assert!(
        rejected.starts_with("Tests failed.")
            && rejected.contains("Failed to import test module: test_main"),
        "{item:#}"
    );

    let item = p.show(half);
    assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
    assert_eq!(item["item"]["round"], 2, "{item:#}");
    let rejected = &item["feedback"][0]["feedback"];
    let rejected = rejected.as_str().unwrap_or_default();
    assert!(
        rejected.contains("Tests failed.")
            && rejected.contains("test_four")
            && rejected.contains("NameError: name 'halve' is not defined"),
        "{item:#}"
    );
    assert!(!rejected.contains("set aside"), "{rejected}");
}
