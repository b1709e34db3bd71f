//! The live loop: client frames in, queued deliveries and acks out, pings,
//! and the hub's close requests — one `select!` per connection.

use super::rate::RateLimit;
use super::Session;
use crate::hub::{Close, DeviceHandle};
use crate::metrics::Metrics;
use axum::extract::ws::Message as WsMessage;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use protocol::frames::{Ack, Send};
use protocol::{ClientFrame, ClientMsgId, CloseCode, ErrorCode, FrameError, MsgId, ServerFrame};
use std::time::Instant;

/// Bad frames in a row before the connection is closed with 4003.
const MAX_CONSECUTIVE_ERRORS: u32 = 10;
/// Rate-limited sends in a row before the connection is closed with 4008.
const MAX_RATE_LIMITED: u32 = 50;
/// Sends awaiting their Kafka ack per connection; reading pauses beyond it.
const MAX_INFLIGHT_SENDS: usize = 64;

fn ended(reason: &'static str) -> Close {
    Close::new(CloseCode::Draining, reason)
}

/// Refusals in a row, by kind; any accepted send resets both.
#[derive(Default)]
struct Strikes {
    errors: u32,
    limited: u32,
}

impl Strikes {
    fn count(&mut self, code: ErrorCode) -> Option<Close> {
        if code == ErrorCode::RateLimited {
            self.limited += 1;
        } else {
            self.errors += 1;
        }
        if self.limited > MAX_RATE_LIMITED {
            return Some(Close::new(CloseCode::RateLimited, "rate limited"));
        }
        (self.errors > MAX_CONSECUTIVE_ERRORS)
            .then(|| Close::new(CloseCode::ProtocolViolation, "too many bad frames"))
    }
}

impl Session {
    pub(super) async fn live(&mut self, mut handle: DeviceHandle) -> Close {
        let state = self.state.clone();
        let cfg = &state.config;
        let mut limit = RateLimit::new(cfg.sends_per_sec, cfg.send_burst);
        let mut ping = tokio::time::interval(cfg.ping_interval);
        ping.tick().await;
        let mut last_seen = Instant::now();
        let mut strikes = Strikes::default();
        let mut inflight = FuturesUnordered::new();
        let stop = state.stop.clone();
        loop {
            tokio::select! {
                c = &mut handle.close => return c.unwrap_or_else(|_| ended("server stopping")),
                f = handle.rx.recv() => match f {
                    Some(f) => if self.send_text(f).await.is_err() { return ended("gone") },
                    None => return ended("server stopping"),
                },
                Some(reply) = inflight.next(), if !inflight.is_empty() => {
                    if self.send_frame(&reply).await.is_err() { return ended("gone") }
                }
                m = self.stream.next(), if inflight.len() < MAX_INFLIGHT_SENDS => {
                    last_seen = Instant::now();
                    let text = match m {
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(WsMessage::Close(_))) | None => return ended("client closed"),
                        Some(Ok(_)) => continue,
                        Some(Err(_)) => return Close::new(CloseCode::TooLarge, "frame too large"),
                    };
                    // Frame errors count towards closing; a send refused
                    // after parsing (not a member, unavailable) does not.
                    let (refused, strike) = match accept(&text, &mut limit) {
                        Ok(send) => {
                            strikes = Strikes::default();
                            match self.start_send(send).await {
                                Ok(acked) => { inflight.push(acked); continue }
                                Err(e) => (e, false),
                            }
                        }
                        Err(e) => (e, true),
                    };
                    let code = refused.code;
                    state.metrics.send_error(code.as_str());
                    if self.send_frame(&ServerFrame::from(refused)).await.is_err() { return ended("gone") }
                    if let Some(close) = strike.then(|| strikes.count(code)).flatten() { return close }
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > cfg.ping_interval * 3 {
                        return ended("peer stopped answering pings");
                    }
                    if self.sink.send(WsMessage::Ping(Default::default())).await.is_err() { return ended("gone") }
                }
                _ = stop.cancelled() => return ended("server stopping"),
            }
        }
    }

    /// Resolves and hands the send to the producer now, so one connection's
    /// sends reach Kafka in frame order; only the waits for acks overlap.
    async fn start_send(
        &self,
        send: Send,
    ) -> Result<impl std::future::Future<Output = ServerFrame> + use<>, FrameError> {
        let state = &self.state;
        let (id, cmid) = (send.id.clone(), send.client_msg_id.clone());
        let prepared = crate::send::prepare(state, &self.user, &self.device, send).await?;
        let acked = prepared.enqueue(state);
        let metrics = state.metrics.clone();
        Ok(async move { reply(acked.await, id, cmid, &metrics) })
    }
}

fn accept(text: &str, limit: &mut RateLimit) -> Result<Send, FrameError> {
    match ClientFrame::parse(text)? {
        ClientFrame::Hello(_) => Err(FrameError {
            id: None,
            code: ErrorCode::InvalidField,
            message: "hello was already accepted".into(),
        }),
        ClientFrame::Send(s) if !limit.allow() => Err(FrameError {
            id: s.id,
            code: ErrorCode::RateLimited,
            message: "too many sends; slow down".into(),
        }),
        ClientFrame::Send(s) => Ok(s),
    }
}

fn reply(
    result: Result<MsgId, FrameError>,
    id: Option<serde_json::Value>,
    client_msg_id: ClientMsgId,
    metrics: &Metrics,
) -> ServerFrame {
    match result {
        Ok(msg_id) => ServerFrame::Ack(Ack {
            id,
            client_msg_id,
            msg_id,
        }),
        Err(e) => {
            metrics.send_error(e.code.as_str());
            ServerFrame::from(e)
        }
    }
}
