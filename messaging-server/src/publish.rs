//! The publish API for backends (`POST /v1/publish`, `/v1/publish/batch`):
//! an API key instead of a user token, a `system:<name>` sender, and the
//! same path to Kafka as a user's send (acked after Kafka has it, msg_id
//! UUID-v5 of sender and idempotency key).

use crate::send::{build, build_channel, Directory, Outgoing, Prepared};
use crate::state::AppState;
use protocol::{
    ConversationId, DeviceId, ErrorBody, ErrorCode, FrameError, MsgId, Publish, PublishResult,
    PublishTarget,
};

/// The device every publication is attributed to.
const DEVICE: &str = "api";

fn refuse(code: ErrorCode, message: impl Into<String>) -> FrameError {
    FrameError::new(None, code, message)
}

/// Checks a publication and resolves who receives it. Publications to users
/// carry their sender as the conversation id; to a conversation, its id.
async fn recipients(
    dir: &impl Directory,
    p: &Publish,
) -> Result<(ConversationId, Vec<protocol::UserId>), FrameError> {
    if !p.from_is_system() {
        return Err(refuse(
            ErrorCode::InvalidField,
            "from must be system:<name>",
        ));
    }
    if p.body.get().len() > protocol::MAX_BODY_BYTES {
        let limit = protocol::MAX_BODY_BYTES;
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("body exceeds {limit} bytes"),
        ));
    }
    match &p.to {
        PublishTarget::Users(users) => {
            if users.is_empty() || users.len() > protocol::api::MAX_PUBLISH_USERS {
                let max = protocol::api::MAX_PUBLISH_USERS;
                return Err(refuse(
                    ErrorCode::InvalidField,
                    format!("to.users must name 1 to {max} users"),
                ));
            }
            let id = ConversationId::new(p.from.as_str())
                .map_err(|e| refuse(ErrorCode::InvalidField, e.to_string()))?;
            Ok((id, users.clone()))
        }
        PublishTarget::Conversation(c) => {
            let members = dir
                .members(c)
                .await
                .map_err(|e| refuse(ErrorCode::Unavailable, e.to_string()))?
                .ok_or_else(|| refuse(ErrorCode::NotMember, format!("no conversation {c}")))?;
            Ok((c.clone(), members.to_vec()))
        }
        PublishTarget::Channel(c) => Ok((c.into(), Vec::new())),
    }
}

/// Starts a publication: its records are handed to the producer now; the
/// returned future resolves with the msg_id once Kafka has every record.
async fn start(
    state: &AppState,
    p: Publish,
) -> Result<impl std::future::Future<Output = Result<MsgId, FrameError>> + use<>, FrameError> {
    Ok(prepare(state, p).await?.enqueue(state))
}

/// Checks a publication and builds its records.
pub async fn prepare(dir: &impl Directory, p: Publish) -> Result<Prepared, FrameError> {
    let (conversation_id, to) = recipients(dir, &p).await?;
    let device = DeviceId::new(DEVICE).map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
    if p.anycast && !matches!(p.to, PublishTarget::Channel(_)) {
        return Err(refuse(
            ErrorCode::InvalidField,
            "anycast is only to a channel",
        ));
    }
    protocol::channel::check_anycast(p.anycast, p.key.as_deref())
        .map_err(|m: String| refuse(ErrorCode::InvalidField, m))?;
    let message = Outgoing {
        id: None,
        msg_id: MsgId::derive(&p.from, &p.idempotency_key),
        conversation_id,
        sender: &p.from,
        device: &device,
        kind: p.kind,
        body: p.body,
        anycast: p.anycast,
        key: p.key,
    };
    match &p.to {
        PublishTarget::Channel(channel) => build_channel(dir, message, channel),
        _ => build(dir, message, &to),
    }
}

pub async fn one(state: &AppState, p: Publish) -> Result<MsgId, FrameError> {
    start(state, p).await?.await
}

/// Every item is handed to the producer in order, then all acks are awaited
/// together; each item answers for itself.
pub async fn batch(state: &AppState, items: Vec<Publish>) -> Vec<PublishResult> {
    let mut waits = Vec::with_capacity(items.len());
    for p in items {
        waits.push(start(state, p).await);
    }
    let acked = futures_util::future::join_all(waits.into_iter().map(|w| async move {
        match w {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        }
    }))
    .await;
    acked
        .into_iter()
        .map(|r| match r {
            Ok(msg_id) => PublishResult::Accepted { msg_id },
            Err(e) => PublishResult::Refused {
                error: ErrorBody {
                    code: e.code,
                    message: e.message,
                },
            },
        })
        .collect()
}

#[cfg(test)]
mod tests;
