//! `Provider`: one configured model endpoint, its HTTP client and its shared
//! limits; `chat` makes a call, `probe` checks that the endpoint answers.

use std::sync::Arc;
use std::time::SystemTime;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Response};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::answer::{Answer, malformed};
use crate::config::{ChatRequest, ChatResponse, ProviderConfig, ProviderKind};
use crate::error::{ConfigError, LlmError};
use crate::limiter::Limiter;
use crate::sse::SseParser;
use crate::{anthropic, classify, openai};

/// Largest answer body read (a JSON answer, or a whole stream).
const MAX_BODY_BYTES: usize = 32 << 20;
/// Largest error body read: enough for any provider's message.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// A model endpoint ready to call. Cloning is cheap and shares the HTTP
/// connection pool and the [`Limiter`]: build one per configured provider
/// and hand clones to every worker.
#[derive(Debug, Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ProviderConfig,
    /// `base_url` without its trailing `/`.
    base: String,
    client: Client,
    limiter: Arc<Limiter>,
}

impl Provider {
    /// Checks the config and builds the client, with a limiter of its own.
    pub fn new(cfg: ProviderConfig) -> Result<Provider, ConfigError> {
        let limiter = Arc::new(Limiter::new(
            cfg.max_concurrency,
            cfg.requests_per_minute,
            cfg.tokens_per_minute,
        ));
        Provider::with_limiter(cfg, limiter)
    }

