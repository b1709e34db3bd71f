//! One task per WebSocket connection: hello, optional replay, then a select
//! loop over client frames, the outgoing queue, pings and close requests.

use crate::frame::{message, text};
use crate::hub::{Close, DeviceHandle};
use crate::resume;
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::frames::{Ack, ErrorFrame, Hello, Redirect, Synced, Welcome};
use protocol::{
    partition_for, ClientFrame, CloseCode, Cursor, DeviceId, ErrorCode, FrameError, ServerFrame,
    UserId,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info_span, Instrument};

type Sink = SplitSink<WebSocket, WsMessage>;
type Stream = SplitStream<WebSocket>;

/// Bad frames in a row before the connection is closed with 4003.
const MAX_CONSECUTIVE_ERRORS: u32 = 10;
/// Rate-limited sends in a row before the connection is closed with 4008.
const MAX_RATE_LIMITED: u32 = 50;
const MAX_INFLIGHT_SENDS: usize = 64;

pub async fn run(socket: WebSocket, state: Arc<AppState>) {
    let (mut sink, mut stream) = socket.split();
    let hello = match read_hello(&mut stream, &state).await {
        Ok(h) => h,
        Err(close) => return finish(&mut sink, &state, close).await,
    };
    let user = match state.auth.verify(&hello.token) {
        Ok(u) => u,
        Err(e) => {
            debug!(error = %e, "hello refused");
            return finish(
                &mut sink,
                &state,
                close(CloseCode::Unauthorized, None, "unauthorized"),
            )
            .await;
        }
    };
    let device = hello.device_id.clone().unwrap_or_else(DeviceId::random);
    let span = info_span!("session", user = %user, device = %device);
    Session {
        state,
        user,
        device,
        sink,
        stream,
    }
    .serve(hello.cursor)
    .instrument(span)
    .await;
}

fn close(code: CloseCode, frame: Option<Utf8Bytes>, reason: &'static str) -> Close {
    Close {
        code,
        frame,
        reason,
    }
}

async fn read_hello(stream: &mut Stream, state: &AppState) -> Result<Hello, Close> {
    let timeout = Duration::from_secs(state.config.hello_timeout_secs);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(close(CloseCode::NoHello, None, "no hello in time")),
            Ok(None) | Ok(Some(Err(_))) => {
                return Err(close(
                    CloseCode::TooLarge,
                    None,
                    "frame too large or connection failed",
                ))
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            WsMessage::Text(t) => t,
            WsMessage::Close(_) => {
                return Err(close(CloseCode::NoHello, None, "closed before hello"))
            }
            _ => continue,
        };
        return match ClientFrame::parse(&text) {
            Ok(ClientFrame::Hello(h)) => Ok(h),
            _ => Err(close(
                CloseCode::Unauthorized,
                None,
                "the first frame must be a valid hello",
            )),
        };
    }
}

async fn finish(sink: &mut Sink, state: &AppState, c: Close) {
    state.metrics.close(c.code.code());
    if let Some(f) = c.frame {
        let _ = sink.send(WsMessage::Text(f)).await;
    }
    let frame = CloseFrame {
        code: c.code.code(),
        reason: Utf8Bytes::from_static(c.reason),
    };
    let _ = sink.send(WsMessage::Close(Some(frame))).await;
    let _ = sink.close().await;
}

struct Session {
    state: Arc<AppState>,
    user: UserId,
    device: DeviceId,
    sink: Sink,
    stream: Stream,
}

struct RateLimit {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Session {
    async fn serve(mut self, cursor: Option<Cursor>) {
        let Some(a) = self.state.assignment() else {
            return finish(
                &mut self.sink,
                &self.state,
                close(CloseCode::Draining, None, "no partition map yet"),
            )
            .await;
        };
        let partition = partition_for(self.user.as_str(), a.partitions);
        if !self.wait_open(partition).await {
            let redirect = a
                .owner(partition)
                .filter(|o| o.server_id != self.state.info.server_id)
                .map(|o| {
                    text(&ServerFrame::Redirect(Redirect {
                        server_id: o.server_id.clone(),
                        ws_url: o.ws_url.clone(),
                        epoch: a.epoch,
                    }))
                });
            let code = if self.state.is_draining() {
                CloseCode::Draining
            } else {
                CloseCode::PartitionMoved
            };
            return finish(
                &mut self.sink,
                &self.state,
                close(code, redirect, "not served here"),
            )
            .await;
        }
        let epoch_ok = cursor
            .as_ref()
            .is_some_and(|c| c.log_epoch == self.state.log_epoch());
        let replay_from = cursor.as_ref().filter(|_| epoch_ok).map(|c| c.offset);
        let (handle, live_from) = match self.state.hub.register(
            &self.user,
            &self.device,
            partition,
            replay_from.is_some(),
        ) {
            Ok(r) => r,
            Err(_) => {
                return finish(
                    &mut self.sink,
                    &self.state,
                    close(CloseCode::PartitionMoved, None, "partition moved"),
                )
                .await
            }
        };
        self.state.metrics.connections.inc();
        let outcome = self
            .run_registered(
                handle.id,
                partition,
                a.epoch,
                replay_from,
                live_from,
                handle,
            )
            .await;
        self.state.hub.unregister(&self.user, outcome.0);
        self.state.metrics.connections.dec();
        finish(&mut self.sink, &self.state, outcome.1).await;
    }

