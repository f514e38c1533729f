//! What the SQLite and PostgreSQL stores share: the meaning of a finish (its
//! fence, the rows it writes, its effect), event messages, how rows decode
//! into records, and what people see for an item. Each backend keeps only
//! its SQL; everything here is backend-neutral and does no IO.

use ideamill_core::machine::{LostJob, NextJob, Transition};
use ideamill_core::{
    AttemptOutcome, FailureClass, ItemId, ItemState, JobId, JobState, Millis, Usage,
};

use crate::types::event_kind as ek;
use crate::*;

pub(crate) use ideamill_sys::clock::now_millis;

/// Midnight UTC of the day holding `now`.
pub fn day_start(now: Millis) -> Millis {
    now - now.rem_euclid(86_400_000)
}

/// The first line of a message, at most 200 characters, for event texts.
pub(crate) fn one_line(s: &str) -> String {
    let line = s.trim().lines().next().unwrap_or("");
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    }
}

/// What people see for an item, from its stored state and its current job.
pub(crate) fn display_state(item: ItemState, job_state: Option<&str>, attempts: u32) -> String {
    match (item, job_state) {
        (ItemState::Active, Some("running")) => "running".into(),
        (ItemState::Active, Some("paused")) => "paused".into(),
        (ItemState::Active, Some("queued")) if attempts > 0 => "retrying".into(),
        (ItemState::Active, _) => "queued".into(),
        (other, _) => other.as_str().into(),
    }
}

/// The condition a state filter adds to a query over `items i` joined to
/// its current job `j`. Plain SQL, valid on both backends.
pub(crate) fn state_clause(filter: StateFilter) -> &'static str {
    match filter {
        StateFilter::Active => "i.state = 'active'",
        StateFilter::Queued => "i.state = 'active' AND j.state = 'queued' AND j.attempts = 0",
        StateFilter::Retrying => "i.state = 'active' AND j.state = 'queued' AND j.attempts > 0",
        StateFilter::Running => "i.state = 'active' AND j.state = 'running'",
        StateFilter::Paused => "i.state = 'active' AND j.state = 'paused'",
        StateFilter::Done => "i.state = 'done'",
        StateFilter::Failed => "i.state = 'failed'",
        StateFilter::Cancelled => "i.state = 'cancelled'",
    }
}

/// The columns of an item summary (decoded by [`item_summary`]), over
/// `items i` joined to its current job `j`.
pub(crate) const ITEM_SUMMARY_SELECT: &str =
    "SELECT i.id, substr(i.text, 1, 500) AS text, i.state, i.stage, i.round,
        i.last_error, i.failure_class, i.created_at, i.updated_at, j.state AS job_state,
        COALESCE(j.attempts, 0) AS attempts";

/// Finish a page query of item summaries: `sql` ends in a WHERE condition;
/// this adds the filter's conditions and the order, newest first by
/// `id_column`. Parameters: `$1` the stage, `$2` the id to page before, `$3`
/// the limit ([`page_limit`]).
pub(crate) fn item_page_sql(mut sql: String, filter: &ItemFilter, id_column: &str) -> String {
    if let Some(state) = filter.state {
        sql.push_str(" AND ");
        sql.push_str(state_clause(state));
    }
    if filter.stage.is_some() {
        sql.push_str(" AND i.stage = $1");
    }
    if let Some(class) = filter.failure {
        // A fixed word of our own enum, not user text: safe to inline.
        sql.push_str(&format!(
            " AND i.state = 'failed' AND i.failure_class = '{}'",
            class.as_str()
        ));
    }
    if filter.before_id.is_some() {
        sql.push_str(&format!(" AND {id_column} < $2"));
    }
    sql.push_str(&format!(" ORDER BY {id_column} DESC LIMIT $3"));
    sql
}

/// A page's size: the filter's limit, 100 when it says none.
pub(crate) fn page_limit(filter: &ItemFilter) -> i64 {
    i64::from(if filter.limit == 0 { 100 } else { filter.limit })
}

pub(crate) fn job_state(s: &str) -> Result<JobState> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown job state {s:?}")))
}

pub(crate) fn item_state(s: &str) -> Result<ItemState> {
    ItemState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown item state {s:?}")))
}

/// Typed reads from a row of either backend. Integers are read as `i64`
/// (SQLite's only integer, PostgreSQL's `bigint`) and narrowed here.
pub(crate) trait RowExt {
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn real(&self, col: &str) -> Result<f64>;
    fn opt_real(&self, col: &str) -> Result<Option<f64>>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn opt_flag(&self, col: &str) -> Result<Option<bool>>;

    fn u32(&self, col: &str) -> Result<u32> {
        let v = self.int(col)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} out of range: {v}")))
    }

    fn count(&self, col: &str) -> Result<u64> {
        Ok(self.int(col)?.max(0) as u64)
    }

    fn opt_i32(&self, col: &str) -> Result<Option<i32>> {
        self.opt_int(col)?
            .map(|v| {
                i32::try_from(v)
                    .map_err(|_| StoreError::Corrupt(format!("{col} out of range: {v}")))
            })
            .transpose()
    }
}

