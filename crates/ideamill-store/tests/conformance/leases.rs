//! Leases and the processes that hold them: expiry and reaping, heartbeats,
//! cancellation of running work, graceful release, dead processes.

use std::collections::HashMap;

use ideamill_core::machine::LostJob;
use ideamill_core::machine::Transition;
use ideamill_core::{AttemptOutcome, ItemState, JobState, Millis};
use ideamill_store::{FinishEffect, IdleBeat, ProcessInfo, Store, event_kind};

use crate::support::*;

/// This machine's clock, in ms since the Unix epoch.
fn local_clock() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as Millis
}

pub async fn reap_requeues_fails_or_cancels_expired_jobs(s: &dyn Store) {
    let requeue = add_one(s, "requeue", &next("draft", 1, 3), T0).await;
    let last = add_one(s, "last try", &next("draft", 1, 1), T0).await;
    let cancel = add_one(s, "cancel", &next("draft", 1, 3), T0).await;
    let held = s.claim("draft", 10, "w1", T0, T0 + 100).await.unwrap();
    assert_eq!(held.len(), 3);
    let job_of: HashMap<_, _> = held.iter().map(|j| (j.item_id, j.id)).collect();
    assert!(s.cancel_item(cancel, T0 + 50).await.unwrap().was_running);

    let early = s.reap_expired(T0 + 100).await.unwrap();
    assert!(
        early.is_empty(),
        "a lease that ends now has not expired yet: {early:?}"
    );

    let now = T0 + 101;
    let reaped = s.reap_expired(now).await.unwrap();
    assert_eq!(reaped.len(), 3, "{reaped:?}");
    let by_item: HashMap<_, _> = reaped.iter().map(|r| (r.item_id, r)).collect();
    for (item, action) in [
        (requeue, LostJob::Requeue),
        (last, LostJob::Fail),
        (cancel, LostJob::Cancel),
    ] {
        let r = by_item[&item];
        assert_eq!(r.action, action, "item {item}");
        assert_eq!(r.job_id, job_of[&item]);
        assert_eq!((r.stage.as_str(), r.owner.as_str()), ("draft", "w1"));

        let d = s.item(item).await.unwrap();
        assert_eq!(d.attempts.len(), 1, "the lost try is recorded");
        let a = &d.attempts[0];
        assert_eq!(
            (a.attempt, a.outcome, a.process.as_str()),
            (1, AttemptOutcome::Lost, "w1")
        );
        assert_eq!(a.finished_at, now);
        let lost = events_of(s, Some(item), event_kind::LEASE_EXPIRED).await;
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].job_id, Some(job_of[&item]));
        assert_eq!(lost[0].process.as_deref(), Some("w1"));
        assert!(
            lost[0].message.contains("w1") && lost[0].message.contains(&job_of[&item].to_string()),
            "the event names the job and the owner: {:?}",
            lost[0].message
        );
        assert_eq!(d.jobs[0].lease_owner, None);
    }

    let d = s.item(requeue).await.unwrap();
    assert_eq!(d.item.state, ItemState::Active);
    assert_eq!(
        (d.jobs[0].state, d.jobs[0].run_at, d.jobs[0].attempts),
        (JobState::Queued, now, 1)
    );
    assert_eq!(d.display_state, "retrying");

    let d = s.item(last).await.unwrap();
    assert_eq!(d.item.state, ItemState::Failed);
    assert_eq!(d.item.finished_at, Some(now));
    assert!(d.item.last_error.is_some(), "a failed item says why");
    assert_eq!(d.jobs[0].state, JobState::Failed);

    let d = s.item(cancel).await.unwrap();
    assert_eq!(d.item.state, ItemState::Cancelled);
    assert_eq!(d.jobs[0].state, JobState::Cancelled);

    // Only the requeued job runs again, at once, as its second attempt.
    let again = s.claim("draft", 10, "w2", now, now + LEASE).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|j| (j.item_id, j.attempt))
            .collect::<Vec<_>>(),
        [(requeue, 2)]
    );
    assert!(
        s.reap_expired(now + 1_000).await.unwrap().is_empty(),
        "nothing is reaped twice"
    );
}

