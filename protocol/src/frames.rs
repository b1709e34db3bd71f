//! WebSocket frames (docs/protocol.md, "WebSocket"): one JSON object per text frame, tagged by
//! `type`. Decoding is two-step — envelope first, then the concrete frame — so
//! every failure maps to the right stable error code, unknown fields are
//! ignored, and a request's `id` is echoed even when the rest is invalid.

use crate::channel::ChannelName;
use crate::cursor::Cursor;
use crate::ids::{ClientMsgId, ConversationId, DeviceId, MsgId, ServerId, UserId};
use crate::record::Kind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Stable snake_case error codes (docs/protocol.md, "WebSocket" and "HTTP").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    InvalidField,
    NotMember,
    TooLarge,
    RateLimited,
    Unavailable,
    /// The user has `SWITCHBOARD_MAX_DEVICES_PER_USER` devices on the server.
    TooManyDevices,
    /// The token's claims do not allow this (a channel not in `channels`,
    /// a publication not in `publish`).
    Forbidden,
    /// The device has `SWITCHBOARD_MAX_CHANNELS_PER_DEVICE` subscriptions.
    TooManyChannels,
    /// HTTP only: no or a bad bearer token.
    Unauthorized,
    /// HTTP only: no such endpoint or resource.
    NotFound,
    /// HTTP only: the resource exists already.
    Conflict,
    /// HTTP only: a server bug; the message says what failed.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::NotMember => "not_member",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooManyDevices => "too_many_devices",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
        }
    }
}

/// WebSocket close codes (docs/protocol.md, "WebSocket").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Unauthorized = 4001,
    NoHello = 4002,
    ProtocolViolation = 4003,
    TooSlow = 4004,
    PartitionMoved = 4005,
    Draining = 4006,
    RateLimited = 4008,
    TooManyDevices = 4009,
    TooLarge = 1009,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        self as u16
    }
    pub fn from_code(code: u16) -> Option<Self> {
        use CloseCode::*;
        [
            Unauthorized,
            NoHello,
            ProtocolViolation,
            TooSlow,
            PartitionMoved,
            Draining,
            RateLimited,
            TooManyDevices,
            TooLarge,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
}

/// Where a `send` goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    User(UserId),
    Conversation(ConversationId),
    /// A channel; the token's `publish` claim must allow it.
    Channel(ChannelName),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// The epoch of the map (route or redirect) that sent the client here:
    /// a server whose own map is older waits for it instead of refusing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// The `send` frame; also the body of `POST /v1/messages` (where `type` may be absent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Send {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub client_msg_id: ClientMsgId,
    pub to: Target,
    pub body: Box<RawValue>,
    #[serde(default)]
    pub kind: Kind,
    /// **(addition)** To one subscriber of the channel (`to.channel` only).
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub anycast: bool,
    /// With `anycast`: keeps the same subscriber while it stays subscribed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

pub use crate::channel::Handled;

/// `auth`: a fresh token for the open session, sent before the current one
/// expires; its subject must be the session's user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Auth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub token: String,
}

/// `subscribe`: live publications of `channel` from now on, and with a
/// `cursor` (from an earlier `message` or `subscribed` of this channel)
/// the ones missed since, while the log still holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscribe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub channel: ChannelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
}

/// `ping`: answered `pong` with the same `id`. For clients that cannot see
/// WebSocket pings (browsers): hearing nothing for two `ping_ms` of the
/// `welcome` means the connection is dead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

/// `unsubscribe`: no more publications of `channel` on this connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unsubscribe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub channel: ChannelName,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello(Hello),
    Send(Send),
    Auth(Auth),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Ping(Ping),
    Presence(crate::presence::PresenceRequest),
    Unwatch(crate::presence::Unwatch),
    ChannelPresence(crate::presence::ChannelPresenceRequest),
    Handled(Handled),
}

/// Why a client frame was refused; `id` is the request's, when it had one.
/// The session answers it as an `error` frame, HTTP as `{"code","message"}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} ({})", code.as_str())]
pub struct FrameError {
    pub id: Option<Value>,
    pub code: ErrorCode,
    pub message: String,
}