macro_rules! impl_row_ext {
    ($row:ty) => {
        impl $crate::common::RowExt for $row {
            fn int(&self, col: &str) -> $crate::Result<i64> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn opt_int(&self, col: &str) -> $crate::Result<Option<i64>> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn text(&self, col: &str) -> $crate::Result<String> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn opt_text(&self, col: &str) -> $crate::Result<Option<String>> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn real(&self, col: &str) -> $crate::Result<f64> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn opt_real(&self, col: &str) -> $crate::Result<Option<f64>> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn flag(&self, col: &str) -> $crate::Result<bool> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
            fn opt_flag(&self, col: &str) -> $crate::Result<Option<bool>> {
                Ok(sqlx::Row::try_get(self, col)?)
            }
        }
    };
}
pub(crate) use impl_row_ext;

pub(crate) const ITEM_COLUMNS: &str = "id, text, metadata, state, stage, round, last_error, failure_class, created_at, updated_at, finished_at, trace_id";

/// The `failure_class` column: `None` when NULL, an error when a word we do
/// not know (the column's CHECK keeps those out).
pub(crate) fn failure_class(r: &impl RowExt) -> Result<Option<FailureClass>> {
    r.opt_text("failure_class")?
        .map(|s| {
            FailureClass::parse(&s)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown failure class {s:?}")))
        })
        .transpose()
}

pub(crate) fn item_row(r: &impl RowExt) -> Result<ItemRow> {
    let metadata = r.text("metadata")?;
    Ok(ItemRow {
        id: r.int("id")?,
        text: r.text("text")?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::String(metadata)),
        state: item_state(&r.text("state")?)?,
        stage: r.opt_text("stage")?,
        round: r.u32("round")?,
        last_error: r.opt_text("last_error")?,
        failure_class: failure_class(r)?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        finished_at: r.opt_int("finished_at")?,
        trace_id: r.opt_text("trace_id")?,
    })
}

/// An item's context as one JSON object, as each store builds it in SQL (an
/// expression, so that a claim can read it along): the item's columns by
/// name, and its `outputs` and `feedback` as arrays of rows.
pub(crate) fn item_context_json(json: &str) -> Result<ItemContext> {
    let corrupt = |e: String| StoreError::Corrupt(format!("an item's context: {e}"));
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    let mut rows = |key: &str| object.remove(key).unwrap_or_default();
    let (outputs, feedback) = (rows("outputs"), rows("feedback"));
    Ok(ItemContext {
        item: item_row(&JsonRow(object))?,
        outputs: serde_json::from_value(outputs).map_err(|e| corrupt(format!("outputs: {e}")))?,
        feedback: serde_json::from_value(feedback)
            .map_err(|e| corrupt(format!("feedback: {e}")))?,
        traceparent: None,
    })
}

/// A JSON object read as a row: its keys are the columns, `null` is NULL.
struct JsonRow(serde_json::Map<String, serde_json::Value>);

impl JsonRow {
    fn get<T>(
        &self,
        col: &str,
        read: impl FnOnce(&serde_json::Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.0.get(col) {
            None => Err(StoreError::Corrupt(format!("no column {col}"))),
            Some(serde_json::Value::Null) => Ok(None),
            Some(v) => read(v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("{col} has the wrong type: {v}"))),
        }
    }

    fn required<T>(&self, col: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| StoreError::Corrupt(format!("{col} is NULL")))
    }
}

