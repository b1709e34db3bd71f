//! One task per WebSocket connection: handshake (hello and token), the
//! routing check, an optional replay from the client's cursor, then the live
//! loop. Each step is its own module; this one ties them together.

mod channels;
mod handshake;
mod live;
mod presence;

pub use presence::with_last_seen;
mod rate;
mod replay;
pub(crate) use replay::{ReplaySource, StateSource};

use crate::auth::Verified;
use crate::delivery::Overflow;
use crate::ending::Ending;
use crate::frame::{encode, Text};
use crate::hub::Refused;
use crate::metrics::StartStep;
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::frames::ErrorFrame;
use protocol::{
    partition_for, CloseCode, Cursor, DeviceId, DisconnectReason, ErrorCode, ServerFrame,
};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info_span, warn, Instrument};

type Sink = SplitSink<WebSocket, WsMessage>;
type Stream = SplitStream<WebSocket>;

/// Longest a resume waits for the live consumer to reach the log's end.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// How a connection ends on the wire: a close code and reason, after a
/// frame (a redirect) when there is one. Everything that ends a session
/// becomes one here, at the edge.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: CloseCode,
    pub frame: Option<Text>,
    pub reason: &'static str,
}

impl Close {
    pub fn new(code: CloseCode, reason: &'static str) -> Self {
        Self {
            code,
            frame: None,
            reason,
        }
    }
}

impl Close {
    /// How a `disconnected` connection event names this ending. (A session
    /// ended by its own side says it in the reason; see `live`.)
    pub fn disconnect_reason(&self) -> DisconnectReason {
        match self.code {
            CloseCode::TooSlow => DisconnectReason::TooSlow,
            CloseCode::PartitionMoved => DisconnectReason::Moved,
            CloseCode::Unauthorized => DisconnectReason::TokenExpired,
            CloseCode::RateLimited
            | CloseCode::ProtocolViolation
            | CloseCode::TooLarge
            | CloseCode::NoHello
            | CloseCode::TooManyDevices => DisconnectReason::Refused,
            CloseCode::Draining => match self.reason {
                CLIENT_CLOSED | GONE | CONNECTION_FAILED | NO_PINGS => {
                    DisconnectReason::ClientClose
                }
                WOKE => DisconnectReason::ServerLost,
                _ => DisconnectReason::Drain,
            },
        }
    }
}

/// Reasons of a session that ended on the client's side (or the network's).
pub(crate) const CLIENT_CLOSED: &str = "client closed";
pub(crate) const GONE: &str = "gone";
pub(crate) const CONNECTION_FAILED: &str = "connection failed";
pub(crate) const NO_PINGS: &str = "peer stopped answering pings";
/// The process was frozen longer than half a lease (`freeze`).
pub(crate) const WOKE: &str = "server woke from a freeze";

impl From<Ending> for Close {
    fn from(e: Ending) -> Self {
        let (code, reason, redirect) = match e {
            Ending::TooSlow(Overflow::Queue) => (CloseCode::TooSlow, "queue overflow", None),
            Ending::TooSlow(Overflow::Replay) => {
                (CloseCode::TooSlow, "replay buffer overflow", None)
            }
            Ending::Moved(r) => (CloseCode::PartitionMoved, "partition moved", r),
            Ending::Leaving { why, redirect } => (CloseCode::Draining, why, redirect),
        };
        Self {
            frame: redirect.and_then(|r| encode(&ServerFrame::Redirect(r)).ok()),
            ..Self::new(code, reason)
        }
    }
}

/// The socket failed or the peer left: nothing more can be said to it.
#[derive(Debug)]
struct Gone;

pub async fn run(socket: WebSocket, state: Arc<AppState>) {
    let (mut sink, mut stream) = socket.split();
    // The handshake and the resume run once per session: boxed, so their
    // futures are freed before the session idles (see `live`).
    let hello = match Box::pin(handshake::accept(&mut stream, &state)).await {
        Ok(hello) => hello,
        Err(close) => return finish((&mut sink, &mut stream), &state, close).await,
    };
    let span = info_span!("session", user = %hello.who.user, device = %hello.device);
    Session {
        state,
        who: hello.who,
        device: hello.device,
        sink,
        stream,
        subs: channels::Subscriptions::default(),
        events: None,
        started: hello.at,
        early: Vec::new(),
    }
    .serve(hello.cursor, hello.epoch)
    .instrument(span)
    .await;
}

