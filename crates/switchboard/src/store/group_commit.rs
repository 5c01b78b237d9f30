//! Group commit: concurrent writes (provider requests and delivery attempts) are queued and
//! written by one task, as many per transaction as arrived while the previous one was
//! committing. Each caller still gets its answer only after its own transaction committed.

use super::{AttemptItem, IngestItem, IngestOutcome, StoreError, StoreResult, WebhookHealth};

/// Group commit: concurrent writes of one kind are queued and written by one task, as many
/// per transaction as arrived while the previous one was committing. Each caller still gets
/// its answer only after its own transaction committed.
pub struct Batcher<I, O> {
    tx: tokio::sync::mpsc::Sender<(I, tokio::sync::oneshot::Sender<StoreResult<O>>)>,
}

/// The most writes one group commit holds.
const GROUP_COMMIT_MAX: usize = 256;

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Start `writers` writer tasks; `write` writes a batch and answers for each item, in
    /// order. Each writer takes what is queued when it is free, so while one commits the
    /// next batch gathers for another.
    pub fn start<F, Fut>(writers: usize, write: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<StoreResult<O>>> + Send,
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<(
            I,
            tokio::sync::oneshot::Sender<StoreResult<O>>,
        )>(4 * GROUP_COMMIT_MAX);
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        let write = std::sync::Arc::new(write);
        for _ in 0..writers.max(1) {
            let (rx, write) = (rx.clone(), write.clone());
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
                loop {
                    if rx
                        .lock()
                        .await
                        .recv_many(&mut batch, GROUP_COMMIT_MAX)
                        .await
                        == 0
                    {
                        return;
                    }
                    let (items, replies): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut batch).into_iter().unzip();
                    let results = write(items).await;
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
            });
        }
        Batcher { tx }
    }

    pub async fn submit(&self, item: I) -> StoreResult<O> {
        let stopped = || StoreError::Internal(anyhow::anyhow!("the store's writer stopped"));
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A write that is group-committed: attempts and provider requests share each commit.
#[derive(Debug)]
pub enum Write {
    Ingest(IngestItem),
    Attempt(AttemptItem),
}

/// The answer to a [`Write`], of the same kind.
#[derive(Debug)]
pub enum Written {
    Ingest(IngestOutcome),
    Attempt(WebhookHealth),
}

pub struct GroupCommit {
    pub writes: Batcher<Write, Written>,
}

impl GroupCommit {
    pub async fn ingest(&self, item: IngestItem) -> StoreResult<IngestOutcome> {
        match self.writes.submit(Write::Ingest(item)).await? {
            Written::Ingest(outcome) => Ok(outcome),
            Written::Attempt(_) => Err(StoreError::Internal(anyhow::anyhow!(
                "an ingest was answered as an attempt"
            ))),
        }
    }

    pub async fn attempt(&self, item: AttemptItem) -> StoreResult<WebhookHealth> {
        match self.writes.submit(Write::Attempt(item)).await? {
            Written::Attempt(health) => Ok(health),
            Written::Ingest(_) => Err(StoreError::Internal(anyhow::anyhow!(
                "an attempt was answered as an ingest"
            ))),
        }
    }
}
