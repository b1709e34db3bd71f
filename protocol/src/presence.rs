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
