//! Integration tests of `Provider` against a fake provider on 127.0.0.1:
//! both wire formats, every error class, the three timeouts, truncation,
//! cancellation and the shared limits.

// A failed test is a panic: unwrap and expect are how these tests say so,
// helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime};

use ideamill_llm::{
    ChatRequest, ChatResponse, ErrorClass, LlmError, Provider, ProviderConfig, ProviderKind, Secret,
};
use serde_json::json;
use support::{FakeServer, Part, Reply, data, event, text, timed, within};
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk-test-SECRET-0123456789";
/// Generous bound for "it returned promptly": this is a 2-core shared box.
const SLACK: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(30);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(server: &FakeServer, kind: ProviderKind) -> ProviderConfig {
    let mut cfg = ProviderConfig::new("fake", kind, &server.base_url, "test-model");
    cfg.api_key = Some(Secret::new(KEY));
    cfg.headers = vec![("X-Title".into(), "ideamill-tests".into())];
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.idle_timeout = Duration::from_secs(10);
    cfg.total_timeout = Duration::from_secs(20);
    cfg
}

fn openai(server: &FakeServer) -> ProviderConfig {
    config(server, ProviderKind::OpenAi)
}

fn anthropic(server: &FakeServer) -> ProviderConfig {
    config(server, ProviderKind::Anthropic)
}

fn request() -> ChatRequest {
    ChatRequest {
        system: Some("You write code.".into()),
        prompt: "Write hello world.".into(),
        temperature: Some(0.2),
        max_tokens: 256,
    }
}

async fn chat(cfg: ProviderConfig) -> Result<ChatResponse, LlmError> {
    let provider = Provider::new(cfg).unwrap();
    within(
        DEADLINE,
        provider.chat(&request(), &CancellationToken::new()),
    )
    .await
}

#[track_caller]
fn assert_class(result: &Result<ChatResponse, LlmError>, class: ErrorClass) -> LlmError {
    match result {
        Err(e) => {
            assert_eq!(e.class(), class, "{e}");
            e.clone()
        }
        Ok(r) => panic!("expected a {class:?} error, got {r:?}"),
    }
}

/// The key must appear in neither the message nor the debug output.
#[track_caller]
fn assert_no_key(err: &LlmError) {
    assert!(!err.to_string().contains(KEY), "{err}");
    assert!(!format!("{err:?}").contains(KEY), "{err:?}");
}

fn openai_chunk(content: &str) -> Part {
    data(&json!({
        "id": "c1", "object": "chat.completion.chunk", "model": "served-model",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    }))
}

fn openai_finish() -> Part {
    data(&json!({
        "id": "c1", "object": "chat.completion.chunk", "model": "served-model",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    }))
}

fn openai_usage(prompt: u64, completion: u64) -> Part {
    data(&json!({
        "id": "c1", "object": "chat.completion.chunk", "model": "served-model", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    }))
}

fn done() -> Part {
    text("data: [DONE]\n\n")
}

fn openai_error(message: &str, kind: &str, code: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": kind, "code": code}})
}

// ---------------------------------------------------------------- OpenAI

#[tokio::test]
async fn openai_non_stream_success() {
    let server = FakeServer::always(|| {
        Reply::json(200, &json!({
            "id": "x", "object": "chat.completion", "model": "served-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
        }))
    })
    .await;
    let mut cfg = openai(&server);
    cfg.stream = false;
    let r = chat(cfg).await.unwrap();
    assert_eq!(r.text, "Hello!");
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.usage_counted),
        (12, 3, false)
    );
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert_eq!(r.model, "served-model");
    assert_eq!(r.first_token_after, None);

    let sent = &server.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        sent.headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(sent.headers["x-title"], "ideamill-tests");
    assert_eq!(sent.body["model"], "test-model");
    assert_eq!(sent.body["max_tokens"], 256);
    assert_eq!(sent.body["stream"], false);
    assert!(sent.body.get("stream_options").is_none());
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "You write code."})
    );
    assert_eq!(
        sent.body["messages"][1],
        json!({"role": "user", "content": "Write hello world."})
    );
}

