//! What the engine tells OpenTelemetry: the spans of an item's trace.
//!
//! An item lives for minutes to days, longer than any span a backend shows
//! well, so its trace is not one open span: a short root span
//! (`ideamill.item`, from the item's creation to its first pickup, sent by
//! the engine that claims its first job), a span per attempt under it
//! (`attempt <stage>`, from claim to result, with retries, gate rejections
//! and the item's end as events), a span per model call under its attempt
//! (`chat <model>`, GenAI conventions), a zero-length `ideamill.recovered`
//! per recovery, and `ideamill.item.end` when the item ends. The root's id
//! is a hash of the trace id, so any process can parent its spans to it
//! without reading anything; Jaeger and Tempo draw that tree as one trace
//! whatever order its spans arrive in and however long it spans.

use ideamill_core::machine::Transition;
use ideamill_core::{ItemState, Millis};
use ideamill_stages::executor::ModelCall;
use ideamill_store::{ClaimedJob, Finish, FinishEffect, ItemRow};
use ideamill_telemetry::span::{Attr, SpanKind, SpanStatus};
use ideamill_telemetry::{SpanId, SpanRecord, Telemetry, TraceId};

/// The spans of one attempt, held from its end until its result is
/// committed (the commit says what became of the item).
pub(crate) struct AttemptSpans {
    pub(crate) trace: TraceId,
    pub(crate) attempt: SpanRecord,
    pub(crate) call: Option<SpanRecord>,
}

/// The item's trace id, if its spans are sent at all.
pub(crate) fn trace_of(telemetry: &Telemetry, item: &ItemRow) -> Option<TraceId> {
    let trace = TraceId::parse(item.trace_id.as_deref()?)?;
    telemetry.traced(&trace).then_some(trace)
}

/// The item's root span, sent when its first job is first claimed.
pub(crate) fn item_root(
    trace: TraceId,
    item: &ItemRow,
    job: &ClaimedJob,
    capture: bool,
) -> SpanRecord {
    let mut span = SpanRecord::new(
        trace,
        trace.item_span(),
        None,
        "ideamill.item",
        item.created_at,
        job.claimed_at,
    );
    span.attr("ideamill.item.id", item.id)
        .attr("ideamill.first_stage", job.stage.as_str());
    if capture {
        span.attr("ideamill.item.text", item.text.as_str());
    }
    span
}

/// The span of an attempt that ran from `started` to `finish.finished_at`,
/// with the events of what the state machine decided.
pub(crate) fn attempt(
    trace: TraceId,
    span_id: SpanId,
    finish: &Finish,
    started: Millis,
    process: &str,
) -> SpanRecord {
    let job = &finish.job;
    let mut span = SpanRecord::new(
        trace,
        span_id,
        Some(trace.item_span()),
        format!("attempt {}", job.stage),
        started,
        finish.finished_at,
    );
    span.attr("ideamill.item.id", job.item_id)
        .attr("ideamill.job.id", job.id)
        .attr("ideamill.stage", job.stage.as_str())
        .attr("ideamill.round", job.round)
        .attr("ideamill.attempt", job.attempt)
        .attr("ideamill.max_attempts", job.max_attempts)
        .attr("ideamill.outcome", finish.outcome.as_str())
        .attr(
            "ideamill.pickup_latency_ms",
            (job.claimed_at - job.run_at).max(0),
        )
        .attr("ideamill.process", process);
    if let Some(code) = finish.exit_code {
        span.attr("process.exit.code", i64::from(code));
    }
    let at = finish.finished_at;
    match &finish.transition {
        Transition::Advance { .. } | Transition::Cancel | Transition::Pause { .. } => {}
        Transition::SendBack { feedback, to } => {
            span.event(
                at,
                "ideamill.gate.rejected",
                vec![
                    ("ideamill.gate".into(), job.stage.as_str().into()),
                    ("ideamill.round".into(), job.round.into()),
                    ("ideamill.send_back.stage".into(), to.stage.as_str().into()),
                    ("ideamill.send_back.round".into(), to.round.into()),
                    (
                        "ideamill.feedback.bytes".into(),
                        (feedback.len() as u64).into(),
                    ),
                ],
            );
        }
        Transition::RetryAt { run_at, error } => {
            span.attr("error.type", error_class(finish));
            span.event(
                at,
                "ideamill.retry",
                vec![
                    ("ideamill.retry.at_ms".into(), (*run_at).into()),
                    (
                        "ideamill.retry.delay_ms".into(),
                        (*run_at - at).max(0).into(),
                    ),
                    ("exception.message".into(), error.as_str().into()),
                ],
            );
            span.status = SpanStatus::Error(error.clone());
        }
        Transition::FailItem { reason, class, .. } => {
            span.attr("error.type", error_class(finish));
            span.attr("ideamill.failure_class", class.as_str());
            span.status = SpanStatus::Error(reason.clone());
        }
    }
    span
}

