//! Channel presence: who is subscribed to each presence channel (a name
//! or prefix in `SWITCHBOARD_PRESENCE_CHANNELS`), from the same events as
//! user presence, and the `join`/`leave` a user's first and last
//! subscription make — unless the channel has more than
//! `SWITCHBOARD_JOIN_LEAVE_LIMIT` users.

use super::{Inner, Presence};
use crate::frame::{encode, Text};
use protocol::presence::Membership;
use protocol::{ChannelName, ConnectionEvent, EventKind, ServerFrame, UserId};
use uuid::Uuid;

/// Which channels have presence, and up to how many users they send
/// join/leave frames.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub patterns: Vec<String>,
    pub join_leave_limit: usize,
}

impl Rules {
    pub fn covers(&self, channel: &ChannelName) -> bool {
        self.patterns
            .iter()
            .any(|p| protocol::channel::pattern_allows(p, channel))
    }
}

/// A `join` or `leave` for the local subscribers of `channel`.
pub type Notice = (ChannelName, Text);

impl Inner {
    /// Applies a (un)subscription or a disconnection to presence channels.
    pub(super) fn apply_channels(&mut self, e: &ConnectionEvent, rules: &Rules) -> Vec<Notice> {
        match (e.event, &e.channel) {
            (EventKind::Subscribed, Some(c)) if rules.covers(c) => self
                .join(e.session, &e.user, c, rules)
                .into_iter()
                .collect(),
            (EventKind::Unsubscribed, Some(c)) => self
                .leave(e.session, &e.user, c, rules)
                .into_iter()
                .collect(),
            (EventKind::Disconnected, _) => {
                let Some((user, channels)) = self.subscribed.remove(&e.session) else {
                    return Vec::new();
                };
                channels
                    .iter()
                    .filter_map(|c| self.leave(e.session, &user, c, rules))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    fn join(
        &mut self,
        session: Uuid,
        user: &UserId,
        channel: &ChannelName,
        rules: &Rules,
    ) -> Option<Notice> {
        let (_, mine) = self
            .subscribed
            .entry(session)
            .or_insert_with(|| (user.clone(), Vec::new()));
        if !mine.contains(channel) {
            mine.push(channel.clone());
        }
        let members = self.members.entry(channel.clone()).or_default();
        let sessions = members.entry(user.clone()).or_default();
        let first = sessions.is_empty();
        sessions.insert(session);
        let small = members.len() <= rules.join_leave_limit;
        (first && small)
            .then(|| notice(channel, user, true))
            .flatten()
    }

    fn leave(
        &mut self,
        session: Uuid,
        user: &UserId,
        channel: &ChannelName,
        rules: &Rules,
    ) -> Option<Notice> {
        if let Some((_, mine)) = self.subscribed.get_mut(&session) {
            mine.retain(|c| c != channel);
        }
        let members = self.members.get_mut(channel)?;
        let sessions = members.get_mut(user)?;
        if !sessions.remove(&session) || !sessions.is_empty() {
            return None;
        }
        members.remove(user);
        let small = members.len() < rules.join_leave_limit;
        if members.is_empty() {
            self.members.remove(channel);
        }
        small.then(|| notice(channel, user, false)).flatten()
    }
}

fn notice(channel: &ChannelName, user: &UserId, joined: bool) -> Option<Notice> {
    let m = Membership {
        channel: channel.clone(),
        user: user.clone(),
    };
    let frame = if joined {
        ServerFrame::Join(m)
    } else {
        ServerFrame::Leave(m)
    };
    encode(&frame).ok().map(|t| (channel.clone(), t))
}

impl Presence {
    /// Adds the stored subscriptions of open sessions (at load).
    pub fn load_subscriptions(&self, rows: impl IntoIterator<Item = (Uuid, UserId, ChannelName)>) {
        let mut inner = self.lock();
        let rules = self.rules.clone();
        for (session, user, channel) in rows.into_iter().filter(|r| rules.covers(&r.2)) {
            let _ = inner.join(
                session,
                &user,
                &channel,
                &Rules {
                    join_leave_limit: 0,
                    ..rules.clone()
                },
            );
        }
    }

    pub fn covers(&self, channel: &ChannelName) -> bool {
        self.rules.covers(channel)
    }

    /// Every session subscribed to `channel` over the cluster (a presence
    /// channel's; none for another channel).
    pub fn channel_sessions(&self, channel: &ChannelName) -> Vec<Uuid> {
        let inner = self.lock();
        inner
            .members
            .get(channel)
            .map(|users| users.values().flatten().copied().collect())
            .unwrap_or_default()
    }

    /// One page of `channel`'s users in id order after `after`, and the
    /// `after` of the next page if there is one.
    pub fn members(
        &self,
        channel: &ChannelName,
        after: Option<&UserId>,
        limit: usize,
    ) -> (Vec<UserId>, Option<UserId>) {
        let inner = self.lock();
        let Some(members) = inner.members.get(channel) else {
            return (Vec::new(), None);
        };
        let from = match after {
            Some(a) => members
                .range::<UserId, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => members.range::<UserId, _>(..),
        };
        let mut page: Vec<UserId> = from.take(limit + 1).map(|(u, _)| u.clone()).collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| page.last().cloned()).flatten();
        (page, next)
    }
}
