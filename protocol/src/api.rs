//! Every HTTP body of the contract (docs/protocol.md, "HTTP API"): what the
//! servers answer and what the clients send and read back.

use crate::frames::ErrorCode;
use crate::ids::{ClientMsgId, ConversationId, DeviceId, MsgId, ServerId, UserId};
use crate::record::Kind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Sender ids of backends start with this; no user token may carry one.
pub const SYSTEM_PREFIX: &str = "system:";

/// The query of `GET /v1/route`. With `unreachable`, the client says it
/// could not reach (or lost) that server: the coordinator checks, and waits
/// up to `wait_ms` for a map whose owner of the user's partition is another
/// server (docs/protocol.md, "Failover").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteQuery {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<ServerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

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
    /// **(addition)** To one subscriber of the channel (docs/protocol.md, "Anycast").
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub anycast: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
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

/// `GET /healthz` (`"ok"`) and a ready `GET /readyz` (`"ready"`); a
/// service adds what it knows (a server its id and partitions, a
/// coordinator the map's epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<ServerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl Status {
    pub fn ok() -> Self {
        Self::of("ok")
    }

    pub fn ready() -> Self {
        Self::of("ready")
    }

    fn of(status: &str) -> Self {
        Self {
            status: status.to_owned(),
            server_id: None,
            partitions: None,
            epoch: None,
        }
    }
}

/// `GET /v1/channels/{channel}/stats` (API key): who watches a channel,
/// over every server (`?local=true`: this server's share only).
/// Every device of a user is on one server, so the servers' distinct users
/// add up exactly (while a partition moves, a user may count on both for a
/// moment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    /// Subscribed connections.
    pub subscribers: u64,
    /// Distinct users among them.
    pub users: u64,
}

impl std::ops::Add for ChannelStats {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            subscribers: self.subscribers + other.subscribers,
            users: self.users + other.users,
        }
    }
}

/// `POST /v1/conversations`: a group conversation (the caller is a member;
/// without an id the server makes one). Ids are checked by the server, so
/// a bad one is answered with its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConversation {
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
}

/// A conversation and its members (`POST /v1/conversations` answers one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub conversation_id: ConversationId,
    pub members: Vec<UserId>,
}

/// `GET /v1/conversations`: the caller's conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversations {
    pub conversations: Vec<Conversation>,
}

/// One stored chat message in a history page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub msg_id: MsgId,
    pub conversation_id: ConversationId,
    pub from: UserId,
    pub from_device: DeviceId,
    pub body: Box<RawValue>,
    pub sent_at_ms: i64,
}

/// `GET /v1/conversations/{id}/messages`: newest first; `next_before`
/// fetches the next (older) page, absent on the last one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<HistoryMessage>,
    pub next_before: Option<String>,
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

    #[test]
    fn status_conversation_and_history_bodies_as_documented() {
        assert_eq!(
            serde_json::to_string(&Status::ok()).unwrap(),
            r#"{"status":"ok"}"#
        );
        let ready = Status {
            epoch: Some(4),
            ..Status::ready()
        };
        assert_eq!(
            serde_json::to_string(&ready).unwrap(),
            r#"{"status":"ready","epoch":4}"#
        );
        let create: CreateConversation = serde_json::from_str(r#"{"members":["b"]}"#).unwrap();
        assert_eq!(
            (create.conversation_id, create.members),
            (None, vec!["b".to_owned()])
        );
        let json = r#"{"conversations":[{"conversation_id":"room","members":["a","b"]}]}"#;
        let list: Conversations = serde_json::from_str(json).unwrap();
        assert_eq!(list.conversations[0].members.len(), 2);
        assert_eq!(serde_json::to_string(&list).unwrap(), json);
        let json = r#"{"messages":[{"msg_id":"00000000-0000-0000-0000-000000000000","conversation_id":"room","from":"a","from_device":"p","body":{"t":"hi"},"sent_at_ms":5}],"next_before":null}"#;
        let page: HistoryPage = serde_json::from_str(json).unwrap();
        assert_eq!(page.messages[0].body.get(), r#"{"t":"hi"}"#);
        assert_eq!(serde_json::to_string(&page).unwrap(), json);
    }
}