/// `error.type` of a failed attempt: its outcome (`error`, `timeout`,
/// `hung`, `rate_limited`, …), a small fixed set.
fn error_class(finish: &Finish) -> &'static str {
    finish.outcome.as_str()
}

/// What the commit did, added to the attempt's span; and the item's end
/// span when the item ended.
pub(crate) fn committed(
    spans: &mut AttemptSpans,
    effect: &Result<FinishEffect, String>,
    finish: &Finish,
) -> Option<SpanRecord> {
    let effect = match effect {
        Ok(effect) => effect,
        Err(why) => {
            spans.attempt.status = SpanStatus::Error(format!("result not recorded: {why}"));
            return None;
        }
    };
    spans
        .attempt
        .attr("ideamill.item.state", effect.item_state.as_str());
    if effect.cancelled {
        spans.attempt.attr("ideamill.item.cancelled", true);
    }
    if !matches!(effect.item_state, ItemState::Done | ItemState::Failed) {
        return None;
    }
    let at = finish.finished_at;
    let trace = spans.trace;
    let mut end = SpanRecord::new(
        trace,
        SpanId::random(),
        Some(trace.item_span()),
        "ideamill.item.end",
        at,
        at,
    );
    end.attr("ideamill.item.id", finish.job.item_id)
        .attr("ideamill.item.state", effect.item_state.as_str())
        .attr("ideamill.last_stage", finish.job.stage.as_str())
        .attr("ideamill.rounds", finish.job.round);
    if let Transition::FailItem { reason, class, .. } = &finish.transition {
        end.attr("ideamill.failure_class", class.as_str());
        end.status = SpanStatus::Error(reason.clone());
    }
    Some(end)
}

/// A model call's span under its attempt, in OpenTelemetry's GenAI terms;
/// prompt and answer only with `capture`.
pub(crate) fn model_call(
    trace: TraceId,
    parent: SpanId,
    call: &ModelCall,
    capture: bool,
) -> SpanRecord {
    // An agent CLI's run is one `invoke_agent` span: its own model calls
    // happen inside the CLI, out of our sight.
    let (operation, name) = match call.agent {
        Some(agent) => ("invoke_agent", format!("invoke_agent {agent}")),
        None => ("chat", format!("chat {}", call.request_model)),
    };
    let mut span = SpanRecord::new(
        trace,
        SpanId::random(),
        Some(parent),
        name,
        call.started_at,
        call.ended_at,
    );
    span.kind = SpanKind::Client;
    if let Some(agent) = call.agent {
        span.attr("gen_ai.agent.name", agent);
    }
    span.attr("gen_ai.operation.name", operation)
        .attr("gen_ai.system", call.system)
        .attr("gen_ai.request.model", call.request_model.as_str())
        .attr("ideamill.provider", call.provider.as_str());
    if let Some(model) = &call.response_model {
        span.attr("gen_ai.response.model", model.as_str());
    }
    if let Some(n) = call.input_tokens {
        span.attr("gen_ai.usage.input_tokens", n);
    }
    if let Some(n) = call.output_tokens {
        span.attr("gen_ai.usage.output_tokens", n);
    }
    if let Some(reason) = &call.finish_reason {
        span.attr("gen_ai.response.finish_reasons", reason.as_str());
    }
    // Seconds, as the GenAI metric `gen_ai.server.time_to_first_token` has it.
    if let Some(ttft) = call.first_token_after {
        span.attr("gen_ai.server.time_to_first_token", ttft.as_secs_f64());
    }
    if let Some(wait) = call.limiter_wait {
        span.attr("ideamill.limiter_wait_ms", wait.as_millis() as u64);
    }
    if let Some((message, class)) = &call.error {
        span.attr("error.type", *class);
        span.status = SpanStatus::Error(message.clone());
    }
    if capture {
        span.event(
            call.started_at,
            "gen_ai.content.prompt",
            vec![("gen_ai.prompt".into(), Attr::Str(call.prompt.clone()))],
        );
        if let Some(text) = &call.completion {
            span.event(
                call.ended_at,
                "gen_ai.content.completion",
                vec![("gen_ai.completion".into(), Attr::Str(text.clone()))],
            );
        }
    }
    span
}

/// A recovery (a lease expired, a dead or restarted engine's jobs taken
/// back): a zero-length span in the item's trace with the event.
pub(crate) fn recovered(
    trace: TraceId,
    at: Millis,
    why: &'static str,
    job: &ideamill_store::ReapedJob,
) -> SpanRecord {
    let mut span = SpanRecord::new(
        trace,
        SpanId::random(),
        Some(trace.item_span()),
        "ideamill.recovered",
        at,
        at,
    );
    span.attr("ideamill.item.id", job.item_id)
        .attr("ideamill.job.id", job.job_id)
        .attr("ideamill.stage", job.stage.as_str());
    span.event(
        at,
        why,
        vec![
            ("ideamill.lease_owner".into(), job.owner.as_str().into()),
            ("ideamill.action".into(), format!("{:?}", job.action).into()),
        ],
    );
    span
}
