//! User presence (docs/protocol.md, "Presence"): every server keeps the
//! cluster's open sessions from the connection events (`<topic>.events`,
//! started from what the persister stored, then read live), answers who
//! is online from memory, and tells local watchers when a watched user
//! comes online or — after a grace, so a device that moves to another
//! server does not flap — goes offline.

mod channels;
pub mod consumer;

pub use channels::{Notice, Rules};

use crate::frame::{encode, Text};
use protocol::presence::UserPresence;
use protocol::{ConnectionEvent, EventKind, ServerFrame, UserId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// A watching connection: its user (to close it through the hub) and id.
pub type Watcher = (UserId, u64);

/// How long a user without sessions still counts as online to watchers:
/// a device that was drained or moved reconnects within it without an
/// offline/online pair.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(2);

/// Longest a question waits for the table to load (a server just started).
pub const LOAD_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Inner {
    /// Open sessions by user, over the whole cluster.
    sessions: HashMap<UserId, HashSet<Uuid>>,
    /// Latest `disconnected` seen per *watched* user (unix ms), for their
    /// notices; everyone else's comes from the store, so this stays as
    /// small as the watched set.
    last_seen: HashMap<UserId, i64>,
    watchers: HashMap<UserId, HashMap<Watcher, mpsc::Sender<Text>>>,
    watching: HashMap<Watcher, HashSet<UserId>>,
    /// What the watchers of a user were last told (online or not).
    told: HashMap<UserId, bool>,
    /// Users without sessions whose watchers are told offline at this time.
    going: BTreeMap<UserId, Instant>,
    /// Next offset of each events partition applied (`None` until loaded).
    positions: Option<BTreeMap<u32, i64>>,
    /// Presence channels' users, each with their subscribed sessions.
    members: HashMap<protocol::ChannelName, BTreeMap<UserId, HashSet<Uuid>>>,
    /// A session's presence-channel subscriptions (and its user).
    subscribed: HashMap<Uuid, (UserId, Vec<protocol::ChannelName>)>,
}

/// Notices to send: a frame to each watcher; the ones whose queue is full
/// are returned to be closed (too slow), like any other overflow.
pub type Overflowed = Vec<Watcher>;

#[derive(Default)]
pub struct Presence {
    inner: Mutex<Inner>,
    rules: Rules,
    /// True once loaded: questions asked while loading wait for it.
    loaded: tokio::sync::watch::Sender<bool>,
}

/// What applying one event asks the caller to do.
#[derive(Default)]
pub struct Applied {
    /// Watchers to close (their queue was full).
    pub overflowed: Overflowed,
    /// `join`/`leave` frames for the local subscribers of a channel.
    pub notices: Vec<Notice>,
}

impl Presence {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loaded: the open sessions the store held at `positions` (the events
    /// topic's next offsets), before any event after them is applied.
    pub fn load(
        &self,
        open: impl IntoIterator<Item = (UserId, Uuid)>,
        positions: BTreeMap<u32, i64>,
    ) {
        let mut inner = self.lock();
        for (user, session) in open {
            inner.sessions.entry(user).or_default().insert(session);
        }
        inner.positions = Some(positions);
        self.loaded.send_replace(true);
    }

    /// Waits up to `within` for the table to be loaded; false if it is not.
    pub async fn wait_loaded(&self, within: Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        tokio::time::timeout(within, rx.wait_for(|l| *l))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn positions(&self) -> Vec<(u32, i64)> {
        let inner = self.lock();
        inner
            .positions
            .iter()
            .flatten()
            .map(|(p, o)| (*p, *o))
            .collect()
    }

    /// Applies one event (idempotent: the start may re-read a few).
    /// Watchers of a user who comes online are told at once.
    pub fn apply(&self, partition: u32, offset: i64, e: &ConnectionEvent, now: Instant) -> Applied {
        let mut inner = self.lock();
        if let Some(p) = inner.positions.as_mut() {
            p.insert(partition, offset + 1);
        }
        let notices = inner.apply_channels(e, &self.rules);
        let overflowed = match e.event {
            EventKind::Connected => {
                inner
                    .sessions
                    .entry(e.user.clone())
                    .or_default()
                    .insert(e.session);
                inner.going.remove(&e.user);
                inner.tell(&e.user, true)
            }
            EventKind::Disconnected => {
                inner.disconnected(e, now);
                Vec::new()
            }
            EventKind::Subscribed | EventKind::Unsubscribed => Vec::new(),
        };
        Applied {
            overflowed,
            notices,
        }
    }

    /// Tells the watchers of users whose grace has passed that they are offline.
    pub fn expire(&self, now: Instant) -> Overflowed {
        let mut inner = self.lock();
        let due: Vec<UserId> = inner
            .going
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(u, _)| u.clone())
            .collect();
        let mut overflowed = Vec::new();
        for user in due {
            inner.going.remove(&user);
            if !inner.sessions.contains_key(&user) {
                overflowed.extend(inner.tell(&user, false));
            }
        }
        overflowed
    }

    /// The presence of `users` now; `last_seen_ms` is filled from memory
    /// (the caller asks the store for the rest).
    pub fn state(&self, users: &[UserId]) -> Vec<UserPresence> {
        let inner = self.lock();
        users.iter().map(|u| inner.presence(u)).collect()
    }

    /// `watcher` hears about `users` from now on; what it was answered
    /// (`state`) is what their watchers were told.
    pub fn watch(&self, watcher: &Watcher, queue: mpsc::Sender<Text>, users: &[UserId]) {
        let mut inner = self.lock();
        for u in users {
            let online = inner.sessions.contains_key(u);
            inner.told.entry(u.clone()).or_insert(online);
            let w = inner.watchers.entry(u.clone()).or_default();
            w.insert(watcher.clone(), queue.clone());
            inner
                .watching
                .entry(watcher.clone())
                .or_default()
                .insert(u.clone());
        }
    }

    /// `watcher` no longer hears about `users` (all of them: `None`).
    pub fn unwatch(&self, watcher: &Watcher, users: Option<&[UserId]>) {
        let mut inner = self.lock();
        let Some(mut watched) = inner.watching.remove(watcher) else {
            return;
        };
        let dropped: Vec<UserId> = match users {
            Some(us) => us.iter().filter(|u| watched.remove(*u)).cloned().collect(),
            None => std::mem::take(&mut watched).into_iter().collect(),
        };
        if !watched.is_empty() {
            inner.watching.insert(watcher.clone(), watched);
        }
        for u in dropped {
            let empty = inner.watchers.get_mut(&u).is_some_and(|w| {
                w.remove(watcher);
                w.is_empty()
            });
            if empty {
                inner.watchers.remove(&u);
                inner.told.remove(&u);
                inner.going.remove(&u);
                inner.last_seen.remove(&u);
            }
        }
    }

    /// Users watched by `watcher` (tests, limits).
    pub fn watched_by(&self, watcher: &Watcher) -> usize {
        self.lock().watching.get(watcher).map_or(0, HashSet::len)
    }
}

impl Inner {
    fn disconnected(&mut self, e: &ConnectionEvent, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&e.user) {
            s.remove(&e.session);
            if s.is_empty() {
                self.sessions.remove(&e.user);
            }
        }
        if !self.watchers.contains_key(&e.user) {
            return;
        }
        let seen = self.last_seen.entry(e.user.clone()).or_default();
        *seen = (*seen).max(e.at_ms);
        if !self.sessions.contains_key(&e.user) {
            self.going.insert(e.user.clone(), now + OFFLINE_GRACE);
        }
    }

    fn presence(&self, u: &UserId) -> UserPresence {
        let devices = self.sessions.get(u).map_or(0, HashSet::len);
        UserPresence {
            user: u.clone(),
            online: devices > 0,
            devices: u32::try_from(devices).unwrap_or(u32::MAX),
            last_seen_ms: self.last_seen.get(u).copied(),
        }
    }

    /// Sends `user`'s presence to its watchers if it differs from what
    /// they were told.
    fn tell(&mut self, user: &UserId, online: bool) -> Overflowed {
        let Some(watchers) = self.watchers.get(user) else {
            return Vec::new();
        };
        if self.told.get(user) == Some(&online) {
            return Vec::new();
        }
        self.told.insert(user.clone(), online);
        let Ok(frame) = encode(&ServerFrame::Presence(self.presence(user))) else {
            return Vec::new();
        };
        watchers
            .iter()
            .filter(|(_, q)| q.try_send(frame.clone()).is_err())
            .map(|(w, _)| w.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