impl RowExt for JsonRow {
    fn int(&self, col: &str) -> Result<i64> {
        self.required(col, self.opt_int(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        self.get(col, serde_json::Value::as_i64)
    }
    fn text(&self, col: &str) -> Result<String> {
        self.required(col, self.opt_text(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.get(col, |v| v.as_str().map(str::to_owned))
    }
    fn real(&self, col: &str) -> Result<f64> {
        self.required(col, self.opt_real(col)?)
    }
    fn opt_real(&self, col: &str) -> Result<Option<f64>> {
        self.get(col, serde_json::Value::as_f64)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        self.required(col, self.opt_flag(col)?)
    }
    fn opt_flag(&self, col: &str) -> Result<Option<bool>> {
        // SQLite has no booleans: 0 or 1.
        self.get(col, |v| v.as_bool().or_else(|| v.as_i64().map(|n| n != 0)))
    }
}

pub(crate) fn output_row(r: &impl RowExt) -> Result<OutputRow> {
    Ok(OutputRow {
        stage: r.text("stage")?,
        round: r.u32("round")?,
        job_id: r.int("job_id")?,
        output: r.text("output")?,
        created_at: r.int("created_at")?,
    })
}

pub(crate) fn feedback_row(r: &impl RowExt) -> Result<FeedbackRow> {
    Ok(FeedbackRow {
        stage: r.text("stage")?,
        round: r.u32("round")?,
        feedback: r.text("feedback")?,
        created_at: r.int("created_at")?,
        round_hash: r.opt_text("round_hash")?,
    })
}

pub(crate) const EVENT_COLUMNS: &str = "id, at, kind, item_id, job_id, process, message";

pub(crate) fn event_row(r: &impl RowExt) -> Result<Event> {
    Ok(Event {
        id: r.int("id")?,
        at: r.int("at")?,
        kind: r.text("kind")?,
        item_id: r.opt_int("item_id")?,
        job_id: r.opt_int("job_id")?,
        process: r.opt_text("process")?,
        message: r.text("message")?,
    })
}

pub(crate) const JOB_COLUMNS: &str = "id, stage, round, state, attempts, max_attempts, run_at, lease_owner, lease_expires_at, last_error,
                    created_at, finished_at";

pub(crate) fn job_row(r: &impl RowExt) -> Result<JobRow> {
    Ok(JobRow {
        id: r.int("id")?,
        stage: r.text("stage")?,
        round: r.u32("round")?,
        state: job_state(&r.text("state")?)?,
        attempts: r.u32("attempts")?,
        max_attempts: r.u32("max_attempts")?,
        run_at: r.int("run_at")?,
        lease_owner: r.opt_text("lease_owner")?,
        lease_expires_at: r.opt_int("lease_expires_at")?,
        last_error: r.opt_text("last_error")?,
        created_at: r.int("created_at")?,
        finished_at: r.opt_int("finished_at")?,
    })
}

pub(crate) const ATTEMPT_COLUMNS: &str = "id, job_id, stage, round, attempt, process, outcome, started_at, finished_at, exit_code, error,
                    output, stderr, provider, model, prompt_tokens, completion_tokens, cost, usage_counted";

pub(crate) fn attempt_row(r: &impl RowExt) -> Result<AttemptRow> {
    let outcome = r.text("outcome")?;
    Ok(AttemptRow {
        id: r.int("id")?,
        job_id: r.int("job_id")?,
        stage: r.text("stage")?,
        round: r.u32("round")?,
        attempt: r.u32("attempt")?,
        process: r.text("process")?,
        outcome: AttemptOutcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown attempt outcome {outcome:?}")))?,
        started_at: r.int("started_at")?,
        finished_at: r.int("finished_at")?,
        exit_code: r.opt_i32("exit_code")?,
        error: r.opt_text("error")?,
        output: r.opt_text("output")?,
        stderr: r.opt_text("stderr")?,
        usage: usage_of(r)?,
    })
}

fn usage_of(r: &impl RowExt) -> Result<Option<Usage>> {
    let Some(provider) = r.opt_text("provider")? else {
        return Ok(None);
    };
    let prompt_tokens = r.opt_int("prompt_tokens")?;
    let completion_tokens = r.opt_int("completion_tokens")?;
    let cost = r.opt_real("cost")?;
    Ok(Some(Usage {
        provider,
        model: r.opt_text("model")?.unwrap_or_default(),
        prompt_tokens: prompt_tokens.unwrap_or(0) as u64,
        completion_tokens: completion_tokens.unwrap_or(0) as u64,
        cost: cost.unwrap_or(0.0),
        counted: r.opt_flag("usage_counted")?.unwrap_or(false),
        // A usage row whose figures are all NULL was written as unknown.
        unknown: prompt_tokens.is_none() && completion_tokens.is_none() && cost.is_none(),
    }))
}

pub(crate) fn process_row(r: &impl RowExt) -> Result<ProcessInfo> {
    Ok(ProcessInfo {
        id: r.text("id")?,
        host: r.text("host")?,
        pid: r.u32("pid")?,
        version: r.text("version")?,
        started_at: r.int("started_at")?,
        last_beat_at: r.int("last_beat_at")?,
        stopped_at: r.opt_int("stopped_at")?,
        held_jobs: r.count("held")?,
    })
}

pub(crate) fn running_job(r: &impl RowExt) -> Result<RunningJob> {
    Ok(RunningJob {
        job_id: r.int("id")?,
        item_id: r.int("item_id")?,
        stage: r.text("stage")?,
        round: r.u32("round")?,
        attempt: r.u32("attempts")?,
        owner: r.opt_text("lease_owner")?.unwrap_or_default(),
        started_at: r.int("started_at")?,
        lease_expires_at: r.opt_int("lease_expires_at")?.unwrap_or(0),
    })
}

/// A job as a claim, the reaper or a release reads it back: `attempts` is
/// the attempt number, `attempt_offset` corrects it where the row was
/// already uncounted (release).
pub(crate) fn claimed_job(
    r: &impl RowExt,
    attempt_offset: u32,
    claimed_at: Option<Millis>,
) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        id: r.int("id")?,
        item_id: r.int("item_id")?,
        stage: r.text("stage")?,
        round: r.u32("round")?,
        attempt: r.u32("attempts")? + attempt_offset,
        max_attempts: r.u32("max_attempts")?,
        lease_token: r.int("lease_token")?,
        run_at: r.int("run_at")?,
        claimed_at: match claimed_at {
            Some(at) => at,
            None => r.int("started_at")?,
        },
    })
}

/// A claim's rows as jobs, in the order the claim picked them (RETURNING
/// does not keep it), each with its item's context where the row has a
/// `context` column (`with_contexts`). A context that cannot be read here
/// is `None`: the job reads it again on its own, and that read reports the
/// error.
pub(crate) fn claimed_jobs<R: RowExt>(
    rows: &[R],
    now: Millis,
    with_contexts: bool,
) -> Result<Vec<(ClaimedJob, Option<ItemContext>)>> {
    let mut jobs = rows
        .iter()
        .map(|r| {
            let job = claimed_job(r, 0, Some(now))?;
            let context = with_contexts
                .then(|| {
                    r.text("context")
                        .and_then(|json| item_context_json(&json))
                        .inspect_err(|e| tracing::debug!("Job {}'s context: {e}", job.id))
                        .ok()
                })
                .flatten();
            Ok((r.int("priority")?, job, context))
        })
        .collect::<Result<Vec<_>>>()?;
    jobs.sort_by_key(|(priority, job, _)| (*priority, job.run_at, job.id));
    Ok(jobs
        .into_iter()
        .map(|(_, job, context)| (job, context))
        .collect())
}

pub(crate) fn usage_totals(r: &impl RowExt) -> Result<UsageTotals> {
    Ok(UsageTotals {
        prompt_tokens: r.count("pt")?,
        completion_tokens: r.count("ct")?,
        cost: r.real("cost")?,
    })
}

pub(crate) fn stage_attempts(r: &impl RowExt) -> Result<StageAttempts> {
    let worked = r.count("worked")?;
    let failed = r.count("failed")?;
    Ok(StageAttempts {
        stage: r.text("stage")?,
        attempts: worked + failed,
        worked,
        failed,
        hung: r.count("hung")?,
        last_error: r.opt_text("last_error")?.map(|e| one_line(&e)),
    })
}

/// An attempt row to insert.
pub(crate) struct AttemptRecord<'a> {
    pub job: &'a ClaimedJob,
    pub process: &'a str,
    pub outcome: AttemptOutcome,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub exit_code: Option<i32>,
    pub error: Option<&'a str>,
    pub output: Option<&'a str>,
    pub stderr: Option<&'a str>,
    pub usage: Option<&'a Usage>,
}