    /// A partition we own may still be opening (watermarks being read).
    async fn wait_open(&self, partition: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.state.hub.is_open(partition) && self.state.is_ready() {
                return true;
            }
            let owned_here = self
                .state
                .assignment()
                .and_then(|a| a.owners.get(partition as usize).cloned().flatten());
            if owned_here.as_deref() != Some(self.state.info.server_id.as_str()) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn send_frame(&mut self, f: &ServerFrame) -> bool {
        self.sink.send(WsMessage::Text(text(f))).await.is_ok()
    }

    /// A transient failure during resume must not turn into "resumed: false"
    /// (a gap for the client): the client is told why and to reconnect, and
    /// retries with the same cursor.
    async fn retry_later(&mut self, message: String, reason: &'static str) -> Close {
        let err = ServerFrame::Error(ErrorFrame {
            id: None,
            code: ErrorCode::Unavailable,
            message,
        });
        let _ = self.send_frame(&err).await;
        close(CloseCode::Draining, None, reason)
    }

    async fn run_registered(
        &mut self,
        id: u64,
        partition: u32,
        epoch: u64,
        replay_from: Option<i64>,
        live_from: i64,
        handle: DeviceHandle,
    ) -> (u64, Close) {
        let log_epoch = self.state.log_epoch();
        let plan = match replay_from {
            Some(after) => match self.plan(partition, after, live_from).await {
                Ok(plan) => plan,
                Err(e) => {
                    let message = format!("resume unavailable: {e}");
                    return (
                        id,
                        self.retry_later(message, "resume unavailable, reconnect")
                            .await,
                    );
                }
            },
            None => resume::ResumePlan {
                resumed: false,
                from_store: None,
                from_log: None,
            },
        };
        let welcome = ServerFrame::Welcome(Welcome {
            user_id: self.user.clone(),
            device_id: self.device.clone(),
            server_id: self.state.info.server_id.clone(),
            partition,
            epoch,
            resumed: plan.resumed,
            cursor: Cursor::new(log_epoch.as_str(), live_from - 1),
        });
        if !self.send_frame(&welcome).await {
            return (id, close(CloseCode::Draining, None, "gone"));
        }
        let last = match self.replay(partition, &plan, &log_epoch).await {
            Ok(last) => last,
            Err(e) => {
                let message = format!("resume failed: {e}");
                return (
                    id,
                    self.retry_later(message, "resume failed, reconnect").await,
                );
            }
        };
        if replay_from.is_some() {
            self.state.metrics.resumes.inc();
            let synced = ServerFrame::Synced(Synced {
                cursor: Cursor::new(log_epoch.as_str(), live_from - 1),
            });
            if !self.send_frame(&synced).await {
                return (id, close(CloseCode::Draining, None, "gone"));
            }
            for f in self
                .state
                .hub
                .finish_replay(&self.user, id, last.max(live_from - 1))
            {
                if self.sink.send(WsMessage::Text(f)).await.is_err() {
                    return (id, close(CloseCode::Draining, None, "gone"));
                }
            }
        }
        (id, self.live(handle).await)
    }

    async fn plan(
        &self,
        partition: u32,
        after: i64,
        live_from: i64,
    ) -> anyhow::Result<resume::ResumePlan> {
        let store_next = self
            .state
            .store
            .persisted_next(&self.state.topic, partition)
            .await?;
        let log_start = crate::kafka::log_start(
            &self.state.config.kafka.brokers,
            &self.state.topic,
            partition,
        )
        .await?;
        let plan = resume::plan(after, store_next, log_start, live_from);
        tracing::debug!(
            partition,
            after,
            store_next,
            log_start,
            live_from,
            ?plan,
            "resume planned"
        );
        Ok(plan)
    }

    /// Sends the replay; returns the last offset it covered.
    async fn replay(
        &mut self,
        partition: u32,
        plan: &resume::ResumePlan,
        log_epoch: &str,
    ) -> anyhow::Result<i64> {
        let mut last = -1;
        if let Some(range) = plan.from_store.clone() {
            for row in self
                .state
                .store
                .deliveries(&self.user, partition, range.clone())
                .await?
            {
                let f = crate::frame::stored_message(&row, log_epoch, true);
                self.sink.send(WsMessage::Text(f)).await?;
                self.state.metrics.replayed.inc();
            }
            last = range.end - 1;
        }
        if let Some(range) = plan.from_log.clone() {
            let records = crate::kafka::read_range(
                &self.state.config.kafka.brokers,
                &self.state.topic,
                partition,
                range.clone(),
                &self.user,
            )
            .await?;
            for (offset, r) in records {
                self.sink
                    .send(WsMessage::Text(text(&message(&r, log_epoch, offset, true))))
                    .await?;
                self.state.metrics.replayed.inc();
            }
            last = range.end - 1;
        }
        Ok(last)
    }

    async fn live(&mut self, mut handle: DeviceHandle) -> Close {
        let state = self.state.clone();
        let cfg = &state.config;
        let rate = f64::from(cfg.sends_per_sec);
        let mut limit = RateLimit {
            tokens: f64::from(cfg.send_burst),
            last: Instant::now(),
            rate,
            burst: f64::from(cfg.send_burst),
        };
        let mut ping = tokio::time::interval(Duration::from_secs(cfg.ping_secs));
        ping.tick().await;
        let mut last_seen = Instant::now();
        let (mut errors, mut limited) = (0u32, 0u32);
        let mut inflight = FuturesUnordered::new();
        let stop = self.state.stop.clone();
        loop {
            tokio::select! {
                c = &mut handle.close => return c.unwrap_or_else(|_| close(CloseCode::Draining, None, "server stopping")),
                f = handle.rx.recv() => match f {
                    Some(f) => if self.sink.send(WsMessage::Text(f)).await.is_err() { return close(CloseCode::Draining, None, "gone") },
                    None => return close(CloseCode::Draining, None, "server stopping"),
                },
                Some(reply) = inflight.next(), if !inflight.is_empty() => {
                    if !self.send_frame(&reply).await { return close(CloseCode::Draining, None, "gone") }
                }
                m = self.stream.next(), if inflight.len() < MAX_INFLIGHT_SENDS => {
                    last_seen = Instant::now();
                    let text = match m {
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(WsMessage::Close(_))) | None => return close(CloseCode::Draining, None, "client closed"),
                        Some(Ok(_)) => continue,
                        Some(Err(_)) => return close(CloseCode::TooLarge, None, "frame too large"),
                    };
                    match self.accept(&text, &mut limit) {
                        Ok(send) => {
                            errors = 0;
                            limited = 0;
                            // Resolved and enqueued in frame order; only the acks overlap.
                            let (id, cmid) = (send.id.clone(), send.client_msg_id.clone());
                            match crate::send::prepare(&state, &self.user, &self.device, send).await {
                                Ok(prepared) => {
                                    let acked = prepared.enqueue(&state);
                                    let metrics = state.metrics.clone();
                                    inflight.push(async move { reply(acked.await, id, cmid, &metrics) });
                                }
                                Err(e) => {
                                    state.metrics.send_error(e.code.as_str());
                                    if !self.send_frame(&ServerFrame::from(e)).await { return close(CloseCode::Draining, None, "gone") }
                                }
                            }
                        }
                        Err(e) => {
                            if e.code == ErrorCode::RateLimited { limited += 1 } else { errors += 1 }
                            self.state.metrics.send_error(e.code.as_str());
                            if !self.send_frame(&ServerFrame::from(e)).await { return close(CloseCode::Draining, None, "gone") }
                            if limited > MAX_RATE_LIMITED { return close(CloseCode::RateLimited, None, "rate limited") }
                            if errors > MAX_CONSECUTIVE_ERRORS { return close(CloseCode::ProtocolViolation, None, "too many bad frames") }
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > Duration::from_secs(cfg.ping_secs * 3) {
                        return close(CloseCode::Draining, None, "peer stopped answering pings");
                    }
                    if self.sink.send(WsMessage::Ping(Default::default())).await.is_err() { return close(CloseCode::Draining, None, "gone") }
                }
                _ = stop.cancelled() => return close(CloseCode::Draining, None, "server stopping"),
            }
        }
    }

    fn accept(
        &self,
        text: &str,
        limit: &mut RateLimit,
    ) -> Result<protocol::frames::Send, FrameError> {
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
}

fn reply(
    result: Result<protocol::MsgId, FrameError>,
    id: Option<serde_json::Value>,
    client_msg_id: protocol::ClientMsgId,
    metrics: &crate::metrics::Metrics,
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
