//! ideamill's stage kinds: what one attempt of a stage does. The engine
//! decides when a job runs, for how long and what its outcome means for the
//! item; this crate runs it: a program in the sandbox (`command`), a model
//! call (`llm`), a coding-agent CLI in the sandbox (`agent`). The engine
//! knows them only through [`executor::Executor`]; [`kind`] is the
//! contract each kind implements and the registry that lists them.
//! Processes are watched for hangs by progress (`stall`, with `evidence`),
//! and none is left behind (`orphans`: the engine's subreaper).

pub mod agent;
pub mod budget;
pub mod command;
pub mod evidence;
pub mod executor;
pub mod kind;
pub mod llm_stage;
pub mod orphans;
pub mod progress;
pub mod prompt;
pub mod resources;
pub mod sandbox;
pub mod stall;
