//! HTTP bodies of the contract (docs/protocol.md, "HTTP API") that more than
//! one crate reads or writes: the coordinator's route answer and the error
//! shape every endpoint uses.

use crate::frames::ErrorCode;
use crate::ids::{ClientMsgId, ConversationId, MsgId, ServerId, UserId};
use crate::record::Kind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Sender ids of backends start with this; no user token may carry one.
pub const SYSTEM_PREFIX: &str = "system:";

/// `GET /v1/route?user_id=…`: where a user's devices connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub user_id: UserId,
    pub partition: u32,
    pub server_id: ServerId,
    pub ws_url: String,
    pub epoch: u64,
}

impl Route {
    /// The HTTP base URL of the routed server (`ws://h/v1/ws` → `http://h`).
    pub fn http_base(&self) -> String {
        let base = self.ws_url.trim_end_matches("/v1/ws");
        base.replacen("wss://", "https://", 1)
            .replacen("ws://", "http://", 1)
    }
}

/// Every non-2xx answer: `{"code","message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// `POST /v1/messages`: the id Kafka acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub msg_id: MsgId,
}

/// Who a publication goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishTarget {
    /// Every device of each user (at most [`MAX_PUBLISH_USERS`]).
    Users(Vec<UserId>),
    /// Every member of a group conversation.
    Conversation(ConversationId),
    /// Every device subscribed to a channel (one record however many).
    Channel(crate::ChannelName),
}

/// Most users one publication may name.
pub const MAX_PUBLISH_USERS: usize = 1000;
/// Most publications in one `POST /v1/publish/batch`.
pub const MAX_PUBLISH_BATCH: usize = 1000;

/// `POST /v1/publish` (API key): a backend's message. The msg_id is
/// UUID-v5 of `from` and `idempotency_key`, so a retry gets the same one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    pub to: PublishTarget,
    #[serde(default)]
    pub kind: Kind,
    pub body: Box<RawValue>,
    /// `system:<name>`.
    pub from: UserId,
    pub idempotency_key: ClientMsgId,
}

impl Publish {
    /// The sender is a system id (`system:<name>`, name not empty).
    pub fn from_is_system(&self) -> bool {
        self.from
            .as_str()
            .strip_prefix(SYSTEM_PREFIX)
            .is_some_and(|name| !name.is_empty())
    }
}

/// `POST /v1/publish/batch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishBatch {
    pub items: Vec<Publish>,
}

/// One item's answer in a batch: `{"msg_id"}` or `{"error": {"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PublishResult {
    Accepted { msg_id: MsgId },
    Refused { error: ErrorBody },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishBatchResults {
    pub results: Vec<PublishResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_round_trips_and_names_the_http_base() {
        let json = r#"{"user_id":"alice","partition":3,"server_id":"ms-1","ws_url":"wss://h:1/v1/ws","epoch":7}"#;
        let r: Route = serde_json::from_str(json).unwrap();
        assert_eq!(r.http_base(), "https://h:1");
        assert_eq!(serde_json::to_string(&r).unwrap(), json);
        let e: ErrorBody = serde_json::from_str(r#"{"code":"not_found","message":"x"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::NotFound);
    }

    #[test]
    fn publish_bodies() {
        let p: Publish = serde_json::from_str(
            r#"{"to":{"users":["a","b"]},"body":{"x":1},"from":"system:orders","idempotency_key":"o-1"}"#,
        )
        .unwrap();
        assert!(p.from_is_system());
        assert_eq!(p.kind, Kind::Chat);
        let c: Publish = serde_json::from_str(
            r#"{"to":{"conversation":"room"},"body":1,"from":"alice","idempotency_key":"k","kind":"ephemeral"}"#,
        )
        .unwrap();
        assert!(!c.from_is_system());
        let ok = PublishResult::Accepted {
            msg_id: MsgId(uuid::Uuid::nil()),
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"msg_id":"00000000-0000-0000-0000-000000000000"}"#
        );
    }
}
