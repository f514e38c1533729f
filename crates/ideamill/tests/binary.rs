//! End-to-end tests of the `ideamill` binary: real processes, a real SQLite
//! store in a temp folder, real signals.

use std::collections::HashMap;
use std::time::Duration;

use crate::util::*;
use serde_json::Value;

const PASS_CONTEXT: &str = r#"
import json, sys
ctx = json.load(sys.stdin)
print(ctx["stage"] + ":" + ctx["item"]["text"] + "|" + "|".join(f"{k}={v.strip()}" for k, v in sorted(ctx["outputs"].items())))
"#;

fn outputs_by_stage(item: &Value) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for o in item["outputs"].as_array().expect("outputs") {
        map.entry(o["stage"].as_str().unwrap().to_string())
            .or_default()
            .push(o["output"].as_str().unwrap().trim().to_string());
    }
    map
}

#[test]
fn items_flow_through_three_command_stages() {
    let config = format!(
        "{ENGINE}{}{}{}",
        py_stage("a", PASS_CONTEXT, ""),
        py_stage("b", PASS_CONTEXT, "concurrency = 2"),
        py_stage("c", PASS_CONTEXT, "")
    );
    let p = Project::new(&config);
    let ids: Vec<i64> = ["first idea", "second idea", "third idea"]
        .iter()
        .map(|t| p.add(t))
        .collect();
    p.run_until_idle(Duration::from_secs(60));
    for (id, text) in ids.iter().zip(["first idea", "second idea", "third idea"]) {
        let item = p.show(*id);
        assert_eq!(item["item"]["state"], "done", "{item:#}");
        let outputs = outputs_by_stage(&item);
        assert_eq!(outputs["a"], vec![format!("a:{text}|")]);
        assert_eq!(outputs["b"], vec![format!("b:{text}|a=a:{text}|")]);
        assert_eq!(
            outputs["c"],
            vec![format!("c:{text}|a=a:{text}||b=b:{text}|a=a:{text}|")]
        );
        // The workspace folder exists and the stage ran in it.
        assert!(p.file(&format!("workspace/{id}")).is_dir());
    }
    let list = p.json(&["list", "--state", "done"]);
    assert_eq!(list.as_array().unwrap().len(), 3);
}

#[test]
fn a_gate_rejects_twice_then_passes_and_feedback_reaches_the_earlier_stage() {
    let implement = r#"
import json, sys
ctx = json.load(sys.stdin)
print("impl round %d, feedback=%s" % (ctx["round"], (ctx["feedback"] or "none").strip()))
"#;
    let qa = r#"
import json, sys
ctx = json.load(sys.stdin)
if ctx["round"] < 3:
    print("please fix problem %d" % ctx["round"])
    sys.exit(1)
print("all good")
"#;
    let config = format!(
        "{ENGINE}{}{}",
        py_stage("implement", implement, ""),
        py_stage(
            "qa",
            qa,
            "gate = { retry_from = \"implement\", max_rounds = 3 }"
        )
    );
    let p = Project::new(&config);
    let id = p.add("gated idea");
    p.run_until_idle(Duration::from_secs(60));
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(item["item"]["round"], 3);
    let outputs = outputs_by_stage(&item);
    assert_eq!(
        outputs["implement"],
        vec![
            "impl round 1, feedback=none",
            "impl round 2, feedback=please fix problem 1",
            "impl round 3, feedback=please fix problem 2"
        ]
    );
    let feedback: Vec<&str> = item["feedback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feedback"].as_str().unwrap().trim())
        .collect();
    assert_eq!(
        feedback,
        vec!["please fix problem 1", "please fix problem 2"]
    );
    let rejected = item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "rejected")
        .count();
    assert_eq!(rejected, 2);
}

