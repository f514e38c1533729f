//! Finishing attempts: each transition's effect on the item, its jobs,
//! outputs and feedback, and the lease-token fence.

use ideamill_core::FailureClass;
use ideamill_core::machine::{LostJob, Transition};
use ideamill_core::{AttemptOutcome, ItemState, JobState};
use ideamill_store::{FeedbackRow, FinishEffect, OutputRow, Store, StoreError, event_kind};

use crate::support::*;

const ACTIVE_ENQUEUED: FinishEffect = FinishEffect {
    item_state: ItemState::Active,
    enqueued: true,
    cancelled: false,
};

pub async fn advance_enqueues_next_stage_then_done(s: &dyn Store) {
    let id = add_one(s, "an idea", &next("draft", 1, 3), T0).await;
    let draft = claim_one(s, "draft", "w1", T0 + 10).await;
    let effect = finish_ok(
        s,
        finish(
            &draft,
            "w1",
            T0 + 20,
            advance("a draft", Some(next("review", 1, 2))),
        ),
    )
    .await;
    assert_eq!(effect, ACTIVE_ENQUEUED);

    let ctx = s.context(id).await.unwrap();
    assert_eq!(ctx.item.state, ItemState::Active);
    assert_eq!(ctx.item.stage.as_deref(), Some("review"));
    assert_eq!(
        ctx.outputs,
        [OutputRow {
            stage: "draft".into(),
            round: 1,
            job_id: draft.id,
            output: "a draft".into(),
            created_at: T0 + 20,
        }]
    );
    assert!(ctx.feedback.is_empty());

    let d = s.item(id).await.unwrap();
    assert_eq!(d.display_state, "queued");
    assert_eq!(d.jobs.len(), 2);
    assert_eq!(d.jobs[0].state, JobState::Succeeded);
    assert_eq!(d.jobs[0].finished_at, Some(T0 + 20));
    assert_eq!(d.jobs[0].lease_owner, None);
    assert_eq!(
        (
            d.jobs[1].stage.as_str(),
            d.jobs[1].state,
            d.jobs[1].max_attempts
        ),
        ("review", JobState::Queued, 2)
    );
    assert_eq!(d.attempts.len(), 1);
    let a = &d.attempts[0];
    assert_eq!(
        (a.job_id, a.attempt, a.outcome),
        (draft.id, 1, AttemptOutcome::Succeeded)
    );
    assert_eq!(
        (a.process.as_str(), a.started_at, a.finished_at),
        ("w1", T0 + 10, T0 + 20)
    );
    // A passing attempt's output is the stage's output, stored once, in
    // `outputs` (checked above), not again on the attempt.
    assert_eq!(a.output, None);

    assert!(
        s.claim("draft", 10, "w2", T0 + 30, T0 + LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let review = claim_one(s, "review", "w2", T0 + 30).await;
    assert_eq!(
        (review.item_id, review.attempt, review.max_attempts),
        (id, 1, 2)
    );

    let effect = finish_ok(s, finish(&review, "w2", T0 + 40, advance("approved", None))).await;
    assert_eq!(
        effect,
        FinishEffect {
            item_state: ItemState::Done,
            enqueued: false,
            cancelled: false,
        }
    );
    let d = s.item(id).await.unwrap();
    assert_eq!(d.item.state, ItemState::Done);
    assert_eq!(d.item.finished_at, Some(T0 + 40));
    assert_eq!(d.item.last_error, None);
    assert_eq!(d.display_state, "done");
    assert_eq!(d.jobs.len(), 2, "the last stage enqueues nothing");
    let mut outputs = s.context(id).await.unwrap().outputs;
    outputs.sort_by(|a, b| a.stage.cmp(&b.stage));
    let got: Vec<_> = outputs
        .iter()
        .map(|o| (o.stage.as_str(), o.output.as_str()))
        .collect();
    assert_eq!(got, [("draft", "a draft"), ("review", "approved")]);
    let p = s.pending(T0 + 40).await.unwrap();
    assert_eq!((p.soon, p.running, p.later), (0, 0, 0));
}

pub async fn stale_completion_is_fenced(s: &dyn Store) {
    let id = add_one(s, "an idea", &next("draft", 1, 3), T0).await;
    let old = claim_one(s, "draft", "w1", T0).await;
    let reaped = s.reap_expired(T0 + LEASE + 1).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].action, LostJob::Requeue);
    let new = claim_one(s, "draft", "w2", T0 + LEASE + 2).await;
    assert_eq!(new.id, old.id);
    assert_eq!(new.attempt, 2);
    assert_ne!(
        new.lease_token, old.lease_token,
        "a new claim gets a new token"
    );

    // The old owner comes back from a pause and reports in the same batch as
    // the new owner: only the new owner's result commits.
    let review = Some(next("review", 1, 2));
    let results = s
        .finish(&[
            finish(&old, "w1", T0 + LEASE + 3, advance("stale", review.clone())),
            finish(&new, "w2", T0 + LEASE + 4, advance("fresh", review.clone())),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        matches!(results[0], Err(StoreError::LeaseLost)),
        "{:?}",
        results[0]
    );
    assert_eq!(
        results[1].as_ref().ok(),
        Some(&ACTIVE_ENQUEUED),
        "{:?}",
        results[1]
    );

    let stale = events_of(s, Some(id), event_kind::STALE_COMPLETION).await;
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].job_id, Some(old.id));
    assert_eq!(stale[0].process.as_deref(), Some("w1"));

    // Finishing twice, by either owner, is fenced too.
    let again = finish_one(
        s,
        finish(&new, "w2", T0 + LEASE + 5, advance("twice", review.clone())),
    )
    .await;
    assert!(matches!(again, Err(StoreError::LeaseLost)), "{again:?}");
    let late = finish_one(
        s,
        finish(&old, "w1", T0 + LEASE + 6, advance("later", review)),
    )
    .await;
    assert!(matches!(late, Err(StoreError::LeaseLost)), "{late:?}");
    assert_eq!(
        events_of(s, Some(id), event_kind::STALE_COMPLETION)
            .await
            .len(),
        3
    );

    let d = s.item(id).await.unwrap();
    let drafts: Vec<_> = d.outputs.iter().filter(|o| o.stage == "draft").collect();
    assert_eq!(
        drafts.len(),
        1,
        "the stage's output exists exactly once: {drafts:?}"
    );
    assert_eq!(
        (drafts[0].output.as_str(), drafts[0].job_id),
        ("fresh", new.id)
    );
    assert_eq!(d.jobs.iter().filter(|j| j.stage == "review").count(), 1);
    let attempts: Vec<_> = d
        .attempts
        .iter()
        .map(|a| (a.attempt, a.process.as_str(), a.outcome))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "w1", AttemptOutcome::Lost),
            (2, "w2", AttemptOutcome::Succeeded)
        ],
        "a fenced finish records no attempt"
    );
}