impl<'a> AttemptRecord<'a> {
    /// An attempt that ended without running to completion (lost, released).
    pub fn interrupted(
        job: &'a ClaimedJob,
        process: &'a str,
        outcome: AttemptOutcome,
        now: Millis,
        note: &'a str,
    ) -> AttemptRecord<'a> {
        AttemptRecord {
            job,
            process,
            outcome,
            started_at: job.claimed_at,
            finished_at: now,
            exit_code: None,
            error: Some(note),
            output: None,
            stderr: None,
            usage: None,
        }
    }
}

/// The job-row update that fences a finish: applied only where the job is
/// still running under the finisher's lease token.
pub(crate) struct Fence<'a> {
    pub state: &'static str,
    /// A new `run_at` (a retry's backoff), else unchanged.
    pub run_at: Option<Millis>,
    /// A new `last_error`, else unchanged.
    pub error: Option<&'a str>,
    /// The job ends here (`finished_at` is set).
    pub finished: bool,
}

/// The fence of each finish of a batch, with its place in the batch; a
/// finish repeated within the batch is left out (stale, as it would be
/// one after another).
pub(crate) fn fences(finishes: &[Finish]) -> Vec<(usize, &Finish, Fence<'_>)> {
    let mut seen = std::collections::HashSet::new();
    finishes
        .iter()
        .enumerate()
        .filter(|(_, f)| seen.insert((f.job.id, f.job.lease_token)))
        .map(|(n, f)| (n, f, fence(f)))
        .collect()
}

pub(crate) fn fence(f: &Finish) -> Fence<'_> {
    let state = crate::transition_job_state(&f.transition);
    let (run_at, error) = match &f.transition {
        Transition::RetryAt { run_at, error } => (Some(*run_at), Some(error.as_str())),
        Transition::FailItem { reason, .. } => (None, Some(reason.as_str())),
        _ => (None, f.error.as_deref()),
    };
    Fence {
        state: state.as_str(),
        run_at,
        error,
        finished: !matches!(state, JobState::Queued | JobState::Paused),
    }
}

/// Everything a finish that passed its fence writes, besides its job row.
pub(crate) struct Plan<'a> {
    pub attempt: AttemptRecord<'a>,
    pub effect: FinishEffect,
    /// The stage's output (a passing attempt).
    pub output: Option<&'a str>,
    /// The job to enqueue (next stage, send-back).
    pub next: Option<&'a NextJob>,
    /// The item is done.
    pub done: bool,
    /// A gate's rejection to keep.
    pub feedback: Option<&'a str>,
    /// The job ends judged: it counts in the gate tallies
    /// (`shared/tallies.rs`).
    pub judged: bool,
    /// A new `last_error` for the item (retry scheduled, paused).
    pub item_error: Option<&'a str>,
    /// The item fails with this reason, of this class.
    pub fail_reason: Option<(&'a str, FailureClass)>,
    /// The try does not count (paused before it ran).
    pub uncount: bool,
    /// The item is cancelled (the stage asked to cancel it).
    pub cancel_item: bool,
    pub event: Option<NewEvent>,
}

const ACTIVE_ENQUEUED: FinishEffect = FinishEffect {
    item_state: ItemState::Active,
    enqueued: true,
    cancelled: false,
};

