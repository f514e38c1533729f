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
