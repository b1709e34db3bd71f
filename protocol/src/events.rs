//! Connection events (docs/protocol.md, "Connection events"): one record per
//! `connected`, `disconnected`, `subscribed` and `unsubscribed`, written to
//! `<topic>.events` keyed by user, in the user's partition, for backends to
//! consume with any Kafka client. Every `connected` is followed by exactly
//! one `disconnected` of the same `session`: written by the server that held
//! the session, or — when that server died or lost its registration — by
//! the server that owns the user's partition afterwards (`server_lost`).

use crate::ids::{DeviceId, ServerId, UserId};
use crate::record::RecordError;
use crate::ChannelName;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const EVENT_VERSION: u32 = 1;

/// The events topic that goes with the users' topic.
pub fn events_topic(topic: &str) -> String {
    format!("{topic}.events")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Connected,
    Disconnected,
    Subscribed,
    Unsubscribed,
}

/// Why a session ended, as a `disconnected` event says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The client closed the connection, or the connection failed.
    ClientClose,
    /// The server drained (shutdown or deploy); the client was redirected.
    Drain,
    /// The user's partition moved to another server.
    Moved,
    /// The server holding the session died or lost its registration;
    /// written by the server that owns the user's partition afterwards.
    ServerLost,
    TokenExpired,
    /// The connection could not keep up (its queue overflowed).
    TooSlow,
    /// Rate limit, protocol violation, frame too large.
    Refused,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 7] = [
        Self::ClientClose,
        Self::Drain,
        Self::Moved,
        Self::ServerLost,
        Self::TokenExpired,
        Self::TooSlow,
        Self::Refused,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClose => "client_close",
            Self::Drain => "drain",
            Self::Moved => "moved",
            Self::ServerLost => "server_lost",
            Self::TokenExpired => "token_expired",
            Self::TooSlow => "too_slow",
            Self::Refused => "refused",
        }
    }
}

/// One connection event. Unknown fields are ignored on decode (newer
/// writers may add some); an incompatible change bumps `v`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEvent {
    pub v: u32,
    pub event: EventKind,
    pub user: UserId,
    pub device: DeviceId,
    /// One per WebSocket session; `connected` and `disconnected` share it.
    pub session: Uuid,
    /// The server that held the session.
    pub server: ServerId,
    /// That server's registration (a new one after each lease it takes):
    /// a session belongs to the registration it connected under.
    pub incarnation: Uuid,
    /// When it happened on the writer's clock (unix ms).
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DisconnectReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelName>,
}

impl ConnectionEvent {
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, ids and integers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } = serde_json::from_slice(bytes)?;
        if v > EVENT_VERSION {
            return Err(RecordError::Version(v));
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConnectionEvent {
        ConnectionEvent {
            v: EVENT_VERSION,
            event: EventKind::Disconnected,
            user: UserId::new("bob").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            session: Uuid::from_u128(7),
            server: ServerId::new("ms-1").unwrap(),
            incarnation: Uuid::from_u128(9),
            at_ms: 1_700_000_000_000,
            reason: Some(DisconnectReason::ServerLost),
            channel: None,
        }
    }

    #[test]
    fn the_documented_shape() {
        let json: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        assert_eq!(json["event"], "disconnected");
        assert_eq!(json["reason"], "server_lost");
        assert_eq!(json["session"], "00000000-0000-0000-0000-000000000007");
        assert!(json.get("channel").is_none(), "{json}");
        assert_eq!(
            ConnectionEvent::decode(&sample().encode()).unwrap(),
            sample()
        );
    }

    #[test]
    fn reason_names_are_the_wire_names() {
        for r in DisconnectReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn newer_versions_are_refused_and_unknown_fields_ignored() {
        let mut json: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        json["extra"] = 1.into();
        let bytes = serde_json::to_vec(&json).unwrap();
        assert_eq!(ConnectionEvent::decode(&bytes).unwrap(), sample());
        json["v"] = 2.into();
        let bytes = serde_json::to_vec(&json).unwrap();
        assert!(matches!(
            ConnectionEvent::decode(&bytes),
            Err(RecordError::Version(2))
        ));
    }
}