#[test]
fn a_gate_that_always_rejects_fails_the_item_with_every_rounds_feedback() {
    let qa = "import json,sys\nctx=json.load(sys.stdin)\nprint('still broken in round %d' % ctx['round'])\nsys.exit(1)\n";
    let config = format!(
        "{ENGINE}{}{}",
        py_stage("implement", PASS_CONTEXT, ""),
        py_stage(
            "qa",
            qa,
            "gate = { retry_from = \"implement\", max_rounds = 2 }"
        )
    );
    let p = Project::new(&config);
    let id = p.add("never good enough");
    p.run_until_idle(Duration::from_secs(60));
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "failed");
    let error = item["item"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("rejected by gate `qa` in round 2 of 2"),
        "{error}"
    );
    let feedback: Vec<&str> = item["feedback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feedback"].as_str().unwrap().trim())
        .collect();
    assert_eq!(
        feedback,
        vec!["still broken in round 1", "still broken in round 2"]
    );
}

#[test]
fn an_always_failing_stage_fails_after_max_attempts_with_growing_gaps() {
    let config = format!(
        "{ENGINE}{}",
        py_stage(
            "flaky",
            "import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)",
            "max_attempts = 4\nbackoff = \"200ms\"\nbackoff_max = \"10s\""
        )
    );
    let p = Project::new(&config);
    let id = p.add("doomed");
    p.run_until_idle(Duration::from_secs(60));
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "failed", "{item:#}");
    let error = item["item"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("failed after 4 attempts")
            && error.contains("code 3")
            && error.contains("boom"),
        "{error}"
    );
    let attempts = item["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert!(attempts.iter().all(|a| a["outcome"] == "error"));
    let starts: Vec<i64> = attempts
        .iter()
        .map(|a| a["started_at"].as_i64().unwrap())
        .collect();
    let ends: Vec<i64> = attempts
        .iter()
        .map(|a| a["finished_at"].as_i64().unwrap())
        .collect();
    let gaps: Vec<i64> = (1..4).map(|i| starts[i] - ends[i - 1]).collect();
    assert!(
        gaps[0] >= 150,
        "the first retry waits for the backoff: {gaps:?}"
    );
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "gaps must grow: {gaps:?}"
    );
    let events = p.json(&["events", "--item", &id.to_string()]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "retry_scheduled").count(), 3);
    assert!(kinds.contains(&"item_failed"));
}

#[test]
fn a_hung_command_that_ignores_sigterm_is_killed_with_its_grandchild_and_retried() {
    // First attempt: ignore SIGTERM, leave a grandchild, hang. Second: pass.
    let stage = "[[stages]]\nname = \"hang\"\nkind = \"command\"\ncommand = [\"sh\", \"-c\", \
                 \"if [ \\\"$IDEAMILL_ATTEMPT\\\" = 1 ]; then trap '' TERM; sleep 1000 & echo $! > grandchild.pid; \
                 while true; do sleep 1; done; fi; echo recovered\"]\n\
                 timeout = \"1s\"\nkill_grace = \"300ms\"\nbackoff = \"100ms\"\n\
                 sandbox = \"off\"\n"; // host pids: the sandbox's own tests are in sandbox.rs
    let p = Project::new(&format!("{ENGINE}{stage}"));
    let id = p.add("hangs once");
    p.run_until_idle(Duration::from_secs(60));
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    let attempts = item["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "timeout", "{attempts:#?}");
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s")
    );
    assert_eq!(attempts[1]["outcome"], "succeeded");
    let pid: i32 = std::fs::read_to_string(p.file(&format!("workspace/{id}/grandchild.pid")))
        .expect("the grandchild wrote its pid")
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pid)),
        "grandchild {pid} outlived the timeout"
    );
}

#[test]
fn cancel_stops_a_running_job() {
    let stage = "[[stages]]\nname = \"slow\"\nkind = \"command\"\n\
                 command = [\"sh\", \"-c\", \"echo $$ > job.pid; exec sleep 1000\"]\ntimeout = \"10m\"\n\
                 sandbox = \"off\"\n"; // a host pid: sandbox.rs tests confined jobs
    let p = Project::new(&format!("{ENGINE}{stage}"));
    let id = p.add("cancel me");
    let mut run = p.spawn_run(&[]);
    let pid = wait_for_pid(
        &p,
        &format!("workspace/{id}/job.pid"),
        Duration::from_secs(20),
    );
    p.ok(&["cancel", &id.to_string()]);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)),
        "the cancelled job's process still runs\n{}",
        p.logs()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let item = p.show(id);
            item["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["outcome"] == "cancelled")
        }),
        "no cancelled attempt recorded\n{}",
        p.logs()
    );
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "cancelled");
    assert_eq!(item["jobs"][0]["state"], "cancelled");
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(20)).expect("run stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", p.logs());
}

