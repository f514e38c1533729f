//! SQLite's memory in a process stays within the store's page cache
//! budgets however large the database grows. Found by bench soak: with
//! SQLite's default caches (2 MiB per connection, five connections) an
//! engine's memory climbed for hours as its database grew.

// A failed test is a panic: unwrap and expect are how these tests say so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ideamill_core::machine::NextJob;
use ideamill_store::{NewItem, OpenOptions};

unsafe extern "C" {
    /// Bytes SQLite has allocated and not freed, in this process (the
    /// bundled SQLite that sqlx links).
    fn sqlite3_memory_used() -> i64;
}

fn sqlite_memory_mib() -> f64 {
    // SAFETY: a read of SQLite's own counter; no arguments, no state.
    let used = unsafe { sqlite3_memory_used() };
    used as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_database_read_through_every_connection_keeps_sqlites_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mill.db").display());
    let store = ideamill_store::open(&url, &OpenOptions::default())
        .await
        .unwrap();
    // About 24 MB of ideas: far more than every cache together.
    let first = NextJob {
        stage: "work".into(),
        round: 1,
        max_attempts: 3,
    };
    for batch in 0..30 {
        let items: Vec<NewItem> = (0..100)
            .map(|i| NewItem {
                text: format!("idea {batch}-{i} {}", "words ".repeat(1300)),
                metadata: serde_json::json!({}),
            })
            .collect();
        store.add_items(&items, &first, 1_000).await.unwrap();
    }
    // Every reader reads every page, several times over.
    for _ in 0..3 {
        let checks = (0..4).map(|_| store.quick_check());
        for problems in futures_util::future::join_all(checks).await {
            assert!(problems.unwrap().is_empty());
        }
    }
    let used = sqlite_memory_mib();
    // The budgets: 2 MiB for the writer, 512 KiB for each of four readers,
    // plus statements and connection state: 5.0 MiB measured (11.0 with
    // SQLite's default caches).
    assert!(
        used < 7.0,
        "SQLite holds {used:.1} MiB after reading a 24 MB database through every connection"
    );
    store.close().await;
}
