//! The engine's side of health, what needs its runtime or its process: the
//! beat produced inside the async runtime (`pulse`), the watchdog thread that
//! watches the beat from outside the runtime and saves evidence when it
//! stops, the beat pipe to the supervisor, and systemd notifications. The
//! state they share, the status file and the verdict are `ideamill_health`.

pub mod beat_pipe;
pub mod pulse;
pub mod systemd;
pub mod watchdog;