#[test]
fn an_item_added_by_another_process_is_picked_up_and_sigterm_stops_gracefully() {
    let p = Project::new(&format!("{ENGINE}{}", py_stage("echo", PASS_CONTEXT, "")));
    let mut run = p.spawn_run(&[]);
    // Wait for the engine to register, so that the add below is a pickup
    // by a running engine rather than work found at start.
    assert!(wait_until(Duration::from_secs(20), || {
        // Before the engine creates the store, status says there is none.
        let out = p.run(&["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| {
            s["status"]["processes"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
    }));
    let id = p.add("from another process");
    assert!(
        wait_until(Duration::from_secs(20), || p.show(id)["item"]["state"]
            == "done"),
        "not picked up\n{}",
        p.logs()
    );
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(20)).expect("run stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", p.logs());
    let events = p.json(&["events", "--kind", "process_stopped"]);
    assert_eq!(
        events.as_array().unwrap().len(),
        1,
        "a clean stop is recorded"
    );
    assert!(
        p.status()["status"]["processes"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn sigkill_mid_run_loses_nothing_and_does_nothing_twice() {
    // Each stage appends to a log outside the workspace, so that we can see
    // what ran; the committed outputs are what must be exactly once.
    let slow = r#"
import json, sys, time
ctx = json.load(sys.stdin)
time.sleep(0.3)
print("%s of %s" % (ctx["stage"], ctx["item"]["text"]))
"#;
    let config = format!(
        "{ENGINE}{}{}",
        py_stage("one", slow, "concurrency = 2"),
        py_stage("two", slow, "concurrency = 2")
    );
    let p = Project::new(&config);
    let ids: Vec<i64> = (0..6).map(|i| p.add(&format!("idea {i}"))).collect();
    let mut run = p.spawn_run(&[]);
    // Kill it once some work is committed and some is in flight.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = p.status();
            let done = s["status"]["items"]["done"].as_u64().unwrap_or(0);
            let running = s["status"]["running"].as_array().map_or(0, |r| r.len());
            done >= 1 && running >= 1
        }),
        "never reached a mid-run state\n{}",
        p.logs()
    );
    signal(&run, libc::SIGKILL);
    wait_exit(&mut run, Duration::from_secs(10)).expect("killed");

    p.run_until_idle(Duration::from_secs(60));
    for id in &ids {
        let item = p.show(*id);
        assert_eq!(item["item"]["state"], "done", "{item:#}");
        let outputs = outputs_by_stage(&item);
        assert_eq!(
            outputs["one"].len(),
            1,
            "stage one committed once: {item:#}"
        );
        assert_eq!(
            outputs["two"].len(),
            1,
            "stage two committed once: {item:#}"
        );
    }
    let events = p.json(&["events", "--limit", "500"]);
    let recovered = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "lease_expired" || e["kind"] == "process_dead")
        .count();
    assert!(recovered >= 2, "the recovery is recorded: {events:#}");
    let lost = ids
        .iter()
        .flat_map(|id| p.show(*id)["attempts"].as_array().unwrap().clone())
        .filter(|a| a["outcome"] == "lost")
        .count();
    assert!(lost >= 1, "the interrupted attempt is recorded as lost");
}

#[test]
fn a_broken_config_reports_every_error_with_its_line_and_exits_78() {
    let p = Project::new(
        "[engine]\nlease = \"soon\"\nbogus = 1\n\n[[stages]]\nname = \"a\"\nkind = \"command\"\n\n[[stages]]\nname = \"b\"\nkind = \"command\"\ncommand = [\"true\"]\ngate = { retry_from = \"zzz\" }\n",
    );
    let out = p.run(&["validate"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let located: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ideamill.toml:"))
        .collect();
    assert!(
        located
            .iter()
            .any(|l| l.contains(":2:") && l.contains("lease")),
        "{stderr}"
    );
    assert!(
        located
            .iter()
            .any(|l| l.contains(":3:") && l.contains("bogus")),
        "{stderr}"
    );
    assert!(located.iter().any(|l| l.contains("command")), "{stderr}");
    assert!(
        located
            .iter()
            .any(|l| l.contains(":13:") && l.contains("zzz")),
        "{stderr}"
    );
    // Every other command refuses to start with the same exit code.
    assert_eq!(p.run(&["list"]).status.code(), Some(78));
}

#[test]
fn a_missing_or_wrong_id_is_a_clear_error_with_exit_2() {
    let p = Project::new(&format!("{ENGINE}{}", py_stage("a", PASS_CONTEXT, "")));
    p.add("something");
    let out = p.run(&["show", "999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no item with id 999"));
    let out = p.run(&["cancel", "abc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an item id"));
}

#[test]
fn retry_runs_a_failed_item_again() {
    // Fails until a marker file exists next to the config.
    let stage = "[[stages]]\nname = \"picky\"\nkind = \"command\"\n\
                 command = [\"sh\", \"-c\", \"test -f \\\"$IDEAMILL_ROOT/ok\\\" && echo fine\"]\nmax_attempts = 1\n\
                 sandbox = \"off\"\n"; // reads the project folder
    let p = Project::new(&format!("{ENGINE}{stage}"));
    let id = p.add("retry me");
    p.run_until_idle(Duration::from_secs(30));
    assert_eq!(p.show(id)["item"]["state"], "failed");
    std::fs::write(p.file("ok"), "").unwrap();
    p.ok(&["retry", &id.to_string()]);
    p.run_until_idle(Duration::from_secs(30));
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(outputs_by_stage(&item)["picky"], vec!["fine"]);
    // A done item needs --from.
    let out = p.run(&["retry", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));
}

#[test]
fn init_scaffolds_a_project_that_runs_as_it_is() {
    // Without a model named, the stages are placeholder programs.
    let dir = tempfile::tempdir().unwrap();
    init_in(dir.path(), &["demo"]);
    let demo = dir.path().join("demo");
    for f in [
        "ideamill.toml",
        "prompts",
        "inbox",
        ".gitignore",
        "stages/qa.py",
    ] {
        assert!(demo.join(f).exists(), "{f} missing");
    }
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .current_dir(&demo)
            .env_remove("IDEAMILL_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["validate"]);
    run(&["add", "an idea"]);
    run(&["run", "--until-idle"]);
    let shown = run(&["show", "1"]);
    assert!(shown.starts_with("Item 1: done"), "{shown}");
    for stage in ["outline", "implement", "qa"] {
        assert!(
            shown.contains(&format!("--- {stage} (round 1")),
            "{stage} output missing:\n{shown}"
        );
    }
    let status = std::process::Command::new(BIN)
        .arg("status")
        .current_dir(&demo)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&status.stdout).starts_with("HEALTHY"));
}

#[test]
fn a_store_written_by_a_newer_ideamill_is_refused_and_not_modified() {
    let p = Project::new(&format!("{ENGINE}{}", py_stage("a", PASS_CONTEXT, "")));
    p.add("x");
    let db = p.file(".ideamill/ideamill.db");
    // Python's own sqlite3 module stands in for a newer ideamill.
    let script = "import sqlite3, sys\n\
                  db = sqlite3.connect(sys.argv[1])\n\
                  db.execute('INSERT INTO ideamill_schema VALUES (999, 0, \\'future\\')')\n\
                  db.commit()\n\
                  db.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n\
                  db.close()\n";
    let conn = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&db)
        .output()
        .expect("python3");
    assert!(
        conn.status.success(),
        "{}",
        String::from_utf8_lossy(&conn.stderr)
    );
    let before = std::fs::read(&db).unwrap();
    let out = p.run(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("newer ideamill") && stderr.contains("999"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the database file changed"
    );
}

#[test]
fn sigterm_lets_a_running_job_finish_within_the_grace_period() {
    let stage = "[[stages]]\nname = \"steady\"\nkind = \"command\"\n\
                 command = [\"sh\", \"-c\", \"touch started; sleep 1; echo finished\"]\n";
    let p = Project::new(&format!("{ENGINE}{stage}"));
    let id = p.add("finish me");
    let mut run = p.spawn_run(&[]);
    let started = p.file(&format!("workspace/{id}/started"));
    assert!(
        wait_until(Duration::from_secs(20), || started.exists()),
        "never started\n{}",
        p.logs()
    );
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(20)).expect("run stops");
    assert!(status.success(), "{status}\n{}", p.logs());
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(outputs_by_stage(&item)["steady"], vec!["finished"]);
}

#[test]
fn when_the_grace_period_runs_out_the_job_is_stopped_and_given_back_uncounted() {
    let engine = "[engine]\nlease = \"3s\"\nheartbeat = \"500ms\"\nshutdown_grace = \"300ms\"\n";
    let stage = "[[stages]]\nname = \"endless\"\nkind = \"command\"\n\
                 command = [\"sh\", \"-c\", \"echo $$ > job.pid; exec sleep 1000\"]\nkill_grace = \"200ms\"\n\
                 sandbox = \"off\"\n"; // a host pid: sandbox.rs tests confined jobs
    let p = Project::new(&format!("{engine}{stage}"));
    let id = p.add("too slow to finish");
    let mut run = p.spawn_run(&[]);
    let pid = wait_for_pid(
        &p,
        &format!("workspace/{id}/job.pid"),
        Duration::from_secs(20),
    );
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(20)).expect("run stops");
    assert!(status.success(), "{status}\n{}", p.logs());
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pid)),
        "the job's process outlived the engine"
    );
    let item = p.show(id);
    assert_eq!(item["display_state"], "queued", "{item:#}");
    assert_eq!(item["jobs"][0]["state"], "queued");
    assert_eq!(
        item["jobs"][0]["attempts"], 0,
        "a released attempt does not count"
    );
    assert_eq!(item["attempts"][0]["outcome"], "released");
    let events = p.json(&["events", "--kind", "jobs_released"]);
    assert_eq!(events.as_array().unwrap().len(), 1);
}