    /// Like [`Provider::new`], sharing `limiter` with other providers (e.g.
    /// two configs that point at the same server). The config's own limit
    /// fields are then not used.
    pub fn with_limiter(
        cfg: ProviderConfig,
        limiter: Arc<Limiter>,
    ) -> Result<Provider, ConfigError> {
        let invalid = |message: String| ConfigError {
            provider: cfg.name.clone(),
            message,
        };
        let base = cfg.base_url.trim().trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => return Err(invalid(format!("base_url {base:?} is not an http(s) url"))),
            Err(e) => return Err(invalid(format!("base_url {base:?} is not a url: {e}"))),
        }
        if cfg.model.trim().is_empty() {
            return Err(invalid("model is empty".to_string()));
        }
        for (name, value) in [
            ("connect_timeout", cfg.connect_timeout),
            ("idle_timeout", cfg.idle_timeout),
            ("total_timeout", cfg.total_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(format!("{name} must be more than zero")));
            }
        }
        if cfg.max_concurrency == 0 {
            return Err(invalid("max_concurrency must be at least 1".to_string()));
        }
        if cfg.requests_per_minute == Some(0) || cfg.tokens_per_minute == Some(0) {
            return Err(invalid(
                "requests_per_minute and tokens_per_minute must be at least 1".to_string(),
            ));
        }
        let headers = default_headers(&cfg).map_err(invalid)?;
        ensure_crypto_provider();
        let client = Client::builder()
            .connect_timeout(cfg.connect_timeout)
            // An API does not redirect; following one could send the key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ideamill/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| invalid(format!("cannot build the http client: {}", error_chain(&e))))?;
        Ok(Provider {
            inner: Arc::new(Inner {
                cfg,
                base,
                client,
                limiter,
            }),
        })
    }

    /// The config it was built from.
    pub fn config(&self) -> &ProviderConfig {
        &self.inner.cfg
    }

    /// The limiter its calls wait for, possibly shared with other providers.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.inner.limiter
    }

    /// Sends one chat call and returns the complete answer, or an error of
    /// a known class. Waits for the limiter first; returns `Cancelled` as
    /// soon as `cancel` fires, at any point.
    pub async fn chat(
        &self,
        req: &ChatRequest,
        cancel: &CancellationToken,
    ) -> Result<ChatResponse, LlmError> {
        let cfg = &self.inner.cfg;
        let result = self
            .chat_unredacted(req, cancel)
            .await
            .map_err(|e| e.redacted(cfg.api_key.as_ref()));
        if let Err(e) = &result {
            tracing::debug!(provider = %cfg.name, error = %e, "The model call failed");
        }
        result
    }

    async fn chat_unredacted(
        &self,
        req: &ChatRequest,
        cancel: &CancellationToken,
    ) -> Result<ChatResponse, LlmError> {
        let cfg = &self.inner.cfg;
        let queued = Instant::now();
        let reservation = self
            .inner
            .limiter
            .acquire(req.estimated_tokens(), cancel)
            .await?;
        let limiter_wait = queued.elapsed();
        let started = Instant::now();
        tracing::debug!(
            provider = %cfg.name,
            model = %cfg.model,
            stream = cfg.stream,
            "Calling the model"
        );
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(LlmError::Cancelled),
            _ = tokio::time::sleep(cfg.total_timeout) => Err(LlmError::Timeout {
                which: "total",
                after: cfg.total_timeout,
            }),
            answer = self.call(req, started) => answer,
        };
        match outcome {
            Ok(answer) => {
                let response = answer.into_response(req, &cfg.model, cfg.stream, limiter_wait);
                reservation.settle(response.prompt_tokens + response.completion_tokens);
                tracing::debug!(
                    provider = %cfg.name,
                    elapsed_ms = response.elapsed.as_millis() as u64,
                    prompt_tokens = response.prompt_tokens,
                    completion_tokens = response.completion_tokens,
                    "The model answered"
                );
                Ok(response)
            }
            Err(err) => {
                // The estimate stays reserved: a failed call may still have
                // been counted by the server.
                if let Some(wait) = err.retry_after() {
                    self.inner.limiter.pause(wait);
                }
                Err(err)
            }
        }
    }

    /// One request, from sending it to the end of the answer.
    async fn call(&self, req: &ChatRequest, started: Instant) -> Result<Answer, LlmError> {
        let cfg = &self.inner.cfg;
        let (path, body) = match cfg.kind {
            ProviderKind::OpenAi => (
                "/chat/completions",
                openai::request_body(&cfg.model, req, cfg.stream),
            ),
            ProviderKind::Anthropic => (
                "/messages",
                anthropic::request_body(&cfg.model, req, cfg.stream),
            ),
        };
        let accept = if cfg.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let send = self
            .inner
            .client
            .post(format!("{}{path}", self.inner.base))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, accept)
            .body(body.to_string())
            .send();
        // Streaming, the idle timeout also covers the wait for the headers;
        // otherwise the server legitimately says nothing until it is done.
        let sent = if cfg.stream {
            tokio::time::timeout(cfg.idle_timeout, send)
                .await
                .map_err(|_| self.idle_timeout())?
        } else {
            send.await
        };
        let mut response = sent.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = self
                .read_body(&mut response, MAX_ERROR_BODY_BYTES)
                .await
                .unwrap_or_else(|partial| partial);
            return Err(classify::from_status(
                status.as_u16(),
                &headers,
                &body,
                SystemTime::now(),
            ));
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let is_sse = if content_type.starts_with("text/event-stream") {
            true
        } else if content_type.starts_with("application/json") {
            // A server that ignored `stream: true` and answered in one piece.
            false
        } else {
            cfg.stream
        };
        let mut answer = Answer::new(started);
        if is_sse {
            self.read_stream(&mut response, &mut answer).await?;
        } else {
            let body = self
                .read_body(&mut response, MAX_BODY_BYTES)
                .await
                .map_err(|partial| {
                    LlmError::retryable(
                        Some(status.as_u16()),
                        format!(
                            "the connection ended after {} bytes of the response body",
                            partial.len()
                        ),
                    )
                })?;
            match cfg.kind {
                ProviderKind::OpenAi => openai::parse_body(&body, &mut answer)?,
                ProviderKind::Anthropic => anthropic::parse_body(&body, &mut answer)?,
            }
        }
        Ok(answer)
    }

    /// Reads server-sent events until the end marker; an end of the body
    /// before it is `Truncated`.
    async fn read_stream(
        &self,
        response: &mut Response,
        answer: &mut Answer,
    ) -> Result<(), LlmError> {
        let cfg = &self.inner.cfg;
        let on_event = match cfg.kind {
            ProviderKind::OpenAi => openai::on_event,
            ProviderKind::Anthropic => anthropic::on_event,
        };
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let mut received = 0usize;
        loop {
            let chunk = tokio::time::timeout(cfg.idle_timeout, response.chunk())
                .await
                .map_err(|_| self.idle_timeout())?;
            let ended = matches!(chunk, Ok(None));
            match chunk {
                Ok(Some(bytes)) => {
                    received += bytes.len();
                    if received > MAX_BODY_BYTES {
                        return Err(LlmError::retryable(
                            Some(200),
                            format!("the stream is longer than {} MiB", MAX_BODY_BYTES >> 20),
                        ));
                    }
                    parser
                        .feed(&bytes, &mut events)
                        .map_err(|e| malformed("stream", e))?;
                }
                Ok(None) => parser.finish(&mut events),
                Err(e) => {
                    tracing::debug!(error = %error_chain(&e), "The stream broke");
                    return Err(answer.truncated());
                }
            }
            for event in events.drain(..) {
                on_event(&event, answer)?;
                if answer.done {
                    return Ok(());
                }
            }
            if ended {
                return Err(answer.truncated());
            }
        }
    }

    /// Reads a whole body, at most `limit` bytes, each chunk within the idle
    /// timeout. On a broken or stalled body, returns what it had as `Err`.
    async fn read_body(&self, response: &mut Response, limit: usize) -> Result<Vec<u8>, Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(self.inner.cfg.idle_timeout, response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    let room = limit.saturating_sub(body.len());
                    body.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    if body.len() >= limit {
                        return Err(body);
                    }
                }
                Ok(Ok(None)) => return Ok(body),
                Ok(Err(_)) | Err(_) => return Err(body),
            }
        }
    }

    /// Checks that the endpoint answers and accepts the key: `GET
    /// {base_url}/models`, within the connect plus the idle timeout. Does
    /// not use the limiter. For `ideamill doctor` and `validate`.
    pub async fn probe(&self) -> Result<(), LlmError> {
        let limit = self.inner.cfg.connect_timeout + self.inner.cfg.idle_timeout;
        let probe = async {
            let mut response = self
                .inner
                .client
                .get(format!("{}/models", self.inner.base))
                .header(header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| self.transport_error(&e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let headers = response.headers().clone();
            let body = self
                .read_body(&mut response, MAX_ERROR_BODY_BYTES)
                .await
                .unwrap_or_else(|partial| partial);
            Err(classify::from_status(
                status.as_u16(),
                &headers,
                &body,
                SystemTime::now(),
            ))
        };
        let outcome = match tokio::time::timeout(limit, probe).await {
            Ok(outcome) => outcome,
            Err(_) => Err(LlmError::Timeout {
                which: "total",
                after: limit,
            }),
        };
        outcome.map_err(|e| e.redacted(self.inner.cfg.api_key.as_ref()))
    }

    fn idle_timeout(&self) -> LlmError {
        LlmError::Timeout {
            which: "idle",
            after: self.inner.cfg.idle_timeout,
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> LlmError {
        if e.is_connect() && e.is_timeout() {
            return LlmError::Timeout {
                which: "connect",
                after: self.inner.cfg.connect_timeout,
            };
        }
        let what = if e.is_connect() {
            format!("cannot connect to {}", self.inner.base)
        } else {
            format!("the request to {} failed", self.inner.base)
        };
        LlmError::retryable(None, format!("{what}: {}", error_chain(e)))
    }
}

/// The auth header and the extra headers, values marked sensitive so that
/// no debug output of the client shows them.
fn default_headers(cfg: &ProviderConfig) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    if let Some(key) = &cfg.api_key {
        let (name, value) = match cfg.kind {
            ProviderKind::OpenAi => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            ProviderKind::Anthropic => (
                HeaderName::from_static("x-api-key"),
                key.expose().to_string(),
            ),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            "the api key has characters that an http header cannot carry".to_string()
        })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    if cfg.kind == ProviderKind::Anthropic {
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(anthropic::API_VERSION),
        );
    }
    for (name, value) in &cfg.headers {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of header {name} is not valid"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// rustls needs a process-wide crypto provider when reqwest is built without
/// its own (we use ring, to avoid aws-lc's build needs). Installs ring unless
/// the program installed one already.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread is fine: a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// An error and its sources, `outer: inner: innermost`, without repeats.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_an_https_client_with_ring() {
        let cfg = ProviderConfig::new(
            "openai",
            ProviderKind::OpenAi,
            "https://api.openai.com/v1/",
            "gpt",
        );
        let provider = Provider::new(cfg).unwrap();
        assert_eq!(provider.inner.base, "https://api.openai.com/v1");
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn error_chain_skips_repeats() {
        let inner = std::io::Error::other("connection refused");
        assert_eq!(error_chain(&inner), "connection refused");
    }
}
