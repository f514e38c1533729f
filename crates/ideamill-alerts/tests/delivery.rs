//! Alerts delivered to a loopback receiver: once per cooldown, retried when
//! the receiver fails, recorded as events; and the monitor turning recorded
//! events and verdicts into alerts.

// A failed test is a panic: unwrap and expect are how these tests say so,
// helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ideamill_alerts::{Alert, Alerts, MonitorOptions, Severity};
use ideamill_core::Config;
use ideamill_core::config::AlertTrigger;
use ideamill_store::{EventFilter, NewEvent, OpenOptions, Store};
use tokio_util::sync::CancellationToken;

/// A webhook receiver on 127.0.0.1 that answers 503 to its first
/// `fail_first` requests and 200 after, and keeps every request.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    fail_first: Arc<AtomicUsize>,
    tries: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let r = Receiver {
            url: String::new(),
            got: Arc::default(),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            tries: Arc::default(),
        };
        async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
            r.tries.fetch_add(1, Ordering::SeqCst);
            if r.fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            r.got.lock().unwrap().push((headers, body));
            StatusCode::OK
        }
        let app = axum::Router::new()
            .route("/hook/{secret}", axum::routing::post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook/s3cret"),
            ..r
        }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap_or(serde_json::Value::Null))
            .collect()
    }

    async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.got.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "{n} alert(s) expected, got {:?}",
                self.bodies()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.bodies()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    config: Arc<Config>,
    store: Arc<dyn Store>,
}

async fn fixture(alerts: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ideamill.toml");
    let text = format!(
        "[engine]\nheartbeat = \"500ms\"\n{alerts}\n[[stages]]\nname = \"a\"\nkind = \"command\"\ncommand = [\"true\"]\n"
    );
    let config = Arc::new(ideamill_core::config::parse(&text, &path).unwrap());
    let store: Arc<dyn Store> = Arc::from(
        ideamill_store::open(&config.store.url, &OpenOptions::default())
            .await
            .unwrap(),
    );
    Fixture {
        _dir: dir,
        config,
        store,
    }
}

fn webhook(url: &str, extra: &str) -> String {
    format!(
        "[[alerts]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\nbackoff = \"50ms\"\n{extra}\n"
    )
}

fn failed_item(key: &str) -> Alert {
    Alert {
        triggers: vec![AlertTrigger::ItemFailed],
        key: key.into(),
        severity: Severity::Warning,
        title: "Item 1 failed".into(),
        message: "Item 1 failed: boom".into(),
        item_id: Some(1),
        at: 1,
        test: false,
    }
}

