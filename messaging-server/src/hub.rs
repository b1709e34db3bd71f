//! Local connections by user, and the fan-out of consumed records to them.
//!
//! One lock covers both the devices and each partition's next offset, so a
//! device that registers learns exactly where its live stream begins: every
//! record at or after that offset reaches it (buffered while it replays),
//! every record before it must come from the replay. Each device remembers the
//! last offset it was sent, so neither the seam nor a re-read duplicates.

use axum::extract::ws::Utf8Bytes;
use protocol::{CloseCode, DeviceId, Kind, Record, UserId};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Why and how a connection must end; `frame` (e.g. a redirect) goes first.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: CloseCode,
    pub frame: Option<Utf8Bytes>,
    pub reason: &'static str,
}

impl Close {
    pub fn new(code: CloseCode, reason: &'static str) -> Self {
        Self {
            code,
            frame: None,
            reason,
        }
    }
}

pub struct DeviceHandle {
    pub id: u64,
    pub rx: mpsc::Receiver<Utf8Bytes>,
    pub close: oneshot::Receiver<Close>,
}

struct Slot {
    id: u64,
    device: DeviceId,
    partition: u32,
    tx: mpsc::Sender<Utf8Bytes>,
    close: Option<oneshot::Sender<Close>>,
    last_offset: i64,
    replay: Option<Vec<(i64, Utf8Bytes)>>,
}

impl Slot {
    fn close(&mut self, c: Close) {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(c);
        }
    }
}

#[derive(Default)]
struct Inner {
    users: HashMap<UserId, Vec<Slot>>,
    /// Partitions open for sessions, with the next offset the consumer will see.
    next_offset: HashMap<u32, i64>,
    next_id: u64,
    connections: usize,
}

/// Why a device was not registered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("partition {0} is not served here")]
    NotServed(u32),
    #[error("this user already has {0} devices connected here")]
    TooManyDevices(usize),
}

/// What a `dispatch` did, for metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    pub delivered: usize,
    pub overflowed: usize,
}

pub struct Hub {
    inner: Mutex<Inner>,
    queue_len: usize,
    max_devices: usize,
}

impl Hub {
    /// `queue_len` frames per device before it is closed as too slow;
    /// `max_devices` devices per user (a device id reconnecting counts once).
    pub fn new(queue_len: usize, max_devices: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            queue_len,
            max_devices,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open_partition(&self, partition: u32, start: i64) {
        self.lock().next_offset.insert(partition, start);
    }

    /// The next offset the consumer will hand to `partition`'s devices.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.lock().next_offset.get(&partition).copied()
    }

    pub fn is_open(&self, partition: u32) -> bool {
        self.lock().next_offset.contains_key(&partition)
    }

