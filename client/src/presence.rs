//! Presence in the client: one-off questions (`presence`) answered by the
//! server's `presence_state`, and watches kept across reconnects — asked
//! again on every new session, whose answer reaches the app as
//! `Event::Presence` for each user (what changed while disconnected), like
//! every `presence` frame after it.

use crate::connection::SendError;
use crate::runner::Runner;
use futures_util::SinkExt;
use protocol::frames::ErrorFrame;
use protocol::presence::{
    ChannelPresence, ChannelPresenceRequest, PresenceRequest, PresenceState, Unwatch, UserPresence,
    MAX_PRESENCE_USERS,
};
use protocol::{ClientFrame, ErrorCode, UserId};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as Ws;

pub(crate) type PresenceReply = oneshot::Sender<Result<Vec<UserPresence>, SendError>>;
pub(crate) type ChannelReply = oneshot::Sender<Result<ChannelPresence, SendError>>;

/// A question waiting for its answer.
pub(crate) enum Ask {
    Users(PresenceReply),
    Channel(ChannelReply),
}

impl Ask {
    fn fail(self, e: SendError) {
        match self {
            Ask::Users(r) => {
                let _ = r.send(Err(e));
            }
            Ask::Channel(r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

/// The id of the watches asked again on a new session.
const REWATCH: &str = "presence:rewatch";

fn ask_id(n: u64) -> Value {
    Value::String(format!("presence:{n}"))
}

fn ask_of(id: &Value) -> Option<u64> {
    id.as_str()?.strip_prefix("presence:")?.parse().ok()
}

fn frame(id: Value, users: Vec<UserId>, watch: bool) -> Option<String> {
    let f = ClientFrame::Presence(PresenceRequest {
        id: Some(id),
        users,
        watch,
    });
    f.to_json().ok()
}

impl Runner {
    /// A question from the app (with `watch`, also kept for reconnects).
    pub(crate) async fn ask_presence(
        &mut self,
        ws: &mut crate::runner::Socket,
        users: Vec<UserId>,
        watch: bool,
        reply: PresenceReply,
    ) {
        if watch {
            self.watched.extend(users.iter().cloned());
        }
        self.next_ask += 1;
        let n = self.next_ask;
        let sent = match frame(ask_id(n), users, watch) {
            Some(text) => ws.send(Ws::text(text)).await.is_ok(),
            None => false,
        };
        if sent {
            self.asks.insert(n, Ask::Users(reply));
        } else {
            let _ = reply.send(Err(SendError::Stopped));
        }
    }

    /// A page of a presence channel's users.
    pub(crate) async fn ask_channel(
        &mut self,
        ws: &mut crate::runner::Socket,
        mut req: ChannelPresenceRequest,
        reply: ChannelReply,
    ) {
        self.next_ask += 1;
        let n = self.next_ask;
        req.id = Some(ask_id(n));
        let sent = match ClientFrame::ChannelPresence(req).to_json() {
            Ok(text) => ws.send(Ws::text(text)).await.is_ok(),
            Err(_) => false,
        };
        if sent {
            self.asks.insert(n, Ask::Channel(reply));
        } else {
            let _ = reply.send(Err(SendError::Stopped));
        }
    }

    pub(crate) fn channel_presence(&mut self, page: ChannelPresence) {
        let n = page.id.as_ref().and_then(ask_of);
        if let Some(Ask::Channel(r)) = n.and_then(|n| self.asks.remove(&n)) {
            let _ = r.send(Ok(page));
        }
    }

    pub(crate) async fn unwatch(&mut self, ws: &mut crate::runner::Socket, users: Vec<UserId>) {
        for u in &users {
            self.watched.remove(u);
        }
        if let Ok(text) = ClientFrame::Unwatch(Unwatch { id: None, users }).to_json() {
            let _ = ws.send(Ws::text(text)).await;
        }
    }

    /// A new session watches again everyone watched before.
    pub(crate) async fn rewatch_all(&mut self, ws: &mut crate::runner::Socket) {
        let users: Vec<UserId> = self.watched.iter().cloned().collect();
        for chunk in users.chunks(MAX_PRESENCE_USERS) {
            if let Some(text) = frame(Value::String(REWATCH.into()), chunk.to_vec(), true) {
                let _ = ws.send(Ws::text(text)).await;
            }
        }
    }

    /// A `presence_state`: the answer to the app's question, or (after a
    /// reconnect) the watched users' state as events.
    pub(crate) async fn presence_state(&mut self, s: PresenceState) {
        let reply =
            s.id.as_ref()
                .and_then(ask_of)
                .and_then(|n| self.asks.remove(&n));
        match reply {
            Some(Ask::Users(r)) => {
                let _ = r.send(Ok(s.users));
            }
            Some(other) => other.fail(SendError::Invalid("an answer of another kind".into())),
            None => {
                for p in s.users {
                    self.emit(crate::Event::Presence(p)).await;
                }
            }
        }
    }

    /// A refused question; `false` if the error was not about presence.
    pub(crate) fn presence_refused(&mut self, e: &ErrorFrame) -> bool {
        let Some(id) = e.id.as_ref() else {
            return false;
        };
        if id.as_str() == Some(REWATCH) {
            // Watches the server no longer allows (a contact left) end.
            if e.code == ErrorCode::Forbidden {
                self.watched.clear();
            }
            return true;
        }
        let Some(ask) = ask_of(id).and_then(|n| self.asks.remove(&n)) else {
            return false;
        };
        ask.fail(SendError::Refused {
            code: e.code,
            message: e.message.clone(),
        });
        true
    }

    /// Questions of a session that ended unanswered are refused
    /// `unavailable` (ask again); watches are kept and asked again.
    pub(crate) fn session_ended(&mut self) {
        for (_, ask) in std::mem::take(&mut self.asks) {
            ask.fail(SendError::Refused {
                code: ErrorCode::Unavailable,
                message: "the connection ended before the answer; ask again".into(),
            });
        }
    }
}
