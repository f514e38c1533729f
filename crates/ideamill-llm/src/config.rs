//! What a provider is configured with, what a call asks for and what it returns.

use std::time::Duration;

use crate::secret::Secret;

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI chat completions (`POST {base_url}/chat/completions`): OpenAI,
    /// OpenRouter, Ollama's `/v1`, llama.cpp server, vLLM, LM Studio.
    OpenAi,
    /// Anthropic's Messages API (`POST {base_url}/messages`).
    Anthropic,
}

/// One `[providers.NAME]`, already validated and with its key resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// The provider's name in the config, used in messages and logs.
    pub name: String,
    /// Which API the provider speaks.
    pub kind: ProviderKind,
    /// The API root, e.g. `https://api.openai.com/v1` or
    /// `https://api.anthropic.com/v1`; a trailing `/` is ignored.
    pub base_url: String,
    /// The model asked for in every request, as the provider names it.
    pub model: String,
    /// Sent as `Authorization: Bearer` (OpenAI) or `x-api-key` (Anthropic).
    pub api_key: Option<Secret>,
    /// Extra headers sent with every request (e.g. OpenRouter's `HTTP-Referer`).
    pub headers: Vec<(String, String)>,
    /// Stream the answer (SSE). Needed for the idle timeout to mean "the
    /// model stopped producing"; without it the server sends nothing until
    /// the whole answer is ready, so only the total timeout applies until then.
    pub stream: bool,
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed without receiving a single byte, while streaming (from
    /// the request on) and while reading any body. Must exceed the server's
    /// prompt-processing time if it sends nothing before the first token.
    pub idle_timeout: Duration,
    /// Time allowed for the whole call, from sending the request to the
    /// last byte (time spent waiting in the limiter is not counted).
    pub total_timeout: Duration,
    /// Calls in flight at once, shared by every worker of the process.
    pub max_concurrency: u32,
    /// Requests started per minute, shared like `max_concurrency`.
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt and completion) per minute: an estimate is reserved
    /// before a call and corrected with the actual usage after it.
    pub tokens_per_minute: Option<u32>,
}

impl ProviderConfig {
    /// A config with the defaults: streaming, 10 s connect, 120 s idle,
    /// 10 min total, 4 concurrent calls, no rate limits, no key.
    pub fn new(
        name: impl Into<String>,
        kind: ProviderKind,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            headers: Vec::new(),
            stream: true,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            total_timeout: Duration::from_secs(600),
            max_concurrency: 4,
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }
}

/// One chat call: a single user turn with an optional system prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The system prompt, if any.
    pub system: Option<String>,
    /// The user turn.
    pub prompt: String,
    /// Left out of the request when `None`, so the server's default applies.
    pub temperature: Option<f32>,
    /// Always sent as `max_tokens` (servers that only know that name ignore
    /// `max_completion_tokens`).
    pub max_tokens: u32,
}

impl ChatRequest {
    /// The tokens this call may use, reserved against `tokens_per_minute`
    /// before it is sent: prompt characters / 4 plus `max_tokens`.
    pub fn estimated_tokens(&self) -> u64 {
        self.prompt_token_estimate() + u64::from(self.max_tokens)
    }

    /// The prompt's tokens, estimated as characters / 4 rounded up.
    pub(crate) fn prompt_token_estimate(&self) -> u64 {
        let chars =
            self.system.as_deref().map_or(0, |s| s.chars().count()) + self.prompt.chars().count();
        estimate_tokens(chars)
    }
}

/// Tokens estimated from characters: one per four, rounded up.
pub(crate) fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The whole answer's text.
    pub text: String,
    /// Tokens of the prompt, as the server reported them (else estimated).
    pub prompt_tokens: u64,
    /// Tokens of the answer, as the server reported them (else estimated).
    pub completion_tokens: u64,
    /// True when the server reported no usage and the token counts are our
    /// estimate (characters / 4, rounded up).
    pub usage_counted: bool,
    /// `stop`, `length` (hit `max_tokens`), `end_turn`, `max_tokens`, ... as
    /// the server said it.
    pub finish_reason: Option<String>,
    /// The model that answered, as the server named it (else the configured one).
    pub model: String,
    /// From sending the request to the last byte.
    pub elapsed: Duration,
    /// From sending the request to the first text (streaming only).
    pub first_token_after: Option<Duration>,
    /// Time spent waiting for the limiter (concurrency and rate limits)
    /// before the request was sent.
    pub limiter_wait: Duration,
}

/// A model's price in currency units per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_million: f64,
    /// Per million completion tokens.
    pub output_per_million: f64,
}

/// The cost of a call at `price`.
pub fn cost(prompt_tokens: u64, completion_tokens: u64, price: &Price) -> f64 {
    (prompt_tokens as f64 * price.input_per_million
        + completion_tokens as f64 * price.output_per_million)
        / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_per_million() {
        let price = Price {
            input_per_million: 3.0,
            output_per_million: 15.0,
        };
        let c = cost(1_000_000, 2_000, &price);
        assert!((c - 3.03).abs() < 1e-9, "{c}");
        assert_eq!(cost(0, 0, &price), 0.0);
    }

    #[test]
    fn estimates_round_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(4), 1);
        assert_eq!(estimate_tokens(5), 2);
        let req = ChatRequest {
            system: Some("abcd".into()),
            prompt: "é".repeat(5),
            temperature: None,
            max_tokens: 100,
        };
        assert_eq!(req.estimated_tokens(), 3 + 100);
    }
}