#[test]
fn prune_deletes_old_items_with_their_workspaces_and_nothing_else() {
    let write = r#"
import json, sys
ctx = json.load(sys.stdin)
open("result.txt", "w").write(ctx["item"]["text"])
print("wrote")
"#;
    let p = Project::new(&format!("{ENGINE}{}", py_stage("write", write, "")));
    let done = [p.add("first"), p.add("second")];
    p.run_until_idle(Duration::from_secs(60));
    for id in done {
        assert!(p.file(&format!("workspace/{id}/result.txt")).is_file());
    }
    // A link inside a workspace to files elsewhere: the link goes, never
    // what it points at.
    let outside = p.file("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), "precious").unwrap();
    std::os::unix::fs::symlink(&outside, p.file(&format!("workspace/{}/link", done[0]))).unwrap();
    // Work still waiting keeps its folder.
    let waiting = p.add("waiting");
    std::fs::create_dir_all(p.file(&format!("workspace/{waiting}"))).unwrap();
    std::fs::write(p.file(&format!("workspace/{waiting}/notes.txt")), "mine").unwrap();

    let pruned = p.json(&["prune", "--older-than", "0s"]);
    assert_eq!(pruned["items"], 2, "{pruned}");
    assert_eq!(pruned["workspace_folders"], 2, "{pruned}");
    for id in done {
        assert!(
            !p.file(&format!("workspace/{id}")).exists(),
            "workspace/{id}"
        );
        let out = p.run(&["show", &id.to_string()]);
        assert!(!out.status.success(), "item {id} is gone");
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("keep.txt")).unwrap(),
        "precious"
    );
    assert!(p.file(&format!("workspace/{waiting}/notes.txt")).is_file());
    assert_eq!(p.show(waiting)["item"]["state"], "active");

    // --keep-workspaces leaves the folders.
    p.run_until_idle(Duration::from_secs(60));
    let text = p.ok(&["prune", "--older-than", "0s", "--keep-workspaces"]);
    assert!(
        text.starts_with("Pruned 1 finished items (0 workspace folders)"),
        "{text}"
    );
    assert!(p.file(&format!("workspace/{waiting}/notes.txt")).is_file());
}