/// What a finish that passed its fence does. `cancelled`: someone asked
/// to cancel the job while it ran, which wins over its result.
pub(crate) fn plan(f: &Finish, cancelled: bool) -> Plan<'_> {
    let job = &f.job;
    let now = f.finished_at;
    let passed = matches!(f.transition, Transition::Advance { .. }) && !cancelled;
    let mut plan = Plan {
        attempt: AttemptRecord {
            job,
            process: &f.owner,
            outcome: if cancelled {
                AttemptOutcome::Cancelled
            } else {
                f.outcome
            },
            started_at: f.started_at,
            finished_at: now,
            exit_code: f.exit_code,
            error: f.error.as_deref(),
            // A passing attempt's output is the stage's output, stored once
            // in `outputs`.
            output: if passed { None } else { f.output.as_deref() },
            stderr: f.stderr.as_deref(),
            usage: f.usage.as_ref(),
        },
        effect: FinishEffect {
            item_state: ItemState::Cancelled,
            enqueued: false,
            cancelled: true,
        },
        output: None,
        next: None,
        done: false,
        feedback: None,
        judged: false,
        item_error: None,
        fail_reason: None,
        uncount: false,
        cancel_item: false,
        event: None,
    };
    if cancelled {
        return plan;
    }
    let event = |kind: &'static str, message: String| NewEvent {
        at: now,
        kind,
        item_id: Some(job.item_id),
        job_id: Some(job.id),
        process: Some(f.owner.clone()),
        message,
    };
    match &f.transition {
        Transition::Advance { output, next } => {
            plan.output = Some(output);
            plan.judged = true;
            match next {
                Some(next) => {
                    plan.next = Some(next);
                    plan.effect = ACTIVE_ENQUEUED;
                }
                None => {
                    plan.done = true;
                    plan.effect = FinishEffect {
                        item_state: ItemState::Done,
                        enqueued: false,
                        cancelled: false,
                    };
                }
            }
        }
        Transition::SendBack { feedback, to } => {
            plan.feedback = Some(feedback);
            plan.next = Some(to);
            plan.event = Some(event(
                ek::GATE_REJECTED,
                format!(
                    "Gate `{}` rejected round {}; sent back to `{}` for round {}",
                    job.stage, job.round, to.stage, to.round
                ),
            ));
            plan.effect = ACTIVE_ENQUEUED;
        }
        Transition::RetryAt { run_at, error } => {
            plan.item_error = Some(error);
            plan.event = Some(event(
                ek::RETRY_SCHEDULED,
                format!(
                    "Attempt {} of {} at stage `{}` failed ({}); retrying in {} ms",
                    job.attempt,
                    job.max_attempts,
                    job.stage,
                    one_line(error),
                    run_at - now
                ),
            ));
            plan.effect = ACTIVE_ENQUEUED;
        }
        Transition::FailItem {
            reason,
            feedback,
            class,
        } => {
            plan.feedback = feedback.as_deref();
            plan.judged = feedback.is_some();
            plan.fail_reason = Some((reason, *class));
            plan.event = Some(event(
                ek::ITEM_FAILED,
                format!("Item {} failed: {}", job.item_id, one_line(reason)),
            ));
            plan.effect = FinishEffect {
                item_state: ItemState::Failed,
                enqueued: false,
                cancelled: false,
            };
        }
        Transition::Pause { reason } => {
            plan.uncount = true;
            plan.item_error = Some(reason);
            plan.event = Some(event(
                ek::BUDGET_REACHED,
                format!(
                    "Item {} paused at stage `{}`: {reason}",
                    job.item_id, job.stage
                ),
            ));
            plan.effect = FinishEffect {
                item_state: ItemState::Active,
                enqueued: false,
                cancelled: false,
            };
        }
        Transition::Cancel => {
            plan.cancel_item = true;
            plan.effect = FinishEffect {
                item_state: ItemState::Cancelled,
                enqueued: false,
                cancelled: true,
            };
        }
    }
    plan
}

/// The event for a finish whose lease token no longer held.
pub(crate) fn stale_completion(f: &Finish) -> NewEvent {
    let job = &f.job;
    NewEvent {
        at: f.finished_at,
        kind: ek::STALE_COMPLETION,
        item_id: Some(job.item_id),
        job_id: Some(job.id),
        process: Some(f.owner.clone()),
        message: format!(
            "Discarded the result of attempt {} of job {} (stage `{}`): its lease was lost, so another process owns the job",
            job.attempt, job.id, job.stage
        ),
    }
}

/// What the reaper does with one expired job.
pub(crate) struct Reap {
    pub action: LostJob,
    pub state: &'static str,
    pub run_at: Millis,
    /// The job's and the lost attempt's error.
    pub error: String,
    /// The item fails with this reason (of the infrastructure: a lost
    /// worker is the host's failure, never the work's).
    pub fail_reason: Option<String>,
    pub event: NewEvent,
}

pub(crate) fn reap(job: &ClaimedJob, owner: &str, cancel_requested: bool, now: Millis) -> Reap {
    let action =
        ideamill_core::machine::after_lost(job.attempt, job.max_attempts, cancel_requested);
    let error =
        format!("lease expired: process {owner} stopped renewing it (killed, hung or cut off)");
    let (state, run_at) = match action {
        LostJob::Requeue => ("queued", now),
        LostJob::Fail => ("failed", job.run_at),
        LostJob::Cancel => ("cancelled", job.run_at),
    };
    let mut fail_reason = None;
    let what = match action {
        LostJob::Requeue => format!(
            "made runnable again (attempt {} of {})",
            job.attempt, job.max_attempts
        ),
        LostJob::Fail => {
            fail_reason = Some(format!(
                "stage `{}` failed after {} attempts: the last one was lost ({error})",
                job.stage, job.attempt
            ));
            format!(
                "item failed: that was attempt {} of {}",
                job.attempt, job.max_attempts
            )
        }
        LostJob::Cancel => "its cancellation completed".to_string(),
    };
    let event = NewEvent {
        at: now,
        kind: ek::LEASE_EXPIRED,
        item_id: Some(job.item_id),
        job_id: Some(job.id),
        process: Some(owner.to_string()),
        message: format!(
            "Recovered job {} (item {}, stage `{}`) from process {owner}, whose lease expired; {what}",
            job.id, job.item_id, job.stage
        ),
    };
    Reap {
        action,
        state,
        run_at,
        error,
        fail_reason,
        event,
    }
}

