//! End-to-end tests of intake through the real binary (issue 6): the inbox
//! watched by `ideamill run` (under its supervisor, and killed while files
//! arrive), `ideamill add --file`, `ideamill import legacy` and
//! `ideamill export`. Each checks that nothing was lost.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::*;
use serde_json::Value;

/// Engine settings plus no HTTP listener (tests run in parallel) and a
/// short settle time.
fn config(stages: &str) -> String {
    format!("{ENGINE}[health]\nlisten = \"off\"\n[inbox]\nsettle = \"200ms\"\n{stages}")
}

const ECHO: &str = "import json, sys\nctx = json.load(sys.stdin)\nprint(ctx['stage'] + ': ' + ctx['item']['text'])\n";

fn drop_file(p: &Project, name: &str, content: &str) {
    let staging = p.file("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join(name), content).unwrap();
    std::fs::rename(staging.join(name), p.file("inbox").join(name)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Every item (none while the store does not exist yet).
fn items(p: &Project) -> Vec<Value> {
    let out = p.run(&["list", "--limit", "10000", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn texts(p: &Project) -> Vec<String> {
    let mut t: Vec<String> = items(p)
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

#[test]
fn issue_6_files_dropped_into_the_inbox_become_items_that_run_under_the_supervisor() {
    let p = Project::new(&config(&py_stage("echo", ECHO, "")));
    std::fs::create_dir_all(p.file("inbox")).unwrap();
    let mut run = p.spawn_run(&[]);
    drop_file(&p, "ideas.txt", "inbox idea one\ninbox idea two\n");
    drop_file(
        &p,
        "more.json",
        r#"[{"idea": "inbox idea three", "tag": "t"}]"#,
    );
    drop_file(&p, "broken.json", "[{\"idea\": \"never");
    // Written in place rather than renamed in: taken once it settles.
    std::fs::write(
        p.file("inbox/in-place.md"),
        "# An in-place idea\n\nDetails.\n",
    )
    .unwrap();
    let done = wait_until(Duration::from_secs(60), || {
        let list = items(&p);
        list.len() == 4 && list.iter().all(|i| i["state"] == "done")
    });
    assert!(done, "{:#?}\n{}", items(&p), p.logs());
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(30)).expect("the engine stops");
    assert!(status.success(), "{status}\n{}", p.logs());

    assert_eq!(
        texts(&p),
        [
            "# An in-place idea\n\nDetails.",
            "inbox idea one",
            "inbox idea three",
            "inbox idea two"
        ]
    );
    assert!(names(&p.file("inbox")).is_empty(), "nothing left behind");
    assert_eq!(
        names(&p.file("inbox/processed")),
        [
            "ideas.txt",
            "ideas.txt.items.json",
            "in-place.md",
            "in-place.md.items.json",
            "more.json",
            "more.json.items.json"
        ]
    );
    assert_eq!(
        names(&p.file("inbox/rejected")),
        ["broken.json", "broken.json.error.txt"]
    );
    let why = std::fs::read_to_string(p.file("inbox/rejected/broken.json.error.txt")).unwrap();
    assert!(
        why.starts_with("broken.json: line 1, column 16: invalid JSON"),
        "{why}"
    );
    let sidecar: Value = serde_json::from_str(
        &std::fs::read_to_string(p.file("inbox/processed/more.json.items.json")).unwrap(),
    )
    .unwrap();
    let id = sidecar["items"][0].as_i64().unwrap();
    let item = p.show(id);
    assert_eq!(item["item"]["metadata"]["tag"], "t");
    assert_eq!(item["outputs"][0]["output"], "echo: inbox idea three\n");
    let events = p.json(&["events", "--kind", "inbox_rejected"]);
    assert_eq!(events.as_array().unwrap().len(), 1);
}

#[test]
fn issue_6_files_that_arrive_while_the_engine_is_down_are_taken_when_it_starts() {
    let p = Project::new(&config(&py_stage("echo", ECHO, "")));
    std::fs::create_dir_all(p.file("inbox")).unwrap();
    let mut run = p.spawn_run(&["--no-supervisor"]);
    drop_file(&p, "first.txt", "before the crash\n");
    assert!(
        wait_until(Duration::from_secs(30), || names(
            &p.file("inbox/processed")
        )
        .len()
            == 2),
        "{}",
        p.logs()
    );
    // Killed outright: its inbox lock goes with it.
    signal(&run, libc::SIGKILL);
    wait_exit(&mut run, Duration::from_secs(10)).expect("killed");
    for i in 0..30 {
        drop_file(
            &p,
            &format!("down-{i:02}.txt"),
            &format!("while down {i}\n"),
        );
    }
    std::fs::write(
        p.file("inbox/down-in-place.txt"),
        "written in place while down\n",
    )
    .unwrap();
    p.run_until_idle(Duration::from_secs(120));

    let t = texts(&p);
    assert_eq!(t.len(), 32, "{t:?}\n{}", p.logs());
    assert!(names(&p.file("inbox")).is_empty());
    assert_eq!(names(&p.file("inbox/processed")).len(), 64);
    assert!(items(&p).iter().all(|i| i["state"] == "done"));
}

#[test]
fn issue_6_the_same_file_twice_runs_its_ideas_once() {
    let p = Project::new(&config(&py_stage("echo", ECHO, "")));
    std::fs::create_dir_all(p.file("inbox")).unwrap();
    drop_file(&p, "a.txt", "only once\n");
    p.run_until_idle(Duration::from_secs(60));
    drop_file(&p, "b.txt", "only once\n");
    p.run_until_idle(Duration::from_secs(60));
    assert_eq!(texts(&p), ["only once"]);
    let dups = p.json(&["events", "--kind", "inbox_duplicate"]);
    assert_eq!(dups.as_array().unwrap().len(), 1, "{dups:#}");
    let sidecar: Value = serde_json::from_str(
        &std::fs::read_to_string(p.file("inbox/processed/b.txt.items.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["duplicate_of"]["file"], "a.txt");
}

#[test]
fn issue_6_add_reads_every_idea_file_format_and_names_the_place_of_an_error() {
    let p = Project::new(&config(&py_stage("echo", ECHO, "")));
    std::fs::write(
        p.file("ideas.json"),
        r#"[{"text": "from json", "k": 1}, "plain"]"#,
    )
    .unwrap();
    std::fs::write(p.file("idea.md"), "# Titled\n\nbody\n").unwrap();
    std::fs::write(p.file("bad.jsonl"), "\"fine\"\n{nope}\n").unwrap();
    let ids = p.json(&["add", "--file", "ideas.json"]);
    assert_eq!(ids["ids"].as_array().unwrap().len(), 2);
    let md = p.json(&["add", "--file", "idea.md"])["ids"][0]
        .as_i64()
        .unwrap();
    assert_eq!(p.show(md)["item"]["metadata"]["title"], "Titled");
    let out = p.run(&["add", "--file", "bad.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in bad.jsonl: line 2, column 2: invalid JSON"),
        "{err}"
    );
    assert_eq!(texts(&p).len(), 3, "nothing of the bad file was added");
}

fn legacy_fixture(shape: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ideamill-intake/tests/fixtures/legacy")
        .join(shape)
}

#[test]
fn issue_6_import_legacy_dry_run_writes_nothing_and_importing_twice_creates_nothing_new() {
    // The pipeline of the old system: outline, implement, and a QA gate
    // that sends work back to implement. Implement prints the feedback it
    // gets, so the imported QA feedback is seen to reach it.
    let implement = "import json, sys\nctx = json.load(sys.stdin)\nprint('implement got: ' + (ctx['feedback'] or 'no feedback'))\n";
    let stages = format!(
        "{}{}{}",
        py_stage("outline", ECHO, ""),
        py_stage("implement", implement, ""),
        py_stage(
            "qa",
            "print('ok')",
            "gate = { retry_from = \"implement\", max_rounds = 3 }"
        )
    );
    let p = Project::new(&config(&stages));
    let dir = legacy_fixture("flat");
    let dir = dir.to_str().unwrap();

    let dry = p.run(&["import", "legacy", dir, "--dry-run"]);
    let stdout = String::from_utf8_lossy(&dry.stdout);
    // Exit 1: a file and two records could not be mapped; they are listed.
    assert_eq!(dry.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("12 item(s) in the folder"), "{stdout}");
    assert!(stdout.contains("Dry run: nothing was written."), "{stdout}");
    assert!(
        stdout.contains("Could not be mapped (2):\n  ideas_log.json #7: no idea text"),
        "{stdout}"
    );
    assert!(
        stdout.contains("implementations/broken.json: line 1, column 28: invalid JSON"),
        "{stdout}"
    );
    assert!(
        !p.file(".ideamill/ideamill.db").exists(),
        "a dry run writes nothing"
    );

    let first = p
        .cmd(&["import", "legacy", dir, "--json"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["summary"]["imported"], 12);
    assert_eq!(report["summary"]["already_imported"], 0);
    assert_eq!(report["summary"]["merged"], 2);
    assert_eq!(report["summary"]["skipped"], 1);
    assert_eq!(report["summary"]["unmapped"], 2);
    assert_eq!(report["summary"]["unreadable_files"], 1);
    // Nothing lost: every record is an item, merged, skipped or unmapped
    // with its reason.
    let records = report["records"].as_array().unwrap();
    assert_eq!(records.len(), 17);
    for r in records {
        match r["mapping"]["kind"].as_str().unwrap() {
            "item" => assert_eq!(r["outcome"], "imported", "{r}"),
            "merged" => assert!(r["mapping"]["into"].is_string()),
            _ => assert!(
                r["mapping"]["reason"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
            ),
        }
    }
    assert_eq!(items(&p).len(), 12);

    let again = p
        .cmd(&["import", "legacy", dir, "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["summary"]["imported"], 0);
    assert_eq!(report["summary"]["already_imported"], 12);
    assert_eq!(items(&p).len(), 12, "nothing new the second time");

    // The imported work runs: the QA retries resume at implement with the
    // old feedback.
    p.run_until_idle(Duration::from_secs(120));
    let list = items(&p);
    let todo = list.iter().find(|i| i["text"] == "A todo CLI").unwrap();
    let todo = p.show(todo["id"].as_i64().unwrap());
    assert_eq!(todo["item"]["state"], "done", "{todo:#}");
    assert_eq!(
        todo["outputs"][0]["output"],
        "implement got: test_list fails\n"
    );
    assert_eq!(todo["feedback"].as_array().unwrap().len(), 2);
    let states: Vec<&str> = list.iter().map(|i| i["state"].as_str().unwrap()).collect();
    assert_eq!(states.iter().filter(|s| **s == "done").count(), 10);
    assert_eq!(states.iter().filter(|s| **s == "failed").count(), 2);
    let imported = p.json(&["events", "--kind", "imported"]);
    assert_eq!(imported.as_array().unwrap().len(), 2);
}

#[test]
fn issue_6_export_writes_outputs_feedback_attempts_and_generated_files() {
    // Implement writes a file; QA rejects round 1 and passes round 2.
    let implement = "import json, sys\nctx = json.load(sys.stdin)\nopen('app.py', 'w').write('print(1)\\n')\nprint('round %d' % ctx['round'])\n";
    let qa = "import json, sys\nctx = json.load(sys.stdin)\nif ctx['round'] < 2:\n    print('add tests')\n    sys.exit(1)\nprint('ok')\n";
    let stages = format!(
        "{}{}",
        py_stage("implement", implement, ""),
        py_stage(
            "qa",
            qa,
            "gate = { retry_from = \"implement\", max_rounds = 3 }"
        )
    );
    let p = Project::new(&config(&stages));
    let a = p.add("exported idea");
    let b = p.add("another exported idea");
    p.run_until_idle(Duration::from_secs(60));
    p.ok(&["cancel", &p.add("cancelled idea").to_string()]);

    let jsonl = p.ok(&["export", "--format", "jsonl"]);
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let first = lines.iter().find(|l| l["id"] == a).unwrap();
    assert_eq!(first["text"], "exported idea");
    assert_eq!(first["state"], "done");
    let outputs: Vec<(&str, &str)> = first["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["stage"].as_str().unwrap(), o["output"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outputs,
        [
            ("implement", "round 1\n"),
            ("implement", "round 2\n"),
            ("qa", "ok\n")
        ]
    );
    assert_eq!(first["feedback"][0]["feedback"], "add tests\n");
    assert_eq!(first["feedback"][0]["round"], 1);
    assert_eq!(first["attempts"].as_array().unwrap().len(), 4);
    assert_eq!(first["usage"]["cost"], 0.0);
    assert_eq!(first["files"], serde_json::json!(["app.py"]));
    let workspace = PathBuf::from(first["workspace"].as_str().unwrap());
    assert!(workspace.join("app.py").is_file());

    // JSON: one array; filters by state and time.
    let all: Value = serde_json::from_str(&p.ok(&["export"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let done: Value = serde_json::from_str(&p.ok(&["export", "--state", "done"])).unwrap();
    let mut ids: Vec<i64> = done
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [a, b]);
    let future: Value = serde_json::from_str(&p.ok(&["export", "--since", "2999-01-01"])).unwrap();
    assert_eq!(future, serde_json::json!([]));
    let recent: Value = serde_json::from_str(&p.ok(&["export", "--since", "1h"])).unwrap();
    assert_eq!(recent.as_array().unwrap().len(), 3);

    // To a file, whole.
    std::fs::create_dir_all(p.file("out")).unwrap();
    p.ok(&["export", "--format", "jsonl", "-o", "out/export.jsonl"]);
    assert_eq!(
        std::fs::read_to_string(p.file("out/export.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    // A closed pipe is not an error.
    let mut child = p
        .cmd(&["export"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = wait_exit(&mut child, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
}