/// Idle TCP connections (no token needed: auth comes after the headers)
/// must not use up the engine's file descriptors: with a low open-file
/// limit and hundreds of idle clients, every item still ends `done`, and an
/// idle client is disconnected after the header timeout.
#[test]
fn idle_connections_cannot_exhaust_the_engine() {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let p = Project::new(&format!(
        "{ENGINE}[health]\nlisten = \"127.0.0.1:0\"\n{}{}",
        py_stage("a", PASS_CONTEXT, "concurrency = 4"),
        py_stage("b", PASS_CONTEXT, "concurrency = 4"),
    ));
    let ids: Vec<i64> = (0..6).map(|i| p.add(&format!("idea {i}"))).collect();
    let log = std::fs::File::create(p.file("run-fds.log")).unwrap();
    let mut cmd = p.cmd(&["run"]);
    // SAFETY: setrlimit with a valid struct, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 160,
                rlim_max: 160,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut run = Reaped(
        cmd.stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // The listener's address, from the engine's status file.
    let mut addr = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            addr = std::fs::read_dir(p.file(".ideamill/status"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
                .find_map(|v| v["listen"].as_str().map(str::to_owned))
                .unwrap_or_default();
            !addr.is_empty()
        }),
        "no listener\n{}",
        p.logs()
    );
    let idle: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() >= 100, "only {} connections", idle.len());
    assert!(
        wait_until(Duration::from_secs(90), || ids
            .iter()
            .all(|&id| p.show(id)["item"]["state"] == "done")),
        "items did not finish beside idle connections\n{}",
        p.logs()
    );
    // The first idle client is disconnected once its header timeout passes.
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        first.read(&mut buf).unwrap_or(0),
        0,
        "an idle connection stayed open"
    );
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(30)).expect("run stops");
    assert!(status.success(), "{}", p.logs());
}

