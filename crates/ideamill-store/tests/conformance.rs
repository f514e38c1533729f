//! The store conformance suite: every behaviour the engine relies on from a
//! [`Store`](ideamill_store::Store), written once and run against every
//! backend.
//!
//! A behaviour test is an `async fn` in one of the modules below. It takes
//! `&dyn Store` when the store's own methods are enough, or `&dyn Backend`
//! (`support::Backend`) when it needs several handles on one database or has
//! to look under the trait (migrations, pruned rows). `conformance_suite!`
//! instantiates every test once per backend, as `<backend>::<test>`.

// A failed test is a panic: unwrap and expect are how these tests say so,
// helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "conformance/support.rs"]
mod support;

#[path = "conformance/cluster.rs"]
mod cluster;

#[path = "conformance/admin.rs"]
mod admin;
#[path = "conformance/budget.rs"]
mod budget;
#[path = "conformance/claims.rs"]
mod claims;
#[path = "conformance/dashboard.rs"]
mod dashboard;
#[path = "conformance/finishes.rs"]
mod finishes;
#[path = "conformance/handoff.rs"]
mod handoff;
#[path = "conformance/intake.rs"]
mod intake;
#[path = "conformance/leases.rs"]
mod leases;
#[path = "conformance/migrations.rs"]
mod migrations;
#[path = "conformance/queries.rs"]
mod queries;
#[path = "conformance/queue_counts.rs"]
mod queue_counts;
#[path = "conformance/tallies.rs"]
mod tallies;
#[path = "conformance/wake.rs"]
mod wake;

/// One `#[tokio::test]` per behaviour. `$fixture` is an expression that
/// evaluates to a future of a fresh, empty `Backend` owned by this test.
macro_rules! conformance_tests {
    (
        $fixture:expr;
        store: [$($smod:ident :: $stest:ident),* $(,)?]
        backend: [$($bmod:ident :: $btest:ident),* $(,)?]
    ) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $stest() {
                use $crate::support::Backend as _;
                let backend = $fixture.await;
                let store = backend.open().await;
                $crate::$smod::$stest(&*store).await;
                store.close().await;
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $btest() {
                let backend = $fixture.await;
                $crate::$bmod::$btest(&backend).await;
            }
        )*
    };
}

/// The suite for one backend: every behaviour test, listed once here.
macro_rules! conformance_suite {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            conformance_tests! {
                $fixture;
                store: [
                    claims::add_items_then_claim_in_order,
                    claims::claim_orders_by_run_at_then_id,
                    claims::claim_waits_for_run_at,
                    claims::a_claim_reads_its_jobs_contexts_as_a_context_read_does,
                    finishes::advance_enqueues_next_stage_then_done,
                    finishes::stale_completion_is_fenced,
                    finishes::retry_at_requeues_keeping_attempts,
                    finishes::send_back_and_fail_keep_feedback_in_order,
                    finishes::nul_bytes_in_results_are_replaced,
                    leases::reap_requeues_fails_or_cancels_expired_jobs,
                    leases::heartbeat_renews_leases_and_reports_cancels,
                    leases::heartbeat_renews_only_the_jobs_named_running,
                    leases::release_gives_jobs_back_uncounted,
                    leases::dead_process_jobs_run_again_at_once,
                    leases::idle_beat_answers,
                    admin::retry_and_cancel_by_hand,
                    admin::item_ids_are_never_given_twice,
                    admin::retry_waits_until_a_cancelled_job_has_ended,
                    admin::failure_class_is_kept_filtered_and_cleared_by_retry,
                    queries::list_items_filters_and_pages,
                    queries::status_counts_stages_leases_and_items,
                    queries::item_counts_follow_a_batch_of_finishes_and_a_retry,
                    queries::many_items_added_at_once_keep_their_order_and_jobs,
                    queries::events_filter_by_item_kind_and_since,
                    intake::add_items_once_takes_a_source_once,
                    intake::import_items_in_their_states_once,
                    intake::nul_bytes_in_new_items_are_replaced,
                    dashboard::search_items_matches_word_prefixes_with_filters_and_pages,
                    dashboard::activity_counts_attempts_and_items_per_bucket,
                    dashboard::change_marker_moves_with_work,
                    budget::a_finish_releases_its_reservation_and_records_the_usage,
                    budget::a_gates_round_hash_is_kept_with_its_feedback,
                    dashboard::gate_tallies_count_each_judgement_by_round_and_model,
                    tallies::gate_tally_counters_equal_the_full_scan,
                    queue_counts::queue_counts_follow_every_move_of_a_job,
                    handoff::an_add_claims_its_first_jobs_for_free_slots_here,
                    handoff::an_add_never_jumps_the_queue,
                    handoff::an_intake_add_hands_off_too,
                    handoff::a_hand_off_to_a_stopped_engine_gives_the_jobs_back,
                ]
                backend: [
                    claims::concurrent_claims_never_share_a_job,
                    claims::the_queue_has_one_index,
                    claims::reads_of_run_at_see_every_priority_level,
                    admin::prune_deletes_only_old_finished_items,
                    admin::store_copy_gives_no_item_id_twice,
                    migrations::reopening_is_idempotent,
                    migrations::newer_schema_is_refused_untouched,
                    migrations::foreign_database_is_refused_untouched,
                    migrations::must_exist_refuses_a_missing_store,
                    wake::add_items_wakes_another_handle,
                    wake::add_items_wakes_a_subscriber_of_the_same_handle,
                    wake::an_engine_that_subscribes_later_is_woken_too,
                    leases::leases_are_judged_by_the_store_clock,
                    budget::concurrent_reservations_never_pass_a_cap,
                    tallies::gate_tallies_follow_prune_copy_and_the_migration,
                    queue_counts::queue_counts_survive_a_copy_either_way,
                    queue_counts::queue_counts_migration_counts_the_jobs_there,
                ]
            }
        }
    };
}

