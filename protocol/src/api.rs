//! HTTP bodies of the contract (docs/protocol.md, "HTTP API") that more than
//! one crate reads or writes: the coordinator's route answer and the error
//! shape every endpoint uses.

use crate::frames::ErrorCode;
use crate::ids::{MsgId, ServerId, UserId};
use serde::{Deserialize, Serialize};

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
}