/// Jobs of a stage removed from the config are visible (a verdict reason,
/// `list --stage`) and movable (`retry --from`), never silently stranded.
#[test]
fn items_of_a_removed_stage_are_shown_and_can_be_moved() {
    let stage = |name: &str| {
        format!(
            "[[stages]]\nname = \"{name}\"\nkind = \"command\"\ncommand = [\"echo\", \"{name}\"]\n"
        )
    };
    let p = Project::new(&format!("{ENGINE}{}{}", stage("old"), stage("new")));
    let id = p.add("queued on a stage about to go");
    std::fs::write(p.file("ideamill.toml"), format!("{ENGINE}{}", stage("new"))).unwrap();

    let status = p.status();
    let reasons = status["health"]["reasons"].as_array().unwrap();
    let removed = reasons
        .iter()
        .find(|r| r["code"] == "stage_removed")
        .unwrap_or_else(|| panic!("no stage_removed reason: {status:#}"));
    assert!(
        removed["message"].as_str().unwrap().contains("`old`"),
        "{removed:#}"
    );
    let listed = p.json(&["list", "--stage", "old"]);
    assert_eq!(listed[0]["id"], id, "{listed:#}");

    // --until-idle ends, saying what it left.
    p.run_until_idle(Duration::from_secs(30));
    assert!(
        p.logs()
            .contains("waits on stages the config no longer has: `old` (1 job(s))"),
        "{}",
        p.logs()
    );
    assert_eq!(p.show(id)["display_state"], "queued");

    p.ok(&["retry", &id.to_string(), "--from", "new"]);
    p.run_until_idle(Duration::from_secs(30));
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(outputs_by_stage(&item)["new"], vec!["new"]);
}