async fn events(store: &dyn Store, kind: &str) -> Vec<String> {
    store
        .events(&EventFilter {
            kind: Some(kind.into()),
            limit: 100,
            ..EventFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect()
}

async fn wait_events(store: &dyn Store, kind: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = events(store, kind).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{n} `{kind}` event(s) expected, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits, up to a deadline, until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every delivery dispatched so far has ended: after this,
/// whatever was going to reach the receiver has.
async fn settled(alerts: &Alerts) {
    until("the deliveries in flight to end", || {
        alerts.in_flight() == 0
    })
    .await;
}

/// Waits until the monitor has made two more rounds: the second began
/// after this call, so it saw everything that happened before it.
async fn looked_again(alerts: &Alerts) {
    let looks = alerts.looks();
    until("two more monitor rounds", || alerts.looks() >= looks + 2).await;
}

#[tokio::test]
async fn delivered_once_per_cooldown_and_retried_when_the_receiver_fails() {
    // The receiver fails twice; the third try gets through.
    let rx = Receiver::start(2).await;
    let f = fixture(&webhook(&rx.url, "cooldown = \"1h\"")).await;
    let alerts = Alerts::new(f.config.clone(), f.store.clone()).unwrap();
    alerts.dispatch(&failed_item("item_failed"));
    // The same key within the cooldown is held back, not sent.
    alerts.dispatch(&failed_item("item_failed"));
    alerts.dispatch(&failed_item("item_failed"));
    // Another key is another alert.
    alerts.dispatch(&Alert {
        triggers: vec![AlertTrigger::Budget],
        ..failed_item("budget_reached")
    });
    let got = rx.wait_for(2).await;
    let sent = wait_events(&*f.store, "alert_sent", 2).await;
    assert_eq!(
        rx.tries.load(Ordering::SeqCst),
        4,
        "two failures, then one try each"
    );
    assert_eq!(got.len(), 2, "{got:?}");
    let keys: Vec<&str> = got.iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert!(
        keys.contains(&"item_failed") && keys.contains(&"budget_reached"),
        "{keys:?}"
    );
    assert_eq!(got[0]["title"], "Item 1 failed");
    assert!(
        sent.iter().all(|m| m.contains("sent to `hook`")),
        "{sent:?}"
    );
    // Still nothing more: the two held-back alerts wait for the cooldown.
    settled(&alerts).await;
    assert_eq!(rx.bodies().len(), 2);
    assert_eq!(rx.tries.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn held_back_alerts_are_counted_in_the_next_one() {
    let rx = Receiver::start(0).await;
    let f = fixture(&webhook(&rx.url, "cooldown = \"300ms\"")).await;
    let alerts = Alerts::new(f.config.clone(), f.store.clone()).unwrap();
    alerts.dispatch(&failed_item("item_failed"));
    alerts.dispatch(&failed_item("item_failed"));
    alerts.dispatch(&failed_item("item_failed"));
    // Each dispatch reads the clock before it returns: the cooldown ends
    // 300 ms after this reading at the latest.
    let dispatched = ideamill_sys::clock::now_millis();
    rx.wait_for(1).await;
    until("the cooldown to end", || {
        ideamill_sys::clock::now_millis() >= dispatched + 300
    })
    .await;
    alerts.dispatch(&failed_item("item_failed"));
    let got = rx.wait_for(2).await;
    assert_eq!(got[0]["held_back"], 0);
    assert_eq!(got[1]["held_back"], 2, "{got:?}");
}

#[tokio::test]
async fn a_delivery_that_fails_for_good_becomes_an_event_without_the_url() {
    let rx = Receiver::start(usize::MAX).await;
    let f = fixture(&webhook(&rx.url, "max_tries = 2")).await;
    let alerts = Alerts::new(f.config.clone(), f.store.clone()).unwrap();
    alerts.dispatch(&failed_item("item_failed"));
    let failed = wait_events(&*f.store, "alert_failed", 1).await;
    assert_eq!(rx.tries.load(Ordering::SeqCst), 2);
    assert!(
        failed[0].starts_with(
            "Alert \"Item 1 failed\" could not be sent to `hook` after 2 tries: 127.0.0.1:"
        ) && failed[0].ends_with("answered HTTP 503"),
        "{failed:?}"
    );
    assert!(
        !failed[0].contains("s3cret"),
        "the URL's path stays secret: {failed:?}"
    );
    // A failed alert does not hold the next one back.
    alerts.dispatch(&failed_item("item_failed"));
    wait_events(&*f.store, "alert_failed", 2).await;
    assert_eq!(rx.tries.load(Ordering::SeqCst), 4);

    // Nobody listening at all: an event too, naming no URL.
    let f = fixture(&webhook("http://127.0.0.1:9/hook/s3cret", "max_tries = 1")).await;
    let alerts = Alerts::new(f.config.clone(), f.store.clone()).unwrap();
    alerts.dispatch(&failed_item("item_failed"));
    let failed = wait_events(&*f.store, "alert_failed", 1).await;
    assert!(failed[0].contains("cannot connect"), "{failed:?}");
    assert!(!failed[0].contains("s3cret"), "{failed:?}");
}

#[tokio::test]
async fn targets_hear_only_their_triggers_and_the_test_reaches_all() {
    let rx = Receiver::start(0).await;
    let f = fixture(&webhook(&rx.url, "on = [\"budget\"]")).await;
    let alerts = Alerts::new(f.config.clone(), f.store.clone()).unwrap();
    alerts.dispatch(&failed_item("item_failed"));
    let test = alerts.send_test(None).await;
    assert_eq!(test.len(), 1);
    assert_eq!(test[0].result, Ok(200));
    let got = rx.wait_for(1).await;
    settled(&alerts).await;
    assert_eq!(rx.bodies().len(), 1, "only the test: {got:?}");
    assert_eq!(got[0]["test"], true);
    assert_eq!(got[0]["title"], "Test alert from ideamill");
    assert!(alerts.send_test(Some("nope")).await.is_empty());
}

#[tokio::test]
async fn the_monitor_alerts_new_events_and_verdict_changes() {
    let rx = Receiver::start(0).await;
    let f = fixture(&webhook(&rx.url, "")).await;
    // History is not news: an event from before the first look is not sent.
    let event = |kind: &'static str, message: &str| NewEvent {
        at: ideamill_sys::clock::now_millis(),
        kind,
        item_id: Some(1),
        job_id: None,
        process: None,
        message: message.into(),
    };
    f.store
        .record_event(&event("item_failed", "Item 1 failed: old news"))
        .await
        .unwrap();
    let alerts = Alerts::new(f.config.clone(), f.store.clone()).unwrap();
    let stop = CancellationToken::new();
    let options = MonitorOptions {
        interval: Duration::from_millis(100),
        // Every round judges the verdict, so that one round is enough to
        // know a verdict was judged again.
        verdict_every: Duration::ZERO,
    };
    let monitor = tokio::spawn(alerts.clone().monitor(options, stop.clone()));
    let state = f.config.engine.data_dir.join("alerts.json");
    until("the monitor to save its state", || state.exists()).await;
    f.store
        .record_event(&event(
            "engine_restarted",
            "Engine pid 9 ended: its heartbeat went stale; stalled for 5200 ms; restarting it in 500 ms",
        ))
        .await
        .unwrap();
    // The restart itself, and the verdict it makes DEGRADED (a recent restart).
    let got = rx.wait_for(2).await;
    let stall = got
        .iter()
        .find(|b| b["key"] == "engine_stalled")
        .expect("a stall alert");
    assert_eq!(stall["severity"], "critical");
    assert_eq!(stall["triggers"], serde_json::json!(["stall", "restart"]));
    assert!(
        got.iter().any(|b| b["key"] == "verdict:DEGRADED"),
        "{got:?}"
    );

    // Work waits and no engine runs: DOWN, said once.
    f.store
        .add_items(
            &[ideamill_store::NewItem {
                text: "x".into(),
                metadata: serde_json::json!({}),
            }],
            &ideamill_core::machine::first_job(&f.config),
            ideamill_sys::clock::now_millis(),
        )
        .await
        .unwrap();
    let got = rx.wait_for(3).await;
    assert_eq!(got[2]["key"], "verdict:DOWN");
    assert!(
        got[2]["message"].as_str().unwrap().contains("[no_engine]"),
        "{got:?}"
    );
    looked_again(&alerts).await;
    settled(&alerts).await;
    assert_eq!(
        rx.bodies().len(),
        3,
        "a verdict that stays is not said again"
    );
    stop.cancel();
    monitor.await.unwrap();

    // A new monitor (the engine restarted) neither repeats nor misses.
    f.store
        .record_event(&event(
            "budget_reached",
            "Item 1 paused at stage `a`: day_usd reached",
        ))
        .await
        .unwrap();
    let alerts = Alerts::new(f.config.clone(), f.store.clone()).unwrap();
    let stop = CancellationToken::new();
    let monitor = tokio::spawn(alerts.clone().monitor(options, stop.clone()));
    let got = rx.wait_for(4).await;
    assert_eq!(got[3]["key"], "budget_reached");
    looked_again(&alerts).await;
    settled(&alerts).await;
    assert_eq!(rx.bodies().len(), 4, "{:?}", rx.bodies());
    stop.cancel();
    monitor.await.unwrap();
}