/// The note on an attempt given back at shutdown.
pub(crate) const RELEASED_NOTE: &str =
    "the process shut down before the attempt finished; it does not count";

pub(crate) fn jobs_released(owner: &str, n: usize, now: Millis) -> NewEvent {
    NewEvent {
        at: now,
        kind: ek::JOBS_RELEASED,
        item_id: None,
        job_id: None,
        process: Some(owner.to_string()),
        message: format!(
            "Shutting down: gave back {} unfinished job{} for another process to run",
            n,
            if n == 1 { "" } else { "s" }
        ),
    }
}

pub(crate) fn process_dead(process: &str, n: u64, now: Millis) -> NewEvent {
    NewEvent {
        at: now,
        kind: ek::PROCESS_DEAD,
        item_id: None,
        job_id: None,
        process: Some(process.to_string()),
        message: format!(
            "Process {process} is gone without stopping cleanly; expired its {n} lease{} so its jobs run again now",
            if n == 1 { "" } else { "s" }
        ),
    }
}

pub(crate) fn process_started(p: &ProcessInfo) -> NewEvent {
    NewEvent {
        at: p.started_at,
        kind: ek::PROCESS_STARTED,
        item_id: None,
        job_id: None,
        process: Some(p.id.clone()),
        message: format!(
            "Engine process {} started on {} (pid {}, {})",
            p.id, p.host, p.pid, p.version
        ),
    }
}

pub(crate) fn process_stopped(id: &str, now: Millis) -> NewEvent {
    NewEvent {
        at: now,
        kind: ek::PROCESS_STOPPED,
        item_id: None,
        job_id: None,
        process: Some(id.to_string()),
        message: format!("Engine process {id} stopped cleanly"),
    }
}

/// Why `retry_item` refuses, given the item's state and its current job's.
///
/// A job still `running` is still held by a process, whatever the item's
/// state: after a cancel, its process is being killed (SIGTERM, the stage's
/// kill grace, SIGKILL) until the engine records the cancelled attempt, or
/// its lease expires if that engine died. A new job of the item could start
/// next to it, in the same workspace, so the retry waits for it to end.
pub(crate) fn retry_refusal(
    id: ItemId,
    state: &str,
    job_state: Option<&str>,
) -> Option<StoreError> {
    if job_state != Some("running") {
        return None;
    }
    Some(StoreError::InvalidRequest(match state {
        "active" => format!("item {id} is running now; wait for it or cancel it first"),
        "cancelled" => format!(
            "item {id}'s cancelled job is still stopping (its process is being killed); retry in a moment"
        ),
        other => format!(
            "item {id} is {other} but its job is still held by a process; retry in a moment"
        ),
    }))
}

pub(crate) fn retried_waiting(id: ItemId, now: Millis) -> NewEvent {
    item_retried(
        id,
        now,
        format!("Item {id} retried by hand: its waiting job runs now"),
    )
}

pub(crate) fn retried_moved(id: ItemId, from: &str, next: &NextJob, now: Millis) -> NewEvent {
    item_retried(
        id,
        now,
        format!(
            "Item {id} moved by hand: its waiting job of stage `{from}` is cancelled; stage `{}` runs instead (round {})",
            next.stage, next.round
        ),
    )
}

pub(crate) fn retried_again(id: ItemId, state: &str, next: &NextJob, now: Millis) -> NewEvent {
    item_retried(
        id,
        now,
        format!(
            "Item {id} retried by hand from `{state}`: stage `{}` runs again (round {})",
            next.stage, next.round
        ),
    )
}

fn item_retried(id: ItemId, now: Millis, message: String) -> NewEvent {
    NewEvent {
        at: now,
        kind: ek::ITEM_RETRIED,
        item_id: Some(id),
        job_id: None,
        process: None,
        message,
    }
}

pub(crate) fn not_cancellable(id: ItemId, state: &str) -> StoreError {
    StoreError::InvalidRequest(format!(
        "item {id} is already {state}; there is nothing to cancel"
    ))
}

pub(crate) fn item_cancelled(id: ItemId, was_running: bool, now: Millis) -> NewEvent {
    NewEvent {
        at: now,
        kind: ek::ITEM_CANCELLED,
        item_id: Some(id),
        job_id: None,
        process: None,
        message: if was_running {
            format!("Item {id} cancelled by hand; its running job is being stopped")
        } else {
            format!("Item {id} cancelled by hand")
        },
    }
}

pub(crate) fn budget_resumed(item: ItemId, job: JobId, now: Millis) -> NewEvent {
    NewEvent {
        at: now,
        kind: ek::BUDGET_RESUMED,
        item_id: Some(item),
        job_id: Some(job),
        process: None,
        message: format!("Item {item} resumed: its budget allows more work now"),
    }
}

