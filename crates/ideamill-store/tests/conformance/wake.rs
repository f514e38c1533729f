//! Wake-ups: work added through one handle wakes an engine subscribed
//! through another (another process) and one subscribed through the same
//! handle (in process, without the socket or `NOTIFY` it skips for itself).

use std::time::Duration;

use crate::support::*;

pub async fn add_items_wakes_another_handle(b: &dyn Backend) {
    let engine = b.open().await;
    let adder = b.open().await;
    let mut signal = engine.subscribe().expect("subscribe to wake-ups");

    adder
        .add_items(&new_items(&["wake up"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), signal.wait())
        .await
        .expect("the engine is woken within 5 s of work being added elsewhere");
    assert_eq!(claim_one(&*engine, "draft", "w1", T0).await.attempt, 1);

    drop(signal);
    adder.close().await;
    engine.close().await;
}

pub async fn add_items_wakes_a_subscriber_of_the_same_handle(b: &dyn Backend) {
    let store = b.open().await;
    let mut signal = store.subscribe().expect("subscribe to wake-ups");

    store
        .add_items(&new_items(&["wake up"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), signal.wait())
        .await
        .expect("the subscriber is woken within 5 s of work being added through its own handle");

    drop(signal);
    store.close().await;
}

/// An adder that has woken engines before (and so may remember whom it
/// woke) wakes an engine that subscribed since, and one that replaced an
/// engine that stopped, each right after the change.
pub async fn an_engine_that_subscribes_later_is_woken_too(b: &dyn Backend) {
    let adder = b.open().await;
    let first = b.open().await;
    let mut first_signal = first.subscribe().expect("subscribe to wake-ups");
    adder
        .add_items(&new_items(&["one"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), first_signal.wait())
        .await
        .expect("the first engine is woken");

    let later = b.open().await;
    let mut later_signal = later.subscribe().expect("subscribe to wake-ups");
    adder
        .add_items(&new_items(&["two"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), later_signal.wait())
        .await
        .expect("an engine that subscribed after the last wake-up is woken by the next");

    drop(first_signal);
    let third = b.open().await;
    let mut third_signal = third.subscribe().expect("subscribe to wake-ups");
    adder
        .add_items(&new_items(&["three"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), third_signal.wait())
        .await
        .expect("an engine that took a stopped one's place is woken");

    drop((later_signal, third_signal));
    for store in [adder, first, later, third] {
        store.close().await;
    }
}