pub async fn retry_at_requeues_keeping_attempts(s: &dyn Store) {
    let id = add_one(s, "an idea", &next("draft", 1, 3), T0).await;
    let job = claim_one(s, "draft", "w1", T0).await;
    let effect = finish_ok(
        s,
        finish(
            &job,
            "w1",
            T0 + 5,
            Transition::RetryAt {
                run_at: T0 + 10_000,
                error: "exit status 1".into(),
            },
        ),
    )
    .await;
    assert_eq!(effect, ACTIVE_ENQUEUED);

    let d = s.item(id).await.unwrap();
    assert_eq!(d.item.state, ItemState::Active);
    assert_eq!(d.item.last_error.as_deref(), Some("exit status 1"));
    assert_eq!(d.display_state, "retrying");
    assert_eq!(d.jobs.len(), 1, "a retry reuses the job");
    let j = &d.jobs[0];
    assert_eq!(
        (j.state, j.run_at, j.attempts),
        (JobState::Queued, T0 + 10_000, 1)
    );
    assert_eq!(j.lease_owner, None);
    assert_eq!(j.last_error.as_deref(), Some("exit status 1"));
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(
        (d.attempts[0].attempt, d.attempts[0].outcome),
        (1, AttemptOutcome::Error)
    );
    let retries = events_of(s, Some(id), event_kind::RETRY_SCHEDULED).await;
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].job_id, Some(job.id));

    assert!(
        s.claim("draft", 1, "w1", T0 + 9_999, T0 + LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let again = claim_one(s, "draft", "w2", T0 + 10_000).await;
    assert_eq!(
        (again.id, again.attempt, again.run_at),
        (job.id, 2, T0 + 10_000)
    );
    assert_ne!(again.lease_token, job.lease_token);
}

pub async fn send_back_and_fail_keep_feedback_in_order(s: &dyn Store) {
    let id = add_one(s, "an idea", &next("draft", 1, 3), T0).await;
    let rejections = ["too vague", "no sources", "still no sources"];
    let mut now = T0;
    let mut rejected_jobs = Vec::new();
    for (i, feedback) in rejections.iter().enumerate() {
        let round = i as u32 + 1;
        now += 100;
        let d = claim_one(s, "draft", "w1", now).await;
        assert_eq!(d.round, round);
        assert_eq!(d.attempt, 1, "a new round is a new job");
        finish_ok(
            s,
            finish(
                &d,
                "w1",
                now + 1,
                advance(&format!("v{round}"), Some(next("review", round, 1))),
            ),
        )
        .await;
        let r = claim_one(s, "review", "w2", now + 2).await;
        assert_eq!(r.round, round);
        rejected_jobs.push(r.id);
        let last = round == 3;
        let transition = if last {
            Transition::FailItem {
                reason: "rejected by gate `review` in round 3 of 3: still no sources".into(),
                feedback: Some(feedback.to_string()),
                class: FailureClass::Quality,
            }
        } else {
            Transition::SendBack {
                feedback: feedback.to_string(),
                to: next("draft", round + 1, 3),
            }
        };
        let effect = finish_ok(s, finish(&r, "w2", now + 3, transition)).await;
        if last {
            assert_eq!(
                effect,
                FinishEffect {
                    item_state: ItemState::Failed,
                    enqueued: false,
                    cancelled: false,
                }
            );
        } else {
            assert_eq!(effect, ACTIVE_ENQUEUED);
            let item = s.context(id).await.unwrap().item;
            assert_eq!(
                (item.stage.as_deref(), item.round),
                (Some("draft"), round + 1)
            );
            assert_eq!(item.state, ItemState::Active);
        }
        let ctx = s.context(id).await.unwrap();
        let expected: Vec<FeedbackRow> = (0..=i)
            .map(|k| FeedbackRow {
                stage: "review".into(),
                round: k as u32 + 1,
                feedback: rejections[k].into(),
                round_hash: None,
                created_at: T0 + 100 * (k as i64 + 1) + 3,
            })
            .collect();
        assert_eq!(ctx.feedback, expected, "feedback is kept, oldest first");
    }

    let rejected = events_of(s, Some(id), event_kind::GATE_REJECTED).await;
    let got: Vec<_> = rejected.iter().map(|e| e.job_id).collect();
    assert_eq!(got, [Some(rejected_jobs[0]), Some(rejected_jobs[1])]);
    let failed = events_of(s, Some(id), event_kind::ITEM_FAILED).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].job_id, Some(rejected_jobs[2]));

    let ctx = s.context(id).await.unwrap();
    assert_eq!(ctx.item.state, ItemState::Failed);
    assert_eq!(
        ctx.item.last_error.as_deref(),
        Some("rejected by gate `review` in round 3 of 3: still no sources")
    );
    assert_eq!(ctx.item.finished_at, Some(T0 + 303));
    // The latest output of each stage: round 3's draft; review never passed.
    let outputs: Vec<_> = ctx
        .outputs
        .iter()
        .map(|o| (o.stage.as_str(), o.round, o.output.as_str()))
        .collect();
    assert_eq!(outputs, [("draft", 3, "v3")]);

    let d = s.item(id).await.unwrap();
    assert_eq!(d.display_state, "failed");
    let reviews: Vec<_> = d
        .jobs
        .iter()
        .filter(|j| j.stage == "review")
        .map(|j| (j.round, j.state))
        .collect();
    assert_eq!(
        reviews,
        [
            (1, JobState::Rejected),
            (2, JobState::Rejected),
            (3, JobState::Failed)
        ]
    );
    assert_eq!(
        d.jobs.len(),
        6,
        "three drafts and three reviews, nothing after the failure"
    );
    let p = s.pending(now + 10).await.unwrap();
    assert_eq!((p.soon, p.running, p.later), (0, 0, 0));
}