#[tokio::test]
async fn openai_stream_success_with_usage() {
    let server = FakeServer::always(|| {
        Reply::sse(vec![
            text(": keep-alive comment\n\n"),
            data(
                &json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            ),
            openai_chunk("Hel"),
            openai_chunk("lo "),
            openai_chunk("wörld"),
            openai_finish(),
            openai_usage(20, 4),
            done(),
        ])
    })
    .await;
    let r = chat(openai(&server)).await.unwrap();
    assert_eq!(r.text, "Hello wörld");
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.usage_counted),
        (20, 4, false)
    );
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert_eq!(r.model, "served-model");
    assert!(r.first_token_after.is_some_and(|t| t <= r.elapsed));

    let sent = &server.requests()[0];
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent.body["max_tokens"], 256);
    assert_eq!(sent.headers["accept"], "text/event-stream");
}

#[tokio::test]
async fn openai_stream_without_usage_is_counted() {
    // llama.cpp ignores stream_options: no usage chunk.
    let server = FakeServer::always(|| {
        Reply::sse(vec![openai_chunk("0123456789"), openai_finish(), done()])
    })
    .await;
    let r = chat(openai(&server)).await.unwrap();
    assert_eq!(r.text, "0123456789");
    assert!(r.usage_counted);
    assert_eq!(r.completion_tokens, 3, "10 chars / 4, rounded up");
    let prompt_chars = "You write code.".len() + "Write hello world.".len();
    assert_eq!(r.prompt_tokens, prompt_chars.div_ceil(4) as u64);
}

#[tokio::test]
async fn openai_stream_split_across_chunks_anywhere() {
    let whole = "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"c\"},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n";
    let server = FakeServer::always(move || {
        Reply::sse(
            whole
                .as_bytes()
                .chunks(7)
                .map(|c| Part::Bytes(c.to_vec()))
                .collect(),
        )
    })
    .await;
    let r = chat(openai(&server)).await.unwrap();
    assert_eq!(r.text, "abc");
    assert_eq!(r.finish_reason.as_deref(), Some("length"));
}