pub async fn heartbeat_renews_leases_and_reports_cancels(s: &dyn Store) {
    let ids = s
        .add_items(&new_items(&["a", "b", "c"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let held = s.claim("draft", 2, "w1", T0, T0 + 100).await.unwrap();
    assert_eq!(held.iter().map(|j| j.item_id).collect::<Vec<_>>(), [a, b]);
    let (job_a, job_b) = (held[0].clone(), held[1].clone());

    assert!(
        s.heartbeat("w1", T0 + 50, T0 + 1_000, &[job_a.id, job_b.id])
            .await
            .unwrap()
            .is_empty()
    );
    // Another owner's beat renews nothing of w1's.
    assert!(
        s.heartbeat("w2", T0 + 50, T0 + 99_999, &[job_a.id, job_b.id])
            .await
            .unwrap()
            .is_empty()
    );
    let d = s.item(a).await.unwrap();
    assert_eq!(d.jobs[0].lease_expires_at, Some(T0 + 1_000));
    assert!(
        s.reap_expired(T0 + 500).await.unwrap().is_empty(),
        "renewed leases hold"
    );
    assert_eq!(s.status(T0 + 500).await.unwrap().expired_leases, 0);

    let effect = s.cancel_item(a, T0 + 60).await.unwrap();
    assert!(effect.was_running);
    let d = s.item(a).await.unwrap();
    assert_eq!(
        d.item.state,
        ItemState::Cancelled,
        "cancelled at once, not when the worker stops"
    );
    assert_eq!(d.item.finished_at, Some(T0 + 60));
    assert_eq!(d.display_state, "cancelled");
    assert_eq!(
        events_of(s, Some(a), event_kind::ITEM_CANCELLED)
            .await
            .len(),
        1
    );

    assert_eq!(
        s.heartbeat("w1", T0 + 70, T0 + 1_100, &[job_a.id, job_b.id])
            .await
            .unwrap(),
        [job_a.id]
    );
    assert_eq!(s.cancel_requests("w1").await.unwrap(), [job_a.id]);
    assert!(s.cancel_requests("w2").await.unwrap().is_empty());

    // A queued item is cancelled with its job, which can no longer run.
    let effect = s.cancel_item(c, T0 + 80).await.unwrap();
    assert!(!effect.was_running);
    let d = s.item(c).await.unwrap();
    assert_eq!(d.item.state, ItemState::Cancelled);
    assert_eq!(d.jobs[0].state, JobState::Cancelled);
    assert!(
        s.claim("draft", 10, "w2", T0 + 90, T0 + LEASE)
            .await
            .unwrap()
            .is_empty()
    );

    // The worker reports success anyway: the cancellation wins.
    let effect = finish_ok(
        s,
        finish(
            &job_a,
            "w1",
            T0 + 90,
            advance("too late", Some(next("review", 1, 2))),
        ),
    )
    .await;
    assert_eq!(
        effect,
        FinishEffect {
            item_state: ItemState::Cancelled,
            enqueued: false,
            cancelled: true,
        }
    );
    let d = s.item(a).await.unwrap();
    assert_eq!(d.item.state, ItemState::Cancelled);
    assert_eq!(d.jobs.len(), 1, "nothing was enqueued");
    assert_eq!(d.jobs[0].state, JobState::Cancelled);
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].outcome, AttemptOutcome::Cancelled);
    assert!(
        d.outputs.is_empty(),
        "the dropped transition stored no output"
    );
    assert!(
        s.claim("review", 10, "w2", T0 + 90, T0 + LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.cancel_requests("w1").await.unwrap().is_empty());

    // The other held job was never affected.
    let effect = finish_ok(s, finish(&job_b, "w1", T0 + 95, advance("fine", None))).await;
    assert_eq!(effect.item_state, ItemState::Done);
}

pub async fn release_gives_jobs_back_uncounted(s: &dyn Store) {
    let ids = s
        .add_items(&new_items(&["a", "b"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    let (a, b) = (ids[0], ids[1]);
    let first = claim_one(s, "draft", "w1", T0).await;
    assert_eq!(first.item_id, a);
    retry_later(s, &first, T0 + 5, T0 + 10).await;
    let held = s
        .claim("draft", 10, "w1", T0 + 20, T0 + LEASE)
        .await
        .unwrap();
    let attempt_of: HashMap<_, _> = held.iter().map(|j| (j.item_id, j.attempt)).collect();
    assert_eq!(attempt_of, HashMap::from([(a, 2), (b, 1)]));

    assert_eq!(s.release("w1", T0 + 30).await.unwrap(), 2);
    let d = s.item(a).await.unwrap();
    assert_eq!((d.jobs[0].state, d.jobs[0].attempts), (JobState::Queued, 1));
    assert_eq!(d.jobs[0].lease_owner, None);
    assert_eq!(d.display_state, "retrying");
    let got: Vec<_> = d.attempts.iter().map(|a| (a.attempt, a.outcome)).collect();
    assert_eq!(
        got,
        [(1, AttemptOutcome::Error), (2, AttemptOutcome::Released)]
    );
    let d = s.item(b).await.unwrap();
    assert_eq!((d.jobs[0].state, d.jobs[0].attempts), (JobState::Queued, 0));
    assert_eq!(d.display_state, "queued");
    let got: Vec<_> = d
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome, a.process.as_str()))
        .collect();
    assert_eq!(got, [(1, AttemptOutcome::Released, "w1")]);
    let released = events_of(s, None, event_kind::JOBS_RELEASED).await;
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].process.as_deref(), Some("w1"));

    // The next claim repeats the released attempt numbers: they did not count.
    let again = s
        .claim("draft", 10, "w2", T0 + 30, T0 + LEASE)
        .await
        .unwrap();
    let attempt_of_again: HashMap<_, _> = again.iter().map(|j| (j.item_id, j.attempt)).collect();
    assert_eq!(attempt_of_again, attempt_of);

    assert_eq!(s.release("w3", T0 + 40).await.unwrap(), 0);
    assert_eq!(
        events_of(s, None, event_kind::JOBS_RELEASED).await.len(),
        1,
        "releasing nothing records nothing"
    );
}

fn process_info(id: &str, pid: u32) -> ProcessInfo {
    ProcessInfo {
        id: id.to_string(),
        host: "host-1".to_string(),
        pid,
        version: "ideamill 0.1.0".to_string(),
        started_at: T0,
        last_beat_at: T0,
        stopped_at: None,
        held_jobs: 0,
    }
}

async fn last_beat_of(s: &dyn Store, id: &str) -> Millis {
    let all = s.processes().await.unwrap();
    all.iter().find(|p| p.id == id).unwrap().last_beat_at
}

pub async fn idle_beat_answers(s: &dyn Store) {
    an_idle_beat_beats_and_says_what_housekeeping_is_due(s).await;
}

/// Each "no" of an idle beat is true.
async fn idle_beat_is_sound(
    s: &dyn Store,
    f: IdleBeat,
    own: &str,
    now: Millis,
    silent_since: Millis,
) {
    if !f.expired_leases {
        assert!(s.reap_expired(now).await.unwrap().is_empty(), "{f:?}");
    }
    if !f.paused_jobs {
        assert!(s.paused_jobs().await.unwrap().is_empty(), "{f:?}");
    }
    if !f.silent_processes {
        let all = s.processes().await.unwrap();
        assert!(
            all.iter()
                .all(|p| p.id == own || p.last_beat_at >= silent_since),
            "{f:?}"
        );
    }
}

/// An idle beat's "no" must be true; its "yes" is checked where the store
/// must know (a lease that expired). Returns its answers: before anything
/// is due, once a lease expired and the other process went silent, and once
/// a job was paused.
pub async fn an_idle_beat_beats_and_says_what_housekeeping_is_due(s: &dyn Store) -> [IdleBeat; 3] {
    let idle = process_info("host-1-303", 303);
    let other = process_info("host-1-404", 404);
    s.register_process(&idle).await.unwrap();
    s.register_process(&other).await.unwrap();
    add_one(s, "held", &next("draft", 1, 3), T0).await;
    add_one(s, "to pause", &next("draft", 1, 3), T0).await;
    let held = s.claim("draft", 1, "w2", T0, T0 + 100).await.unwrap();
    assert_eq!(held.len(), 1);

    // Nothing due: the lease runs until T0 + 100, the other beat at T0.
    let early = s.idle_beat(&idle.id, T0 + 100, T0).await.unwrap();
    assert_eq!(
        last_beat_of(s, &idle.id).await,
        T0 + 100,
        "the beat is recorded"
    );
    idle_beat_is_sound(s, early, &idle.id, T0 + 100, T0).await;

    // The lease expired and the other process is silent: every store says
    // so (the reaper then finds the job).
    let due = s.idle_beat(&idle.id, T0 + 101, T0 + 1).await.unwrap();
    assert_eq!(last_beat_of(s, &idle.id).await, T0 + 101);
    assert!(due.expired_leases && due.silent_processes, "{due:?}");
    idle_beat_is_sound(s, due, &idle.id, T0 + 101, T0 + 1).await;
    assert_eq!(s.reap_expired(T0 + 101).await.unwrap().len(), 1);

    // A job paused by a budget.
    let job = claim_one(s, "draft", "w2", T0 + 102).await;
    let reason = "budget: the day's cap is reached".to_string();
    finish_one(
        s,
        finish(&job, "w2", T0 + 103, Transition::Pause { reason }),
    )
    .await
    .unwrap();
    let paused = s.idle_beat(&idle.id, T0 + 104, T0).await.unwrap();
    assert!(paused.paused_jobs, "{paused:?}");
    idle_beat_is_sound(s, paused, &idle.id, T0 + 104, T0).await;

    // A process without a row (marked gone by another) asks for itself.
    assert_eq!(
        s.idle_beat("host-9-999", T0 + 105, T0).await.unwrap(),
        IdleBeat::MAYBE
    );
    [early, due, paused]
}

pub async fn dead_process_jobs_run_again_at_once(s: &dyn Store) {
    let process = |id: &str, pid: u32, started_at| ProcessInfo {
        id: id.to_string(),
        host: "host-1".to_string(),
        pid,
        version: "ideamill 0.1.0".to_string(),
        started_at,
        last_beat_at: started_at,
        stopped_at: None,
        held_jobs: 0,
    };
    let p1 = process("host-1-101", 101, T0);
    let p2 = process("host-1-202", 202, T0 + 10);
    s.register_process(&p1).await.unwrap();
    s.register_process(&p2).await.unwrap();
    assert_eq!(
        s.processes().await.unwrap(),
        [p2.clone(), p1.clone()],
        "newest first"
    );

    s.add_items(&new_items(&["a", "b", "c"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    let held = s
        .claim("draft", 2, &p1.id, T0 + 20, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(held.len(), 2);
    assert!(
        s.heartbeat(&p1.id, T0 + 30, T0 + LEASE + 30, &[held[0].id, held[1].id])
            .await
            .unwrap()
            .is_empty()
    );
    let listed = s.processes().await.unwrap();
    assert_eq!(
        listed,
        [
            p2.clone(),
            ProcessInfo {
                last_beat_at: T0 + 30,
                held_jobs: 2,
                ..p1.clone()
            }
        ]
    );

    assert_eq!(s.expire_process(&p1.id, T0 + 40).await.unwrap(), 2);
    let dead = events_of(s, None, event_kind::PROCESS_DEAD).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].process.as_deref(), Some(p1.id.as_str()));
    assert_eq!(
        s.processes().await.unwrap(),
        std::slice::from_ref(&p2),
        "a dead process is no longer listed"
    );
    assert_eq!(s.status(T0 + 40).await.unwrap().expired_leases, 2);

    // No waiting for the lease: a reap at the same instant recovers the jobs.
    let reaped = s.reap_expired(T0 + 40).await.unwrap();
    assert_eq!(reaped.len(), 2, "{reaped:?}");
    assert!(
        reaped
            .iter()
            .all(|r| r.action == LostJob::Requeue && r.owner == p1.id)
    );
    let got = s
        .claim("draft", 10, &p2.id, T0 + 40, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), 3, "the recovered jobs and the untouched one");
    assert_eq!(s.processes().await.unwrap()[0].held_jobs, 3);

    s.stop_process(&p2.id, T0 + 50).await.unwrap();
    assert!(s.processes().await.unwrap().is_empty());
    assert_eq!(
        events_of(s, None, event_kind::PROCESS_STARTED).await.len(),
        2
    );
    assert_eq!(
        events_of(s, None, event_kind::PROCESS_STOPPED).await.len(),
        1
    );

    // A process that registers again under the same id is listed again.
    let restarted = ProcessInfo {
        last_beat_at: T0 + 60,
        ..p1.clone()
    };
    s.register_process(&restarted).await.unwrap();
    let listed = s.processes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].stopped_at),
        (p1.id.as_str(), None)
    );
}

