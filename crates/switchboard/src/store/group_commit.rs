//! Group commit: concurrent writes (provider requests and delivery attempts) are queued and
//! written by one task, as many per transaction as arrived while the previous one was
//! committing. Each caller still gets its answer only after its own transaction committed.

use super::{AttemptItem, IngestItem, IngestOutcome, StoreError, StoreResult, WebhookHealth};

/// Group commit: concurrent writes are queued and written by one task, as many per
/// transaction as arrived while the previous one was committing. Each caller still gets its
/// answer only after its own transaction committed.
///
/// Writes come in two queues: urgent ones (a provider waits for each answer) and the rest
/// (delivery attempts). A batch takes every urgent write waiting and at most
/// `LATER_PER_BATCH` of the rest, so a thousand attempts finishing at once (a thousand hanging
/// subscribers timing out together) delay an ingest by one small batch, not by four of 256.
pub struct Batcher<I, O> {
    urgent: Queue<I, O>,
    later: Queue<I, O>,
}

/// A write waiting, with where its answer goes.
type Pending<I, O> = (I, tokio::sync::oneshot::Sender<StoreResult<O>>);
type Queue<I, O> = tokio::sync::mpsc::Sender<Pending<I, O>>;
type Inbox<I, O> = tokio::sync::mpsc::Receiver<Pending<I, O>>;

/// The most urgent writes one group commit holds.
const GROUP_COMMIT_MAX: usize = 256;
/// The most other writes one group commit holds.
const LATER_PER_BATCH: usize = 64;

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Start `writers` writer tasks; `write` writes a batch and answers for each item, in
    /// order. Each writer takes what is queued when it is free, so while one commits the
    /// next batch gathers for another.
    pub fn start<F, Fut>(writers: usize, write: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<StoreResult<O>>> + Send,
    {
        let (urgent, urgent_rx) = tokio::sync::mpsc::channel(4 * GROUP_COMMIT_MAX);
        let (later, later_rx) = tokio::sync::mpsc::channel(4 * GROUP_COMMIT_MAX);
        let inboxes = std::sync::Arc::new(tokio::sync::Mutex::new((urgent_rx, later_rx)));
        let write = std::sync::Arc::new(write);
        for _ in 0..writers.max(1) {
            let (inboxes, write) = (inboxes.clone(), write.clone());
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut inboxes = inboxes.lock().await;
                        let (urgent, later) = &mut *inboxes;
                        match next_batch(urgent, later).await {
                            Some(batch) => batch,
                            None => return,
                        }
                    };
                    let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let results = write(items).await;
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
            });
        }
        Batcher { urgent, later }
    }

    /// Write `item` in the next group commit that has room; answers after it committed.
    pub async fn submit(&self, item: I) -> StoreResult<O> {
        Self::send(&self.urgent, item).await
    }

    /// Write `item` in a group commit after the urgent writes waiting.
    pub async fn submit_later(&self, item: I) -> StoreResult<O> {
        Self::send(&self.later, item).await
    }

    async fn send(queue: &Queue<I, O>, item: I) -> StoreResult<O> {
        let stopped = || StoreError::Internal(anyhow::anyhow!("the store's writer stopped"));
        let (reply, answer) = tokio::sync::oneshot::channel();
        queue.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Wait for a write, then take every urgent write waiting and at most `LATER_PER_BATCH` others
/// (urgent ones first). `None` once both queues are closed and empty.
async fn next_batch<I, O>(
    urgent: &mut Inbox<I, O>,
    later: &mut Inbox<I, O>,
) -> Option<Vec<Pending<I, O>>> {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut rest = Vec::new();
    let (mut urgent_open, mut later_open) = (true, true);
    while batch.is_empty() && rest.is_empty() {
        if !urgent_open && !later_open {
            return None;
        }
        tokio::select! {
            biased;
            n = urgent.recv_many(&mut batch, GROUP_COMMIT_MAX), if urgent_open => {
                urgent_open = n > 0;
            }
            n = later.recv_many(&mut rest, LATER_PER_BATCH), if later_open => {
                later_open = n > 0;
            }
        }
    }
    take_waiting(urgent, &mut batch, GROUP_COMMIT_MAX);
    take_waiting(later, &mut rest, LATER_PER_BATCH);
    batch.append(&mut rest);
    Some(batch)
}

/// Add the writes waiting in `inbox` to `into`, until it holds `max`, without waiting.
fn take_waiting<I, O>(inbox: &mut Inbox<I, O>, into: &mut Vec<Pending<I, O>>, max: usize) {
    while into.len() < max {
        match inbox.try_recv() {
            Ok(item) => into.push(item),
            Err(_) => break,
        }
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
        match self.writes.submit_later(Write::Attempt(item)).await? {
            Written::Attempt(health) => Ok(health),
            Written::Ingest(_) => Err(StoreError::Internal(anyhow::anyhow!(
                "an attempt was answered as an ingest"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A batch's items, as (urgent, number).
    type Seen = Arc<Mutex<Vec<Vec<(bool, usize)>>>>;

    /// Yield until `done`, at most 10 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let wait = async {
            while !done() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("not within 10 s: {what}"));
    }

    #[tokio::test]
    async fn urgent_writes_go_first_and_the_rest_wait_in_small_batches() {
        let seen: Seen = Arc::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let batcher = {
            let (seen, gate, entered) = (seen.clone(), gate.clone(), entered.clone());
            Batcher::start(1, move |items: Vec<(bool, usize)>| {
                let (seen, gate) = (seen.clone(), gate.clone());
                entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    // Each batch waits until the test lets it through.
                    gate.acquire().await.expect("gate").forget();
                    let n = items.len();
                    seen.lock().expect("seen").push(items);
                    (0..n).map(|_| Ok(())).collect()
                }
            })
        };
        let batcher = Arc::new(batcher);
        let mut answers = tokio::task::JoinSet::new();
        // The first write is taken alone and holds the writer.
        {
            let b = batcher.clone();
            answers.spawn(async move { b.submit_later((false, 0)).await });
        }
        until("the first batch is taken", || {
            entered.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
        .await;
        for n in 1..=300 {
            let b = batcher.clone();
            answers.spawn(async move { b.submit_later((false, n)).await });
        }
        for n in 1..=5 {
            let b = batcher.clone();
            answers.spawn(async move { b.submit((true, n)).await });
        }
        // Everything is queued behind the first batch.
        until("everything is queued", || {
            batcher.later.max_capacity() - batcher.later.capacity() >= 300
                && batcher.urgent.max_capacity() - batcher.urgent.capacity() >= 5
        })
        .await;
        gate.add_permits(1_000);
        while let Some(answer) = answers.join_next().await {
            answer.expect("task").expect("written");
        }
        let seen = seen.lock().expect("seen");
        assert_eq!(seen[0], [(false, 0)]);
        let second = &seen[1];
        // Every urgent write waiting, and 64 of the 300 others.
        assert_eq!(second.len(), 5 + 64, "{second:?}");
        assert!(second[..5].iter().all(|(urgent, _)| *urgent), "{second:?}");
        assert!(second[5..].iter().all(|(urgent, _)| !*urgent), "{second:?}");
        assert!(seen[2..].iter().all(|b| b.len() <= 64));
        let written: usize = seen.iter().map(Vec::len).sum();
        assert_eq!(written, 306);
    }
}