/// Longest the server waits for the client's answer to its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Sends the close's frame (e.g. a redirect), then the close itself, then
/// reads (and drops) what the client still sends until its own close frame
/// (RFC 6455 §7.1.1: the server closes TCP after the client's close). A
/// socket closed with unread data in it is reset, and a reset can discard
/// the close frame before the client reads it — a client that pipelined
/// sends would see "connection reset" instead of, say, 4008.
async fn finish((sink, stream): (&mut Sink, &mut Stream), state: &AppState, c: Close) {
    state.metrics.close(c.code.code(), c.reason);
    if let Some(f) = c.frame {
        let _ = sink.send(WsMessage::Text(f.into_ws())).await;
    }
    let frame = CloseFrame {
        code: c.code.code(),
        reason: Utf8Bytes::from_static(c.reason),
    };
    let _ = sink.send(WsMessage::Close(Some(frame))).await;
    // After a frame above the limit the rest of the stream cannot be parsed:
    // hold the socket for the rest of the wait instead of resetting it at
    // once (its unread data would make the close a reset), so the client
    // reads our close first.
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if c.code == CloseCode::TooLarge || !drain(stream).await {
            std::future::pending::<()>().await;
        }
    })
    .await;
    let _ = sink.close().await;
}

/// Reads and drops frames until the client's close or disconnect (true), or
/// until a frame that cannot be read (false).
async fn drain(stream: &mut Stream) -> bool {
    loop {
        match stream.next().await {
            Some(Ok(WsMessage::Close(_))) | None => return true,
            Some(Ok(_)) => {}
            Some(Err(e)) => return !unreadable(&e),
        }
    }
}

/// How a failed read ends a session: 1009 for a frame above the limit,
/// otherwise the peer is gone and the code is for the metrics alone.
fn read_failed(e: &axum::Error) -> Close {
    if unreadable(e) {
        Close::new(CloseCode::TooLarge, "frame too large")
    } else {
        Close::new(CloseCode::Draining, CONNECTION_FAILED)
    }
}

