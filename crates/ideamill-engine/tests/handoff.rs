//! The hand-off, end to end on a real SQLite store: an item added in the
//! engine's process while a slot is free starts without a claim; with no
//! slot free it waits in the queue; once the engine has stopped, an add
//! claims nothing for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ideamill_core::ItemId;
use ideamill_core::JobState;
use ideamill_core::machine::NextJob;
use ideamill_engine::{CancellationToken, Engine, EngineOptions};
use ideamill_stages::executor::{Execution, Executor, NoopExecutor};
use ideamill_store::{ClaimedJob, ItemContext, NewItem, Store};
use tokio::sync::Semaphore;

/// Passes each job (as the no-op stage does) once the test lets one through.
struct Gated(Arc<Semaphore>);

#[async_trait]
impl Executor for Gated {
    async fn run(
        &self,
        job: &ClaimedJob,
        ctx: &ItemContext,
        cancel: &CancellationToken,
    ) -> Execution {
        self.0.acquire().await.unwrap().forget();
        NoopExecutor.run(job, ctx, cancel).await
    }
}

async fn add(store: &dyn Store, text: &str) -> ItemId {
    let first = NextJob {
        stage: "s".into(),
        round: 1,
        max_attempts: 3,
    };
    let item = NewItem {
        text: text.into(),
        metadata: serde_json::json!({}),
    };
    store
        .add_items(&[item], &first, ideamill_sys::clock::now_millis())
        .await
        .unwrap()[0]
}

async fn job_state(store: &dyn Store, id: ItemId) -> (JobState, Option<String>) {
    let d = store.item(id).await.unwrap();
    let job = d.jobs.last().unwrap();
    (job.state, job.lease_owner.clone())
}

/// Wait until `check` holds, for at most 10 s.
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_with_a_free_slot_here_starts_its_job_without_a_claim() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ideamill.toml");
    let text = format!(
        "[store]\nurl = \"sqlite://{}\"\n[engine]\nlease = \"30s\"\nheartbeat = \"2s\"\n\
         [[stages]]\nname = \"s\"\nkind = \"command\"\ncommand = [\"true\"]\nconcurrency = 2\n",
        dir.path().join("store.db").display()
    );
    let config = Arc::new(ideamill_core::config::parse(&text, &path).unwrap());
    let store: Arc<dyn Store> = Arc::from(
        ideamill_store::open(&config.store.url, &Default::default())
            .await
            .unwrap(),
    );
    let gate = Arc::new(Semaphore::new(0));
    let engine = Engine::new(
        config.clone(),
        store.clone(),
        vec![(
            "s".into(),
            Arc::new(Gated(gate.clone())) as Arc<dyn Executor>,
        )],
        EngineOptions::default(),
    );
    let owner = engine.process_id().to_string();

    // Added before the engine runs: claimed as usual, and held at the gate.
    let a = add(&*store, "a").await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(engine.run(shutdown.clone()));
    until("the first job to be claimed", async || {
        job_state(&*store, a).await.0 == JobState::Running
    })
    .await;

    // One slot is free: the add itself leaves the job running here.
    let b = add(&*store, "b").await;
    assert_eq!(
        job_state(&*store, b).await,
        (JobState::Running, Some(owner.clone())),
        "handed off in the add's transaction"
    );
    // No slot is free: the job waits in the queue.
    let c = add(&*store, "c").await;
    assert_eq!(job_state(&*store, c).await, (JobState::Queued, None));

    gate.add_permits(3);
    until("all three to be done", async || {
        let mut done = 0;
        for id in [a, b, c] {
            done += usize::from(job_state(&*store, id).await.0 == JobState::Succeeded);
        }
        done == 3
    })
    .await;
    shutdown.cancel();
    let summary = running.await.unwrap().unwrap();
    assert_eq!(summary.store_calls.handed_off, 1);
    assert_eq!(summary.released, 0);

    // The engine has stopped: nothing is claimed for it any more.
    let d = add(&*store, "d").await;
    assert_eq!(job_state(&*store, d).await, (JobState::Queued, None));
    store.close().await;
}
