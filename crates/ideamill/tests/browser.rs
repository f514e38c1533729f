//! The dashboard in a real browser: a real `ideamill run` (supervisor and
//! engine) with stages that sleep a little, driven by `tests/browser/
//! dashboard.mjs` (Playwright's core with Debian's Chromium): add an idea
//! through the form, watch it move live, retry it after it fails, search
//! for it, take screenshots (their paths are printed).
//!
//! Needs `node`, Chromium (`/usr/bin/chromium`, or `CHROMIUM`) and
//! `npm ci` in `tests/browser/`. Without them the test says so and passes,
//! except in CI (`CI` set), where it fails: `.ci/run` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// `outline` waits until the browser script, watching the first item's
/// page live, creates `stages/go` (so the test sees it run however slow the
/// machine), then sleeps like `implement` so that people see them run. An
/// idea with "flaky" in it fails its first `implement` (one attempt
/// allowed, so the item fails), and its first QA round rejects it, so that
/// a retry shows rounds and feedback.
const OUTLINE: &str = r##"
import json, os, sys, time
ctx = json.load(sys.stdin)
deadline = time.time() + 120
while not os.path.exists("../../stages/go") and time.time() < deadline:
    time.sleep(0.05)
time.sleep(1.2)
print("# Plan for: " + ctx["item"]["text"])
print("1. parse the input\n2. write the output\n3. test both")
"##;

const IMPLEMENT: &str = r##"
import json, os, sys, time
ctx = json.load(sys.stdin)
runs = int(open(".runs").read()) if os.path.exists(".runs") else 0
open(".runs", "w").write(str(runs + 1))
time.sleep(1.2)
if "flaky" in ctx["item"]["text"] and runs == 0:
    print("simulated failure: the model returned no code block", file=sys.stderr)
    sys.exit(3)
open("convert.py", "w").write('''"""Convert CSV to JSON."""
import csv
import json
import sys


def convert(lines):
    # One object per row, keyed by the header.
    return json.dumps(list(csv.DictReader(lines)), indent=2)


if __name__ == "__main__":
    print(convert(sys.stdin))
''')
open("test_convert.py", "w").write('''import unittest
from convert import convert


class ConvertTest(unittest.TestCase):
    def test_rows(self):
        self.assertIn('"a": "1"', convert(["a,b", "1,2"]))
''')
print("wrote convert.py and test_convert.py")
if ctx["feedback"]:
    print("fixed after QA feedback: " + ctx["feedback"].splitlines()[0])
"##;

const QA: &str = r##"
import json, os, sys, time
ctx = json.load(sys.stdin)
runs = int(open(".qa_runs").read()) if os.path.exists(".qa_runs") else 0
open(".qa_runs", "w").write(str(runs + 1))
time.sleep(0.8)
if runs == 0:
    print("FAIL: test_rows (test_convert.ConvertTest)")
    print("AssertionError: '\"a\": \"1\"' not found in '[]'")
    print("Ran 1 test: FAILED (failures=1)")
    sys.exit(1)
print("Ran 1 test: OK")
"##;

fn config() -> String {
    format!(
        "{ENGINE}[health]\nlisten = \"127.0.0.1:0\"\n\
         [[stages]]\nname = \"outline\"\nkind = \"command\"\ncommand = [\"python3\", \"../../stages/outline.py\"]\nread_only = [\"stages\"]\n\
         [[stages]]\nname = \"implement\"\nkind = \"command\"\ncommand = [\"python3\", \"../../stages/implement.py\"]\nread_only = [\"stages\"]\nmax_attempts = 1\n\
         [[stages]]\nname = \"qa\"\nkind = \"command\"\ncommand = [\"python3\", \"../../stages/qa.py\"]\nread_only = [\"stages\"]\n\
         gate = {{ retry_from = \"implement\", max_rounds = 3 }}\n"
    )
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/browser-<hash>
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// What the test needs that is not Rust; `Err` says what is missing.
fn prerequisites(dir: &Path) -> Result<PathBuf, String> {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set CHROMIUM)",
            chromium.display()
        ));
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err("no `node` on PATH (Node 20 or later)".into()),
    }
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Err(format!(
            "no node_modules in {}: run `npm ci` there",
            dir.display()
        ));
    }
    Ok(chromium)
}

/// The dashboard's address, from the engine's status file.
fn dashboard(p: &Project) -> String {
    let mut addr = String::new();
    let found = wait_until(Duration::from_secs(30), || {
        let Ok(entries) = std::fs::read_dir(p.file(".ideamill/status")) else {
            return false;
        };
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let (Some(listen), true) = (v["listen"].as_str(), v["process_id"].is_string()) {
                addr = listen.to_string();
                return true;
            }
        }
        false
    });
    assert!(found, "the engine never served HTTP\n{}", p.logs());
    format!("http://{addr}")
}

#[test]
fn dashboard_in_a_real_browser() {
    let script_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = match prerequisites(&script_dir) {
        Ok(c) => c,
        Err(missing) if std::env::var_os("CI").is_some() => {
            panic!("the browser test cannot run in CI: {missing}")
        }
        Err(missing) => {
            eprintln!("SKIPPED dashboard_in_a_real_browser: {missing} (in CI this fails)");
            return;
        }
    };
    let p = Project::new(&config());
    std::fs::create_dir_all(p.file("stages")).unwrap();
    for (name, code) in [
        ("outline.py", OUTLINE),
        ("implement.py", IMPLEMENT),
        ("qa.py", QA),
    ] {
        std::fs::write(p.file(&format!("stages/{name}")), code).unwrap();
    }
    let mut run = p.spawn_run(&[]);
    let base = dashboard(&p);
    let shots = target_dir().join("browser");
    let out = Command::new("node")
        .arg(script_dir.join("dashboard.mjs"))
        .current_dir(&script_dir)
        .env("BASE_URL", &base)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOT_DIR", &shots)
        .env("GO_FILE", p.file("stages/go"))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    signal(&run, libc::SIGTERM);
    let stopped = wait_exit(&mut run, Duration::from_secs(30));
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("BROWSER TEST PASSED"),
        "the browser test failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        p.logs()
    );
    assert!(
        stopped.is_some_and(|s| s.success()),
        "ideamill run did not stop cleanly\n{}",
        p.logs()
    );
    for shot in ["item.png", "overview.png", "overview-live.png", "items.png"] {
        let path = shots.join(shot);
        assert!(path.exists(), "no screenshot {}", path.display());
        println!("screenshot: {}", path.display());
    }
}
