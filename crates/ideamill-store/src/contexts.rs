//! What a stage reads before it runs, when it did not come with its claim
//! (`Store::claim_with_contexts`): gathered, since jobs start in bursts (an
//! add hands off dozens), so their context reads share one query, one
//! round trip (or one hop to SQLite's connection thread) for the burst
//! instead of one per job. Each backend says how to read many contexts at
//! once; the gathering is written here once.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use ideamill_core::ItemId;
use tokio::sync::{mpsc, oneshot};

use crate::*;

/// Contexts read in one query at most.
const BATCH: usize = 256;

/// Reads the contexts of several items (distinct, sorted) in one query.
pub(crate) type ReadMany =
    Box<dyn Fn(Vec<ItemId>) -> BoxFuture<'static, Result<HashMap<ItemId, ItemContext>>> + Send>;

type Request = (ItemId, oneshot::Sender<Result<ItemContext>>);

/// Hands context reads to a task that answers them in batches.
pub(crate) struct ContextReader {
    requests: Option<mpsc::UnboundedSender<Request>>,
}

impl ContextReader {
    /// A reader whose task runs on the current runtime; without one, every
    /// read goes alone.
    pub(crate) fn start(read: ReadMany) -> ContextReader {
        let (tx, rx) = mpsc::unbounded_channel();
        let requests = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(answer(read, rx));
                Some(tx)
            }
            Err(_) => None,
        };
        ContextReader { requests }
    }

    /// The context of `item`, read with whatever else is asked meanwhile;
    /// `alone` reads it by itself when the batching task is gone.
    pub(crate) async fn read<F>(&self, item: ItemId, alone: F) -> Result<ItemContext>
    where
        F: Future<Output = Result<HashMap<ItemId, ItemContext>>>,
    {
        if let Some(requests) = &self.requests {
            let (reply, answer) = oneshot::channel();
            if requests.send((item, reply)).is_ok()
                && let Ok(context) = answer.await
            {
                return context;
            }
        }
        alone
            .await?
            .remove(&item)
            .ok_or(StoreError::NoSuchItem(item))
    }
}

/// Answer context reads: whatever has piled up while the last query ran
/// goes into the next one.
async fn answer(read: ReadMany, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::new();
    while let Some(first) = requests.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut ids: Vec<ItemId> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        match read(ids).await {
            Ok(found) => {
                // Cloned: the same item may be asked for twice in a batch.
                for (id, reply) in batch.drain(..) {
                    let _ = reply.send(found.get(&id).cloned().ok_or(StoreError::NoSuchItem(id)));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Unsupported(format!(
                        "cannot read the item's context: {message}"
                    ))));
                }
            }
        }
    }
}