impl FrameError {
    /// A refusal of the request `id` (`None`: not a request's answer).
    pub fn new(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    ty: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
}

fn envelope(text: &str) -> Result<(String, Option<Value>), FrameError> {
    // serde would happily read a struct from a JSON array: only objects are frames.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError {
            id: None,
            code: ErrorCode::BadJson,
            message: "frame is not a json object".into(),
        });
    }
    let env: Envelope = serde_json::from_str(text).map_err(|e| FrameError {
        id: None,
        code: ErrorCode::BadJson,
        message: format!("frame is not a json object: {e}"),
    })?;
    match env.ty {
        Some(Value::String(ty)) => Ok((ty, env.id)),
        _ => Err(FrameError {
            id: env.id,
            code: ErrorCode::InvalidField,
            message: "frame needs a string \"type\"".into(),
        }),
    }
}

fn concrete<'a, T: Deserialize<'a>>(text: &'a str, id: &Option<Value>) -> Result<T, FrameError> {
    serde_json::from_str(text).map_err(|e| FrameError {
        id: id.clone(),
        code: ErrorCode::InvalidField,
        message: e.to_string(),
    })
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let (ty, id) = envelope(text)?;
        match ty.as_str() {
            "hello" => Ok(ClientFrame::Hello(concrete(text, &id)?)),
            "send" => {
                let send: Send = concrete(text, &id)?;
                send.check_body()?;
                Ok(ClientFrame::Send(send))
            }
            "auth" => Ok(ClientFrame::Auth(concrete(text, &id)?)),
            "subscribe" => Ok(ClientFrame::Subscribe(concrete(text, &id)?)),
            "unsubscribe" => Ok(ClientFrame::Unsubscribe(concrete(text, &id)?)),
            "ping" => Ok(ClientFrame::Ping(concrete(text, &id)?)),
            "presence" => Ok(ClientFrame::Presence(concrete(text, &id)?)),
            "unwatch" => Ok(ClientFrame::Unwatch(concrete(text, &id)?)),
            "channel_presence" => Ok(ClientFrame::ChannelPresence(concrete(text, &id)?)),
            "handled" => Ok(ClientFrame::Handled(concrete(text, &id)?)),
            other => Err(FrameError {
                id,
                code: ErrorCode::UnknownType,
                message: format!("unknown frame type {other:?}"),
            }),
        }
    }

    /// The frame's JSON text; never empty.
    pub fn to_json(&self) -> Result<String, EncodeError> {
        let frame = match self {
            ClientFrame::Hello(_) => "hello",
            ClientFrame::Send(_) => "send",
            ClientFrame::Auth(_) => "auth",
            ClientFrame::Subscribe(_) => "subscribe",
            ClientFrame::Unsubscribe(_) => "unsubscribe",
            ClientFrame::Ping(_) => "ping",
            ClientFrame::Presence(_) => "presence",
            ClientFrame::Unwatch(_) => "unwatch",
            ClientFrame::ChannelPresence(_) => "channel_presence",
            ClientFrame::Handled(_) => "handled",
        };
        serde_json::to_string(self).map_err(|source| EncodeError { frame, source })
    }
}

impl Send {
    pub fn check_body(&self) -> Result<(), FrameError> {
        if self.body.get().len() > crate::MAX_BODY_BYTES {
            return Err(FrameError {
                id: self.id.clone(),
                code: ErrorCode::TooLarge,
                message: format!("body exceeds {} bytes", crate::MAX_BODY_BYTES),
            });
        }
        let invalid = |message| FrameError {
            id: self.id.clone(),
            code: ErrorCode::InvalidField,
            message,
        };
        if self.anycast && !matches!(self.to, Target::Channel(_)) {
            return Err(invalid("anycast is only to a channel".into()));
        }
        crate::channel::check_anycast(self.anycast, self.key.as_deref()).map_err(invalid)?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub server_id: ServerId,
    pub partition: u32,
    pub epoch: u64,
    pub resumed: bool,
    pub cursor: Cursor,
    /// When the session's token expires (unix seconds): send `auth` with a
    /// fresh one before, or the session is closed with 4001 then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exp: Option<u64>,
    /// How often the server pings (WebSocket pings) and expects to hear from
    /// the client: a client that hears nothing for two of these may take the
    /// connection for dead; the server drops one silent for three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub msg_id: MsgId,
    pub conversation_id: ConversationId,
    pub from: UserId,
    pub from_device: DeviceId,
    pub kind: Kind,
    pub body: Box<RawValue>,
    pub sent_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    pub replay: bool,
    /// Set on a channel publication: `cursor` is then the channel's, and
    /// `conversation_id` repeats the channel name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelName>,
    /// **(addition)** An anycast publication: this subscriber was chosen;
    /// answer `handled` once the app has dealt with it.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub anycast: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Synced {
    pub cursor: Cursor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(default)]
    pub id: Option<Value>,
    pub client_msg_id: ClientMsgId,
    pub msg_id: MsgId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub code: ErrorCode,
    pub message: String,
}

