//! The Switchboard contract (`DESIGN.md` §2–§4, §7) as types and pure functions.
//!
//! Nothing here does I/O: every service and client links this crate so that
//! the partitioner, the ids and the wire formats cannot drift apart.

pub mod assignment;
pub mod cursor;
pub mod frames;
pub mod ids;
pub mod layout;
pub mod partition;
pub mod record;

pub use assignment::{Assignment, ServerInfo};
pub use cursor::Cursor;
pub use frames::{ClientFrame, CloseCode, ErrorCode, FrameError, ServerFrame, Target};
pub use ids::{ClientMsgId, ConversationId, DeviceId, IdError, MsgId, UserId};
pub use layout::EtcdLayout;
pub use partition::{murmur2, partition_for};
pub use record::{Kind, Record};

/// Largest message body a client may send (DESIGN.md §4).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[cfg(feature = "runtime")]
pub mod runtime;
