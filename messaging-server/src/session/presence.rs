//! `presence` and `unwatch`: the state of a device's contacts, and watching
//! them (docs/protocol.md, "Presence").

use super::{Gone, Session};
use protocol::presence::{
    ChannelPresence, ChannelPresenceRequest, PresenceRequest, PresenceState, Unwatch, UserPresence,
    MAX_CHANNEL_PAGE, MAX_PRESENCE_USERS,
};
use protocol::{ErrorCode, FrameError, ServerFrame, UserId};
use serde_json::Value;
use store::Store;

/// Users one connection may watch at once.
pub const MAX_WATCHED: usize = 1_000;

/// Fills `last_seen_ms` of offline users the table has not seen end a
/// session since this server started, from the store.
pub async fn with_last_seen(
    store: &Store,
    mut users: Vec<UserPresence>,
) -> Result<Vec<UserPresence>, store::StoreError> {
    let missing: Vec<UserId> = users
        .iter()
        .filter(|u| !u.online && u.last_seen_ms.is_none())
        .map(|u| u.user.clone())
        .collect();
    if missing.is_empty() {
        return Ok(users);
    }
    let seen = store.last_seen(&missing).await?;
    for u in users.iter_mut().filter(|u| u.last_seen_ms.is_none()) {
        u.last_seen_ms = seen.get(&u.user).copied();
    }
    Ok(users)
}

fn refuse(id: &Option<Value>, code: ErrorCode, message: impl Into<String>) -> FrameError {
    FrameError::new(id.clone(), code, message)
}

impl Session {
    /// `Ok(Err(e))`: refused with the connection kept.
    pub(super) async fn presence(
        &mut self,
        req: PresenceRequest,
    ) -> Result<Result<(), FrameError>, Gone> {
        let answer = match self.presence_state(&req).await {
            Ok(users) => users,
            Err(e) => return Ok(Err(e)),
        };
        let frame = ServerFrame::PresenceState(PresenceState {
            id: req.id,
            users: answer,
        });
        self.send_frame(&frame).await.map(Ok)
    }

    async fn presence_state(&self, req: &PresenceRequest) -> Result<Vec<UserPresence>, FrameError> {
        let id = &req.id;
        if req.users.is_empty() || req.users.len() > MAX_PRESENCE_USERS {
            let msg = format!("presence names 1 to {MAX_PRESENCE_USERS} users");
            return Err(refuse(id, ErrorCode::InvalidField, msg));
        }
        let presence = self.state.presence.clone();
        if !presence.wait_loaded(crate::presence::LOAD_WAIT).await {
            return Err(refuse(
                id,
                ErrorCode::Unavailable,
                "presence is loading; retry",
            ));
        }
        let store = self.state.members.store();
        let unavailable = |e: store::StoreError| refuse(id, ErrorCode::Unavailable, e.to_string());
        let me = &self.who.user;
        let contacts = store
            .contacts_among(me, &req.users)
            .await
            .map_err(unavailable)?;
        let strangers: Vec<&str> = req
            .users
            .iter()
            .filter(|u| *u != me && !contacts.contains(*u))
            .map(UserId::as_str)
            .collect();
        if !strangers.is_empty() {
            let msg = format!(
                "presence only of users you share a conversation with, or who wrote to you: not {}",
                strangers.join(", ")
            );
            return Err(refuse(id, ErrorCode::Forbidden, msg));
        }
        if req.watch {
            self.watch(id, &req.users)?;
        }
        with_last_seen(store, presence.state(&req.users))
            .await
            .map_err(unavailable)
    }

    /// Watches before the state is read: a change in between is told too.
    fn watch(&self, id: &Option<Value>, users: &[UserId]) -> Result<(), FrameError> {
        let watcher = (self.who.user.clone(), self.subs.conn());
        let presence = &self.state.presence;
        if presence.watched_by(&watcher) + users.len() > MAX_WATCHED {
            let msg = format!("a connection watches at most {MAX_WATCHED} users");
            return Err(refuse(id, ErrorCode::InvalidField, msg));
        }
        let Some(queue) = self.subs.queue() else {
            return Err(refuse(id, ErrorCode::Unavailable, "connection closing"));
        };
        presence.watch(&watcher, queue, users);
        Ok(())
    }

    /// One page of a presence channel's users, for a subscriber of it.
    pub(super) fn channel_presence(
        &self,
        req: ChannelPresenceRequest,
    ) -> Result<ServerFrame, FrameError> {
        let id = &req.id;
        if !self.state.presence.covers(&req.channel) {
            let msg = format!(
                "{} is not a presence channel (SWITCHBOARD_PRESENCE_CHANNELS)",
                req.channel
            );
            return Err(refuse(id, ErrorCode::InvalidField, msg));
        }
        if !self.subs.has(&req.channel) {
            let msg = format!("subscribe to {} to see who is in it", req.channel);
            return Err(refuse(id, ErrorCode::Forbidden, msg));
        }
        let limit = req
            .limit
            .unwrap_or(MAX_CHANNEL_PAGE)
            .clamp(1, MAX_CHANNEL_PAGE);
        let (users, next_after) =
            self.state
                .presence
                .members(&req.channel, req.after.as_ref(), limit);
        Ok(ServerFrame::ChannelPresence(ChannelPresence {
            id: req.id,
            channel: req.channel,
            users,
            next_after,
        }))
    }

    pub(super) fn unwatch(&mut self, un: &Unwatch) {
        let watcher = (self.who.user.clone(), self.subs.conn());
        self.state.presence.unwatch(&watcher, Some(&un.users));
    }

    /// The connection ended: it watches nobody any more.
    pub(super) fn drop_watches(&mut self) {
        let watcher = (self.who.user.clone(), self.subs.conn());
        self.state.presence.unwatch(&watcher, None);
    }
}
