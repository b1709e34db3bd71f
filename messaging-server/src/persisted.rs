//! How far the persister has written each partition, asked of PostgreSQL
//! once per partition at a time: every resume plans with it, and in a
//! reconnect herd thousands of devices of the same few partitions ask at
//! once — one query per device queued behind the pool (waits over 2 s were
//! logged at 36,000 devices). `coalesce` keeps each answer at least as fresh
//! as its question, so a resume never plans with an older position than a
//! query of its own would have given — while PostgreSQL answers.
//!
//! The query has a connection of its own (behind a herd's replays in the
//! shared pool it timed out: 3,181 resumes of one restarted server at
//! 36,000 devices then read their whole gap from the log, in shared reads
//! of 2,000–3,000 offsets that held every other device of their partition;
//! docs/benchmarks.md, "Resumes that read their whole gap from the log"),
//! kept open by a background read of every partition each 10 s. When it
//! fails anyway, the resume reads its gap from the log if the log still
//! holds it — as while PostgreSQL is down — and only otherwise plans with
//! the last position read (`recent`): the persister's position only grows,
//! so an earlier one is a lower bound (the store holds everything below it).

use crate::coalesce::Coalescer;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Longest an earlier answer stands in for one PostgreSQL did not give. A
/// bound only matters against retention: the log must still hold what
/// the persister had not written then.
const KNOWN_FOR: Duration = Duration::from_secs(60);

/// How often every partition's position is read in the background: the
/// connection stays open (a restarted server's first queries — the
/// connection's setup included — took over 2 s on a busy PostgreSQL, and
/// 3,453 resumes went to the log for it) and a recent position is known.
const REFRESH: Duration = Duration::from_secs(10);

