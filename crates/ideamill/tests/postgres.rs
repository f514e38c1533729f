//! End-to-end tests of the binary on PostgreSQL: several worker processes
//! sharing one database, one of them SIGKILLed; the database restarted under
//! running engines; `store copy` from SQLite and back. Each test owns a
//! throwaway cluster (`initdb` + `pg_ctl` under a temp folder), so that
//! stopping it disturbs nobody; without the PostgreSQL binaries these tests
//! fail, they are never skipped.

#[path = "../../ideamill-store/tests/conformance/cluster.rs"]
pub(crate) mod cluster;

use std::collections::HashMap;
use std::time::Duration;

use crate::util::*;
use serde_json::Value;

use self::cluster::Cluster;

/// A stage that takes a moment and says what it ran on.
const SLOW: &str = r#"
import json, sys, time
ctx = json.load(sys.stdin)
time.sleep(0.2)
print("%s of %s" % (ctx["stage"], ctx["item"]["text"]))
"#;

fn cluster() -> Cluster {
    Cluster::start().unwrap_or_else(|e| panic!("cannot start a PostgreSQL cluster: {e}"))
}

fn config(url: &str, stages: &str) -> String {
    format!("[store]\nurl = \"{url}\"\n{ENGINE}{stages}")
}

fn two_stages() -> String {
    format!(
        "{}{}",
        py_stage("one", SLOW, "concurrency = 2"),
        py_stage("two", SLOW, "concurrency = 2")
    )
}

/// A worker: the engine alone, no supervisor, no HTTP listener.
fn worker(p: &Project) -> Reaped {
    p.spawn_run(&["--role", "worker", "--no-supervisor"])
}

fn items(p: &Project) -> Vec<Value> {
    p.json(&["list", "--limit", "1000"])
        .as_array()
        .expect("a list")
        .clone()
}

fn done_count(p: &Project) -> usize {
    items(p).iter().filter(|i| i["state"] == "done").count()
}

fn outputs_by_stage(item: &Value) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for o in item["outputs"].as_array().expect("outputs") {
        map.entry(o["stage"].as_str().unwrap().to_string())
            .or_default()
            .push(o["output"].as_str().unwrap().trim().to_string());
    }
    map
}

/// Every item is done with exactly one output per stage, and that output is
/// its own.
fn assert_all_done_once(p: &Project, ids: &[i64]) {
    for id in ids {
        let item = p.show(*id);
        assert_eq!(item["item"]["state"], "done", "{item:#}\n{}", p.logs());
        let text = item["item"]["text"].as_str().unwrap().to_string();
        let outputs = outputs_by_stage(&item);
        for stage in ["one", "two"] {
            assert_eq!(
                outputs.get(stage),
                Some(&vec![format!("{stage} of {text}")]),
                "stage {stage} committed exactly once: {item:#}"
            );
        }
    }
}

fn stop(p: &Project, children: &mut [Reaped]) {
    for c in children.iter() {
        signal(c, libc::SIGTERM);
    }
    for c in children.iter_mut() {
        let status = wait_exit(c, Duration::from_secs(30)).expect("a worker stops on SIGTERM");
        assert!(status.success(), "{status}\n{}", p.logs());
    }
}

