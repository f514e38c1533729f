//! Every end-to-end test of the `ideamill` binary, in one test binary (one
//! link, one build of the helpers): each module is one concern, `util` the
//! helpers they share.

// A failed test is a panic: unwrap and expect are how these tests say so,
// helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod alerts;
mod binary;
mod browser;
mod containers;
mod disk_full;
mod eval;
mod hang;
mod health;
mod intake;
mod layering;
mod llm;
mod local_model;
mod monitoring;
mod postgres;
mod qa_gate;
mod sandbox;
mod soak;
mod telemetry;
mod util;
