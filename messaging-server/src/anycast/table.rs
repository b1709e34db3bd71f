//! The anycast publications a server still follows: each chat one until a
//! handled mark for it is read, with the sessions it was offered to and
//! when the current one's time to answer runs out. Pure: time comes in.

use super::choose::choose;
use crate::frame::Text;
use protocol::{ChannelName, MsgId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a chosen subscriber has to answer `handled`.
    pub handle_timeout: Duration,
    /// Most publications waiting per channel; the oldest goes first.
    pub max_pending: usize,
    /// Longest a publication waits for a subscriber to handle it.
    pub max_wait: Duration,
}

/// How long an offer to a session that left is still given for its handled
/// mark to arrive (never past the offer's own time to answer): the mark and
/// the session's leaving travel on different topics, so a server may read
/// the leaving first.
pub const LEAVE_GRACE: Duration = Duration::from_secs(1);

/// A publication for the server that holds `session` to deliver.
#[derive(Debug, Clone)]
pub struct Offer {
    pub msg_id: MsgId,
    pub channel: ChannelName,
    pub session: Uuid,
    pub frame: Text,
}

struct Entry {
    channel: ChannelName,
    seed: String,
    frame: Text,
    /// Every session it was offered to, the current one last.
    tried: Vec<Uuid>,
    /// When the current one's time runs out (`None`: nobody to offer to).
    due: Option<Instant>,
    since: Instant,
}

impl Entry {
    fn target(&self) -> Option<Uuid> {
        self.due.and(self.tried.last().copied())
    }
}

/// What the table gave up on, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GivenUp {
    /// Pushed out by newer ones past `max_pending`.
    pub overflowed: u64,
    /// Waited `max_wait` without being handled.
    pub expired: u64,
}

pub struct Table {
    settings: Settings,
    entries: HashMap<MsgId, Entry>,
    by_channel: HashMap<ChannelName, VecDeque<MsgId>>,
    pub given_up: GivenUp,
}

impl Table {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            entries: HashMap::new(),
            by_channel: HashMap::new(),
            given_up: GivenUp::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A publication read from the log: the session it goes to first. A chat
    /// one is followed until handled; a repeat of a msg_id already followed
    /// (a retried send) goes to nobody.
    pub fn publish(
        &mut self,
        msg_id: MsgId,
        seed: &str,
        chat: bool,
        offer: Chosen<'_>,
    ) -> Option<Uuid> {
        if self.entries.contains_key(&msg_id) {
            return None;
        }
        let target = choose(seed, offer.sessions, &[]);
        if !chat {
            return target;
        }
        let queue = self.by_channel.entry(offer.channel.clone()).or_default();
        queue.push_back(msg_id);
        if queue.len() > self.settings.max_pending {
            if let Some(oldest) = queue.pop_front() {
                self.entries.remove(&oldest);
                self.given_up.overflowed += 1;
            }
        }
        self.entries.insert(
            msg_id,
            Entry {
                channel: offer.channel.clone(),
                seed: seed.to_owned(),
                frame: offer.frame.clone(),
                tried: target.into_iter().collect(),
                due: target.map(|_| offer.now + self.settings.handle_timeout),
                since: offer.now,
            },
        );
        target
    }

    /// A handled mark (or this server's own `handled`): followed no more.
    pub fn handled(&mut self, msg_id: &MsgId) -> bool {
        let Some(e) = self.entries.remove(msg_id) else {
            return false;
        };
        if let Some(q) = self.by_channel.get_mut(&e.channel) {
            q.retain(|m| m != msg_id);
            if q.is_empty() {
                self.by_channel.remove(&e.channel);
            }
        }
        true
    }

    /// Offers again each publication whose subscriber ran out of time or
    /// left [`LEAVE_GRACE`] ago, or that had nobody: to a session not tried
    /// before. `sessions` gives a channel's subscribed sessions now.
    pub fn reconsider(
        &mut self,
        now: Instant,
        sessions: impl Fn(&ChannelName) -> Vec<Uuid>,
    ) -> Vec<Offer> {
        let max_wait = self.settings.max_wait;
        let expired: Vec<MsgId> = self
            .entries
            .iter()
            .filter(|(_, e)| now.duration_since(e.since) >= max_wait)
            .map(|(m, _)| *m)
            .collect();
        for m in &expired {
            self.handled(m);
        }
        self.given_up.expired += expired.len() as u64;
        let mut offers = Vec::new();
        let mut current: HashMap<ChannelName, Vec<Uuid>> = HashMap::new();
        for (msg_id, e) in self.entries.iter_mut() {
            let subs = current
                .entry(e.channel.clone())
                .or_insert_with(|| sessions(&e.channel));
            if let (Some(t), Some(due)) = (e.target(), e.due) {
                if !subs.contains(&t) {
                    // It may have handled it just before leaving.
                    e.due = Some(due.min(now + LEAVE_GRACE));
                }
            }
            if e.due.is_some_and(|due| due > now) {
                continue;
            }
            let next = choose(&e.seed, subs, &e.tried);
            e.due = next.map(|_| now + self.settings.handle_timeout);
            if let Some(session) = next {
                e.tried.push(session);
                offers.push(Offer {
                    msg_id: *msg_id,
                    channel: e.channel.clone(),
                    session,
                    frame: e.frame.clone(),
                });
            }
        }
        offers
    }

    /// When the next offer runs out of time, if any is out.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.due).min()
    }

    /// Whether any publication waits for a subscriber to come.
    pub fn waiting(&self) -> bool {
        self.entries.values().any(|e| e.due.is_none())
    }
}

/// Where a publication is offered: its channel, frame, and the channel's
/// subscribed sessions at the time.
pub struct Chosen<'a> {
    pub channel: &'a ChannelName,
    pub frame: &'a Text,
    pub sessions: &'a [Uuid],
    pub now: Instant,
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
