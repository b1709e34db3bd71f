//! The delivery core: records of a partitioned log, in offset order, handed
//! to the local subscribers of their keys (users for the user topic,
//! channels for the channel topic) through bounded queues.
//!
//! One lock covers the subscribers and each open partition's next offset,
//! so a subscriber that joins learns exactly where its live stream begins:
//! every record at or after that offset reaches it (buffered while it
//! replays from the log), every record before it must come from the replay.
//! Each subscriber remembers the last offset it was sent, so neither the
//! seam nor a re-read duplicates; a full queue or replay buffer closes the
//! subscriber, and nothing reaches it after the gap.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// A record whose subscribers are found by key.
pub trait Keyed {
    type Key;
    /// The keys whose subscribers may receive it.
    fn keys(&self) -> &[Self::Key];
}

/// A consumed record at its place in the log, with the frame every
/// subscriber gets (serialised once).
#[derive(Debug, Clone)]
pub struct Entry<R, F> {
    pub partition: u32,
    pub offset: i64,
    pub record: R,
    pub frame: F,
}

/// Why the core closed a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Its queue was full: the session does not keep up.
    Queue,
    /// Its replay buffer filled before the replay ended.
    Replay,
}

/// What a dispatch did: frames queued, and the subscribers it closed (the
/// owner ends their connections).
#[derive(Debug)]
pub struct Dispatched<K> {
    pub delivered: usize,
    pub overflowed: Vec<(K, u64, Overflow)>,
}

impl<K> Default for Dispatched<K> {
    fn default() -> Self {
        Self {
            delivered: 0,
            overflowed: Vec::new(),
        }
    }
}

/// A frame as a subscriber's queue holds it: its own copy, which may note
/// when it was queued.
pub trait Queued: Clone {
    fn queued(&self) -> Self {
        self.clone()
    }
}

/// One subscriber of one key: `sub` is what its owner keeps about it.
pub struct Seat<S, F> {
    pub id: u64,
    pub partition: u32,
    pub sub: S,
    queue: mpsc::Sender<F>,
    last_offset: i64,
    replay: Option<Vec<(i64, F)>>,
    closed: bool,
}

impl<S, F> Seat<S, F> {
    /// Nothing more is delivered to it (its connection is ending).
    pub fn close(&mut self) {
        self.closed = true;
    }

    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn queue(&self) -> &mpsc::Sender<F> {
        &self.queue
    }
}

impl<S, F: Queued> Seat<S, F> {
    fn offer(&mut self, offset: i64, frame: &F, queue_len: usize) -> Result<bool, Overflow> {
        if let Some(buf) = self.replay.as_mut() {
            if buf.len() >= queue_len {
                return Err(Overflow::Replay);
            }
            buf.push((offset, frame.clone()));
            return Ok(false);
        }
        if offset <= self.last_offset {
            return Ok(false);
        }
        self.last_offset = offset;
        match self.queue.try_send(frame.queued()) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Overflow::Queue),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
        }
    }

    fn finish_replay(&mut self, last_replayed: i64) -> Vec<F> {
        let mut last = self.last_offset.max(last_replayed);
        let mut out = Vec::new();
        for (offset, frame) in self.replay.take().unwrap_or_default() {
            if offset > last {
                last = offset;
                out.push(frame);
            }
        }
        self.last_offset = last;
        out
    }
}

/// The subscribers and partition positions, under the [`Fanout`] lock.
pub struct Core<K, S, F> {
    next_offset: HashMap<u32, i64>,
    seats: HashMap<K, Vec<Seat<S, F>>>,
    len: usize,
    queue_len: usize,
}

impl<K: Eq + Hash + Clone, S, F: Queued> Core<K, S, F> {
    /// The consumer reads `partition` from `start` on.
    pub fn open(&mut self, partition: u32, start: i64) {
        self.next_offset.insert(partition, start);
    }

    /// Stops serving `partition` (its subscribers stay until removed).
    pub fn forget(&mut self, partition: u32) {
        self.next_offset.remove(&partition);
    }

    pub fn forget_all(&mut self) {
        self.next_offset.clear();
    }