// The backends. Each gets its own fresh database per test.
conformance_suite!(sqlite, crate::support::SqliteBackend::create());
// PostgreSQL: `DATABASE_URL`'s server, or a throwaway cluster this test
// binary starts; each test gets a database of its own. Without a server the
// PostgreSQL half fails: it is never skipped.
conformance_suite!(postgres, crate::support::PostgresBackend::create());

/// SQLite answers an idle beat's questions exactly, in the beat's one
/// statement; PostgreSQL leaves each to its own read (always "maybe").
#[tokio::test]
async fn sqlite_idle_beat_says_what_housekeeping_is_due_exactly() {
    use crate::support::Backend as _;
    use ideamill_store::IdleBeat;
    let backend = crate::support::SqliteBackend::create().await;
    let store = backend.open().await;
    let answers = leases::an_idle_beat_beats_and_says_what_housekeeping_is_due(&*store).await;
    let beat = |expired_leases, paused_jobs, silent_processes| IdleBeat {
        expired_leases,
        paused_jobs,
        silent_processes,
    };
    assert_eq!(
        answers,
        [
            beat(false, false, false),
            beat(true, false, true),
            beat(false, true, false)
        ]
    );
    store.close().await;
}

/// A finish that SQLite refuses mid-way (here a trigger aborts the insert of
/// one output) is rolled back whole: its job is still running and holds its
/// lease, and the writer is left outside any transaction, so the next
/// finishes commit. (The finish begins and commits its transaction with its
/// own statements, `sqlite/inline_tx.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_refused_finish_is_rolled_back_and_the_writer_goes_on() {
    use crate::support::*;
    use ideamill_core::{ItemState, JobState};
    let backend = SqliteBackend::create().await;
    let store = backend.open().await;
    let s = &*store;
    let draft = next("draft", 1, 3);
    let first = add_one(s, "first", &draft, T0).await;
    let second = add_one(s, "second", &draft, T0).await;
    let a = claim_one(s, "draft", "w1", T0 + 1).await;
    let b = claim_one(s, "draft", "w1", T0 + 1).await;
    assert_eq!((a.item_id, b.item_id), (first, second));
    let mut raw = backend.raw(false).await;
    sqlx::raw_sql(
        "CREATE TRIGGER poison BEFORE INSERT ON outputs WHEN new.output = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned output'); END;",
    )
    .execute(&mut raw)
    .await
    .unwrap();
    sqlx::Connection::close(raw).await.unwrap();

    let refused = s
        .finish(&[finish(&a, "w1", T0 + 2, advance("poison", None))])
        .await;
    let e = refused.expect_err("the poisoned output is refused");
    assert!(e.to_string().contains("poisoned output"), "{e}");
    let d = s.item(first).await.unwrap();
    assert_eq!(
        (
            d.item.state,
            d.jobs[0].state,
            d.jobs[0].lease_owner.as_deref()
        ),
        (ItemState::Active, JobState::Running, Some("w1")),
        "the refused finish left nothing behind, its fence included"
    );
    assert_eq!(events_of(s, Some(first), "stale_completion").await.len(), 0);

    finish_ok(s, finish(&b, "w1", T0 + 3, advance("fine", None))).await;
    finish_ok(s, finish(&a, "w1", T0 + 4, advance("fine too", None))).await;
    for id in [first, second] {
        assert_eq!(s.item(id).await.unwrap().item.state, ItemState::Done);
    }
    let status = s.status(T0 + 5).await.unwrap();
    assert_eq!((status.items.active, status.items.done), (0, 2));
    store.close().await;
}