/// Where positions are read (PostgreSQL; a fake in tests).
pub trait Positions: Clone + Send + Sync + 'static {
    fn persisted_next(
        &self,
        topic: &str,
        partition: u32,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The positions of `partitions` in one query.
    fn persisted_all(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> impl Future<Output = Result<BTreeMap<u32, i64>, StoreError>> + Send;
}

impl Positions for Store {
    async fn persisted_next(&self, topic: &str, partition: u32) -> Result<i64, StoreError> {
        Store::persisted_next(self, topic, partition).await
    }

    async fn persisted_all(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> Result<BTreeMap<u32, i64>, StoreError> {
        self.stored_offsets(topic, partitions).await
    }
}

pub struct PersistedOffsets<P = Store> {
    positions: P,
    topic: String,
    asks: Arc<Coalescer<u32, (), Result<i64, String>>>,
    /// The latest answer of each partition, and when it was read.
    known: Mutex<HashMap<u32, (i64, Instant)>>,
}

impl<P: Positions> PersistedOffsets<P> {
    /// `positions` should be a pool of its own: a query that waits behind
    /// a herd's replays for a connection answers too late to help them.
    pub fn new(positions: P, topic: &str) -> Self {
        Self {
            positions,
            topic: topic.to_owned(),
            asks: Arc::default(),
            known: Mutex::default(),
        }
    }

    /// The first offset of `partition` the persister has not written.
    pub async fn next(&self, partition: u32) -> anyhow::Result<i64> {
        let next = self.ask(partition).await?;
        self.remember(partition, next);
        Ok(next)
    }

    /// Reads every partition's position each `REFRESH` until `stop`;
    /// `partitions` is the topic's partition count once the map is known.
    pub async fn keep_fresh(&self, partitions: impl Fn() -> Option<u32>, stop: CancellationToken) {
        loop {
            let read = match partitions() {
                Some(n) => self.refresh(n).await,
                None => {
                    // Before the first map: open the connection at least.
                    self.refresh(0).await;
                    false
                }
            };
            let pause = if read {
                REFRESH
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn refresh(&self, partitions: u32) -> bool {
        let all: Vec<u32> = (0..partitions).collect();
        match self.positions.persisted_all(&self.topic, &all).await {
            Ok(found) => {
                for (partition, next) in found {
                    self.remember(partition, next);
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "persister positions not read; trying again");
                false
            }
        }
    }

    async fn ask(&self, partition: u32) -> anyhow::Result<i64> {
        let (positions, topic) = (self.positions.clone(), self.topic.clone());
        let op = move |partition: u32, asked: Vec<()>| {
            let (positions, topic) = (positions.clone(), topic.clone());
            async move {
                let next = positions
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (i64, Instant)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, partition: u32, next: i64) {
        let mut known = self.lock();
        let entry = known.entry(partition).or_insert((next, Instant::now()));
        // Answers of concurrent questions may land out of order.
        if next >= entry.0 {
            *entry = (next, Instant::now());
        }
    }

    /// The last position read for `partition` within `KNOWN_FOR`.
    pub fn recent(&self, partition: u32) -> Option<i64> {
        let (next, at) = *self.lock().get(&partition)?;
        (at.elapsed() <= KNOWN_FOR).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// PostgreSQL as a number: a position, or -1 for a pool timed out.
    #[derive(Clone, Default)]
    struct Db(Arc<AtomicI64>);

    impl Positions for Db {
        async fn persisted_next(&self, _: &str, _: u32) -> Result<i64, StoreError> {
            match self.0.load(Ordering::SeqCst) {
                -1 => Err(StoreError::Db(sqlx::Error::PoolTimedOut)),
                n => Ok(n),
            }
        }

        async fn persisted_all(
            &self,
            topic: &str,
            partitions: &[u32],
        ) -> Result<BTreeMap<u32, i64>, StoreError> {
            let mut out = BTreeMap::new();
            for p in partitions {
                out.insert(*p, self.persisted_next(topic, *p).await?);
            }
            Ok(out)
        }
    }

    #[tokio::test]
    async fn a_busy_database_leaves_the_last_position_read_never_a_newer_one() {
        let db = Db::default();
        let offsets = PersistedOffsets::new(db.clone(), "t");
        db.0.store(-1, Ordering::SeqCst);
        assert!(offsets.next(3).await.is_err());
        assert_eq!(offsets.recent(3), None, "nothing read yet");
        db.0.store(40, Ordering::SeqCst);
        assert_eq!(offsets.next(3).await.expect("answered"), 40);
        db.0.store(-1, Ordering::SeqCst);
        assert!(offsets.next(3).await.is_err(), "a failure is told");
        assert_eq!(offsets.recent(3), Some(40));
        assert_eq!(offsets.recent(4), None, "another partition's");
        db.0.store(55, Ordering::SeqCst);
        assert_eq!(offsets.next(3).await.expect("answered"), 55);
        assert_eq!(offsets.recent(3), Some(55));
    }

    #[tokio::test]
    async fn an_old_position_is_not_given_for_a_new_one() {
        let db = Db::default();
        let offsets = PersistedOffsets::new(db.clone(), "t");
        db.0.store(40, Ordering::SeqCst);
        offsets.next(3).await.expect("answered");
        if let Some(at) = Instant::now().checked_sub(KNOWN_FOR + Duration::from_secs(1)) {
            offsets.lock().insert(3, (40, at));
        }
        assert_eq!(offsets.recent(3), None, "too old to stand in");
    }

    #[tokio::test]
    async fn positions_are_read_in_the_background_before_any_resume_asks() {
        let db = Db::default();
        let offsets = Arc::new(PersistedOffsets::new(db.clone(), "t"));
        db.0.store(70, Ordering::SeqCst);
        let stop = CancellationToken::new();
        let fresh = tokio::spawn({
            let (offsets, stop) = (offsets.clone(), stop.clone());
            async move { offsets.keep_fresh(|| Some(4), stop).await }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while offsets.recent(3).is_none() {
            assert!(Instant::now() < deadline, "never read");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for p in 0..4 {
            assert_eq!(offsets.recent(p), Some(70));
        }
        assert_eq!(offsets.recent(4), None, "not a partition of the topic");
        stop.cancel();
        fresh.await.expect("ends when stopped");
    }
}