pub(crate) fn pruned(counts: &PruneCounts) -> NewEvent {
    NewEvent {
        at: now_millis(),
        kind: ek::PRUNED,
        item_id: None,
        job_id: None,
        process: None,
        message: format!(
            "Pruned {} finished items and {} events older than the retention",
            counts.items, counts.events
        ),
    }
}

/// Items pruned per transaction, so that engines are never locked out long.
pub(crate) const PRUNE_BATCH: u64 = 500;

/// The usage totals of an item's attempts, as `show` reports them.
pub(crate) fn usage_total(attempts: &[AttemptRow]) -> UsageTotals {
    attempts
        .iter()
        .filter_map(|a| a.usage.as_ref())
        .fold(UsageTotals::default(), |t, u| UsageTotals {
            prompt_tokens: t.prompt_tokens + u.prompt_tokens,
            completion_tokens: t.completion_tokens + u.completion_tokens,
            cost: t.cost + u.cost,
        })
}

/// Put an item's parts together as `show` reports them.
pub(crate) fn item_detail(
    item: ItemRow,
    jobs: Vec<JobRow>,
    attempts: Vec<AttemptRow>,
    outputs: Vec<OutputRow>,
    feedback: Vec<FeedbackRow>,
    events: Vec<Event>,
) -> ItemDetail {
    let current = jobs.last();
    let display_state = display_state(
        item.state,
        current.map(|j| j.state.as_str()),
        current.map_or(0, |j| j.attempts),
    );
    let usage = usage_total(&attempts);
    ItemDetail {
        item,
        display_state,
        jobs,
        attempts,
        outputs,
        feedback,
        events,
        usage,
    }
}

pub(crate) fn item_summary(r: &impl RowExt) -> Result<ItemSummary> {
    let state = item_state(&r.text("state")?)?;
    let job_state = r.opt_text("job_state")?;
    let attempts = r.u32("attempts")?;
    Ok(ItemSummary {
        id: r.int("id")?,
        text: r.text("text")?,
        state,
        display_state: display_state(state, job_state.as_deref(), attempts),
        stage: r.opt_text("stage")?,
        round: r.u32("round")?,
        attempts,
        last_error: r.opt_text("last_error")?,
        failure_class: failure_class(r)?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

/// The queue's counts per stage from rows of `stage`, `state` (`queued` or
/// `running`) and `n`, with on each queued row how many of them are
/// scheduled for later (`scheduled`).
pub(crate) fn counted_stages(rows: &[impl RowExt]) -> Result<Vec<StageCounts>> {
    let mut counts: std::collections::BTreeMap<String, StageCounts> = Default::default();
    for r in rows {
        let stage = r.text("stage")?;
        let c = counts.entry(stage.clone()).or_insert_with(|| StageCounts {
            stage,
            ..StageCounts::default()
        });
        let n = r.count("n")?;
        if r.text("state")? == "queued" {
            c.scheduled = r.count("scheduled")?.min(n);
            c.queued = n - c.scheduled;
        } else {
            c.running = n;
        }
    }
    Ok(counts.into_values().collect())
}

// NUL bytes. PostgreSQL refuses U+0000 in text (SQLSTATE 22021), on every
// try, so a stage's output holding one could never be recorded. Both stores
// replace it, in every text the engine stores, with U+FFFD (the Unicode
// replacement character, which says "a character was lost here" and needs no
// unescaping), before anything is bound; a finish whose texts changed says so
// on its attempt. Both backends call these at the top of each write that
// takes outside text, so that both store the same thing.

/// What a NUL byte becomes.
pub(crate) const NUL_REPLACEMENT: char = '\u{FFFD}';

/// Appended to an attempt's error (or its error, when it had none) when its
/// texts held NUL bytes.
pub const NUL_NOTE: &str = "NUL bytes replaced with U+FFFD";

/// `s` with every NUL replaced; `None` when it holds none.
fn without_nul(s: &str) -> Option<String> {
    s.contains('\0')
        .then(|| s.replace('\0', NUL_REPLACEMENT.encode_utf8(&mut [0; 4])))
}

/// Replace NUL bytes in place; whether any was there.
fn clean(s: &mut String) -> bool {
    match without_nul(s) {
        Some(clean) => {
            *s = clean;
            true
        }
        None => false,
    }
}

fn clean_opt(s: &mut Option<String>) -> bool {
    s.as_mut().is_some_and(clean)
}

/// Replace NUL bytes in every string and key of a JSON value.
fn clean_json(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => clean(s),
        Value::Array(a) => a.iter_mut().fold(false, |any, v| clean_json(v) | any),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (mut k, mut v) in old {
                    clean(&mut k);
                    clean_json(&mut v);
                    map.insert(k, v);
                }
                return true;
            }
            map.values_mut().fold(false, |any, v| clean_json(v) | any)
        }
        _ => false,
    }
}

fn json_has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

fn finish_has_nul(f: &Finish) -> bool {
    let has = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
    let transition = match &f.transition {
        Transition::Advance { output, .. } => output.contains('\0'),
        Transition::SendBack { feedback, .. } => feedback.contains('\0'),
        Transition::RetryAt { error, .. } => error.contains('\0'),
        Transition::FailItem {
            reason, feedback, ..
        } => reason.contains('\0') || has(feedback),
        Transition::Pause { reason } => reason.contains('\0'),
        Transition::Cancel => false,
    };
    transition
        || has(&f.error)
        || has(&f.output)
        || has(&f.stderr)
        || f.usage
            .as_ref()
            .is_some_and(|u| u.provider.contains('\0') || u.model.contains('\0'))
}

