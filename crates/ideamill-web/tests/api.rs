//! The HTTP server through its router, without a socket
//! (`app(state).oneshot(request)`): the JSON API with good and bad input and
//! pagination, access with and without the token, cross-site checks, the
//! pages and their live fragments, the probes; and every endpoint's answers
//! against `openapi.json` (`schema/` checks them).

// A failed test is a panic: unwrap and expect are how these tests say so,
// helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod schema;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ideamill_health::{Health, LogRing};
use ideamill_store::Store;
use ideamill_web::{Access, AppState, app};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    dir: tempfile::TempDir,
    state: AppState,
    store: Arc<dyn Store>,
    health: Arc<Health>,
}

const CONFIG: &str = "[engine]\nheartbeat = \"500ms\"\n\
    [[stages]]\nname = \"draft\"\nkind = \"command\"\ncommand = [\"true\"]\n\
    [[stages]]\nname = \"review\"\nkind = \"command\"\ncommand = [\"true\"]\n\
    gate = { retry_from = \"draft\", max_rounds = 3 }\n";

async fn fixture_with(access: Access) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ideamill.toml");
    let config = Arc::new(ideamill_core::config::parse(CONFIG, &path).unwrap());
    let store: Arc<dyn Store> = Arc::from(
        ideamill_store::open(&config.store.url, &Default::default())
            .await
            .unwrap(),
    );
    let health = Arc::new(Health::new(&config, LogRing::new(10)));
    let state = AppState::new(config, store.clone(), health.clone(), access);
    Fixture {
        dir,
        state,
        store,
        health,
    }
}

async fn fixture() -> Fixture {
    fixture_with(Access::Open).await
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// An error answer's status and code.
    fn error(&self) -> (StatusCode, String) {
        let v = self.json();
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {}", self.body));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        (self.status, code.to_string())
    }
}

