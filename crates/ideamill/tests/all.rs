//! Every end-to-end test of the `ideamill` binary, in one test binary (one
//! link, one build of the helpers): each module is one concern, `util` the
//! helpers they share.

mod alerts;
mod binary;
mod browser;
mod disk_full;
mod eval;
mod health;
mod intake;
mod layering;
mod llm;
mod local_model;
mod postgres;
mod sandbox;
mod util;
