//! The live loop: client frames in, queued deliveries and acks out, pings,
//! and the hub's close requests — one `select!` per connection.

use super::rate::RateLimit;
use super::Close;
use super::{gone, Session};
use crate::frame::Text;
use crate::hub::DeviceHandle;
use crate::metrics::{Metrics, Stage};
use axum::extract::ws::Message as WsMessage;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use protocol::frames::{Ack, Auth, Authed, Send};
use protocol::{ClientFrame, ClientMsgId, CloseCode, ErrorCode, FrameError, MsgId, ServerFrame};
use std::time::Instant;
use tokio::sync::mpsc;

/// Bad frames in a row before the connection is closed with 4003.
const MAX_CONSECUTIVE_ERRORS: u32 = 10;
/// Rate-limited sends in a row before the connection is closed with 4008.
const MAX_RATE_LIMITED: u32 = 50;
/// Queued deliveries written before one flush.
const WRITE_BATCH: usize = 256;
/// Sends awaiting their Kafka ack per connection; reading pauses beyond it.
const MAX_INFLIGHT_SENDS: usize = 64;

fn ended(reason: &'static str) -> Close {
    Close::new(CloseCode::Draining, reason)
}

/// The close the hub asked for (moved, draining, too slow); a hub that
/// dropped the request is stopping.
pub(super) fn asked(
    c: Result<crate::ending::Ending, tokio::sync::oneshot::error::RecvError>,
) -> Close {
    c.map_or_else(|_| ended("server stopping"), Close::from)
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

/// Sends waiting for their ack: each ends in its reply and when the broker
/// acknowledged it.
type Inflight = FuturesUnordered<BoxFuture<'static, (ServerFrame, Instant)>>;

/// What the loop keeps between client frames.
struct Inbound {
    limit: RateLimit,
    strikes: Strikes,
    inflight: Inflight,
}

/// When a token that expires at `exp` (unix seconds) stops being valid here.
fn expiry(exp: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    tokio::time::Instant::now() + std::time::Duration::from_secs(exp).saturating_sub(now)
}

impl Session {
    pub(super) async fn live(&mut self, mut handle: DeviceHandle) -> Close {
        let state = self.state.clone();
        let cfg = &state.config;
        let mut inbound = Inbound {
            limit: RateLimit::new(cfg.sends_per_sec, cfg.send_burst),
            strikes: Strikes::default(),
            inflight: FuturesUnordered::new(),
        };
        let mut ping = tokio::time::interval(cfg.ping_interval);
        ping.tick().await;
        let mut last_seen = Instant::now();
        let expires = tokio::time::sleep_until(expiry(self.who.exp));
        tokio::pin!(expires);
        let stop = state.stop.clone();
        match self.on_early(&mut inbound).await {
            Ok(Some(exp)) => expires.as_mut().reset(expiry(exp)),
            Ok(None) => {}
            Err(close) => return close,
        }
        loop {
            tokio::select! {
                c = &mut handle.close => return asked(c),
                f = handle.rx.recv() => match f {
                    Some(f) => if self.write_queued(f, &mut handle.rx).await.is_err() { return ended(super::GONE) },
                    None => return ended("server stopping"),
                },
                Some((reply, acked)) = inbound.inflight.next(), if !inbound.inflight.is_empty() => {
                    if self.send_frame(&reply).await.is_err() { return ended(super::GONE) }
                    if matches!(reply, ServerFrame::Ack(_)) {
                        state.metrics.stage(Stage::AckWritten, acked.elapsed().as_secs_f64());
                    }
                }
                m = self.stream.next(), if inbound.inflight.len() < MAX_INFLIGHT_SENDS => {
                    if state.freeze.just_woke() {
                        // Sent while we were frozen: the client resends it
                        // wherever it reconnects (see freeze.rs).
                        return ended(super::WOKE);
                    }
                    last_seen = Instant::now();
                    let text = match m {
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(WsMessage::Close(_))) | None => return ended(super::CLIENT_CLOSED),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return super::read_failed(&e),
                    };
                    match self.on_frames(&text, &mut inbound).await {
                        Ok(Some(exp)) => expires.as_mut().reset(expiry(exp)),
                        Ok(None) => {}
                        Err(close) => return close,
                    }
                    // A frame's handling may have waited on a read with the
                    // connection kept alive, the client's frames read.
                    last_seen = Instant::now();
                }
                _ = &mut expires => return Close::new(CloseCode::Unauthorized, "token expired"),
                _ = ping.tick() => {
                    if last_seen.elapsed() > cfg.ping_interval * 3 {
                        return ended(super::NO_PINGS);
                    }
                    if self.sink.send(WsMessage::Ping(Default::default())).await.is_err() { return ended(super::GONE) }
                }
                _ = stop.cancelled() => return ended("server stopping"),
            }
        }
    }

    /// Writes `first` and whatever else is already queued (up to a batch)
    /// with one flush: a burst of deliveries becomes one socket write.
    async fn write_queued(
        &mut self,
        first: Text,
        queue: &mut mpsc::Receiver<Text>,
    ) -> Result<(), super::Gone> {
        let mut queued_at = Vec::new();
        queued_at.extend(first.queued_at());
        self.sink
            .feed(WsMessage::Text(first.into_ws()))
            .await
            .map_err(|_| super::Gone)?;
        for _ in 1..WRITE_BATCH {
            let Ok(next) = queue.try_recv() else { break };
            queued_at.extend(next.queued_at());
            self.sink
                .feed(WsMessage::Text(next.into_ws()))
                .await
                .map_err(|_| super::Gone)?;
        }
        self.sink.flush().await.map_err(|_| super::Gone)?;
        if !queued_at.is_empty() {
            let written = self.state.metrics.stage_histogram(Stage::Written);
            for at in queued_at {
                written.observe(at.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    /// One client frame, then those read while it was handled (a channel
    /// recovery reads with the connection kept alive).
    async fn on_frames(&mut self, text: &str, inbound: &mut Inbound) -> Result<Option<u64>, Close> {
        // Boxed: the rare, large futures (a send's membership read, a
        // channel recovery) are not carried by every idle session's task.
        let exp = Box::pin(self.on_text(text, inbound)).await?;
        Ok(self.on_early(inbound).await?.or(exp))
    }

    /// The frames kept in `early`, oldest first, until none is left (one
    /// may be a subscribe that keeps more). The last token's expiry wins.
    async fn on_early(&mut self, inbound: &mut Inbound) -> Result<Option<u64>, Close> {
        let mut exp = None;
        while !self.early.is_empty() {
            let text = self.early.remove(0);
            exp = Box::pin(self.on_text(&text, inbound)).await?.or(exp);
        }
        Ok(exp)
    }

    /// One client frame. `Ok(Some(exp))`: a fresh token moved the expiry.
    async fn on_text(&mut self, text: &str, inbound: &mut Inbound) -> Result<Option<u64>, Close> {
        // Frame errors count towards closing; a send refused after parsing
        // (not a member, unavailable) does not.
        let (refused, strike) = match ClientFrame::parse(text) {
            Ok(ClientFrame::Send(send)) if !inbound.limit.allow() => (limited(send), true),
            Ok(ClientFrame::Send(send)) => {
                inbound.strikes = Strikes::default();
                match self.start_send(send).await {
                    Ok(acked) => {
                        inbound.inflight.push(Box::pin(acked));
                        return Ok(None);
                    }
                    Err(e) => (e, false),
                }
            }
            Ok(ClientFrame::Auth(auth)) => match self.reauth(&auth).await {
                Ok(authed) => {
                    let exp = authed.exp;
                    self.send_frame(&ServerFrame::Authed(authed))
                        .await
                        .map_err(gone)?;
                    return Ok(Some(exp));
                }
                Err(e) => (e, true),
            },
            Ok(ClientFrame::Subscribe(sub)) => match self.subscribe(sub).await {
                Ok(Ok(())) => return Ok(None),
                Ok(Err(e)) => (e, false),
                Err(g) => return Err(gone(g)),
            },
            Ok(ClientFrame::Unsubscribe(un)) => {
                self.unsubscribe(un).await.map_err(gone)?;
                return Ok(None);
            }
            Ok(ClientFrame::Presence(req)) => match self.presence(req).await {
                Ok(Ok(())) => return Ok(None),
                Ok(Err(e)) => (e, false),
                Err(g) => return Err(gone(g)),
            },
            Ok(ClientFrame::ChannelPresence(req)) => match self.channel_presence(req) {
                Ok(page) => {
                    self.send_frame(&page).await.map_err(gone)?;
                    return Ok(None);
                }
                Err(e) => (e, false),
            },
            Ok(ClientFrame::Handled(h)) => match self.handled(h) {
                Ok(()) => return Ok(None),
                Err(e) => (e, false),
            },
            Ok(ClientFrame::Unwatch(un)) => {
                self.unwatch(&un);
                return Ok(None);
            }
            Ok(ClientFrame::Ping(ping)) => {
                self.send_frame(&ServerFrame::Pong(ping))
                    .await
                    .map_err(gone)?;
                return Ok(None);
            }
            Ok(ClientFrame::Hello(_)) => (again(), true),
            Err(e) => (e, true),
        };
        let code = refused.code;
        self.state.metrics.send_error(code.as_str());
        self.send_frame(&ServerFrame::from(refused))
            .await
            .map_err(gone)?;
        match strike.then(|| inbound.strikes.count(code)).flatten() {
            Some(close) => Err(close),
            None => Ok(None),
        }
    }

    /// A fresh token for this session: valid, and the same user's.
    async fn reauth(&mut self, auth: &Auth) -> Result<Authed, FrameError> {
        let refuse = |code, message: String| FrameError::new(auth.id.clone(), code, message);
        let who = self
            .state
            .auth
            .verify(&auth.token)
            .await
            .map_err(|e| refuse(ErrorCode::Unauthorized, e.to_string()))?;
        if who.user != self.who.user {
            let message = format!(
                "the token is {}'s, this session is {}'s",
                who.user, self.who.user
            );
            return Err(refuse(ErrorCode::InvalidField, message));
        }
        let exp = who.exp;
        // The fresh token's grants apply from now on; existing subscriptions stay.
        self.who = who;
        Ok(Authed {
            id: auth.id.clone(),
            exp,
        })
    }

    /// Resolves and hands the send to the producer now, so one connection's
    /// sends reach Kafka in frame order; only the waits for acks overlap.
    async fn start_send(
        &self,
        send: Send,
    ) -> Result<
        impl std::future::Future<Output = (ServerFrame, Instant)> + std::marker::Send + use<>,
        FrameError,
    > {
        let state = &self.state;
        let (id, cmid) = (send.id.clone(), send.client_msg_id.clone());
        let prepared = crate::send::prepare(&**state, &self.who, &self.device, send).await?;
        let acked = prepared.enqueue(state);
        let metrics = state.metrics.clone();
        Ok(async move {
            let result = acked.await;
            (reply(result, id, cmid, &metrics), Instant::now())
        })
    }
}

fn limited(s: Send) -> FrameError {
    FrameError::new(s.id, ErrorCode::RateLimited, "too many sends; slow down")
}

fn again() -> FrameError {
    FrameError::new(None, ErrorCode::InvalidField, "hello was already accepted")
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