/// Where the store has a clock of its own (PostgreSQL, shared by many
/// machines), leases are judged by it, not by the `now` each caller passes:
/// a process whose clock runs an hour ahead neither reaps a job leased a
/// moment ago nor renews a lease for an hour, and one whose clock runs
/// behind still recovers a dead process's jobs. Where it has none (SQLite,
/// one machine), the caller's clock is the clock.
pub async fn leases_are_judged_by_the_store_clock(b: &dyn Backend) {
    let s = b.open_with_store_clock().await;
    let local = local_clock();
    let ahead = local + 3_600_000;
    let behind = local - 3_600_000;
    let id = add_one(&*s, "an idea", &next("draft", 1, 3), local).await;
    let held = s
        .claim("draft", 1, "w1", local, local + LEASE)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let reaped = s.reap_expired(ahead).await.unwrap();

    let Some(clock) = s.clock_millis().await.unwrap() else {
        assert_eq!(
            reaped.len(),
            1,
            "the caller's clock is the clock: {reaped:?}"
        );
        s.close().await;
        return;
    };
    assert!(
        (clock - local).abs() < 5_000,
        "the store's clock {clock} is this machine's {local}, give or take"
    );
    assert!(
        reaped.is_empty(),
        "a process an hour ahead reaped a fresh lease: {reaped:?}"
    );
    assert_eq!(s.status(ahead).await.unwrap().expired_leases, 0);

    // A beat from a clock an hour ahead renews for one lease of the
    // store's clock, not until an hour from now.
    assert!(
        s.heartbeat("w1", ahead, ahead + LEASE, &[held[0].id])
            .await
            .unwrap()
            .is_empty()
    );
    let lease_end = s.item(id).await.unwrap().jobs[0]
        .lease_expires_at
        .expect("a running job's lease");
    let clock = s.clock_millis().await.unwrap().unwrap();
    assert!(
        lease_end > clock && lease_end <= clock + LEASE,
        "the lease ends at {lease_end}, the store's clock is {clock}"
    );
    assert!(s.reap_expired(ahead).await.unwrap().is_empty());

    // A dead process's jobs are recovered at once, even by a process whose
    // clock runs an hour behind.
    assert_eq!(s.expire_process("w1", behind).await.unwrap(), 1);
    let reaped = s.reap_expired(behind).await.unwrap();
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    assert_eq!(reaped[0].job_id, held[0].id);
    s.close().await;
}