    /// Served partitions with the next offset each will deliver.
    pub fn positions(&self) -> Vec<(u32, i64)> {
        self.lock()
            .next_offset
            .iter()
            .map(|(p, o)| (*p, *o))
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Stops serving `partition` and closes its devices with `close(user)`.
    pub fn close_partition(&self, partition: u32, close: impl Fn(&UserId) -> Close) {
        let mut inner = self.lock();
        inner.next_offset.remove(&partition);
        for (user, slots) in inner.users.iter_mut() {
            for s in slots.iter_mut().filter(|s| s.partition == partition) {
                s.close(close(user));
            }
        }
    }

    /// Closes every device (drain, lost lease) and stops serving all partitions.
    pub fn close_all(&self, close: impl Fn(&UserId, u32) -> Close) {
        let mut inner = self.lock();
        inner.next_offset.clear();
        for (user, slots) in inner.users.iter_mut() {
            for s in slots.iter_mut() {
                s.close(close(user, s.partition));
            }
        }
    }

    /// Adds a device. Returns its handle and the first offset of its live
    /// stream; with `replaying`, live records are buffered until
    /// [`Hub::finish_replay`].
    pub fn register(
        &self,
        user: &UserId,
        device: &DeviceId,
        partition: u32,
        replaying: bool,
    ) -> Result<(DeviceHandle, i64), Refused> {
        let mut inner = self.lock();
        let live_from = *inner
            .next_offset
            .get(&partition)
            .ok_or(Refused::NotServed(partition))?;
        let others = inner.users.get(user).map_or(0, |slots| {
            slots.iter().filter(|s| s.device != *device).count()
        });
        if others >= self.max_devices {
            return Err(Refused::TooManyDevices(others));
        }
        inner.next_id += 1;
        inner.connections += 1;
        let id = inner.next_id;
        let (tx, rx) = mpsc::channel(self.queue_len);
        let (ctx, crx) = oneshot::channel();
        let slot = Slot {
            id,
            device: device.clone(),
            partition,
            tx,
            close: Some(ctx),
            last_offset: live_from - 1,
            replay: replaying.then(Vec::new),
        };
        inner.users.entry(user.clone()).or_default().push(slot);
        Ok((DeviceHandle { id, rx, close: crx }, live_from))
    }

    /// Ends the replay: returns the buffered live frames not already replayed.
    pub fn finish_replay(&self, user: &UserId, id: u64, last_replayed: i64) -> Vec<Utf8Bytes> {
        let mut inner = self.lock();
        let Some(slot) = inner
            .users
            .get_mut(user)
            .and_then(|v| v.iter_mut().find(|s| s.id == id))
        else {
            return Vec::new();
        };
        let buffered = slot.replay.take().unwrap_or_default();
        let mut last = slot.last_offset.max(last_replayed);
        let mut out = Vec::with_capacity(buffered.len());
        for (offset, frame) in buffered {
            if offset > last {
                last = offset;
                out.push(frame);
            }
        }
        slot.last_offset = last;
        out
    }

    /// The delivery queue of a registered device, for its channel subscriptions.
    pub fn queue(&self, user: &UserId, id: u64) -> Option<mpsc::Sender<Utf8Bytes>> {
        let inner = self.lock();
        let slot = inner.users.get(user)?.iter().find(|s| s.id == id)?;
        Some(slot.tx.clone())
    }

    /// Closes one device (e.g. its queue overflowed with channel publications).
    pub fn close_device(&self, user: &UserId, id: u64, close: Close) {
        let mut inner = self.lock();
        if let Some(slot) = inner
            .users
            .get_mut(user)
            .and_then(|v| v.iter_mut().find(|s| s.id == id))
        {
            slot.close(close);
        }
    }

    pub fn unregister(&self, user: &UserId, id: u64) {
        let mut inner = self.lock();
        let Some(slots) = inner.users.get_mut(user) else {
            return;
        };
        let before = slots.len();
        slots.retain(|s| s.id != id);
        let removed = before - slots.len();
        if slots.is_empty() {
            inner.users.remove(user);
        }
        inner.connections -= removed;
    }

    #[cfg(test)]
    /// Hands one consumed record to every local device of its recipients.
    pub fn dispatch(
        &self,
        partition: u32,
        offset: i64,
        record: &Record,
        frame: &Utf8Bytes,
    ) -> Dispatched {
        self.dispatch_batch(&[Consumed {
            partition,
            offset,
            record,
            frame,
        }])
    }

    /// Hands a run of consumed records (in log order) to their local
    /// devices under one lock, device by device: a device's frames of the
    /// whole run are queued back to back, so its session wakes once and
    /// writes them with one flush — a burst costs a wake-up per device, not
    /// per delivery.
    pub fn dispatch_batch(&self, batch: &[Consumed<'_>]) -> Dispatched {
        let mut inner = self.lock();
        let mut by_user: HashMap<&UserId, Vec<&Consumed<'_>>> = HashMap::new();
        for c in batch {
            match inner.next_offset.get_mut(&c.partition) {
                Some(next) => *next = (*next).max(c.offset + 1),
                None => continue,
            }
            for user in &c.record.recipients {
                by_user.entry(user).or_default().push(c);
            }
        }
        let mut out = Dispatched::default();
        for (user, consumed) in by_user {
            let Some(slots) = inner.users.get_mut(user) else {
                continue;
            };
            for slot in slots.iter_mut() {
                for c in &consumed {
                    let r = c.record;
                    let own_device = *user == r.sender && slot.device == r.sender_device;
                    if slot.partition != c.partition || (r.kind == Kind::Ephemeral && own_device) {
                        continue;
                    }
                    deliver(slot, c.offset, c.frame, self.queue_len, &mut out);
                }
            }
        }
        out
    }
}

/// A consumed record and its frame, for [`Hub::dispatch_batch`].
#[derive(Clone, Copy)]
pub struct Consumed<'a> {
    pub partition: u32,
    pub offset: i64,
    pub record: &'a Record,
    pub frame: &'a Utf8Bytes,
}

fn deliver(
    slot: &mut Slot,
    offset: i64,
    frame: &Utf8Bytes,
    queue_len: usize,
    out: &mut Dispatched,
) {
    // Once closed (overflow, move, drain) a device gets nothing more: a later
    // frame reaching it after a dropped one would carry its cursor past the gap.
    if slot.close.is_none() {
        return;
    }
    if let Some(buf) = slot.replay.as_mut() {
        if buf.len() >= queue_len {
            out.overflowed += 1;
            slot.close(Close::new(CloseCode::TooSlow, "replay buffer overflow"));
        } else {
            buf.push((offset, frame.clone()));
        }
        return;
    }
    if offset <= slot.last_offset {
        return;
    }
    slot.last_offset = offset;
    match slot.tx.try_send(frame.clone()) {
        Ok(()) => out.delivered += 1,
        Err(mpsc::error::TrySendError::Full(_)) => {
            out.overflowed += 1;
            slot.close(Close::new(CloseCode::TooSlow, "queue overflow"));
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
pub(crate) mod tests;