async fn send(app: Router, request: Request<Body>) -> Answer {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

impl Fixture {
    fn app(&self) -> Router {
        app(self.state.clone())
    }

    async fn get(&self, path: &str) -> Answer {
        send(self.app(), Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, content_type: &str, body: &str) -> Answer {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, content_type)
            .header("x-requested-with", "test")
            .body(Body::from(body.to_string()))
            .unwrap();
        send(self.app(), request).await
    }

    async fn post_json(&self, path: &str, body: Value) -> Answer {
        self.post(path, "application/json", &body.to_string()).await
    }

    async fn add(&self, ideas: &[&str]) -> Vec<i64> {
        let a = self.post_json("/api/items", json!(ideas)).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.json()["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }
}

/// Finish a claimed job as the last stage's success: the item is done.
async fn finish_done(store: &dyn Store, job: ideamill_store::ClaimedJob) {
    use ideamill_core::AttemptOutcome;
    use ideamill_core::machine::Transition;
    let finish = ideamill_store::Finish {
        owner: "w".into(),
        outcome: AttemptOutcome::Succeeded,
        started_at: job.claimed_at,
        finished_at: job.claimed_at + 5,
        exit_code: Some(0),
        error: None,
        output: Some("ok".into()),
        stderr: None,
        usage: None,
        transition: Transition::Advance {
            output: "ok".into(),
            next: None,
        },
        round_hash: None,
        job,
    };
    store.finish(&[finish]).await.unwrap().remove(0).unwrap();
}

#[tokio::test]
async fn add_ideas_in_every_format_and_refuse_bad_input() {
    let f = fixture().await;
    assert_eq!(
        f.add(&["a CLI that converts CSV to JSON", "a moon phase page"])
            .await,
        [1, 2]
    );
    let a = f
        .post_json(
            "/api/items",
            json!({"text": "with metadata", "priority": "high"}),
        )
        .await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::CREATED, json!({"ids": [3]}))
    );
    let item = f.get("/api/items/3").await.json();
    assert_eq!(item["item"]["metadata"], json!({"priority": "high"}));
    let a = f
        .post("/api/items", "text/plain; charset=utf-8", "one\n\ntwo\n")
        .await;
    assert_eq!(a.json()["ids"], json!([4, 5]));

    let bad = [
        (
            "application/json",
            "[1, 2",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "application/json",
            "[]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "application/json",
            "{\"colour\": 1}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "application/json",
            "[\"   \"]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "text/plain",
            "\n \n",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            "image/png",
            "x",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "text/plain",
            "\u{0}\u{1}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
    ];
    for (content_type, body, status, code) in bad {
        let a = f.post("/api/items", content_type, body).await;
        assert_eq!(
            a.error(),
            (status, code.to_string()),
            "{content_type} {body:?}: {}",
            a.body
        );
    }
    let huge = "x".repeat(5 * 1024 * 1024);
    let a = f.post("/api/items", "text/plain", &huge).await;
    assert_eq!(
        a.error(),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    let long = format!("[\"{}\"]", "y".repeat(300 * 1024));
    let a = f.post("/api/items", "application/json", &long).await;
    assert_eq!(a.error().0, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
    // Nothing bad was added.
    let list = f.get("/api/items?limit=100").await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn list_filters_searches_and_pages() {
    let f = fixture().await;
    let texts: Vec<String> = (1..=7)
        .map(|i| format!("idea number {i} about csv"))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    f.add(&refs).await;
    f.add(&["something about json"]).await;

    let page = f.get("/api/items?limit=3").await.json();
    let ids = |v: &Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&page), [8, 7, 6]);
    assert_eq!(page["next_before"], 6);
    let page = f.get("/api/items?limit=3&before=6").await.json();
    assert_eq!(ids(&page), [5, 4, 3]);
    let page = f.get("/api/items?limit=3&before=3").await.json();
    assert_eq!(
        (ids(&page), page["next_before"].clone()),
        (vec![2, 1], Value::Null)
    );

    let found = f.get("/api/items?q=CSV+idea&limit=2").await.json();
    assert_eq!(ids(&found), [7, 6]);
    assert_eq!(found["next_before"], 6);
    let found = f.get("/api/items?q=json").await.json();
    assert_eq!(ids(&found), [8]);
    assert_eq!(found["items"][0]["display_state"], "queued");
    assert_eq!(
        ids(&f.get("/api/items?q=%21%21%21").await.json()),
        Vec::<i64>::new()
    );

    f.post_json("/api/items/8/cancel", json!({})).await;
    assert_eq!(ids(&f.get("/api/items?state=cancelled").await.json()), [8]);
    assert_eq!(
        ids(&f.get("/api/items?state=queued&q=json").await.json()),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(&f.get("/api/items?stage=draft&limit=1").await.json()),
        [8]
    );
    // Empty parameters (as forms send them) mean no filter.
    assert_eq!(
        ids(&f.get("/api/items?state=&stage=&q=&limit=2").await.json()),
        [8, 7]
    );

    for bad in [
        "/api/items?state=nope",
        "/api/items?limit=0",
        "/api/items?limit=501",
        "/api/items?limit=ten",
        "/api/items?before=-1",
        "/api/items?colour=red",
    ] {
        assert_eq!(
            f.get(bad).await.error(),
            (StatusCode::BAD_REQUEST, "bad_request".into()),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn one_item_its_files_retry_and_cancel() {
    let f = fixture().await;
    f.add(&["write hello.py"]).await;
    let ws = f.dir.path().join("workspace/1/src");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("hello.py"), "print('hi')\n").unwrap();
    std::fs::write(f.dir.path().join("secret.txt"), "s3cret").unwrap();
    std::os::unix::fs::symlink(f.dir.path().join("secret.txt"), ws.join("leak")).unwrap();
    // A FIFO nobody writes to: opening it plainly would block forever.
    let made = std::process::Command::new("mkfifo")
        .arg(ws.join("pipe"))
        .status()
        .unwrap();
    assert!(made.success());

    let item = f.get("/api/items/1").await.json();
    assert_eq!(item["item"]["text"], "write hello.py");
    assert_eq!(item["display_state"], "queued");
    assert_eq!(item["jobs"][0]["stage"], "draft");
    // Only regular files are listed: not the link, not the FIFO.
    assert_eq!(
        item["files"],
        json!([{"path": "src/hello.py", "bytes": 12}])
    );
    let patience = std::time::Duration::from_secs(10);
    let fifo = tokio::time::timeout(patience, f.get("/api/items/1/files/src/pipe"))
        .await
        .expect("reading a FIFO must not block");
    assert_eq!(fifo.error().0, StatusCode::NOT_FOUND);
    let page = tokio::time::timeout(patience, f.get("/items/1"))
        .await
        .expect("the item page must not block on a FIFO");
    assert_eq!(page.status, StatusCode::OK);
    assert!(item["usage"]["cost"].is_number());

    let file = f.get("/api/items/1/files/src/hello.py").await;
    assert_eq!(
        (file.status, file.body.as_str()),
        (StatusCode::OK, "print('hi')\n")
    );
    assert_eq!(
        file.headers[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        f.get("/api/items/1/files/src/leak").await.error(),
        (StatusCode::FORBIDDEN, "outside_workspace".into())
    );
    assert_eq!(
        f.get("/api/items/1/files/../secret.txt").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.get("/api/items/1/files/nope.py").await.error().0,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        f.get("/api/items/abc").await.error(),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    assert_eq!(
        f.get("/api/items/0").await.error().0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.get("/api/items/99").await.error(),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    assert_eq!(
        f.post_json("/api/items/99/retry", json!({}))
            .await
            .error()
            .0,
        StatusCode::NOT_FOUND
    );

    let a = f.post("/api/items/1/cancel", "application/json", "").await;
    assert_eq!(
        a.json(),
        json!({"id": 1, "cancelled": true, "was_running": false})
    );
    assert_eq!(
        f.get("/api/items/1").await.json()["display_state"],
        "cancelled"
    );
    let again = f.post("/api/items/1/cancel", "application/json", "").await;
    assert_eq!(again.error().0, StatusCode::CONFLICT, "{}", again.body);

    let a = f
        .post_json("/api/items/1/retry", json!({"from": "nope"}))
        .await;
    assert_eq!(
        a.error(),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid".into())
    );
    assert!(a.body.contains("stages: draft, review"), "{}", a.body);
    assert_eq!(
        f.post("/api/items/1/retry", "application/json", "{\"form\": 1}")
            .await
            .error()
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.post("/api/items/1/retry", "application/json", "[")
            .await
            .error()
            .0,
        StatusCode::BAD_REQUEST
    );
    let a = f.post("/api/items/1/retry", "application/json", "").await;
    assert_eq!(a.json(), json!({"id": 1, "stage": "draft", "round": 1}));
    assert_eq!(
        f.get("/api/items/1").await.json()["display_state"],
        "queued"
    );
    // A done item needs `from`.
    let now = ideamill_sys::clock::now_millis();
    let job = f
        .store
        .claim("draft", 1, "w", now, now + 60_000)
        .await
        .unwrap()
        .remove(0);
    finish_done(&*f.store, job).await;
    assert_eq!(f.get("/api/items/1").await.json()["display_state"], "done");
    let a = f.post_json("/api/items/1/retry", json!({})).await;
    assert_eq!(
        a.error(),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid".into())
    );
    assert!(
        a.body.contains("name the stage to start from"),
        "{}",
        a.body
    );
    let a = f
        .post_json("/api/items/1/retry", json!({"from": "review"}))
        .await;
    assert_eq!(a.json(), json!({"id": 1, "stage": "review", "round": 1}));
}

/// Issue 13: an item failed for the infrastructure says so in lists and in
/// its story, lists filter by it, and `POST /api/items/retry` with
/// `{"failed": "infra"}` runs only those again.
#[tokio::test]
async fn issue_13_infra_failures_are_marked_and_retried_alone() {
    use ideamill_core::machine::Transition;
    use ideamill_core::{AttemptOutcome, FailureClass};
    let f = fixture().await;
    assert_eq!(f.add(&["infra", "quality", "done"]).await, [1, 2, 3]);
    let now = ideamill_sys::clock::now_millis();
    let jobs = f
        .store
        .claim("draft", 3, "w", now, now + 60_000)
        .await
        .unwrap();
    for job in jobs {
        let class = match job.item_id {
            1 => FailureClass::Infra,
            2 => FailureClass::Quality,
            _ => {
                finish_done(&*f.store, job).await;
                continue;
            }
        };
        let end = Ending {
            outcome: AttemptOutcome::Error,
            transition: Transition::FailItem {
                reason: format!("failed for {class}"),
                feedback: None,
                class,
            },
            error: Some("e"),
            usage: None,
        };
        settle(&*f.store, job, end).await;
    }
    let classes = |page: Value| -> Vec<(i64, Value)> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].as_i64().unwrap(), i["failure_class"].clone()))
            .collect()
    };
    assert_eq!(
        classes(f.get("/api/items").await.json()),
        [(3, Value::Null), (2, json!("quality")), (1, json!("infra"))]
    );
    assert_eq!(
        classes(f.get("/api/items?failed=infra").await.json()),
        [(1, json!("infra"))]
    );
    assert_eq!(
        f.get("/api/items/2").await.json()["item"]["failure_class"],
        "quality"
    );
    let a = f.get("/api/items?failed=model").await;
    assert_eq!(a.error(), (StatusCode::BAD_REQUEST, "bad_request".into()));

    // The pages say it too: the list's badge, the state filter's choice and
    // the item's own page.
    let list = f.get("/items").await;
    assert_eq!(list.status, StatusCode::OK);
    for class in ["infra", "quality"] {
        assert!(
            list.body.contains(&format!(">failed ({class})</span>")),
            "{}",
            list.body
        );
    }
    let infra = f.get("/items?state=failed:infra").await;
    assert_eq!(infra.status, StatusCode::OK, "{}", infra.body);
    assert!(infra.body.contains("href=\"/items/1\""), "{}", infra.body);
    assert!(!infra.body.contains("href=\"/items/2\""), "{}", infra.body);
    assert!(
        infra
            .body
            .contains("<option value=\"failed:infra\" selected>failed: infra</option>"),
        "{}",
        infra.body
    );
    assert!(!infra.body.contains("<option value=\"failed\" selected>"));
    let results = f.get("/ui/items?state=failed:infra").await;
    assert_eq!(
        results.headers["hx-replace-url"],
        "/items?state=failed&failed=infra"
    );
    assert!(
        !results.body.contains("href=\"/items/2\""),
        "{}",
        results.body
    );
    assert_eq!(
        f.get("/items?state=failed:model").await.status,
        StatusCode::BAD_REQUEST
    );
    let page = f.get("/items/1").await;
    assert!(
        page.body.contains(
            "failure: infra — the provider or the host failed, not the model&#x27;s work"
        ),
        "{}",
        page.body
    );
    assert!(f.get("/items/2").await.body.contains("failure: quality — "));
    assert!(!f.get("/items/3").await.body.contains("failure: "));

    // One item, only if it failed of the class named.
    let a = f
        .post_json("/api/items/2/retry", json!({"failed": "infra"}))
        .await;
    assert_eq!(a.error(), (StatusCode::CONFLICT, "conflict".into()));
    assert!(a.body.contains("failed for quality"), "{}", a.body);

    let a = f
        .post_json("/api/items/retry", json!({"failed": "infra"}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.json(),
        json!({"retried": [{"id": 1, "stage": "draft", "round": 1}]})
    );
    let one = f.get("/api/items/1").await.json();
    assert_eq!(
        (&one["item"]["state"], &one["item"]["failure_class"]),
        (&json!("active"), &Value::Null)
    );
    assert!(!f.get("/items/1").await.body.contains("failure: "));
    let two = f.get("/api/items/2").await.json();
    assert_eq!(
        (&two["item"]["state"], &two["item"]["failure_class"]),
        (&json!("failed"), &json!("quality"))
    );
    // Nothing left to retry: an empty list, not an error.
    let a = f
        .post_json("/api/items/retry", json!({"failed": "infra"}))
        .await;
    assert_eq!(a.json(), json!({"retried": []}));
    let a = f.post_json("/api/items/retry", json!({})).await;
    assert_eq!(a.error(), (StatusCode::BAD_REQUEST, "bad_request".into()));
}

#[tokio::test]
async fn status_processes_events_activity_and_the_document() {
    let f = fixture().await;
    f.add(&["x"]).await;
    let status = f.get("/api/status").await.json();
    // Work waits and no engine runs.
    assert_eq!(status["health"]["verdict"], "DOWN");
    assert_eq!(status["health"]["reasons"][0]["code"], "no_engine");
    assert_eq!(status["status"]["items"]["active"], 1);
    assert_eq!(
        f.get("/api/processes").await.json(),
        json!({"processes": []})
    );
    f.post_json("/api/items/1/cancel", json!({})).await;
    let events = f.get("/api/events?limit=5").await.json();
    assert_eq!(events["events"][0]["kind"], "item_cancelled");
    assert_eq!(
        f.get("/api/events?item=2").await.json()["events"],
        json!([])
    );
    assert_eq!(
        f.get("/api/events?limit=5000").await.error().0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.get("/api/events?item=x").await.error().0,
        StatusCode::BAD_REQUEST
    );
    let activity = f.get("/api/activity?hours=1").await.json();
    assert_eq!(activity["bucket_ms"], 60_000);
    assert!(activity["buckets"].as_array().unwrap().len() >= 60);
    assert_eq!(
        f.get("/api/activity?hours=0").await.error().0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.get("/api/activity?hours=999").await.error().0,
        StatusCode::BAD_REQUEST
    );

    let doc = f.get("/api/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        f.get("/api/nope").await.error(),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    // A method no route takes is that, even without the headers a
    // state-changing request needs (found by bench soak: it was 403).
    let a = send(
        f.app(),
        Request::delete("/api/items").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        a.error(),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );
}

/// `--role web` runs no engine: ready once the store answers (issue 15:
/// its Kubernetes readiness probe never passed while it waited for one).
#[tokio::test]
async fn readyz_of_a_process_without_an_engine_waits_for_the_store_only() {
    let f = fixture().await;
    let path = f.dir.path().join("ideamill.toml");
    let config = Arc::new(ideamill_core::config::parse(CONFIG, &path).unwrap());
    let web = AppState::without_engine(config, f.store.clone(), f.health.clone(), Access::Open);
    let a = send(
        app(web),
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("no engine"), "{}", a.body);
}

#[tokio::test]
async fn probes_and_metrics() {
    let f = fixture().await;
    let a = f.get("/healthz").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // Not registered yet: alive but not ready.
    assert_eq!(
        f.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let metrics = f.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    for series in [
        "ideamill_items{state=\"active\"} 0",
        "ideamill_queue_jobs{stage=\"draft\",state=\"queued\"} 0",
        "ideamill_jobs_started_total{stage=\"draft\"} 0",
        "ideamill_stalls_detected_total 0",
        "# TYPE ideamill_llm_requests_total counter",
    ] {
        assert!(
            metrics.body.contains(series),
            "{series} missing:\n{}",
            metrics.body
        );
    }
}

#[tokio::test]
async fn with_a_token_everything_but_the_probes_needs_it() {
    let f = fixture_with(Access::with_token("s3cret-token".into())).await;
    assert_eq!(
        f.get("/api/items").await.error(),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    assert_eq!(f.get("/metrics").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(f.get("/assets/app.css").await.status, StatusCode::OK);
    let page = f.get("/items?state=failed").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page.headers[header::LOCATION],
        "/login?next=%2Fitems%3Fstate%3Dfailed"
    );
    assert_eq!(f.get("/login").await.status, StatusCode::OK);
    // A write without the token is refused before anything happens.
    let a = f.post_json("/api/items", json!(["x"])).await;
    assert_eq!(a.error(), (StatusCode::UNAUTHORIZED, "unauthorized".into()));

    let bearer =
        |r: axum::http::request::Builder| r.header(header::AUTHORIZATION, "Bearer s3cret-token");
    let a = send(
        f.app(),
        bearer(Request::get("/api/items"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = send(
        f.app(),
        bearer(Request::post("/api/items"))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("from curl"))
            .unwrap(),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "a bearer request is not cross-site: {}",
        a.body
    );
    let a = send(
        f.app(),
        Request::get("/api/items")
            .header(header::AUTHORIZATION, "Bearer wrong")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // The login form: a wrong token, then the right one for a cookie.
    let login = |token: &str| {
        Request::post("/login")
            .header(header::HOST, "mill.example:9464")
            .header(header::ORIGIN, "http://mill.example:9464")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}&next=%2Fitems")))
            .unwrap()
    };
    let a = send(f.app(), login("nope")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = send(f.app(), login("s3cret-token")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers[header::LOCATION], "/items");
    let cookie = a.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("s3cret-token"),
        "the cookie holds a hash, not the token"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let a = send(
        f.app(),
        Request::get("/items")
            .header(header::COOKIE, &session)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("from curl"));
    // The cookie alone does not let a cross-site form change anything.
    let forged = Request::post("/api/items/1/cancel")
        .header(header::COOKIE, &session)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(f.app(), forged).await.error(),
        (StatusCode::FORBIDDEN, "cross_site".into())
    );
    let forged = Request::post("/api/items/1/cancel")
        .header(header::COOKIE, &session)
        .header(header::HOST, "mill.example:9464")
        .header(header::ORIGIN, "https://evil.example")
        .header("hx-request", "true")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(f.app(), forged).await.error(),
        (StatusCode::FORBIDDEN, "cross_site".into())
    );
    let htmx = Request::post("/api/items/1/cancel")
        .header(header::COOKIE, &session)
        .header("hx-request", "true")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(f.app(), htmx).await.status, StatusCode::OK);
    assert_eq!(f.store.item(1).await.unwrap().display_state, "cancelled");
}

#[tokio::test]
async fn a_proxy_in_front_of_an_open_server_gets_nothing_but_the_probes() {
    let f = fixture().await;
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7;host=mill.example"),
        ("x-forwarded-host", "mill.example"),
        ("x-real-ip", "203.0.113.7"),
    ] {
        let proxied = |path: &str| {
            Request::get(path)
                .header(header::HOST, "127.0.0.1:9464")
                .header(name, value)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(
            send(f.app(), proxied("/api/items")).await.error(),
            (StatusCode::FORBIDDEN, "proxied_without_token".into()),
            "{name}"
        );
        assert_eq!(
            send(f.app(), proxied("/")).await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            send(f.app(), proxied("/healthz")).await.status,
            StatusCode::OK
        );
    }
    // A public [web] url means a proxy: the token becomes required.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ideamill.toml");
    let text = format!("{CONFIG}[web]\nurl = \"https://mill.example\"\n");
    let config = ideamill_core::config::parse(&text, &path).unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:9464".parse().unwrap();
    let refused = Access::for_listen(&config, &loopback).unwrap_err();
    assert!(refused.contains("[web] url is set"), "{refused}");
    ideamill_web::auth::create_token_file(&config.web.token_file).unwrap();
    assert!(!Access::for_listen(&config, &loopback).unwrap().is_open());
}

#[tokio::test]
async fn on_loopback_only_loopback_names_are_answered() {
    let f = fixture().await;
    let with_host = |host: &'static str| {
        Request::get("/api/items")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        send(f.app(), with_host("127.0.0.1:9464")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(f.app(), with_host("localhost:9464")).await.status,
        StatusCode::OK
    );
    // A page whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing.
    let a = send(f.app(), with_host("evil.example:9464")).await;
    assert_eq!(a.error(), (StatusCode::FORBIDDEN, "forbidden_host".into()));
    // No token needed, but a plain cross-site form is still refused.
    let form = Request::post("/api/items")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("sneaky"))
        .unwrap();
    assert_eq!(
        send(f.app(), form).await.error(),
        (StatusCode::FORBIDDEN, "cross_site".into())
    );
}

#[tokio::test]
async fn pages_render_escaped_and_fragments_follow_changes() {
    let f = fixture().await;
    f.add(&["<script>alert(1)</script> a CLI"]).await;
    let overview = f.get("/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert_eq!(
        overview.headers[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert!(
        overview.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(
        overview
            .body
            .contains("Down — no work can be done until someone acts"),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("no_engine"));
    assert!(overview.body.contains("id=\"chart-throughput\""));
    let items = f.get("/items?q=cli").await;
    assert!(
        items
            .body
            .contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; a CLI"),
        "{}",
        items.body
    );
    assert!(!items.body.contains("<script>alert(1)"));
    let results = f.get("/ui/items?q=cli").await;
    assert!(
        results.body.starts_with("<div id=\"results\""),
        "{}",
        results.body
    );
    assert_eq!(results.headers["hx-replace-url"], "/items?q=cli");

    let page = f.get("/items/1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"cancel\""));
    let version = page
        .body
        .split("hx-get=\"/ui/items/1?v=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let same = f.get(&format!("/ui/items/1?v={version}")).await;
    assert_eq!(same.status, StatusCode::NO_CONTENT, "nothing changed");
    let cancel = Request::post("/ui/items/1/cancel")
        .header("hx-request", "true")
        .body(Body::empty())
        .unwrap();
    let a = send(f.app(), cancel).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains(">cancelled<"), "{}", a.body);
    assert!(a.body.contains("id=\"retry\""));
    let changed = f.get(&format!("/ui/items/1?v={version}")).await;
    assert_eq!(changed.status, StatusCode::OK);

    let add = Request::post("/add")
        .header("hx-request", "true")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("ideas=first+idea%0Asecond+idea&format=lines"))
        .unwrap();
    let a = send(f.app(), add).await;
    assert!(
        a.body.contains("Added 2 items") && a.body.contains("href=\"/items/3\""),
        "{}",
        a.body
    );
    let empty = Request::post("/add")
        .header("hx-request", "true")
        .body(Body::from("ideas=%0A&format=lines"))
        .unwrap();
    assert_eq!(
        send(f.app(), empty).await.error().0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let missing = f.get("/items/77").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("no item with id 77"));
    let nowhere = f.get("/nowhere").await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert!(nowhere.body.contains("<!doctype html>"));
    assert_eq!(f.get("/add").await.status, StatusCode::OK);
    for asset in [
        "app.css",
        "app.js",
        "vendor/htmx/htmx.min.js",
        "vendor/uplot/uPlot.iife.min.js",
        "vendor/uplot/LICENSE",
    ] {
        let a = f.get(&format!("/assets/{asset}")).await;
        assert_eq!(a.status, StatusCode::OK, "{asset}");
        let etag = a.headers[header::ETAG].clone();
        let again = send(
            f.app(),
            Request::get(format!("/assets/{asset}"))
                .header(header::IF_NONE_MATCH, etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    }
}

#[tokio::test]
async fn the_stream_says_what_is_at_once() {
    use futures_util::StreamExt;
    let f = fixture().await;
    let response = f
        .app()
        .oneshot(Request::get("/api/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
        .await
        .expect("a first event")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.starts_with("event: change\ndata: {\"seq\":"), "{text}");
    // Then the poller's first look: the verdict, without reloading anything.
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
        .await
        .expect("a second event")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&next);
    assert!(text.contains("\"verdict\":\"HEALTHY\""), "{text}");
}

/// One answer, with the documented path and method it answers for.
struct Call {
    method: &'static str,
    template: &'static str,
    path: String,
    answer: Answer,
}

/// What one claimed job ends with, for `settle`.
struct Ending {
    outcome: ideamill_core::AttemptOutcome,
    transition: ideamill_core::machine::Transition,
    error: Option<&'static str>,
    usage: Option<ideamill_core::Usage>,
}

async fn settle(store: &dyn Store, job: ideamill_store::ClaimedJob, end: Ending) {
    let finish = ideamill_store::Finish {
        owner: "p1".into(),
        outcome: end.outcome,
        // Finished when claimed, so that what follows is runnable at once.
        started_at: job.claimed_at - 7,
        finished_at: job.claimed_at,
        exit_code: Some(if end.error.is_some() { 1 } else { 0 }),
        error: end.error.map(str::to_string),
        output: Some("out".into()),
        stderr: end.error.map(|_| "a trace".to_string()),
        usage: end.usage,
        transition: end.transition,
        round_hash: None,
        job,
    };
    store.finish(&[finish]).await.unwrap().remove(0).unwrap();
}

/// A store with something in every field the API shows: an item that
/// passed a stage (with model usage), was sent back by a gate and runs
/// again; a failed one; a cancelled one; an engine process; a workspace.
async fn populate(f: &Fixture) {
    use ideamill_core::AttemptOutcome;
    use ideamill_core::machine::{NextJob, Transition};
    assert_eq!(
        f.add(&["csv to json", "a moon page", "a timer"]).await,
        [1, 2, 3]
    );
    let now = ideamill_sys::clock::now_millis();
    let process = ideamill_store::ProcessInfo {
        id: "p1".into(),
        host: "here".into(),
        pid: 42,
        version: "test".into(),
        started_at: now,
        last_beat_at: now,
        stopped_at: None,
        held_jobs: 0,
    };
    f.store.register_process(&process).await.unwrap();
    let claim = |stage: &'static str, limit| {
        let store = f.store.clone();
        async move {
            let now = ideamill_sys::clock::now_millis();
            store
                .claim(stage, limit, "p1", now, now + 60_000)
                .await
                .unwrap()
        }
    };
    let next = |stage: &str, round| NextJob {
        stage: stage.into(),
        round,
        max_attempts: 3,
    };
    for job in claim("draft", 2).await {
        let end = if job.item_id == 1 {
            Ending {
                outcome: AttemptOutcome::Succeeded,
                transition: Transition::Advance {
                    output: "a draft".into(),
                    next: Some(next("review", 1)),
                },
                error: None,
                usage: Some(ideamill_core::Usage {
                    provider: "local".into(),
                    model: "small".into(),
                    prompt_tokens: 10,
                    completion_tokens: 5,
                    cost: 0.25,
                    counted: false,
                    unknown: false,
                }),
            }
        } else {
            Ending {
                outcome: AttemptOutcome::Permanent,
                transition: Transition::FailItem {
                    reason: "boom".into(),
                    feedback: None,
                    class: ideamill_core::FailureClass::Infra,
                },
                error: Some("boom"),
                usage: None,
            }
        };
        settle(&*f.store, job, end).await;
    }
    let review = claim("review", 1).await.remove(0);
    let end = Ending {
        outcome: AttemptOutcome::Rejected,
        transition: Transition::SendBack {
            feedback: "needs tests".into(),
            to: next("draft", 2),
        },
        error: None,
        usage: None,
    };
    settle(&*f.store, review, end).await;
    // Round 2 of the draft stays running.
    assert_eq!(claim("draft", 1).await.len(), 1);
    let ws = f.dir.path().join("workspace/1/src");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("main.py"), "print(1)\n").unwrap();
    std::fs::write(f.dir.path().join("secret.txt"), "s3cret").unwrap();
    std::os::unix::fs::symlink(f.dir.path().join("secret.txt"), ws.join("leak")).unwrap();
}

/// Every documented endpoint, answering well and badly.
async fn exercise(f: &Fixture) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut call = async |method: &'static str,
                          template: &'static str,
                          path: &str,
                          content: Option<(&str, String)>| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-requested-with", "test");
        let body = match content {
            Some((content_type, body)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                Body::from(body)
            }
            None => Body::empty(),
        };
        let answer = send(f.app(), request.body(body).unwrap()).await;
        calls.push(Call {
            method,
            template,
            path: path.to_string(),
            answer,
        });
    };
    let json = |v: Value| Some(("application/json", v.to_string()));
    let text = |t: &str| Some(("text/plain", t.to_string()));

    call("GET", "/api/openapi.json", "/api/openapi.json", None).await;
    call("GET", "/healthz", "/healthz", None).await;
    call("GET", "/readyz", "/readyz", None).await;
    call("GET", "/metrics", "/metrics", None).await;

    let items = "/api/items";
    call(
        "POST",
        items,
        items,
        json(json!(["a", {"text": "b", "tag": 1}])),
    )
    .await;
    call("POST", items, items, text("one\ntwo\n")).await;
    call(
        "POST",
        items,
        items,
        Some(("application/x-ndjson", "\"c\"\n".into())),
    )
    .await;
    call(
        "POST",
        items,
        items,
        Some(("text/markdown", "# d\n".into())),
    )
    .await;
    call("POST", items, items, json(json!([]))).await;
    call("POST", items, items, Some(("image/png", "x".into()))).await;
    call("POST", items, items, text(&"x".repeat(5 << 20))).await;
    for path in [
        "/api/items",
        "/api/items?limit=2",
        "/api/items?state=failed",
        "/api/items?failed=infra",
        "/api/items?failed=nope",
        "/api/items?q=moon",
        "/api/items?state=nope",
        "/api/items?colour=red",
    ] {
        call("GET", items, path, None).await;
    }

    let item = "/api/items/{id}";
    for path in [
        "/api/items/1",
        "/api/items/2",
        "/api/items/abc",
        "/api/items/99",
    ] {
        call("GET", item, path, None).await;
    }
    let file = "/api/items/{id}/files/{path}";
    for path in [
        "/api/items/1/files/src/main.py",
        "/api/items/1/files/src/leak",
        "/api/items/1/files/../secret.txt",
        "/api/items/1/files/nope.py",
        "/api/items/x/files/a",
    ] {
        call("GET", file, path, None).await;
    }

    let retry = "/api/items/{id}/retry";
    call(
        "POST",
        retry,
        "/api/items/2/retry",
        json(json!({"failed": "quality"})),
    )
    .await;
    call(
        "POST",
        retry,
        "/api/items/2/retry",
        json(json!({"failed": "nope"})),
    )
    .await;
    let retry_all = "/api/items/retry";
    call(
        "POST",
        retry_all,
        retry_all,
        json(json!({"failed": "nope"})),
    )
    .await;
    call(
        "POST",
        retry_all,
        retry_all,
        json(json!({"failed": "infra"})),
    )
    .await;
    call("POST", retry, "/api/items/2/retry", None).await;
    call("POST", retry, "/api/items/1/retry", None).await;
    call("POST", retry, "/api/items/3/retry", None).await;
    call("POST", retry, "/api/items/99/retry", None).await;
    call("POST", retry, "/api/items/abc/retry", None).await;
    call(
        "POST",
        retry,
        "/api/items/2/retry",
        json(json!({"form": 1})),
    )
    .await;
    call(
        "POST",
        retry,
        "/api/items/2/retry",
        json(json!({"from": "nope"})),
    )
    .await;

    let cancel = "/api/items/{id}/cancel";
    call("POST", cancel, "/api/items/3/cancel", None).await;
    call("POST", cancel, "/api/items/3/cancel", None).await;
    call("POST", cancel, "/api/items/1/cancel", None).await;
    call("POST", cancel, "/api/items/99/cancel", None).await;
    call("POST", cancel, "/api/items/abc/cancel", None).await;
    call("GET", item, "/api/items/1", None).await;

    call("GET", "/api/status", "/api/status", None).await;
    for path in [
        "/api/events",
        "/api/events?item=1&limit=3",
        "/api/events?limit=0",
    ] {
        call("GET", "/api/events", path, None).await;
    }
    for path in [
        "/api/activity",
        "/api/activity?hours=1",
        "/api/activity?hours=0",
    ] {
        call("GET", "/api/activity", path, None).await;
    }
    call("GET", "/api/qa", "/api/qa", None).await;
    call("GET", "/api/processes", "/api/processes", None).await;
    f.health.set_process(&f.store.processes().await.unwrap()[0]);
    call("GET", "/readyz", "/readyz", None).await;
    // A store that is gone: what every store-backed endpoint then answers.
    f.store.close().await;
    call("GET", "/api/processes", "/api/processes", None).await;
    call("GET", "/readyz", "/readyz", None).await;
    call("GET", "/api/status", "/api/status", None).await;
    call("GET", "/api/qa", "/api/qa", None).await;
    calls
}

/// What is wrong with `call`'s answer against the document.
fn conformance(doc: &Value, call: &Call) -> Vec<String> {
    let at = format!(
        "{} {} ({})",
        call.method,
        call.path,
        call.answer.status.as_u16()
    );
    let operation = &doc["paths"][call.template][call.method.to_lowercase()];
    if !operation.is_object() {
        return vec![format!(
            "{at}: {} {} is not documented",
            call.method, call.template
        )];
    }
    let mut response = &operation["responses"][call.answer.status.as_str()];
    if let Some(reference) = response["$ref"].as_str() {
        response = schema::resolve(doc, reference);
    }
    if !response.is_object() {
        return vec![format!(
            "{at}: the status is not documented for this operation"
        )];
    }
    let content_type = call
        .answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if call.answer.body.is_empty() {
        return Vec::new();
    }
    let Some(media) = response["content"].get(&content_type) else {
        return vec![format!(
            "{at}: the answer's {content_type:?} is not documented"
        )];
    };
    if content_type != "application/json" {
        return Vec::new();
    }
    let body: Value = match serde_json::from_str(&call.answer.body) {
        Ok(v) => v,
        Err(e) => return vec![format!("{at}: not JSON: {e}")],
    };
    schema::validate(doc, &media["schema"], &body)
        .into_iter()
        .map(|problem| format!("{at}: {problem}"))
        .collect()
}

/// Every (path, method, status) the document describes.
fn documented(doc: &Value) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for status in operation["responses"].as_object().unwrap().keys() {
                all.push((path.clone(), method.to_uppercase(), status.clone()));
            }
        }
    }
    all
}

#[tokio::test]
async fn every_endpoint_answers_as_the_document_says() {
    let doc: Value = serde_json::from_str(ideamill_web::api::OPENAPI).unwrap();
    let f = fixture().await;
    populate(&f).await;
    let calls = exercise(&f).await;
    let mut problems: Vec<String> = calls.iter().flat_map(|c| conformance(&doc, c)).collect();
    // The stream never ends: its headers are all there is to check.
    let stream = f
        .app()
        .oneshot(Request::get("/api/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let seen = |path: &str, method: &str, status: &str| {
        calls
            .iter()
            .any(|c| c.template == path && c.method == method && c.answer.status.as_str() == status)
            || (path == "/api/stream" && stream.status().as_str() == status)
    };
    for (path, method, status) in documented(&doc) {
        // A stalled event loop is the engine's to cause (ideamill/tests/binary.rs
        // stalls one for real); here the loop is the test's.
        let exempt = path == "/healthz" && status == "503";
        if !exempt && !seen(&path, &method, &status) {
            problems.push(format!(
                "{method} {path}: no call answered the documented {status}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every JSON answer's schema says which fields it has, all of them: a
/// field added to an answer, or one that goes missing, fails
/// `every_endpoint_answers_as_the_document_says`.
#[test]
fn the_documents_objects_name_every_field() {
    let doc: Value = serde_json::from_str(ideamill_web::api::OPENAPI).unwrap();
    let mut loose = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let at = format!("{method} {path} {status}");
                let response = match response["$ref"].as_str() {
                    Some(r) => schema::resolve(&doc, r),
                    None => response,
                };
                let schema = &response["content"]["application/json"]["schema"];
                if schema.is_object() {
                    schema::loose_objects(&doc, schema, &at, &mut loose);
                }
            }
        }
    }
    loose.sort();
    loose.dedup();
    assert!(loose.is_empty(), "{}", loose.join("\n"));
}

/// The status an answer to `method path` has, without reading its body
/// (the stream's never ends).
async fn status_of(f: &Fixture, method: &str, path: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("x-requested-with", "test")
        .body(Body::empty())
        .unwrap();
    f.app().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn the_router_and_the_document_name_the_same_paths_and_methods() {
    let doc: Value = serde_json::from_str(ideamill_web::api::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut routed: Vec<String> = ideamill_web::api::routes()
        .into_iter()
        .map(|(path, _)| format!("/api{}", path.replace("{*", "{")))
        .collect();
    routed.sort();
    let mut documented: Vec<String> = paths
        .keys()
        .filter(|p| p.starts_with("/api/"))
        .cloned()
        .collect();
    documented.sort();
    assert_eq!(routed, documented);

    // Each documented path (the probes too) takes exactly its documented
    // methods: any other is refused as not allowed.
    let f = fixture().await;
    f.add(&["x"]).await;
    for (path, operations) in paths {
        let concrete = path.replace("{id}", "1").replace("{path}", "a.txt");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let allowed = status_of(&f, method, &concrete).await != StatusCode::METHOD_NOT_ALLOWED;
            let listed = operations.get(method.to_lowercase()).is_some();
            assert_eq!(
                allowed, listed,
                "{method} {path}: routed {allowed}, documented {listed}"
            );
        }
    }
}

/// Issue 13's QA lift: one item passes the `review` gate at round 1, one at
/// round 2 (after a rejection sent it back to `draft`, where another model
/// worked on it), one is rejected in its last round. `/metrics`, `/api/qa`
/// and the overview's "QA lift" panel show the same figures.
#[tokio::test]
async fn qa_lift_on_metrics_the_api_and_the_overview() {
    use ideamill_core::AttemptOutcome;
    use ideamill_core::machine::{NextJob, Transition};
    let doc: Value = serde_json::from_str(ideamill_web::api::OPENAPI).unwrap();
    let f = fixture().await;
    assert!(
        f.get("/")
            .await
            .body
            .contains("No gate has passed or failed an item yet")
    );
    assert_eq!(f.add(&["first", "second", "third"]).await, [1, 2, 3]);
    let next = |stage: &str, round| NextJob {
        stage: stage.into(),
        round,
        max_attempts: 3,
    };
    let claim = async |stage: &str| {
        let now = ideamill_sys::clock::now_millis();
        f.store
            .claim(stage, 3, "p1", now, now + 60_000)
            .await
            .unwrap()
    };
    let drafted = |model: &str, round| Ending {
        outcome: AttemptOutcome::Succeeded,
        transition: Transition::Advance {
            output: "a draft".into(),
            next: Some(next("review", round)),
        },
        error: None,
        usage: Some(ideamill_core::Usage {
            provider: "local".into(),
            model: model.into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost: 0.0,
            counted: false,
            unknown: false,
        }),
    };
    let rejected = |transition| Ending {
        outcome: AttemptOutcome::Rejected,
        transition,
        error: None,
        usage: None,
    };
    let passed = || Ending {
        outcome: AttemptOutcome::Succeeded,
        transition: Transition::Advance {
            output: "ok".into(),
            next: None,
        },
        error: None,
        usage: None,
    };
    for job in claim("draft").await {
        settle(&*f.store, job, drafted("small", 1)).await;
    }
    for job in claim("review").await {
        let end = match job.item_id {
            1 => passed(),
            2 => rejected(Transition::SendBack {
                feedback: "needs tests".into(),
                to: next("draft", 2),
            }),
            _ => rejected(Transition::FailItem {
                reason: "rejected by gate `review` in round 1 of 1: no tests".into(),
                feedback: Some("no tests".into()),
                class: ideamill_core::FailureClass::Quality,
            }),
        };
        settle(&*f.store, job, end).await;
    }
    let again = claim("draft").await;
    assert_eq!(again.len(), 1);
    settle(
        &*f.store,
        again.into_iter().next().unwrap(),
        drafted("big", 2),
    )
    .await;
    let gate = claim("review").await;
    assert_eq!((gate.len(), gate[0].round), (1, 2));
    settle(&*f.store, gate.into_iter().next().unwrap(), passed()).await;

    let metrics = f.get("/metrics").await.body;
    for series in [
        "# TYPE ideamill_gate_passed_items gauge",
        "ideamill_gate_passed_items{stage=\"review\",model=\"small\",round=\"1\"} 1",
        "ideamill_gate_passed_items{stage=\"review\",model=\"small\",round=\"2\"} 0",
        "ideamill_gate_passed_items{stage=\"review\",model=\"big\",round=\"1\"} 0",
        "ideamill_gate_passed_items{stage=\"review\",model=\"big\",round=\"2\"} 1",
        "ideamill_gate_failed_items{stage=\"review\",model=\"small\",reason=\"last_round\"} 1",
        "ideamill_gate_failed_items{stage=\"review\",model=\"small\",reason=\"no_progress\"} 0",
        "ideamill_gate_lift_ratio{stage=\"review\",model=\"small\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert!(
        !metrics.contains("ideamill_gate_lift_ratio{stage=\"review\",model=\"big\"}"),
        "no lift without a pass at round 1:\n{metrics}"
    );

    let answer = f.get("/api/qa").await;
    let call = Call {
        method: "GET",
        template: "/api/qa",
        path: "/api/qa".into(),
        answer,
    };
    assert_eq!(conformance(&doc, &call), [] as [String; 0]);
    let qa = call.answer.json();
    assert_eq!(
        qa["gates"],
        json!([
            {"stage": "review", "model": "big", "passed_by_round": [0, 1, 0, 0],
             "passed_first": 0, "passed_later": 1, "failed": 0, "no_progress": 0, "judged": 1,
             "first_pass_rate": 0.0, "final_pass_rate": 1.0, "lift": null},
            {"stage": "review", "model": "small", "passed_by_round": [1, 0, 0, 0],
             "passed_first": 1, "passed_later": 0, "failed": 1, "no_progress": 0, "judged": 2,
             "first_pass_rate": 0.5, "final_pass_rate": 0.5, "lift": 1.0},
        ])
    );

    let page = f.get("/").await.body;
    let panel = &page[page.find("id=\"qa-lift\"").expect("the QA lift panel")..];
    let panel = &panel[..panel.find("</section>").unwrap()];
    for cell in [
        "data-gate=\"review\" data-model=\"small\"",
        "<td class=\"num\" data-k=\"passed_first\">1</td>",
        "<td class=\"num\" data-k=\"failed\">1</td>",
        "50% → 50%",
        "×1.00",
        "data-gate=\"review\" data-model=\"big\"",
        "<td class=\"num\" data-k=\"passed_later\">1</td>",
        "0% → 100%",
    ] {
        assert!(panel.contains(cell), "{cell} missing:\n{panel}");
    }
}
