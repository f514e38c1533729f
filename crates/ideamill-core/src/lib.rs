//! The pure core of ideamill: the pipeline model, config validation and the
//! state machine. Nothing here does IO or reads the clock: `now` is always an
//! argument, so every rule is tested without a runtime.

pub mod config;
pub mod duration;
pub mod machine;
pub mod model;
pub mod size;
pub mod text;

pub use config::{Config, ConfigError, ConfigErrors};
pub use model::*;
