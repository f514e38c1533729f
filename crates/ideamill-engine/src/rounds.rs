//! The gate loop's stop rule: a gate's rejection whose round hash (the
//! item's workspace as the gate found it, and its feedback) is the previous
//! round's changed nothing, so the item fails as `no_progress` instead of
//! spending its remaining rounds on the same answer.

use ideamill_core::Config;
use ideamill_core::machine::{self, StageResult, Transition};
use ideamill_stages::executor::item_workspace;
use ideamill_stages::progress;
use ideamill_store::{ClaimedJob, ItemContext};

/// The hash of the item's workspace before a gate runs (so that what the
/// gate itself writes does not count); `None` for other stages, or when
/// the workspace could not be hashed (the rule then does not apply).
pub(crate) async fn files_before_gate(config: &Config, job: &ClaimedJob) -> Option<String> {
    config.stage(&job.stage)?.gate.as_ref()?;
    let dir = item_workspace(&config.engine.workspace, job.item_id);
    tokio::task::spawn_blocking(move || progress::workspace_hash(&dir))
        .await
        .ok()
        .flatten()
}

/// A gate's rejection: the round's hash (the files the gate found, and its
/// feedback), kept with the feedback.
pub(crate) fn round_hash(files: Option<&str>, result: &StageResult) -> Option<String> {
    match (files, result) {
        (Some(files), StageResult::Rejected { feedback }) => {
            Some(progress::round_hash(files, feedback))
        }
        _ => None,
    }
}

/// `transition` turned into `no_progress` when the round, whose hash is
/// `hash`, repeats the one before it.
pub(crate) fn judge(
    job: &ClaimedJob,
    context: &ItemContext,
    hash: &str,
    transition: Transition,
) -> Transition {
    if progress::repeats_previous_round(&context.feedback, &job.stage, job.round, hash) {
        machine::no_progress(transition, job.round)
    } else {
        transition
    }
}
