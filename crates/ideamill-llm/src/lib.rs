//! ideamill-llm: the model-calling layer of ideamill's `llm` stages.
//!
//! - [`Provider`] calls an OpenAI-compatible chat-completions endpoint or
//!   Anthropic's Messages API, streamed by default, under connect, idle and
//!   total timeouts, within limits shared by every worker ([`Limiter`]).
//! - Every failure is an [`LlmError`] whose [`LlmError::class`] says whether
//!   to retry, wait or give up. A stream cut short is an error, never a
//!   partial answer; API keys ([`Secret`]) never appear in messages.
//! - [`extract_files`] finds fenced code blocks that name a file, and
//!   [`write_files`] writes them atomically inside a workspace, never outside.

mod answer;
mod anthropic;
mod blocks;
mod classify;
mod config;
mod error;
mod limiter;
mod openai;
mod provider;
mod secret;
mod sse;
mod workspace;

pub use blocks::{Extraction, FileBlock, extract_files};
pub use config::{ChatRequest, ChatResponse, Price, ProviderConfig, ProviderKind, cost};
pub use error::{ConfigError, ErrorClass, LlmError};
pub use limiter::{Limiter, Reservation};
pub use provider::Provider;
pub use secret::Secret;
pub use workspace::{FileLimits, WriteReport, write_files};
