//! ideamill's system layer: the few operating-system calls the other crates
//! share, each written once with one meaning. Clocks (`clock`), crash-safe
//! file writes, safe opens and free space (`fs`), process liveness, pidfds
//! and memory (`process`), non-blocking pipes (`pipe`) and this machine's
//! name ([`hostname`]).
//!
//! **Invariants:** system calls go through rustix, so this crate has no
//! `unsafe`; it depends on no crate of ours (times are `i64` milliseconds,
//! the same type as `ideamill_core::Millis`); nothing here logs or panics.

#![forbid(unsafe_code)]

pub mod clock;
pub mod fs;
mod hostname;
pub mod pipe;
pub mod process;

pub use hostname::hostname;