/// A frame above the size limit: the peer is still connected, but nothing
/// after it can be parsed. (Other errors mean the peer is gone.)
fn unreadable(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

struct Session {
    state: Arc<AppState>,
    /// The token in force: user, expiry (unix seconds; `auth` moves it) and
    /// channel grants.
    who: Verified,
    device: DeviceId,
    sink: Sink,
    stream: Stream,
    /// This connection's channel subscriptions.
    subs: channels::Subscriptions,
    /// Its connection events, from `connected` on.
    events: Option<crate::events::SessionEvents>,
    /// When its hello was read.
    started: std::time::Instant,
    /// Client frames read while its replay was read (`replay::keepalive`).
    early: replay::Early,
}

impl Session {
    async fn serve(mut self, cursor: Option<Cursor>, routed_at: Option<u64>) {
        let Some(a) = self.state.assignment() else {
            let close = Close::new(CloseCode::Draining, "no partition map yet");
            return finish((&mut self.sink, &mut self.stream), &self.state, close).await;
        };
        let partition = partition_for(self.who.user.as_str(), a.partitions);
        if !self.wait_open(partition, routed_at).await {
            let close = crate::membership::close_for(&self.state, Some(&a), partition).into();
            return finish((&mut self.sink, &mut self.stream), &self.state, close).await;
        }
        self.step(StartStep::Open);
        let log_epoch = self.state.log_epoch();
        let replay_from = cursor
            .filter(|c| c.log_epoch == log_epoch)
            .map(|c| c.offset);
        let log_start = match replay_from {
            Some(_) => match Box::pin(self.catch_up(partition)).await {
                Ok(low) => {
                    self.step(StartStep::CaughtUp);
                    Some(low)
                }
                Err(e) => {
                    let close = self.retry_later(format!("resume unavailable: {e}")).await;
                    return finish((&mut self.sink, &mut self.stream), &self.state, close).await;
                }
            },
            None => None,
        };
        let registered = self.state.hub.register(
            &self.who.user,
            &self.device,
            partition,
            replay_from.is_some(),
        );
        let (mut handle, live_from) = match registered {
            Ok(r) => r,
            Err(Refused::NotServed(_)) => {
                let close = Close::new(CloseCode::PartitionMoved, "partition moved");
                return finish((&mut self.sink, &mut self.stream), &self.state, close).await;
            }
            Err(e @ Refused::TooManyDevices(_)) => {
                let err = ServerFrame::Error(ErrorFrame {
                    id: None,
                    code: ErrorCode::TooManyDevices,
                    message: e.to_string(),
                });
                let _ = self.send_frame(&err).await;
                let close = Close::new(CloseCode::TooManyDevices, "too many devices");
                return finish((&mut self.sink, &mut self.stream), &self.state, close).await;
            }
        };
        let id = handle.id;
        self.events = self
            .state
            .events
            .connect(&self.who.user, &self.device, partition);
        self.subs
            .attach(id, self.state.hub.queue(&self.who.user, id));
        self.state.metrics.connections.inc();
        let start = replay::Start {
            partition,
            epoch: a.epoch,
            log_epoch,
            replay_from,
            log_start,
            live_from,
        };
        let close = match Box::pin(self.resume(&start, &mut handle)).await {
            Ok(()) => self.live(handle).await,
            Err(close) => close,
        };
        self.drop_subscriptions();
        self.drop_watches();
        if let Some(events) = self.events.take() {
            events.disconnected(close.disconnect_reason());
        }
        self.state.hub.unregister(&self.who.user, id);
        self.state.metrics.connections.dec();
        finish((&mut self.sink, &mut self.stream), &self.state, close).await;
    }

    /// The seam of a resume is the log's end as of the hello: waits (briefly)
    /// until the live consumer has passed it, so every message acknowledged
    /// before the hello is replayed before `synced`. Returns the log start.
    async fn catch_up(&self, partition: u32) -> Result<i64, rdkafka::error::KafkaError> {
        let (low, high) = self.state.log.watermarks(partition).await?;
        self.state.hub.passes(partition, high, CATCH_UP_WAIT).await;
        Ok(low)
    }

    /// A partition we own may still be opening (watermarks being read).
    /// Waits (up to 5 s) until `partition` is open here. A client sent by a
    /// map newer than ours (`routed_at`) waits for that map rather than be
    /// redirected to the owner our older map names: after a failover that is
    /// the dead server.
    async fn wait_open(&self, partition: u32, routed_at: Option<u64>) -> bool {
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            let (changes, opened) = (self.state.changes(), self.state.hub.changed());
            if self.state.hub.is_open(partition) && self.state.is_ready() {
                return true;
            }
            let a = self.state.assignment();
            let mine = a
                .as_ref()
                .is_some_and(|a| a.is_owner(partition, &self.state.info.server_id));
            let behind = routed_at.is_some_and(|e| a.as_ref().is_none_or(|a| a.epoch < e));
            if !mine && !behind {
                return false;
            }
            tokio::select! {
                _ = changes.any() => {}
                _ = opened => {}
                _ = &mut deadline => return false,
            }
        }
    }

    fn step(&self, step: StartStep) {
        self.state.metrics.session_step(step, self.started);
    }

    async fn send_text(&mut self, text: Text) -> Result<(), Gone> {
        self.sink
            .send(WsMessage::Text(text.into_ws()))
            .await
            .map_err(|_| Gone)
    }

    async fn send_frame(&mut self, f: &ServerFrame) -> Result<(), Gone> {
        match encode(f) {
            Ok(text) => self.send_text(text).await,
            Err(e) => {
                // Never an empty frame: the client would read it as garbage.
                warn!(error = %e, "frame not sent");
                Ok(())
            }
        }
    }
}

fn gone(_: Gone) -> Close {
    Close::new(CloseCode::Draining, GONE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::frames::Redirect;
    use protocol::ServerId;

    #[test]
    fn endings_become_their_close_codes_with_the_redirect_first() {
        let to = Redirect {
            server_id: ServerId::new("ms-2").unwrap(),
            ws_url: "ws://h:2/v1/ws".into(),
            epoch: 9,
        };
        let moved = Close::from(Ending::Moved(Some(to.clone())));
        assert_eq!(moved.code, CloseCode::PartitionMoved);
        let frame = moved.frame.expect("a redirect frame");
        assert!(frame.as_str().contains(r#""type":"redirect""#), "{frame}");
        assert!(frame.as_str().contains("ms-2"), "{frame}");
        let leaving = Close::from(Ending::Leaving {
            why: "server draining",
            redirect: Some(to),
        });
        assert_eq!(
            (leaving.code, leaving.reason),
            (CloseCode::Draining, "server draining")
        );
        assert!(leaving.frame.is_some());
        for (overflow, reason) in [
            (Overflow::Queue, "queue overflow"),
            (Overflow::Replay, "replay buffer overflow"),
        ] {
            let slow = Close::from(Ending::TooSlow(overflow));
            assert_eq!(
                (slow.code, slow.reason, slow.frame.is_none()),
                (CloseCode::TooSlow, reason, true)
            );
        }
        assert_eq!(Close::from(Ending::leaving("x")).code, CloseCode::Draining);
    }
}
