//! Alerts end to end, through the real binary: `ideamill alert test` to a
//! loopback receiver of each kind; `ideamill run` sending one alert for
//! several failed items (the cooldown), retried while the receiver fails,
//! with its delivery recorded as an event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::*;
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// An HTTP receiver on 127.0.0.1 that answers 503 to its first
/// `fail_first` requests and 200 after, keeping each one it accepted.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    tries: Arc<AtomicUsize>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let tries: Arc<AtomicUsize> = Arc::default();
        let (g, t) = (got.clone(), tries.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (g, t) = (g.clone(), t.clone());
                std::thread::spawn(move || serve(conn, &g, &t, fail_first));
            }
        });
        Receiver { port, got, tries }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

/// Requests on one connection (clients keep it alive), until it closes.
fn serve(conn: std::net::TcpStream, got: &Mutex<Vec<Got>>, tries: &AtomicUsize, fail_first: usize) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = tries.fetch_add(1, Ordering::SeqCst);
        let status = if n < fail_first {
            "503 Service Unavailable"
        } else {
            got.lock().unwrap().push(Got {
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            "200 OK"
        };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn target(name: &str, kind: &str, url: &str, extra: &str) -> String {
    format!(
        "[[alerts]]\nname = \"{name}\"\nkind = \"{kind}\"\nurl = \"{url}\"\nbackoff = \"100ms\"\n{extra}\n"
    )
}

#[test]
fn alert_test_reaches_a_webhook_slack_and_ntfy() {
    let rx = Receiver::start(0);
    let config = format!(
        "{ENGINE}[health]\nlisten = \"off\"\n{}{}{}{}",
        target("hook", "webhook", &rx.url("/hook"), ""),
        target("chat", "slack", &rx.url("/services/T0/B0/SECRET"), ""),
        target("phone", "ntfy", &rx.url("/mill-alerts"), ""),
        py_stage("a", "print('x')", "")
    );
    let p = Project::new(&config);
    let out = p.ok(&["alert", "test"]);
    for line in [
        "ok      hook (webhook, 127.0.0.1:",
        "ok      chat (slack, 127.0.0.1:",
        "ok      phone (ntfy, 127.0.0.1:",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    assert!(
        !out.contains("SECRET"),
        "a target's path is never shown:\n{out}"
    );
    let got = rx.got();
    assert_eq!(got.len(), 3, "{got:?}");
    let by_path = |prefix: &str| {
        got.iter()
            .find(|g| g.path.starts_with(prefix))
            .expect(prefix)
            .clone()
    };
    let hook: Value = serde_json::from_str(&by_path("/hook").body).unwrap();
    assert_eq!(
        (hook["test"].clone(), hook["title"].clone()),
        (Value::Bool(true), "Test alert from ideamill".into())
    );
    let slack: Value = serde_json::from_str(&by_path("/services").body).unwrap();
    assert!(
        slack["text"]
            .as_str()
            .unwrap()
            .starts_with(":information_source: *Test alert from ideamill*"),
        "{slack}"
    );
    let ntfy = by_path("/mill-alerts");
    assert!(
        ntfy.headers
            .iter()
            .any(|(k, v)| k == "title" && v.starts_with("Test alert from ideamill")),
        "{ntfy:?}"
    );
    assert!(ntfy.body.starts_with("If you can read this"), "{ntfy:?}");

    // One target, as JSON.
    let json = p.json(&["alert", "test", "--target", "hook"]);
    assert_eq!(json["deliveries"][0]["target"], "hook");
    assert_eq!(json["deliveries"][0]["delivered"], true);
    assert_eq!(rx.got().len(), 4);

    // A target nobody listens on: exit 2, and what failed.
    let p = Project::new(&format!(
        "{ENGINE}[health]\nlisten = \"off\"\n{}{}",
        target(
            "gone",
            "webhook",
            "http://127.0.0.1:9/secret-path",
            "max_tries = 1"
        ),
        py_stage("a", "print('x')", "")
    ));
    let out = p.run(&["alert", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("FAILED  gone (webhook, 127.0.0.1:9): 127.0.0.1:9: cannot connect"),
        "{stdout}"
    );
    assert!(!stdout.contains("secret-path"), "{stdout}");
    let out = p.run(&["alert", "test", "--target", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no alert target `nope`; targets: gone"));
}

#[test]
fn run_sends_one_alert_for_many_failures_and_retries_a_failing_receiver() {
    // The receiver fails twice: the alert gets through on its third try.
    let rx = Receiver::start(2);
    let config = format!(
        "{ENGINE}[health]\nlisten = \"off\"\n{}{}",
        target(
            "hook",
            "webhook",
            &rx.url("/hook"),
            "on = [\"item_failed\"]\ncooldown = \"1h\""
        ),
        py_stage("work", "import sys\nsys.exit(3)", "max_attempts = 1")
    );
    let p = Project::new(&config);
    for i in 0..3 {
        p.add(&format!("idea {i}"));
    }
    let mut run = p.spawn_run(&[]);
    let sent = wait_until(Duration::from_secs(60), || {
        !rx.got().is_empty()
            && p.json(&["events", "--kind", "alert_sent"])
                .as_array()
                .is_some_and(|a| !a.is_empty())
    });
    assert!(sent, "no alert arrived\n{}", p.logs());
    // All three fail; the cooldown holds the other two back.
    assert!(
        wait_until(Duration::from_secs(30), || {
            p.json(&["list", "--state", "failed"])
                .as_array()
                .is_some_and(|a| a.len() == 3)
        }),
        "{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_millis(1500));
    signal(&run, libc::SIGTERM);
    let status = wait_exit(&mut run, Duration::from_secs(30)).expect("run stops");
    assert!(status.success(), "{}", p.logs());
    let got = rx.got();
    assert_eq!(got.len(), 1, "one alert for three failures: {got:?}");
    assert_eq!(
        rx.tries.load(Ordering::SeqCst),
        3,
        "two failed tries, then the alert"
    );
    let alert: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(alert["key"], "item_failed");
    assert_eq!(alert["triggers"], serde_json::json!(["item_failed"]));
    assert!(
        alert["message"].as_str().unwrap().contains("failed"),
        "{alert}"
    );
    let events = p.json(&["events", "--kind", "alert_sent"]);
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("sent to `hook`")
    );
}