/// Finishes as they can be stored: borrowed when no text holds a NUL byte
/// (the usual case costs no copy), else copies with every NUL replaced and
/// [`NUL_NOTE`] on the attempt's error.
pub(crate) fn storable_finishes(finishes: &[Finish]) -> std::borrow::Cow<'_, [Finish]> {
    if !finishes.iter().any(finish_has_nul) {
        return std::borrow::Cow::Borrowed(finishes);
    }
    std::borrow::Cow::Owned(
        finishes
            .iter()
            .map(|f| {
                if !finish_has_nul(f) {
                    return f.clone();
                }
                let mut f = f.clone();
                match &mut f.transition {
                    Transition::Advance { output, .. } => {
                        clean(output);
                    }
                    Transition::SendBack { feedback, .. } => {
                        clean(feedback);
                    }
                    Transition::RetryAt { error, .. } => {
                        clean(error);
                    }
                    Transition::FailItem {
                        reason, feedback, ..
                    } => {
                        clean(reason);
                        clean_opt(feedback);
                    }
                    Transition::Pause { reason } => {
                        clean(reason);
                    }
                    Transition::Cancel => {}
                }
                clean_opt(&mut f.output);
                clean_opt(&mut f.stderr);
                if let Some(u) = &mut f.usage {
                    clean(&mut u.provider);
                    clean(&mut u.model);
                }
                clean_opt(&mut f.error);
                f.error = Some(match f.error.take() {
                    Some(e) => format!("{e}; {NUL_NOTE}"),
                    None => NUL_NOTE.to_string(),
                });
                f
            })
            .collect(),
    )
}

/// New items as they can be stored: NUL bytes in their text and metadata
/// replaced.
pub(crate) fn storable_items(items: &[NewItem]) -> std::borrow::Cow<'_, [NewItem]> {
    let has = |i: &NewItem| i.text.contains('\0') || json_has_nul(&i.metadata);
    if !items.iter().any(has) {
        return std::borrow::Cow::Borrowed(items);
    }
    std::borrow::Cow::Owned(
        items
            .iter()
            .cloned()
            .map(|mut i| {
                clean(&mut i.text);
                clean_json(&mut i.metadata);
                i
            })
            .collect(),
    )
}

/// Imported records as they can be stored: NUL bytes replaced in every
/// text they bring.
pub(crate) fn storable_imports(items: &[ImportedItem]) -> std::borrow::Cow<'_, [ImportedItem]> {
    let has = |i: &ImportedItem| {
        i.text.contains('\0')
            || json_has_nul(&i.metadata)
            || i.source.key.contains('\0')
            || i.source.name.contains('\0')
            || match &i.state {
                ImportedState::Rejected { rejections, .. } => rejections
                    .iter()
                    .any(|r| r.feedback.contains('\0') || r.stage.contains('\0')),
                ImportedState::Failed { error, stage } => {
                    error.contains('\0') || stage.contains('\0')
                }
                _ => false,
            }
    };
    if !items.iter().any(has) {
        return std::borrow::Cow::Borrowed(items);
    }
    std::borrow::Cow::Owned(
        items
            .iter()
            .cloned()
            .map(|mut i| {
                clean(&mut i.text);
                clean_json(&mut i.metadata);
                clean(&mut i.source.key);
                clean(&mut i.source.name);
                match &mut i.state {
                    ImportedState::Rejected { rejections, .. } => {
                        for r in rejections {
                            clean(&mut r.feedback);
                            clean(&mut r.stage);
                        }
                    }
                    ImportedState::Failed { error, stage } => {
                        clean(error);
                        clean(stage);
                    }
                    _ => {}
                }
                i
            })
            .collect(),
    )
}

/// An intake source as it can be stored.
pub(crate) fn storable_source(source: &IntakeSource) -> std::borrow::Cow<'_, IntakeSource> {
    if !source.key.contains('\0') && !source.name.contains('\0') {
        return std::borrow::Cow::Borrowed(source);
    }
    let mut source = source.clone();
    clean(&mut source.key);
    clean(&mut source.name);
    std::borrow::Cow::Owned(source)
}

/// An event as it can be stored.
pub(crate) fn storable_event(event: &NewEvent) -> std::borrow::Cow<'_, NewEvent> {
    let has =
        event.message.contains('\0') || event.process.as_deref().is_some_and(|p| p.contains('\0'));
    if !has {
        return std::borrow::Cow::Borrowed(event);
    }
    let mut event = event.clone();
    clean(&mut event.message);
    clean_opt(&mut event.process);
    std::borrow::Cow::Owned(event)
}

/// `queued_counts` counted again from the jobs, after `store copy` wrote
/// rows without the triggers that keep it: the statement of its migrations
/// (SQLite 0010, PostgreSQL 0009).
pub(crate) const RECOUNT_QUEUED: &str = "DELETE FROM queued_counts;
    INSERT INTO queued_counts (stage, n)
    SELECT stage, count(*) FROM jobs WHERE state = 'queued' GROUP BY stage;";
