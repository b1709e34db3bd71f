//! The operator console's JSON (`/console/api/*` on the coordinator;
//! docs/operations.md, "Console").

use crate::presence::UserPresence;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /console/api/overview`: the map and what each service says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub epoch: u64,
    pub partitions: u32,
    /// The owner of each partition, in partition order (`None`: unowned).
    pub owners: Vec<Option<String>>,
    pub servers: Vec<ServerView>,
    pub persisters: Vec<PersisterView>,
    /// Whether the drain action is on (an admin key is configured).
    pub can_drain: bool,
    /// When the coordinator put this together (unix ms).
    pub at_ms: i64,
}

/// One messaging server: its registration, and its own `/metrics` and
/// `/readyz` (absent when it did not answer within a second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    pub server_id: String,
    pub http_url: String,
    pub draining: bool,
    pub broker_unreachable: bool,
    pub partitions: Vec<u32>,
    pub ready: Option<bool>,
    pub stats: Option<ServerStats>,
}

/// Counters are totals since the server started: the page turns two
/// readings into rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    pub sessions: f64,
    pub channel_subscriptions: f64,
    pub channels: f64,
    pub deliveries_total: f64,
    pub channel_deliveries_total: f64,
    pub sends_total: f64,
    pub consumer_lag: f64,
    pub produce_in_flight: f64,
}

/// A persister (`SWITCHBOARD_PERSISTER_URLS`): its lag per partition it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersisterView {
    pub url: String,
    pub up: bool,
    pub lag: BTreeMap<u32, f64>,
}

/// `GET /console/api/users/{user}`: where the user is served, and whether
/// they are online (when the console has an API key to ask with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    pub user_id: String,
    pub partition: u32,
    pub server_id: Option<String>,
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<UserPresence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_error: Option<String>,
}
