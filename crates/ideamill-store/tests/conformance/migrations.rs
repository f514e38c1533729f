//! Opening a store: migrations are idempotent, and a database this build
//! must not touch (too new, someone else's, missing) is refused unchanged.

use ideamill_store::{ItemFilter, Store, StoreError};

use crate::support::*;

async fn open_error(b: &dyn Backend, must_exist: bool) -> StoreError {
    expect_err(b.try_open(must_exist).await, "open the store")
}

async fn texts(s: &dyn Store) -> Vec<String> {
    let filter = ItemFilter {
        limit: 100,
        ..ItemFilter::default()
    };
    let items = s.list_items(&filter).await.unwrap();
    items.into_iter().rev().map(|i| i.text).collect()
}

pub async fn reopening_is_idempotent(b: &dyn Backend) {
    let first = b.open().await;
    first
        .add_items(&new_items(&["kept"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    first.close().await;

    let again = match b.try_open(true).await {
        Ok(store) => store,
        Err(e) => panic!("reopen an existing store with must_exist: {e}"),
    };
    assert_eq!(texts(&*again).await, ["kept"]);
    // A second handle opened while the first is open (another process).
    let other = b.open().await;
    other
        .add_items(&new_items(&["added"]), &next("draft", 1, 3), T0 + 1)
        .await
        .unwrap();
    assert_eq!(texts(&*again).await, ["kept", "added"]);
    assert_eq!(claim_one(&*again, "draft", "w1", T0 + 2).await.attempt, 1);
    other.close().await;
    again.close().await;
}

pub async fn newer_schema_is_refused_untouched(b: &dyn Backend) {
    let store = b.open().await;
    store
        .add_items(&new_items(&["data"]), &next("draft", 1, 3), T0)
        .await
        .unwrap();
    store.close().await;
    drop(store);
    b.set_schema_version(999).await;
    let before = b.fingerprint().await;

    for must_exist in [false, true] {
        match open_error(b, must_exist).await {
            StoreError::TooNew { found, known, .. } => {
                assert_eq!(found, 999);
                assert!(known < 999, "known {known}");
            }
            e => panic!("expected TooNew, got {e:?}"),
        }
    }
    assert_unchanged(
        &before,
        &b.fingerprint().await,
        "a database too new to open",
    );
}

pub async fn foreign_database_is_refused_untouched(b: &dyn Backend) {
    b.create_foreign().await;
    let before = b.fingerprint().await;
    let err = open_error(b, false).await;
    assert!(
        matches!(err, StoreError::Corrupt(_)),
        "expected Corrupt, got {err:?}"
    );
    assert_unchanged(&before, &b.fingerprint().await, "someone else's database");
}

pub async fn must_exist_refuses_a_missing_store(b: &dyn Backend) {
    let err = open_error(b, true).await;
    assert!(
        matches!(err, StoreError::Missing(_)),
        "expected Missing, got {err:?}"
    );
    assert!(!b.exists().await, "a refused open must create nothing");
}