/// A cancelled item's job may still be finishing when the item is pruned
/// (its job ran past the retention). A finish locks the job's row (its
/// fence), then the item's (its update, and the foreign keys of what it
/// inserts); the prune takes them in that order too, so it waits for the
/// finish rather than deadlocking with it (PostgreSQL would abort one of
/// the two). SQLite's single writer cannot interleave them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prune_waits_for_a_late_finish_rather_than_deadlocking() {
    use crate::support::*;
    use std::time::{Duration, Instant};

    let backend = PostgresBackend::create().await;
    let store = backend.open().await;
    let item = add_one(&*store, "cancelled while running", &next("a", 1, 3), T0).await;
    let job = claim_one(&*store, "a", "w1", T0).await;
    store.cancel_item(item, T0 + 1).await.unwrap();

    // The finish's first half: the job's row, as its fence locks it.
    let mut finish = backend.raw().await;
    sqlx::raw_sql("BEGIN").execute(&mut finish).await.unwrap();
    sqlx::query("UPDATE jobs SET updated_at = updated_at + 1 WHERE id = $1")
        .bind(job.id)
        .execute(&mut finish)
        .await
        .unwrap();

    let pruner = backend.open().await;
    let prune = tokio::spawn(async move {
        let counts = pruner.prune(T0 + 10).await;
        pruner.close().await;
        counts
    });
    // Until the prune waits on a row lock.
    let mut watch = backend.raw().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut watch)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            !prune.is_finished(),
            "the prune did not wait for the finish's lock"
        );
        assert!(
            Instant::now() < deadline,
            "the prune never waited on a lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The finish's second half: the item's row. Taken before the job's,
    // the prune would have it now, and one of the two would be aborted.
    sqlx::query("UPDATE items SET updated_at = updated_at + 1 WHERE id = $1")
        .bind(item)
        .execute(&mut finish)
        .await
        .expect("the finish updates its item while the prune waits");
    sqlx::raw_sql("COMMIT").execute(&mut finish).await.unwrap();

    let counts = prune
        .await
        .unwrap()
        .expect("the prune, once the finish committed");
    assert_eq!(counts.item_ids, [item], "the cancelled item is pruned");
    assert_eq!(backend.count_rows("jobs").await, 0, "its job went with it");
    store.close().await;
}

/// An add and a claim run on the connection the last of them used, kept
/// out of the pool (`postgres/warm.rs`). A server restart cuts it like
/// every other: once it has sat idle past the pool's unchecked second, the
/// next add and claim find it cut and run on another connection, as calls
/// through the pool do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_adds_and_claims_outlive_their_kept_connection_being_cut() {
    use crate::support::*;
    use std::time::{Duration, Instant};

    let backend = PostgresBackend::create().await;
    let store = backend.open().await;
    add_one(&*store, "before the cut", &next("a", 1, 3), T0).await;
    let first = claim_one(&*store, "a", "w1", T0).await;

    // Every connection of the store cut, as a restart cuts them.
    let mut admin = backend.raw().await;
    let others =
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";
    sqlx::raw_sql(&format!("SELECT pg_terminate_backend(pid) {others}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) {others}"))
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} connections outlived the cut"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Past the second a connection may sit idle unchecked (the rule under
    // test, not a guess at how long something takes).
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let second = add_one(&*store, "after the cut", &next("a", 1, 3), T0 + 1).await;
    let job = claim_one(&*store, "a", "w1", T0 + 1).await;
    assert_eq!(job.item_id, second, "the add and the claim after the cut");
    assert_ne!(job.id, first.id);
    store.close().await;
}