/// The token from `auth` is in force until `exp` (unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Authed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    pub server_id: ServerId,
    pub ws_url: String,
    pub epoch: u64,
}

/// The answer to `subscribe`, after the recovered publications (if any).
/// `cursor` is where a later re-subscribe resumes if no publication comes
/// first; `recovered` says whether every publication after the requested
/// cursor was delivered (false without a cursor, for a cursor of another log
/// incarnation, or when the log no longer holds what followed it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    #[serde(default)]
    pub id: Option<Value>,
    pub channel: ChannelName,
    pub cursor: Cursor,
    pub recovered: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribed {
    #[serde(default)]
    pub id: Option<Value>,
    pub channel: ChannelName,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome(Welcome),
    Message(Message),
    Synced(Synced),
    Ack(Ack),
    Error(ErrorFrame),
    Redirect(Redirect),
    Authed(Authed),
    Subscribed(Subscribed),
    Unsubscribed(Unsubscribed),
    Pong(Ping),
    PresenceState(crate::presence::PresenceState),
    /// A watched user came online or went offline.
    Presence(crate::presence::UserPresence),
    ChannelPresence(crate::presence::ChannelPresence),
    Join(crate::presence::Membership),
    Leave(crate::presence::Membership),
}

impl From<FrameError> for ServerFrame {
    fn from(e: FrameError) -> Self {
        ServerFrame::Error(ErrorFrame {
            id: e.id,
            code: e.code,
            message: e.message,
        })
    }
}

/// A frame that could not be written as JSON (a body that is not JSON).
#[derive(Debug, thiserror::Error)]
#[error("failed to encode a {frame} frame: {source}")]
pub struct EncodeError {
    pub frame: &'static str,
    #[source]
    pub source: serde_json::Error,
}

impl ServerFrame {
    /// The frame's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome(_) => "welcome",
            ServerFrame::Message(_) => "message",
            ServerFrame::Synced(_) => "synced",
            ServerFrame::Ack(_) => "ack",
            ServerFrame::Error(_) => "error",
            ServerFrame::Redirect(_) => "redirect",
            ServerFrame::Authed(_) => "authed",
            ServerFrame::Subscribed(_) => "subscribed",
            ServerFrame::Unsubscribed(_) => "unsubscribed",
            ServerFrame::Pong(_) => "pong",
            ServerFrame::PresenceState(_) => "presence_state",
            ServerFrame::Presence(_) => "presence",
            ServerFrame::ChannelPresence(_) => "channel_presence",
            ServerFrame::Join(_) => "join",
            ServerFrame::Leave(_) => "leave",
        }
    }

    /// The frame's JSON text; never empty.
    pub fn to_json(&self) -> Result<String, EncodeError> {
        serde_json::to_string(self).map_err(|source| EncodeError {
            frame: self.kind(),
            source,
        })
    }

    /// Client-side decode. Unknown frame types are an error the caller may
    /// choose to ignore, so that new server frames don't break old clients.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let (ty, id) = envelope(text)?;
        Ok(match ty.as_str() {
            "welcome" => ServerFrame::Welcome(concrete(text, &id)?),
            "message" => ServerFrame::Message(concrete(text, &id)?),
            "synced" => ServerFrame::Synced(concrete(text, &id)?),
            "ack" => ServerFrame::Ack(concrete(text, &id)?),
            "error" => ServerFrame::Error(concrete(text, &id)?),
            "redirect" => ServerFrame::Redirect(concrete(text, &id)?),
            "authed" => ServerFrame::Authed(concrete(text, &id)?),
            "subscribed" => ServerFrame::Subscribed(concrete(text, &id)?),
            "unsubscribed" => ServerFrame::Unsubscribed(concrete(text, &id)?),
            "pong" => ServerFrame::Pong(concrete(text, &id)?),
            "presence_state" => ServerFrame::PresenceState(concrete(text, &id)?),
            "presence" => ServerFrame::Presence(concrete(text, &id)?),
            "channel_presence" => ServerFrame::ChannelPresence(concrete(text, &id)?),
            "join" => ServerFrame::Join(concrete(text, &id)?),
            "leave" => ServerFrame::Leave(concrete(text, &id)?),
            other => {
                return Err(FrameError {
                    id,
                    code: ErrorCode::UnknownType,
                    message: format!("unknown frame type {other:?}"),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests;
