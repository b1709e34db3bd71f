//! A Switchboard client that does what a good client must (docs/protocol.md):
//! resolve the server through the coordinator, `hello` with token and cursor,
//! keep the cursor of the last chat message, follow `redirect` and the
//! 4004/4005/4006 closes by re-resolving and resuming with backoff and
//! jitter, deduplicate by `msg_id`, and retry unacked sends with the same
//! `client_msg_id`.

mod channels;
mod connection;
mod dial;
pub mod http;
#[cfg(feature = "keygen")]
pub mod keygen;
mod presence;
mod route;
mod runner;
mod seen;
pub mod token;

pub use connection::{Attempt, Client, ClientConfig, Event, SendError, Sender, TokenRefresh};
pub use http::Api;
pub use protocol::frames::Subscribed;
pub use protocol::presence::UserPresence;
pub use protocol::{ChannelName, Cursor, Kind, MsgId, Target};

#[cfg(test)]
mod connection_task_tests;
