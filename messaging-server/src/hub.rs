//! Local connections by user, and the fan-out of the user topic's records
//! to them: the [`crate::delivery`] core keyed by recipient, plus what only
//! devices have (a bound per user, a close signal with its reason).

use crate::delivery::{self, Entry, Fanout, Keyed};
use crate::ending::Ending;
use crate::frame::Text;
use protocol::{DeviceId, Kind, Record, UserId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub struct DeviceHandle {
    pub id: u64,
    pub rx: mpsc::Receiver<Text>,
    pub close: oneshot::Receiver<Ending>,
}

/// What the hub keeps about a device beside its delivery seat.
struct Device {
    device: DeviceId,
    close: Option<oneshot::Sender<Ending>>,
}

type Seat = delivery::Seat<Device, Text>;

fn end(seat: &mut Seat, c: Ending) {
    seat.close();
    if let Some(tx) = seat.sub.close.take() {
        let _ = tx.send(c);
    }
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
    fanout: Fanout<UserId, Device, Text>,
    next_id: AtomicU64,
    max_devices: usize,
}

impl Hub {
    /// `queue_len` frames per device before it is closed as too slow;
    /// `max_devices` devices per user (a device id reconnecting counts once).
    pub fn new(queue_len: usize, max_devices: usize) -> Self {
        Self {
            fanout: Fanout::new(queue_len),
            next_id: AtomicU64::new(0),
            max_devices,
        }
    }

    pub fn open_partition(&self, partition: u32, start: i64) {
        self.fanout.lock().open(partition, start);
        self.fanout.wake();
    }

    /// The next offset the consumer will hand to `partition`'s devices.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.fanout.lock().next_offset(partition)
    }

    /// Waits (at most `limit`) until the consumer has passed `high` in
    /// `partition`, or does not serve it.
    pub async fn passes(&self, partition: u32, high: i64, limit: Duration) {
        self.fanout.passes(partition, high, limit).await;
    }

    pub fn is_open(&self, partition: u32) -> bool {
        self.next_offset(partition).is_some()
    }

    /// Served partitions with the next offset each will deliver.
    pub fn positions(&self) -> Vec<(u32, i64)> {
        self.fanout.lock().positions()
    }

    pub fn connections(&self) -> usize {
        self.fanout.lock().counts().1
    }

    /// Stops serving `partition` and closes its devices with `close(user)`.
    pub fn close_partition(&self, partition: u32, close: impl Fn(&UserId) -> Ending) {
        let mut core = self.fanout.lock();
        core.forget(partition);
        for (user, seat) in core.seats_mut().filter(|(_, s)| s.partition == partition) {
            end(seat, close(user));
        }
        drop(core);
        self.fanout.wake();
    }

    /// Closes every device (drain, lost lease) and stops serving all partitions.
    pub fn close_all(&self, close: impl Fn(&UserId, u32) -> Ending) {
        let mut core = self.fanout.lock();
        core.forget_all();
        for (user, seat) in core.seats_mut() {
            let c = close(user, seat.partition);
            end(seat, c);
        }
        drop(core);
        self.fanout.wake();
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
        let mut core = self.fanout.lock();
        if core.next_offset(partition).is_none() {
            return Err(Refused::NotServed(partition));
        }
        let others = core
            .seats(user)
            .iter()
            .filter(|s| s.sub.device != *device)
            .count();
        if others >= self.max_devices {
            return Err(Refused::TooManyDevices(others));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(core.queue_len());
        let (ctx, crx) = oneshot::channel();
        let sub = Device {
            device: device.clone(),
            close: Some(ctx),
        };
        let live_from = core
            .add(user, id, partition, sub, tx, replaying)
            .ok_or(Refused::NotServed(partition))?;
        Ok((DeviceHandle { id, rx, close: crx }, live_from))
    }

    /// Ends the replay: returns the buffered live frames not already replayed.
    pub fn finish_replay(&self, user: &UserId, id: u64, last_replayed: i64) -> Vec<Text> {
        self.fanout.lock().finish_replay(user, id, last_replayed)
    }

    /// The delivery queue of a registered device, for its channel subscriptions.
    pub fn queue(&self, user: &UserId, id: u64) -> Option<mpsc::Sender<Text>> {
        let core = self.fanout.lock();
        let seat = core.seats(user).iter().find(|s| s.id == id)?;
        Some(seat.queue().clone())
    }

    /// Closes one device (e.g. its queue overflowed with channel publications).
    pub fn close_device(&self, user: &UserId, id: u64, close: Ending) {
        if let Some(seat) = self.fanout.lock().seat_mut(user, id) {
            end(seat, close);
        }
    }

    pub fn unregister(&self, user: &UserId, id: u64) {
        self.fanout.lock().remove(user, id);
        self.fanout.wake();
    }

    /// Resolves at the next change of partitions, deliveries or devices
    /// after this call: create it, check, then await it.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.fanout.changed()
    }

    #[cfg(test)]
    /// Hands one consumed record to every local device of its recipients.
    pub fn dispatch(
        &self,
        partition: u32,
        offset: i64,
        record: &Record,
        frame: &Text,
    ) -> Dispatched {
        self.dispatch_batch(&[Entry {
            partition,
            offset,
            record: record.clone(),
            frame: frame.clone(),
        }])
    }

    /// Hands a run of consumed records (in log order) to their recipients'
    /// local devices (see [`delivery::Core::dispatch`]); an ephemeral
    /// record skips the device that sent it. Devices that overflowed are
    /// closed as too slow.
    pub fn dispatch_batch(&self, batch: &[Consumed]) -> Dispatched {
        let d = self.fanout.dispatch(
            batch,
            |user, device, r: &Record| {
                !(r.kind == Kind::Ephemeral
                    && *user == r.sender
                    && device.device == r.sender_device)
            },
            |seat, why| end(seat, Ending::TooSlow(why)),
        );
        Dispatched {
            delivered: d.delivered,
            overflowed: d.overflowed.len(),
        }
    }
}

/// A consumed record of the user topic and its frame.
pub type Consumed = Entry<Record, Text>;

/// A user-topic record goes to its recipients.
impl Keyed for Record {
    type Key = UserId;
    fn keys(&self) -> &[UserId] {
        &self.recipients
    }
}

#[cfg(test)]
pub(crate) mod tests;
