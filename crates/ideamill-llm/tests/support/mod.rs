//! A fake model provider on 127.0.0.1 for the integration tests: it answers
//! with scripted replies (delays, hangs and cuts included) and records
//! every request it gets.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One piece of a reply body.
pub enum Part {
    Bytes(Vec<u8>),
    /// Wait before the next part (a slow model).
    Delay(Duration),
    /// Send nothing more, ever (a hung model).
    Hang,
    /// Abort the connection mid-body.
    Cut,
}

/// What the server answers to one request.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Wait this long before sending the status line and headers.
    pub delay_headers: Duration,
    pub parts: Vec<Part>,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            delay_headers: Duration::ZERO,
            parts: vec![Part::Bytes(body.to_string().into_bytes())],
        }
    }

    pub fn raw(status: u16, content_type: &str, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            delay_headers: Duration::ZERO,
            parts: vec![Part::Bytes(body.as_bytes().to_vec())],
        }
    }

    /// A `text/event-stream` reply with these parts.
    pub fn sse(parts: Vec<Part>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            delay_headers: Duration::ZERO,
            parts,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay_headers(mut self, delay: Duration) -> Reply {
        self.delay_headers = delay;
        self
    }
}

/// `data: {json}\n\n`
pub fn data(json: &Value) -> Part {
    Part::Bytes(format!("data: {json}\n\n").into_bytes())
}

/// `event: {name}\ndata: {json}\n\n`
pub fn event(name: &str, json: &Value) -> Part {
    Part::Bytes(format!("event: {name}\ndata: {json}\n\n").into_bytes())
}

pub fn text(s: &str) -> Part {
    Part::Bytes(s.as_bytes().to_vec())
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

type ReplyFn = dyn Fn(&Recorded) -> Reply + Send + Sync;

struct Shared {
    reply: Box<ReplyFn>,
    requests: Mutex<Vec<Recorded>>,
    arrived: Notify,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

pub struct FakeServer {
    /// `http://127.0.0.1:PORT/v1`
    pub base_url: String,
    shared: Arc<Shared>,
}

impl FakeServer {
    /// Starts a server that answers every request with `reply(request)`.
    /// It runs until the test's runtime ends.
    pub async fn start(reply: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> FakeServer {
        let shared = Arc::new(Shared {
            reply: Box::new(reply),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeServer {
            base_url: format!("http://{addr}/v1"),
            shared,
        }
    }

    /// A server that always gives the same reply (built anew each time).
    pub async fn always(reply: impl Fn() -> Reply + Send + Sync + 'static) -> FakeServer {
        FakeServer::start(move |_| reply()).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The most requests that were being handled (before their headers were
    /// sent) at one time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until the server has received `n` requests, or panics after
    /// `deadline`.
    pub async fn wait_for_requests(&self, n: usize, deadline: Duration) {
        within(deadline, async {
            loop {
                let notified = self.shared.arrived.notified();
                if self.shared.requests.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let reply = (shared.reply)(&recorded);
    shared.requests.lock().unwrap().push(recorded);
    shared.arrived.notify_waiters();
    if !reply.delay_headers.is_zero() {
        tokio::time::sleep(reply.delay_headers).await;
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let body = match reply.parts.as_slice() {
        [Part::Bytes(bytes)] => Body::from(bytes.clone()),
        _ => Body::from_stream(futures_util::stream::unfold(
            reply.parts.into_iter(),
            |mut parts| async move {
                loop {
                    match parts.next()? {
                        Part::Bytes(bytes) => return Some((Ok(Bytes::from(bytes)), parts)),
                        Part::Delay(d) => tokio::time::sleep(d).await,
                        Part::Hang => std::future::pending::<()>().await,
                        Part::Cut => return Some((Err(std::io::Error::other("cut")), parts)),
                    }
                }
            },
        )),
    };
    response.body(body).unwrap()
}

/// Runs `fut`, panicking if it takes longer than `deadline`: tests wait on
/// results with deadlines, never by sleeping.
pub async fn within<T>(deadline: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(value) => value,
        Err(_) => panic!("did not finish within {deadline:?}"),
    }
}

/// Runs `fut` within `deadline` and says how long it took.
pub async fn timed<T>(deadline: Duration, fut: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let value = within(deadline, fut).await;
    (value, start.elapsed())
}
