//! How far the persister has written each partition, asked of PostgreSQL
//! once per partition at a time: every resume plans with it, and in a
//! reconnect herd thousands of devices of the same few partitions ask at
//! once — one query per device queued behind the pool (waits over 2 s were
//! logged at 36,000 devices). `coalesce` keeps each answer at least as fresh
//! as its question, so a resume never plans with an older position than a
//! query of its own would have given.

use crate::coalesce::Coalescer;
use std::sync::Arc;
use store::Store;

pub struct PersistedOffsets {
    store: Store,
    topic: String,
    asks: Arc<Coalescer<u32, (), Result<i64, String>>>,
}

impl PersistedOffsets {
    pub fn new(store: Store, topic: &str) -> Self {
        Self {
            store,
            topic: topic.to_owned(),
            asks: Arc::default(),
        }
    }

    /// The first offset of `partition` the persister has not written.
    pub async fn next(&self, partition: u32) -> anyhow::Result<i64> {
        let (store, topic) = (self.store.clone(), self.topic.clone());
        let op = move |partition: u32, asked: Vec<()>| {
            let (store, topic) = (store.clone(), topic.clone());
            async move {
                let next = store
                    .persisted_next(&topic, partition)
                    .await
                    .map_err(|e| e.to_string());
                vec![next; asked.len()]
            }
        };
        match self.asks.call(partition, (), op).await {
            Some(next) => next.map_err(anyhow::Error::msg),
            None => anyhow::bail!("the persisted-offset query was cancelled"),
        }
    }
}
