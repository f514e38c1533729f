//! `Answer`: what a response has delivered so far, whatever its wire format.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ChatRequest, ChatResponse, estimate_tokens};
use crate::error::LlmError;

#[derive(Debug)]
pub(crate) struct Answer {
    pub text: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    pub model: Option<String>,
    /// The end marker arrived (`[DONE]`, `message_stop`, or a whole JSON body).
    pub done: bool,
    started: Instant,
    first_text_after: Option<Duration>,
}

impl Answer {
    pub fn new(started: Instant) -> Answer {
        Answer {
            text: String::new(),
            prompt_tokens: None,
            completion_tokens: None,
            finish_reason: None,
            model: None,
            done: false,
            started,
            first_text_after: None,
        }
    }

    pub fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.first_text_after.is_none() {
            self.first_text_after = Some(self.started.elapsed());
        }
        self.text.push_str(text);
    }

    pub fn set_model(&mut self, model: Option<&str>) {
        if let Some(m) = model.filter(|m| !m.is_empty()) {
            self.model = Some(m.to_string());
        }
    }

    pub fn set_finish_reason(&mut self, reason: Option<&str>) {
        if let Some(r) = reason.filter(|r| !r.is_empty()) {
            self.finish_reason = Some(r.to_string());
        }
    }

    pub fn truncated(&self) -> LlmError {
        LlmError::Truncated {
            received_chars: self.text.chars().count(),
        }
    }

    /// The response, with token counts estimated where the server gave none.
    pub fn into_response(
        self,
        req: &ChatRequest,
        configured_model: &str,
        streamed: bool,
        limiter_wait: Duration,
    ) -> ChatResponse {
        let counted = self.prompt_tokens.is_none() || self.completion_tokens.is_none();
        let prompt_tokens = self
            .prompt_tokens
            .unwrap_or_else(|| req.prompt_token_estimate());
        let completion_tokens = self
            .completion_tokens
            .unwrap_or_else(|| estimate_tokens(self.text.chars().count()));
        ChatResponse {
            prompt_tokens,
            completion_tokens,
            usage_counted: counted,
            finish_reason: self.finish_reason,
            model: self.model.unwrap_or_else(|| configured_model.to_string()),
            elapsed: self.started.elapsed(),
            first_token_after: if streamed {
                self.first_text_after
            } else {
                None
            },
            limiter_wait,
            text: self.text,
        }
    }
}

/// A retryable error for an answer that cannot be read.
pub(crate) fn malformed(what: &str, detail: impl std::fmt::Display) -> LlmError {
    LlmError::retryable(Some(200), format!("malformed {what}: {detail}"))
}

/// Reads a JSON token count, tolerating its absence.
pub(crate) fn count(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key).and_then(serde_json::Value::as_u64)
}
