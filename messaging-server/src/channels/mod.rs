//! Channel subscriptions of this server's connections, and the fan-out of
//! the channel topic to them (docs/protocol.md, "Channels").
//!
//! Every server reads every partition of `<topic>.channels`, so a
//! publication is one record however many devices watch it, and reaches each
//! server once. The seam between a recovery read and the live stream works
//! as in [`crate::hub`]: one lock covers the subscriptions and each
//! partition's next offset, a recovering subscription buffers live frames,
//! and each subscription remembers the last offset it was sent.

pub mod consumer;

use axum::extract::ws::Utf8Bytes;
use protocol::{partition_for, ChannelName, UserId};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// The connection a subscription delivers to.
#[derive(Clone)]
pub struct Subscriber {
    pub user: UserId,
    /// The hub's id of the connection.
    pub conn: u64,
    pub queue: mpsc::Sender<Utf8Bytes>,
}

struct Sub {
    to: Subscriber,
    last_offset: i64,
    replay: Option<Vec<(i64, Utf8Bytes)>>,
    /// Overflowed: its connection is being closed, nothing more goes to it.
    closed: bool,
}

#[derive(Default)]
struct Inner {
    /// The next offset of each partition; empty until the consumer opened them.
    next_offset: Vec<i64>,
    channels: HashMap<ChannelName, Vec<Sub>>,
    subscriptions: usize,
}

/// What a `dispatch` did; `overflowed` connections must be closed (4004).
#[derive(Default)]
pub struct Dispatched {
    pub delivered: usize,
    pub overflowed: Vec<(UserId, u64)>,
}

pub struct ChannelHub {
    inner: Mutex<Inner>,
    queue_len: usize,
}

impl ChannelHub {
    pub fn new(queue_len: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            queue_len,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The consumer reads partition `i` from `starts[i]` on.
    pub fn open(&self, starts: Vec<i64>) {
        self.lock().next_offset = starts;
    }

    /// The channel topic's partition for `channel`, once it is open.
    pub fn partition_of(&self, channel: &ChannelName) -> Option<u32> {
        let n = u32::try_from(self.lock().next_offset.len()).ok()?;
        (n > 0).then(|| partition_for(channel.as_str(), n))
    }

    /// The next offset the consumer will hand out in `partition`.
    pub fn next_offset(&self, partition: u32) -> Option<i64> {
        self.lock().next_offset.get(partition as usize).copied()
    }

    /// `(channels with a subscriber here, subscriptions)`.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.channels.len(), inner.subscriptions)
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
        let mut inner = self.lock();
        let n = u32::try_from(inner.next_offset.len())
            .ok()
            .filter(|n| *n > 0)?;
        let live_from = inner.next_offset[partition_for(channel.as_str(), n) as usize];
        let subs = inner.channels.entry(channel.clone()).or_default();
        let before = subs.len();
        subs.retain(|s| s.to.conn != to.conn);
        let replaced = before - subs.len();
        subs.push(Sub {
            to,
            last_offset: live_from - 1,
            replay: recovering.then(Vec::new),
            closed: false,
        });
        inner.subscriptions = inner.subscriptions + 1 - replaced;
        Some(live_from)
    }

    /// Ends a recovery: the buffered live frames not already sent.
    pub fn finish_recovery(
        &self,
        channel: &ChannelName,
        conn: u64,
        last_sent: i64,
    ) -> Vec<Utf8Bytes> {
        let mut inner = self.lock();
        let Some(sub) = inner
            .channels
            .get_mut(channel)
            .and_then(|v| v.iter_mut().find(|s| s.to.conn == conn))
        else {
            return Vec::new();
        };
        let mut last = sub.last_offset.max(last_sent);
        let mut out = Vec::new();
        for (offset, frame) in sub.replay.take().unwrap_or_default() {
            if offset > last {
                last = offset;
                out.push(frame);
            }
        }
        sub.last_offset = last;
        out
    }

    /// Removes one subscription; false if there was none.
    pub fn unsubscribe(&self, channel: &ChannelName, conn: u64) -> bool {
        let mut inner = self.lock();
        let Some(subs) = inner.channels.get_mut(channel) else {
            return false;
        };
        let before = subs.len();
        subs.retain(|s| s.to.conn != conn);
        let removed = before - subs.len();
        if subs.is_empty() {
            inner.channels.remove(channel);
        }
        inner.subscriptions -= removed;
        removed > 0
    }

    #[cfg(test)]
    /// Hands one publication of `channel` (at `offset` of `partition`) to
    /// every local subscriber.
    pub fn dispatch(
        &self,
        partition: u32,
        offset: i64,
        channel: &ChannelName,
        frame: &Utf8Bytes,
    ) -> Dispatched {
        self.dispatch_batch(&[Publication {
            partition,
            offset,
            channel,
            frame,
        }])
    }

    /// Hands publications (in log order) to the local subscribers under one
    /// lock. Each stretch of the same channel goes out subscription by
    /// subscription, so a connection's frames of the stretch are queued back
    /// to back and its session wakes once for all of them (see
    /// [`crate::hub::Hub::dispatch_batch`]); a connection on several
    /// channels still sees them in log order.
    pub fn dispatch_batch(&self, batch: &[Publication<'_>]) -> Dispatched {
        let mut inner = self.lock();
        let mut out = Dispatched::default();
        for stretch in batch.chunk_by(|a, b| a.channel == b.channel) {
            let open: Vec<&Publication<'_>> = stretch
                .iter()
                .filter(|p| match inner.next_offset.get_mut(p.partition as usize) {
                    Some(next) => {
                        *next = (*next).max(p.offset + 1);
                        true
                    }
                    None => false,
                })
                .collect();
            let Some(subs) = inner.channels.get_mut(stretch[0].channel) else {
                continue;
            };
            for sub in subs.iter_mut() {
                for p in &open {
                    if sub.closed {
                        break;
                    }
                    deliver(sub, p, self.queue_len, &mut out);
                }
            }
        }
        out
    }
}

/// A consumed channel record and its frame, for [`ChannelHub::dispatch_batch`].
#[derive(Clone, Copy)]
pub struct Publication<'a> {
    pub partition: u32,
    pub offset: i64,
    pub channel: &'a ChannelName,
    pub frame: &'a Utf8Bytes,
}

fn deliver(sub: &mut Sub, p: &Publication<'_>, queue_len: usize, out: &mut Dispatched) {
    if let Some(buf) = sub.replay.as_mut() {
        if buf.len() < queue_len {
            buf.push((p.offset, p.frame.clone()));
            return;
        }
    } else if p.offset <= sub.last_offset {
        return;
    } else {
        sub.last_offset = p.offset;
        match sub.to.queue.try_send(p.frame.clone()) {
            Ok(()) => {
                out.delivered += 1;
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
    }
    // A full queue or recovery buffer: a later frame reaching the device
    // after a dropped one would carry its cursor past the gap.
    sub.closed = true;
    out.overflowed.push((sub.to.user.clone(), sub.to.conn));
}

#[cfg(test)]
mod tests;