#[test]
fn three_workers_share_one_database_and_a_sigkilled_one_loses_nothing() {
    let pg = cluster();
    let p = Project::new(&config(&pg.url("postgres"), &two_stages()));
    let ids: Vec<i64> = (0..12).map(|i| p.add(&format!("idea {i}"))).collect();
    let mut workers: Vec<_> = (0..3).map(|_| worker(&p)).collect();

    // All three appear in `status`, with their host and heartbeat.
    let host = ideamill_sys::hostname();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = p.status();
            let procs = s["status"]["processes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            procs.len() == 3
                && procs
                    .iter()
                    .all(|p| p["host"] == host.as_str() && p["last_beat_at"].as_i64() > Some(0))
        }),
        "three processes never showed in status\n{}",
        p.logs()
    );

    // Kill one while it holds work and some is already committed.
    let victim = workers.remove(0);
    let victim_pid = victim.id();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = p.status();
            let running = s["status"]["running"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            s["status"]["items"]["done"].as_u64().unwrap_or(0) >= 1
                && running.iter().any(|j| {
                    j["owner"]
                        .as_str()
                        .is_some_and(|o| o.contains(&format!("-{victim_pid}-")))
                })
        }),
        "the victim never held work mid-run\n{}",
        p.logs()
    );
    signal(&victim, libc::SIGKILL);
    let mut victim = victim;
    wait_exit(&mut victim, Duration::from_secs(10)).expect("killed");

    assert!(
        wait_until(Duration::from_secs(90), || done_count(&p) == ids.len()),
        "not every item finished after the kill\n{}",
        p.logs()
    );
    stop(&p, &mut workers);
    assert_all_done_once(&p, &ids);

    // The victim's interrupted attempts were recovered by the others.
    let lost = ids
        .iter()
        .flat_map(|id| p.show(*id)["attempts"].as_array().unwrap().clone())
        .filter(|a| a["outcome"] == "lost")
        .count();
    assert!(lost >= 1, "the interrupted attempt is recorded as lost");
    let events = p.json(&["events", "--limit", "1000"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "lease_expired"),
        "the recovery is recorded: {events:#}"
    );
    // Work was shared: more than one process committed attempts.
    let mut by_process: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        for a in p.show(*id)["attempts"].as_array().unwrap() {
            *by_process
                .entry(a["process"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert!(
        by_process.len() >= 2,
        "one process did everything: {by_process:?}"
    );
}

#[test]
fn engines_reconnect_after_postgres_restarts_and_finish() {
    let pg = cluster();
    let p = Project::new(&config(&pg.url("postgres"), &two_stages()));
    let ids: Vec<i64> = (0..16).map(|i| p.add(&format!("idea {i}"))).collect();
    let mut workers: Vec<_> = (0..2).map(|_| worker(&p)).collect();
    assert!(
        wait_until(Duration::from_secs(60), || done_count(&p) >= 2),
        "no progress before the restart\n{}",
        p.logs()
    );

    // A restart that lasts until the engines noticed it.
    pg.stop().expect("stop PostgreSQL");
    assert!(
        wait_until(Duration::from_secs(30), || p
            .logs()
            .contains("DEGRADED: the store does not answer")),
        "the engines never reported the lost store\n{}",
        p.logs()
    );
    for w in &mut workers {
        assert!(
            w.try_wait().expect("try_wait").is_none(),
            "a worker died with the database\n{}",
            p.logs()
        );
    }
    pg.start_again().expect("start PostgreSQL again");

    assert!(
        wait_until(Duration::from_secs(120), || done_count(&p) == ids.len()),
        "not every item finished after the restart\n{}\n{}",
        p.logs(),
        pg.log()
    );
    assert!(
        p.logs().contains("The store answers again"),
        "the reconnection is logged\n{}",
        p.logs()
    );
    // `status` shows the outage once the store answers again.
    let status = p.status();
    let reasons: Vec<&str> = status["health"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"store_outage"), "{status:#}");
    assert_eq!(status["health"]["verdict"], "DEGRADED", "{status:#}");
    stop(&p, &mut workers);
    assert_all_done_once(&p, &ids);

    // A plain `pg_ctl restart` under idle engines: they keep running and
    // take new work afterwards.
    let mut workers: Vec<_> = (0..2).map(|_| worker(&p)).collect();
    assert!(wait_until(Duration::from_secs(30), || {
        p.status()["status"]["processes"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    }));
    pg.restart().expect("restart PostgreSQL");
    let late = p.add("after the restart");
    assert!(
        wait_until(Duration::from_secs(60), || p.show(late)["item"]["state"]
            == "done"),
        "new work after a restart was not done\n{}",
        p.logs()
    );
    stop(&p, &mut workers);
    assert_all_done_once(&p, &[late]);
}

/// Everything `show` says about each item, and every event, by id.
fn snapshot(p: &Project) -> (Vec<Value>, Value) {
    let mut ids: Vec<i64> = items(p).iter().map(|i| i["id"].as_i64().unwrap()).collect();
    ids.sort();
    // Everything but the workspace folder, which is the project's own.
    let shown = ids
        .iter()
        .map(|id| {
            let mut item = p.show(*id);
            item.as_object_mut().expect("an object").remove("workspace");
            item
        })
        .collect();
    (shown, p.json(&["events", "--limit", "10000"]))
}

#[test]
fn store_copy_moves_a_sqlite_store_to_postgres_and_back() {
    let qa = "import json,sys\nctx=json.load(sys.stdin)\nif ctx['round'] < 2:\n    print('fix it')\n    sys.exit(1)\nprint('ok')\n";
    let stages = format!(
        "{}{}",
        py_stage("one", SLOW, ""),
        py_stage("two", qa, "gate = { retry_from = \"one\", max_rounds = 3 }")
    );
    // A populated SQLite store: finished items with outputs, feedback,
    // attempts and events, and items still queued.
    let lite = Project::new(&format!("{ENGINE}{stages}"));
    for i in 0..4 {
        lite.add(&format!("idea {i}"));
    }
    lite.run_until_idle(Duration::from_secs(90));
    lite.add("still queued");
    lite.add("also queued");
    let sqlite_url = format!("sqlite://{}", lite.file(".ideamill/ideamill.db").display());
    let before = snapshot(&lite);

    let pg = cluster();
    let pg_url = pg.url("postgres");
    let out = lite.run(&["store", "copy", "--from", &sqlite_url, "--to", &pg_url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("row counts verified"), "{printed}");

    // The same store, seen through PostgreSQL.
    let big = Project::new(&config(&pg_url, &stages));
    assert_eq!(snapshot(&big), before, "the copy differs from the original");

    // A second copy into a non-empty target is refused, unless forced.
    let out = lite.run(&["store", "copy", "--from", &sqlite_url, "--to", &pg_url]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    let forced = lite.json(&[
        "store",
        "copy",
        "--from",
        &sqlite_url,
        "--to",
        &pg_url,
        "--force",
    ]);
    let items_row = forced["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "items")
        .cloned()
        .expect("an items row");
    assert_eq!(items_row["rows"], 6);
    assert_eq!(snapshot(&big), before);

    // New ids continue after the copied ones, and the copy runs.
    let next = big.add("added after the copy");
    assert_eq!(next, 7);
    big.run_until_idle(Duration::from_secs(90));
    assert_eq!(done_count(&big), 7, "{}", big.logs());

    // And back to a new SQLite file: the same again.
    let back_url = format!("sqlite://{}", big.file("back.db").display());
    let after = snapshot(&big);
    big.ok(&["store", "copy", "--from", &pg_url, "--to", &back_url]);
    let back = Project::new(&format!("[store]\nurl = \"{back_url}\"\n{ENGINE}{stages}"));
    assert_eq!(snapshot(&back), after, "the copy back differs");

    // A store with a live engine is not copied.
    let mut engine = back.spawn_run(&["--role", "worker", "--no-supervisor"]);
    assert!(wait_until(Duration::from_secs(30), || {
        back.status()["status"]["processes"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    }));
    let other = Project::new(&format!("{ENGINE}{stages}"));
    let target = format!("sqlite://{}", other.file(".ideamill/copy.db").display());
    let out = back.run(&["store", "copy", "--from", &back_url, "--to", &target]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("engines are running"), "{stderr}");
    stop(&back, std::slice::from_mut(&mut engine));
}

#[test]
fn tls_follows_the_urls_sslmode() {
    let (cluster, ca) = Cluster::start_tls().unwrap_or_else(|e| panic!("{e}"));
    let base = cluster.url("postgres");
    let quick = py_stage("one", "import sys; sys.stdin.read(); print('ok')", "");

    // verify-full against our CA: the store works, and over TLS.
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    engine_works_with_tls(&cluster, &url, &quick, "t");

    // A CA that did not sign the server's certificate: refused, clearly,
    // at once (no waiting: it will not fix itself).
    let other = tempfile::tempdir().unwrap();
    let other_ca = cluster::make_certificates(other.path()).unwrap();
    let url = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    );
    let bad = Project::new(&config(&url, &quick));
    for args in [&["status"][..], &["run", "--no-supervisor", "--until-idle"]] {
        let out = bad.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("certificate"), "{args:?}: {stderr}");
    }

    // require: encrypted without checking whose certificate it is.
    let p = Project::new(&config(&format!("{base}?sslmode=require"), &quick));
    let id = p.add("encrypted");
    p.run_until_idle(Duration::from_secs(60));
    assert_eq!(p.show(id)["item"]["state"], "done");

    // A server on this machine and no sslmode chosen: plain (TLS over
    // loopback guards nothing and costs each round trip); `prefer` written
    // out is a choice, and kept.
    engine_works_with_tls(&cluster, &base, &quick, "f");
    engine_works_with_tls(&cluster, &format!("{base}?sslmode=prefer"), &quick, "t");
}

/// A worker on `url` takes an item through `stages` while every
/// connection it has open is TLS (`tls` "t") or none is ("f").
fn engine_works_with_tls(cluster: &Cluster, url: &str, stages: &str, tls: &str) {
    let p = Project::new(&config(url, stages));
    let id = p.add("an idea");
    let mut run = worker(&p);
    assert!(
        wait_until(Duration::from_secs(60), || p.show(id)["item"]["state"]
            == "done"),
        "{}",
        p.logs()
    );
    // (An earlier project's server processes may take a moment to go.)
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (all_tls, connections) = engine_tls(cluster);
            all_tls == tls && connections > 0
        }),
        "{url}: {:?}",
        engine_tls(cluster)
    );
    signal(&run, libc::SIGTERM);
    wait_exit(&mut run, Duration::from_secs(30)).expect("run stops");
}

/// Whether every connection ideamill has open to `cluster` is TLS ("t" or
/// "f"), and how many there are.
fn engine_tls(cluster: &Cluster) -> (String, u32) {
    let out = std::process::Command::new("psql")
        .arg(cluster.url("postgres"))
        .args([
            "-Atc",
            "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'ideamill'",
        ])
        .output()
        .expect("psql");
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (all_tls, connections) = seen.split_once('|').unwrap_or(("", "0"));
    (all_tls.to_string(), connections.parse().unwrap_or(0))
}

/// PostgreSQL refuses NUL bytes in text. A stage that prints one (on
/// stdout and stderr) and an inbox idea that spells one `\u0000` are stored
/// with each NUL replaced by U+FFFD: the item ends `done`, the file is
/// taken, and the engine still stops on SIGTERM. (Before, the finish failed
/// the same way on every try and was retried forever, leaving the item
/// `running` and the engine deaf to SIGTERM.)
#[test]
fn nul_bytes_in_results_and_inbox_ideas_are_stored_replaced() {
    let pg = cluster();
    let nul =
        "import sys\nsys.stdin.read()\nsys.stdout.write('a\\0b')\nsys.stderr.write('e\\0f')\n";
    let p = Project::new(&config(&pg.url("postgres"), &py_stage("one", nul, "")));
    let id = p.add("an idea");
    let mut run = worker(&p);
    assert!(
        wait_until(Duration::from_secs(60), || p.show(id)["item"]["state"]
            == "done"),
        "the item never finished: {:#}\n{}",
        p.show(id),
        p.logs()
    );
    let item = p.show(id);
    assert_eq!(item["outputs"][0]["output"], "a\u{FFFD}b", "{item:#}");
    let attempt = &item["attempts"][0];
    assert_eq!(attempt["outcome"], "succeeded", "{item:#}");
    assert_eq!(attempt["stderr"], "e\u{FFFD}f", "{item:#}");
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("NUL bytes replaced")),
        "the attempt says its texts changed: {item:#}"
    );

    // An inbox file whose idea holds `\u0000` is taken, not left behind.
    std::fs::write(
        p.file("inbox/nul.json.tmp"),
        r#"{"text": "an inbox \u0000 idea"}"#,
    )
    .unwrap();
    std::fs::rename(p.file("inbox/nul.json.tmp"), p.file("inbox/nul.json")).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || p
            .file("inbox/processed/nul.json")
            .exists()),
        "the inbox file was neither taken nor rejected\n{}",
        p.logs()
    );
    let taken = items(&p)
        .into_iter()
        .find(|i| i["text"] == "an inbox \u{FFFD} idea")
        .unwrap_or_else(|| panic!("no item from the inbox file: {:#?}", items(&p)));
    let taken = taken["id"].as_i64().unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || p.show(taken)["item"]["state"]
            == "done"),
        "{:#}\n{}",
        p.show(taken),
        p.logs()
    );

    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(30)).expect("the engine stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", p.logs());
}