/// A NUL byte, which PostgreSQL refuses in text, anywhere a finish stores
/// text: the finish commits, with each NUL replaced by U+FFFD, and the
/// attempt says so. Both stores behave the same.
pub async fn nul_bytes_in_results_are_replaced(s: &dyn Store) {
    const NOTE: &str = "NUL bytes replaced with U+FFFD";
    let id = add_one(s, "an idea", &next("draft", 1, 3), T0).await;

    // A passing attempt: its output and stderr.
    let draft = claim_one(s, "draft", "w1", T0 + 10).await;
    let mut f = finish(
        &draft,
        "w1",
        T0 + 20,
        advance("a\0b", Some(next("review", 1, 2))),
    );
    f.stderr = Some("warn\0ing".into());
    assert_eq!(finish_ok(s, f).await, ACTIVE_ENQUEUED);
    let ctx = s.context(id).await.unwrap();
    assert_eq!(ctx.outputs.len(), 1);
    assert_eq!(ctx.outputs[0].output, "a\u{FFFD}b");
    let d = s.item(id).await.unwrap();
    let a = &d.attempts[0];
    assert_eq!(a.outcome, AttemptOutcome::Succeeded);
    assert_eq!(a.stderr.as_deref(), Some("warn\u{FFFD}ing"));
    assert_eq!(a.error.as_deref(), Some(NOTE), "the attempt says so");

    // A gate's feedback.
    let review = claim_one(s, "review", "w2", T0 + 30).await;
    finish_ok(
        s,
        finish(
            &review,
            "w2",
            T0 + 40,
            Transition::SendBack {
                feedback: "too\0vague".into(),
                to: next("draft", 2, 3),
            },
        ),
    )
    .await;
    let ctx = s.context(id).await.unwrap();
    assert_eq!(ctx.feedback.len(), 1);
    assert_eq!(ctx.feedback[0].feedback, "too\u{FFFD}vague");

    // An error message, on the attempt, the job and the item.
    let again = claim_one(s, "draft", "w1", T0 + 50).await;
    let mut f = finish(
        &again,
        "w1",
        T0 + 60,
        Transition::RetryAt {
            run_at: T0 + 1_000,
            error: "exit\0 1".into(),
        },
    );
    f.output = Some("half\0done".into());
    assert_eq!(finish_ok(s, f).await, ACTIVE_ENQUEUED);
    let d = s.item(id).await.unwrap();
    assert_eq!(d.item.last_error.as_deref(), Some("exit\u{FFFD} 1"));
    let last = d.attempts.last().unwrap();
    assert_eq!(last.outcome, AttemptOutcome::Error);
    assert_eq!(
        last.error.as_deref(),
        Some(format!("exit\u{FFFD} 1; {NOTE}").as_str())
    );
    assert_eq!(last.output.as_deref(), Some("half\u{FFFD}done"));
    let draft_job = d.jobs.iter().find(|j| j.id == again.id).unwrap();
    assert_eq!(draft_job.last_error.as_deref(), Some("exit\u{FFFD} 1"));
    let retried = events_of(s, Some(id), event_kind::RETRY_SCHEDULED).await;
    assert!(
        retried.iter().all(|e| !e.message.contains('\0')),
        "{retried:?}"
    );

    // The item fails with a reason holding one.
    let last_try = claim_one(s, "draft", "w1", T0 + 1_000).await;
    let effect = finish_ok(
        s,
        finish(
            &last_try,
            "w1",
            T0 + 1_010,
            Transition::FailItem {
                reason: "bad\0input".into(),
                feedback: None,
                class: FailureClass::Quality,
            },
        ),
    )
    .await;
    assert_eq!(effect.item_state, ItemState::Failed);
    let d = s.item(id).await.unwrap();
    assert_eq!(d.item.last_error.as_deref(), Some("bad\u{FFFD}input"));

    // Text without a NUL is stored as it is, with no note.
    let plain = add_one(s, "plain", &next("draft", 1, 3), T0).await;
    let job = claim_one(s, "draft", "w1", T0 + 2_000).await;
    assert_eq!(job.item_id, plain);
    finish_ok(s, finish(&job, "w1", T0 + 2_010, advance("fine", None))).await;
    let d = s.item(plain).await.unwrap();
    assert_eq!(d.attempts[0].error, None);
}