pub async fn heartbeat_renews_only_the_jobs_named_running(s: &dyn Store) {
    let ids = s
        .add_items(&new_items(&["runs", "ended"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    let held = s.claim("draft", 2, "w1", T0, T0 + 100).await.unwrap();
    assert_eq!(held.iter().map(|j| j.item_id).collect::<Vec<_>>(), ids);
    let (runs, ended) = (held[0].clone(), held[1].clone());

    // The process still runs `runs`; `ended`'s task is over but its result
    // was never committed: only `runs` is renewed.
    assert!(
        s.heartbeat("w1", T0 + 50, T0 + 1_000, &[runs.id])
            .await
            .unwrap()
            .is_empty()
    );
    let d = s.item(runs.item_id).await.unwrap();
    assert_eq!(d.jobs[0].lease_expires_at, Some(T0 + 1_000));
    let d = s.item(ended.item_id).await.unwrap();
    assert_eq!(
        d.jobs[0].lease_expires_at,
        Some(T0 + 100),
        "a job the process does not run keeps its old lease"
    );

    let reaped = s.reap_expired(T0 + 500).await.unwrap();
    assert_eq!(
        reaped.iter().map(|r| r.job_id).collect::<Vec<_>>(),
        [ended.id],
        "the reaper returns the job no one runs, and only it: {reaped:?}"
    );
    assert_eq!(reaped[0].action, LostJob::Requeue);
    let d = s.item(runs.item_id).await.unwrap();
    assert_eq!(d.jobs[0].state, JobState::Running);
    assert_eq!(d.jobs[0].lease_owner.as_deref(), Some("w1"));
    let again = claim_one(s, "draft", "w2", T0 + 500).await;
    assert_eq!((again.id, again.attempt), (ended.id, 2));

    // A beat naming no job renews nothing, but still beats the process.
    assert!(
        s.heartbeat("w1", T0 + 600, T0 + 2_000, &[])
            .await
            .unwrap()
            .is_empty()
    );
    let d = s.item(runs.item_id).await.unwrap();
    assert_eq!(d.jobs[0].lease_expires_at, Some(T0 + 1_000));
}