    /// The next offset the consumer will hand out in `partition`.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.next_offset.get(&partition).copied()
    }

    pub fn positions(&self) -> Vec<(u32, i64)> {
        self.next_offset.iter().map(|(p, o)| (*p, *o)).collect()
    }

    pub fn queue_len(&self) -> usize {
        self.queue_len
    }

    pub fn open_partitions(&self) -> usize {
        self.next_offset.len()
    }

    /// `(keys with a subscriber, subscribers)`.
    pub fn counts(&self) -> (usize, usize) {
        (self.seats.len(), self.len)
    }

    pub fn seats(&self, key: &K) -> &[Seat<S, F>] {
        self.seats.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn seats_mut(&mut self) -> impl Iterator<Item = (&K, &mut Seat<S, F>)> {
        self.seats
            .iter_mut()
            .flat_map(|(k, v)| v.iter_mut().map(move |s| (k, s)))
    }

    pub fn seat_mut(&mut self, key: &K, id: u64) -> Option<&mut Seat<S, F>> {
        self.seats.get_mut(key)?.iter_mut().find(|s| s.id == id)
    }

    /// Adds subscriber `id` of `key` on an open `partition`; returns the
    /// first offset of its live stream. With `replaying`, live frames are
    /// buffered until [`Core::finish_replay`].
    pub fn add(
        &mut self,
        key: &K,
        id: u64,
        partition: u32,
        sub: S,
        queue: mpsc::Sender<F>,
        replaying: bool,
    ) -> Option<i64> {
        let live_from = self.next_offset(partition)?;
        self.seats.entry(key.clone()).or_default().push(Seat {
            id,
            partition,
            sub,
            queue,
            last_offset: live_from - 1,
            replay: replaying.then(Vec::new),
            closed: false,
        });
        self.len += 1;
        Some(live_from)
    }

    /// Removes subscriber `id` of `key`; false if there was none.
    pub fn remove(&mut self, key: &K, id: u64) -> bool {
        let Some(seats) = self.seats.get_mut(key) else {
            return false;
        };
        let before = seats.len();
        seats.retain(|s| s.id != id);
        let removed = before - seats.len();
        if seats.is_empty() {
            self.seats.remove(key);
        }
        self.len -= removed;
        removed > 0
    }

    /// Ends a replay that sent up to `last_replayed`: the buffered live
    /// frames after it, to send before anything else.
    pub fn finish_replay(&mut self, key: &K, id: u64, last_replayed: i64) -> Vec<F> {
        self.seat_mut(key, id)
            .map(|s| s.finish_replay(last_replayed))
            .unwrap_or_default()
    }

    /// Hands a run of records (in log order) to the subscribers of their
    /// keys in open partitions that `wants` them; a seat whose queue or
    /// replay buffer is full is closed and handed to `overflowed`. Grouped by key, so a
    /// subscriber's frames of the whole run are queued back to back and its
    /// session wakes once for them; each key's records stay in log order.
    pub fn dispatch<R>(
        &mut self,
        run: &[Entry<R, F>],
        wants: impl Fn(&K, &S, &R) -> bool,
        mut overflowed: impl FnMut(&mut Seat<S, F>, Overflow),
    ) -> Dispatched<K>
    where
        R: Keyed<Key = K>,
    {
        let mut by_key: HashMap<&K, Vec<&Entry<R, F>>> = HashMap::new();
        for item in run {
            match self.next_offset.get_mut(&item.partition) {
                Some(next) => *next = (*next).max(item.offset + 1),
                None => continue,
            }
            for key in item.record.keys() {
                by_key.entry(key).or_default().push(item);
            }
        }
        let mut out = Dispatched::default();
        for (key, items) in by_key {
            let Some(seats) = self.seats.get_mut(key) else {
                continue;
            };
            for seat in seats.iter_mut() {
                for item in &items {
                    if seat.closed {
                        break;
                    }
                    if seat.partition != item.partition || !wants(key, &seat.sub, &item.record) {
                        continue;
                    }
                    match seat.offer(item.offset, &item.frame, self.queue_len) {
                        Ok(sent) => out.delivered += usize::from(sent),
                        Err(why) => {
                            seat.closed = true;
                            overflowed(seat, why);
                            out.overflowed.push((key.clone(), seat.id, why));
                        }
                    }
                }
            }
        }
        out
    }
}

/// The core under its lock, with a signal for every advance of a partition.
pub struct Fanout<K, S, F> {
    core: Mutex<Core<K, S, F>>,
    advanced: Notify,
}

impl<K: Eq + Hash + Clone, S, F: Queued> Fanout<K, S, F> {
    /// `queue_len` frames per subscriber queue and replay buffer.
    pub fn new(queue_len: usize) -> Self {
        Self {
            core: Mutex::new(Core {
                next_offset: HashMap::new(),
                seats: HashMap::new(),
                len: 0,
                queue_len,
            }),
            advanced: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Core<K, S, F>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Core::dispatch`] under the lock (`overflowed` sees each seat it
    /// closes, still under the lock); wakes [`Fanout::passes`] waiters.
    pub fn dispatch<R>(
        &self,
        run: &[Entry<R, F>],
        wants: impl Fn(&K, &S, &R) -> bool,
        overflowed: impl FnMut(&mut Seat<S, F>, Overflow),
    ) -> Dispatched<K>
    where
        R: Keyed<Key = K>,
    {
        let out = self.lock().dispatch(run, wants, overflowed);
        self.wake();
        out
    }

    /// Wakes [`Fanout::passes`] and [`Fanout::changed`] waiters after
    /// partitions opened or closed, or subscribers left.
    pub fn wake(&self) {
        self.advanced.notify_waiters();
    }

    /// Resolves at the next dispatch or [`Fanout::wake`] after this call
    /// (create it before checking, then await it).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.advanced.notified()
    }

    /// Waits, at most `limit`, until the consumer has passed `high` in
    /// `partition` (or does not serve it): a replay up to `high` then
    /// meets the live stream.
    pub async fn passes(&self, partition: u32, high: i64, limit: Duration) {
        let wait = async {
            loop {
                let advanced = self.advanced.notified();
                if self.lock().next_offset(partition).is_none_or(|n| n >= high) {
                    return;
                }
                advanced.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

#[cfg(test)]
mod tests;
