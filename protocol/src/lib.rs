//! The Switchboard contract (docs/protocol.md) as types and pure functions.
//!
//! Nothing here does I/O: every service and client links this crate so that
//! the partitioner, the ids and the wire formats cannot drift apart.

pub mod api;
pub mod assignment;
pub mod channel;
pub mod console;
pub mod cursor;
pub mod events;
pub mod frames;
pub mod ids;
pub mod layout;
pub mod partition;
pub mod presence;
pub mod record;

pub use api::{Accepted, ErrorBody, Publish, PublishBatch, PublishResult, PublishTarget, Route};
pub use assignment::{Assignment, ServerInfo};
pub use channel::{channel_topic, ChannelName, ChannelRecord};
pub use cursor::Cursor;
pub use events::{events_topic, ConnectionEvent, DisconnectReason, EventKind};
pub use frames::{ClientFrame, CloseCode, EncodeError, ErrorCode, FrameError, ServerFrame, Target};
pub use ids::{ClientMsgId, ConversationId, DeviceId, IdError, MsgId, ServerId, UserId};
pub use layout::EtcdLayout;
pub use partition::{murmur2, partition_for};
pub use record::{Kind, Record};

/// For `skip_serializing_if`: a flag that is absent unless set.
pub fn is_false(b: &bool) -> bool {
    !*b
}

/// Largest message body a client may send (docs/protocol.md, "WebSocket").
pub const MAX_BODY_BYTES: usize = 64 * 1024;
