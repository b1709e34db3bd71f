//! Channel subscriptions of this server's connections, and the fan-out of
//! the channel topic to them (docs/protocol.md, "Channels").
//!
//! Every server reads every partition of `<topic>.channels`, so a
//! publication is one record however many devices watch it, and reaches each
//! server once. Delivery, and the seam between a recovery read and the live
//! stream, is the [`crate::delivery`] core keyed by channel.

pub mod consumer;

use crate::anycast::Targets;
use crate::delivery::{Entry, Fanout, Keyed};
use crate::frame::Text;
use protocol::api::ChannelStats;
use protocol::{partition_for, ChannelName, ChannelRecord, UserId};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// The connection a subscription delivers to.
#[derive(Clone)]
pub struct Subscriber {
    pub user: UserId,
    /// The connection's session id (its connection events'), which anycast
    /// chooses by; `None` for a session without events.
    pub session: Option<Uuid>,
    /// The hub's id of the connection.
    pub conn: u64,
    pub queue: mpsc::Sender<Text>,
}

/// What a seat knows of its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    pub user: UserId,
    pub session: Option<Uuid>,
}

/// What offering one anycast publication to one session here did.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    Delivered,
    /// The session is not subscribed here (another server holds it).
    NotHere,
    /// Its queue was full: close it (4004).
    Full(UserId, u64),
}

/// What a `dispatch` did; `overflowed` connections must be closed (4004).
#[derive(Default)]
pub struct Dispatched {
    pub delivered: usize,
    pub overflowed: Vec<(UserId, u64)>,
}

pub struct ChannelHub {
    /// Keyed by channel; a seat's id is its connection's, its data the user.
    fanout: Fanout<ChannelName, Sub, Text>,
}

impl ChannelHub {
    pub fn new(queue_len: usize) -> Self {
        Self {
            fanout: Fanout::new(queue_len),
        }
    }

    /// The consumer reads each partition from its start on; all of them
    /// open together, as `partition_of` counts them.
    pub fn open(&self, starts: &[(u32, i64)]) {
        let mut core = self.fanout.lock();
        for (p, start) in starts {
            core.open(*p, *start);
        }
        drop(core);
        self.fanout.wake();
    }

    pub fn positions(&self) -> Vec<(u32, i64)> {
        self.fanout.lock().positions()
    }

    /// The channel topic's partition for `channel`, once it is open.
    pub fn partition_of(&self, channel: &ChannelName) -> Option<u32> {
        let n = u32::try_from(self.fanout.lock().open_partitions()).ok()?;
        (n > 0).then(|| partition_for(channel.as_str(), n))
    }

    #[cfg(test)]
    /// The next offset the consumer will hand out in `partition`.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.fanout.lock().next_offset(partition)
    }

    /// Waits (at most `limit`) until the consumer has passed `high` in
    /// `partition`.
    pub async fn passes(&self, partition: u32, high: i64, limit: Duration) {
        self.fanout.passes(partition, high, limit).await;
    }

    /// `channel`'s subscribers here and the distinct users among them.
    pub fn stats(&self, channel: &ChannelName) -> ChannelStats {
        let core = self.fanout.lock();
        let seats = core.seats(channel);
        let users: std::collections::HashSet<&UserId> = seats.iter().map(|s| &s.sub.user).collect();
        ChannelStats {
            subscribers: seats.len() as u64,
            users: users.len() as u64,
        }
    }

    /// Offers `frame` to every local subscriber of `channel` (presence's
    /// join/leave); returns the connections whose queue was full.
    pub fn notify(&self, channel: &ChannelName, frame: &Text) -> Vec<(UserId, u64)> {
        let core = self.fanout.lock();
        core.seats(channel)
            .iter()
            .filter(|s| s.queue().try_send(frame.clone()).is_err())
            .map(|s| (s.sub.user.clone(), s.id))
            .collect()
    }

    /// Offers an anycast publication to `session`, if it is subscribed here.
    pub fn offer(&self, channel: &ChannelName, session: Uuid, frame: &Text) -> Offered {
        let core = self.fanout.lock();
        let seat = core
            .seats(channel)
            .iter()
            .find(|s| s.sub.session == Some(session));
        match seat {
            None => Offered::NotHere,
            Some(s) if s.queue().try_send(frame.clone()).is_ok() => Offered::Delivered,
            Some(s) => Offered::Full(s.sub.user.clone(), s.id),
        }
    }

    /// `(channels with a subscriber here, subscriptions)`.
    pub fn counts(&self) -> (usize, usize) {
        self.fanout.lock().counts()
    }

    /// Subscribes (or re-subscribes) a connection. Returns the first offset
    /// of its live stream; with `recovering`, live frames are buffered until
    /// [`ChannelHub::finish_recovery`].
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        to: Subscriber,
        recovering: bool,
    ) -> Option<i64> {
        let mut core = self.fanout.lock();
        let n = u32::try_from(core.open_partitions())
            .ok()
            .filter(|n| *n > 0)?;
        let partition = partition_for(channel.as_str(), n);
        core.remove(channel, to.conn);
        let sub = Sub {
            user: to.user,
            session: to.session,
        };
        core.add(channel, to.conn, partition, sub, to.queue, recovering)
    }

    /// Ends a recovery: the buffered live frames not already sent.
    pub fn finish_recovery(&self, channel: &ChannelName, conn: u64, last_sent: i64) -> Vec<Text> {
        self.fanout.lock().finish_replay(channel, conn, last_sent)
    }

    /// Removes one subscription; false if there was none.
    pub fn unsubscribe(&self, channel: &ChannelName, conn: u64) -> bool {
        self.fanout.lock().remove(channel, conn)
    }

    /// Hands publications (in log order) to the local subscribers (see
    /// [`crate::delivery::Core::dispatch`]): each channel's in its order;
    /// an anycast one only to its target's session, a handled mark to none.
    pub fn dispatch_batch(&self, batch: &[Publication], targets: &Targets) -> Dispatched {
        let mut overflowed = Vec::new();
        let wants = |_: &ChannelName, sub: &Sub, r: &ChannelRecord| match (r.is_mark(), r.anycast) {
            (true, _) => false,
            (false, true) => {
                sub.session.is_some() && targets.get(&r.msg_id) == sub.session.as_ref()
            }
            (false, false) => true,
        };
        let d = self.fanout.dispatch(batch, wants, |seat, _| {
            overflowed.push((seat.sub.user.clone(), seat.id))
        });
        Dispatched {
            delivered: d.delivered,
            overflowed,
        }
    }
}

/// A consumed channel record and its frame.
pub type Publication = Entry<ChannelRecord, Text>;

/// A channel record goes to its channel's subscribers.
impl Keyed for ChannelRecord {
    type Key = ChannelName;
    fn keys(&self) -> &[ChannelName] {
        std::slice::from_ref(&self.channel)
    }
}

#[cfg(test)]
mod tests;