#[tokio::test]
async fn openai_server_that_ignores_stream_answers_json() {
    let server = FakeServer::always(|| {
        Reply::json(
            200,
            &json!({
                "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            }),
        )
    })
    .await;
    let r = chat(openai(&server)).await.unwrap();
    assert_eq!(r.text, "whole");
}

#[tokio::test]
async fn rate_limited_with_retry_after_seconds() {
    let server = FakeServer::always(|| {
        Reply::json(
            429,
            &openai_error(
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            ),
        )
        .header("retry-after", "2")
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(err.status(), Some(429));
    assert!(
        err.to_string().contains("Rate limit reached for requests"),
        "{err}"
    );
    assert!(err.to_string().contains("http 429"), "{err}");
}

#[tokio::test]
async fn rate_limited_with_retry_after_http_date() {
    let server = FakeServer::always(|| {
        let at = SystemTime::now() + Duration::from_secs(30);
        Reply::json(
            429,
            &openai_error("Slow down", "requests", "rate_limit_exceeded"),
        )
        .header("retry-after", &httpdate::fmt_http_date(at))
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::RateLimited);
    let wait = err.retry_after().expect("a retry-after");
    // The date has a one-second resolution.
    assert!(
        wait >= Duration::from_secs(27) && wait <= Duration::from_secs(31),
        "{wait:?}"
    );
}

#[tokio::test]
async fn rate_limited_with_x_ratelimit_reset_tokens() {
    let server = FakeServer::always(|| {
        Reply::json(
            429,
            &openai_error(
                "Rate limit reached for tokens",
                "tokens",
                "rate_limit_exceeded",
            ),
        )
        .header("x-ratelimit-reset-tokens", "1s")
        .header("x-ratelimit-remaining-tokens", "0")
        .header("x-ratelimit-reset-requests", "6m0s")
        .header("x-ratelimit-remaining-requests", "59")
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn rate_limited_without_a_delay_leaves_backoff_to_the_caller() {
    let server = FakeServer::always(|| Reply::raw(429, "text/plain", "too many")).await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::RateLimited);
    assert_eq!(err.retry_after(), None);
    assert_eq!(err.to_string(), "rate limited (http 429): too many");
}

#[tokio::test]
async fn a_rate_limit_pauses_the_other_callers() {
    let server = FakeServer::start(|_| {
        Reply::json(
            429,
            &openai_error("slow", "requests", "rate_limit_exceeded"),
        )
        .header("retry-after-ms", "300")
    })
    .await;
    let provider = Provider::new(openai(&server)).unwrap();
    let cancel = CancellationToken::new();
    let first = within(DEADLINE, provider.chat(&request(), &cancel)).await;
    assert_class(&first, ErrorClass::RateLimited);
    // The limiter holds the next call until the server's delay has passed.
    let (second, took) = timed(DEADLINE, provider.chat(&request(), &cancel)).await;
    let err = assert_class(&second, ErrorClass::RateLimited);
    assert_eq!(err.retry_after(), Some(ms(300)));
    assert!(took >= ms(250), "the second call waited only {took:?}");
}

#[tokio::test]
async fn server_error_is_retryable() {
    let server = FakeServer::always(|| {
        Reply::json(
            500,
            &openai_error(
                "The server had an error while processing your request",
                "server_error",
                "",
            ),
        )
        .header("x-request-id", "r1")
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert_eq!(err.status(), Some(500));
    assert_eq!(
        err.to_string(),
        "temporary failure (http 500): The server had an error while processing your request (server_error)"
    );
}

#[tokio::test]
async fn unauthorized_is_permanent_with_the_provider_message_and_no_key() {
    let server = FakeServer::always(|| {
        Reply::json(401, &openai_error(
            &format!("Incorrect API key provided: {KEY}. You can find your API key at https://example.invalid."),
            "invalid_request_error",
            "invalid_api_key",
        ))
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::Permanent);
    assert_eq!(err.status(), Some(401));
    assert!(
        err.to_string()
            .starts_with("permanent failure (http 401): Incorrect API key provided: ***."),
        "{err}"
    );
    assert_no_key(&err);
}

#[tokio::test]
async fn bad_request_is_permanent() {
    let server = FakeServer::always(|| {
        Reply::json(400, &json!({"error": {"message": "max_tokens is too large: 999999", "type": "invalid_request_error", "param": "max_tokens", "code": null}}))
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::Permanent);
    assert_eq!(
        err.to_string(),
        "permanent failure (http 400): max_tokens is too large: 999999 (invalid_request_error)"
    );
}

#[tokio::test]
async fn not_found_from_ollama_is_permanent() {
    let server = FakeServer::always(|| {
        Reply::json(
            404,
            &json!({"error": "model \"test-model\" not found, try pulling it first"}),
        )
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::Permanent);
    assert!(
        err.to_string().contains("not found, try pulling it first"),
        "{err}"
    );
}

#[tokio::test]
async fn insufficient_quota_is_permanent_even_on_429() {
    let server = FakeServer::always(|| {
        Reply::json(
            429,
            &openai_error(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            ),
        )
        .header("retry-after", "1")
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::Permanent);
    assert_eq!(err.status(), Some(429));
    assert!(
        err.to_string().contains("You exceeded your current quota"),
        "{err}"
    );
}

#[tokio::test]
async fn an_error_inside_the_stream_is_classified() {
    let server = FakeServer::always(|| {
        Reply::sse(vec![
            openai_chunk("part"),
            data(&json!({"error": {"message": "Provider returned error", "code": 502}})),
        ])
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert!(err.to_string().contains("Provider returned error"), "{err}");
}

#[tokio::test]
async fn idle_timeout_fires_when_the_stream_stops_sending() {
    let server = FakeServer::always(|| Reply::sse(vec![openai_chunk("start"), Part::Hang])).await;
    let mut cfg = openai(&server);
    let idle = ms(400);
    cfg.idle_timeout = idle;
    let (result, took) = timed(DEADLINE, chat(cfg)).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert_eq!(
        err,
        LlmError::Timeout {
            which: "idle",
            after: idle
        }
    );
    assert!(took >= idle && took < idle + SLACK, "took {took:?}");
}

#[tokio::test]
async fn idle_timeout_covers_a_server_that_never_sends_headers() {
    let server =
        FakeServer::always(|| Reply::sse(vec![done()]).delay_headers(Duration::from_secs(3600)))
            .await;
    let mut cfg = openai(&server);
    let idle = ms(300);
    cfg.idle_timeout = idle;
    let (result, took) = timed(DEADLINE, chat(cfg)).await;
    assert_eq!(
        result.unwrap_err(),
        LlmError::Timeout {
            which: "idle",
            after: idle
        }
    );
    assert!(took >= idle && took < idle + SLACK, "took {took:?}");
}

#[tokio::test]
async fn stream_closed_before_done_is_truncated() {
    let server =
        FakeServer::always(|| Reply::sse(vec![openai_chunk("half an "), openai_chunk("answer")]))
            .await;
    let result = chat(openai(&server)).await;
    assert_eq!(
        result.unwrap_err(),
        LlmError::Truncated { received_chars: 14 }
    );
}

#[tokio::test]
async fn stream_cut_mid_body_is_truncated() {
    // The delay lets the server flush the headers and the first chunk.
    let server = FakeServer::always(|| {
        Reply::sse(vec![openai_chunk("abc"), Part::Delay(ms(100)), Part::Cut])
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert_eq!(err, LlmError::Truncated { received_chars: 3 });
}

#[tokio::test]
async fn connection_closed_before_the_headers_is_retryable() {
    // A server that reads the request and hangs up without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
        }
    });
    let cfg = ProviderConfig::new(
        "rude",
        ProviderKind::OpenAi,
        format!("http://{addr}/v1"),
        "m",
    );
    let result = chat(cfg).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert_eq!(err.status(), None);
}

#[tokio::test]
async fn connect_timeout_fires_when_the_server_does_not_accept() {
    // A listener whose accept queue is full: the kernel drops further SYNs,
    // so a connect neither succeeds nor fails.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(ms(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let mut cfg = ProviderConfig::new(
        "full",
        ProviderKind::OpenAi,
        format!("http://{addr}/v1"),
        "m",
    );
    let connect = ms(300);
    cfg.connect_timeout = connect;
    let (result, took) = timed(DEADLINE, chat(cfg)).await;
    assert_eq!(
        result.unwrap_err(),
        LlmError::Timeout {
            which: "connect",
            after: connect
        }
    );
    assert!(took >= connect && took < connect + SLACK, "took {took:?}");
    drop(listener);
}

#[tokio::test]
async fn malformed_json_body_is_a_clear_retryable_error() {
    let server =
        FakeServer::always(|| Reply::raw(200, "application/json", "{\"choices\": [")).await;
    let mut cfg = openai(&server);
    cfg.stream = false;
    let result = chat(cfg).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert!(
        err.to_string()
            .starts_with("temporary failure (http 200): malformed json in the response: "),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_sse_data_line_is_a_clear_retryable_error() {
    let server = FakeServer::always(|| {
        Reply::sse(vec![
            openai_chunk("ok"),
            text("data: {\"choices\": oops\n\n"),
            done(),
        ])
    })
    .await;
    let result = chat(openai(&server)).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert!(
        err.to_string()
            .starts_with("temporary failure (http 200): malformed stream event: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_slow_drip_under_the_idle_timeout_completes() {
    let gap = ms(150);
    let server = FakeServer::always(move || {
        let mut parts = Vec::new();
        for word in ["a", "b", "c", "d", "e", "f"] {
            parts.push(Part::Delay(gap));
            parts.push(openai_chunk(word));
        }
        parts.push(openai_finish());
        parts.push(done());
        Reply::sse(parts)
    })
    .await;
    let mut cfg = openai(&server);
    let idle = ms(600);
    cfg.idle_timeout = idle;
    let (result, took) = timed(DEADLINE, chat(cfg)).await;
    assert_eq!(result.unwrap().text, "abcdef");
    // The whole answer took longer than the idle timeout: it is per gap.
    assert!(took > idle, "took {took:?}");
}

#[tokio::test]
async fn total_timeout_ends_an_endless_drip() {
    let server = FakeServer::always(|| {
        let mut parts = Vec::new();
        for _ in 0..1000 {
            parts.push(Part::Delay(ms(50)));
            parts.push(openai_chunk("."));
        }
        Reply::sse(parts)
    })
    .await;
    let mut cfg = openai(&server);
    let total = ms(600);
    cfg.total_timeout = total;
    cfg.idle_timeout = Duration::from_secs(5);
    let (result, took) = timed(DEADLINE, chat(cfg)).await;
    assert_eq!(
        result.unwrap_err(),
        LlmError::Timeout {
            which: "total",
            after: total
        }
    );
    assert!(took >= total && took < total + SLACK, "took {took:?}");
}

#[tokio::test]
async fn total_timeout_applies_without_streaming() {
    let server = FakeServer::always(|| {
        Reply::json(200, &json!({})).delay_headers(Duration::from_secs(3600))
    })
    .await;
    let mut cfg = openai(&server);
    cfg.stream = false;
    let total = ms(400);
    cfg.total_timeout = total;
    cfg.idle_timeout = ms(100); // Not used before the headers when not streaming.
    let (result, took) = timed(DEADLINE, chat(cfg)).await;
    assert_eq!(
        result.unwrap_err(),
        LlmError::Timeout {
            which: "total",
            after: total
        }
    );
    assert!(took >= total && took < total + SLACK, "took {took:?}");
}

#[tokio::test]
async fn cancellation_returns_promptly() {
    let server =
        FakeServer::always(|| Reply::sse(vec![openai_chunk("thinking"), Part::Hang])).await;
    let provider = Provider::new(openai(&server)).unwrap();
    let cancel = CancellationToken::new();
    let call = tokio::spawn({
        let (provider, cancel) = (provider.clone(), cancel.clone());
        async move { provider.chat(&request(), &cancel).await }
    });
    server.wait_for_requests(1, DEADLINE).await;
    cancel.cancel();
    let (result, took) = timed(DEADLINE, call).await;
    assert_eq!(result.unwrap().unwrap_err(), LlmError::Cancelled);
    assert!(took < SLACK, "took {took:?}");
}

#[tokio::test]
async fn cancellation_while_waiting_for_the_limiter() {
    let server = FakeServer::always(|| Reply::sse(vec![Part::Hang])).await;
    let mut cfg = openai(&server);
    cfg.max_concurrency = 1;
    let provider = Provider::new(cfg).unwrap();
    let first_cancel = CancellationToken::new();
    let first = tokio::spawn({
        let (provider, cancel) = (provider.clone(), first_cancel.clone());
        async move { provider.chat(&request(), &cancel).await }
    });
    server.wait_for_requests(1, DEADLINE).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = within(DEADLINE, provider.chat(&request(), &cancel)).await;
    assert_eq!(result.unwrap_err(), LlmError::Cancelled);
    assert_eq!(
        server.requests().len(),
        1,
        "the second call never reached the server"
    );
    first_cancel.cancel();
    assert_eq!(
        within(DEADLINE, first).await.unwrap().unwrap_err(),
        LlmError::Cancelled
    );
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = ProviderConfig::new(
        "gone",
        ProviderKind::OpenAi,
        format!("http://{addr}/v1"),
        "m",
    );
    cfg.api_key = Some(Secret::new(KEY));
    let result = chat(cfg).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert_eq!(err.status(), None);
    assert!(
        err.to_string()
            .starts_with("temporary failure: cannot connect to http://"),
        "{err}"
    );
    assert_no_key(&err);
}

#[tokio::test]
async fn max_concurrency_is_shared_by_clones() {
    let server = FakeServer::always(|| {
        Reply::sse(vec![openai_chunk("x"), openai_finish(), done()]).delay_headers(ms(200))
    })
    .await;
    let mut cfg = openai(&server);
    cfg.max_concurrency = 2;
    let provider = Provider::new(cfg).unwrap();
    let start = tokio::time::Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.chat(&request(), &CancellationToken::new()).await })
        })
        .collect();
    for call in calls {
        within(DEADLINE, call).await.unwrap().unwrap();
    }
    assert_eq!(server.requests().len(), 5);
    // Never more than two at once, so five calls took at least three rounds.
    assert!(server.max_in_flight() <= 2, "{}", server.max_in_flight());
    assert!(start.elapsed() >= ms(600), "{:?}", start.elapsed());
}

#[tokio::test]
async fn probe_checks_reachability_and_the_key() {
    let server = FakeServer::start(|r| {
        if r.headers
            .get("authorization")
            .is_some_and(|v| v == format!("Bearer {KEY}").as_str())
        {
            Reply::json(
                200,
                &json!({"object": "list", "data": [{"id": "test-model"}]}),
            )
        } else {
            Reply::json(
                401,
                &openai_error(
                    "Invalid API key",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            )
        }
    })
    .await;
    let provider = Provider::new(openai(&server)).unwrap();
    within(DEADLINE, provider.probe()).await.unwrap();
    let sent = &server.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("GET", "/v1/models")
    );

    let mut cfg = openai(&server);
    cfg.api_key = Some(Secret::new("wrong"));
    let err = within(DEADLINE, Provider::new(cfg).unwrap().probe())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(err.status(), Some(401));
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    let server = FakeServer::always(|| Reply::sse(vec![])).await;
    let check = |edit: &dyn Fn(&mut ProviderConfig), message: &str| {
        let mut cfg = openai(&server);
        edit(&mut cfg);
        let err = Provider::new(cfg).unwrap_err();
        assert_eq!(err.to_string(), format!("provider fake: {message}"));
        assert!(!format!("{err:?}").contains(KEY));
    };
    check(
        &|c| c.base_url = "ftp://x".into(),
        "base_url \"ftp://x\" is not an http(s) url",
    );
    check(
        &|c| c.base_url = "nope".into(),
        "base_url \"nope\" is not a url: relative URL without a base",
    );
    check(&|c| c.model = " ".into(), "model is empty");
    check(
        &|c| c.max_concurrency = 0,
        "max_concurrency must be at least 1",
    );
    check(
        &|c| c.idle_timeout = Duration::ZERO,
        "idle_timeout must be more than zero",
    );
    check(
        &|c| c.requests_per_minute = Some(0),
        "requests_per_minute and tokens_per_minute must be at least 1",
    );
    check(
        &|c| c.headers = vec![("bad header".into(), "x".into())],
        "header name \"bad header\" is not valid",
    );
    check(
        &|c| c.api_key = Some(Secret::new(format!("{KEY}\n"))),
        "the api key has characters that an http header cannot carry",
    );
    // The config's Debug output hides the key too.
    assert!(!format!("{:?}", openai(&server)).contains(KEY));
}

// ------------------------------------------------------------- Anthropic

fn anthropic_stream(parts_after_start: Vec<Part>) -> Reply {
    let mut parts = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-served",
            "stop_reason": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    parts.extend(parts_after_start);
    Reply::sse(parts)
}

fn anthropic_delta(text: &str) -> Part {
    event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
    )
}

fn anthropic_end() -> Vec<Part> {
    vec![
        event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        ),
        event("message_stop", &json!({"type": "message_stop"})),
    ]
}

fn anthropic_error(kind: &str, message: &str) -> serde_json::Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[tokio::test]
async fn anthropic_stream_success() {
    let server = FakeServer::always(|| {
        let mut parts = vec![anthropic_delta("Hello"), anthropic_delta(", world")];
        parts.extend(anthropic_end());
        anthropic_stream(parts)
    })
    .await;
    let r = chat(anthropic(&server)).await.unwrap();
    assert_eq!(r.text, "Hello, world");
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.usage_counted),
        (25, 7, false)
    );
    assert_eq!(r.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(r.model, "claude-served");
    assert!(r.first_token_after.is_some());

    let sent = &server.requests()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(sent.headers["x-api-key"], KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(sent.body["max_tokens"], 256);
    assert_eq!(sent.body["system"], "You write code.");
    assert_eq!(sent.body["stream"], true);
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "user", "content": "Write hello world."}])
    );
}

#[tokio::test]
async fn anthropic_non_stream_success() {
    let server = FakeServer::always(|| {
        Reply::json(200, &json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-served",
            "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "t", "name": "x", "input": {}}, {"type": "text", "text": " there"}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 9, "output_tokens": 2}
        }))
    })
    .await;
    let mut cfg = anthropic(&server);
    cfg.stream = false;
    let r = chat(cfg).await.unwrap();
    assert_eq!(r.text, "Hi there");
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.usage_counted),
        (9, 2, false)
    );
    assert_eq!(r.finish_reason.as_deref(), Some("max_tokens"));
}

#[tokio::test]
async fn anthropic_unauthorized_is_permanent() {
    let server = FakeServer::always(|| {
        Reply::json(
            401,
            &anthropic_error("authentication_error", &format!("invalid x-api-key {KEY}")),
        )
    })
    .await;
    let result = chat(anthropic(&server)).await;
    let err = assert_class(&result, ErrorClass::Permanent);
    assert_eq!(
        err.to_string(),
        "permanent failure (http 401): invalid x-api-key *** (authentication_error)"
    );
    assert_no_key(&err);
}

#[tokio::test]
async fn anthropic_rate_limited_and_overloaded() {
    let server = FakeServer::always(|| {
        Reply::json(
            429,
            &anthropic_error(
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            ),
        )
        .header("retry-after", "3")
    })
    .await;
    let result = chat(anthropic(&server)).await;
    let err = assert_class(&result, ErrorClass::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

    let server =
        FakeServer::always(|| Reply::json(529, &anthropic_error("overloaded_error", "Overloaded")))
            .await;
    let result = chat(anthropic(&server)).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert_eq!(
        err.to_string(),
        "temporary failure (http 529): Overloaded (overloaded_error)"
    );
}

#[tokio::test]
async fn anthropic_error_event_mid_stream() {
    let server = FakeServer::always(|| {
        anthropic_stream(vec![
            anthropic_delta("par"),
            event("error", &anthropic_error("overloaded_error", "Overloaded")),
        ])
    })
    .await;
    let result = chat(anthropic(&server)).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert_eq!(
        err.to_string(),
        "temporary failure: Overloaded (overloaded_error)"
    );
}

#[tokio::test]
async fn anthropic_stream_without_message_stop_is_truncated() {
    let server = FakeServer::always(|| {
        let mut end = anthropic_end();
        end.pop(); // No message_stop.
        let mut parts = vec![anthropic_delta("Hello")];
        parts.extend(end);
        anthropic_stream(parts)
    })
    .await;
    let result = chat(anthropic(&server)).await;
    assert_eq!(
        result.unwrap_err(),
        LlmError::Truncated { received_chars: 5 }
    );
}

#[tokio::test]
async fn anthropic_idle_timeout() {
    let server =
        FakeServer::always(|| anthropic_stream(vec![anthropic_delta("x"), Part::Hang])).await;
    let mut cfg = anthropic(&server);
    let idle = ms(300);
    cfg.idle_timeout = idle;
    let (result, took) = timed(DEADLINE, chat(cfg)).await;
    assert_eq!(
        result.unwrap_err(),
        LlmError::Timeout {
            which: "idle",
            after: idle
        }
    );
    assert!(took >= idle && took < idle + SLACK, "took {took:?}");
}

#[tokio::test]
async fn anthropic_malformed_event() {
    let server = FakeServer::always(|| {
        anthropic_stream(vec![text("event: content_block_delta\ndata: {nope\n\n")])
    })
    .await;
    let result = chat(anthropic(&server)).await;
    let err = assert_class(&result, ErrorClass::Retryable);
    assert!(err.to_string().contains("malformed stream event"), "{err}");
}
