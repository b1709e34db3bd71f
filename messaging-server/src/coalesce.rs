//! Requests for the same key share one operation. A request that arrives
//! while an operation for its key runs waits for the next one, which serves
//! every request queued meanwhile — so each answer is at least as fresh as
//! its request, and a key has at most one operation in flight. A reconnect
//! storm (thousands of devices resuming the same partitions at once) then
//! costs one log read per partition at a time instead of one per device.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

struct Queue<Q, R> {
    waiting: Vec<(Q, oneshot::Sender<R>)>,
}

pub struct Coalescer<K, Q, R> {
    queues: Mutex<HashMap<K, Queue<Q, R>>>,
}

impl<K, Q, R> Default for Coalescer<K, Q, R> {
    fn default() -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, Q, R> Coalescer<K, Q, R>
where
    K: Hash + Eq + Clone + Send + 'static,
    Q: Send + 'static,
    R: Send + 'static,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Queue<Q, R>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `req` for `key`; `op` is run with all requests queued for the
    /// key when it starts and answers them in order. `None` when `op`
    /// panicked or gave fewer answers than requests.
    pub async fn call<F, Fut>(self: &Arc<Self>, key: K, req: Q, op: F) -> Option<R>
    where
        F: Fn(K, Vec<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut queues = self.lock();
            let first = !queues.contains_key(&key);
            queues
                .entry(key.clone())
                .or_insert_with(|| Queue {
                    waiting: Vec::new(),
                })
                .waiting
                .push((req, tx));
            first
        };
        if first {
            // Detached on purpose: it ends when its key's queue is empty, and
            // no caller's cancellation may strand the others.
            tokio::spawn(self.clone().drive(key, op));
        }
        rx.await.ok()
    }

    async fn drive<F, Fut>(self: Arc<Self>, key: K, op: F)
    where
        F: Fn(K, Vec<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        loop {
            let batch = {
                let mut queues = self.lock();
                match queues.get_mut(&key) {
                    Some(q) if !q.waiting.is_empty() => std::mem::take(&mut q.waiting),
                    _ => {
                        queues.remove(&key);
                        return;
                    }
                }
            };
            let (reqs, replies): (Vec<Q>, Vec<_>) = batch.into_iter().unzip();
            // A panicking operation fails its batch, not the key.
            let answers = tokio::spawn(op(key.clone(), reqs))
                .await
                .unwrap_or_default();
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_requests_share_operations_and_get_their_own_answers() {
        let c: Arc<Coalescer<u32, u64, u64>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let calls = (0..500u64).map(|i| {
            let (c, runs) = (c.clone(), runs.clone());
            tokio::spawn(async move {
                let op = move |_k, reqs: Vec<u64>| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        reqs.iter().map(|r| r * 2).collect()
                    }
                };
                (i, c.call((i % 2) as u32, i, op).await)
            })
        });
        for call in futures_util::future::join_all(calls).await {
            let (i, answer) = call.expect("task");
            assert_eq!(answer, Some(i * 2));
        }
        let runs = runs.load(Ordering::SeqCst);
        assert!(runs <= 8, "500 requests over 2 keys took {runs} operations");
        assert!(c.lock().is_empty(), "idle keys are forgotten");
    }

    #[tokio::test]
    async fn a_request_never_gets_an_answer_older_than_itself() {
        let c: Arc<Coalescer<u32, (), u64>> = Arc::default();
        let clock = Arc::new(AtomicUsize::new(0));
        let op = {
            let clock = clock.clone();
            move |_k, reqs: Vec<()>| {
                let started = clock.load(Ordering::SeqCst) as u64;
                async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    vec![started; reqs.len()]
                }
            }
        };
        let early = tokio::spawn({
            let (c, op) = (c.clone(), op.clone());
            async move { c.call(0, (), op).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        clock.store(1, Ordering::SeqCst);
        let late = c.call(0, (), op).await;
        assert_eq!(early.await.expect("task"), Some(0));
        assert_eq!(
            late,
            Some(1),
            "queued behind a running operation, served by the next"
        );
    }

    #[tokio::test]
    async fn a_panicking_operation_fails_its_batch_only() {
        let c: Arc<Coalescer<u32, u8, u8>> = Arc::default();
        let bad = |_k, _reqs: Vec<u8>| async move {
            if std::hint::black_box(true) {
                panic!("operation failed");
            }
            Vec::new()
        };
        assert_eq!(c.call(7, 1, bad).await, None);
        let good = |_k, reqs: Vec<u8>| async move { reqs };
        assert_eq!(c.call(7, 2, good).await, Some(2));
    }
}
