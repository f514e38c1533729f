//! The errors of a model call, each in one class that says what to do next.

use std::time::Duration;

use ideamill_core::duration::format_duration;

use crate::secret::{Secret, redact};

/// Why a model call failed. [`LlmError::class`] tells the caller whether to
/// retry, wait, or give up; the message never contains the API key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// HTTP 429 (or a rate-limit error event): retry after `retry_after` when
    /// the server said how long, else after the caller's backoff.
    #[error("rate limited (http 429): {message}{}", fmt_retry_after(*.retry_after))]
    RateLimited {
        /// The server's `retry-after` (or the error's own delay), if it gave one.
        retry_after: Option<Duration>,
        /// What the server said, without the key.
        message: String,
    },
    /// A failure that may not happen again: 408, 409, 5xx, a connection
    /// error, a malformed answer.
    #[error("temporary failure{}: {message}", fmt_status(*.status))]
    Retryable {
        /// The HTTP status; `None` for a connection error or an error event
        /// inside a stream.
        status: Option<u16>,
        /// What went wrong, or what the server said, without the key.
        message: String,
    },
    /// A failure that will happen again with the same request and config:
    /// 400, 401, 403, 404, an exhausted quota.
    #[error("permanent failure{}: {message}", fmt_status(*.status))]
    Permanent {
        /// The HTTP status; `None` for an error event inside a stream.
        status: Option<u16>,
        /// What went wrong, or what the server said, without the key.
        message: String,
    },
    /// One of the provider's timeouts fired: `which` is `connect`, `idle`
    /// (no bytes for that long) or `total`.
    #[error("{which} timeout: {}", fmt_timeout(which, *.after))]
    Timeout {
        /// `connect`, `idle` or `total`.
        which: &'static str,
        /// The configured timeout that fired.
        after: Duration,
    },
    /// The stream ended before its end marker (`[DONE]` or `message_stop`):
    /// the partial output is not returned.
    #[error(
        "stream truncated after {received_chars} characters: the connection ended before the end of the answer"
    )]
    Truncated {
        /// Characters of text received before the stream ended.
        received_chars: usize,
    },
    /// The caller's cancellation token fired.
    #[error("cancelled")]
    Cancelled,
}

/// What the caller should do about an [`LlmError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry after the server's delay if there is one, else with backoff.
    RateLimited,
    /// Retry with backoff.
    Retryable,
    /// Do not retry: the same request will fail the same way.
    Permanent,
    /// The caller asked to stop; not a failure of the call.
    Cancelled,
}

impl LlmError {
    /// The class of this error. Timeouts and truncated streams are retryable.
    pub fn class(&self) -> ErrorClass {
        match self {
            LlmError::RateLimited { .. } => ErrorClass::RateLimited,
            LlmError::Retryable { .. } | LlmError::Timeout { .. } | LlmError::Truncated { .. } => {
                ErrorClass::Retryable
            }
            LlmError::Permanent { .. } => ErrorClass::Permanent,
            LlmError::Cancelled => ErrorClass::Cancelled,
        }
    }

    /// True for the classes worth another attempt (rate-limited or retryable).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::RateLimited | ErrorClass::Retryable
        )
    }

    /// How long the server asked to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of the answer this error comes from, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::RateLimited { .. } => Some(429),
            LlmError::Retryable { status, .. } | LlmError::Permanent { status, .. } => *status,
            _ => None,
        }
    }

    /// The same error with every occurrence of the key removed from its text.
    pub(crate) fn redacted(self, key: Option<&Secret>) -> LlmError {
        match self {
            LlmError::RateLimited {
                retry_after,
                message,
            } => LlmError::RateLimited {
                retry_after,
                message: redact(&message, key),
            },
            LlmError::Retryable { status, message } => LlmError::Retryable {
                status,
                message: redact(&message, key),
            },
            LlmError::Permanent { status, message } => LlmError::Permanent {
                status,
                message: redact(&message, key),
            },
            other => other,
        }
    }

    pub(crate) fn retryable(status: Option<u16>, message: impl Into<String>) -> LlmError {
        LlmError::Retryable {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn permanent(status: Option<u16>, message: impl Into<String>) -> LlmError {
        LlmError::Permanent {
            status,
            message: message.into(),
        }
    }
}

fn fmt_status(status: Option<u16>) -> String {
    status.map(|s| format!(" (http {s})")).unwrap_or_default()
}

fn fmt_retry_after(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!("; retry after {}", format_duration(d)))
        .unwrap_or_default()
}

fn fmt_timeout(which: &str, after: Duration) -> String {
    let after = format_duration(after);
    match which {
        "connect" => format!("no connection after {after}"),
        "idle" => format!("no bytes received for {after}"),
        _ => format!("no complete answer after {after}"),
    }
}

/// A provider configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ConfigError {
    /// The provider's name in the config.
    pub provider: String,
    /// What is wrong with it.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(err: LlmError, display: &str, class: ErrorClass) {
        assert_eq!(err.to_string(), display);
        assert_eq!(err.class(), class);
    }

    #[test]
    fn display_and_class() {
        check(
            LlmError::RateLimited {
                retry_after: Some(Duration::from_secs(2)),
                message: "slow down".into(),
            },
            "rate limited (http 429): slow down; retry after 2s",
            ErrorClass::RateLimited,
        );
        check(
            LlmError::RateLimited {
                retry_after: None,
                message: "slow down".into(),
            },
            "rate limited (http 429): slow down",
            ErrorClass::RateLimited,
        );
        check(
            LlmError::retryable(Some(503), "overloaded"),
            "temporary failure (http 503): overloaded",
            ErrorClass::Retryable,
        );
        check(
            LlmError::retryable(None, "connection refused"),
            "temporary failure: connection refused",
            ErrorClass::Retryable,
        );
        check(
            LlmError::permanent(Some(401), "invalid api key"),
            "permanent failure (http 401): invalid api key",
            ErrorClass::Permanent,
        );
        check(
            LlmError::Timeout {
                which: "idle",
                after: Duration::from_millis(1500),
            },
            "idle timeout: no bytes received for 1.5s",
            ErrorClass::Retryable,
        );
        check(
            LlmError::Timeout {
                which: "total",
                after: Duration::from_secs(3_725),
            },
            "total timeout: no complete answer after 1h2m5s",
            ErrorClass::Retryable,
        );
        check(
            LlmError::Timeout {
                which: "connect",
                after: Duration::from_millis(200),
            },
            "connect timeout: no connection after 200ms",
            ErrorClass::Retryable,
        );
        check(
            LlmError::Truncated { received_chars: 12 },
            "stream truncated after 12 characters: the connection ended before the end of the answer",
            ErrorClass::Retryable,
        );
        check(LlmError::Cancelled, "cancelled", ErrorClass::Cancelled);
    }

    #[test]
    fn helpers() {
        let e = LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(1)),
            message: String::new(),
        };
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(e.status(), Some(429));
        assert!(!LlmError::permanent(Some(400), "x").is_retryable());
        assert!(!LlmError::Cancelled.is_retryable());
        let key = Secret::new("k3y");
        let e = LlmError::permanent(Some(401), "bad k3y").redacted(Some(&key));
        assert_eq!(e.to_string(), "permanent failure (http 401): bad ***");
    }
}
