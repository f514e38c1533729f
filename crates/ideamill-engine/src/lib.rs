//! The ideamill engine: claims jobs from the store, runs stages, commits
//! their outcomes, and keeps leases alive. It knows the store only through
//! the `Store` trait and stages only through the `Executor` trait.

pub mod command;
mod engine;
pub mod executor;
pub mod health;
pub mod llm_stage;
pub mod prompt;
pub mod sandbox;

pub use engine::{Engine, EngineOptions, Progress, RunSummary, hostname, now_millis};
pub use tokio_util::sync::CancellationToken;
