//! The ideamill engine: claims jobs from the store, runs stages, commits
//! their outcomes, and keeps leases alive. It knows the store only through
//! the `Store` trait and stages only through the `Executor` trait.

mod calls;
mod deadline;
mod engine;
mod handoff;
pub mod health;
mod rounds;
mod traces;

pub use calls::StoreCalls;
pub use engine::{Engine, EngineOptions, Progress, RunSummary};
pub use tokio_util::sync::CancellationToken;