/// A program that cannot start for lack of resources (EMFILE here, from a
/// debug-build hook) is the engine's trouble: the job waits and tries again
/// without using up the item's attempts, and the engine says DEGRADED.
#[test]
fn a_start_that_fails_for_lack_of_resources_uses_no_attempt() {
    let p = Project::new(&format!(
        "{ENGINE}{}",
        py_stage("only", "print('ran')", "max_attempts = 1")
    ));
    let id = p.add("starts on the fourth try");
    let mut child = p
        .cmd(&["run", "--until-idle"])
        .env("IDEAMILL_TEST_SPAWN_EMFILE", "3")
        .stdout(std::fs::File::create(p.file("run-emfile.log")).unwrap())
        .stderr(std::fs::File::create(p.file("run-emfile.err.log")).unwrap())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("run ends");
    assert!(status.success(), "{}", p.logs());
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "done", "{item:#}");
    assert_eq!(item["attempts"].as_array().unwrap().len(), 1, "{item:#}");
    let log = std::fs::read_to_string(p.file("run-emfile.err.log")).unwrap();
    assert!(
        log.contains("DEGRADED: a stage's program cannot start for lack of resources"),
        "{log}"
    );
}

#[test]
fn retry_waits_until_a_cancelled_job_has_stopped() {
    // The job ignores SIGTERM, so its process lives through the kill grace;
    // two slots, so that a second job of the item could start at once.
    let stage = "[[stages]]\nname = \"stubborn\"\nkind = \"command\"\n\
                 command = [\"sh\", \"-c\", \"trap '' TERM; echo $$ >> job.pids; sleep 1000\"]\n\
                 timeout = \"10m\"\nkill_grace = \"3s\"\nconcurrency = 2\n\
                 sandbox = \"off\"\n"; // host pids: sandbox.rs tests confined jobs
    let p = Project::new(&format!("{ENGINE}{stage}"));
    let id = p.add("cancel me, then retry me");
    let pids_file = p.file(&format!("workspace/{id}/job.pids"));
    let pids = || -> Vec<i32> {
        std::fs::read_to_string(&pids_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let mut run = p.spawn_run(&[]);
    assert!(
        wait_until(Duration::from_secs(20), || pids().len() == 1),
        "the job never started\n{}",
        p.logs()
    );
    let first = pids()[0];

    p.ok(&["cancel", &id.to_string()]);
    let out = p.run(&["retry", &id.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a retry while the cancelled job's process is being killed is refused\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("item {id}'s cancelled job is still stopping"))
            && stderr.contains("retry in a moment"),
        "{stderr}"
    );
    assert!(
        alive(first),
        "the refusal was tested while the old process still ran"
    );
    assert_eq!(pids().len(), 1, "no second job started");

    // Once the old process is gone (SIGKILL after the grace) and its
    // attempt recorded, the retry goes through.
    assert!(
        wait_until(Duration::from_secs(15), || !alive(first)),
        "the cancelled job's process outlived its kill grace\n{}",
        p.logs()
    );
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let out = p.run(&["retry", &id.to_string()]);
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        }),
        "the retry was still refused after the old job ended: {last}\n{}",
        p.logs()
    );
    assert!(
        wait_until(Duration::from_secs(20), || pids().len() == 2),
        "the retried job never started\n{}",
        p.logs()
    );
    let second = pids()[1];
    assert_ne!(second, first);
    assert!(!alive(first), "two processes of one item at once");
    let item = p.show(id);
    assert_eq!(item["item"]["state"], "active", "{item:#}");
    assert_eq!(
        item["attempts"][0]["outcome"], "cancelled",
        "the first job ended as cancelled: {item:#}"
    );

    p.ok(&["cancel", &id.to_string()]);
    assert!(
        wait_until(Duration::from_secs(15), || !alive(second)),
        "{}",
        p.logs()
    );
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(20)).expect("run stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", p.logs());
}

/// The store, the status files and the data folder are private to the
/// mill's user.
#[test]
fn the_store_and_status_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new(&format!("{ENGINE}{}", py_stage("a", "print('a')", "")));
    p.add("one");
    p.run_until_idle(Duration::from_secs(30));
    let mode = |rel: &str| std::fs::metadata(p.file(rel)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(".ideamill"), 0o700);
    assert_eq!(mode(".ideamill/ideamill.db"), 0o600);
    for f in std::fs::read_dir(p.file(".ideamill")).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with("ideamill.db") {
            let m = f.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(m & 0o077, 0, "{name} is {m:o}");
        }
    }
}
