//! Wake-ups: work added through one handle wakes an engine subscribed
//! through another (another process) and one subscribed through the same
//! handle (in process, without the socket or `NOTIFY` it skips for itself).

use std::time::Duration;

use ideamill_store::{Store, WorkSignal};

use crate::support::*;

pub async fn add_items_wakes_another_handle(b: &dyn Backend) {
    let engine = b.open().await;
    let adder = b.open().await;
    let mut signal = engine.subscribe().expect("subscribe to wake-ups");

    add_and_expect_woken(&*adder, &mut *signal, "the engine, by work added elsewhere").await;
    assert_eq!(claim_one(&*engine, "draft", "w1", T0).await.attempt, 1);

    drop(signal);
    adder.close().await;
    engine.close().await;
}

pub async fn add_items_wakes_a_subscriber_of_the_same_handle(b: &dyn Backend) {
    let store = b.open().await;
    let mut signal = store.subscribe().expect("subscribe to wake-ups");

    add_and_expect_woken(&*store, &mut *signal, "a subscriber of the adding handle").await;

    drop(signal);
    store.close().await;
}

/// An adder that has woken engines before (and so may remember whom it
/// woke) wakes an engine that subscribed since, and one that replaced an
/// engine that stopped, each right after the change.
pub async fn an_engine_that_subscribes_later_is_woken_too(b: &dyn Backend) {
    let adder = b.open().await;
    let (first, mut first_signal) = engine(b).await;
    add_and_expect_woken(&*adder, &mut *first_signal, "the first engine").await;
    let (later, mut later_signal) = engine(b).await;
    add_and_expect_woken(&*adder, &mut *later_signal, "a later engine").await;
    drop(first_signal);
    let (third, mut third_signal) = engine(b).await;
    add_and_expect_woken(&*adder, &mut *third_signal, "a successor").await;

    drop((later_signal, third_signal));
    for store in [adder, first, later, third] {
        store.close().await;
    }
}

/// A handle of its own, subscribed to wake-ups, as an engine's.
async fn engine(b: &dyn Backend) -> (Box<dyn Store>, Box<dyn WorkSignal>) {
    let store = b.open().await;
    let signal = store.subscribe().expect("subscribe to wake-ups");
    (store, signal)
}

/// Add an item through `adder` and wait up to 5 s for `signal` to fire.
async fn add_and_expect_woken(adder: &dyn Store, signal: &mut dyn WorkSignal, who: &str) {
    adder
        .add_items(&new_items(&["wake up"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), signal.wait())
        .await
        .unwrap_or_else(|_| panic!("{who} is woken within 5 s of work being added"));
}
