//! User presence (docs/protocol.md, "Presence"): who is online, asked by a
//! device about its contacts (`presence` → `presence_state`), watched
//! (`presence` frames on changes), or asked by a backend over HTTP.

use crate::ids::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Users one `presence` request or `GET /v1/presence` may name.
pub const MAX_PRESENCE_USERS: usize = 100;

/// `presence` (client → server): the state of `users`, and with `watch`
/// a `presence` frame whenever one of them comes online or goes offline,
/// until the connection ends or an `unwatch` names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub users: Vec<UserId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
}

/// `unwatch` (client → server): no more `presence` frames about `users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unwatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub users: Vec<UserId>,
}

/// One user's presence: online while at least one device has a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresence {
    pub user: UserId,
    pub online: bool,
    /// Devices with a session now.
    #[serde(default)]
    pub devices: u32,
    /// When the user's last session ended (unix ms), if one ever did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<i64>,
}

/// `presence_state` (server → client): the answer to a `presence` request,
/// one entry per user asked, in the order asked. Also the body of
/// `GET /v1/presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub users: Vec<UserPresence>,
}

/// Users one `channel_presence` page holds at most (and by default).
pub const MAX_CHANNEL_PAGE: usize = 500;

/// `channel_presence` (client → server): the users subscribed to a
/// presence channel the connection is subscribed to, in user id order,
/// from after `after`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelPresenceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub channel: crate::ChannelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `channel_presence` (server → client): one page; `next_after` is the
/// `after` of the next page, absent on the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelPresence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub channel: crate::ChannelName,
    pub users: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<UserId>,
}

/// `join` / `leave` (server → client): a user's first subscription to a
/// presence channel began, or their last one ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub channel: crate::ChannelName,
    pub user: UserId,
}
