//! Turns an HTTP status, its headers and the provider's error body into an
//! [`LlmError`] of the right class, with the provider's own message.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::error::LlmError;

/// Longest provider message kept in an error.
const MAX_MESSAGE_CHARS: usize = 1000;

/// The parts of a provider's JSON error body: OpenAI's
/// `{"error":{"message","type","code"}}`, Anthropic's
/// `{"type":"error","error":{"type","message"}}`, Ollama's `{"error":"..."}`,
/// vLLM's `{"message","type","code"}` and FastAPI's `{"detail":"..."}`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ErrorBody {
    pub message: Option<String>,
    pub kind: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn from_value(v: &Value) -> ErrorBody {
        let inner = match v.get("error") {
            Some(Value::String(s)) => {
                return ErrorBody {
                    message: Some(s.clone()),
                    ..ErrorBody::default()
                };
            }
            Some(e @ Value::Object(_)) => e,
            _ => v,
        };
        let message = inner
            .get("message")
            .or_else(|| inner.get("detail"))
            .and_then(scalar_text);
        ErrorBody {
            message,
            kind: inner.get("type").and_then(scalar_text),
            code: inner.get("code").and_then(scalar_text),
        }
    }

    fn is(&self, what: &str) -> bool {
        self.kind.as_deref() == Some(what) || self.code.as_deref() == Some(what)
    }

    /// The message with its code (or type) appended when it adds something.
    fn describe(&self) -> Option<String> {
        let message = self.message.as_deref()?.trim();
        let tag = self.code.as_deref().or(self.kind.as_deref());
        let text = match tag {
            Some(tag) if !tag.is_empty() && !message.contains(tag) => format!("{message} ({tag})"),
            _ => message.to_string(),
        };
        Some(text)
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The error for a non-success answer.
pub(crate) fn from_status(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> LlmError {
    let parsed = serde_json::from_slice::<Value>(body)
        .map(|v| ErrorBody::from_value(&v))
        .unwrap_or_default();
    let message = parsed
        .describe()
        .unwrap_or_else(|| fallback_message(status, headers, body));
    let message = clip(&message);
    let status_some = Some(status);
    match status {
        429 if parsed.is("insufficient_quota") => LlmError::permanent(status_some, message),
        429 => LlmError::RateLimited {
            retry_after: retry_after(headers, now),
            message,
        },
        408 | 409 | 500..=599 => LlmError::retryable(status_some, message),
        300..=499 => LlmError::permanent(status_some, message),
        _ => LlmError::retryable(status_some, message),
    }
}

/// The error for an error object sent inside a 200 stream (OpenAI-style
/// `{"error":{...}}` or Anthropic's `error` event).
pub(crate) fn from_stream_error(v: &Value) -> LlmError {
    let parsed = ErrorBody::from_value(v);
    let message = clip(
        &parsed
            .describe()
            .unwrap_or_else(|| "the server sent an error event without a message".to_string()),
    );
    if parsed.is("insufficient_quota") {
        return LlmError::permanent(None, message);
    }
    if parsed.is("rate_limit_error") || parsed.is("rate_limit_exceeded") {
        return LlmError::RateLimited {
            retry_after: None,
            message,
        };
    }
    // Some servers put an HTTP status in `code`: classify by it.
    if let Some(code) = parsed.code.as_deref().and_then(|c| c.parse::<u16>().ok())
        && (400..600).contains(&code)
    {
        return from_status(
            code,
            &HeaderMap::new(),
            &serde_json::to_vec(v).unwrap_or_default(),
            SystemTime::now(),
        );
    }
    let permanent = [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "billing_error",
    ];
    if permanent.iter().any(|k| parsed.is(k)) {
        LlmError::permanent(None, message)
    } else {
        LlmError::retryable(None, message)
    }
}

/// A message for a body that is not a known error shape: its text, or the
/// status's reason.
fn fallback_message(status: u16, headers: &HeaderMap, body: &[u8]) -> String {
    if (300..400).contains(&status) {
        let location = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere");
        return format!("unexpected redirect to {location}: check base_url");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_lowercase()
    } else {
        text
    }
}

fn clip(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_string();
    }
    let mut clipped: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    clipped.push_str("...");
    clipped
}

/// How long a 429 asks to wait: `retry-after-ms`, `Retry-After` (seconds or
/// an HTTP date), else OpenAI's `x-ratelimit-reset-requests` /
/// `x-ratelimit-reset-tokens` (the one whose `remaining` is 0, else the
/// shorter).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && let Some(d) = secs(ms / 1000.0)
    {
        return Some(d);
    }
    if let Some(value) = header("retry-after") {
        if let Some(d) = value.parse::<f64>().ok().and_then(secs) {
            return Some(d);
        }
        if let Ok(when) = httpdate::parse_http_date(value) {
            return Some(when.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    let exhausted = |kind: &str| header(&format!("x-ratelimit-remaining-{kind}")) == Some("0");
    let reset = |kind: &str| header(&format!("x-ratelimit-reset-{kind}")).and_then(parse_reset);
    let (requests, tokens) = (reset("requests"), reset("tokens"));
    match (requests, tokens) {
        (Some(r), Some(_)) if exhausted("requests") && !exhausted("tokens") => Some(r),
        (Some(_), Some(t)) if exhausted("tokens") && !exhausted("requests") => Some(t),
        (Some(r), Some(t)) if exhausted("requests") => Some(r.max(t)),
        (Some(r), Some(t)) => Some(r.min(t)),
        (r, t) => r.or(t),
    }
}

/// Go-style durations as OpenAI sends them: `1s`, `6m0s`, `20ms`, `1h2m3.5s`,
/// or plain seconds (`7.66`).
pub(crate) fn parse_reset(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(n) = text.parse::<f64>() {
        return secs(n);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if number_end == 0 {
            return None;
        }
        let n: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    secs(total)
}

fn secs(n: f64) -> Option<Duration> {
    if n.is_finite() && n >= 0.0 {
        // Bounded so that a silly value cannot overflow a deadline.
        Duration::try_from_secs_f64(n.min(1e9)).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[track_caller]
    fn check_reset(text: &str, expected: Option<Duration>) {
        assert_eq!(parse_reset(text), expected, "{text:?}");
    }

    #[test]
    fn reset_durations() {
        let ms = Duration::from_millis;
        check_reset("1s", Some(ms(1000)));
        check_reset("6m0s", Some(ms(360_000)));
        check_reset("20ms", Some(ms(20)));
        check_reset("1h2m3.5s", Some(ms(3_723_500)));
        check_reset("7.66", Some(ms(7660)));
        check_reset("100µs", Some(Duration::from_micros(100)));
        check_reset("", None);
        check_reset("s", None);
        check_reset("5 parsecs", None);
        check_reset("-1s", None);
        check_reset("1x", None);
    }

    #[track_caller]
    fn check_retry_after(pairs: &[(&'static str, &str)], expected: Option<Duration>) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(&headers(pairs), now), expected, "{pairs:?}");
    }

    #[test]
    fn retry_after_sources() {
        let s = Duration::from_secs;
        check_retry_after(&[("retry-after", "2")], Some(s(2)));
        check_retry_after(&[("retry-after", "1.5")], Some(Duration::from_millis(1500)));
        let later = SystemTime::UNIX_EPOCH + s(1_700_000_030);
        check_retry_after(
            &[("retry-after", &httpdate::fmt_http_date(later))],
            Some(s(30)),
        );
        let earlier = SystemTime::UNIX_EPOCH + s(1_600_000_000);
        check_retry_after(
            &[("retry-after", &httpdate::fmt_http_date(earlier))],
            Some(s(0)),
        );
        check_retry_after(&[("retry-after", "soon")], None);
        check_retry_after(
            &[("retry-after-ms", "250"), ("retry-after", "9")],
            Some(Duration::from_millis(250)),
        );
        check_retry_after(&[("x-ratelimit-reset-tokens", "1s")], Some(s(1)));
        check_retry_after(
            &[
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-reset-tokens", "20ms"),
            ],
            Some(Duration::from_millis(20)),
        );
        check_retry_after(
            &[
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-tokens", "20ms"),
                ("x-ratelimit-remaining-tokens", "900"),
            ],
            Some(s(360)),
        );
        check_retry_after(&[], None);
    }

    #[track_caller]
    fn check_status(status: u16, body: &str, class: ErrorClass, display: &str) {
        let err = from_status(
            status,
            &HeaderMap::new(),
            body.as_bytes(),
            SystemTime::now(),
        );
        assert_eq!(err.class(), class, "{err}");
        assert_eq!(err.to_string(), display);
    }

    #[test]
    fn statuses_and_bodies() {
        use ErrorClass::*;
        check_status(
            401,
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            Permanent,
            "permanent failure (http 401): Incorrect API key provided (invalid_api_key)",
        );
        check_status(
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: field required"}}"#,
            Permanent,
            "permanent failure (http 400): max_tokens: field required (invalid_request_error)",
        );
        check_status(
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
            Permanent,
            "permanent failure (http 429): You exceeded your current quota (insufficient_quota)",
        );
        check_status(
            429,
            r#"{"error":{"message":"Slow down"}}"#,
            RateLimited,
            "rate limited (http 429): Slow down",
        );
        check_status(
            404,
            r#"{"error":"model 'x' not found"}"#,
            Permanent,
            "permanent failure (http 404): model 'x' not found",
        );
        check_status(
            422,
            r#"{"detail":"bad field"}"#,
            Permanent,
            "permanent failure (http 422): bad field",
        );
        check_status(
            500,
            "<html>\n  Internal  error\n</html>",
            Retryable,
            "temporary failure (http 500): <html> Internal error </html>",
        );
        check_status(
            503,
            "",
            Retryable,
            "temporary failure (http 503): service unavailable",
        );
        check_status(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            Retryable,
            "temporary failure (http 529): Overloaded (overloaded_error)",
        );
        check_status(
            408,
            "",
            Retryable,
            "temporary failure (http 408): request timeout",
        );
        check_status(409, "", Retryable, "temporary failure (http 409): conflict");
        check_status(
            403,
            "",
            Permanent,
            "permanent failure (http 403): forbidden",
        );
        check_status(
            302,
            "",
            Permanent,
            "permanent failure (http 302): unexpected redirect to nowhere: check base_url",
        );
        check_status(
            500,
            r#"{"error":{"code":500,"message":"model crashed","type":"server_error"}}"#,
            Retryable,
            "temporary failure (http 500): model crashed (500)",
        );
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(5000));
        let err = from_status(400, &HeaderMap::new(), long.as_bytes(), SystemTime::now());
        assert!(err.to_string().len() < 1100);
    }

    #[track_caller]
    fn check_stream_error(json: &str, class: ErrorClass) {
        let v: Value = serde_json::from_str(json).unwrap();
        let err = from_stream_error(&v);
        assert_eq!(err.class(), class, "{err}");
    }

    #[test]
    fn stream_errors() {
        use ErrorClass::*;
        check_stream_error(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            Retryable,
        );
        check_stream_error(
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#,
            RateLimited,
        );
        check_stream_error(
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
            Permanent,
        );
        check_stream_error(
            r#"{"error":{"message":"quota","code":"insufficient_quota"}}"#,
            Permanent,
        );
        check_stream_error(r#"{"error":{"message":"upstream","code":502}}"#, Retryable);
        check_stream_error(
            r#"{"error":{"message":"no such model","code":404}}"#,
            Permanent,
        );
        check_stream_error(r#"{"error":{}}"#, Retryable);
    }
}
